//! Gateway API `GRPCRoute` (gateway.networking.k8s.io/v1), served as the HTTPRoute it is
//! equivalent to: a gRPC method is the request path `/<service>/<method>`, so each method
//! match becomes a path match (exact, segment prefix for a whole service, or a regular
//! expression), and the rest (headers, filters, backends) is the same. One routing table
//! then serves both, at waypoints and ingress gateways (docs/WIRE.md §8).

use serde::{Deserialize, Serialize};

use crate::httproute::{
    BackendRef, Filter, FilterType, HttpRouteSpec, Match, MatchType, ParentRef, PathMatch,
    PathType, Rule, ValueMatch,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcMatch {
    #[serde(default)]
    pub method: Option<MethodMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodMatch {
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

fn escape(s: &str) -> String {
    regex::escape(s)
}

impl MethodMatch {
    /// The path match it is: `/S/M` exact, `/S` as a segment prefix (every method of S),
    /// or a full regular expression over `/S/M` (either part `[^/]+` when unset).
    fn path(&self) -> PathMatch {
        let (service, method) = (self.service.as_deref(), self.method.as_deref());
        let (kind, value) = match (self.kind, service, method) {
            (MatchType::Exact, Some(s), Some(m)) => (PathType::Exact, format!("/{s}/{m}")),
            (MatchType::Exact, Some(s), None) => (PathType::PathPrefix, format!("/{s}")),
            (MatchType::Exact, None, Some(m)) => {
                (PathType::RegularExpression, format!("/[^/]+/{}", escape(m)))
            }
            (MatchType::Exact, None, None) => (PathType::PathPrefix, "/".into()),
            (MatchType::RegularExpression, s, m) => (
                PathType::RegularExpression,
                format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
            ),
        };
        PathMatch {
            kind,
            value: Some(value),
        }
    }
}

impl GrpcRouteSpec {
    /// Checks what the HTTPRoute it becomes relies on, plus GRPCRoute's own rules; the error
    /// names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (ri, rule) in self.rules.iter().enumerate() {
            for (mi, m) in rule.matches.iter().enumerate() {
                let at = format!("spec.rules[{ri}].matches[{mi}].method");
                let Some(mm) = &m.method else { continue };
                if mm.service.is_none() && mm.method.is_none() {
                    return Err(format!("{at}: one of service and method is required"));
                }
                if mm.kind == MatchType::Exact {
                    for (what, v) in [("service", &mm.service), ("method", &mm.method)] {
                        if v.as_deref()
                            .is_some_and(|v| v.is_empty() || v.contains('/'))
                        {
                            return Err(format!("{at}.{what}: not empty and without '/'"));
                        }
                    }
                }
            }
            for (fi, f) in rule.filters.iter().enumerate() {
                if matches!(
                    f.kind,
                    FilterType::RequestRedirect | FilterType::URLRewrite | FilterType::CORS
                ) {
                    return Err(format!(
                        "spec.rules[{ri}].filters[{fi}]: {:?} is not a GRPCRoute filter",
                        f.kind
                    ));
                }
            }
        }
        self.to_http().validate()
    }

    /// The equivalent HTTPRoute spec.
    pub fn to_http(&self) -> HttpRouteSpec {
        HttpRouteSpec {
            parent_refs: self.parent_refs.clone(),
            hostnames: self.hostnames.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    matches: r
                        .matches
                        .iter()
                        .map(|m| Match {
                            path: m.method.as_ref().map(MethodMatch::path),
                            headers: m.headers.clone(),
                            ..Match::default()
                        })
                        .collect(),
                    filters: r.filters.clone(),
                    backend_refs: r.backend_refs.clone(),
                    ..Rule::default()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_become_paths() {
        let spec: GrpcRouteSpec = serde_yaml::from_str(
            "parentRefs: [{name: gw}]
rules:
- matches:
  - method: {service: keelson.test.Echo, method: Echo}
  - method: {service: keelson.test.Other}
  - method: {method: Fail}
  - method: {type: RegularExpression, service: 'keelson\\.test\\..*'}
  backendRefs: [{name: echo, port: 9080}]
",
        )
        .unwrap();
        spec.validate().unwrap();
        let http = spec.to_http();
        let paths: Vec<(PathType, String)> = http.rules[0]
            .matches
            .iter()
            .map(|m| {
                let p = m.path.as_ref().unwrap();
                (p.kind, p.value().to_string())
            })
            .collect();
        assert_eq!(
            paths,
            [
                (PathType::Exact, "/keelson.test.Echo/Echo".into()),
                (PathType::PathPrefix, "/keelson.test.Other".into()),
                (PathType::RegularExpression, "/[^/]+/Fail".into()),
                (
                    PathType::RegularExpression,
                    "/keelson\\.test\\..*/[^/]+".into()
                ),
            ]
        );
        let bad: GrpcRouteSpec = serde_yaml::from_str(
            "rules: [{filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]}]",
        )
        .unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("not a GRPCRoute filter"));
    }
}
