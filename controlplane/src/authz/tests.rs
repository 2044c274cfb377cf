use super::*;
use pb::string_match::MatchType;
use resources::Resources;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: node-a}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {serviceAccountName: db, nodeName: node-a}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: other, labels: {app: web}}
spec: {nodeName: node-b}
status: {podIP: 10.0.0.3}
"#;

fn load(extra: &str) -> Resources {
    let mut r = Resources::default();
    r.add_text("pods.yaml", PODS).unwrap();
    r.add_text("policy.yaml", extra).unwrap();
    r
}

fn find<'a>(t: &'a Translated, name: &str) -> &'a pb::Authorization {
    &t.policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no policy {name} in {:?}", t.policies))
        .authorization
}

#[test]
fn scope_follows_selector_and_namespace() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sel, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["9"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-sel, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}}
"#,
        ),
        &MeshSettings::default(),
    );
    assert_eq!(
        find(&t, "shop/sel").scope,
        pb::Scope::WorkloadSelector as i32
    );
    assert_eq!(find(&t, "shop/ns-wide").scope, pb::Scope::Namespace as i32);
    assert_eq!(find(&t, "shop/ns-wide").action, pb::Action::Deny as i32);
    assert_eq!(
        find(&t, "istio-system/mesh").scope,
        pb::Scope::Global as i32
    );
    // An ALLOW with no rules is sent with no rules: it allows nothing.
    assert!(find(&t, "istio-system/mesh").rules.is_empty());
    // `rules: [{}]` is one empty rule: it allows everything.
    assert_eq!(
        find(&t, "shop/sel").rules,
        vec![pb::Rule { clauses: vec![] }]
    );
    // Selection: same namespace, or any namespace from the root namespace.
    assert_eq!(
        t.selected["shop/web-1"],
        vec!["istio-system/root-sel".to_string(), "shop/sel".to_string()]
    );
    assert_eq!(
        t.selected["other/api-1"],
        vec!["istio-system/root-sel".to_string()]
    );
    assert!(!t.selected.contains_key("shop/db-1"));
}

#[test]
fn waypoint_audit_and_custom_policies_are_not_sent() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wp, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec: {action: CUSTOM, provider: {name: x}, rules: [{}]}
"#,
        ),
        &MeshSettings::default(),
    );
    assert!(t.policies.is_empty());
    assert_eq!(t.skipped.len(), 3);
}

#[test]
fn sources_operations_and_conditions_become_clauses() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/web", "cluster.local/ns/x/*", "*/sa/admin", "*"]
        notNamespaces: [kube-system]
        serviceAccounts: [web, other/api]
        ipBlocks: [10.0.0.0/8, 192.168.1.1]
    - source: {notIpBlocks: ["fd00::/8"]}
    to:
    - operation: {ports: ["8080"], notPorts: ["9090"]}
    when:
    - key: destination.ip
      values: [10.0.0.2]
    - key: source.namespace
      notValues: [evil]
"#,
        ),
        &MeshSettings::default(),
    );
    let p = find(&t, "shop/p");
    assert!(p.dry_run);
    let rule = &p.rules[0];
    assert_eq!(rule.clauses.len(), 4, "from, to and two conditions");
    let from = &rule.clauses[0].matches;
    assert_eq!(from.len(), 2, "the from entries are OR-ed in one clause");
    let kinds: Vec<_> = from[0]
        .principals
        .iter()
        .map(|m| m.match_type.clone().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            MatchType::Exact("cluster.local/ns/shop/sa/web".into()),
            MatchType::Prefix("cluster.local/ns/x/".into()),
            MatchType::Suffix("/sa/admin".into()),
            MatchType::Presence(()),
        ]
    );
    assert_eq!(
        from[0].service_accounts,
        vec![
            pb::ServiceAccountMatch {
                namespace: "shop".into(),
                service_account: "web".into()
            },
            pb::ServiceAccountMatch {
                namespace: "other".into(),
                service_account: "api".into()
            },
        ]
    );
    assert_eq!(
        from[0].source_ips,
        vec![
            pb::Address {
                address: vec![10, 0, 0, 0],
                length: 8
            },
            pb::Address {
                address: vec![192, 168, 1, 1],
                length: 32
            },
        ]
    );
    assert_eq!(from[1].not_source_ips[0].length, 8);
    assert_eq!(rule.clauses[1].matches[0].destination_ports, vec![8080]);
    assert_eq!(rule.clauses[1].matches[0].not_destination_ports, vec![9090]);
    assert_eq!(
        rule.clauses[2].matches[0].destination_ips[0].address,
        vec![10, 0, 0, 2]
    );
    assert_eq!(rule.clauses[3].matches[0].not_namespaces.len(), 1);
}

#[test]
fn http_conditions_fail_closed() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [shop]}}]
  - when: [{key: "request.headers[x-user]", values: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], ports: ["8080"]}}]
"#,
        ),
        &MeshSettings::default(),
    );
    // The ALLOW keeps only its L4 rule.
    let allow = find(&t, "shop/allow");
    assert_eq!(allow.rules.len(), 1);
    assert_eq!(allow.rules[0].clauses[0].matches[0].namespaces.len(), 1);
    // The DENY keeps its port and loses the path: it denies more, not less.
    let deny = find(&t, "shop/deny");
    assert_eq!(deny.rules.len(), 1);
    assert_eq!(
        deny.rules[0].clauses[0].matches[0].destination_ports,
        vec![8080]
    );
}

#[test]
fn bad_values_are_reported_with_their_field() {
    let mut r = Resources::default();
    let err = r
        .add_text(
            "bad.yaml",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8, 10.0.0.300]}}]
"#,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("AuthorizationPolicy bad"), "{err}");
    assert!(
        err.contains("spec.rules[0].from[0].source.ipBlocks[1]"),
        "{err}"
    );
    let err = r
        .add_text(
            "bad.yaml",
            "kind: AuthorizationPolicy\nmetadata: {name: b2}\nspec: {action: MAYBE}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.action"), "{err}");
    let err = r
        .add_text(
            "bad.yaml",
            "kind: AuthorizationPolicy\nmetadata: {name: b3}\nspec: {rules: [{to: [{operation: {ports: [http]}}]}]}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("operation.ports[0]"), "{err}");
}

fn is_static_strict(a: &pb::Authorization) -> bool {
    let m = &a.rules[0].clauses[0].matches[0];
    a.action == pb::Action::Deny as i32
        && m.not_principals
            == vec![pb::StringMatch {
                match_type: Some(MatchType::Presence(())),
            }]
}

#[test]
fn mesh_wide_strict_is_the_static_global_policy() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#,
        ),
        &MeshSettings::default(),
    );
    let p = find(&t, "istio-system/istio_converted_static_strict");
    assert_eq!(p.scope, pb::Scope::Global as i32);
    assert!(is_static_strict(p));
    assert!(t.selected.is_empty());
}

#[test]
fn narrower_peer_authentications_override_per_workload() {
    let t = translate(
        &load(
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: relaxed, namespace: other}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-ports, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  portLevelMtls:
    5432: {mode: PERMISSIVE}
"#,
        ),
        &MeshSettings::default(),
    );
    // web-1 inherits the mesh STRICT, as a selector policy now that it can be overridden.
    let mesh = find(&t, "istio-system/istio_converted_static_strict");
    assert_eq!(mesh.scope, pb::Scope::WorkloadSelector as i32);
    assert_eq!(
        t.selected["shop/web-1"],
        vec!["istio-system/istio_converted_static_strict".to_string()]
    );
    // other/api-1 is PERMISSIVE: no deny at all.
    assert!(!t.selected.contains_key("other/api-1"));
    // db-1 is STRICT except on 5432.
    let db = find(&t, "shop/converted_peer_authentication_db-ports");
    assert!(is_static_strict(db));
    assert_eq!(
        db.rules[0].clauses[0].matches[0].not_destination_ports,
        vec![5432]
    );
    assert_eq!(
        t.selected["shop/db-1"],
        vec!["shop/converted_peer_authentication_db-ports".to_string()]
    );
}

#[test]
fn waypoint_policies_carry_what_they_attach_to() {
    let res = load(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: wp-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {nodeName: node-a}
status: {podIP: 10.0.0.9}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-gateway, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}
  - {kind: Service, group: "", name: web}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everywhere, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-not-root, namespace: shop}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: selected, namespace: shop}
spec: {selector: {matchLabels: {app: web}}}
"#,
    );
    let mesh = MeshSettings::default();
    let wp = waypoint_policies(&res, &mesh);
    let names: Vec<&str> = wp.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["by-gateway", "everywhere", "class-not-root"]);
    assert_eq!(wp[0].waypoint_uids, ["Kubernetes//Pod/shop/wp-0"]);
    assert_eq!(wp[0].service_hostnames, ["web.shop.svc.cluster.local"]);
    assert!(wp[0].dry_run && !wp[0].all_waypoints);
    let spec: l7::authz::AuthorizationPolicySpec = serde_json::from_str(&wp[0].spec_json).unwrap();
    assert_eq!(spec.rules[0].to[0].operation.methods, ["DELETE"]);
    assert!(wp[1].all_waypoints);
    assert!(!wp[2].all_waypoints && wp[2].waypoint_uids.is_empty());
}
