//! Conversion of WDS resources (`istio.workload.Address`) into the store's model. Strict like
//! upstream: an unknown enum value, a malformed address or an out-of-range port fails that
//! resource (and only it) with an error naming the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds::workload as pb;

use super::{HealthStatus, Service, TunnelProtocol, Waypoint, Workload};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {reason}")]
pub struct ConvertError {
    pub resource: String,
    pub field: String,
    pub reason: String,
}

/// A converted `Address`.
#[derive(Debug)]
pub enum Converted {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

fn err(resource: &str, field: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        resource: resource.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Checks that an enum field holds a value this build knows.
fn known<E: TryFrom<i32>>(resource: &str, field: &str, v: i32) -> Result<E, ConvertError> {
    E::try_from(v).map_err(|_| err(resource, field, format!("unknown enum value {v}")))
}

fn ip(resource: &str, field: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).expect("length checked"),
        )),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).expect("length checked")).to_canonical()),
        n => Err(err(
            resource,
            field,
            format!("{n} bytes is not an IPv4 or IPv6 address"),
        )),
    }
}

fn port(resource: &str, field: &str, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| err(resource, field, format!("port {p} out of range")))
}

fn waypoint(
    r: &str,
    field: &str,
    g: Option<pb::GatewayAddress>,
) -> Result<Option<Waypoint>, ConvertError> {
    let Some(g) = g else { return Ok(None) };
    let port = port(r, &format!("{field}.hbone_mtls_port"), g.hbone_mtls_port)?;
    match g.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) => Ok(Some(Waypoint {
            namespace: h.namespace,
            hostname: h.hostname,
            address: None,
            port,
        })),
        Some(pb::gateway_address::Destination::Address(a)) => Ok(Some(Waypoint {
            namespace: String::new(),
            hostname: String::new(),
            address: Some(ip(r, &format!("{field}.address"), &a.address)?),
            port,
        })),
        None => Err(err(r, field, "no destination")),
    }
}

pub fn convert_address(name: &str, a: pb::Address) -> Result<Converted, ConvertError> {
    match a.r#type {
        Some(pb::address::Type::Workload(w)) => {
            convert_workload(w).map(|w| Converted::Workload(Box::new(w)))
        }
        Some(pb::address::Type::Service(s)) => {
            convert_service(s).map(|s| Converted::Service(Box::new(s)))
        }
        None => Err(err(name, "type", "neither workload nor service")),
    }
}

pub fn convert_workload(w: pb::Workload) -> Result<Workload, ConvertError> {
    let r = if w.uid.is_empty() {
        "workload".to_string()
    } else {
        format!("workload {}", w.uid)
    };
    if w.uid.is_empty() {
        return Err(err(&r, "uid", "empty"));
    }
    let tunnel_protocol =
        match known::<pb::TunnelProtocol>(&r, "tunnel_protocol", w.tunnel_protocol)? {
            pb::TunnelProtocol::None => TunnelProtocol::None,
            pb::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
            pb::TunnelProtocol::LegacyIstioMtls => {
                return Err(err(
                    &r,
                    "tunnel_protocol",
                    "LEGACY_ISTIO_MTLS is not supported",
                ))
            }
        };
    let status = match known::<pb::WorkloadStatus>(&r, "status", w.status)? {
        pb::WorkloadStatus::Healthy => HealthStatus::Healthy,
        pb::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    let workload_type = known::<pb::WorkloadType>(&r, "workload_type", w.workload_type)?
        .as_str_name()
        .to_ascii_lowercase();
    known::<pb::NetworkMode>(&r, "network_mode", w.network_mode)?;
    if let Some(t) = &w.application_tunnel {
        known::<pb::application_tunnel::Protocol>(&r, "application_tunnel.protocol", t.protocol)?;
    }
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, b)| ip(&r, &format!("addresses[{i}]"), b))
        .collect::<Result<Vec<_>, _>>()?;
    let mut services = BTreeMap::new();
    for (key, list) in w.services {
        let mut ports = BTreeMap::new();
        for p in list.ports {
            let field = format!("services[{key}]");
            known::<pb::AppProtocol>(&r, &field, p.app_protocol)?;
            ports.insert(
                port(&r, &field, p.service_port)?,
                port(&r, &field, p.target_port)?,
            );
        }
        services.insert(key, ports);
    }
    Ok(Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        addresses,
        network: w.network,
        tunnel_protocol,
        trust_domain: w.trust_domain,
        service_account: w.service_account,
        node: w.node,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_name: w.workload_name,
        workload_type,
        cluster_id: w.cluster_id,
        status,
        capacity: w.capacity,
        services,
        authorization_policies: w.authorization_policies,
        waypoint: waypoint(&r, "waypoint", w.waypoint)?,
        hostname: w.hostname,
        locality: w.locality.map(|l| super::Locality {
            region: l.region,
            zone: l.zone,
            subzone: l.subzone,
        }),
    })
}

pub fn convert_service(s: pb::Service) -> Result<Service, ConvertError> {
    let r = format!("service {}/{}", s.namespace, s.hostname);
    if s.hostname.is_empty() {
        return Err(err(&r, "hostname", "empty"));
    }
    known::<pb::IpFamilies>(&r, "ip_families", s.ip_families)?;
    known::<pb::Visibility>(&r, "visibility", s.visibility)?;
    if let Some(lb) = &s.load_balancing {
        known::<pb::load_balancing::Mode>(&r, "load_balancing.mode", lb.mode)?;
        known::<pb::load_balancing::HealthPolicy>(
            &r,
            "load_balancing.health_policy",
            lb.health_policy,
        )?;
        for sc in &lb.routing_preference {
            known::<pb::load_balancing::Scope>(&r, "load_balancing.routing_preference", *sc)?;
        }
    }
    let addresses = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&r, &format!("addresses[{i}]"), &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = BTreeMap::new();
    let mut app_protocols = BTreeMap::new();
    for p in &s.ports {
        let proto = known::<pb::AppProtocol>(&r, "ports", p.app_protocol)?;
        let service_port = port(&r, "ports", p.service_port)?;
        ports.insert(service_port, port(&r, "ports", p.target_port)?);
        let name = match proto {
            pb::AppProtocol::Unknown => None,
            pb::AppProtocol::Http11 => Some("http"),
            pb::AppProtocol::Http2 => Some("http2"),
            pb::AppProtocol::Grpc => Some("grpc"),
            pb::AppProtocol::Tcp => Some("tcp"),
            pb::AppProtocol::Tls => Some("tls"),
        };
        if let Some(n) = name {
            app_protocols.insert(service_port, n.to_string());
        }
    }
    for (i, san) in s.subject_alt_names.iter().enumerate() {
        san.parse::<identity::Identity>()
            .map_err(|e| err(&r, &format!("subject_alt_names[{i}]"), e.to_string()))?;
    }
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        addresses,
        ports,
        subject_alt_names: s.subject_alt_names,
        waypoint: waypoint(&r, "waypoint", s.waypoint)?,
        app_protocols,
        key_text: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> pb::Workload {
        pb::Workload {
            uid: "Kubernetes//Pod/default/web-0".into(),
            name: "web-0".into(),
            namespace: "default".into(),
            addresses: vec![vec![10, 0, 0, 7]],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            service_account: "web".into(),
            services: [(
                "default/web.default.svc.cluster.local".to_string(),
                pb::PortList {
                    ports: vec![pb::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: 0,
                    }],
                },
            )]
            .into(),
            capacity: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn converts_a_workload() {
        let w = convert_workload(workload()).unwrap();
        assert_eq!(w.addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone);
        assert_eq!(
            w.services["default/web.default.svc.cluster.local"][&80],
            8080
        );
        assert_eq!(w.capacity, Some(3));
        assert_eq!(w.workload_type, "deployment");
        assert_eq!(
            w.identity().to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let cases: Vec<(pb::Workload, &str)> = vec![
            (
                pb::Workload {
                    tunnel_protocol: 9,
                    ..workload()
                },
                "tunnel_protocol",
            ),
            (
                pb::Workload {
                    tunnel_protocol: 2,
                    ..workload()
                },
                "tunnel_protocol",
            ),
            (
                pb::Workload {
                    status: 5,
                    ..workload()
                },
                "status",
            ),
            (
                pb::Workload {
                    addresses: vec![vec![1, 2, 3]],
                    ..workload()
                },
                "addresses[0]",
            ),
            (
                pb::Workload {
                    uid: String::new(),
                    ..workload()
                },
                "uid",
            ),
        ];
        for (w, field) in cases {
            let e = convert_workload(w).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut w = workload();
        w.services
            .get_mut("default/web.default.svc.cluster.local")
            .unwrap()
            .ports[0]
            .target_port = 70000;
        assert!(convert_workload(w)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn converts_a_service_and_checks_sans() {
        let s = pb::Service {
            name: "web".into(),
            namespace: "default".into(),
            hostname: "web.default.svc.cluster.local".into(),
            addresses: vec![pb::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
                length: None,
            }],
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 0,
                app_protocol: 0,
            }],
            subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
            ..Default::default()
        };
        let c = convert_service(s.clone()).unwrap();
        assert_eq!(c.key(), "default/web.default.svc.cluster.local");
        assert_eq!(c.ports[&80], 0);
        let bad = pb::Service {
            subject_alt_names: vec!["not-spiffe".into()],
            ..s.clone()
        };
        assert_eq!(
            convert_service(bad).unwrap_err().field,
            "subject_alt_names[0]"
        );
        let bad = pb::Service { visibility: 4, ..s };
        assert_eq!(convert_service(bad).unwrap_err().field, "visibility");
    }
}
