//! Test support: apps that run inside the testbed's pods (an echo server, a resetting server,
//! payload generators with checksums) on the test's own tokio runtime.

use std::hash::Hasher;
use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use testbed::{self, synthetic_pods, Options, PodSpec, Source, Testbed};

pub mod mesh;

/// Deterministic pseudo-random payload byte `i` of stream `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A checksum of a byte stream (FNV-1a 64 via the std hasher is not stable across
/// processes, so this is a plain FNV-1a).
#[derive(Default)]
pub struct Checksum(u64, u64);

impl Checksum {
    pub fn new() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325, 0)
    }
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
        self.1 += data.len() as u64;
    }
    pub fn finish(&self) -> (u64, u64) {
        (self.0, self.1)
    }
    /// The checksum and length of `data`.
    pub fn sum(data: &[u8]) -> (u64, u64) {
        let mut c = Checksum::new();
        c.update(data);
        c.finish()
    }
}

impl Hasher for Checksum {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.update(bytes)
    }
}

/// An echo server listening inside `pod` on `port`: echoes until EOF, then half-closes.
pub fn spawn_echo(tb: &Testbed, pod: &str, port: u16) -> Result<SocketAddr> {
    let addr = SocketAddr::new(tb.ip(pod), port);
    let l = TcpListener::from_std(tb.pod(pod).tcp_listen(addr)?)?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Connects from inside `pod` (through its redirection, so through its ztunnel).
pub fn connect_from(tb: &Testbed, pod: &str, addr: SocketAddr) -> Result<TcpStream> {
    Ok(TcpStream::from_std(tb.pod(pod).tcp_connect(addr)?)?)
}

/// Sends `data` on `s`, half-closes, and reads everything back; returns what came back.
pub async fn roundtrip(mut s: TcpStream, data: Vec<u8>) -> Result<Vec<u8>> {
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let recv = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let ((), back) = tokio::try_join!(send, recv)?;
    Ok(back)
}

/// The value of the first sample of `metric` whose labels contain every `label=value` given.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.starts_with(metric)
                && (l[metric.len()..].starts_with('{') || l[metric.len()..].starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .reduce(|a, b| a + b)
}

/// A TLS client configuration with no client certificate that accepts any server (to test
/// that the HBONE server rejects such clients).
pub fn tls_without_client_cert() -> std::sync::Arc<rustls::ClientConfig> {
    tls_without_client_cert_speaking(&[&rustls::version::TLS13])
}

/// The same, speaking only the TLS `versions` given.
pub fn tls_without_client_cert_speaking(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    #[derive(Debug)]
    struct AcceptAny;
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            hbone::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    // Keelson's provider has TLS 1.3 suites only; rustls' default has the TLS 1.2 ones too.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(cfg)
}

/// The testbed's CA, to issue certificates to test clients.
pub fn testbed_ca(tb: &Testbed) -> identity::LocalCa {
    identity::LocalCa::load_or_create(
        &tb.ca_dir(),
        identity::DEFAULT_TRUST_DOMAIN,
        identity::ca::DEFAULT_CERT_TTL,
    )
    .unwrap()
}

/// An HBONE connection made by the test itself from inside `pod` to `to`:15008.
pub async fn hbone_from(
    tb: &Testbed,
    pod: &str,
    to: std::net::IpAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<hbone::Connection, hbone::HboneError> {
    let addr = SocketAddr::new(to, hbone::HBONE_PORT);
    let tcp = connect_from(tb, pod, addr).unwrap();
    hbone::client::handshake(tcp, addr, tls, &hbone::H2Config::default()).await
}

/// A server inside `pod` on `port` that answers every connection with the pod's name, then
/// closes: tells which backend a connection reached.
pub fn spawn_greeter(tb: &Testbed, pod: &str, port: u16) -> Result<SocketAddr> {
    let addr = SocketAddr::new(tb.ip(pod), port);
    let l = TcpListener::from_std(tb.pod(pod).tcp_listen(addr)?)?;
    let name = pod.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Which greeter a connection from `pod` to `addr` reached; `None` when the connection was
/// refused, reset or closed without a word (a deny).
pub async fn greeting(tb: &Testbed, pod: &str, addr: SocketAddr) -> Option<String> {
    let mut s = connect_from(tb, pod, addr).ok()?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf));
    match read.await {
        Ok(Ok(_)) if !buf.is_empty() => Some(String::from_utf8_lossy(&buf).into_owned()),
        _ => None,
    }
}

/// Polls `check` every 25 ms until it holds or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(
    timeout: std::time::Duration,
    mut check: F,
) -> Option<std::time::Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// A log with its terminal colour codes removed, for matching.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The resident set size of a process, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One connection from inside the namespace at `ns` to `to` (through its redirection): `data`
/// sent and echoed back whole within `within`; otherwise what went wrong (`connect: …`,
/// `echo: …`, or how much came back).
pub async fn echo_from(
    ns: &std::path::Path,
    to: SocketAddr,
    data: Vec<u8>,
    within: std::time::Duration,
) -> std::result::Result<(), String> {
    let s = netns::run_at(ns, move || std::net::TcpStream::connect(to))
        .map_err(|e| format!("connect: {e}"))?
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let s = TcpStream::from_std(s).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    match tokio::time::timeout(within, roundtrip(s, data.clone())).await {
        Ok(Ok(back)) if back == data => Ok(()),
        Ok(Ok(back)) => Err(format!("{} of {} bytes came back", back.len(), data.len())),
        Ok(Err(e)) => Err(format!("echo: {e}")),
        Err(_) => Err(format!("echo: no answer in {within:?}")),
    }
}

/// New connections in the background, one every `period`, each a checked echo of `len`
/// bytes, until [`Traffic::stop`].
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    pub fn start(
        ns: std::path::PathBuf,
        to: SocketAddr,
        period: std::time::Duration,
        len: usize,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut made, mut errors) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let data = payload(made as u64, len);
                if let Err(e) = echo_from(&ns, to, data, std::time::Duration::from_secs(5)).await {
                    errors.push(e);
                }
                made += 1;
                tokio::time::sleep(period).await;
            }
            (made, errors)
        });
        Traffic { stop, task }
    }

    /// Stops it; how many connections were made, and the failures.
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// Everything a redirection flavour puts in the namespace at `ns`, section by section: its
/// iptables rules, its nftables tables (family inet: iptables-nft keeps its own in ip and
/// ip6), its policy rules, the routes of tables 100 and 101
/// and its eBPF pins. A section is empty when that flavour is not there.
pub fn redirection_state(ns: &std::path::Path) -> String {
    let run = |cmd: &str, args: &[&str]| netns::exec_at(ns, cmd, args).unwrap_or_default();
    let iptables: Vec<String> = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect();
    let pins = ebpf::cookie_at(ns)
        .map(|c| {
            let mut v: Vec<String> = std::fs::read_dir(ebpf::pin_dir(&ebpf::pin_root(), c))
                .map(|d| {
                    d.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v.join(" ")
        })
        .unwrap_or_default();
    format!(
        "iptables:\n{}\nnft:\n{}\nrules:\n{}\ntable 100:\n{}\ntable 101:\n{}\npins:\n{pins}\n",
        iptables.join("\n"),
        run("nft", &["-s", "list", "ruleset", "inet"]),
        run("ip", &["rule", "list"]) + &run("ip", &["-6", "rule", "list"]),
        run("ip", &["route", "list", "table", "100"])
            + &run("ip", &["-6", "route", "list", "table", "100"]),
        run("ip", &["route", "list", "table", "101"])
            + &run("ip", &["-6", "route", "list", "table", "101"]),
    )
}

/// One section of [`redirection_state`].
pub fn state_section<'a>(state: &'a str, name: &str) -> &'a str {
    let start = state
        .find(&format!("{name}:\n"))
        .map(|i| i + name.len() + 2)
        .unwrap_or(state.len());
    let rest = &state[start..];
    let end = [
        "iptables:\n",
        "nft:\n",
        "rules:\n",
        "table 100:\n",
        "table 101:\n",
        "pins:\n",
    ]
    .iter()
    .filter_map(|h| rest.find(h))
    .min()
    .unwrap_or(rest.len());
    rest[..end].trim()
}
