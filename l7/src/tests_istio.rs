//! VirtualService, DestinationRule and retry semantics (docs/WIRE.md §8).

use std::sync::Arc;

use http::HeaderMap;

use crate::istio::*;
use crate::retry::{Outcome, RetryPolicy};
use crate::vsroute::*;

fn vs(yaml: &str) -> Arc<VirtualService> {
    let spec: VirtualServiceSpec = serde_yaml::from_str(yaml).unwrap();
    spec.validate().unwrap();
    Arc::new(VirtualService {
        namespace: "default".into(),
        name: "vs".into(),
        created: 0,
        spec,
    })
}

fn frontend() -> Frontend<'static> {
    Frontend {
        service_namespace: "default",
        hostname: "reviews.default.svc.cluster.local",
        waypoint_namespace: "default",
    }
}

fn select(t: &VsTable, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<usize> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    t.select(&RequestView {
        method,
        scheme: "http",
        authority: "reviews:9080",
        path,
        query,
        headers: &h,
        port: 9080,
    })
    .map(|s| s.rule)
}

#[test]
fn first_match_order_and_string_prefix() {
    let t = VsTable::build(
        &[vs(r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /v2}}]
  route: [{destination: {host: reviews, subset: v2}}]
- match: [{uri: {exact: /x}, ignoreUriCase: true}]
  route: [{destination: {host: reviews}}]
- match: [{uri: {regex: "/a"}}]
  route: [{destination: {host: reviews}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#)],
        &frontend(),
    )
    .unwrap();
    // A plain string prefix (VS-24), unlike Gateway API.
    assert_eq!(select(&t, "GET", "/v2example", &[]), Some(0));
    assert_eq!(select(&t, "GET", "/X", &[]), Some(1));
    // Regex is a full match (VS-25): /a/b falls to the catch-all.
    assert_eq!(select(&t, "GET", "/a", &[]), Some(2));
    assert_eq!(select(&t, "GET", "/a/b", &[]), Some(3));
}

#[test]
fn headers_without_headers_query_and_source_labels() {
    let t = VsTable::build(
        &[vs(r#"
hosts: [reviews.default.svc.cluster.local]
http:
- match: [{sourceLabels: {app: productpage}}]
  route: [{destination: {host: reviews}}]
- match: [{headers: {end-user: {exact: jason}}}]
  route: [{destination: {host: reviews}}]
- match: [{headers: {cookie: {regex: "^(.*?;)?(user=tester)(;.*)?$"}}}]
  route: [{destination: {host: reviews}}]
- match: [{withoutHeaders: {x-skip: {regex: "*"}}, queryParams: {q: {exact: ""}}}]
  route: [{destination: {host: reviews}}]
- match: [{withoutHeaders: {end-user: {regex: ".*"}}}]
  route: [{destination: {host: reviews}}]
- match: [{method: {exact: POST}}]
  route: [{destination: {host: reviews}}]
"#)],
        &frontend(),
    )
    .unwrap();
    // sourceLabels never match at a waypoint (VS-33).
    assert_eq!(select(&t, "GET", "/", &[("end-user", "jason")]), Some(1));
    assert_eq!(
        select(&t, "GET", "/", &[("cookie", "user=tester; theme=dark")]),
        Some(2)
    );
    assert_eq!(select(&t, "GET", "/?q", &[]), Some(3));
    assert_eq!(select(&t, "GET", "/?q", &[("x-skip", "1")]), None);
    // withoutHeaders regex .* matches nothing: a missing header is "" (VS-30).
    assert_eq!(select(&t, "get", "/", &[]), None);
    assert_eq!(select(&t, "POST", "/", &[]), Some(5));
}

#[test]
fn host_selection_by_namespace_and_gateways() {
    let mut other = vs("hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}}]}]");
    Arc::make_mut(&mut other).namespace = "elsewhere".into();
    assert!(!applies(&other, &frontend()));
    let gw = vs(
        "hosts: [reviews]\ngateways: [my-gw]\nhttp: [{route: [{destination: {host: reviews}}]}]",
    );
    assert!(!applies(&gw, &frontend()));
    let wildcard =
        vs("hosts: ['*.svc.cluster.local']\nhttp: [{route: [{destination: {host: reviews}}]}]");
    assert!(applies(&wildcard, &frontend()));
    assert_eq!(
        fqdn("ratings.other", "default"),
        "ratings.other.svc.cluster.local"
    );
}

#[test]
fn redirects_default_301_and_keep_the_query() {
    let r: HttpRedirect = serde_yaml::from_str("{uri: /new, authority: b.example}").unwrap();
    assert_eq!(
        redirect(
            &r,
            "http",
            "a:9080",
            9080,
            "/old",
            Some("x=1"),
            &UriMatched::Exact
        ),
        (301, "http://b.example/new?x=1".to_string())
    );
    let r: HttpRedirect =
        serde_yaml::from_str("{scheme: https, derivePort: FROM_REQUEST_PORT, redirectCode: 308}")
            .unwrap();
    assert_eq!(
        redirect(&r, "http", "b:80", 80, "/p", None, &UriMatched::None),
        (308, "https://b:80/p".to_string())
    );
    // An explicit request port is kept; without one, the port the request was sent to.
    assert_eq!(
        redirect(&r, "http", "b:8000", 80, "/p", None, &UriMatched::None),
        (308, "https://b:8000/p".to_string())
    );
    assert_eq!(
        redirect(&r, "http", "b", 9080, "/p", None, &UriMatched::None),
        (308, "https://b:9080/p".to_string())
    );
    let r: HttpRedirect = serde_yaml::from_str("{prefixRewrite: /v2/}").unwrap();
    assert_eq!(
        redirect(
            &r,
            "http",
            "b:80",
            80,
            "/v1/x",
            None,
            &UriMatched::Prefix(4)
        ),
        (301, "http://b:80/v2/x".to_string())
    );
}

#[test]
fn rewrites_are_raw_substitutions() {
    assert_eq!(rewrite_uri("/demo/x", &UriMatched::Prefix(6), "/"), "/x");
    assert_eq!(
        rewrite_uri("/foo/bar", &UriMatched::Prefix(4), "/"),
        "//bar"
    );
    assert_eq!(rewrite_uri("/a", &UriMatched::Exact, "/b"), "/b");
    assert_eq!(
        regex_rewrite("/v1/items/7", r"^/v1/(.*)$", r"/api/\1"),
        "/api/items/7"
    );
}

#[test]
fn cors_preflight_actual_and_unmatched() {
    let p: CorsPolicy = serde_yaml::from_str(
        "{allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET, POST], allowHeaders: [x-a], exposeHeaders: [x-b], maxAge: 24h, allowCredentials: true}",
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert("origin", "https://a.example".parse().unwrap());
    h.insert("access-control-request-method", "POST".parse().unwrap());
    let Cors::Preflight(out) = cors(&p, &http::Method::OPTIONS, &h) else {
        panic!("preflight")
    };
    let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(
        get("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(get("access-control-max-age"), Some("86400"));
    assert_eq!(get("access-control-allow-methods"), Some("GET,POST"));
    assert!(matches!(cors(&p, &http::Method::GET, &h), Cors::Actual(_)));
    h.insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(cors(&p, &http::Method::GET, &h), Cors::Forward);
    assert_eq!(cors(&p, &http::Method::OPTIONS, &h), Cors::Forward);
}

#[test]
fn validation_names_the_field() {
    let bad = |yaml: &str| {
        serde_yaml::from_str::<VirtualServiceSpec>(yaml)
            .map_err(|e| e.to_string())
            .and_then(|s| s.validate())
            .unwrap_err()
    };
    assert!(
        bad("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], redirect: {uri: /}}]")
            .contains("spec.http[0]: only one of route")
    );
    assert!(bad(
        "hosts: [r]\nhttp: [{match: [{uri: {regex: '('}}], route: [{destination: {host: r}}]}]"
    )
    .contains("spec.http[0].match[0].uri.regex"));
    assert!(bad("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], fault: {abort: {grpcStatus: '14'}}}]")
        .contains("grpcStatus"));
    assert!(bad("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: 'sometimes'}}]")
        .contains("spec.http[0].retries.retryOn"));
    assert!(
        bad("hosts: [r]\nhttp: [{route: [{destination: {host: r}}], timout: 1s}]")
            .contains("timout")
    );
    assert!(bad("hosts: [r]\nhttp: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]}]")
        .contains("weights are all 0"));
    assert_eq!(
        parse_duration("0.5s").unwrap(),
        std::time::Duration::from_millis(500)
    );
    assert_eq!(
        parse_duration("1m30s").unwrap(),
        std::time::Duration::from_secs(90)
    );
}

#[test]
fn retry_counting_defaults_and_triggers() {
    // Omitted: the mesh default, 2 retries on connect failures, not on 503 responses.
    let d = RetryPolicy::from_virtual_service(None);
    assert_eq!(d.retries, 2);
    assert!(d.again(1, Outcome::ConnectFailure));
    assert!(!d.again(
        1,
        Outcome::Response {
            status: 503,
            grpc: None
        }
    ));
    assert!(!d.again(3, Outcome::ConnectFailure));
    // Given without attempts: none.
    let r: Retries = serde_yaml::from_str("{retryOn: 5xx}").unwrap();
    assert_eq!(RetryPolicy::from_virtual_service(Some(&r)).retries, 0);
    let r: Retries = serde_yaml::from_str("{attempts: 5, retryOn: '5xx'}").unwrap();
    let p = RetryPolicy::from_virtual_service(Some(&r));
    assert!(p.again(
        5,
        Outcome::Response {
            status: 500,
            grpc: None
        }
    ));
    assert!(!p.again(
        6,
        Outcome::Response {
            status: 500,
            grpc: None
        }
    ));
    assert!(!p.again(
        1,
        Outcome::Response {
            status: 404,
            grpc: None
        }
    ));
    assert!(p.again(1, Outcome::Timeout));
    // Bare codes: only real responses with that code (VS-55).
    let r: Retries = serde_yaml::from_str("{attempts: 1, retryOn: '503'}").unwrap();
    let p = RetryPolicy::from_virtual_service(Some(&r));
    assert!(p.again(
        1,
        Outcome::Response {
            status: 503,
            grpc: None
        }
    ));
    assert!(!p.again(
        1,
        Outcome::Response {
            status: 500,
            grpc: None
        }
    ));
    assert!(!p.again(1, Outcome::Reset));
    // Gateway API: listed codes, plus connection errors and timeouts (GW-50, GW-53).
    let g: crate::httproute::Retry = serde_yaml::from_str("{codes: [503], attempts: 2}").unwrap();
    let p = RetryPolicy::from_http_route(Some(&g), None);
    assert!(p.again(
        2,
        Outcome::Response {
            status: 503,
            grpc: None
        }
    ));
    assert!(!p.again(
        1,
        Outcome::Response {
            status: 500,
            grpc: None
        }
    ));
    assert!(p.again(1, Outcome::Timeout) && p.again(1, Outcome::Reset));
}

#[test]
fn outlier_detection_defaults_port_level_and_checks() {
    let dr: DestinationRuleSpec = serde_yaml::from_str(
        "host: r
trafficPolicy:
  tls: {mode: ISTIO_MUTUAL}
  proxyProtocol: {version: V1}
  outlierDetection: {consecutive5xxErrors: 3, interval: 2s}
  portLevelSettings:
  - port: {number: 9080}
    outlierDetection: {consecutiveGatewayErrors: 1}
",
    )
    .unwrap();
    dr.validate().unwrap();
    let p = dr.traffic_policy.as_ref().unwrap();
    // Sections not applied are kept.
    assert!(p.sections.other.contains_key("proxyProtocol"));
    assert_eq!(p.sections.other.len(), 1, "{:?}", p.sections.other);
    assert_eq!(
        p.sections.tls.as_ref().unwrap().mode.as_deref(),
        Some("ISTIO_MUTUAL")
    );
    // As the control plane passes it on (`spec_json`), unchanged.
    let again: DestinationRuleSpec =
        serde_json::from_str(&serde_json::to_string(&dr).unwrap()).unwrap();
    assert_eq!(again, dr);
    let top = p.outlier_detection_for(80).unwrap().effective();
    assert_eq!(
        top,
        Ejection {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: std::time::Duration::from_secs(2),
            base_ejection_time: std::time::Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    );
    // The port's section replaces the policy's whole: its unset fields take the defaults.
    let port = p.outlier_detection_for(9080).unwrap().effective();
    assert_eq!((port.consecutive_5xx, port.consecutive_gateway), (5, 1));
    assert_eq!(port.interval, std::time::Duration::from_secs(10));
    for (bad, field) in [
        (
            "{outlierDetection: {maxEjectionPercent: 101}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            "{outlierDetection: {baseEjectionTime: soon}}",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        ),
        (
            "{portLevelSettings: [{outlierDetection: {}}]}",
            "spec.trafficPolicy.portLevelSettings[0].port",
        ),
    ] {
        let dr: DestinationRuleSpec =
            serde_yaml::from_str(&format!("{{host: r, trafficPolicy: {bad}}}")).unwrap();
        let e = dr.validate().unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
}

#[test]
fn connection_pool_limits_by_port() {
    let dr: DestinationRuleSpec = serde_yaml::from_str(
        "host: r
trafficPolicy:
  connectionPool: {tcp: {maxConnections: 2, connectTimeout: 1s}, http: {http1MaxPendingRequests: 0}}
  portLevelSettings:
  - port: {number: 9080}
    connectionPool: {http: {http2MaxRequests: 7, maxRequestsPerConnection: 1}}
",
    )
    .unwrap();
    dr.validate().unwrap();
    let p = dr.traffic_policy.as_ref().unwrap();
    let top = p.connection_pool_for(80).unwrap().effective();
    // 0 (or unset) is no limit, as in Istio.
    assert_eq!(
        (top.max_connections, top.max_pending, top.max_requests),
        (2, u32::MAX, u32::MAX)
    );
    assert!(top.any());
    // The port's section replaces the whole `connectionPool`: no connection limit there.
    let port = p.connection_pool_for(9080).unwrap().effective();
    assert_eq!(
        (
            port.max_connections,
            port.max_requests,
            port.max_requests_per_connection
        ),
        (u32::MAX, 7, 1)
    );
    assert!(!ConnectionPool::default().effective().any());
    let bad: DestinationRuleSpec = serde_yaml::from_str(
        "{host: r, trafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}}",
    )
    .unwrap();
    let e = bad.validate().unwrap_err();
    assert!(
        e.starts_with("spec.trafficPolicy.connectionPool.http.http2MaxRequests"),
        "{e}"
    );
}

#[test]
fn load_balancer_choices_and_checks() {
    let lb = |yaml: &str| -> Result<Balance, String> {
        let dr: DestinationRuleSpec = serde_yaml::from_str(&format!(
            "{{host: r, trafficPolicy: {{loadBalancer: {yaml}}}}}"
        ))
        .unwrap();
        dr.validate()?;
        Ok(dr
            .traffic_policy
            .unwrap()
            .sections
            .load_balancer
            .unwrap()
            .balance())
    };
    assert_eq!(lb("{simple: ROUND_ROBIN}"), Ok(Balance::RoundRobin));
    assert_eq!(lb("{simple: LEAST_CONN}"), Ok(Balance::LeastRequest));
    assert_eq!(lb("{simple: PASSTHROUGH}"), Ok(Balance::Random));
    assert_eq!(
        lb("{consistentHash: {useSourceIp: true, minimumRingSize: 64}}"),
        Ok(Balance::Hash(HashOn::SourceIp))
    );
    assert_eq!(
        lb("{consistentHash: {httpCookie: {name: user, ttl: 0s}}}"),
        Ok(Balance::Hash(HashOn::Cookie(
            "user".into(),
            Some(CookieGen {
                ttl: std::time::Duration::ZERO,
                path: None
            })
        )))
    );
    assert_eq!(
        lb("{consistentHash: {httpCookie: {name: user, ttl: 1h, path: /app}}}"),
        Ok(Balance::Hash(HashOn::Cookie(
            "user".into(),
            Some(CookieGen {
                ttl: std::time::Duration::from_secs(3600),
                path: Some("/app".into())
            })
        )))
    );
    assert_eq!(
        lb("{consistentHash: {httpCookie: {name: user}}}"),
        Ok(Balance::Hash(HashOn::Cookie("user".into(), None)))
    );
    for (bad, field) in [
        (
            "{simple: FASTEST}",
            "spec.trafficPolicy.loadBalancer.simple",
        ),
        (
            "{consistentHash: {httpHeaderName: a, useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "{simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer",
        ),
        (
            "{consistentHash: {httpCookie: {name: user, ttl: soon}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
        ),
        (
            "{consistentHash: {httpCookie: {name: \"a b\", ttl: 1s}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        ),
        (
            "{consistentHash: {httpCookie: {name: user, ttl: 1s, path: \"/a;b\"}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.path",
        ),
    ] {
        let e = lb(bad).unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
}

#[test]
fn header_matches_on_pseudo_headers() {
    let t = VsTable::build(
        &[vs(r#"
hosts: [reviews]
http:
- match: [{headers: {":method": {exact: DELETE}, ":path": {exact: "/r?x=1"}}}]
  route: [{destination: {host: reviews, subset: v1}}]
- match: [{headers: {":authority": {prefix: "reviews:"}, ":scheme": {exact: https}}}]
  route: [{destination: {host: reviews, subset: v2}}]
- match: [{headers: {":path": {prefix: /q}}, withoutHeaders: {":method": {exact: GET}}}]
  route: [{destination: {host: reviews, subset: v3}}]
- route: [{destination: {host: reviews}}]
"#)],
        &frontend(),
    )
    .unwrap();
    // `:path` is the target with its query; `:method` the request's method.
    assert_eq!(select(&t, "DELETE", "/r?x=1", &[]), Some(0));
    assert_eq!(select(&t, "DELETE", "/r", &[]), Some(3));
    assert_eq!(select(&t, "GET", "/r?x=1", &[]), Some(3));
    // `:scheme` is http here (the selector's view), so rule 1 never matches.
    assert_eq!(select(&t, "GET", "/", &[]), Some(3));
    // Inverted: a POST to /q matches, a GET does not.
    assert_eq!(select(&t, "POST", "/q/1", &[]), Some(2));
    assert_eq!(select(&t, "GET", "/q/1", &[]), Some(3));
    // A header named like a pseudo-header cannot be sent: the request's own facts count.
    assert_eq!(select(&t, "GET", "/", &[("x-method", "DELETE")]), Some(3));
}

#[test]
fn an_unknown_pseudo_header_is_rejected() {
    let spec: VirtualServiceSpec = serde_yaml::from_str(
        r#"
hosts: [reviews]
http:
- match: [{headers: {":status": {exact: "200"}}}]
  route: [{destination: {host: reviews}}]
"#,
    )
    .unwrap();
    let e = spec.validate().unwrap_err();
    assert!(e.contains(":status") && e.contains("pseudo-headers"), "{e}");
}

#[test]
fn destination_rule_tls_is_checked_and_chosen_per_port() {
    let dr = |y: &str| serde_yaml::from_str::<DestinationRuleSpec>(y).unwrap();
    let ok = dr("host: api.example.com
trafficPolicy:
  tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.com}
  portLevelSettings:
  - port: {number: 443}
    tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
");
    ok.validate().unwrap();
    let p = ok.traffic_policy.as_ref().unwrap();
    assert!(p.applied());
    assert_eq!(p.tls_for(80).unwrap().mode.as_deref(), Some("SIMPLE"));
    assert_eq!(p.tls_for(443).unwrap().mode.as_deref(), Some("MUTUAL"));
    assert!(p.tls_for(443).unwrap().originates());
    let err = |y: &str| dr(y).validate().unwrap_err();
    assert!(err("host: a\ntrafficPolicy: {tls: {mode: STRICT}}").contains("tls.mode"));
    assert!(
        err("host: a\ntrafficPolicy: {tls: {mode: MUTUAL}}").contains("needs clientCertificate")
    );
    assert!(
        err("host: a\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c}}")
            .contains("credentialName")
    );
    assert!(
        err("host: a\ntrafficPolicy: {tls: {mode: DISABLE, caCertificates: /c}}")
            .contains("only with mode SIMPLE or MUTUAL")
    );
    assert!(err("host: a\ntrafficPolicy: {tls: {mode: SIMPLE, sni: 'a b'}}").contains("sni"));
    assert!(serde_yaml::from_str::<DestinationRuleSpec>(
        "host: a\ntrafficPolicy: {tls: {mod: SIMPLE}}"
    )
    .is_err());
}
