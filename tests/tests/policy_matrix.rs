//! AuthorizationPolicy and PeerAuthentication, as a user writes them, through the whole path:
//! Kubernetes YAML → `keelson controlplane` → delta ADS → the server's ztunnel → real
//! connections from a meshed client, another meshed identity and a plaintext outsider.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use keelson_tests::*;
use resources::MeshSettings;
use resources::Resources;

const ALL: [bool; 3] = [true, true, true];
const NONE: [bool; 3] = [false, false, false];
const FROM: [&str; 3] = ["client", "other", "outsider"];

fn ap(spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: case, namespace: default}}\nspec:\n{spec}")
}

/// (case, YAML, allowed from [client, other, outsider])
fn cases() -> Vec<(&'static str, String, [bool; 3])> {
    vec![
        ("no policy", String::new(), ALL),
        (
            "allow principal exact",
            ap("  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]\n"),
            [true, false, false],
        ),
        (
            "allow principal prefix",
            ap("  rules: [{from: [{source: {principals: [\"cluster.local/ns/default/sa/cl*\"]}}]}]\n"),
            [true, false, false],
        ),
        (
            "allow principal suffix",
            ap("  rules: [{from: [{source: {principals: [\"*/sa/other\"]}}]}]\n"),
            [false, true, false],
        ),
        (
            "allow any principal",
            ap("  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n"),
            [true, true, false],
        ),
        (
            "allow namespace",
            ap("  rules: [{from: [{source: {namespaces: [default]}}]}]\n"),
            [true, true, false],
        ),
        (
            "allow other namespace",
            ap("  rules: [{from: [{source: {namespaces: [elsewhere]}}]}]\n"),
            NONE,
        ),
        (
            "allow service account",
            ap("  rules: [{from: [{source: {serviceAccounts: [client]}}]}]\n"),
            [true, false, false],
        ),
        (
            "allow service account elsewhere",
            ap("  rules: [{from: [{source: {serviceAccounts: [elsewhere/client]}}]}]\n"),
            NONE,
        ),
        (
            "allow not principal",
            ap("  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/default/sa/client]}}]}]\n"),
            [false, true, true],
        ),
        (
            "deny principal",
            ap("  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]\n"),
            [false, true, true],
        ),
        (
            "deny source ip",
            ap("  action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.10.0.2/32]}}]}]\n"),
            [false, true, true],
        ),
        (
            "allow cidr except one ip",
            ap("  rules: [{from: [{source: {ipBlocks: [10.10.0.0/24], notIpBlocks: [10.10.0.3]}}]}]\n"),
            [true, false, true],
        ),
        (
            "allow target port",
            ap("  rules: [{to: [{operation: {ports: [\"8080\"]}}]}]\n"),
            ALL,
        ),
        (
            "allow another port",
            ap("  rules: [{to: [{operation: {ports: [\"80\"]}}]}]\n"),
            NONE,
        ),
        (
            "deny not port",
            ap("  action: DENY\n  rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]\n"),
            ALL,
        ),
        (
            "allow when source ip",
            ap("  rules: [{when: [{key: source.ip, values: [10.10.0.4]}]}]\n"),
            [false, false, true],
        ),
        (
            "allow when source namespace",
            ap("  rules: [{when: [{key: source.namespace, values: [default]}]}]\n"),
            [true, true, false],
        ),
        (
            "deny when not principal",
            ap("  action: DENY\n  rules: [{when: [{key: source.principal, notValues: [cluster.local/ns/default/sa/client]}]}]\n"),
            [true, false, false],
        ),
        (
            "allow when destination ip and port",
            ap("  rules: [{when: [{key: destination.ip, values: [10.10.0.5]}, {key: destination.port, values: [\"8080\"]}]}]\n"),
            ALL,
        ),
        (
            "allow with an http method fails closed",
            ap("  rules: [{to: [{operation: {methods: [GET]}}]}]\n"),
            NONE,
        ),
        (
            "deny with an http path denies all",
            ap("  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"),
            NONE,
        ),
        (
            "dry-run deny",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: case, namespace: default, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  action: DENY\n  rules: [{}]\n".into(),
            ALL,
        ),
        (
            "selector on another pod",
            ap("  selector: {matchLabels: {pod: other}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]\n"),
            ALL,
        ),
        (
            "selector on the server",
            ap("  selector: {matchLabels: {pod: server}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]}]\n"),
            [false, true, false],
        ),
        ("allow nothing", ap("  {}\n"), NONE),
        (
            "mesh-wide deny from the root namespace",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: case, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]}]\n".into(),
            [true, false, true],
        ),
        (
            "strict mTLS mesh-wide",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n".into(),
            [true, true, false],
        ),
        (
            "strict mesh, permissive server",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: server, namespace: default}\nspec: {selector: {matchLabels: {pod: server}}, mtls: {mode: PERMISSIVE}}\n".into(),
            ALL,
        ),
        (
            "strict on the server's port only",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: server, namespace: default}\nspec: {selector: {matchLabels: {pod: server}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: STRICT}}}\n".into(),
            [true, true, false],
        ),
        (
            "waypoint policy is not ztunnel's",
            ap("  targetRefs: [{kind: Service, group: \"\", name: echo}]\n  action: DENY\n  rules: [{}]\n"),
            ALL,
        ),
        ("audit is not enforced", ap("  action: AUDIT\n  rules: [{}]\n"), ALL),
    ]
}

/// What the server's ztunnel should hold once the case is pushed: policy keys with their
/// scope (a policy may keep its name and change scope between cases) and the selector
/// policies naming the server.
fn expected(tb: &Testbed, yaml: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut res = Resources::default();
    res.add_text("mesh.yaml", &tb.k8s_yaml()).unwrap();
    res.add_text("case.yaml", yaml).unwrap();
    let t = controlplane::authz::translate(&res, &MeshSettings::default());
    (
        t.policies
            .into_iter()
            .map(|p| {
                let scope =
                    ["Global", "Namespace", "WorkloadSelector"][p.authorization.scope as usize];
                format!("{} {scope}", p.name)
            })
            .collect(),
        t.selected
            .get("default/server")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    )
}

fn held(d: &serde_json::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let policies = d["policies"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}/{} {}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or(""),
                        p["scope"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let selected = d["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "server"))
        .and_then(|w| w["authorizationPolicies"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (policies, selected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_matrix_through_the_control_plane() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("other"),
            PodSpec::plain("outsider"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        source: Source::ControlPlane,
        ..Options::default()
    })
    .unwrap();
    assert_eq!(tb.ip("server").to_string(), "10.10.0.5");
    spawn_greeter(&tb, "server", 8080).unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 20);
    for (i, (name, yaml, want)) in all.iter().enumerate() {
        // A name per case, so the sync below cannot mistake the last case's policy for this one.
        let yaml = yaml.replace("name: case,", &format!("name: case-{i},"));
        tb.write_resources("case.yaml", &yaml).unwrap();
        let want_held = expected(&tb, &yaml);
        let synced = eventually(Duration::from_secs(5), || async {
            tb.config_dump("server")
                .map(|d| held(&d) == want_held)
                .unwrap_or(false)
        })
        .await;
        assert!(
            synced.is_some(),
            "{name}: the server's ztunnel never held {want_held:?}"
        );
        for (from, allowed) in FROM.iter().zip(want) {
            let got = greeting(&tb, from, server).await.as_deref() == Some("server");
            if got != *allowed {
                failures.push(format!(
                    "{name}: from {from}: {} but expected {}",
                    if got { "allowed" } else { "denied" },
                    if *allowed { "allowed" } else { "denied" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}",
        failures.len(),
        all.len() * 3,
        failures.join("\n")
    );
}
