//! Bearer tokens: JWTs (HS256) shaped like the projected service-account tokens istiod
//! accepts, signed with a key only the control plane holds. The subject names the caller's
//! service account (`system:serviceaccount:<ns>:<sa>`), the audience is `istio-ca`, and a
//! ztunnel's token is bound to its node (`kubernetes.io.node.name`, as Kubernetes binds
//! projected tokens), which is what the CA checks impersonation against.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

pub const AUDIENCE: &str = "istio-ca";
pub const ISSUER: &str = "keelson";
pub const KEY_FILE: &str = "token-key";
pub const TOKEN_FILE: &str = "token";
/// Lifetime of tokens minted by the control plane.
pub const TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes: Option<KubernetesClaims>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeClaim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaim {
    pub name: String,
}

impl Claims {
    /// The caller's (namespace, service account), from `system:serviceaccount:<ns>:<sa>`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.sub.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
    }

    pub fn node(&self) -> Option<&str> {
        self.kubernetes
            .as_ref()?
            .node
            .as_ref()
            .map(|n| n.name.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token audience is not {AUDIENCE}")]
    Audience,
}

pub struct TokenAuthority {
    key: hmac::Key,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TokenAuthority {
    pub fn from_secret(secret: &[u8]) -> Self {
        TokenAuthority {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Reads the signing key from `dir/token-key`, or creates it (32 random bytes, mode 0600).
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let secret = B64
                .decode(text.trim())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(Self::from_secret(&secret));
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness for the token key"))?;
        std::fs::create_dir_all(dir)?;
        identity::ca::write_private(&path, &B64.encode(secret))?;
        Ok(Self::from_secret(&secret))
    }

    /// A token for `namespace/service_account`, bound to `node` when given.
    pub fn mint(&self, namespace: &str, service_account: &str, node: Option<&str>) -> String {
        let iat = now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: vec![AUDIENCE.into()],
            iat,
            exp: iat + TOKEN_TTL.as_secs(),
            kubernetes: node.map(|n| KubernetesClaims {
                node: Some(NodeClaim { name: n.into() }),
            }),
        };
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{header}.{body}");
        let sig = B64.encode(hmac::sign(&self.key, signed.as_bytes()).as_ref());
        format!("{signed}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, format!("{h}.{b}").as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = B64
            .decode(b)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        if !claims.aud.iter().any(|a| a == AUDIENCE) {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }

    /// Checks an `authorization` header value (`Bearer <token>`).
    pub fn verify_header(&self, value: Option<&str>) -> Result<Claims, TokenError> {
        let token = value
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(TokenError::Malformed)?;
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_tampering_fails() {
        let a = TokenAuthority::from_secret(b"k1");
        let t = a.mint("istio-system", "ztunnel", Some("node-a"));
        let c = a.verify(&t).unwrap();
        assert_eq!(c.service_account(), Some(("istio-system", "ztunnel")));
        assert_eq!(c.node(), Some("node-a"));
        assert_eq!(a.verify_header(Some(&format!("Bearer {t}"))).unwrap(), c);
        let other = TokenAuthority::from_secret(b"k2");
        assert_eq!(other.verify(&t), Err(TokenError::Signature));
        assert_eq!(a.verify("x.y"), Err(TokenError::Malformed));
        assert_eq!(a.verify_header(Some(&t)), Err(TokenError::Malformed));
        // Swapping the body for another node's claims breaks the signature.
        let t2 = a.mint("istio-system", "ztunnel", Some("node-b"));
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            t2.split('.').nth(1).unwrap(),
            t.split('.').nth(2).unwrap()
        );
        assert_eq!(a.verify(&forged), Err(TokenError::Signature));
    }
}
