//! Waypoints on the local mesh: a Gateway of class `istio-waypoint` deploys one, a namespace
//! label sends that namespace's service traffic through it, and it forwards each HTTP request
//! to an endpoint with its own identity.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

const WAYPOINT: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
    istio.io/use-waypoint: waypoint
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
";

const RATINGS_OPTS_OUT: &str = "apiVersion: v1
kind: Service
metadata:
  name: ratings
  labels:
    app: ratings
    istio.io/use-waypoint: none
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: ratings
";

fn waypoint_log(mesh: &Mesh) -> String {
    std::fs::read_to_string(
        mesh.home
            .join("logs/pod-default-waypoint-0-istio-proxy.log"),
    )
    .unwrap_or_default()
}

fn requests_from(log: &str, source_sa: &str, destination: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(&format!(
                "src.identity=spiffe://cluster.local/ns/default/sa/{source_sa} "
            )) && l.contains(&format!("destination={destination}"))
        })
        .count()
}

#[test]
fn a_namespace_waypoint_carries_its_service_traffic() {
    let mesh = Mesh::new();
    mesh.ok(&["up"]);
    let file = mesh.write("waypoint.yaml", WAYPOINT);
    let out = mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("pod default/waypoint-0"), "{out}");
    let status = mesh.ok(&["status"]);
    let line = status.lines().find(|l| l.contains("waypoint-0")).unwrap();
    assert!(
        line.contains(" no ") && line.contains("Running"),
        "{status}"
    );

    // Every hop of bookinfo now goes through the waypoint, request by request.
    let page = mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );
    assert!(
        page.contains("details-v1") && page.contains("reviews-v"),
        "{page}"
    );
    let productpage = "productpage.default.svc.cluster.local:9080";
    assert!(
        eventually(5, || {
            let log = waypoint_log(&mesh);
            requests_from(&log, "curl", productpage) == 1
                && requests_from(
                    &log,
                    "bookinfo-productpage",
                    "details.default.svc.cluster.local:9080",
                ) == 1
                && requests_from(
                    &log,
                    "bookinfo-productpage",
                    "reviews.default.svc.cluster.local:9080",
                ) == 1
        }),
        "{}",
        waypoint_log(&mesh)
    );
    let log = waypoint_log(&mesh);
    let line = log
        .lines()
        .find(|l| l.contains("destination=productpage") && l.contains("path=/productpage"))
        .unwrap();
    assert!(
        line.contains("method=GET") && line.contains("status=200"),
        "{line}"
    );

    // The destination's ztunnel sees the waypoint as the client (its identity, by mTLS).
    let node = mesh.pod("productpage-v1-0")["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(5, || {
            std::fs::read_to_string(mesh.home.join(format!("logs/{node}-ztunnel.log")))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("direction=inbound")
                        && l.contains(
                            "src.identity=\"spiffe://cluster.local/ns/default/sa/waypoint\"",
                        )
                        && l.contains("dst.workload=\"productpage-v1-0\"")
                })
        }),
        "{}",
        mesh.logs()
    );

    // HTTP/2 with prior knowledge inside the tunnel, forwarded to an HTTP/1.1 app.
    let out = mesh.exec(
        "curl",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "http://productpage:9080/headers",
        ],
    );
    assert!(
        out.ok && out.stdout.contains("productpage-v1"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(eventually(5, || requests_from(
        &waypoint_log(&mesh),
        "curl",
        productpage
    ) == 2));

    // A service that opts out (`istio.io/use-waypoint: none`) is reached directly.
    let opt_out = mesh.write("ratings.yaml", RATINGS_OPTS_OUT);
    mesh.ok(&["apply", "-f", opt_out.to_str().unwrap()]);
    let ratings = "ratings.default.svc.cluster.local:9080";
    let before = requests_from(&waypoint_log(&mesh), "curl", ratings);
    std::thread::sleep(std::time::Duration::from_millis(500));
    mesh.curl("curl", "http://ratings:9080/ratings/0", "ratings-v1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(requests_from(&waypoint_log(&mesh), "curl", ratings), before);
    // Pod-addressed traffic does not use a waypoint that is for services only.
    let details_ip = mesh.pod("details-v1-0")["ip"].as_str().unwrap().to_string();
    mesh.curl(
        "curl",
        &format!("http://{details_ip}:9080/details/0"),
        "details-v1",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waypoint_log(&mesh).contains(&format!("authority={details_ip}")));

    // The Gateway deleted (the namespace label stays): traffic goes direct again.
    let gateway = mesh.write("gateway.yaml", WAYPOINT.split("---\n").nth(1).unwrap());
    let out = mesh.ok(&["delete", "-f", gateway.to_str().unwrap()]);
    assert!(out.contains("pod default/waypoint-0: deleted"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );
    assert_eq!(requests_from(&waypoint_log(&mesh), "curl", productpage), 2);
    for f in [file, opt_out, gateway] {
        let _ = std::fs::remove_file(f);
    }
}
