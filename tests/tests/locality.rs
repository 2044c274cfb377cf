//! Locality load balancing at a waypoint (docs/WIRE.md §8, DR-19..22): the waypoint's
//! locality from its node's labels, the endpoints' from their `istio-locality` label; with
//! outlier detection the endpoints of the waypoint's own zone take the traffic until they
//! are ejected, then the next zone's; `distribute` sends it where its weights say. Also
//! the `x-request-id` the waypoint gives requests without one.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

const APPS: &str = "apiVersion: v1
kind: Service
metadata:
  name: details
spec:
  selector: {app: details}
  ports: [{port: 9080, name: http}]
---
apiVersion: v1
kind: Pod
metadata:
  name: details-near
  labels: {app: details, version: v1, istio-locality: r1.z1}
spec:
  containers:
  - name: details
    image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: details-far
  labels: {app: details, version: v2, istio-locality: r1.z2}
spec:
  containers:
  - name: details
    image: docker.io/istio/examples-bookinfo-details-v2:1.20.2
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: curl
spec:
  containers:
  - name: curl
    image: curlimages/curl
    command: [sleep, infinity]
";

/// How many of `n` requests each version answered: (v1, v2).
fn spread(mesh: &Mesh, n: usize) -> (usize, usize) {
    let url = "http://details:9080/details/0";
    let mut cmd = vec!["curl", "-si", "-m", "10"];
    cmd.extend(std::iter::repeat_n(url, n));
    let out = mesh.exec("curl", &cmd).stdout;
    (
        out.matches("x-keelson-app: details-v1").count(),
        out.matches("x-keelson-app: details-v2").count(),
    )
}

#[test]
fn the_waypoint_prefers_its_own_zone_and_fails_over() {
    let mesh = Mesh::tagged("l");
    let apps = mesh.write("apps.yaml", &format!("{WAYPOINT}---\n{APPS}"));
    mesh.ok(&["up", apps.to_str().unwrap(), "--no-ingress"]);
    // The waypoint's node is in r1/z1, the other node in r1/z2.
    let near = mesh.pod("waypoint-0")["node"].as_str().unwrap().to_string();
    let far = if near == "node-1" { "node-2" } else { "node-1" };
    let nodes = mesh.write(
        "nodes.yaml",
        &format!(
            "apiVersion: v1
kind: Node
metadata:
  name: {near}
  labels: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}
---
apiVersion: v1
kind: Node
metadata:
  name: {far}
  labels: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z2}}
"
        ),
    );
    mesh.ok(&["apply", "-f", nodes.to_str().unwrap()]);
    // The waypoint gives each request an x-request-id (a UUID) unless it has one.
    let headers = |extra: &[&str]| {
        let mut cmd = vec!["curl", "-s", "-m", "10"];
        cmd.extend_from_slice(extra);
        cmd.push("http://details:9080/headers");
        mesh.exec("curl", &cmd).stdout.to_ascii_lowercase()
    };
    let mut echoed = String::new();
    assert!(
        eventually(15, || {
            echoed = headers(&[]);
            echoed.contains("x-request-id")
        }),
        "{echoed}"
    );
    let id = echoed
        .split("x-request-id")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
                .find(|t| t.len() == 36)
        })
        .unwrap_or_else(|| panic!("no UUID in {echoed}"));
    assert_eq!(id.as_bytes()[14], b'4', "{id}");
    assert!(headers(&["-H", "x-request-id: mine-1"]).contains("mine-1"));

    // No DestinationRule: both zones answer.
    let mut seen = (0, 0);
    assert!(
        eventually(15, || {
            seen = spread(&mesh, 20);
            seen.0 > 0 && seen.1 > 0
        }),
        "{seen:?}\n{}",
        mesh.logs()
    );

    // Outlier detection turns locality failover on (the mesh default): the waypoint's own
    // zone takes everything.
    let rule = |lb: &str| {
        let dr = mesh.write(
            "dr.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  trafficPolicy:
{lb}"
            ),
        );
        mesh.ok(&["apply", "-f", dr.to_str().unwrap()]);
    };
    rule(
        "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n",
    );
    assert!(
        eventually(15, || {
            seen = spread(&mesh, 20);
            seen == (20, 0)
        }),
        "{seen:?}"
    );
    // The near endpoint fails once and is ejected: the next zone takes over.
    let out = mesh.exec(
        "curl",
        &["curl", "-si", "-m", "10", "http://details:9080/status/500"],
    );
    assert!(out.stdout.contains("details-v1"), "{}", out.stdout);
    assert!(
        eventually(10, || {
            seen = spread(&mesh, 20);
            seen == (0, 20)
        }),
        "{seen:?}"
    );

    // distribute: from the waypoint's zone, everything to z2, then everything to z1.
    for (zone, expect) in [("z2", (0, 20)), ("z1", (20, 0))] {
        rule(&format!(
            "    loadBalancer:
      localityLbSetting:
        distribute:
        - from: r1/z1/*
          to: {{r1/{zone}/*: 100}}
"
        ));
        assert!(
            eventually(15, || {
                seen = spread(&mesh, 20);
                seen == expect
            }),
            "{zone}: {seen:?}"
        );
    }
}
