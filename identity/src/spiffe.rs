//! The strict SPIFFE identity of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.

use std::fmt;
use std::str::FromStr;

/// Trust domain used when WDS leaves `Workload.trust_domain` empty.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account used when WDS leaves `Workload.service_account` empty.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

const SCHEME: &str = "spiffe://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with spiffe://")]
    NotSpiffe(String),
    #[error("identity {0:?} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    BadShape(String),
    #[error("identity {0:?} holds a character outside the allowed set")]
    BadCharacter(String),
}

/// A workload identity. Parsing is strict: exactly `td`, `ns`, `<ns>`, `sa`, `<sa>` segments,
/// none empty, no control characters (a NUL inside a SAN must never compare equal to a shorter
/// identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        let td = if trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            trust_domain
        };
        let sa = if service_account.is_empty() {
            DEFAULT_SERVICE_ACCOUNT
        } else {
            service_account
        };
        Identity {
            trust_domain: td.to_string(),
            namespace: namespace.to_string(),
            service_account: sa.to_string(),
        }
    }

    /// The form AuthorizationPolicy principals use: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 5 || parts[1] != "ns" || parts[3] != "sa" {
            return Err(IdentityError::BadShape(s.to_string()));
        }
        if ![parts[0], parts[2], parts[4]]
            .iter()
            .all(|p| valid_segment(p))
        {
            return Err(IdentityError::BadCharacter(s.to_string()));
        }
        Ok(Identity {
            trust_domain: parts[0].to_string(),
            namespace: parts[2].to_string(),
            service_account: parts[4].to_string(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo"
            .parse()
            .unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "bookinfo"));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo"
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/bookinfo");
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b\0x",
            "spiffe://td/ns/a b/sa/b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn empty_fields_take_defaults() {
        let id = Identity::new("", "ns1", "");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/ns1/sa/default");
    }
}
