//! Bad input to the control plane's delta ADS from a caller holding a valid token: a request
//! that does not decode ends the stream with INVALID_ARGUMENT and a log line (not OK), and a
//! request over the size limit is refused with RESOURCE_EXHAUSTED without being read whole.
//! The server is the control plane library on loopback, as `keelson controlplane` runs it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controlplane::server::{Counters, Shared};
use controlplane::snapshot::Snapshot;
use resources::MeshSettings;
use resources::Resources;

const ADS: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

struct Server {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    token: String,
    counters: Arc<Counters>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("keelson-cp-input-{}", std::process::id()));
    let mesh = MeshSettings::default();
    let (ca, tokens) = controlplane::run::load_state(&dir, &mesh).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = controlplane::run::serving_tls(&ca, addr, &[]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).unwrap();
    let token = tokens.mint("istio-system", "ztunnel", None);
    let snap = Snapshot::build(&Resources::default(), &mesh);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snap));
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        snapshot: rx,
        ca: Arc::new(ca),
        tokens: Arc::new(tokens),
        trust_domain: mesh.trust_domain.clone(),
        trusted_node_accounts: vec![],
        counters: counters.clone(),
        reviewer: None,
    });
    tokio::spawn(async move {
        let _keep = tx;
        let _ = controlplane::server::serve(listener, tls, shared, std::future::pending()).await;
    });
    Server {
        addr,
        roots,
        token,
        counters,
        _dir: TempDir(dir),
    }
}

/// Opens an ADS stream, sends `body` (gRPC framing included) and ends it; the grpc-status
/// the server ends the stream with.
async fn grpc_status_for(server: &Server, body: Vec<u8>) -> Option<u32> {
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(server.roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("istiod.istio-system.svc").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://istiod.istio-system.svc{ADS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", server.token))
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(Bytes::from(body), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer")
        .unwrap();
    // A status before any message comes as headers only (trailers-only response).
    if let Some(s) = resp.headers().get("grpc-status") {
        return s.to_str().ok()?.parse().ok();
    }
    let mut body = resp.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = tokio::time::timeout(Duration::from_secs(10), body.trailers())
        .await
        .expect("trailers")
        .ok()??;
    trailers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn framed(declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&declared_len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ads_requests_end_with_an_error_status() {
    let server = start().await;
    // Field 1 (node), length-delimited, claiming far more bytes than follow.
    let garbage = [0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02];
    let status = grpc_status_for(&server, framed(garbage.len() as u32, &garbage)).await;
    assert_eq!(
        status,
        Some(3),
        "INVALID_ARGUMENT for a request that does not decode"
    );

    // A 200 MiB request is refused from its length prefix.
    let status = grpc_status_for(&server, framed(200 << 20, &[0u8; 1024])).await;
    assert_eq!(status, Some(8), "RESOURCE_EXHAUSTED for a 200 MiB request");
    assert!(server.counters.bad_requests.load(Ordering::Relaxed) >= 2);
}
