//! A loopback HBONE server for the hbone crate's own tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use hbone::{copy_bidirectional, ConnectRequest, H2Config, HboneError};
use identity::{Identity, WorkloadCertificate};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// A server that answers CONNECT by echoing through a loopback echo socket, and 400 otherwise.
pub async fn start_server(cert: WorkloadCertificate) -> SocketAddr {
    start_server_with_shutdown(cert, None).await
}

/// Like `start_server`; when `shutdown` fires, every connection sends GOAWAY.
pub async fn start_server_with_shutdown(
    cert: WorkloadCertificate,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) -> SocketAddr {
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
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let cfg = H2Config::default();
                let stop = async move {
                    match shutdown.as_mut() {
                        Some(rx) => {
                            let _ = rx.wait_for(|v| *v).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let admission = hbone::Handshakes::new(Default::default());
                let _ = hbone::server::serve(
                    s,
                    peer,
                    addr,
                    tls,
                    &cfg,
                    &admission,
                    stop,
                    move |inc| async move {
                        if !inc.is_connect() {
                            return inc.reject(http::StatusCode::BAD_REQUEST);
                        }
                        let mut app = TcpStream::connect(echo_addr).await.unwrap();
                        let stream = inc.accept(&[]).unwrap();
                        let _ = copy_bidirectional(&mut app, stream).await;
                    },
                )
                .await;
            });
        }
    });
    addr
}

pub async fn client(
    cert: &WorkloadCertificate,
    server: SocketAddr,
    expect: Identity,
) -> Result<hbone::Connection, HboneError> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = hbone::tls::client_config(cert, vec![expect]).unwrap();
    hbone::client::handshake(tcp, server, tls, &H2Config::default()).await
}

pub fn req(server: SocketAddr) -> ConnectRequest {
    ConnectRequest::new(server.to_string(), "127.0.0.1:1".parse().unwrap(), None)
}
