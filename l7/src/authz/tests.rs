use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use std::borrow::Cow;

fn spec(yaml: &str) -> AuthorizationPolicySpec {
    let s: AuthorizationPolicySpec = serde_yaml::from_str(yaml).unwrap();
    s.validate().unwrap();
    s
}

fn policy(name: &str, yaml: &str) -> Arc<Policy> {
    Arc::new(Policy::new("shop", name, &spec(yaml), false))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Req {
    principal: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: http::HeaderMap,
    tcp: bool,
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req {
            principal: Some("cluster.local/ns/shop/sa/web"),
            method: "GET",
            path,
            host: "api.shop:8080",
            headers: http::HeaderMap::new(),
            tcp: false,
        }
    }

    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            principal: self.principal,
            source_ip: ip("10.1.2.3"),
            destination_ip: ip("10.96.0.9"),
            destination_port: 8080,
            http: (!self.tcp).then_some(HttpAttributes {
                auth: None,
                method: self.method,
                path: self.path,
                host: self.host,
                headers: &self.headers,
            }),
        }
    }
}

fn decide(policies: &[Arc<Policy>], r: &Req) -> Decision {
    evaluate(policies, &r.attrs()).decision
}

#[test]
fn deny_then_allow_and_an_allow_without_rules_denies_everything() {
    let deny = policy(
        "no-admin",
        "action: DENY\nrules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
    );
    let allow = policy("gets", "rules: [{to: [{operation: {methods: [GET]}}]}]");
    assert_eq!(decide(&[], &Req::get("/x")), Decision::Allow(None));
    let both = [deny.clone(), allow.clone()];
    assert_eq!(
        decide(&both, &Req::get("/x")),
        Decision::Allow(Some("shop.gets".into()))
    );
    assert_eq!(
        decide(&both, &Req::get("/admin/users")),
        Decision::Deny(Some("shop.no-admin".into()))
    );
    let mut post = Req::get("/x");
    post.method = "POST";
    assert_eq!(decide(&both, &post), Decision::Deny(None));
    assert_eq!(
        Decision::Deny(None).details(),
        "rbac_access_denied_matched_policy[none]"
    );
    // ALLOW with no rules: nothing matches, so everything is denied (AP-03); `rules: [{}]`
    // allows everything; DENY with no rules denies nothing (AP-04).
    let nothing = policy("nothing", "{}");
    assert_eq!(decide(&[nothing], &Req::get("/")), Decision::Deny(None));
    let all = policy("all", "rules: [{}]");
    assert!(decide(&[all], &Req::get("/")).allowed());
    let empty_deny = policy("d", "action: DENY");
    assert!(decide(&[empty_deny], &Req::get("/")).allowed());
}

#[test]
fn custom_denies_when_it_matches_and_dry_run_only_shadows() {
    let custom = policy(
        "ext",
        "action: CUSTOM\nprovider: {name: opa}\nrules: [{to: [{operation: {paths: [/private]}}]}]",
    );
    assert!(!decide(std::slice::from_ref(&custom), &Req::get("/private")).allowed());
    assert!(decide(&[custom], &Req::get("/public")).allowed());
    let s = spec("action: DENY\nrules: [{}]");
    let dry = Arc::new(Policy::new("shop", "dry", &s, true));
    let v = evaluate(&[dry], &Req::get("/").attrs());
    assert_eq!(v.decision, Decision::Allow(None));
    assert_eq!(v.shadow, Some(Decision::Deny(Some("shop.dry".into()))));
    let audit = policy(
        "audit",
        "action: AUDIT\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    let v = evaluate(&[audit], &Req::get("/").attrs());
    assert!(v.decision.allowed());
    assert_eq!(v.audited, vec!["shop.audit".to_string()]);
}

#[test]
fn sources_match_the_peer_identity_and_address() {
    let by = |yaml: &str| policy("p", &format!("rules: [{{from: [{{source: {yaml}}}]}}]"));
    let web = Req::get("/");
    let mut anonymous = Req::get("/");
    anonymous.principal = None;
    for (yaml, peer, anon) in [
        ("{principals: [cluster.local/ns/shop/sa/web]}", true, false),
        ("{principals: [\"*/sa/web\"]}", true, false),
        ("{principals: [\"*\"]}", true, false),
        ("{notPrincipals: [\"*\"]}", false, true),
        ("{namespaces: [shop]}", true, false),
        ("{notNamespaces: [shop]}", false, true),
        ("{serviceAccounts: [web]}", true, false),
        ("{serviceAccounts: [other/web]}", false, false),
        ("{trustDomains: [cluster.local]}", true, false),
        ("{ipBlocks: [10.1.0.0/16]}", true, true),
        ("{notIpBlocks: [10.1.2.3]}", false, false),
        ("{remoteIpBlocks: [10.0.0.0/8]}", true, true),
        // No RequestAuthentication here: no request principal, ever.
        ("{requestPrincipals: [\"*\"]}", false, false),
        ("{notRequestPrincipals: [\"*\"]}", true, true),
        (
            "{namespaces: [shop], ipBlocks: [192.168.0.0/16]}",
            false,
            false,
        ),
    ] {
        let p = by(yaml);
        assert_eq!(
            decide(std::slice::from_ref(&p), &web).allowed(),
            peer,
            "{yaml} peer"
        );
        assert_eq!(decide(&[p], &anonymous).allowed(), anon, "{yaml} anonymous");
    }
}

#[test]
fn operations_and_conditions() {
    let to = |yaml: &str| policy("p", &format!("rules: [{{to: [{{operation: {yaml}}}]}}]"));
    let when = |yaml: &str| policy("p", &format!("rules: [{{when: [{yaml}]}}]"));
    let mut r = Req::get("/api/v1/items");
    r.headers.insert("x-user", "alice".parse().unwrap());
    r.headers.append("x-multi", "a".parse().unwrap());
    r.headers.append("x-multi", "b".parse().unwrap());
    for (p, want) in [
        // Hosts: case-insensitive, the port is part of the value (AP-18).
        (to("{hosts: [API.shop:8080]}"), true),
        (to("{hosts: [api.shop]}"), false),
        (to("{hosts: [\"api.shop*\"]}"), true),
        (to("{notHosts: [\"*.other\"]}"), true),
        (to("{ports: [\"8080\"]}"), true),
        (to("{notPorts: [\"8080\"]}"), false),
        (to("{methods: [GET, HEAD]}"), true),
        (to("{methods: [get]}"), false),
        (to("{paths: [/api/v1/items]}"), true),
        (to("{paths: [\"/api/*\"]}"), true),
        (to("{paths: [\"*/items\"]}"), true),
        (to("{paths: [\"/api/{*}/items\"]}"), true),
        (to("{paths: [\"/{*}/items\"]}"), false),
        (to("{paths: [\"/api/{**}\"]}"), true),
        (to("{notPaths: [\"/api/{**}\"]}"), false),
        (
            when("{key: \"request.headers[X-User]\", values: [alice]}"),
            true,
        ),
        (
            when("{key: \"request.headers[x-user]\", values: [\"al*\"], notValues: [alice]}"),
            false,
        ),
        (
            when("{key: \"request.headers[x-none]\", notValues: [x]}"),
            true,
        ),
        (
            when("{key: \"request.headers[x-multi]\", values: [\"a,b\"]}"),
            true,
        ),
        (when("{key: source.ip, values: [10.1.2.0/24]}"), true),
        (when("{key: remote.ip, notValues: [10.1.2.3]}"), false),
        (when("{key: destination.ip, values: [10.96.0.9]}"), true),
        (when("{key: destination.port, values: [\"9090\"]}"), false),
        (when("{key: source.namespace, values: [shop]}"), true),
        (
            when("{key: source.principal, values: [\"*/sa/web\"]}"),
            true,
        ),
        (
            when("{key: source.serviceAccount, values: [shop/web]}"),
            true,
        ),
        (
            when("{key: request.auth.principal, values: [\"*\"]}"),
            false,
        ),
        (
            when("{key: \"request.auth.claims[groups]\", notValues: [admin]}"),
            true,
        ),
        (when("{key: connection.sni, values: [\"*\"]}"), false),
    ] {
        assert_eq!(decide(&[p], &r).allowed(), want, "{:?}", r.path);
    }
}

#[test]
fn http_conditions_on_a_tcp_connection_allow_less_and_deny_more() {
    let mut tcp = Req::get("/");
    tcp.tcp = true;
    let allow = policy(
        "a",
        "rules: [{to: [{operation: {ports: [\"8080\"], methods: [GET]}}]}]",
    );
    assert!(!decide(&[allow], &tcp).allowed());
    let allow_l4 = policy("a", "rules: [{to: [{operation: {ports: [\"8080\"]}}]}]");
    assert!(decide(&[allow_l4], &tcp).allowed());
    let deny = policy(
        "d",
        "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
    );
    assert!(!decide(std::slice::from_ref(&deny), &tcp).allowed());
    assert!(decide(&[deny], &Req::get("/public")).allowed());
}

#[test]
fn validation_names_the_field() {
    let bad = |yaml: &str| {
        serde_yaml::from_str::<AuthorizationPolicySpec>(yaml)
            .unwrap()
            .validate()
            .unwrap_err()
    };
    for (yaml, want) in [
        (
            "targetRefs: [{kind: Pod, name: x}]",
            "spec.targetRefs[0].kind",
        ),
        (
            "targetRefs: [{kind: Service, group: apps, name: x}]",
            "spec.targetRefs[0].group",
        ),
        (
            "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: \"\"}",
            "spec.targetRef.name",
        ),
        (
            "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Service, name: x}]",
            "mutually exclusive",
        ),
        ("action: CUSTOM", "spec.provider"),
        ("provider: {name: x}", "only for action CUSTOM"),
        (
            "rules: [{when: [{key: request.path, values: [x]}]}]",
            "spec.rules[0].when[0].key",
        ),
        (
            "rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/{**}/x\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a{*}\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{from: [{source: {remoteIpBlocks: [nope]}}]}]",
            "remoteIpBlocks[0]",
        ),
    ] {
        let e = bad(yaml);
        assert!(e.contains(want), "{yaml}: {e}");
    }
    // Core Service refs take group "" or "core".
    spec("targetRefs: [{kind: Service, group: core, name: x}, {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]");
}

#[test]
fn paths_are_normalized_before_matching() {
    for (raw, want) in [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/..", "/"),
        ("/..", "/"),
        ("/a/b/.", "/a/b/"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/a\\..\\admin", "/admin"),
        ("/a//b", "/a//b"),
        ("/caf\u{e9}/%zz", "/caf\u{e9}/%zz"),
        ("/%", "/%"),
    ] {
        assert_eq!(normalize_path(raw), want, "{raw}");
    }
    assert!(matches!(normalize_path("/plain/path"), Cow::Borrowed(_)));
}

#[test]
fn the_spec_survives_a_json_round_trip() {
    let s = spec(
        "targetRefs: [{kind: Service, group: \"\", name: web}]\naction: DENY\nrules: [{from: [{source: {principals: [a], other: [x]}}], to: [{operation: {paths: [/x]}}], when: [{key: source.ip, values: [1.2.3.4]}]}]",
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: AuthorizationPolicySpec = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert!(back.rules[0].from[0].source.beyond_l4());
    assert!(back.rules[0].to[0].operation.beyond_l4());
}
