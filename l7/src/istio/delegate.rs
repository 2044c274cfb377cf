//! Delegate VirtualServices and `exportTo` (docs/WIRE.md §8, VS-06, VS-12, DR-07).
//!
//! A root VirtualService's rule may name another VirtualService (`delegate`, no hosts of
//! its own) whose `http` rules stand in for it. The control plane merges them once, when it
//! builds the configuration, so the proxies only ever see plain rules:
//!
//! - each delegate rule's match blocks are narrowed by the root rule's (every pairing of a
//!   root block with a delegate block); a delegate block that is not within the root block
//!   (a path outside the root prefix, another value for the same header) is dropped, and a
//!   rule left with none is dropped;
//! - what the delegate rule does not set (rewrite, timeout, retries, fault, mirror, CORS,
//!   headers) comes from the root rule;
//! - short destination hosts keep meaning what they meant in the delegate's namespace.

use super::{Delegate, Destination, HttpMatch, HttpRule, StringMatch, VirtualServiceSpec};
use crate::vsroute::fqdn;

/// Whether a resource of `namespace` with `export_to` is visible to a proxy (or a root
/// VirtualService) in `viewer_namespace`: empty or `*` is everyone, `.` its own namespace,
/// a name that namespace, `~` no one.
pub fn exported_to(export_to: &[String], namespace: &str, viewer_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| {
            e == "*" || e == viewer_namespace || (e == "." && namespace == viewer_namespace)
        })
}

/// The root VirtualService `root` (of `namespace`) with its delegating rules replaced by the
/// rules they delegate to. `find(namespace, name)` looks a VirtualService up. The second
/// value says what was dropped, and why, for the status of the root.
pub fn resolve<'a>(
    root: &VirtualServiceSpec,
    namespace: &str,
    find: impl Fn(&str, &str) -> Option<&'a (VirtualServiceSpec, Vec<String>)>,
) -> (VirtualServiceSpec, Vec<String>) {
    let mut out = root.clone();
    let mut notes = Vec::new();
    out.http.clear();
    for (i, rule) in root.http.iter().enumerate() {
        let Some(Delegate {
            name,
            namespace: dns,
        }) = &rule.delegate
        else {
            out.http.push(rule.clone());
            continue;
        };
        let dns = dns.as_deref().unwrap_or(namespace);
        let Some((delegate, export_to)) = find(dns, name) else {
            notes.push(format!(
                "spec.http[{i}].delegate: VirtualService {dns}/{name} not found; the rule is dropped"
            ));
            continue;
        };
        if !delegate.hosts.is_empty() {
            notes.push(format!(
                "spec.http[{i}].delegate: {dns}/{name} has hosts, so it is not a delegate; the rule is dropped"
            ));
            continue;
        }
        if !exported_to(export_to, dns, namespace) {
            notes.push(format!(
                "spec.http[{i}].delegate: {dns}/{name} is not exported to {namespace}; the rule is dropped"
            ));
            continue;
        }
        for (j, d) in delegate.http.iter().enumerate() {
            match merge_rule(rule, d, dns) {
                Some(r) => out.http.push(r),
                None => notes.push(format!(
                    "spec.http[{i}]: {dns}/{name} http[{j}] matches nothing within the root match; dropped"
                )),
            }
        }
    }
    (out, notes)
}

/// The delegate rule `d` (of namespace `dns`) under the root rule `root`, or `None` when
/// none of its match blocks lies within the root's.
fn merge_rule(root: &HttpRule, d: &HttpRule, dns: &str) -> Option<HttpRule> {
    let matches = merge_matches(&root.matches, &d.matches)?;
    let mut r = d.clone();
    r.matches = matches;
    r.name = d.name.clone().or_else(|| root.name.clone());
    macro_rules! inherit {
        ($($f:ident),*) => { $( if r.$f.is_none() { r.$f = root.$f.clone(); } )* };
    }
    inherit!(
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        mirror_percent,
        cors_policy,
        headers
    );
    if r.mirrors.is_empty() && r.mirror.is_none() {
        r.mirrors = root.mirrors.clone();
    }
    let qualify = |d: &mut Destination| d.host = fqdn(&d.host, dns);
    r.route.iter_mut().for_each(|t| qualify(&mut t.destination));
    if let Some(m) = r.mirror.as_mut().filter(|_| d.mirror.is_some()) {
        qualify(m);
    }
    if !d.mirrors.is_empty() {
        r.mirrors
            .iter_mut()
            .for_each(|m| qualify(&mut m.destination));
    }
    Some(r)
}

/// Every pairing of a root block with a delegate block that lies within it; `None` when
/// both have blocks and no pairing holds.
fn merge_matches(root: &[HttpMatch], d: &[HttpMatch]) -> Option<Vec<HttpMatch>> {
    if root.is_empty() {
        return Some(d.to_vec());
    }
    if d.is_empty() {
        return Some(root.to_vec());
    }
    let merged: Vec<HttpMatch> = root
        .iter()
        .flat_map(|r| d.iter().filter_map(move |m| merge_match(r, m)))
        .collect();
    (!merged.is_empty()).then_some(merged)
}

/// The delegate block `d` narrowed by the root block `r`, or `None` when they conflict.
fn merge_match(r: &HttpMatch, d: &HttpMatch) -> Option<HttpMatch> {
    let mut m = d.clone();
    m.uri = within(&r.uri, &d.uri)?;
    if d.uri.is_none() {
        m.ignore_uri_case = r.ignore_uri_case;
    }
    m.scheme = within(&r.scheme, &d.scheme)?;
    m.method = within(&r.method, &d.method)?;
    m.authority = within(&r.authority, &d.authority)?;
    for (mine, theirs) in [
        (&mut m.headers, &r.headers),
        (&mut m.without_headers, &r.without_headers),
        (&mut m.query_params, &r.query_params),
    ] {
        for (k, v) in theirs {
            let narrowed = within(&Some(v.clone()), &mine.get(k).cloned())?;
            mine.insert(k.clone(), narrowed.unwrap_or_default());
        }
    }
    m.port = same(r.port, d.port)?;
    m.source_namespace = same(r.source_namespace.clone(), d.source_namespace.clone())?;
    for (k, v) in &r.source_labels {
        match m.source_labels.get(k) {
            Some(mine) if mine != v => return None,
            _ => {
                m.source_labels.insert(k.clone(), v.clone());
            }
        }
    }
    if m.gateways.is_empty() {
        m.gateways = r.gateways.clone();
    } else if !r.gateways.is_empty() && !m.gateways.iter().all(|g| r.gateways.contains(g)) {
        return None;
    }
    if m.name.is_none() {
        m.name = r.name.clone();
    }
    Some(m)
}

/// The narrower of two string conditions when one lies within the other as the delegate
/// must (an exact value, or a prefix, within the root's prefix; an equal condition
/// otherwise); `None` when they conflict.
fn within(root: &Option<StringMatch>, d: &Option<StringMatch>) -> Option<Option<StringMatch>> {
    let (r, m) = match (root, d) {
        (None, d) => return Some(d.clone()),
        (r, None) => return Some(r.clone()),
        (Some(r), Some(m)) => (r, m),
    };
    let ok = match (&r.exact, &r.prefix, &r.regex) {
        (Some(e), _, _) => m.exact.as_ref() == Some(e),
        (_, Some(p), _) => {
            m.exact.as_ref().is_some_and(|e| e.starts_with(p.as_str()))
                || m.prefix.as_ref().is_some_and(|q| q.starts_with(p.as_str()))
        }
        _ => r == m,
    };
    ok.then(|| Some(m.clone()))
}

fn same<T: PartialEq>(root: Option<T>, d: Option<T>) -> Option<Option<T>> {
    match (root, d) {
        (Some(a), Some(b)) if a != b => None,
        (a, b) => Some(b.or(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(y: &str) -> VirtualServiceSpec {
        let s: VirtualServiceSpec = serde_yaml::from_str(y).unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn export_to_dot_star_names_and_none() {
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&["*".into()], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(exported_to(&[".".into(), "b".into()], "a", "b"));
        assert!(!exported_to(&["~".into()], "a", "a"));
    }

    #[test]
    fn delegate_rules_are_narrowed_by_the_root_match_and_inherit_its_settings() {
        let root = vs(r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}}]
  timeout: 3s
  delegate: {name: reviews-api, namespace: team}
- route: [{destination: {host: reviews, subset: v1}}]
"#);
        let delegate = vs(r#"
http:
- match: [{uri: {prefix: /api/v2}}, {uri: {prefix: /other}}]
  route: [{destination: {host: reviews, subset: v2}}]
- match: [{headers: {x-team: {exact: b}}}]
  route: [{destination: {host: reviews, subset: v3}}]
- timeout: 1s
  route: [{destination: {host: reviews.default.svc.cluster.local, subset: v3}}]
"#);
        let kept = (delegate, vec![]);
        let (out, notes) = resolve(&root, "default", |ns, name| {
            (ns == "team" && name == "reviews-api").then_some(&kept)
        });
        assert_eq!(out.http.len(), 3, "{out:#?}");
        let first = &out.http[0];
        assert_eq!(first.matches.len(), 1);
        assert_eq!(
            first.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/api/v2")
        );
        assert_eq!(
            first.matches[0].headers["x-team"].exact.as_deref(),
            Some("a")
        );
        assert_eq!(first.timeout.as_deref(), Some("3s"));
        // Short hosts keep their delegate namespace.
        assert_eq!(
            first.route[0].destination.host,
            "reviews.team.svc.cluster.local"
        );
        // The conflicting header rule is dropped; the match-all rule takes the root's match.
        assert_eq!(out.http[1].timeout.as_deref(), Some("1s"));
        assert_eq!(
            out.http[1].matches[0]
                .uri
                .as_ref()
                .unwrap()
                .prefix
                .as_deref(),
            Some("/api")
        );
        assert!(out.http[2].delegate.is_none());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("http[1]"), "{notes:?}");
        out.validate().unwrap();
    }

    #[test]
    fn a_missing_unexported_or_non_delegate_target_drops_the_rule() {
        let root = vs(r#"
hosts: [reviews]
http:
- delegate: {name: d, namespace: default}
- route: [{destination: {host: reviews}}]
"#);
        let (out, notes) = resolve(&root, "default", |_, _| None);
        assert_eq!(out.http.len(), 1);
        assert!(notes[0].contains("not found"), "{notes:?}");
        let hidden = (
            vs("http: [{route: [{destination: {host: x}}]}]"),
            vec![".".to_string()],
        );
        let (out, notes) = resolve(&root, "other", |_, _| Some(&hidden));
        assert_eq!(out.http.len(), 1);
        assert!(notes[0].contains("not exported"), "{notes:?}");
        let (out, _) = resolve(&root, "default", |_, _| Some(&hidden));
        assert_eq!(out.http.len(), 2);
    }

    #[test]
    fn delegates_are_validated_as_delegates() {
        let e = |y: &str| {
            serde_yaml::from_str::<VirtualServiceSpec>(y)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert!(e("http: [{delegate: {name: x}}]").contains("cannot delegate again"));
        assert!(
            e("gateways: [g]\nhttp: [{route: [{destination: {host: x}}]}]")
                .contains("cannot bind gateways")
        );
        assert!(
            e("hosts: [a]\nhttp: [{delegate: {name: x}, route: [{destination: {host: x}}]}]")
                .contains("only one of")
        );
    }
}
