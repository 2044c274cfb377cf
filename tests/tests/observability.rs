//! Seeing the mesh (docs/OBSERVABILITY.md), on bookinfo with its waypoint and the ingress
//! gateway: the spans of one request reach an OTLP collector with their parent/child links,
//! service names and status codes.

use std::collections::BTreeMap;

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

fn example(path: &str) -> String {
    format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The spans the collector logged, by trace id.
fn spans(mesh: &Mesh) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in mesh
        .pod_log("observability", "collector", "collector")
        .lines()
    {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(t) = v["trace_id"].as_str() {
                out.entry(t.to_string()).or_default().push(v);
            }
        }
    }
    out
}

fn field<'a>(s: &'a serde_json::Value, k: &str) -> &'a str {
    s[k].as_str().unwrap_or_default()
}

#[test]
fn traces_reach_the_collector_linked() {
    let mesh = Mesh::tagged("o");
    mesh.ok(&["up"]);
    for f in [
        "bookinfo/waypoint.yaml",
        "bookinfo/bookinfo-gateway.yaml",
        "observability/tracing.yaml",
    ] {
        mesh.ok(&["apply", "-f", &example(f)]);
    }
    let url = format!(
        "http://{}:80/productpage",
        mesh.host_ip("istio-ingressgateway-0")
    );
    mesh.curl_host_until(&[&url], 200, "Simple Bookstore App");
    let status = mesh.ok(&["status"]);
    assert!(
        status.contains("otel collector.observability.svc.cluster.local:4317 100%"),
        "{status}"
    );

    // One page, in a trace the test starts (sampled): every proxy on the way continues it.
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER: &str = "b7ad6b7169203331";
    let tp = format!("traceparent: 00-{TRACE}-{CALLER}-01");
    let mut trace = Vec::new();
    let complete = |t: &[serde_json::Value]| {
        let servers: Vec<&str> = t
            .iter()
            .filter(|s| field(s, "kind") == "server")
            .map(|s| field(s, "name"))
            .collect();
        let at_gateway = t.iter().any(|s| {
            field(s, "kind") == "server"
                && field(s, "service") == "istio-ingressgateway.istio-system"
        });
        at_gateway
            && ["details", "reviews", "ratings"]
                .iter()
                .all(|svc| servers.iter().any(|n| n.starts_with(svc)))
    };
    assert!(
        eventually(30, || {
            let (status, _) = mesh.curl_host(&["-H", &tp, &url]);
            assert_eq!(status, 200);
            std::thread::sleep(std::time::Duration::from_secs(2));
            trace = spans(&mesh).remove(TRACE).unwrap_or_default();
            complete(&trace)
        }),
        "spans of {TRACE}: {trace:#?}\ncollector log: {}\n{}",
        mesh.pod_log("observability", "collector", "collector"),
        mesh.logs()
    );
    let by_id: BTreeMap<&str, &serde_json::Value> =
        trace.iter().map(|s| (field(s, "span_id"), s)).collect();
    for s in &trace {
        // Every span hangs off the caller's, or another span of the trace.
        let parent = field(s, "parent_span_id");
        assert!(
            parent == CALLER || by_id.contains_key(parent),
            "{s} has an unknown parent; trace: {trace:#?}"
        );
        // A client span (a try) is the child of its proxy's server span.
        if field(s, "kind") == "client" {
            let p = by_id[parent];
            assert_eq!(field(p, "kind"), "server", "{s}");
            assert_eq!(field(p, "service"), field(s, "service"), "{s}");
        }
    }
    // The gateway's server span is the caller's child; the waypoint's spans for the calls
    // productpage made are children of the gateway's try (the apps forward the context).
    let gateway: Vec<&serde_json::Value> = trace
        .iter()
        .filter(|s| field(s, "service") == "istio-ingressgateway.istio-system")
        .collect();
    let root = gateway
        .iter()
        .find(|s| field(s, "kind") == "server")
        .unwrap_or_else(|| panic!("no gateway server span: {trace:#?}"));
    assert_eq!(field(root, "parent_span_id"), CALLER);
    assert_eq!(root["attributes"]["http.status_code"], 200);
    let gateway_try = gateway
        .iter()
        .find(|s| field(s, "kind") == "client")
        .unwrap();
    let details = trace
        .iter()
        .find(|s| field(s, "kind") == "server" && field(s, "name").starts_with("details"))
        .unwrap();
    assert_eq!(field(details, "service"), "waypoint.default", "{details}");
    assert_eq!(
        field(details, "parent_span_id"),
        field(gateway_try, "span_id")
    );
    // reviews called ratings: that call's waypoint span is the child of the waypoint's try
    // to reviews.
    let ratings = trace
        .iter()
        .find(|s| field(s, "kind") == "server" && field(s, "name").starts_with("ratings"))
        .unwrap();
    let caller = by_id[field(ratings, "parent_span_id")];
    assert_eq!(field(caller, "kind"), "client");
    assert!(
        field(caller, "name").contains("reviews"),
        "ratings was called from {caller}"
    );

    // A caller's decision not to sample stands: no span of that trace.
    const UNSAMPLED: &str = "1af7651916cd43dd8448eb211c80319c";
    let (status, _) = mesh.curl_host(&[
        "-H",
        &format!("traceparent: 00-{UNSAMPLED}-{CALLER}-00"),
        &url,
    ]);
    assert_eq!(status, 200);
    // An error: the server span says so, with the status code.
    const FAILED: &str = "2af7651916cd43dd8448eb211c80319c";
    mesh.exec(
        "curl-0",
        &[
            "curl",
            "-s",
            "-m",
            "10",
            "-H",
            &format!("traceparent: 00-{FAILED}-{CALLER}-01"),
            "http://details:9080/status/503",
        ],
    );
    let mut errored = None;
    assert!(
        eventually(15, || {
            errored = spans(&mesh)
                .remove(FAILED)
                .and_then(|t| t.into_iter().find(|s| field(s, "kind") == "server"));
            errored.is_some()
        }),
        "no span of the failed request"
    );
    let errored = errored.unwrap();
    assert_eq!(field(&errored, "status"), "error", "{errored}");
    assert_eq!(errored["attributes"]["http.status_code"], 503);
    assert!(
        !spans(&mesh).contains_key(UNSAMPLED),
        "an unsampled trace was reported"
    );
    // ztunnel cannot make spans (it sees bytes, not requests), but it carries the client's
    // context on the CONNECT instead of a random one, and logs the sampled trace's id: on
    // the client's side (read from the request head) and the waypoint's node (from the
    // CONNECT).
    let node = mesh.pod("curl-0")["node"].as_str().unwrap().to_string();
    let wp_node = mesh.pod("waypoint-0")["node"].as_str().unwrap().to_string();
    let log = |n: &str| {
        std::fs::read_to_string(mesh.home.join(format!("logs/{n}-ztunnel.log"))).unwrap_or_default()
    };
    let traced = |n: &str, direction: &str| {
        log(n).lines().any(|l| {
            l.contains("connection complete")
                && l.contains(FAILED)
                && l.contains(&format!("direction={direction}"))
        })
    };
    // Each try is a new connection with the same context.
    let again = || {
        mesh.exec(
            "curl-0",
            &[
                "curl",
                "-s",
                "-m",
                "10",
                "-H",
                &format!("traceparent: 00-{FAILED}-{CALLER}-01"),
                "http://details:9080/status/503",
            ],
        );
    };
    assert!(
        eventually(15, || traced(&node, "outbound") || {
            again();
            false
        }),
        "no outbound access line with the trace id on {node}:\n{}",
        log(&node)
            .lines()
            .filter(|l| l.contains("connection complete"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if wp_node != node {
        assert!(
            eventually(15, || traced(&wp_node, "inbound")),
            "no inbound access line with the trace id on {wp_node}"
        );
    }
}

/// The series of `text` named `name` (exactly, up to its labels) that contain every one of
/// `labels`.
fn series<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels.iter().all(|want| l.contains(want))
        })
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn istio_metrics_are_scraped_from_every_proxy() {
    let mesh = Mesh::tagged("p");
    mesh.ok(&["up"]);
    for f in ["bookinfo/waypoint.yaml", "bookinfo/bookinfo-gateway.yaml"] {
        mesh.ok(&["apply", "-f", &example(f)]);
    }
    let url = format!(
        "http://{}:80/productpage",
        mesh.host_ip("istio-ingressgateway-0")
    );
    mesh.curl_host_until(&[&url], 200, "Simple Bookstore App");
    // gRPC through the waypoint: a status in the trailers (0), and in the head (14).
    let frame = mesh.write("grpc-frame", "\0\0\0\0\x05hello");
    let data = format!("@{}", frame.display());
    let grpc = |method: &str| {
        mesh.exec(
            "curl-0",
            &[
                "curl",
                "-s",
                "-m",
                "10",
                "--http2-prior-knowledge",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "--data-binary",
                &data,
                &format!("http://details:9080/keelson.test.Echo/{method}"),
            ],
        )
    };
    grpc("Echo");
    grpc("Fail");
    let waypoint_ip = mesh.pod("waypoint-0")["ip"].as_str().unwrap().to_string();
    let scrape_waypoint = || {
        mesh.exec(
            "curl-0",
            &[
                "curl",
                "-s",
                "-m",
                "5",
                &format!("http://{waypoint_ip}:15020/metrics"),
            ],
        )
        .stdout
    };
    let mut wp = String::new();
    assert!(
        eventually(15, || {
            wp = scrape_waypoint();
            !series(&wp, "istio_requests_total", &["grpc_response_status=\"0\""]).is_empty()
                && !series(
                    &wp,
                    "istio_requests_total",
                    &["grpc_response_status=\"14\""],
                )
                .is_empty()
        }),
        "no gRPC statuses in the waypoint's metrics:\n{wp}"
    );
    let details = "destination_service=\"details.default.svc.cluster.local\"";
    for name in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_request_bytes_bucket",
        "istio_response_bytes_bucket",
        "istio_request_bytes_sum",
        "istio_response_bytes_sum",
    ] {
        let found = series(&wp, name, &["reporter=\"waypoint\"", details]);
        assert!(!found.is_empty(), "no {name} for details:\n{wp}");
    }
    // Sizes: the page's calls carry a head at least; details answered a body.
    let sum = |name: &str| -> f64 {
        series(
            &wp,
            name,
            &["reporter=\"waypoint\"", details, "response_code=\"200\""],
        )
        .iter()
        .map(|l| value(l))
        .sum()
    };
    assert!(sum("istio_request_bytes_sum") > 0.0, "{wp}");
    assert!(sum("istio_response_bytes_sum") > 100.0, "{wp}");
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        assert!(
            !series(&wp, name, &["reporter=\"waypoint\""]).is_empty(),
            "no {name} at the waypoint:\n{wp}"
        );
    }
    let common = |text: &str, who: &str, component: &str, identity: &str| {
        assert_eq!(
            series(
                text,
                "istio_build",
                &[&format!("component=\"{component}\"")]
            )
            .len(),
            1,
            "{who}: istio_build\n{text}"
        );
        let expiry = series(
            text,
            "istio_agent_cert_expiry_seconds",
            &[&format!(
                "resource_name=\"spiffe://cluster.local/{identity}\""
            )],
        );
        assert!(
            expiry.first().is_some_and(|l| value(l) > 3600.0),
            "{who}: istio_agent_cert_expiry_seconds\n{text}"
        );
        assert!(
            !series(text, "istio_xds_message_total", &[]).is_empty()
                && !series(text, "istio_xds_message_bytes_total", &[]).is_empty(),
            "{who}: istio_xds_*\n{text}"
        );
    };
    common(&wp, "waypoint", "proxy", "ns/default/sa/waypoint");

    // ztunnel, on the node of productpage: its traffic, xDS, certificates and build.
    let node = mesh.pod("productpage-v1-0")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, zt) = netns::http_get_at(
        &mesh.node_netns(&node),
        "127.0.0.1:15020".parse().unwrap(),
        "/metrics",
    )
    .unwrap();
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        assert!(
            !series(&zt, name, &["reporter=\"source\""]).is_empty(),
            "no {name} at ztunnel:\n{zt}"
        );
    }
    common(
        &zt,
        "ztunnel",
        "ztunnel",
        "ns/default/sa/bookinfo-productpage",
    );

    // The control plane's monitoring port.
    let (_, cp) = netns::http_get_at(
        &mesh.node_netns(&node),
        "172.30.0.2:15014".parse().unwrap(),
        "/metrics",
    )
    .unwrap();
    for name in [
        "pilot_xds_pushes_total",
        "citadel_server_success_cert_issuance_count_total",
        "citadel_server_root_cert_expiry_timestamp",
        "citadel_server_root_cert_expiry_seconds",
    ] {
        assert!(!series(&cp, name, &[]).is_empty(), "no {name}:\n{cp}");
    }
    assert_eq!(
        series(&cp, "istio_build", &["component=\"pilot\""]).len(),
        1,
        "{cp}"
    );

    // What the proxies hold, as `keelson ztunnel-config` and `waypoint-config` show it.
    for f in [
        "bookinfo/bookinfo-versions.yaml",
        "bookinfo/virtual-service-reviews-50-v3.yaml",
    ] {
        mesh.ok(&["apply", "-f", &example(f)]);
    }
    let dr = mesh.write(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-limits}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 5}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s}
",
    );
    mesh.ok(&["apply", "-f", dr.to_str().unwrap()]);
    let dump = mesh.config_dump(&node);
    for key in [
        "workloads",
        "services",
        "policies",
        "stagedServices",
        "staticConfig",
        "version",
        "config",
        "certificates",
        "workloadState",
    ] {
        assert!(!dump[key].is_null(), "config_dump has no {key}");
    }
    let table = mesh.ok(&["ztunnel-config", "workloads", "--node", &node]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("productpage-v1-0") && l.contains("HBONE")),
        "{table}"
    );
    let svcs: serde_json::Value =
        serde_json::from_str(&mesh.ok(&["ztunnel-config", "services", "-o", "json"])).unwrap();
    let reviews = svcs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == "reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        reviews["endpoints"].as_object().unwrap().len(),
        3,
        "{reviews}"
    );
    assert_eq!(
        reviews["waypoint"]["destination"],
        "default/waypoint.default.svc.cluster.local"
    );
    assert!(reviews["vips"][0].as_str().unwrap().starts_with('/'));
    let certs: serde_json::Value = serde_json::from_str(&mesh.ok(&[
        "ztunnel-config",
        "certificates",
        "--node",
        &node,
        "-o",
        "json",
    ]))
    .unwrap();
    let chain = &certs[node.as_str()][0]["certChain"];
    assert!(
        chain[0]["pem"]
            .as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
        "{certs}"
    );
    let conns = mesh.ok(&["ztunnel-config", "connections"]);
    assert!(
        conns
            .lines()
            .any(|l| l.contains("source") && l.contains("default/curl") && l.contains("details")),
        "{conns}"
    );
    let mut routes = String::new();
    assert!(
        eventually(15, || {
            routes = mesh.ok(&["waypoint-config", "routes"]);
            routes.lines().any(|l| {
                l.starts_with("reviews.default")
                    && l.contains("default/reviews#0")
                    && l.contains("reviews/v3 (50)")
            })
        }),
        "{routes}"
    );
    let mut clusters = serde_json::Value::Null;
    assert!(
        eventually(15, || {
            clusters =
                serde_json::from_str(&mesh.ok(&["waypoint-config", "clusters", "-o", "json"]))
                    .unwrap();
            clusters["clusters"].as_array().unwrap().iter().any(|c| {
                c["cluster"] == "reviews.default.svc.cluster.local|9080|v3"
                    && c["endpoints"].as_array().unwrap().len() == 1
                    && c["outlierDetection"].is_string()
                    && c["connectionPool"].is_string()
            })
        }),
        "{clusters:#}"
    );
}

/// An instant query against Prometheus: the result's series.
fn query(prom: &str, expr: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-G", "--data-urlencode"])
        .arg(format!("query={expr}"))
        .arg(format!("{prom}/api/v1/query"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v["status"] == "success" || v.is_null(),
        "{expr}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn prometheus_scrapes_the_mesh_and_every_dashboard_panel_has_data() {
    let mesh = Mesh::tagged("q");
    let up = mesh.ok(&["up", "--observability"]);
    let prom = up
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http://") && l.ends_with(":9090"))
        .unwrap_or_else(|| panic!("no Prometheus address in:\n{up}"))
        .to_string();
    for f in ["bookinfo/waypoint.yaml", "bookinfo/bookinfo-gateway.yaml"] {
        mesh.ok(&["apply", "-f", &example(f)]);
    }
    let url = format!(
        "http://{}:80/productpage",
        mesh.host_ip("istio-ingressgateway-0")
    );
    mesh.curl_host_until(&[&url], 200, "Simple Bookstore App");
    // Every target is scraped: the control plane, both ztunnels, the waypoint and the
    // gateway.
    let mut targets = serde_json::Value::Null;
    assert!(
        eventually(30, || {
            let out = std::process::Command::new("curl")
                .args(["-s", "-m", "5", &format!("{prom}/api/v1/targets")])
                .output()
                .unwrap();
            targets = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let active = targets["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = |job: &str| {
                active
                    .iter()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            up("controlplane") == 1 && up("ztunnel") == 2 && up("proxies") == 2
        }),
        "targets: {targets:#}"
    );
    // Traffic while Prometheus watches, then every panel of every dashboard has series.
    let dashboards = ["ztunnel", "waypoint", "services"];
    let mut empty: Vec<String> = Vec::new();
    let ok = eventually(60, || {
        for _ in 0..5 {
            mesh.curl_host(&[&url]);
        }
        empty.clear();
        for d in dashboards {
            let path = format!("{}/../deploy/grafana/{d}.json", env!("CARGO_MANIFEST_DIR"));
            let dash: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for p in dash["panels"].as_array().unwrap() {
                for t in p["targets"].as_array().unwrap() {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap()
                        .replace("$__rate_interval", "1m");
                    if query(&prom, &expr).is_empty() {
                        empty.push(format!("{d} / {}: {expr}", p["title"]));
                    }
                }
            }
        }
        empty.is_empty()
    });
    assert!(ok, "panels without data:\n{}", empty.join("\n"));
    // Istio's recorded aggregation is there too.
    assert!(!query(&prom, "workload:istio_requests_total").is_empty());
    // Prometheus' own page, graphing the recorded request rate: the screenshot the docs
    // show.
    let graph = format!(
        "{prom}/graph?g0.expr=sum%20by%20(destination_service)%20(destination_service%3Aistio_requests%3Arate1m)&g0.tab=1"
    );
    screenshot("keelson-prometheus.png", "1400,800", &graph);
}

/// A `keelson ui` for the test's mesh, stopped (by pid) with the guard.
struct Ui(std::process::Child);

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page as headless Chromium renders it after `ms` of its own (virtual) time.
fn chromium(args: &[&str], url: &str) -> std::process::Output {
    std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (scripts/setup.sh installs Debian's)")
}

#[test]
fn the_service_graph_renders_bookinfo_in_a_browser() {
    let mesh = Mesh::tagged("u");
    mesh.ok(&["up"]);
    for f in [
        "bookinfo/waypoint.yaml",
        "bookinfo/bookinfo-gateway.yaml",
        "bookinfo/bookinfo-versions.yaml",
        "bookinfo/virtual-service-reviews-50-v3.yaml",
    ] {
        mesh.ok(&["apply", "-f", &example(f)]);
    }
    // The curl pod may not read details: its requests are denied at the waypoint.
    let deny = mesh.write(
        "deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-curl-to-details}
spec:
  targetRefs: [{kind: Service, group: \"\", name: details}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]}]
",
    );
    mesh.ok(&["apply", "-f", deny.to_str().unwrap()]);
    let url = format!(
        "http://{}:80/productpage",
        mesh.host_ip("istio-ingressgateway-0")
    );
    mesh.curl_host_until(&[&url], 200, "Simple Bookstore App");
    // A port of its own per run: tests run side by side.
    let port = 20100 + (std::process::id() % 800) as u16;
    let listen = format!("127.0.0.1:{port}");
    let _ui = Ui(mesh
        .command(&["ui", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let page = format!("http://{listen}/");
    let denied_seen = || {
        let (status, _) = mesh.curl_i(&["http://details:9080/details/0"]);
        status == 403
    };
    let mut dom = String::new();
    let edge = |dom: &str, from: &str, to: &str, class: &str| {
        dom.split("<g class=\"edge").any(|g| {
            let head = g.split('>').next().unwrap_or_default();
            head.contains(class)
                && head
                    .split("data-from=\"")
                    .nth(1)
                    .is_some_and(|f| f.starts_with(from))
                && head
                    .split("data-to=\"")
                    .nth(1)
                    .is_some_and(|t| t.starts_with(to))
        })
    };
    let ok = eventually(60, || {
        for _ in 0..5 {
            mesh.curl_host(&[&url]);
        }
        let denied = denied_seen();
        let out = chromium(&["--dump-dom"], &page);
        dom = String::from_utf8_lossy(&out.stdout).into_owned();
        denied
            && edge(
                &dom,
                "workload:istio-system/istio-ingressgateway",
                "service:productpage",
                " http",
            )
            && edge(
                &dom,
                "workload:default/productpage-v1",
                "service:reviews",
                " http",
            )
            && edge(
                &dom,
                "service:reviews",
                "workload:default/reviews-v",
                " http",
            )
            && edge(
                &dom,
                "workload:default/reviews-v",
                "service:ratings",
                " http",
            )
            && edge(&dom, "workload:default/curl", "service:details", "denied")
    });
    assert!(ok, "the graph lacks bookinfo's edges or the denial:\n{dom}");
    assert!(dom.contains("mTLS"), "no edge shows mTLS:\n{dom}");
    // A node's policies and routes, as a click shows them.
    let (_, details) = netns_free_get(
        &listen,
        "/api/node?id=service%3Areviews.default.svc.cluster.local",
    );
    assert!(
        details.contains("default/reviews#0") || details.contains("\"virtualService\""),
        "{details}"
    );
    let (_, node) = netns_free_get(
        &listen,
        "/api/node?id=service%3Adetails.default.svc.cluster.local",
    );
    assert!(node.contains("no-curl-to-details"), "{node}");
    // The screenshot the docs show.
    screenshot("keelson-ui.png", "1900,700", &page);
}

/// Headless Chromium's screenshot of `url` in `target/<name>`, taken afresh: a file left
/// by an earlier run does not count.
fn screenshot(name: &str, size: &str, url: &str) {
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{name}"));
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &[
            &format!("--window-size={size}"),
            &format!("--screenshot={}", shot.display()),
        ],
        url,
    );
    assert!(
        shot.metadata().is_ok_and(|m| m.len() > 10_000),
        "no screenshot of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET on this machine's loopback.
fn netns_free_get(addr: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
