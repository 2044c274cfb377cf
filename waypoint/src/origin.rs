//! Requests to endpoints outside the mesh (a ServiceEntry's endpoints, pods not enrolled):
//! no HBONE tunnel, a TCP connection of the waypoint's own, and TLS on it when the
//! DestinationRule's `tls` says so (DR-47..49, docs/GATEWAY.md "TLS origination"):
//!
//! - `SIMPLE`: the server is verified against `caCertificates` (a PEM file), else the
//!   machine's trust store; by `subjectAltNames` when given, else by the SNI name;
//!   `insecureSkipVerify: true` skips the verification;
//! - `MUTUAL`: the same, presenting `clientCertificate` with `privateKey`;
//! - SNI: `sni`, else the request's host when it is a name, else the service's hostname;
//! - ALPN: `h2` is offered only for HTTP/2 requests; a server that picks HTTP/1.1 gets the
//!   request as HTTP/1.1.
//!
//! Each request has a connection of its own (no pooling towards outside endpoints).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7::istio::ClientTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::body::Body;
use crate::error::Failure;
use crate::upstream::Picked;

/// How long a TCP connection to an outside endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` to the outside endpoint `p`, over TLS when `tls` originates it.
pub async fn exchange(
    pi: &proxycore::ProxyInputs,
    p: &Picked,
    req: Request<Body>,
    tls: Option<&ClientTls>,
) -> Result<Response<Body>, Failure> {
    let addr = pi
        .address_of(&p.w, p.port)
        .await
        .map_err(|e| Failure::NoHealthyUpstream(format!("{}: {e}", p.w.name)))?;
    if tls.is_some_and(|t| t.mode.as_deref() == Some("ISTIO_MUTUAL")) {
        return Err(Failure::ConnectFailed(format!(
            "tls mode ISTIO_MUTUAL: {} ({addr}) is outside the mesh",
            p.w.name
        )));
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::ConnectFailed(format!("{addr}: connect timed out")))?
        .map_err(|e| Failure::ConnectFailed(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let h2 = req.version() == Version::HTTP_2;
    let Some(tls) = tls.filter(|t| t.originates()) else {
        return send(TokioIo::new(tcp), req, h2).await;
    };
    let config = client_config(tls, h2).map_err(Failure::ConnectFailed)?;
    let name = server_name(tls, &req, p)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| Failure::ConnectFailed(format!("TLS to {addr} ({name:?}): {e}")))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    send(TokioIo::new(stream), req, h2).await
}

/// The request on a new connection, as HTTP/2 or HTTP/1.1.
async fn send<I>(io: I, mut req: Request<Body>, h2: bool) -> Result<Response<Body>, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let reset = |e: hyper::Error| Failure::Reset(e.into());
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(reset)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        s.send_request(req).await.map_err(reset)?
    } else {
        as_http1(&mut req);
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(reset)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        s.send_request(req).await.map_err(reset)?
    };
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// An HTTP/2-shaped request as HTTP/1.1: origin-form path, the authority as Host.
fn as_http1(req: &mut Request<Body>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    *req.version_mut() = Version::HTTP_11;
    if let Some(a) = req.uri().authority().cloned() {
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(u) = pq.parse() {
        *req.uri_mut() = u;
    }
}

/// The SNI name: `sni`, else the request's host when it is a name, else the service's.
fn server_name(
    tls: &ClientTls,
    req: &Request<Body>,
    p: &Picked,
) -> Result<ServerName<'static>, Failure> {
    if let Some(sni) = &tls.sni {
        return ServerName::try_from(sni.clone())
            .map_err(|e| Failure::ConnectFailed(format!("sni {sni:?}: {e}")));
    }
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            Some(l7::gateway::request_host(h).to_string())
        })
        .filter(|h| h.parse::<std::net::IpAddr>().is_err());
    let name = host
        .or_else(|| p.svc.as_ref().map(|s| s.hostname.clone()))
        .unwrap_or_else(|| p.w.name.clone());
    ServerName::try_from(name.clone())
        .map_err(|e| Failure::ConnectFailed(format!("server name {name:?}: {e}")))
}

type ConfigKey = (ClientTls, bool);

/// The client configuration for `tls` (kept once built: the files are read once).
fn client_config(tls: &ClientTls, h2: bool) -> Result<Arc<ClientConfig>, String> {
    static BUILT: OnceLock<Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let key = (tls.clone(), h2);
    if let Some(c) = built.lock().unwrap().get(&key) {
        return Ok(c.clone());
    }
    let config = Arc::new(build(tls, h2)?);
    built.lock().unwrap().insert(key, config.clone());
    Ok(config)
}

fn build(tls: &ClientTls, h2: bool) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_certificates {
        Some(path) => {
            for c in read_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("caCertificates {path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let chain = if tls.insecure_skip_verify == Some(true) {
        None
    } else {
        if roots.is_empty() {
            return Err(
                "no trust roots: give caCertificates, or install the machine's CA certificates"
                    .into(),
            );
        }
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Some(v)
    };
    let verifier = Arc::new(Verifier {
        chain,
        names: tls
            .subject_alt_names
            .iter()
            .filter_map(|n| ServerName::try_from(n.clone()).ok())
            .collect(),
        provider,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.client_certificate, &tls.private_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let pem = std::fs::read(key).map_err(|e| format!("privateKey {key}: {e}"))?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| format!("privateKey {key}: {e}"))?
                .ok_or_else(|| format!("privateKey {key}: no private key in the file"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in the file"));
    }
    Ok(certs)
}

/// The server check: the chain to the roots, and the name against `subjectAltNames` (any
/// of them) when given, else against the SNI name; with no `chain` verifier
/// (`insecureSkipVerify`) any certificate is taken. The handshake's signatures are checked
/// either way, so the session is with the holder of the presented key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    names: Vec<ServerName<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        if self.names.is_empty() {
            return chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        let mut last = None;
        for n in &self.names {
            match chain.verify_server_cert(end_entity, intermediates, n, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
