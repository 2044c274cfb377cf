//! ztunnel configuration from environment variables, named as the upstream ztunnel names them
//! wherever the concept is the same, so Keelson's ztunnel can run in the upstream DaemonSet.
//! Every variable is parsed; all bad values are reported together.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hbone::H2Config;
use identity::Identity;

// Upstream names.
pub const PROXY_MODE: &str = "PROXY_MODE";
pub const PROXY_WORKLOAD_INFO: &str = "PROXY_WORKLOAD_INFO";
pub const LOCAL_XDS_PATH: &str = "LOCAL_XDS_PATH";
pub const POOL_MAX_STREAMS_PER_CONNECTION: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
pub const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
pub const HTTP2_STREAM_WINDOW_SIZE: &str = "HTTP2_STREAM_WINDOW_SIZE";
pub const HTTP2_CONNECTION_WINDOW_SIZE: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
pub const HTTP2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
pub const ZTUNNEL_WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
pub const UNSTABLE_ENABLE_SOCKS5: &str = "UNSTABLE_ENABLE_SOCKS5";
pub const ENABLE_ORIG_SRC: &str = "ENABLE_ORIG_SRC";
pub const SECRET_TTL: &str = "SECRET_TTL";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const ISTIO_META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
pub const NODE_NAME: &str = "NODE_NAME";
pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const INSTANCE_IP: &str = "INSTANCE_IP";
pub const TERMINATION_GRACE_PERIOD_SECONDS: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const IPV6_ENABLED: &str = "IPV6_ENABLED";
pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
pub const ALT_XDS_HOSTNAME: &str = "ALT_XDS_HOSTNAME";
pub const CA_ADDRESS: &str = "CA_ADDRESS";
pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
pub const ALT_CA_HOSTNAME: &str = "ALT_CA_HOSTNAME";
pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
pub const XDS_HEADER_PREFIX: &str = "XDS_HEADER_";
pub const CA_HEADER_PREFIX: &str = "CA_HEADER_";
pub const ISTIO_META_PREFIX: &str = "ISTIO_META_";
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
pub const DEFAULT_AUTH_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
pub const ISTIO_META_DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
pub const INPOD_UDS: &str = "INPOD_UDS";
pub const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
// Keelson's own.
/// The resolv.conf whose nameservers the DNS proxy forwards to (default `/etc/resolv.conf`).
pub const KEELSON_RESOLV_CONF: &str = "KEELSON_RESOLV_CONF";
/// Directory holding `root-cert.pem` and `root-key.pem` of the local CA that signs this
/// ztunnel's workload certificates (tests and the local mesh; the remote CA comes later).
pub const KEELSON_LOCAL_CA_DIR: &str = "KEELSON_LOCAL_CA_DIR";
/// SO_MARK put on every upstream socket so in-pod redirection rules skip ztunnel's own traffic.
pub const PACKET_MARK: &str = "PACKET_MARK";
/// Time allowed for an inbound HBONE connection's TLS and HTTP/2 handshakes (default 10s).
pub const HBONE_HANDSHAKE_TIMEOUT: &str = "HBONE_HANDSHAKE_TIMEOUT";
/// Inbound HBONE connections in handshake at once, over every pod of the node (1024).
pub const HBONE_MAX_HANDSHAKES: &str = "HBONE_MAX_HANDSHAKES";
/// Inbound HBONE connections in handshake at once from one source IP (256).
pub const HBONE_MAX_HANDSHAKES_PER_IP: &str = "HBONE_MAX_HANDSHAKES_PER_IP";
/// HTTP/2 PING interval on every HBONE connection, both sides (default 10s).
pub const HBONE_KEEPALIVE_INTERVAL: &str = "HBONE_KEEPALIVE_INTERVAL";
/// Time a PING may go unanswered before its HBONE connection is dropped (default 20s).
pub const HBONE_KEEPALIVE_TIMEOUT: &str = "HBONE_KEEPALIVE_TIMEOUT";
/// Waypoint: time a request head may take from its first byte (default 10s), then 408.
pub const HTTP_HEADER_READ_TIMEOUT: &str = "HTTP_HEADER_READ_TIMEOUT";
/// Waypoint: time a tunnel may stay with no request in progress, and a request body may go
/// without a byte, before it is closed (default 1h, as Envoy's HTTP idle timeout).
pub const HTTP_IDLE_TIMEOUT: &str = "HTTP_IDLE_TIMEOUT";

/// The DNS proxy's port, UDP and TCP on 127.0.0.1 (docs/WIRE.md).
pub const DNS_PORT: u16 = 15053;
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Dedicated,
    Shared,
}

/// The workload a dedicated ztunnel serves (`PROXY_WORKLOAD_INFO=ns/name/sa`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyWorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// A gRPC server ztunnel calls (xDS or the CA): its address, the root its serving
/// certificate must chain to, the name to check it for, and extra request headers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrpcTarget {
    /// `https://host:port`.
    pub address: String,
    pub root_ca: PathBuf,
    pub alt_hostname: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub proxy_mode: ProxyMode,
    pub workload_info: Option<ProxyWorkloadInfo>,
    pub local_xds_path: Option<PathBuf>,
    pub local_ca_dir: Option<PathBuf>,
    pub xds: Option<GrpcTarget>,
    pub ca: Option<GrpcTarget>,
    /// `AUTH_TOKEN`: a file path (re-read on every request) or the token itself.
    #[serde(skip)]
    pub auth_token: String,
    /// Shared mode: the node agent's ZDS socket.
    pub inpod_uds: PathBuf,
    /// The DNS proxy on 15053 (`ISTIO_META_DNS_CAPTURE`, default on).
    pub dns_proxy: bool,
    pub resolv_conf: PathBuf,
    /// `ISTIO_META_<K>` variables, as node metadata key `<K>`.
    pub node_metadata: Vec<(String, String)>,
    pub secret_ttl: Duration,
    pub h2: H2Config,
    pub handshakes: hbone::HandshakeLimits,
    pub http_header_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub worker_threads: usize,
    pub socks5: bool,
    pub orig_src: bool,
    pub packet_mark: Option<u32>,
    pub cluster_id: String,
    pub node_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub instance_ip: Option<String>,
    pub drain_deadline: Duration,
    pub json_logs: bool,
    pub ipv6: bool,
    pub ports: Ports,
}

/// Listener ports (docs/WIRE.md §2).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ports {
    pub admin: u16,
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub inbound_hbone: u16,
    pub metrics: u16,
    pub readiness: u16,
    pub socks5: u16,
    pub dns: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            admin: 15000,
            outbound: 15001,
            inbound_plaintext: 15006,
            inbound_hbone: hbone::HBONE_PORT,
            metrics: 15020,
            readiness: 15021,
            socks5: 15080,
            dns: DNS_PORT,
        }
    }
}

impl Ports {
    /// Ports a proxied connection may never be delivered to: ztunnel's own listeners
    /// (a loop, or a pod reaching ztunnel's admin surface through the mesh).
    pub fn is_own(&self, port: u16, socks5: bool) -> bool {
        [
            self.admin,
            self.outbound,
            self.inbound_plaintext,
            self.inbound_hbone,
            self.metrics,
            self.readiness,
            self.dns,
        ]
        .contains(&port)
            || (socks5 && port == self.socks5)
    }
}

/// Where variables are read from: the process environment, or a map in tests.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
    /// Every non-empty variable whose name starts with `prefix`, the prefix removed, sorted.
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::env::vars()
            .filter(|(_, v)| !v.is_empty())
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v)))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        v.sort();
        v
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        v.sort();
        v
    }
}

/// An address with no scheme gets `https://` (docs/WIRE.md §3.1).
pub fn normalize_address(a: &str) -> Result<String, String> {
    let a = if a.contains("://") {
        a.to_string()
    } else {
        format!("https://{a}")
    };
    let uri: http::Uri = a.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("only https:// is supported".into());
    }
    if uri.host().is_none() {
        return Err("no host".into());
    }
    Ok(a)
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

struct Reader<'a> {
    src: &'a dyn Source,
    errors: Vec<String>,
}

impl Reader<'_> {
    fn parse<T>(&mut self, key: &str, default: T, f: impl Fn(&str) -> Result<T, String>) -> T {
        match self.src.get(key) {
            None => default,
            Some(v) => f(v.trim()).unwrap_or_else(|e| {
                self.errors.push(format!("{key}={v:?}: {e}"));
                default
            }),
        }
    }

    fn num<T: std::str::FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        self.parse(key, default, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        self.parse(key, default, |v| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        })
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.parse(key, default, parse_duration)
    }
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        Duration::ZERO => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// Parses Go-style durations (`500ms`, `30s`, `5m`, `24h`, `1h30m`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in {s:?}"))?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().map_err(|_| format!("bad number in {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in {s:?}")),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())?;
        rest = tail;
    }
    Ok(total)
}

impl Config {
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            src,
            errors: Vec::new(),
        };
        let proxy_mode = r.parse(PROXY_MODE, ProxyMode::Shared, |v| {
            match v.to_ascii_lowercase().as_str() {
                "dedicated" => Ok(ProxyMode::Dedicated),
                "shared" => Ok(ProxyMode::Shared),
                _ => Err("expected shared or dedicated".into()),
            }
        });
        let workload_info = r.parse(PROXY_WORKLOAD_INFO, None, |v| {
            let parts: Vec<&str> = v.split('/').collect();
            match parts.as_slice() {
                [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                    Ok(Some(ProxyWorkloadInfo {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        service_account: sa.to_string(),
                    }))
                }
                _ => Err("expected <namespace>/<name>/<service account>".into()),
            }
        });
        let defaults = H2Config::default();
        let h2 = H2Config {
            stream_window: r.num(HTTP2_STREAM_WINDOW_SIZE, defaults.stream_window),
            connection_window: r.num(HTTP2_CONNECTION_WINDOW_SIZE, defaults.connection_window),
            frame_size: r.parse(HTTP2_FRAME_SIZE, defaults.frame_size, |v| {
                let n: u32 = v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                if (16_384..=16_777_215).contains(&n) {
                    Ok(n)
                } else {
                    Err("must be between 16384 and 16777215".into())
                }
            }),
            pool_max_streams: r.parse(
                POOL_MAX_STREAMS_PER_CONNECTION,
                defaults.pool_max_streams,
                |v| match v.parse::<u32>() {
                    Ok(0) => Err("must be at least 1".into()),
                    Ok(n) => Ok(n),
                    Err(e) => Err(e.to_string()),
                },
            ),
            pool_idle_timeout: r.duration(POOL_UNUSED_RELEASE_TIMEOUT, defaults.pool_idle_timeout),
            keepalive_interval: r.parse(
                HBONE_KEEPALIVE_INTERVAL,
                defaults.keepalive_interval,
                positive_duration,
            ),
            keepalive_timeout: r.parse(
                HBONE_KEEPALIVE_TIMEOUT,
                defaults.keepalive_timeout,
                positive_duration,
            ),
            ..defaults
        };
        let local_ca_dir = r.parse(KEELSON_LOCAL_CA_DIR, None, |v| Ok(Some(PathBuf::from(v))));
        let xds_address = r.parse(XDS_ADDRESS, None, |v| normalize_address(v).map(Some));
        let root = |r: &mut Reader<'_>, key: &str, default: &str| {
            r.parse(key, PathBuf::from(default), |v| {
                if v == "SYSTEM" {
                    Err("system roots are not supported; give the root certificate file".into())
                } else {
                    Ok(PathBuf::from(v))
                }
            })
        };
        let xds_root = root(&mut r, XDS_ROOT_CA, DEFAULT_ROOT_CA);
        let xds = xds_address.map(|address| GrpcTarget {
            address,
            root_ca: xds_root.clone(),
            alt_hostname: src.get(ALT_XDS_HOSTNAME),
            headers: src.prefixed(XDS_HEADER_PREFIX),
        });
        // The CA defaults to the xDS server, unless a local CA is configured.
        let ca_address = r.parse(CA_ADDRESS, None, |v| normalize_address(v).map(Some));
        let ca_root = root(
            &mut r,
            CA_ROOT_CA,
            xds_root.to_str().unwrap_or(DEFAULT_ROOT_CA),
        );
        let ca = ca_address
            .or_else(|| {
                local_ca_dir
                    .is_none()
                    .then(|| xds.as_ref().map(|x| x.address.clone()))
                    .flatten()
            })
            .map(|address| GrpcTarget {
                address,
                root_ca: ca_root,
                alt_hostname: src.get(ALT_CA_HOSTNAME),
                headers: src.prefixed(CA_HEADER_PREFIX),
            });
        let cfg = Config {
            proxy_mode,
            workload_info,
            local_xds_path: r.parse(LOCAL_XDS_PATH, None, |v| Ok(Some(PathBuf::from(v)))),
            local_ca_dir,
            xds,
            ca,
            auth_token: src
                .get(AUTH_TOKEN)
                .unwrap_or_else(|| DEFAULT_AUTH_TOKEN.into()),
            node_metadata: src.prefixed(ISTIO_META_PREFIX),
            dns_proxy: r.boolean(ISTIO_META_DNS_CAPTURE, true),
            inpod_uds: r.parse(INPOD_UDS, PathBuf::from(DEFAULT_INPOD_UDS), |v| {
                Ok(PathBuf::from(v))
            }),
            resolv_conf: r.parse(
                KEELSON_RESOLV_CONF,
                PathBuf::from("/etc/resolv.conf"),
                |v| Ok(PathBuf::from(v)),
            ),
            secret_ttl: r.duration(SECRET_TTL, identity::ca::DEFAULT_CERT_TTL),
            h2,
            handshakes: {
                let d = hbone::HandshakeLimits::default();
                let at_least_one = |v: &str| match v.parse::<usize>() {
                    Ok(0) => Err("must be at least 1".to_string()),
                    Ok(n) => Ok(n),
                    Err(e) => Err(e.to_string()),
                };
                hbone::HandshakeLimits {
                    timeout: r.duration(HBONE_HANDSHAKE_TIMEOUT, d.timeout),
                    max_total: r.parse(HBONE_MAX_HANDSHAKES, d.max_total, at_least_one),
                    max_per_ip: r.parse(HBONE_MAX_HANDSHAKES_PER_IP, d.max_per_ip, at_least_one),
                }
            },
            http_header_timeout: r.duration(HTTP_HEADER_READ_TIMEOUT, Duration::from_secs(10)),
            http_idle_timeout: r.duration(HTTP_IDLE_TIMEOUT, Duration::from_secs(3600)),
            worker_threads: r.num(ZTUNNEL_WORKER_THREADS, 2usize).max(1),
            socks5: r.boolean(UNSTABLE_ENABLE_SOCKS5, false),
            orig_src: r.boolean(ENABLE_ORIG_SRC, proxy_mode == ProxyMode::Shared),
            // Shared mode marks every socket it makes in a pod (docs/WIRE.md §2.1).
            packet_mark: r.parse(
                PACKET_MARK,
                (proxy_mode == ProxyMode::Shared).then_some(1337),
                |v| {
                    let n = match v.strip_prefix("0x") {
                        Some(hex) => u32::from_str_radix(hex, 16),
                        None => v.parse(),
                    };
                    n.map(Some).map_err(|e| e.to_string())
                },
            ),
            cluster_id: src
                .get(ISTIO_META_CLUSTER_ID)
                .or_else(|| src.get(CLUSTER_ID))
                .unwrap_or_else(|| DEFAULT_CLUSTER_ID.into()),
            node_name: src.get(NODE_NAME),
            pod_name: src.get(POD_NAME),
            pod_namespace: src.get(POD_NAMESPACE),
            instance_ip: src.get(INSTANCE_IP),
            drain_deadline: r.parse(TERMINATION_GRACE_PERIOD_SECONDS, DEFAULT_DRAIN, |v| {
                v.parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|e| e.to_string())
            }),
            json_logs: r.parse(LOG_FORMAT, false, |v| match v {
                "json" => Ok(true),
                "plain" => Ok(false),
                _ => Err("expected plain or json".into()),
            }),
            ipv6: r.boolean(IPV6_ENABLED, true),
            ports: Ports::default(),
        };
        let mut errors = r.errors;
        match cfg.proxy_mode {
            ProxyMode::Dedicated if cfg.workload_info.is_none() => errors.push(format!(
                "{PROXY_MODE}=dedicated needs {PROXY_WORKLOAD_INFO}=<namespace>/<name>/<service account>"
            )),
            ProxyMode::Shared if cfg.workload_info.is_some() => errors.push(format!(
                "{PROXY_WORKLOAD_INFO} is for {PROXY_MODE}=dedicated; shared mode learns its pods from the node agent"
            )),
            _ => {}
        }
        match (&cfg.local_xds_path, &cfg.xds) {
            (None, None) => errors.push(format!(
                "set {XDS_ADDRESS} (the control plane) or {LOCAL_XDS_PATH} (a local file)"
            )),
            (Some(_), Some(_)) => errors.push(format!(
                "{XDS_ADDRESS} and {LOCAL_XDS_PATH} are exclusive; set one"
            )),
            _ => {}
        }
        match (&cfg.local_ca_dir, &cfg.ca) {
            (None, None) => errors.push(format!(
                "set {CA_ADDRESS} or {XDS_ADDRESS} (the CA) or {KEELSON_LOCAL_CA_DIR} (a local CA)"
            )),
            (Some(_), Some(_)) => errors.push(format!(
                "{CA_ADDRESS} and {KEELSON_LOCAL_CA_DIR} are exclusive; set one"
            )),
            _ => {}
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The identity this (dedicated) ztunnel speaks for, before the trust domain is known.
    pub fn dedicated_identity(&self, trust_domain: &str) -> Option<Identity> {
        self.workload_info
            .as_ref()
            .map(|w| Identity::new(trust_domain, &w.namespace, &w.service_account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reports_every_bad_value_at_once() {
        let e = Config::from_source(&env(&[
            (PROXY_MODE, "dedicated"),
            (HTTP2_FRAME_SIZE, "12"),
            (POOL_MAX_STREAMS_PER_CONNECTION, "x"),
            (SECRET_TTL, "3 days"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        for key in [
            HTTP2_FRAME_SIZE,
            POOL_MAX_STREAMS_PER_CONNECTION,
            SECRET_TTL,
            PROXY_WORKLOAD_INFO,
            LOCAL_XDS_PATH,
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
    }

    #[test]
    fn reads_upstream_names() {
        let c = Config::from_source(&env(&[
            (PROXY_MODE, "dedicated"),
            (PROXY_WORKLOAD_INFO, "default/web-0/web"),
            (LOCAL_XDS_PATH, "/tmp/x.yaml"),
            (KEELSON_LOCAL_CA_DIR, "/tmp/ca"),
            (POOL_MAX_STREAMS_PER_CONNECTION, "7"),
            (POOL_UNUSED_RELEASE_TIMEOUT, "1m30s"),
            (HTTP2_STREAM_WINDOW_SIZE, "65535"),
            (ZTUNNEL_WORKER_THREADS, "1"),
        ]))
        .unwrap();
        assert_eq!(c.h2.pool_max_streams, 7);
        assert_eq!(c.h2.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.h2.stream_window, 65535);
        assert_eq!(c.worker_threads, 1);
        assert_eq!(c.workload_info.unwrap().service_account, "web");
    }

    #[test]
    fn remote_control_plane() {
        let c = Config::from_source(&env(&[
            (PROXY_MODE, "dedicated"),
            (PROXY_WORKLOAD_INFO, "default/web-0/web"),
            (XDS_ADDRESS, "istiod.istio-system.svc:15012"),
            (XDS_ROOT_CA, "/etc/root.pem"),
            (CLUSTER_ID, "c1"),
            ("XDS_HEADER_x-extra", "1"),
            ("ISTIO_META_FOO", "bar"),
        ]))
        .unwrap();
        let xds = c.xds.unwrap();
        assert_eq!(xds.address, "https://istiod.istio-system.svc:15012");
        assert_eq!(xds.headers, vec![("x-extra".to_string(), "1".to_string())]);
        // The CA follows the xDS server and its root.
        let ca = c.ca.unwrap();
        assert_eq!(ca.address, xds.address);
        assert_eq!(ca.root_ca, PathBuf::from("/etc/root.pem"));
        assert_eq!(c.cluster_id, "c1");
        assert_eq!(
            c.node_metadata,
            vec![("FOO".to_string(), "bar".to_string())]
        );
        assert_eq!(c.auth_token, DEFAULT_AUTH_TOKEN);
        let e = Config::from_source(&env(&[
            (PROXY_MODE, "dedicated"),
            (PROXY_WORKLOAD_INFO, "default/web-0/web"),
            (XDS_ADDRESS, "http://x:1"),
            (XDS_ROOT_CA, "SYSTEM"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains(XDS_ADDRESS) && e.contains(XDS_ROOT_CA), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
