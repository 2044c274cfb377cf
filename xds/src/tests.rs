//! Wire-format checks: the bytes for hand-encoded fields decode into the fields of the
//! reference tables (a wrong field number here would be a silent incompatibility).

use prost::Message;

use crate::discovery::{DeltaDiscoveryRequest, Resource};
use crate::security::{Authorization, StringMatch};
use crate::workload::zds::{DelWorkload, WorkloadRequest};
use crate::workload::{address, Address, TunnelProtocol, Workload};

/// Encodes a length-delimited field `n` holding `bytes`.
fn field(n: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(n, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn varint(n: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(n, prost::encoding::WireType::Varint, &mut out);
    prost::encoding::encode_varint(v, &mut out);
    out
}

#[test]
fn workload_field_numbers() {
    let mut w = Vec::new();
    w.extend(field(20, b"uid-1"));
    w.extend(field(1, b"pod"));
    w.extend(field(2, b"ns"));
    w.extend(field(3, &[10, 0, 0, 1]));
    w.extend(varint(5, 1));
    w.extend(field(7, b"sa"));
    w.extend(field(9, b"node-a"));
    let addr = field(1, &w);
    let a = Address::decode(addr.as_slice()).unwrap();
    let Some(address::Type::Workload(w)) = a.r#type else {
        panic!("not a workload")
    };
    assert_eq!(
        (w.uid.as_str(), w.name.as_str(), w.namespace.as_str()),
        ("uid-1", "pod", "ns")
    );
    assert_eq!(w.addresses, vec![vec![10, 0, 0, 1]]);
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.service_account, "sa");
    assert_eq!(w.node, "node-a");
}

#[test]
fn unknown_enum_values_are_visible_for_strict_conversion() {
    let w = Workload {
        tunnel_protocol: 7,
        ..Default::default()
    };
    assert!(TunnelProtocol::try_from(w.tunnel_protocol).is_err());
}

#[test]
fn del_workload_uid_is_field_2() {
    let req = WorkloadRequest::decode(field(2, &field(2, b"pod-uid")).as_slice()).unwrap();
    let Some(crate::workload::zds::workload_request::Payload::Del(DelWorkload { uid })) =
        req.payload
    else {
        panic!("not a Del")
    };
    assert_eq!(uid, "pod-uid");
}

#[test]
fn authorization_nesting_and_presence() {
    // Authorization{rules:[Rule{clauses:[Clause{matches:[Match{not_principals:[presence]}]}]}]}
    let presence = field(4, &[]);
    let m = field(4, &presence);
    let clause = field(2, &m);
    let rule = field(1, &clause);
    let mut a = field(1, b"istio_converted_static_strict");
    a.extend(varint(4, 1));
    a.extend(field(5, &rule));
    let a = Authorization::decode(a.as_slice()).unwrap();
    let m = &a.rules[0].clauses[0].matches[0];
    assert!(matches!(
        m.not_principals[0],
        StringMatch {
            match_type: Some(crate::security::string_match::MatchType::Presence(_))
        }
    ));
    assert_eq!(a.action(), crate::security::Action::Deny);
}

#[test]
fn delta_request_and_resource_field_numbers() {
    let mut r = Vec::new();
    r.extend(field(2, crate::type_url::ADDRESS.as_bytes()));
    r.extend(field(6, b"nonce-1"));
    let req = DeltaDiscoveryRequest::decode(r.as_slice()).unwrap();
    assert_eq!(req.type_url, crate::type_url::ADDRESS);
    assert_eq!(req.response_nonce, "nonce-1");
    let mut res = field(3, b"ns/name");
    res.extend(field(1, b"v1"));
    let res = Resource::decode(res.as_slice()).unwrap();
    assert_eq!((res.name.as_str(), res.version.as_str()), ("ns/name", "v1"));
}
