//! The HBONE client and server against each other on loopback: identity checks both ways,
//! CONNECT status codes, data and half-close through a stream.

use std::time::Duration;

mod common;

use common::*;
use hbone::{copy_bidirectional, HboneError};
use identity::LocalCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    let (mut proxy_side, _) = l.accept().await.unwrap();
    let copy = tokio::spawn(async move { copy_bidirectional(&mut proxy_side, stream).await });
    app.write_all(b"hello").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello");
    let stats = copy.await.unwrap().unwrap();
    assert_eq!((stats.tcp_to_tunnel, stats.tunnel_to_tcp), (5, 5));
}
