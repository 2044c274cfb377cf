use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::httproute::{parse_duration, HttpRouteSpec, Redirect};
use crate::table::*;

fn route(ns: &str, name: &str, created: u64, yaml: &str) -> Arc<Route> {
    let spec: HttpRouteSpec = serde_yaml::from_str(yaml).unwrap();
    spec.validate().unwrap();
    Arc::new(Route {
        namespace: ns.into(),
        name: name.into(),
        created,
        spec,
    })
}

const PARENT: &str = "parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n";

fn frontend() -> Frontend<'static> {
    Frontend {
        namespace: "default",
        name: "echo",
        port: 80,
        port_name: Some("http"),
        client_namespace: "default",
    }
}

/// The `name` header the selected rule sets (each test rule tags itself with it).
fn pick(
    table: &RouteTable,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let sel = table.select(&RequestView {
        method,
        path,
        query,
        headers: &h,
    })?;
    Some(sel.rule().name.clone().unwrap_or_default())
}

#[test]
fn path_prefixes_are_segment_wise() {
    assert!(prefix_matches("/v2", "/v2"));
    assert!(prefix_matches("/v2", "/v2/"));
    assert!(prefix_matches("/v2", "/v2/x"));
    assert!(prefix_matches("/v2/", "/v2"));
    assert!(!prefix_matches("/v2", "/v2example"));
    assert!(!prefix_matches("/v2", "/foo/v2/x"));
    assert!(prefix_matches("/", "/anything"));
}

#[test]
fn prefix_replacement_follows_the_slash_table() {
    for (path, with, want) in [
        ("/foo/bar", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/xyz/", "/xyz/bar"),
        ("/foo", "/xyz", "/xyz"),
        ("/foo/", "/xyz", "/xyz/"),
        ("/foo/bar", "", "/bar"),
        ("/foo/bar", "/", "/bar"),
        ("/foo", "/", "/"),
        ("/foo", "", "/"),
    ] {
        assert_eq!(
            replace_prefix(path, "/foo", with),
            want,
            "{path} with {with:?}"
        );
    }
    assert_eq!(
        replace_prefix("/strip-prefix/three", "/strip-prefix", "/"),
        "/three"
    );
    assert_eq!(replace_prefix("/strip-prefix", "/strip-prefix", "/"), "/");
}

#[test]
fn precedence_across_rules_and_routes() {
    let a = route(
        "default",
        "a",
        1,
        &format!(
            "{PARENT}rules:
- name: prefix-match
  matches: [{{path: {{type: PathPrefix, value: /match/}}}}]
- name: prefix-match-prefix
  matches: [{{path: {{type: PathPrefix, value: /match/prefix/}}}}]
- name: exact
  matches: [{{path: {{type: Exact, value: /match}}}}]
- name: method
  matches: [{{path: {{value: /}}, method: PATCH}}]
- name: headers
  matches: [{{headers: [{{name: version, value: four}}]}}]
- name: two-headers
  matches: [{{headers: [{{name: version, value: four}}, {{name: color, value: red}}]}}]
- name: query
  matches: [{{queryParams: [{{name: animal, value: hydra}}]}}]
- name: path5
  matches: [{{path: {{type: Exact, value: /path5}}}}]
"
        ),
    );
    let b = route(
        "default",
        "b",
        2,
        &format!(
            "{PARENT}rules:
- name: younger-exact
  matches: [{{path: {{type: Exact, value: /match}}}}]
- name: catch-all
"
        ),
    );
    let t = RouteTable::build(&[b, a], &frontend()).unwrap();
    let p = |m: &str, t_: &str, h: &[(&str, &str)]| pick(&t, m, t_, h).unwrap();
    assert_eq!(p("GET", "/match", &[]), "exact"); // exact beats prefix; older route wins
    assert_eq!(p("GET", "/match/prefix/one", &[]), "prefix-match-prefix");
    assert_eq!(p("GET", "/match/x", &[]), "prefix-match");
    assert_eq!(p("PATCH", "/x", &[("version", "four")]), "method"); // method beats headers
    assert_eq!(
        p("GET", "/x", &[("version", "four"), ("color", "red")]),
        "two-headers"
    );
    assert_eq!(
        p("GET", "/x?animal=hydra", &[("version", "four")]),
        "headers"
    ); // headers beat query
    assert_eq!(p("PATCH", "/path5", &[]), "path5"); // path beats method
    assert_eq!(p("GET", "/path5?animal=hydra", &[]), "path5"); // path beats query
    assert_eq!(p("GET", "/other", &[]), "catch-all");
}

#[test]
fn header_and_query_matching_rules() {
    let r = route(
        "default",
        "r",
        1,
        &format!(
            "{PARENT}rules:
- name: hdr
  matches: [{{path: {{type: Exact, value: /h}}, headers: [{{name: X-Version, value: One}}]}}]
- name: qry
  matches: [{{path: {{type: Exact, value: /q}}, queryParams: [{{name: animal, value: whale}}]}}]
- name: rx
  matches: [{{path: {{type: RegularExpression, value: '/r/[0-9]+'}}, headers: [{{type: RegularExpression, name: user-agent, value: '.*Firefox.*'}}]}}]
"
        ),
    );
    let t = RouteTable::build(&[r], &frontend()).unwrap();
    assert_eq!(
        pick(&t, "GET", "/h", &[("x-version", "One")]).as_deref(),
        Some("hdr")
    );
    assert_eq!(pick(&t, "GET", "/h", &[("X-VERSION", "one")]), None); // values case-sensitive
    assert_eq!(
        pick(&t, "GET", "/q?animal=whale", &[]).as_deref(),
        Some("qry")
    );
    assert_eq!(pick(&t, "GET", "/q?ANIMAL=whale", &[]), None); // names case-sensitive
    assert_eq!(pick(&t, "GET", "/q?animal=whaledolphin", &[]), None);
    assert_eq!(
        pick(&t, "GET", "/q?animal=whale&animal=dolphin", &[]).as_deref(),
        Some("qry")
    );
    assert_eq!(pick(&t, "GET", "/q?animal=dolphin&animal=whale", &[]), None); // first value
    assert_eq!(
        pick(&t, "GET", "/r/42", &[("user-agent", "Mozilla Firefox/1")]).as_deref(),
        Some("rx")
    );
    assert_eq!(
        pick(&t, "GET", "/r/42x", &[("user-agent", "Firefox")]),
        None
    ); // full match
    assert_eq!(pick(&t, "GET", "/nothing", &[]), None); // 404
}

#[test]
fn attachment_needs_a_service_parent_on_that_port_and_consumer_routes_win() {
    let no_group = route(
        "default",
        "g",
        1,
        "parentRefs: [{kind: Service, name: echo}]\nrules: [{name: g}]\n",
    );
    assert!(RouteTable::build(&[no_group], &frontend()).is_none());
    let other_port = route(
        "default",
        "p",
        1,
        "parentRefs: [{group: \"\", kind: Service, name: echo, port: 8080}]\nrules: [{name: p}]\n",
    );
    assert!(RouteTable::build(std::slice::from_ref(&other_port), &frontend()).is_none());
    let producer = route(
        "default",
        "producer",
        1,
        "parentRefs: [{group: \"\", kind: Service, name: echo}]\nrules: [{name: producer}]\n",
    );
    let consumer = route(
        "client-ns",
        "consumer",
        2,
        "parentRefs: [{group: \"\", kind: Service, name: echo, namespace: default}]\nrules: [{name: consumer}]\n",
    );
    let routes = [producer, consumer, other_port];
    let t = RouteTable::build(&routes, &frontend()).unwrap();
    assert_eq!(pick(&t, "GET", "/", &[]).as_deref(), Some("producer"));
    let from_client_ns = Frontend {
        client_namespace: "client-ns",
        ..frontend()
    };
    let t = RouteTable::build(&routes, &from_client_ns).unwrap();
    assert_eq!(pick(&t, "GET", "/", &[]).as_deref(), Some("consumer"));
}

#[test]
fn weights_default_to_one_and_zero_gets_nothing() {
    let r = route(
        "default",
        "w",
        1,
        &format!(
            "{PARENT}rules:
- backendRefs: [{{name: v1, port: 80, weight: 0}}, {{name: v2, port: 80}}]
- backendRefs: [{{name: v1, port: 80, weight: 0}}]
- {{}}
"
        ),
    );
    for _ in 0..200 {
        assert_eq!(pick_backend(&r.spec.rules[0]).unwrap().name, "v2");
    }
    assert!(pick_backend(&r.spec.rules[1]).is_none());
    assert!(pick_backend(&r.spec.rules[2]).is_none());
    let split = route(
        "default",
        "s",
        1,
        &format!("{PARENT}rules:\n- backendRefs: [{{name: a, port: 80, weight: 90}}, {{name: b, port: 80, weight: 10}}]\n"),
    );
    let a = (0..10_000)
        .filter(|_| pick_backend(&split.spec.rules[0]).unwrap().name == "a")
        .count();
    assert!((8_800..=9_200).contains(&a), "{a}");
}

#[test]
fn redirects_derive_status_port_and_path() {
    let r = |yaml: &str| -> Redirect { serde_yaml::from_str(yaml).unwrap() };
    assert_eq!(
        redirect(
            &r("hostname: example.org"),
            "echo:80",
            80,
            "/a",
            Some("x=1"),
            None
        ),
        (302, "http://example.org/a?x=1".into())
    );
    assert_eq!(
        redirect(&r("{}"), "echo:8080", 8080, "/a", None, None),
        (302, "http://echo:8080/a".into())
    );
    assert_eq!(
        redirect(&r("scheme: https"), "echo:8080", 8080, "/a", None, None),
        (302, "https://echo/a".into())
    );
    assert_eq!(
        redirect(
            &r("{scheme: https, port: 443, statusCode: 301}"),
            "echo",
            80,
            "/",
            None,
            None
        ),
        (301, "https://echo/".into())
    );
    assert_eq!(
        redirect(
            &r("path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}"),
            "echo",
            80,
            "/old/page",
            None,
            Some("/old")
        ),
        (302, "http://echo/new/page".into())
    );
}

#[test]
fn header_modifiers_set_add_and_remove_case_insensitively() {
    let m = serde_yaml::from_str(
        "set: [{name: X-Header-Set, value: set}]\nadd: [{name: X-Header-Add, value: new}]\nremove: [X-Header-Remove]\n",
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-header-set", "old".parse().unwrap());
    h.insert("x-header-add", "old".parse().unwrap());
    h.insert("x-header-remove", "gone".parse().unwrap());
    modify_headers(&mut h, &m);
    assert_eq!(h.get("x-header-set").unwrap(), "set");
    let added: Vec<_> = h.get_all("x-header-add").iter().collect();
    assert_eq!(added, ["old", "new"]);
    assert!(h.get("x-header-remove").is_none());
}

#[test]
fn validation_names_the_field() {
    let bad = |yaml: &str| -> String {
        let spec: HttpRouteSpec = serde_yaml::from_str(yaml).unwrap();
        spec.validate().unwrap_err()
    };
    assert!(
        bad("rules: [{matches: [{path: {type: PathPrefix, value: v2}}]}]")
            .starts_with("spec.rules[0].matches[0].path.value")
    );
    assert!(
        bad("rules: [{matches: [{path: {type: RegularExpression, value: '('}}]}]")
            .contains("regular expression")
    );
    assert!(bad(
        "rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}]"
    )
    .contains("statusCode"));
    assert!(bad("rules: [{backendRefs: [{name: a, port: 80}], filters: [{type: RequestRedirect, requestRedirect: {}}]}]")
        .contains("cannot be combined with backendRefs"));
    assert!(bad("rules: [{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]")
        .contains("exactly one PathPrefix"));
    assert!(bad("rules: [{timeouts: {request: 0.5s}}]").contains("timeouts.request"));
    assert!(bad("rules: [{retry: {codes: [200]}}]").contains("retry.codes"));
}

#[test]
fn durations_follow_gep_2257() {
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    for bad in ["", "0.5s", "5", "1d", "123456s", "1s1s1s1s1s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_cors_filter_answers_preflights_and_marks_responses() {
    use crate::httproute::{origin_matches, CorsFilter};
    use crate::vsroute::Cors;
    assert!(origin_matches(
        "https://*.bar.com",
        "https://xpto.www.bar.com"
    ));
    assert!(!origin_matches("https://*.bar.com", "https://bar.com"));
    assert!(!origin_matches("https://*.bar.com", "http://a.bar.com"));
    assert!(!origin_matches("https://a.com", "https://a.com:8443"));
    assert!(origin_matches("https://a.com:8443", "https://a.com:8443"));
    let filter = |yaml: &str| -> CorsFilter { serde_yaml::from_str(yaml).unwrap() };
    let req = |pairs: &[(&str, &str)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    };
    let get = |c: &Cors, name: &str| match c {
        Cors::Preflight(h) | Cors::Actual(h) => h
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.clone()),
        Cors::Forward => None,
    };
    let f = filter("allowOrigins: ['https://*.example.com']\nallowMethods: [GET, POST]\nallowHeaders: [x-custom]\nexposeHeaders: [x-trace]\n");
    let pre = f.apply(
        &http::Method::OPTIONS,
        &req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ]),
    );
    assert!(matches!(pre, Cors::Preflight(_)));
    assert_eq!(
        get(&pre, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        get(&pre, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        get(&pre, "access-control-allow-headers").as_deref(),
        Some("x-custom")
    );
    // maxAge is always sent, 5 when unset (GW-38); credentials only when true (GW-37).
    assert_eq!(get(&pre, "access-control-max-age").as_deref(), Some("5"));
    assert_eq!(get(&pre, "access-control-allow-credentials"), None);
    // A preflight from another origin is answered here, without CORS headers.
    let other = f.apply(
        &http::Method::OPTIONS,
        &req(&[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "GET"),
        ]),
    );
    assert!(matches!(&other, Cors::Preflight(h) if h.is_empty()));
    // An actual request: the origin and exposed headers on the response.
    let actual = f.apply(
        &http::Method::GET,
        &req(&[("origin", "https://app.example.com")]),
    );
    assert!(matches!(actual, Cors::Actual(_)));
    assert_eq!(
        get(&actual, "access-control-expose-headers").as_deref(),
        Some("x-trace")
    );
    assert!(matches!(
        f.apply(&http::Method::GET, &req(&[])),
        Cors::Forward
    ));
    // `*` with credentials echoes the origin, the method and the headers asked for.
    let f = filter("allowOrigins: ['*']\nallowCredentials: true\nallowMethods: ['*']\nallowHeaders: ['*']\nmaxAge: 600\n");
    let pre = f.apply(
        &http::Method::OPTIONS,
        &req(&[
            ("origin", "https://x.test"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a, x-b"),
        ]),
    );
    assert_eq!(
        get(&pre, "access-control-allow-origin").as_deref(),
        Some("https://x.test")
    );
    assert_eq!(
        get(&pre, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        get(&pre, "access-control-allow-methods").as_deref(),
        Some("PUT")
    );
    assert_eq!(
        get(&pre, "access-control-allow-headers").as_deref(),
        Some("x-a, x-b")
    );
    assert_eq!(get(&pre, "access-control-max-age").as_deref(), Some("600"));
    // Without credentials `*` stays `*`.
    let f = filter("allowOrigins: ['*']\n");
    let actual = f.apply(&http::Method::GET, &req(&[("origin", "https://x.test")]));
    assert_eq!(
        get(&actual, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    // Validation names the field.
    let spec: crate::httproute::HttpRouteSpec = serde_yaml::from_str(
        "rules:\n- filters:\n  - type: CORS\n    cors: {allowOrigins: ['ftp//x']}\n",
    )
    .unwrap();
    let e = spec.validate().unwrap_err();
    assert!(e.contains("cors.allowOrigins[0]"), "{e}");
}
