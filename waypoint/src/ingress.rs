//! The ingress gateway (docs/GATEWAY.md): the waypoint's L7 engine behind plain ports of its
//! pod instead of HBONE. It serves the listeners of every gateway whose `proxy_uids` name
//! its own workload (a Gateway of class `istio`, an Istio Gateway selecting its pod, an
//! Ingress of class `istio`), opening and closing ports as they come and go. HTTPS ports
//! terminate TLS with the certificate of the listener the SNI name picks. Each request is
//! planned by the listener for its Host ([`crate::plan::ingress`]) and forwarded like a
//! waypoint's: over HBONE to the endpoint's ztunnel, as the gateway's own identity, so
//! destination policies see a mesh principal.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxycore::config::Config;
use proxycore::connection::{ConnectionFacts, Direction, Moved};
use proxycore::metrics::Reporter;
use proxycore::runtime::Runtime;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::L7Config;
use crate::forward::{Context, Target};
use crate::process::Waypoint;
use crate::serve::{serve_with_hyper, CountedIo, Tunnel};

/// How often the listeners are compared with the configuration.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// Runs an ingress gateway: what `waypoint gateway` does.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let config = L7Config::default();
    let mut builder = Runtime::builder("gateway", cfg);
    for s in config.store.subscriptions(true) {
        builder = builder.subscribe(s);
    }
    let mut rt = builder.build()?;
    let gw = Waypoint::new(rt.dedicated_inputs(), config);
    gw.metrics.register(rt.registry());
    gw.tracer.register(rt.registry());
    crate::trace::start(&gw);
    tokio::spawn(keep_listeners(gw.clone()));
    crate::jwks::start(&gw);
    rt.readiness.done("proxy");
    rt.ready_with_certificate(&gw.pi);
    rt.serve(move |req| {
        crate::inspect::admin(&gw, req)
            .unwrap_or_else(|| proxycore::admin::admin_response(&gw.pi, None, req))
    })
    .await
}

/// The gateway's own WDS uid (its pod), once the workload state has it.
fn own_uid(gw: &Waypoint) -> Option<String> {
    let pi = &gw.pi;
    pi.state
        .workload_by_name(&pi.local_ns, &pi.local_name)
        .map(|w| w.uid.clone())
}

/// One open port: whether it terminates TLS, and its accept loop.
struct Open {
    tls: bool,
    task: JoinHandle<()>,
}

/// Keeps one listening socket per port of the served listeners: opened when a port appears,
/// closed (its accept loop ended; connections already accepted go on) when it goes, and
/// reopened when it turns from plain to TLS or back.
async fn keep_listeners(gw: Arc<Waypoint>) {
    let mut open: BTreeMap<u16, Open> = BTreeMap::new();
    let mut seen = None;
    let stop = gw.pi.drain.started();
    tokio::pin!(stop);
    loop {
        let version = gw.config.version(&gw.pi.state);
        if seen != Some(version) {
            seen = Some(version);
            if let Some(uid) = own_uid(&gw) {
                let ports = gw.config.ingress_ports(&gw.pi.state, &uid);
                let wanted: BTreeMap<u16, bool> =
                    ports.ports.keys().map(|p| (*p, ports.is_tls(*p))).collect();
                open.retain(|port, o| {
                    let keep = wanted.get(port) == Some(&o.tls);
                    if !keep {
                        o.task.abort();
                        tracing::info!(port, "gateway port closed");
                    }
                    keep
                });
                for (port, tls) in wanted {
                    if open.contains_key(&port) {
                        continue;
                    }
                    match listen(&gw, port, tls, &uid) {
                        Ok(task) => {
                            tracing::info!(port, tls, "gateway listening");
                            open.insert(port, Open { tls, task });
                        }
                        // Retried at the next change.
                        Err(e) => {
                            tracing::warn!(port, error = %e, "gateway cannot listen");
                            seen = None;
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            () = &mut stop => return,
        }
    }
}

fn listen(gw: &Arc<Waypoint>, port: u16, tls: bool, uid: &str) -> anyhow::Result<JoinHandle<()>> {
    let listener = proxycore::socket::listen(None, port, gw.pi.cfg.ipv6)?;
    let acceptor = tls.then(|| tls_acceptor(gw, port, uid));
    let served = gw.clone();
    let uid = uid.to_string();
    Ok(tokio::spawn(proxycore::listen::accept_loop(
        gw.pi.clone(),
        listener,
        "gateway",
        move |_, tcp, peer| {
            serve_connection(
                served.clone(),
                port,
                acceptor.clone(),
                uid.clone(),
                tcp,
                peer,
            )
        },
    )))
}

/// TLS for an HTTPS port: TLS 1.2 and 1.3, ALPN h2 and http/1.1, the certificate picked
/// per handshake from the current configuration.
fn tls_acceptor(gw: &Arc<Waypoint>, port: u16, uid: &str) -> tokio_rustls::TlsAcceptor {
    let resolver = Arc::new(Certificates {
        gw: gw.clone(),
        port,
        uid: uid.to_string(),
        parsed: Mutex::default(),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// The server certificates of one HTTPS port: the first certificate of the listener whose
/// hosts best cover the SNI name (no name, or none covering it: the port's first HTTPS
/// listener without hosts, else its first). Parsed keys are kept by Secret and content.
struct Certificates {
    gw: Arc<Waypoint>,
    port: u16,
    uid: String,
    parsed: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ports = self.gw.config.ingress_ports(&self.gw.pi.state, &self.uid);
        let sni = hello.server_name().unwrap_or_default().to_ascii_lowercase();
        let https = |s: &&crate::config::Served| {
            s.listener().protocol == l7::gateway::Protocol::Https
                && !s.listener().certificates.is_empty()
        };
        let on_port = ports.ports.get(&self.port)?;
        let served = ports
            .pick(self.port, true, &sni)
            .filter(|s| !s.listener().certificates.is_empty())
            .or_else(|| {
                on_port
                    .iter()
                    .filter(https)
                    .find(|s| s.listener().hosts.is_empty())
            })
            .or_else(|| on_port.iter().find(https))?;
        let cert = served.listener().certificates.first()?;
        let mut parsed = self.parsed.lock().unwrap();
        if let Some((chain, key)) = parsed.get(&cert.secret) {
            if *chain == cert.chain_pem {
                return Some(key.clone());
            }
        }
        match certified_key(cert) {
            Ok(key) => {
                parsed.insert(cert.secret.clone(), (cert.chain_pem.clone(), key.clone()));
                Some(key)
            }
            Err(e) => {
                tracing::warn!(secret = %cert.secret, error = %e, "gateway certificate unusable; handshake refused");
                None
            }
        }
    }
}

fn certified_key(cert: &l7::gateway::Certificate) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert.chain_pem.as_bytes()).collect::<Result<_, _>>()?;
    if chain.is_empty() {
        anyhow::bail!("tls.crt holds no certificate");
    }
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("tls.key holds no private key"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("tls.key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// One client connection: TLS first on an HTTPS port (a failed handshake is logged and
/// closed), then HTTP/1.1 or HTTP/2 by hyper's server, each request through the shared
/// pipeline.
async fn serve_connection(
    gw: Arc<Waypoint>,
    port: u16,
    tls: Option<tokio_rustls::TlsAcceptor>,
    uid: String,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let local = tcp
        .local_addr()
        .map_or(peer.ip(), |a| proxycore::socket::canonical(a).ip());
    let ctx = Arc::new(context(&gw, port, tls.is_some(), uid, peer, local));
    let budget = hbone::guard::Budget::new(&gw.pi.cfg.h2.frames);
    let io: Box<dyn Tunnel> = match tls {
        None => Box::new(CountedIo {
            inner: tcp,
            skip: 0,
            bytes: ctx.bytes.clone(),
        }),
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(gw.pi.cfg.http_header_timeout, acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return tracing::info!(client = %peer, port, error = %e, "gateway TLS handshake failed")
                }
                Err(_) => {
                    return tracing::info!(client = %peer, port, "gateway TLS handshake timed out")
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = CountedIo {
                inner: stream,
                skip: 0,
                bytes: ctx.bytes.clone(),
            };
            if h2 {
                Box::new(hbone::guard::FrameGuard::server(io, budget.clone()))
            } else {
                Box::new(io)
            }
        }
    };
    serve_with_hyper(ctx, io, budget).await
}

/// The request context of a client connection: no peer identity (the client is outside the
/// mesh); metrics reported as the source, the gateway's own workload.
fn context(
    gw: &Arc<Waypoint>,
    port: u16,
    tls: bool,
    uid: String,
    peer: SocketAddr,
    local: std::net::IpAddr,
) -> Context {
    let pi = &gw.pi;
    let own = pi.state.workload_by_name(&pi.local_ns, &pi.local_name);
    let mut facts = ConnectionFacts::new(
        Reporter::Source,
        Direction::Outbound,
        &pi.cfg.cluster_id,
        peer,
    );
    facts.src_identity = own.as_ref().map(|w| w.identity().to_string());
    facts.src_workload = own;
    facts.mtls = true;
    Context {
        wp: gw.clone(),
        target: Target::Ingress { port, tls, uid },
        dst_name: format!("gateway:{port}"),
        source: peer.to_string(),
        principal: String::new(),
        source_namespace: String::new(),
        client: peer,
        source_ip: peer.ip(),
        destination_ip: local,
        tables: Default::default(),
        recorder: crate::metrics::Recorder::with_base(facts.labels()),
        bytes: Arc::new(Moved::default()),
        ids: proxycore::listen::current_ids(),
        span: tracing::Span::current(),
    }
}
