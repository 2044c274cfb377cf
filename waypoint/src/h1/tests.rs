use super::*;

fn head(raw: &str, head_request: bool) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
    parse_head(&mut Bytes::copy_from_slice(raw.as_ref()), head_request)
}

#[test]
fn framings() {
    let (r, f, keep) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status(), f, keep),
        (StatusCode::OK, Framing::Length(5), true)
    );
    assert_eq!(r.headers()["content-length"], "5");
    let (_, f, keep) = head(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!((f, keep), (Framing::Chunked(Chunk::Size), true));
    // Both: chunked wins, content-length is dropped, the connection is not kept.
    let (r, f, keep) = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(!r.headers().contains_key(CONTENT_LENGTH));
    assert_eq!((f, keep), (Framing::Chunked(Chunk::Size), false));
    let (_, f, keep) = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
    assert_eq!((f, keep), (Framing::Close, false));
    let (_, f, keep) = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!((f, keep), (Framing::Done, true));
    let (_, f, _) = head(
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(f, Framing::Done);
    let (_, _, keep) = head(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(!keep);
    let (_, _, keep) = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert!(!keep);
}

#[test]
fn informational_skipped_and_partial() {
    let (r, _, _) = head(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(head("HTTP/1.1 200 OK\r\ncontent-le", false)
        .unwrap()
        .is_none());
}

#[test]
fn bad_heads() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "NOT HTTP\r\n\r\n",
    ] {
        assert!(head(raw, false).is_err(), "{raw}");
    }
}

#[test]
fn encodes_origin_form_with_length() {
    let (mut parts, ()) = http::Request::post("/p?q=1").body(()).unwrap().into_parts();
    parts
        .headers
        .insert("host", HeaderValue::from_static("svc"));
    parts
        .headers
        .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    let out = encode(&parts, b"abc");
    assert_eq!(
        &out[..],
        b"POST /p?q=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\nabc"
    );
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    assert_eq!(&encode(&parts, b"")[..], b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn idle_connections_expire_and_keys_go() {
    let key = |n: u8| -> Key {
        (
            std::net::SocketAddr::from(([10, 0, 0, n], 80)),
            std::net::IpAddr::from([10, 1, 0, 1]),
        )
    };
    let t0 = Instant::now();
    let mut idle: Idle<u32> = Idle::default();
    idle.put(key(1), 1, t0);
    idle.put(key(1), 2, t0);
    // Newest first; one found unusable is dropped on the way.
    assert_eq!(idle.take(&key(1), t0, |t| *t != 2), Some(1));
    assert!(idle.by_key.is_empty(), "an emptied key is removed");
    for i in 0..(IDLE_PER_KEY as u32 + 5) {
        idle.put(key(2), i, t0);
    }
    assert_eq!(idle.by_key[&key(2)].len(), IDLE_PER_KEY);
    // Expired: not handed out.
    let later = t0 + IDLE_TIMEOUT;
    assert_eq!(idle.take(&key(2), later, |_| true), None);
    idle.put(key(3), 3, t0);
    // A put a timeout later sweeps every key: key(3)'s entry has expired too.
    idle.put(key(4), 4, later + IDLE_TIMEOUT);
    assert_eq!(idle.by_key.len(), 1);
    assert_eq!(idle.take(&key(4), later + IDLE_TIMEOUT, |_| true), Some(4));
}

#[test]
fn chunked_decoding() {
    let mut f = Framing::Chunked(Chunk::Size);
    let mut buf = Bytes::from("3;ext=1\r\nabc\r\n5");
    assert_eq!(decode_chunked(&mut f, &mut buf).unwrap().unwrap(), "abc");
    // A size line not complete yet.
    assert_eq!(decode_chunked(&mut f, &mut buf).unwrap(), None);
    assert_eq!(f, Framing::Chunked(Chunk::Size));
    // The rest arrives in pieces.
    buf = join(&buf, b"\r\nxy");
    assert_eq!(decode_chunked(&mut f, &mut buf).unwrap().unwrap(), "xy");
    assert_eq!(f, Framing::Chunked(Chunk::Data(3)));
    buf = join(&buf, b"zzz\r\n0\r\ntrailer: t\r\n\r\n");
    assert_eq!(decode_chunked(&mut f, &mut buf).unwrap().unwrap(), "zzz");
    assert_eq!(decode_chunked(&mut f, &mut buf).unwrap(), None);
    assert_eq!(f, Framing::Done);
    assert!(buf.is_empty());
    for bad in ["zz\r\n", "2\r\nabXY"] {
        let mut f = Framing::Chunked(Chunk::Size);
        let mut buf = Bytes::from(bad);
        let r = decode_chunked(&mut f, &mut buf).and_then(|_| decode_chunked(&mut f, &mut buf));
        assert!(r.is_err(), "{bad}");
    }
    let mut long = Bytes::copy_from_slice(&[b'1'; 5000][..]);
    assert!(take_line(&mut long).is_err());
}
