use super::*;

/// A query for `name` of type `qtype` with id 0x1234 and RD set.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

#[test]
fn parses_one_question() {
    let q = parse_query(&query("Echo.Default.svc.cluster.local", TYPE_A)).unwrap();
    assert_eq!(q.id, 0x1234);
    assert!(q.recursion_desired);
    assert_eq!(q.name, "echo.default.svc.cluster.local");
    assert_eq!(q.qtype, TYPE_A);
}

#[test]
fn hostile_messages_are_bounded() {
    // Too short: dropped.
    assert!(matches!(parse_query(&[0; 5]), Err(ParseError::Drop(_))));
    // A response: dropped (no reflection loops).
    let mut r = query("a", TYPE_A);
    r[2] |= 0x80;
    assert!(matches!(parse_query(&r), Err(ParseError::Drop(_))));
    // QDCOUNT 0 and 2: FORMERR.
    for qd in [0u8, 2] {
        let mut b = query("a", TYPE_A);
        b[5] = qd;
        assert_eq!(
            parse_query(&b).unwrap_err(),
            ParseError::Reply(RCODE_FORMERR, "QDCOUNT is not 1")
        );
    }
    // A pointer to itself, and a forward pointer: FORMERR, not a loop.
    let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    assert!(matches!(
        parse_query(&b),
        Err(ParseError::Reply(RCODE_FORMERR, _))
    ));
    let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[0xC0, 40, 0, 1, 0, 1]);
    assert!(matches!(
        parse_query(&b),
        Err(ParseError::Reply(RCODE_FORMERR, _))
    ));
    // A label running past the end, and an over-long name.
    let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 20, b'a'];
    assert!(parse_query(&b).is_err());
    b.truncate(12);
    for _ in 0..5 {
        b.push(63);
        b.extend_from_slice(&[b'a'; 63]);
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert!(matches!(
        parse_query(&b),
        Err(ParseError::Reply(RCODE_FORMERR, _))
    ));
    // Another opcode: NOTIMP.
    let mut b = query("a", TYPE_A);
    b[2] |= 0x10;
    assert!(matches!(
        parse_query(&b),
        Err(ParseError::Reply(RCODE_NOTIMP, _))
    ));
    // Every truncation of a valid query fails cleanly.
    let full = query("echo.default.svc.cluster.local", TYPE_AAAA);
    for n in 0..full.len() {
        let _ = parse_query(&full[..n]);
    }
}

#[test]
fn responses_carry_the_question_and_answers() {
    let raw = query("echo", TYPE_A);
    let q = parse_query(&raw).unwrap();
    let r = response(
        &raw,
        &q,
        RCODE_NOERROR,
        &["10.96.0.10".parse().unwrap()],
        true,
    );
    assert_eq!(&r[0..2], &[0x12, 0x34]);
    assert_eq!(r[2] & 0x80, 0x80, "QR");
    assert_eq!(r[3] & 0x0F, 0, "NOERROR");
    assert_eq!(&r[6..8], &[0, 1], "one answer");
    assert_eq!(&r[12..q.question_end], &raw[12..q.question_end]);
    let answer = &r[q.question_end..];
    assert_eq!(&answer[0..2], &[0xC0, 0x0C]);
    assert_eq!(&answer[8..10], &30u32.to_be_bytes()[2..], "TTL 30");
    assert_eq!(&answer[12..16], &[10, 96, 0, 10]);
    // Too many for 512 bytes of UDP: cut, with TC; TCP takes them all.
    let many: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let r = response(&raw, &q, RCODE_NOERROR, &many, true);
    assert!(r.len() <= 512 && r[2] & 0x02 != 0);
    let r = response(&raw, &q, RCODE_NOERROR, &many, false);
    assert_eq!(u16::from_be_bytes([r[6], r[7]]), 100);
}

#[test]
fn search_domains_are_tried_and_stripped() {
    let c = candidates("echo", "default", "cluster.local");
    assert_eq!(c[0], "echo");
    assert!(c.contains(&"echo.default.svc.cluster.local".to_string()));
    let c = candidates("echo.other", "default", "cluster.local");
    assert!(c.contains(&"echo.other.svc.cluster.local".to_string()));
    let c = candidates(
        "echo.other.default.svc.cluster.local",
        "default",
        "cluster.local",
    );
    assert!(c.contains(&"echo.other.svc.cluster.local".to_string()));
}

#[test]
fn resolv_conf_nameservers() {
    let n = nameservers("# x\nsearch a b\nnameserver 10.0.0.53\nnameserver ::1\noptions ndots:5\n");
    assert_eq!(
        n,
        vec!["10.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
    );
}
