//! `RequestAuthentication` (security.istio.io/v1): which JWTs a waypoint accepts
//! (docs/WIRE.md §8, AP-12, AP-28). A request with no token goes on unauthenticated (only
//! an AuthorizationPolicy can require one, with `requestPrincipals`); a request with a
//! token that does not verify against its issuer's JWKS is answered 401. A verified token
//! gives the request its principal (`<iss>/<sub>`), claims, audiences and presenter, which
//! `requestPrincipals` and the `request.auth.*` conditions match.

use serde::{Deserialize, Serialize};

use crate::authz::{TargetRef, WorkloadSelector};
use crate::jwt::{Claims, Jwks};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `file:///path` (read by the control plane) or an `http(s)` URL; the control plane
    /// puts what it read in `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The JWKS itself, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl RequestAuthenticationSpec {
    pub fn targets(&self) -> impl Iterator<Item = &TargetRef> {
        self.target_ref.iter().chain(&self.target_refs)
    }

    /// Checks the rules; the error names the field. A `jwksUri` other than `file://` is
    /// left to the control plane.
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let at = format!("spec.jwtRules[{i}]");
            if r.issuer.is_empty() {
                return Err(format!("{at}.issuer: required"));
            }
            if let Some(j) = &r.jwks {
                Jwks::parse(j).map_err(|e| format!("{at}.jwks: {e}"))?;
            }
            match &r.jwks_uri {
                Some(u)
                    if !(u.starts_with("file://")
                        || u.starts_with("http://")
                        || u.starts_with("https://")) =>
                {
                    return Err(format!(
                        "{at}.jwksUri: {u:?} is not a file://, http:// or https:// URL"
                    ))
                }
                None if r.jwks.is_none() => {
                    return Err(format!("{at}: jwks or jwksUri is required"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a verified token says about the request.
#[derive(Debug, Clone, Default)]
pub struct AuthInfo {
    /// `<iss>/<sub>`.
    pub principal: String,
    pub claims: Claims,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
}

impl AuthInfo {
    /// A claim by path (`[groups]`, nested `[a][b]`): its string values (a string, or each
    /// string of a list).
    pub fn claim(&self, path: &[&str]) -> Vec<String> {
        let mut v = match path.first().and_then(|k| self.claims.get(*k)) {
            Some(v) => v,
            None => return Vec::new(),
        };
        for k in &path[1..] {
            match v.get(*k) {
                Some(next) => v = next,
                None => return Vec::new(),
            }
        }
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            serde_json::Value::Bool(b) => vec![b.to_string()],
            serde_json::Value::Number(n) => vec![n.to_string()],
            _ => Vec::new(),
        }
    }
}

/// The JWT rules that apply to a request, their JWKS parsed.
#[derive(Debug, Default)]
pub struct Authenticator {
    rules: Vec<(JwtRule, Jwks)>,
}

impl Authenticator {
    /// From the rules of every RequestAuthentication that applies; a rule whose JWKS is
    /// missing or unusable is kept with an empty key set (its tokens then fail: no silent
    /// acceptance).
    pub fn new<'a>(
        specs: impl IntoIterator<Item = &'a RequestAuthenticationSpec>,
    ) -> Authenticator {
        let rules = specs
            .into_iter()
            .flat_map(|s| s.jwt_rules.iter())
            .map(|r| {
                let jwks = r
                    .jwks
                    .as_deref()
                    .and_then(|j| Jwks::parse(j).ok())
                    .unwrap_or_default();
                (r.clone(), jwks)
            })
            .collect();
        Authenticator { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The token of a request for `rule`: its headers (default `Authorization: Bearer`),
    /// then its query parameters (default `access_token`), then its cookies.
    fn token(rule: &JwtRule, headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
        let default_header = [JwtHeader {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }];
        let from_headers: &[JwtHeader] =
            if rule.from_headers.is_empty() && rule.from_params.is_empty() {
                &default_header
            } else {
                &rule.from_headers
            };
        for h in from_headers {
            if let Some(v) = headers.get(h.name.as_str()).and_then(|v| v.to_str().ok()) {
                let prefix = h.prefix.as_deref().unwrap_or("");
                if let Some(t) = v.strip_prefix(prefix) {
                    return Some(t.trim().to_string());
                }
            }
        }
        let default_params = ["access_token".to_string()];
        let params: &[String] = if rule.from_headers.is_empty() && rule.from_params.is_empty() {
            &default_params
        } else {
            &rule.from_params
        };
        for p in params {
            let found = query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == p).then(|| v.to_string())
                })
            });
            if found.is_some() {
                return found;
            }
        }
        for c in &rule.from_cookies {
            let found = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == c).then(|| v.to_string())
                });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// `Ok(None)`: no token; `Ok(Some)`: a verified one; `Err`: a token that does not
    /// verify (401), with why.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Result<Option<AuthInfo>, String> {
        let mut first_error = None;
        for (rule, jwks) in &self.rules {
            let Some(token) = Self::token(rule, headers, query) else {
                continue;
            };
            if crate::jwt::issuer(&token).as_deref() != Some(rule.issuer.as_str()) {
                first_error.get_or_insert_with(|| "Jwt issuer is not configured".to_string());
                continue;
            }
            return match crate::jwt::verify(&token, jwks, &rule.issuer, &rule.audiences, now) {
                Ok(claims) => {
                    let s = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
                    let audiences = match claims.get("aud") {
                        Some(serde_json::Value::String(a)) => vec![a.clone()],
                        Some(serde_json::Value::Array(a)) => a
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    };
                    Ok(Some(AuthInfo {
                        principal: format!("{}/{}", rule.issuer, s("sub").unwrap_or_default()),
                        presenter: s("azp"),
                        audiences,
                        claims,
                    }))
                }
                Err(e) => Err(e),
            };
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testing::Signer;

    #[test]
    fn tokens_from_headers_and_params_authenticate_requests() {
        let s = Signer::new();
        let spec: RequestAuthenticationSpec = serde_yaml::from_str(&format!(
            "jwtRules:\n- issuer: issuer.test\n  jwks: '{}'\n",
            s.jwks()
        ))
        .unwrap();
        spec.validate().unwrap();
        let a = Authenticator::new([&spec]);
        let now = 1_800_000_000;
        let token = s.token(&serde_json::json!({
            "iss": "issuer.test", "sub": "alice", "exp": now + 60,
            "groups": ["dev", "ops"], "org": {"team": "core"},
        }));
        let mut h = http::HeaderMap::new();
        assert!(a.authenticate(&h, None, now).unwrap().is_none());
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let info = a.authenticate(&h, None, now).unwrap().unwrap();
        assert_eq!(info.principal, "issuer.test/alice");
        assert_eq!(info.claim(&["groups"]), ["dev", "ops"]);
        assert_eq!(info.claim(&["org", "team"]), ["core"]);
        let by_param = a
            .authenticate(
                &http::HeaderMap::new(),
                Some(&format!("x=1&access_token={token}")),
                now,
            )
            .unwrap();
        assert!(by_param.is_some());
        // Another issuer's token, or a broken one: 401.
        let other = Signer::new().token(&serde_json::json!({"iss": "else.test", "sub": "x"}));
        h.insert("authorization", format!("Bearer {other}").parse().unwrap());
        assert!(a.authenticate(&h, None, now).is_err());
        h.insert("authorization", "Bearer not.a.token".parse().unwrap());
        assert!(a.authenticate(&h, None, now).is_err());
        let bad: RequestAuthenticationSpec =
            serde_yaml::from_str("jwtRules: [{issuer: x, jwks: 'nope'}]").unwrap();
        assert!(bad.validate().unwrap_err().contains("jwtRules[0].jwks"));
    }

    #[test]
    fn policies_match_the_verified_principal_and_claims() {
        use crate::authz::{evaluate, Attributes, AuthorizationPolicySpec, HttpAttributes, Policy};
        let spec: AuthorizationPolicySpec = serde_yaml::from_str(
            "action: ALLOW\nrules:\n- from: [{source: {requestPrincipals: ['issuer.test/*']}}]\n  when: [{key: 'request.auth.claims[org][team]', values: [core]}, {key: request.auth.audiences, values: [app]}]\n",
        )
        .unwrap();
        let policy = std::sync::Arc::new(Policy::new("ns", "p", &spec, false));
        let info = |team: &str| AuthInfo {
            principal: "issuer.test/alice".into(),
            claims: serde_json::from_value(serde_json::json!({"org": {"team": team}})).unwrap(),
            audiences: vec!["app".into()],
            presenter: None,
        };
        let headers = http::HeaderMap::new();
        let allowed = |auth: Option<&AuthInfo>| {
            let a = Attributes {
                principal: None,
                source_ip: [10, 0, 0, 1].into(),
                destination_ip: [10, 0, 0, 2].into(),
                destination_port: 80,
                http: Some(HttpAttributes {
                    method: "GET",
                    path: "/",
                    host: "h",
                    headers: &headers,
                    auth,
                }),
            };
            evaluate(std::slice::from_ref(&policy), &a)
                .decision
                .allowed()
        };
        assert!(allowed(Some(&info("core"))));
        assert!(!allowed(Some(&info("ops"))));
        assert!(!allowed(None));
    }
}
