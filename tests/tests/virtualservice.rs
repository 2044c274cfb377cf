//! Istio VirtualService and DestinationRule at a waypoint on the local mesh, driven by real
//! HTTP clients (curl, Python) in a mesh pod: subsets, first-match routing by header,
//! cookie and user agent, weighted splits, fault delay and abort, timeouts, retries seen in
//! the backend's own request count, redirect, rewrite, direct response, CORS, mirroring,
//! TCP routes, a route change under a long request, and a bad resource refused by field.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

const RULES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-split}
spec: {selector: {app: reviews}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: details-tcp}
spec: {selector: {app: details}, ports: [{port: 9081, name: tcp, targetPort: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-split}
spec:
  host: reviews-split.default.svc.cluster.local
  subsets:
  - {name: one, labels: {version: v1}}
  - {name: two, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: tester
    match: [{headers: {cookie: {regex: "^(.*?;)?(user=tester)(;.*)?$"}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: firefox
    match: [{headers: {user-agent: {regex: ".*Firefox.*"}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /mirror}}]
    rewrite: {uri: /reviews}
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100.0}
  - route: [{destination: {host: reviews, subset: v3}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-split}
spec:
  hosts: [reviews-split]
  http:
  - route:
    - {destination: {host: reviews-split, subset: one}, weight: 50}
    - {destination: {host: reviews-split, subset: two}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /fault/delay}}]
    fault: {delay: {fixedDelay: 3s, percentage: {value: 100}}}
    timeout: 1s
    rewrite: {uri: /details}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /fault/halfdelay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 50}}}
    rewrite: {uri: /details}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /fault/abort}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /fault/halfabort}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 50}}}
    rewrite: {uri: /details}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 1s
    rewrite: {uri: /delay}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new/place, authority: details.example}
  - match: [{uri: {prefix: /demo/}}]
    rewrite: {uri: /}
    headers:
      request: {set: {x-test: rewritten}, remove: [x-drop]}
      response: {add: {x-route: details}}
    route: [{destination: {host: details}}]
  - match: [{headers: {":method": {exact: DELETE}, ":path": {exact: "/pseudo?x=1"}}}]
    directResponse: {status: 409, body: {string: "matched on pseudo-headers"}}
  - match: [{uri: {exact: /teapot}, method: {exact: GET}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
    headers: {response: {set: {content-type: text/plain}}}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 1h
    rewrite: {uri: /details}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /missing-subset}}]
    route: [{destination: {host: details, subset: nope}}]
  - match: [{uri: {prefix: /long}}]
    rewrite: {uri: /delay}
    route: [{destination: {host: details}}] # long
  - match: [{uri: {prefix: /details}, withoutHeaders: {x-block: {}}}]
    route: [{destination: {host: details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details-tcp}
spec:
  hosts: [details-tcp]
  tcp:
  - match: [{port: 9081}]
    route: [{destination: {host: reviews, subset: v3, port: {number: 9080}}}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings-grpc}
spec: {selector: {app: ratings}, ports: [{port: 9090, name: grpc, targetPort: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-grpc}
spec:
  hosts: [ratings-grpc]
  http:
  - match: [{uri: {exact: /keelson.test.Echo/Aborted}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: ratings-grpc}}]
  - match: [{uri: {exact: /keelson.test.Echo/Fail}}]
    retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: ratings-grpc}}]
  - route: [{destination: {host: ratings-grpc}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /status/500}}]
    retries: {attempts: 5, retryOn: 5xx, perTryTimeout: 2s}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#;

fn python(mesh: &Mesh, code: &str) -> serde_json::Value {
    let out = mesh.exec("curl", &["python3", "-c", code]);
    assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, mesh.logs());
    serde_json::from_str(out.stdout.trim()).unwrap()
}

#[test]
fn virtual_services_and_destination_rules_at_the_waypoint() {
    let mesh = Mesh::new();
    mesh.ok(&["up"]);
    let waypoint = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", waypoint.to_str().unwrap()]);
    let rules = mesh.write("rules.yaml", RULES);
    mesh.ok(&["apply", "-f", rules.to_str().unwrap()]);

    // Through productpage, which passes end-user, cookie and user-agent on to reviews.
    let reviews_via_productpage = |header: &str| -> String {
        let out = mesh.exec(
            "curl",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-H",
                header,
                "http://productpage:9080/api/v1/products/0/reviews",
            ],
        );
        assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, mesh.logs());
        let page: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        page["service"].as_str().unwrap_or_default().to_string()
    };
    // Until the rules are in: each header's answer, three times over (without them the
    // version is a one-in-three draw, so a single right answer proves nothing).
    assert!(
        eventually(10, || (0..3).all(|_| {
            reviews_via_productpage("end-user: jason") == "reviews-v2"
                && reviews_via_productpage("end-user: someone") == "reviews-v3"
                && reviews_via_productpage("cookie: user=tester") == "reviews-v1"
        })),
        "{}",
        mesh.logs()
    );
    for _ in 0..3 {
        assert_eq!(reviews_via_productpage("end-user: jason"), "reviews-v2");
        assert_eq!(reviews_via_productpage("end-user: someone"), "reviews-v3");
        assert_eq!(
            reviews_via_productpage("cookie: user=tester; theme=dark"),
            "reviews-v1"
        );
        assert_eq!(
            reviews_via_productpage("cookie: theme=dark; user=testers"),
            "reviews-v3"
        );
        assert_eq!(
            reviews_via_productpage("user-agent: Mozilla/5.0 (X11; Linux) Gecko Firefox/128.0"),
            "reviews-v1"
        );
    }

    // 50/50 between two subsets over 1000 requests from one Python client.
    let counts = python(
        &mesh,
        "import urllib.request, json, collections\nc = collections.Counter()\nfor _ in range(1000):\n    c[json.load(urllib.request.urlopen('http://reviews-split:9080/reviews/0', timeout=10))['service']] += 1\nprint(json.dumps(c))",
    );
    let one = counts["reviews-v1"].as_u64().unwrap_or(0);
    let two = counts["reviews-v2"].as_u64().unwrap_or(0);
    assert_eq!(one + two, 1000, "{counts}");
    // Binomial(1000, 0.5): σ ≈ 15.8; ±5σ.
    assert!((421..=579).contains(&one), "{counts}");

    // A 3 s delay at 100%, outside the rule's 1 s timeout: the answer comes, late.
    let t = std::time::Instant::now();
    let (status, text) = mesh.curl_i(&["http://details:9080/fault/delay/0"]);
    assert_eq!(status, 200, "{text}");
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    // A 500 abort at 100%: the backend never sees the request.
    let before = mesh.served("details-v1-0");
    let (status, text) = mesh.curl_i(&["http://details:9080/fault/abort"]);
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("fault filter abort"), "{text}");
    assert_eq!(mesh.served("details-v1-0"), before + 1);
    // At 50%: aborts and delays both within Binomial(100, 0.5) ± 5σ.
    let half = python(
        &mesh,
        "import urllib.request, urllib.error, json, time\naborted = delayed = 0\nfor _ in range(100):\n    try:\n        urllib.request.urlopen('http://details:9080/fault/halfabort/0', timeout=10).read()\n    except urllib.error.HTTPError as e:\n        aborted += e.code == 500\nfor _ in range(60):\n    t = time.time()\n    urllib.request.urlopen('http://details:9080/fault/halfdelay/0', timeout=10).read()\n    delayed += time.time() - t >= 0.3\nprint(json.dumps({'aborted': aborted, 'delayed': delayed}))",
    );
    let aborted = half["aborted"].as_u64().unwrap();
    let delayed = half["delayed"].as_u64().unwrap();
    assert!((25..=75).contains(&aborted), "{half}");
    assert!((11..=49).contains(&delayed), "{half}");

    // A 1 s timeout on a 3 s backend: 504.
    let (status, text) = mesh.curl_i(&["http://details:9080/slow/3000"]);
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("upstream request timeout"), "{text}");
    assert_eq!(mesh.curl_i(&["http://details:9080/slow/10"]).0, 200);

    // 5 retries on 5xx: six tries in the backend's own count, the last answer returned.
    let before = mesh.served("ratings-v1-0");
    let (status, text) = mesh.curl_i(&["http://ratings:9080/status/500"]);
    assert_eq!(status, 500, "{text}");
    assert_eq!(mesh.served("ratings-v1-0"), before + 1 + 6);
    // Istio's default policy (no `retries`) does not retry a 503 response.
    let before = mesh.served("ratings-v1-0");
    assert_eq!(mesh.curl_i(&["http://ratings:9080/status/503"]).0, 503);
    assert_eq!(mesh.served("ratings-v1-0"), before + 1 + 1);

    // Redirect: 301 by default, the new authority and path, the query kept.
    let (status, text) = mesh.curl_i(&["http://details:9080/old/page?x=1"]);
    assert_eq!(status, 301, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: http://details.example/new/place?x=1"),
        "{text}"
    );
    // Rewrite /demo/ to /, with header operations both ways.
    let (status, text) = mesh.curl_i(&[
        "-H",
        "x-drop: 1",
        "-H",
        "x-test: original",
        "http://details:9080/demo/headers",
    ]);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-route: details"),
        "{text}"
    );
    let body: serde_json::Value =
        serde_json::from_str(text.rsplit("\r\n\r\n").next().unwrap().trim()).unwrap();
    assert_eq!(body["path"], "/headers", "{body}");
    assert_eq!(body["headers"]["x-test"], "rewritten", "{body}");
    assert!(body["headers"].get("x-drop").is_none(), "{body}");
    // Direct response; no rule matches: 404; a subset no DestinationRule has: 503.
    let (status, text) = mesh.curl_i(&["http://details:9080/teapot"]);
    assert_eq!(status, 418, "{text}");
    assert!(
        text.contains("short and stout")
            && text
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
        "{text}"
    );
    assert_eq!(
        mesh.curl_i(&["-X", "POST", "http://details:9080/teapot"]).0,
        404
    );
    // Header matches on `:method` and `:path` (with its query).
    let (status, text) = mesh.curl_i(&["-X", "DELETE", "http://details:9080/pseudo?x=1"]);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("matched on pseudo-headers"), "{text}");
    assert_eq!(
        mesh.curl_i(&["-X", "DELETE", "http://details:9080/pseudo?x=2"])
            .0,
        404
    );
    assert_eq!(mesh.curl_i(&["http://details:9080/pseudo?x=1"]).0, 404);
    assert_eq!(
        mesh.curl_i(&["-H", "x-block: 1", "http://details:9080/details/0"])
            .0,
        404
    );
    assert_eq!(mesh.curl_i(&["http://details:9080/missing-subset"]).0, 503);

    // CORS: a preflight from an allowed origin answered here, an actual request decorated,
    // another origin left without CORS headers.
    let (status, text) = mesh.curl_i(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://app.example",
        "-H",
        "access-control-request-method: POST",
        "http://details:9080/cors/0",
    ]);
    let lower = text.to_ascii_lowercase();
    assert_eq!(status, 200, "{text}");
    assert!(
        lower.contains("access-control-allow-origin: https://app.example")
            && lower.contains("access-control-max-age: 3600")
            && lower.contains("access-control-allow-methods: get,post"),
        "{text}"
    );
    let (status, text) = mesh.curl_i(&[
        "-H",
        "origin: https://app.example",
        "http://details:9080/cors/0",
    ]);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example")
            && text.contains("details-v1"),
        "{text}"
    );
    let (_, text) = mesh.curl_i(&[
        "-H",
        "origin: https://evil.example",
        "http://details:9080/cors/0",
    ]);
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{text}"
    );

    // Mirroring: v1 answers, v2 sees a copy of each request.
    let (v1_before, v2_before) = (mesh.served("reviews-v1-0"), mesh.served("reviews-v2-0"));
    for _ in 0..5 {
        mesh.curl("curl", "http://reviews:9080/mirror/0", "reviews-v1");
    }
    assert!(
        mesh.served_more("reviews-v2-0", v2_before, 5, 5),
        "v2 did not see exactly 5 copies"
    );
    assert_eq!(mesh.served("reviews-v1-0"), v1_before + 1 + 5);

    // TCP rules: a non-HTTP port split per connection to another service's subset.
    mesh.curl("curl", "http://details-tcp:9081/reviews/0", "reviews-v3");

    // gRPC: a port declared `grpc` is spoken to in HTTP/2 even for an HTTP/1.1 client;
    // a gRPC call keeps its trailers; a gRPC fault abort; retries on grpc-status 14.
    let out = mesh.curl("curl", "http://ratings-grpc:9090/headers", "ratings-v1");
    assert!(out.contains("\"version\":\"HTTP/2.0\""), "{out}");
    let frame = mesh.write("grpc-frame", "\0\0\0\0\x05hello");
    let grpc = |method: &str| {
        mesh.curl_i(&[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{}", frame.display()),
            &format!("http://ratings-grpc:9090/keelson.test.Echo/{method}"),
        ])
    };
    let (status, text) = grpc("Echo");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("hello") && text.contains("grpc-status: 0"),
        "{text}"
    );
    let (status, text) = grpc("Aborted");
    assert!(status == 200 && text.contains("grpc-status: 14"), "{text}");
    let before = mesh.served("ratings-v1-0");
    let (_, text) = grpc("Fail");
    assert!(text.contains("grpc-status: 14"), "{text}");
    assert_eq!(mesh.served("ratings-v1-0"), before + 1 + 3);
    let _ = std::fs::remove_file(frame);

    // An HTTP/1.1 Upgrade passes through the waypoint: 101, then bytes both ways.
    let out = python(
        &mesh,
        "import socket, json\ns = socket.create_connection(('productpage', 9080), timeout=10)\ns.sendall(b'GET /upgrade HTTP/1.1\\r\\nHost: productpage:9080\\r\\nConnection: Upgrade\\r\\nUpgrade: keelson-echo\\r\\n\\r\\n')\nhead = b''\nwhile b'\\r\\n\\r\\n' not in head:\n    head += s.recv(1)\ns.sendall(b'ping through the waypoint')\nback = b''\nwhile len(back) < 25:\n    back += s.recv(64)\nprint(json.dumps({'head': head.decode(), 'back': back.decode()}))",
    );
    assert!(
        out["head"].as_str().unwrap().starts_with("HTTP/1.1 101"),
        "{out}"
    );
    assert_eq!(out["back"], "ping through the waypoint", "{out}");
    // The access log goes out in batches (within 100 ms).
    let logged = || {
        mesh.waypoint_log()
            .lines()
            .any(|l| l.contains("path=/upgrade") && l.contains("status=101"))
    };
    assert!(
        eventually(5, logged),
        "the upgrade did not pass the waypoint"
    );

    // A route change while a long request is in flight: the request completes.
    std::thread::scope(|s| {
        let long = s.spawn(|| mesh.curl_i(&["http://details:9080/long/2500"]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let changed = RULES.replace("{host: details}}] # long", "{host: ratings}}] # long");
        let again = mesh.write("rules.yaml", &changed);
        mesh.ok(&["apply", "-f", again.to_str().unwrap()]);
        assert!(eventually(5, || mesh
            .curl_i(&["http://details:9080/long/0"])
            .1
            .contains("ratings-v1")));
        let (status, text) = long.join().unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("details-v1"), "{text}");
    });

    // A bad VirtualService is refused with its file and field; the rest keeps working.
    let bad = mesh.write(
        "bad-vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n    fault: {abort: {httpStatus: 503, percentage: {value: 150}}}\n",
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok
            && out.stderr.contains("bad-vs.yaml")
            && out
                .stderr
                .contains("spec.http[0].fault.abort.percentage.value"),
        "{}",
        out.stderr
    );
    assert_eq!(reviews_via_productpage("end-user: jason"), "reviews-v2");
    for f in [waypoint, rules, bad] {
        let _ = std::fs::remove_file(f);
    }
}
