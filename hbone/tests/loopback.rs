//! The HBONE client and server against each other on loopback: identity checks both ways,
//! CONNECT status codes, data and half-close through a stream.

use std::net::SocketAddr;
use std::time::Duration;

use hbone::{copy_bidirectional, ConnectRequest, H2Config, HboneError};
use identity::{Identity, LocalCa, WorkloadCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// A server that answers CONNECT by echoing through a loopback echo socket, and 400 otherwise.
async fn start_server(cert: WorkloadCertificate) -> SocketAddr {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let tls = hbone::tls::server_config(&cert).unwrap();
    tokio::spawn(async move {
        loop {
            let (s, peer) = l.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let cfg = H2Config::default();
                let _ = hbone::server::serve(
                    s,
                    peer,
                    addr,
                    tls,
                    &cfg,
                    std::future::pending(),
                    move |inc| async move {
                        if !inc.is_connect() {
                            return inc.reject(http::StatusCode::BAD_REQUEST);
                        }
                        let app = TcpStream::connect(echo_addr).await.unwrap();
                        let stream = inc.accept(&[]).unwrap();
                        let _ = copy_bidirectional(&app, stream).await;
                    },
                )
                .await;
            });
        }
    });
    addr
}

async fn client(
    cert: &WorkloadCertificate,
    server: SocketAddr,
    expect: Identity,
) -> Result<hbone::Connection, HboneError> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = hbone::tls::client_config(cert, vec![expect]).unwrap();
    hbone::client::handshake(tcp, server, tls, &H2Config::default()).await
}

fn req(server: SocketAddr) -> ConnectRequest {
    ConnectRequest::new(server.to_string(), "127.0.0.1:1".parse().unwrap(), None)
}

#[tokio::test]
async fn echo_with_half_close() {
    let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let server = start_server(ca.issue(&id("server")).unwrap()).await;
    let conn = client(&ca.issue(&id("client")).unwrap(), server, id("server"))
        .await
        .unwrap();
    let mut stream = conn.connect(&req(server)).await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    stream.send.send_data(payload.clone().into(), true).unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.recv.data().await {
        let chunk = chunk.unwrap();
        stream
            .recv
            .flow_control()
            .release_capacity(chunk.len())
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, payload);
}

#[tokio::test]
async fn wrong_server_identity_is_rejected() {
    let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let server = start_server(ca.issue(&id("server")).unwrap()).await;
    let err = client(
        &ca.issue(&id("client")).unwrap(),
        server,
        id("someone-else"),
    )
    .await
    .err()
    .expect("must fail");
    assert!(matches!(err, HboneError::Tls(_)), "{err}");
}

#[tokio::test]
async fn client_from_another_root_is_rejected() {
    let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let other = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let server = start_server(ca.issue(&id("server")).unwrap()).await;
    // The client trusts the server's root but presents a leaf of another root.
    let mut cert = other.issue(&id("client")).unwrap();
    cert.roots = vec![ca.root_der().clone()];
    let result = async {
        let conn = client(&cert, server, id("server")).await?;
        conn.connect(&req(server)).await
    }
    .await;
    assert!(
        result.is_err(),
        "a foreign client certificate must not get a stream"
    );
}

#[tokio::test]
async fn non_connect_gets_400() {
    let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let server = start_server(ca.issue(&id("server")).unwrap()).await;
    let conn = client(&ca.issue(&id("client")).unwrap(), server, id("server"))
        .await
        .unwrap();
    let get = http::Request::get(format!("https://{server}/"))
        .body(())
        .unwrap();
    let (resp, _) = conn_sender(&conn).send_request(get, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
}

fn conn_sender(conn: &hbone::Connection) -> h2::client::SendRequest<bytes::Bytes> {
    conn.raw_sender()
}

#[tokio::test]
async fn reads_back_through_tcp_pair() {
    // copy_bidirectional between a real TCP pair and a stream: bytes and FIN both ways.
    let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let server = start_server(ca.issue(&id("server")).unwrap()).await;
    let conn = client(&ca.issue(&id("client")).unwrap(), server, id("server"))
        .await
        .unwrap();
    let stream = conn.connect(&req(server)).await.unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (proxy_side, _) = l.accept().await.unwrap();
    let copy = tokio::spawn(async move { copy_bidirectional(&proxy_side, stream).await });
    app.write_all(b"hello").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello");
    let stats = copy.await.unwrap().unwrap();
    assert_eq!((stats.tcp_to_tunnel, stats.tunnel_to_tcp), (5, 5));
}
