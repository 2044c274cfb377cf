//! The HTTPRoute and VirtualService fields the scenario tests (waypoint.rs,
//! virtualservice.rs) leave out, each driven once through the waypoint on the local mesh
//! with curl: regex, query and method matches, redirects with scheme, port and code, full
//! path and hostname rewrites, per-backend filters, per-try timeouts, mirror shares,
//! `sourceLabels` (never matches at a waypoint), `ignoreUriCase`, `uriRegexRewrite`,
//! authority rewrite, response header removal, `mirrors`, and retries on connect failure
//! and on bare status codes, counted in the backend's own request count or the access log.
//! Then the waypoint's own HTTP/1.1 client against a hand-written upstream (`keelson app
//! raw`): chunked bodies with extensions and trailers, HEAD, 204, 100 Continue, bodies
//! delimited by close, conflicting lengths, and which of them keep the connection.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

const ROUTES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: gw-details}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: gw-ratings}
spec: {selector: {app: ratings}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: vs-details}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: vs-refused}
spec: {selector: {app: details}, ports: [{port: 9080, name: http, targetPort: 9999}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gw-details}
spec:
  parentRefs: [{group: "", kind: Service, name: gw-details, port: 9080}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplaceFullPath, replaceFullPath: /headers}}
    backendRefs: [{name: gw-details, port: 9080}]
  - matches: [{path: {type: Exact, value: /headers}, method: POST, queryParams: [{name: v, value: "2"}]}]
    backendRefs:
    - name: gw-details
      port: 9080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {add: [{name: x-backend, value: per-backend}]}
  - matches: [{headers: [{type: RegularExpression, name: x-version, value: "v[0-9]"}]}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /moved}}
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    backendRefs: [{name: gw-details, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gw-ratings}
spec:
  parentRefs: [{group: "", kind: Service, name: gw-ratings, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 5s, backendRequest: 500ms}
    backendRefs: [{name: gw-ratings, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /ratings}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: gw-details, port: 9080}, fraction: {numerator: 1, denominator: 1}}
    backendRefs: [{name: gw-ratings, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /status}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: gw-details, port: 9080}, percent: 0}
    backendRefs: [{name: gw-ratings, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs-details}
spec:
  hosts: [vs-details]
  http:
  - match: [{sourceLabels: {app: curl}}]
    directResponse: {status: 403}
  - match: [{uri: {exact: /CASE/Headers}, ignoreUriCase: true}]
    rewrite: {uri: /headers, authority: rewritten.example}
    headers:
      response: {set: {x-set: one}, remove: [x-keelson-app]}
    route: [{destination: {host: vs-details}}]
  - match: [{uri: {prefix: /re/}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: vs-details}}]
  - match: [{queryParams: {mode: {exact: moved}}, scheme: {exact: http}, authority: {prefix: vs-details}, port: 9080}]
    redirect: {scheme: https, port: 8443, redirectCode: 308, uri: /elsewhere}
  - match: [{uri: {prefix: /per-try}}]
    rewrite: {uri: /delay/3000}
    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: gateway-error}
    route: [{destination: {host: vs-details}}]
  - match: [{uri: {prefix: /status/418}}]
    retries: {attempts: 2, retryOn: "418"}
    route: [{destination: {host: vs-details}}]
  - match: [{uri: {prefix: /mirrors}}]
    rewrite: {uri: /details/0}
    route: [{destination: {host: vs-details}}]
    mirrors:
    - {destination: {host: ratings}, percentage: {value: 100}}
    - {destination: {host: reviews}, percentage: {value: 0}}
  - route: [{destination: {host: vs-details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs-refused}
spec:
  hosts: [vs-refused]
  http:
  - retries: {attempts: 1, retryOn: connect-failure}
    route: [{destination: {host: vs-refused}}]
"#;

/// The JSON body of a `curl -si` answer.
fn json_body(text: &str) -> serde_json::Value {
    serde_json::from_str(text.rsplit("\r\n\r\n").next().unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn every_route_field_once() {
    let mesh = Mesh::tagged("f");
    mesh.ok(&["up"]);
    let waypoint = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", waypoint.to_str().unwrap()]);
    let routes = mesh.write("routes.yaml", ROUTES);
    mesh.ok(&["apply", "-f", routes.to_str().unwrap()]);
    assert!(
        eventually(10, || mesh
            .curl_i(&["http://gw-details:9080/re/42"])
            .1
            .contains("rewritten.example")),
        "{}",
        mesh.logs()
    );

    // HTTPRoute: a RegularExpression path, rewritten to a full path and a new Host.
    let (status, text) = mesh.curl_i(&["http://gw-details:9080/re/7"]);
    assert_eq!(status, 200, "{text}");
    let body = json_body(&text);
    assert_eq!(body["path"], "/headers", "{body}");
    assert_eq!(body["headers"]["host"], "rewritten.example", "{body}");
    // The regex is anchored: /re/7x is not matched, and the last rule (/headers) is not
    // a prefix of it either: 404.
    assert_eq!(mesh.curl_i(&["http://gw-details:9080/re/7x"]).0, 404);
    // Method and query parameter: POST /headers?v=2 gets the per-backend filter; a GET,
    // or another value, goes to the plain rule.
    let (status, text) = mesh.curl_i(&["-X", "POST", "http://gw-details:9080/headers?v=2"]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_body(&text)["headers"]["x-backend"], "per-backend");
    for args in [
        vec!["http://gw-details:9080/headers?v=2"],
        vec!["-X", "POST", "http://gw-details:9080/headers?v=3"],
    ] {
        let (status, text) = mesh.curl_i(&args);
        assert_eq!(status, 200, "{text}");
        assert!(
            json_body(&text)["headers"].get("x-backend").is_none(),
            "{text}"
        );
    }
    // A header RegularExpression match; RequestRedirect with scheme, port and a full path,
    // 302 by default.
    let (status, text) = mesh.curl_i(&["-H", "x-version: v2", "http://gw-details:9080/any"]);
    assert_eq!(status, 302, "{text}");
    assert_eq!(
        header(&text, "location"),
        Some("https://gw-details:8443/moved"),
        "{text}"
    );
    // timeouts.backendRequest bounds each try: 504 after 500 ms, not the request's 5 s.
    let t = std::time::Instant::now();
    let (status, text) = mesh.curl_i(&["http://gw-ratings:9080/delay/3000"]);
    assert_eq!(status, 504, "{text}");
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // RequestMirror with fraction 1/1: each request copied; with percent 0: none.
    let details = mesh.served("details-v1-0");
    for _ in 0..3 {
        mesh.curl("curl", "http://gw-ratings:9080/ratings/0", "ratings-v1");
    }
    assert!(
        mesh.served_more("details-v1-0", details, 3, 5),
        "details did not see exactly 3 copies"
    );
    let details = mesh.served("details-v1-0");
    for _ in 0..3 {
        assert_eq!(mesh.curl_i(&["http://gw-ratings:9080/status/200"]).0, 200);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Only the count request itself.
    assert_eq!(mesh.served("details-v1-0"), details + 1);

    // VirtualService: a match block with sourceLabels never matches at a waypoint; an
    // ignoreUriCase exact match; an authority rewrite; response headers set and removed.
    let (status, text) = mesh.curl_i(&["http://vs-details:9080/case/HEADERS"]);
    assert_eq!(status, 200, "{text}");
    let body = json_body(&text);
    assert_eq!(body["path"], "/headers", "{body}");
    assert_eq!(body["headers"]["host"], "rewritten.example", "{body}");
    assert_eq!(header(&text, "x-set"), Some("one"), "{text}");
    assert_eq!(header(&text, "x-keelson-app"), None, "{text}");
    // uriRegexRewrite with a capture reference.
    let (status, text) = mesh.curl_i(&["http://vs-details:9080/re/headers?q=1"]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_body(&text)["path"], "/headers?q=1", "{text}");
    // queryParams, scheme, authority and port together; redirect with scheme, port, uri
    // and redirectCode.
    let (status, text) = mesh.curl_i(&["http://vs-details:9080/x?mode=moved"]);
    assert_eq!(status, 308, "{text}");
    assert_eq!(
        header(&text, "location"),
        Some("https://vs-details:8443/elsewhere?mode=moved"),
        "{text}"
    );
    assert_eq!(
        mesh.curl_i(&["http://vs-details:9080/details/0?mode=stay"])
            .0,
        200
    );
    // perTryTimeout with gateway-error: three tries of 300 ms each, then 504.
    let before = mesh.served("details-v1-0");
    let t = std::time::Instant::now();
    let (status, text) = mesh.curl_i(&["http://vs-details:9080/per-try"]);
    assert_eq!(status, 504, "{text}");
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(mesh.served("details-v1-0"), before + 3 + 1);
    // A bare status code in retryOn retries that status.
    let before = mesh.served("details-v1-0");
    assert_eq!(mesh.curl_i(&["http://vs-details:9080/status/418"]).0, 418);
    assert_eq!(mesh.served("details-v1-0"), before + 3 + 1);
    // mirrors: ratings at 100% sees each request, reviews at 0% none.
    let (ratings, reviews) = (mesh.served("ratings-v1-0"), mesh.served("reviews-v1-0"));
    for _ in 0..3 {
        mesh.curl("curl", "http://vs-details:9080/mirrors", "details-v1");
    }
    assert!(
        mesh.served_more("ratings-v1-0", ratings, 3, 5),
        "ratings did not see exactly 3 copies"
    );
    assert_eq!(mesh.served("reviews-v1-0"), reviews + 1);
    // retryOn connect-failure: the endpoint refuses (nothing listens on 9999), the
    // waypoint tries twice and answers 503 UF.
    let (status, text) = mesh.curl_i(&["http://vs-refused:9080/refused"]);
    assert_eq!(status, 503, "{text}");
    assert!(
        eventually(5, || mesh
            .waypoint_log()
            .lines()
            .any(|l| l.contains("path=/refused")
                && l.contains("attempts=2")
                && l.contains("response_flags=\"UF\""))),
        "{}",
        mesh.waypoint_log()
            .lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let raw = mesh.write("raw.yaml", &raw_yaml(&mesh));
    mesh.ok(&["apply", "-f", raw.to_str().unwrap()]);
    upstream_framings(&mesh);
    downstream_framings(&mesh);
    outlier_detection(&mesh);
    circuit_breakers(&mesh);
    load_balancing(&mesh);
    authorization(&mesh);
    for f in [waypoint, routes, raw] {
        let _ = std::fs::remove_file(f);
    }
}

/// A Service and a pod on node-2 running `keelson app raw`.
fn raw_yaml(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: raw}}\n\
         spec: {{selector: {{app: raw}}, ports: [{{port: 9080, name: http}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: raw, labels: {{app: raw}}}}\nspec:\n  \
         nodeName: node-2\n  containers:\n  - name: raw\n    image: keelson/raw\n    \
         command: [{:?}, app, raw, --port, \"9080\"]\n",
        mesh.bin().display().to_string()
    )
}

/// The waypoint's HTTP/1.1 client: each upstream framing arrives whole at the client, and
/// the upstream connection (numbered by `/conn`) is kept after every response read to its
/// end, and replaced after one delimited by close or a malformed one.
fn upstream_framings(mesh: &Mesh) {
    let conn = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("http://raw:9080/conn");
        let (status, text) = mesh.curl_i(&a);
        assert_eq!(status, 200, "{text}");
        text.rsplit("\r\n\r\n")
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        eventually(10, || mesh.curl_i(&["http://raw:9080/conn"]).0 == 200),
        "{}",
        mesh.logs()
    );
    // A request body goes out with its length: the server reads it and answers the next.
    let first = conn(&["-d", "hello"]);
    assert_eq!(conn(&[]), first, "the connection was not kept");
    // Chunked, in three writes, with an extension and a trailer: whole, and kept.
    let (status, text) = mesh.curl_i(&["http://raw:9080/chunked"]);
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("hello, chunked\n"), "{text}");
    assert_eq!(conn(&[]), first);
    // HEAD: the length, no body; 204; 100 Continue then the answer: all kept.
    let (status, text) = mesh.curl_i(&["-I", "http://raw:9080/head"]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&text, "content-length"), Some("10"), "{text}");
    assert_eq!(mesh.curl_i(&["http://raw:9080/nocontent"]).0, 204);
    let (status, text) = mesh.curl_i(&["http://raw:9080/continue"]);
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("continued"), "{text}");
    assert_eq!(conn(&[]), first);
    // Delimited by close: whole, and the next request needs a new connection.
    let (status, text) = mesh.curl_i(&["http://raw:9080/close"]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("until close"), "{text}");
    let second = conn(&[]);
    assert!(second > first, "{second} after {first}");
    // Two different lengths: 503 with Envoy's upstream protocol error flag, then a new
    // connection.
    let (status, text) = mesh.curl_i(&["http://raw:9080/conflict"]);
    assert_eq!(status, 503, "{text}");
    assert!(
        eventually(5, || mesh.waypoint_log().lines().any(|l| l
            .contains("path=/conflict")
            && l.contains("response_flags=\"UPE\""))),
        "{}",
        mesh.waypoint_log()
    );
    let third = conn(&[]);
    assert!(third > second);
    // Fields for one connection only go no further, either way (RFC 9110 §7.6.1): the
    // client's `connection` and what it names, `keep-alive`, `te`; the endpoint's likewise.
    let (status, text) = mesh.curl_i(&[
        "-H",
        "connection: keep-alive, x-drop",
        "-H",
        "x-drop: 1",
        "-H",
        "keep-alive: 300",
        "-H",
        "te: gzip",
        "-H",
        "x-stay: 2",
        "http://raw:9080/headers",
    ]);
    assert_eq!(status, 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = body.to_ascii_lowercase();
    assert!(body.starts_with("get /headers http/1.1"), "{text}");
    assert!(body.contains("x-stay: 2"), "{text}");
    for gone in ["connection", "x-drop", "keep-alive", "te"] {
        assert!(
            !body.lines().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the endpoint: {text}"
        );
    }
    for gone in ["connection", "x-hop", "keep-alive"] {
        assert_eq!(
            header(head, gone),
            None,
            "{gone} reached the client: {text}"
        );
    }
    // The endpoint closed that one; the client's `connection: close` closes only the
    // client's connection, and the next request takes the same upstream one.
    let fourth = conn(&["-H", "connection: close"]);
    assert!(fourth > third);
    assert_eq!(conn(&[]), fourth, "the client's close reached the endpoint");
}

/// A client speaking HTTP/1.1 by hand to `details` (no routes) through the waypoint: what
/// the waypoint serves itself and what it hands to hyper's server, on one connection and
/// across them. Prints one JSON object.
const DOWNSTREAM_CLIENT: &str = r#"
import socket, json, time
def conn():
    return socket.create_connection(('details', 9080), timeout=10)
class R:
    def __init__(self, s):
        self.s, self.buf = s, b''
    def more(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d
    def head(self):
        while b'\r\n\r\n' not in self.buf:
            self.more()
        h, self.buf = self.buf.split(b'\r\n\r\n', 1)
        lines = h.decode().split('\r\n')
        return lines[0], {k.strip().lower(): v.strip() for k, v in (l.split(':', 1) for l in lines[1:])}
    def exactly(self, n):
        while len(self.buf) < n:
            self.more()
        b, self.buf = self.buf[:n], self.buf[n:]
        return b
    def line(self):
        while b'\r\n' not in self.buf:
            self.more()
        l, self.buf = self.buf.split(b'\r\n', 1)
        return l
    def response(self, head=False):
        status, hs = self.head()
        while status.split()[1] == '100':
            status, hs = self.head()
        if head:
            return status, hs, b''
        if 'content-length' in hs:
            return status, hs, self.exactly(int(hs['content-length']))
        if hs.get('transfer-encoding') == 'chunked':
            body = b''
            while True:
                n = int(self.line().split(b';')[0], 16)
                if n == 0:
                    while self.line() != b'':
                        pass
                    return status, hs, body
                body += self.exactly(n)
                self.line()
        try:
            while True:
                self.more()
        except EOFError:
            pass
        b, self.buf = self.buf, b''
        return status, hs, b
    def closed(self):
        try:
            self.more()
            return False
        except EOFError:
            return True
H = b'Host: details:9080\r\n'
out = {}
r = R(conn())
r.s.sendall(b'GET /headers HTTP/1.1\r\n' + H + b'x-n: 1\r\n\r\nPOST /echo HTTP/1.1\r\n' + H + b'content-length: 5\r\n\r\nhello')
a, b = r.response(), r.response()
out['pipelined'] = [a[0], json.loads(a[2])['headers'].get('x-n'), b[0], b[2].decode()]
r.s.sendall(b'POST /echo HTTP/1.1\r\n' + H + b'transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n')
time.sleep(0.05)
r.s.sendall(b'4\r\ndefg\r\n0\r\n\r\n')
c = r.response()
out['chunked'] = [c[0], c[2].decode()]
r.s.sendall(b'POST /echo HTTP/1.1\r\n' + H + b'content-length: 2\r\n\r\nok')
d = r.response()
out['after'] = [d[0], d[2].decode()]
r = R(conn())
r.s.sendall(b'POST /echo HTTP/1.1\r\n' + H + b'content-length: 5\r\nexpect: 100-continue\r\n\r\n')
interim, _ = r.head()
r.s.sendall(b'later')
e = r.response()
out['expect'] = [interim, e[0], e[2].decode()]
big = bytes(range(256)) * 400
r = R(conn())
r.s.sendall(b'POST /echo HTTP/1.1\r\n' + H + b'content-length: %d\r\n\r\n' % len(big) + big)
f = r.response()
out['large'] = [f[0], f[2] == big, len(f[2])]
r = R(conn())
r.s.sendall(b'HEAD /bytes/7 HTTP/1.1\r\n' + H + b'\r\nGET /bytes/3 HTTP/1.1\r\n' + H + b'connection: close\r\n\r\n')
g, h = r.response(head=True), r.response()
out['head'] = [g[0], g[1].get('content-length'), h[0], h[1].get('connection'), h[2].decode(), r.closed()]
r = R(conn())
r.s.sendall(b'GET /bytes/4 HTTP/1.0\r\n' + H + b'\r\n')
i = r.response()
out['http10'] = [i[0].split()[1], i[2].decode(), r.closed()]
r = R(conn())
r.s.sendall(b'GET /x HTTP/1.1\r\n' + H + b'bad header\r\n\r\n')
out['malformed'] = [r.response()[0].split()[1]]
print(json.dumps(out))
"#;

fn downstream_framings(mesh: &Mesh) {
    let out = mesh.exec("curl", &["python3", "-c", DOWNSTREAM_CLIENT]);
    assert!(
        out.ok,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        mesh.waypoint_log()
    );
    let got: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let ok = "HTTP/1.1 200 OK";
    let want = serde_json::json!({
        // Two requests in one write, answered in order.
        "pipelined": [ok, "1", ok, "hello"],
        // A chunked upload on the same connection (hyper's server from there on), and a
        // plain request after it.
        "chunked": [ok, "abcdefg"],
        "after": [ok, "ok"],
        // The interim answer comes before the client sends the body.
        "expect": ["HTTP/1.1 100 Continue", ok, "later"],
        // 100 KiB, past what the waypoint holds: streamed both ways, byte for byte.
        "large": [ok, true, 102400],
        // HEAD keeps the endpoint's length and has no body; `connection: close` is
        // answered with it, and the connection ends.
        "head": [ok, "7", ok, "close", "xxx", true],
        "http10": ["200", "xxxx", true],
        "malformed": ["400"],
    });
    assert_eq!(got, want, "{}", mesh.waypoint_log());
}

/// Two endpoints behind `flaky`: the bundled details app (200 for any path) and `keelson app
/// raw`, whose `/fail` is always 503.
fn flaky_yaml(mesh: &Mesh) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flaky}}\n\
         spec: {{selector: {{flaky: \"1\"}}, ports: [{{port: 9080, name: http}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: flaky-good, labels: {{flaky: \"1\"}}}}\nspec:\n  \
         nodeName: node-1\n  containers: [{{name: details, image: docker.io/istio/examples-bookinfo-details-v1}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: flaky-bad, labels: {{flaky: \"1\"}}}}\nspec:\n  \
         nodeName: node-2\n  containers:\n  - name: raw\n    image: keelson/raw\n    \
         command: [{:?}, app, raw, --port, \"9080\"]\n",
        mesh.bin().display().to_string()
    )
}

const FLAKY_OUTLIERS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";

/// Appended to [`FLAKY_OUTLIERS`]: a subset that turns ejection off (its own section
/// replaces the rule's, DR-05), which a VirtualService sends everything to.
const FLAKY_SUBSET: &str = "  subsets:
  - name: all
    labels: {flaky: \"1\"}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky, subset: all}}]
";

/// DestinationRule `outlierDetection` at the waypoint: an endpoint that keeps failing is
/// ejected and the service answers from the other; a subset's own policy replaces the
/// rule's; a bad value is refused naming its field.
fn outlier_detection(mesh: &Mesh) {
    let flaky = mesh.write("flaky.yaml", &flaky_yaml(mesh));
    mesh.ok(&["apply", "-f", flaky.to_str().unwrap()]);
    let statuses = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| mesh.curl_i(&["http://flaky:9080/fail"]).0)
            .collect()
    };
    let both_answer = || {
        eventually(15, || {
            let s = statuses(20);
            s.contains(&200) && s.contains(&503)
        })
    };
    // Without a rule, both endpoints answer.
    assert!(both_answer(), "{}", mesh.logs());
    let bad = mesh.write(
        "bad-dr.yaml",
        &FLAKY_OUTLIERS.replace("maxEjectionPercent: 100", "maxEjectionPercent: 150"),
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok
            && out.stderr.contains("bad-dr.yaml")
            && out
                .stderr
                .contains("spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        "{}",
        out.stderr
    );
    let rule = mesh.write("flaky-dr.yaml", FLAKY_OUTLIERS);
    mesh.ok(&["apply", "-f", rule.to_str().unwrap()]);
    // Two 503s in a row from flaky-bad eject it (for 60 s): then only 200s.
    assert!(
        eventually(15, || statuses(10).iter().all(|s| *s == 200)),
        "{}",
        mesh.waypoint_log()
    );
    assert!(statuses(20).iter().all(|s| *s == 200));
    assert!(
        mesh.waypoint_log().lines().any(|l| l
            .contains("outlier detection ejected an endpoint")
            && l.contains("flaky-bad")),
        "{}",
        mesh.waypoint_log()
    );
    // Through the subset, whose policy ejects nothing: flaky-bad answers again.
    let subset = mesh.write("flaky-dr.yaml", &format!("{FLAKY_OUTLIERS}{FLAKY_SUBSET}"));
    mesh.ok(&["apply", "-f", subset.to_str().unwrap()]);
    assert!(both_answer(), "{}", mesh.waypoint_log());
    // And keeps answering: without ejection, about half of 40 (fewer than 5: p < 1e-6).
    let failed = statuses(40).iter().filter(|s| **s == 503).count();
    assert!(failed >= 5, "{failed} of 40 failed");
    for f in [flaky, bad, subset] {
        let _ = std::fs::remove_file(f);
    }
}

const BREAKERS: &str = "apiVersion: v1
kind: Service
metadata: {name: cb}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cb}
spec:
  host: cb
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: raw}
spec:
  host: raw
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 1}}
";

/// Five requests at once to `cb` (each 600 ms at the endpoint), from five threads: the
/// sorted statuses, each with its `x-envoy-overloaded`.
const FIVE_AT_ONCE: &str = r#"
import threading, urllib.request, urllib.error, json
go = threading.Barrier(5)
out = []
def one():
    go.wait()
    try:
        r = urllib.request.urlopen('http://cb:9080/delay/600', timeout=10)
        out.append([r.status, r.headers.get('x-envoy-overloaded')])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.headers.get('x-envoy-overloaded')])
ts = [threading.Thread(target=one) for _ in range(5)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(sorted(out, key=lambda x: x[0])))
"#;

/// DestinationRule `connectionPool` at the waypoint, as in Istio's circuit-breaking task:
/// one connection and one waiting request, the rest 503 with `x-envoy-overloaded`; one
/// request per upstream connection; a negative limit refused naming its field.
fn circuit_breakers(mesh: &Mesh) {
    let bad = mesh.write(
        "bad-cb.yaml",
        &BREAKERS.replace("maxConnections: 1", "maxConnections: -1"),
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("spec.trafficPolicy.connectionPool.tcp.maxConnections"),
        "{}",
        out.stderr
    );
    let file = mesh.write("cb.yaml", BREAKERS);
    mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    let five = || -> serde_json::Value {
        let out = mesh.exec("curl", &["python3", "-c", FIVE_AT_ONCE]);
        assert!(out.ok, "{}{}", out.stdout, out.stderr);
        serde_json::from_str(out.stdout.trim()).unwrap()
    };
    let want = serde_json::json!([
        [200, null],
        [200, null],
        [503, "true"],
        [503, "true"],
        [503, "true"]
    ]);
    assert!(
        eventually(20, || five() == want),
        "{}\n{}",
        five(),
        mesh.waypoint_log()
    );
    assert!(
        eventually(5, || mesh.waypoint_log().lines().any(|l| l
            .contains("authority=cb:9080")
            && l.contains("response_flags=\"UO\""))),
        "{}",
        mesh.waypoint_log()
    );
    // One at a time is never refused.
    for _ in 0..3 {
        assert_eq!(mesh.curl_i(&["http://cb:9080/delay/0"]).0, 200);
    }
    // One request per upstream connection: `raw` numbers a new one each time.
    let conn = || -> u64 {
        let (status, text) = mesh.curl_i(&["http://raw:9080/conn"]);
        assert_eq!(status, 200, "{text}");
        text.rsplit("\r\n\r\n")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(eventually(10, || {
        let a = conn();
        conn() > a
    }));
    let (a, b, c) = (conn(), conn(), conn());
    assert!(a < b && b < c, "{a} {b} {c}");
    for f in [bad, file] {
        let _ = std::fs::remove_file(f);
    }
}

/// Four services over the three reviews pods, each with its own `loadBalancer`.
fn balancers() -> String {
    let services: String = ["lb-rr", "lb-hash", "lb-least", "lb-cookie"]
        .iter()
        .map(|name| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec: {{selector: {{app: reviews}}, ports: [{{port: 9080, name: http}}]}}\n---\n"
            )
        })
        .collect();
    services + BALANCER_RULES
}

const BALANCER_RULES: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lb-rr}
spec: {host: lb-rr, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lb-hash}
spec: {host: lb-hash, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lb-least}
spec: {host: lb-least, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lb-cookie}
spec:
  host: lb-cookie
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: lbsession, ttl: 60s, path: /}}}}
";

/// One 1.5 s request to `lb-least`, and while it is in flight 12 quick ones, one after
/// another: the slow one's version and the quick ones'.
const LEAST_CLIENT: &str = r#"
import threading, urllib.request, json, time
def version(path):
    return json.load(urllib.request.urlopen('http://lb-least:9080' + path, timeout=10))['service']
slow = []
t = threading.Thread(target=lambda: slow.append(version('/delay/1500')))
t.start()
time.sleep(0.3)
quick = [version('/delay/0') for _ in range(12)]
t.join()
print(json.dumps({'slow': slow[0], 'quick': quick}))
"#;

/// DestinationRule `loadBalancer` at the waypoint: round robin in turn, consistent hashing
/// on a header, least request steering around a busy endpoint; an unknown algorithm refused
/// naming its field.
fn load_balancing(mesh: &Mesh) {
    let bad = mesh.write(
        "bad-lb.yaml",
        &balancers().replace("simple: ROUND_ROBIN", "simple: FASTEST"),
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("spec.trafficPolicy.loadBalancer.simple"),
        "{}",
        out.stderr
    );
    let file = mesh.write("lb.yaml", &balancers());
    mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    // `None` until the service answers (its name resolves once the control plane has it).
    let version = |service: &str, header: &str| -> Option<String> {
        let (status, text) =
            mesh.curl_i(&["-H", header, &format!("http://{service}:9080/delay/0")]);
        (status == 200).then(|| json_body(&text)["service"].as_str().unwrap().to_string())
    };
    // Round robin: three different versions, then the same three in the same order.
    let in_turn = || {
        let v: Vec<Option<String>> = (0..9).map(|_| version("lb-rr", "x: y")).collect();
        v.iter().all(Option::is_some)
            && v[0] != v[1]
            && v[1] != v[2]
            && v[0] != v[2]
            && (0..6).all(|i| v[i] == v[i + 3])
    };
    assert!(eventually(15, in_turn), "{}", mesh.waypoint_log());
    assert!(in_turn());
    // Consistent hash: each user keeps one version; the users are spread.
    let sticky = || {
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..8 {
            let header = format!("x-user: user{user}");
            let first = version("lb-hash", &header);
            if first.is_none() || (0..3).any(|_| version("lb-hash", &header) != first) {
                return false;
            }
            seen.insert(first);
        }
        seen.len() >= 2
    };
    assert!(eventually(15, sticky), "{}", mesh.waypoint_log());
    // Consistent hash on a cookie with a ttl: a request without it is given one, and the
    // requests that carry it then keep to the endpoint that answered the first.
    let given = || {
        let (status, text) = mesh.curl_i(&["http://lb-cookie:9080/delay/0"]);
        if status != 200 {
            return None;
        }
        let set = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))?
            .split_once(':')?
            .1
            .trim()
            .to_string();
        Some((set, json_body(&text)["service"].as_str()?.to_string()))
    };
    assert!(
        eventually(15, || given().is_some()),
        "{}",
        mesh.waypoint_log()
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (set, first) = given().expect("a Set-Cookie on a request without the cookie");
        assert!(
            set.starts_with("lbsession=") && set.ends_with("; Max-Age=60; Path=/; HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..3 {
            let (status, text) = mesh.curl_i(&[
                "-H",
                &format!("cookie: theme=dark; {cookie}"),
                "http://lb-cookie:9080/delay/0",
            ]);
            assert_eq!(status, 200, "{text}");
            assert_eq!(json_body(&text)["service"], first.as_str(), "{cookie}");
            assert!(!text.to_ascii_lowercase().contains("set-cookie"), "{text}");
        }
        seen.insert(first);
    }
    // Six new cookies over three endpoints: not all on one (1 in 243 by chance).
    assert!(seen.len() >= 2, "{seen:?}");
    // Least request: no quick request goes to the endpoint busy with the slow one.
    let around = || {
        let out = mesh.exec("curl", &["python3", "-c", LEAST_CLIENT]);
        let Ok(got) = serde_json::from_str::<serde_json::Value>(out.stdout.trim()) else {
            return false;
        };
        let quick = got["quick"].as_array().unwrap();
        !quick.contains(&got["slow"])
            && quick
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 2
    };
    assert!(eventually(20, around), "{}", mesh.waypoint_log());
    assert!(around() && around());
    for f in [bad, file] {
        let _ = std::fs::remove_file(f);
    }
}

const AUTHZ_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: authz}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: authz-tcp}
spec: {selector: {app: details}, ports: [{port: 9080, name: tcp}]}
"#;

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: authz-allow}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]
    to: [{operation: {methods: [GET], paths: ["/details/{*}", /headers]}}]
  - from: [{source: {serviceAccounts: [bookinfo-productpage]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: authz-deny}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  action: DENY
  rules: [{when: [{key: "request.headers[x-block]", values: ["yes"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  annotations: {istio.io/dry-run: "true"}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  action: DENY
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  action: AUDIT
  rules: [{to: [{operation: {paths: [/details/1]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-deny}
spec:
  targetRefs: [{kind: Service, group: "", name: authz-tcp}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/curl]}}]
    to: [{operation: {methods: [GET]}}]
"#;

/// Attached to the waypoint's Gateway: every service through it.
const GATEWAY_DENY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// AuthorizationPolicies attached to the waypoint (targetRefs): ALLOW by principal, method
/// and path template, by service account; DENY by header (before ALLOW); a Gateway-wide
/// DENY on every service; dry-run and AUDIT only logged; paths normalized first; a TCP
/// service judged without HTTP fields (the DENY's method is dropped: it denies more).
fn authorization(mesh: &Mesh) {
    let bad = mesh.write(
        "bad-authz.yaml",
        &POLICIES.replace("request.headers[x-block]", "request.path"),
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok && out.stderr.contains("spec.rules[0].when[0].key"),
        "{}",
        out.stderr
    );
    let services = mesh.write("authz-services.yaml", AUTHZ_SERVICES);
    mesh.ok(&["apply", "-f", services.to_str().unwrap()]);
    let file = mesh.write("authz.yaml", POLICIES);
    mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    let status = |args: &[&str]| mesh.curl_i(args).0;
    assert!(
        eventually(20, || status(&[
            "-X",
            "POST",
            "http://authz:9080/details/0"
        ]) == 403),
        "{}",
        mesh.waypoint_log()
    );
    let (code, text) = mesh.curl_i(&["-X", "POST", "http://authz:9080/details/0"]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("RBAC: access denied"), "{text}");
    assert!(
        eventually(5, || mesh.waypoint_log().lines().any(|l| l
            .contains("authority=authz:9080")
            && l.contains("method=POST")
            && l.contains(
                "details=\"rbac_access_denied_matched_policy[none]\""
            ))),
        "{}",
        mesh.waypoint_log()
    );
    // Istio's request metrics, reporter "waypoint": the denial and an answered request.
    assert_eq!(status(&["http://authz:9080/details/0"]), 200);
    let ip = mesh.pod("waypoint-0")["ip"].as_str().unwrap().to_string();
    let metrics = mesh.curl(
        "curl",
        &format!("http://{ip}:15020/metrics"),
        "istio_requests_total",
    );
    let sample = |name: &str, code: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("response_code=\"{code}\""))
                    && l.contains("destination_service=\"authz.default.svc.cluster.local\"")
            })
            .unwrap_or_else(|| panic!("no {name} for {code}:\n{metrics}"))
            .to_string()
    };
    let denied = sample("istio_requests_total{", "403");
    for label in [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/curl\"",
        "source_workload=\"curl\"",
        "request_protocol=\"http\"",
        "destination_workload=\"unknown\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(denied.contains(label), "{label}: {denied}");
    }
    let served = sample("istio_requests_total{", "200");
    assert!(
        served.contains("destination_workload=\"details-v1\"")
            && served.contains("destination_version=\"v1\"")
            && served.contains(
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-details\""
            ),
        "{served}"
    );
    sample("istio_request_duration_milliseconds_bucket{", "200");
    // gRPC is answered with status 7 (PERMISSION_DENIED).
    let (code, text) = mesh.curl_i(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-X",
        "POST",
        "http://authz:9080/keelson.test.Echo/Echo",
    ]);
    assert!(code == 200 && text.contains("grpc-status: 7"), "{text}");
    // ALLOW: GET on one segment under /details/ and on /headers, for the curl principal.
    assert_eq!(status(&["http://authz:9080/details/0"]), 200);
    assert_eq!(status(&["http://authz:9080/details/0/more"]), 403);
    // DENY before ALLOW, by header.
    let (code, text) = mesh.curl_i(&["-H", "x-block: yes", "http://authz:9080/details/0"]);
    assert_eq!(code, 403, "{text}");
    assert!(
        eventually(5, || mesh.waypoint_log().contains(
            "details=\"rbac_access_denied_matched_policy[default.authz-deny]\""
        )),
        "{}",
        mesh.waypoint_log()
    );
    // The path is normalized before it is judged, and goes upstream normalized.
    let (code, text) = mesh.curl_i(&[
        "--path-as-is",
        "http://authz:9080/details/x/%2e%2e/..//headers",
    ]);
    assert_eq!(code, 403, "{text}");
    let (code, text) = mesh.curl_i(&["--path-as-is", "http://authz:9080/details/%2E%2e/headers"]);
    assert_eq!(code, 200, "{text}");
    assert_eq!(json_body(&text)["path"], "/headers", "{text}");
    // Another service account, another rule: any method.
    let pp = mesh.exec(
        "productpage-v1-0",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-m",
            "10",
            "http://authz:9080/details/0",
        ],
    );
    assert_eq!(pp.stdout.trim(), "200", "{}", pp.stderr);
    // Dry-run: /headers would be denied; it is answered, and the difference logged. AUDIT
    // marks only.
    assert_eq!(status(&["http://authz:9080/headers"]), 200);
    assert_eq!(status(&["http://authz:9080/details/1"]), 200);
    assert!(
        eventually(5, || {
            let log = mesh.waypoint_log();
            log.contains("dry-run authorization policy differs")
                && log.contains("rbac_access_denied_matched_policy[default.dry]")
                && log.contains("audited by authorization policy")
                && log.contains("default.audit")
        }),
        "{}",
        mesh.waypoint_log()
    );
    // TCP: the DENY's method cannot be checked, so it denies the curl principal outright;
    // other clients pass.
    let tcp = |pod: &str| {
        mesh.exec(
            pod,
            &["curl", "-sS", "-m", "10", "http://authz-tcp:9080/details/0"],
        )
    };
    let out = tcp("curl");
    assert!(!out.ok, "{}", out.stdout);
    let out = tcp("productpage-v1-0");
    assert!(
        out.ok && out.stdout.contains("details"),
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        mesh.waypoint_log()
    );
    assert!(
        eventually(5, || mesh.waypoint_log().lines().any(|l| l
            .contains("tcp connection denied")
            && l.contains(
                "rbac_access_denied_matched_policy[default.tcp-deny]"
            ))),
        "{}",
        mesh.waypoint_log()
    );
    // Attached to the Gateway: every service through this waypoint. On TCP its path cannot
    // be checked, so it denies every connection (fail closed).
    let gateway = mesh.write("authz-gw.yaml", GATEWAY_DENY);
    mesh.ok(&["apply", "-f", gateway.to_str().unwrap()]);
    assert!(
        eventually(20, || status(&["http://gw-details:9080/admin/x"]) == 403),
        "{}",
        mesh.waypoint_log()
    );
    assert_eq!(status(&["http://gw-details:9080/headers"]), 200);
    assert!(!tcp("productpage-v1-0").ok);
    assert!(
        eventually(5, || mesh.waypoint_log().lines().any(|l| l
            .contains("tcp connection denied")
            && l.contains(
                "rbac_access_denied_matched_policy[default.no-admin]"
            ))),
        "{}",
        mesh.waypoint_log()
    );
    mesh.ok(&["delete", "-f", gateway.to_str().unwrap()]);
    // Deleted: allowed again, TCP too.
    mesh.ok(&["delete", "-f", file.to_str().unwrap()]);
    assert!(eventually(20, || status(&[
        "-X",
        "POST",
        "http://authz:9080/details/0"
    ]) == 200));
    assert!(eventually(10, || tcp("curl").ok));
    mesh.ok(&["delete", "-f", services.to_str().unwrap()]);
    for f in [bad, file, gateway, services] {
        let _ = std::fs::remove_file(f);
    }
}
