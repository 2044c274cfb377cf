//! Waypoints on the local mesh: a Gateway of class `istio-waypoint` deploys one, a namespace
//! label sends that namespace's service traffic through it, and it forwards each HTTP request
//! to an endpoint with its own identity.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

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
    let mesh = Mesh::tagged("a");
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
            let log = mesh.waypoint_log();
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
        mesh.waypoint_log()
    );
    let log = mesh.waypoint_log();
    let line = log
        .lines()
        .find(|l| l.contains("destination=productpage") && l.contains("path=/productpage"))
        .unwrap();
    assert!(
        line.contains("method=GET") && line.contains("status=200"),
        "{line}"
    );

    // The destination's ztunnel sees the waypoint as the client (its identity, by mTLS):
    // its metrics count a connection opened from the waypoint's principal to productpage
    // (the waypoint keeps the connection for later requests, so it is not logged closed).
    let node = mesh.pod("productpage-v1-0")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let from_waypoint = || {
        let (_, metrics) = netns::http_get_at(
            &mesh.node_netns(&node),
            "127.0.0.1:15020".parse().unwrap(),
            "/metrics",
        )
        .unwrap();
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"")
                && l.contains("destination_service=\"productpage.default.svc.cluster.local\"")
        })
    };
    assert!(eventually(5, from_waypoint), "{}", mesh.logs());

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
        &mesh.waypoint_log(),
        "curl",
        productpage
    ) == 2));

    // A service that opts out (`istio.io/use-waypoint: none`) is reached directly.
    let opt_out = mesh.write("ratings.yaml", RATINGS_OPTS_OUT);
    mesh.ok(&["apply", "-f", opt_out.to_str().unwrap()]);
    let ratings = "ratings.default.svc.cluster.local:9080";
    let before = requests_from(&mesh.waypoint_log(), "curl", ratings);
    std::thread::sleep(std::time::Duration::from_millis(500));
    mesh.curl("curl", "http://ratings:9080/ratings/0", "ratings-v1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(requests_from(&mesh.waypoint_log(), "curl", ratings), before);
    // Pod-addressed traffic does not use a waypoint that is for services only.
    let details_ip = mesh.pod("details-v1-0")["ip"].as_str().unwrap().to_string();
    mesh.curl(
        "curl",
        &format!("http://{details_ip}:9080/details/0"),
        "details-v1",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!mesh
        .waypoint_log()
        .contains(&format!("authority={details_ip}")));

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
    assert_eq!(requests_from(&mesh.waypoint_log(), "curl", productpage), 2);
    for f in [file, opt_out, gateway] {
        let _ = std::fs::remove_file(f);
    }
}

const ROUTES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-v1}
spec: {selector: {app: reviews, version: v1}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2}
spec: {selector: {app: reviews, version: v2}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v3}
spec: {selector: {app: reviews, version: v3}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-split}
spec: {selector: {app: reviews}, ports: [{port: 9080, name: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews-v3, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /status}}]
    retry: {codes: [500], attempts: 2, backoff: 10ms}
    backendRefs: [{name: ratings, port: 9080}]
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: details, port: 9080}}
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews-split}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v3, port: 9080, weight: 10}
    - {name: reviews-v2, port: 9080, weight: 0}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: details}
spec:
  parentRefs: [{group: "", kind: Service, name: details, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: details.example, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /demo}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Test, value: rewritten}], remove: [X-Drop]}
    backendRefs: [{name: details, port: 9080}]
  - matches: [{path: {type: Exact, value: /details/0}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: X-Route, value: details}]}
    backendRefs: [{name: details, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 1s}
    backendRefs: [{name: details, port: 9080}]
  - matches: [{path: {type: Exact, value: /broken}}]
    backendRefs: [{name: no-such-service, port: 9080}]
  - matches: [{path: {type: Exact, value: /nowhere}}]
"#;

/// One `curl -si` from the curl pod: (status, headers and body as text).

#[test]
fn httproutes_match_split_redirect_rewrite_and_modify_headers() {
    let mesh = Mesh::tagged("b");
    mesh.ok(&["up"]);
    let file = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    let routes = mesh.write("routes.yaml", ROUTES);
    mesh.ok(&["apply", "-f", routes.to_str().unwrap()]);

    // By header: the end-user header productpage passes on picks reviews v2, else v3.
    let reviews_of = |user: &str| -> String {
        let out = mesh.exec(
            "curl",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-H",
                &format!("end-user: {user}"),
                "http://productpage:9080/api/v1/products/0/reviews",
            ],
        );
        assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, mesh.logs());
        let page: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        page["service"].as_str().unwrap().to_string()
    };
    // Until the routes are in (without them the version is a one-in-three draw).
    assert!(
        eventually(10, || (0..3).all(
            |_| reviews_of("jason") == "reviews-v2" && reviews_of("someone") == "reviews-v3"
        )),
        "{}",
        mesh.logs()
    );
    for _ in 0..3 {
        assert_eq!(reviews_of("jason"), "reviews-v2");
        assert_eq!(reviews_of("someone"), "reviews-v3");
    }

    // A 90/10 split over 1000 requests (weight 0 gets nothing), from one Python client.
    let py = "import urllib.request, json, collections\nc = collections.Counter()\nfor _ in range(1000):\n    c[json.load(urllib.request.urlopen('http://reviews-split:9080/reviews/0', timeout=10))['service']] += 1\nprint(json.dumps(c))";
    let out = mesh.exec("curl", &["python3", "-c", py]);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let counts: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let v1 = counts["reviews-v1"].as_u64().unwrap_or(0);
    let v3 = counts["reviews-v3"].as_u64().unwrap_or(0);
    assert_eq!(v1 + v3, 1000, "{counts}");
    // Binomial(1000, 0.9): σ ≈ 9.5; ±5σ.
    assert!((852..=948).contains(&v1), "{counts}");
    assert!(counts.get("reviews-v2").is_none(), "{counts}");

    // Redirect: 301, new host, the Service port, the prefix replaced, the query kept.
    let (status, text) = mesh.curl_i(&["http://details:9080/old/page?x=1"]);
    assert_eq!(status, 301, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: http://details.example:9080/new/page?x=1"),
        "{text}"
    );
    // Rewrite /demo/... to /..., with request headers set and removed on the way.
    let (status, text) = mesh.curl_i(&[
        "-H",
        "X-Drop: 1",
        "-H",
        "x-test: original",
        "http://details:9080/demo/headers",
    ]);
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.rsplit("\r\n\r\n").next().unwrap().trim()).unwrap();
    assert_eq!(body["path"], "/headers", "{body}");
    assert_eq!(body["headers"]["x-test"], "rewritten", "{body}");
    assert!(body["headers"].get("x-drop").is_none(), "{body}");
    // Response header added; no route matches: 404; invalid or missing backends: 500.
    let (status, text) = mesh.curl_i(&["http://details:9080/details/0"]);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-route: details"),
        "{text}"
    );
    assert_eq!(mesh.curl_i(&["http://details:9080/elsewhere"]).0, 404);
    // A 1 s request timeout: a 3 s answer gets 504, a quick one gets through.
    let (status, text) = mesh.curl_i(&["http://details:9080/delay/3000"]);
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("upstream request timeout"), "{text}");
    assert_eq!(mesh.curl_i(&["http://details:9080/delay/10"]).0, 200);
    assert_eq!(mesh.curl_i(&["http://details:9080/broken"]).0, 500);
    assert_eq!(mesh.curl_i(&["http://details:9080/nowhere"]).0, 500);

    // Retry: 2 retries on the listed code, 3 tries in the backend's count; another code
    // is not retried.
    let before = mesh.served("ratings-v1-0");
    assert_eq!(mesh.curl_i(&["http://ratings:9080/status/500"]).0, 500);
    assert_eq!(mesh.served("ratings-v1-0"), before + 1 + 3);
    let before = mesh.served("ratings-v1-0");
    assert_eq!(mesh.curl_i(&["http://ratings:9080/status/503"]).0, 503);
    assert_eq!(mesh.served("ratings-v1-0"), before + 1 + 1);
    // RequestMirror: ratings answers, details gets a copy of each request.
    let before = mesh.served("details-v1-0");
    for _ in 0..4 {
        mesh.curl("curl", "http://ratings:9080/ratings/0", "ratings-v1");
    }
    assert!(
        mesh.served_more("details-v1-0", before, 4, 5),
        "details did not see exactly 4 copies"
    );

    // A bad route is refused with its file and field, and the others keep working.
    let bad = mesh.write(
        "bad-route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: nope}}]\n",
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok
            && out.stderr.contains("bad-route.yaml")
            && out.stderr.contains("spec.rules[0].matches[0].path.value"),
        "{}",
        out.stderr
    );
    assert_eq!(reviews_of("jason"), "reviews-v2");
    for f in [file, routes, bad] {
        let _ = std::fs::remove_file(f);
    }
}
