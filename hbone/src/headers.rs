//! The CONNECT request's authority and headers (docs/WIRE.md §1.4), built and read here only:
//! `forwarded` (RFC 7239: the app's address, and the Service it addressed), `baggage` (W3C
//! Baggage: the source workload) and `traceparent` (W3C Trace Context).

use std::net::{IpAddr, SocketAddr};

/// `for="<client addr>"`, then `;host=<service FQDN>` when the connection addressed a Service.
pub fn forwarded(client: SocketAddr, service_host: Option<&str>) -> String {
    let mut v = format!("for=\"{client}\"");
    if let Some(h) = service_host {
        v.push_str(";host=");
        v.push_str(h);
    }
    v
}

/// `host=` of a `forwarded` header, if any.
pub fn forwarded_host(v: &str) -> Option<&str> {
    v.split(';')
        .find_map(|kv| kv.trim().strip_prefix("host="))
        .map(|h| h.trim_matches('"'))
}

/// The address of a `forwarded` header's `for=` (the client's socket address, quoted, IPv6
/// in brackets; a bare address is accepted too).
pub fn forwarded_for(v: &str) -> Option<IpAddr> {
    let f = v
        .split(';')
        .find_map(|p| p.trim().strip_prefix("for="))?
        .trim_matches('"');
    if let Ok(a) = f.parse::<SocketAddr>() {
        return Some(a.ip());
    }
    f.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// A hostname `:authority`: `host:port` with a DNS-style host and a non-zero port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some((host, port))
}

/// What `baggage` says of the source workload; empty fields are left out.
#[derive(Debug, Default, Clone, Copy)]
pub struct Baggage<'a> {
    pub cluster: &'a str,
    pub namespace: &'a str,
    /// `deployment`, `cronjob`, `pod` or `job` (lower case); `deployment` when empty.
    pub workload_type: &'a str,
    pub workload_name: &'a str,
    pub service: &'a str,
    pub version: &'a str,
}

impl Baggage<'_> {
    /// `k8s.cluster.name=…,k8s.namespace.name=…,k8s.<type>.name=…,service.name=…,service.version=…`.
    pub fn header(&self) -> String {
        let mut items = vec![
            format!("k8s.cluster.name={}", self.cluster),
            format!("k8s.namespace.name={}", self.namespace),
        ];
        if !self.workload_name.is_empty() {
            let kind = match self.workload_type {
                "" => "deployment".to_string(),
                t => t.to_ascii_lowercase(),
            };
            items.push(format!("k8s.{kind}.name={}", self.workload_name));
        }
        if !self.service.is_empty() {
            items.push(format!("service.name={}", self.service));
        }
        if !self.version.is_empty() {
            items.push(format!("service.version={}", self.version));
        }
        items.join(",")
    }
}

/// `00-<32 hex>-<16 hex>-00` with random trace and parent ids.
pub fn random_traceparent() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let parent: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{parent:016x}-00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        let v = forwarded("10.0.0.7:41234".parse().unwrap(), Some("a.b.svc"));
        assert_eq!(v, "for=\"10.0.0.7:41234\";host=a.b.svc");
        assert_eq!(forwarded_host(&v), Some("a.b.svc"));
        assert_eq!(forwarded_for(&v), Some("10.0.0.7".parse().unwrap()));
        let v6 = forwarded("[fd00::7]:80".parse().unwrap(), None);
        assert_eq!(forwarded_for(&v6), Some("fd00::7".parse().unwrap()));
        assert_eq!(forwarded_host(&v6), None);
        assert_eq!(
            forwarded_for("host=x; for=10.0.0.8"),
            Some("10.0.0.8".parse().unwrap())
        );
        assert_eq!(forwarded_for("host=x"), None);
        assert_eq!(forwarded_for("for=\"unknown\""), None);
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            split_host_port("echo.default.svc.cluster.local:80"),
            Some(("echo.default.svc.cluster.local", 80))
        );
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "a b:80",
            "[::1",
            "a:b:c",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn baggage_names_the_source() {
        let b = Baggage {
            cluster: "Kubernetes",
            namespace: "default",
            workload_type: "Deployment",
            workload_name: "reviews-v1",
            service: "reviews",
            version: "v1",
        };
        assert_eq!(
            b.header(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,\
             k8s.deployment.name=reviews-v1,service.name=reviews,service.version=v1"
        );
        assert!(random_traceparent().starts_with("00-"));
    }
}
