//! ServiceEntry on the local mesh (docs/GATEWAY.md, "Egress"): a fake external host runs in
//! a namespace outside the mesh; registered by a ServiceEntry, mesh pods reach it by name
//! (ztunnel's DNS answers its VIP, or its own address for resolution NONE) and ztunnel
//! counts and logs the traffic as that service's. A `workloadSelector` entry makes mesh
//! pods the endpoints of an internal host, reached over HBONE.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

const APPS: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: outside
  labels: {app: api}
spec:
  containers:
  - name: api
    image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: web
    image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.2
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: curl
  labels: {app: curl}
spec:
  containers:
  - name: curl
    image: curlimages/curl
    command: [sleep, infinity]
";

fn ztunnel_lines(mesh: &Mesh, pattern: &[&str]) -> usize {
    ["node-1", "node-2"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(mesh.home.join(format!("logs/{n}-ztunnel.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| pattern.iter().all(|p| l.contains(p)))
                .count()
        })
        .sum()
}

#[test]
fn service_entries_register_hosts_outside_and_inside_the_mesh() {
    let mesh = Mesh::tagged("s");
    let apps = mesh.write("apps.yaml", APPS);
    mesh.ok(&["up", apps.to_str().unwrap(), "--no-ingress"]);
    let api_ip = mesh.pod("api")["ip"].as_str().unwrap().to_string();
    let entries = mesh.write(
        "entries.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.external.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {api_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: legacy
spec:
  hosts: [legacy.external.test]
  addresses: [{api_ip}]
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: internal
spec:
  hosts: [web.internal.test]
  ports: [{{number: 80, name: http, targetPort: 9080}}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: web}}
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: outside
spec:
  selector: {{app: api}}
  ports: [{{port: 9080, name: http}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: by-name
spec:
  hosts: [byname.external.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{{address: api.outside.svc.cluster.local}}]
"
        ),
    );
    mesh.ok(&["apply", "-f", entries.to_str().unwrap()]);
    let get = |url: &str, expect: &str| {
        let mut last = String::new();
        let ok = eventually(15, || {
            let out = mesh.exec("curl", &["curl", "-sS", "-m", "5", url]);
            last = out.stdout + &out.stderr;
            last.contains(expect)
        });
        assert!(ok, "{url}: {last}\n{}", mesh.logs());
    };
    // STATIC: by name, on the entry's port 80, to the endpoint's 9080, in plain text.
    get("http://api.external.test/details/0", "details-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &[
                "direction=outbound",
                "dst.service=\"api.external.test\"",
                "src.workload=\"curl\""
            ]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // DNS with an endpoint by name: ztunnel resolves the name when it connects.
    get("http://byname.external.test/details/0", "details-v1");
    // NONE: the name answers the address itself; the traffic goes where it was addressed.
    get("http://legacy.external.test:9080/details/0", "details-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &["direction=outbound", "dst.service=\"legacy.external.test\""]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // MESH_INTERNAL by workloadSelector: the mesh pod behind the name, over HBONE.
    get("http://web.internal.test/ratings/0", "ratings-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &[
                "direction=inbound",
                "dst.workload=\"web\"",
                "src.identity=\"spiffe://cluster.local/ns/default/sa/default\""
            ]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // A host nothing registers does not resolve.
    let out = mesh.exec(
        "curl",
        &["curl", "-sS", "-m", "3", "http://unknown.external.test/"],
    );
    assert!(!out.ok, "{}", out.stdout);
}

/// A CA, and a certificate it signs for `name` (server and client use alike), as PEM files
/// under the mesh's home: (ca, cert, key).
fn signed(mesh: &Mesh, ca: &(rcgen::Certificate, rcgen::KeyPair), name: &str) -> [String; 2] {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca.0, &ca.1)
        .unwrap();
    [
        mesh.write(&format!("{name}.crt"), &cert.pem()),
        mesh.write(&format!("{name}.key"), &key.serialize_pem()),
    ]
    .map(|p| p.display().to_string())
}

#[test]
fn the_waypoint_originates_tls_to_hosts_outside_the_mesh() {
    let mesh = Mesh::tagged("o");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = (params.self_signed(&ca_key).unwrap(), ca_key);
    let ca_file = mesh.write("ca.crt", &ca.0.pem()).display().to_string();
    let [server_crt, server_key] = signed(&mesh, &ca, "secure.external.test");
    let [client_crt, client_key] = signed(&mesh, &ca, "client.keelson.test");
    let apps = mesh.write(
        "apps.yaml",
        &format!(
            "{WAYPOINT}---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: v1
kind: Pod
metadata:
  name: secure
  namespace: outside
spec:
  containers:
  - name: api
    image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
    ports: [{{containerPort: 9080}}]
    env:
    - {{name: TLS_CERT, value: {server_crt}}}
    - {{name: TLS_KEY, value: {server_key}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: mutual
  namespace: outside
spec:
  containers:
  - name: api
    image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.2
    ports: [{{containerPort: 9080}}]
    env:
    - {{name: TLS_CERT, value: {server_crt}}}
    - {{name: TLS_KEY, value: {server_key}}}
    - {{name: TLS_CLIENT_CA, value: {ca_file}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: curl
  labels: {{app: curl}}
spec:
  containers:
  - name: curl
    image: curlimages/curl
    command: [sleep, infinity]
"
        ),
    );
    mesh.ok(&["up", apps.to_str().unwrap(), "--no-ingress"]);
    let ip = |pod: &str| mesh.pod(pod)["ip"].as_str().unwrap().to_string();
    let (secure, mutual) = (ip("secure"), ip("mutual"));
    // Plain-text names on port 80 for both HTTPS hosts; the namespace's waypoint serves
    // them (the namespace uses it) and, without a DestinationRule, speaks plain HTTP.
    let entries = mesh.write(
        "entries.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure
spec:
  hosts: [secure.external.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {secure}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: mutual
spec:
  hosts: [mutual.external.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {mutual}}}]
"
        ),
    );
    mesh.ok(&["apply", "-f", entries.to_str().unwrap()]);
    let call = |host: &str| mesh.curl_i(&[&format!("http://{host}/details/0")]);
    let mut last = (0, String::new());
    assert!(
        eventually(15, || {
            last = call("secure.external.test");
            last.0 == 503
        }),
        "plain HTTP to an HTTPS server: {last:?}"
    );
    let rules = |secure_tls: &str, mutual_tls: &str| {
        let dr = mesh.write(
            "tls.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure
spec:
  host: secure.external.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {secure_tls}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: mutual
spec:
  host: mutual.external.test
  trafficPolicy:
    tls: {mutual_tls}
"
            ),
        );
        mesh.ok(&["apply", "-f", dr.to_str().unwrap()]);
    };
    // SIMPLE, verified against the CA file by the host's name; MUTUAL with a client
    // certificate.
    rules(
        &format!("{{mode: SIMPLE, caCertificates: {ca_file}}}"),
        &format!(
            "{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {client_crt}, privateKey: {client_key}, sni: secure.external.test}}"
        ),
    );
    assert!(
        eventually(15, || {
            last = call("secure.external.test");
            last.0 == 200 && last.1.contains("details-v1")
        }),
        "SIMPLE: {last:?}\n{}",
        mesh.logs()
    );
    let (status, body) = mesh.curl_i(&["http://mutual.external.test/ratings/0"]);
    assert!(
        status == 200 && body.contains("ratings-v1"),
        "MUTUAL: {body}"
    );
    let log = || mesh.pod_log("default", "waypoint-0", "istio-proxy");
    assert!(
        eventually(5, || log().lines().any(|l| l
            .contains("destination=secure.external.test:80")
            && l.contains("status=200"))),
        "{}",
        log()
    );

    // A server whose certificate names neither the SNI nor the subjectAltNames, and a
    // server asking for a certificate the waypoint does not have: 503, saying why.
    rules(
        &format!("{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [other.test]}}"),
        &format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: secure.external.test}}"),
    );
    assert!(
        eventually(15, || {
            last = call("secure.external.test");
            last.0 == 503
        }),
        "wrong SAN: {last:?}"
    );
    assert!(
        last.1.contains("certificate not valid for name"),
        "{last:?}"
    );
    let (status, body) = mesh.curl_i(&["http://mutual.external.test/ratings/0"]);
    assert_eq!(status, 503, "no client certificate: {body}");
}
