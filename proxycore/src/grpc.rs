//! gRPC channels to the control plane (xDS and the CA): TLS verified against a configured root
//! file (re-read on every new connection, so a rotated root takes effect on the next
//! connect), ALPN h2, no client certificate, the bearer token and `clusterid` on every request
//! (docs/WIRE.md §3.1, §4). Sockets carry ztunnel's packet mark so in-pod redirection lets
//! them through.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::GrpcTarget;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn client_tls(root_file: &Path) -> std::io::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(root_file)
        .map_err(|e| io_err(format!("reading root {}: {e}", root_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?).map_err(io_err)?;
    }
    if roots.is_empty() {
        return Err(io_err(format!(
            "no certificate in root file {}",
            root_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A lazily connecting channel to `target`; connection failures surface on each call.
pub fn channel(target: &GrpcTarget, mark: Option<u32>) -> anyhow::Result<Channel> {
    let uri: http::Uri = target.address.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("{}: no host", target.address))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = target.alt_hostname.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        .to_owned();
    let root = target.root_ca.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (host, root, server_name) = (host.clone(), root.clone(), server_name.clone());
        async move {
            let tls = client_tls(&root)?;
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| io_err(format!("{host}: no address")))?;
            let tcp = crate::socket::connect(addr, None, mark).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_shared(target.address.clone())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Adds `authorization: Bearer <token>`, `clusterid` and the configured extra headers.
#[derive(Clone)]
pub struct Auth {
    token: String,
    cluster_id: AsciiMetadataValue,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl Auth {
    pub fn new(
        token: &str,
        cluster_id: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let headers = headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| anyhow::anyhow!("header {k}: {e}"))?,
                    AsciiMetadataValue::try_from(v.as_str())
                        .map_err(|e| anyhow::anyhow!("header {k}: {e}"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Auth {
            token: token.to_string(),
            cluster_id: AsciiMetadataValue::try_from(cluster_id)?,
            headers,
        })
    }

    /// The token: the file's content when `AUTH_TOKEN` names a file (re-read each time, as a
    /// projected token rotates), else the value itself.
    fn token(&self) -> Result<String, String> {
        let path = Path::new(&self.token);
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(t.trim().to_string()),
            Err(e) if self.token.contains('/') => {
                Err(format!("reading token file {}: {e}", self.token))
            }
            Err(_) => Ok(self.token.trim().to_string()),
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = self.token().map_err(Status::unauthenticated)?;
        let md = req.metadata_mut();
        md.insert(
            "authorization",
            AsciiMetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Status::unauthenticated("the token is not valid header text"))?,
        );
        md.insert("clusterid", self.cluster_id.clone());
        for (k, v) in &self.headers {
            md.insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}
