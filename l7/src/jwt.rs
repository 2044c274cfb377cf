//! JSON Web Tokens for `RequestAuthentication` (RFC 7519, RFC 7515 compact JWS, RFC 7517
//! JWK sets): signature checked with a key of the issuer's JWKS (RS256/384/512, ES256,
//! ES384), then `exp`/`nbf` (60 s of leeway), issuer and audiences.

use ring::signature;
use serde::Deserialize;

/// A JWKS as published (`{"keys": [...]}`), the keys this module can use.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    alg: KeyAlg,
}

#[derive(Debug, Clone)]
enum KeyAlg {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point, and the curve's JWS algorithm.
    Ec {
        point: Vec<u8>,
        curve: &'static str,
    },
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Base64url without padding (padding tolerated), RFC 7515 §2.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

impl Jwks {
    /// Parses a JWKS; keys of other types are skipped. `Err` when it is not a JWKS or holds
    /// no usable key.
    pub fn parse(json: &str) -> Result<Jwks, String> {
        let raw: RawSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        for k in raw.keys {
            let b = |v: &Option<String>| v.as_deref().and_then(b64url);
            let alg = match (k.kty.as_str(), k.crv.as_deref()) {
                ("RSA", _) => match (b(&k.n), b(&k.e)) {
                    (Some(n), Some(e)) => KeyAlg::Rsa { n, e },
                    _ => continue,
                },
                ("EC", Some(crv @ ("P-256" | "P-384"))) => match (b(&k.x), b(&k.y)) {
                    (Some(x), Some(y)) => {
                        let mut point = vec![4u8];
                        point.extend(x);
                        point.extend(y);
                        KeyAlg::Ec {
                            point,
                            curve: if crv == "P-256" { "ES256" } else { "ES384" },
                        }
                    }
                    _ => continue,
                },
                _ => continue,
            };
            keys.push(Key { kid: k.kid, alg });
        }
        if keys.is_empty() {
            return Err("the JWKS has no RSA or EC (P-256, P-384) key".into());
        }
        Ok(Jwks { keys })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A token's claims, once verified.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// The unverified `iss` of a token (to pick the rule that verifies it).
pub fn issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Claims = serde_json::from_slice(&b64url(payload)?).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Verifies `token` against `jwks`: signature, then time (`now` in seconds since the epoch),
/// issuer and, when `audiences` is not empty, that the token's `aud` holds one of them.
pub fn verify(
    token: &str,
    jwks: &Jwks,
    issuer: &str,
    audiences: &[String],
    now: u64,
) -> Result<Claims, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Jwt is not in the form of Header.Payload.Signature".into());
    };
    let header: Header = b64url(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Jwt header is an invalid JSON")?;
    let sig = b64url(s).ok_or("Jwt signature is not base64url")?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let rsa = |alg: &str| -> Option<&'static signature::RsaParameters> {
        match alg {
            "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            _ => None,
        }
    };
    let candidates = jwks
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
    let mut verified = false;
    for k in candidates {
        let ok = match (&k.alg, header.alg.as_str()) {
            (KeyAlg::Rsa { n, e }, alg) => rsa(alg).is_some_and(|params| {
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, signed, &sig)
                    .is_ok()
            }),
            (KeyAlg::Ec { point, curve }, alg) if alg == *curve => {
                let a: &'static dyn signature::VerificationAlgorithm = if alg == "ES256" {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                signature::UnparsedPublicKey::new(a, point)
                    .verify(signed, &sig)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err("Jwt verification fails".into());
    }
    let claims: Claims = b64url(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Jwt payload is an invalid JSON")?;
    const LEEWAY: u64 = 60;
    let num = |k: &str| claims.get(k).and_then(serde_json::Value::as_u64);
    if num("exp").is_some_and(|exp| exp + LEEWAY < now) {
        return Err("Jwt is expired".into());
    }
    if num("nbf").is_some_and(|nbf| nbf > now + LEEWAY) {
        return Err("Jwt not yet valid".into());
    }
    if claims.get("iss").and_then(|v| v.as_str()) != Some(issuer) {
        return Err("Jwt issuer is not configured".into());
    }
    if !audiences.is_empty() {
        let aud: Vec<&str> = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        if !aud.iter().any(|a| audiences.iter().any(|w| w == a)) {
            return Err("Audiences in Jwt are not allowed".into());
        }
    }
    Ok(claims)
}

/// Signing test tokens with a fresh P-256 key (unit and end-to-end tests).
#[doc(hidden)]
pub mod testing {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    pub fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    pub struct Signer {
        key: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Default for Signer {
        fn default() -> Self {
            Signer::new()
        }
    }

    impl Signer {
        pub fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Signer { key, rng }
        }

        pub fn jwks(&self) -> String {
            let p = self.key.public_key().as_ref();
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{}","y":"{}"}}]}}"#,
                b64(&p[1..33]),
                b64(&p[33..65])
            )
        }

        pub fn token(&self, claims: &serde_json::Value) -> String {
            let head = b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
            let body = b64(claims.to_string().as_bytes());
            let signed = format!("{head}.{body}");
            let sig = self.key.sign(&self.rng, signed.as_bytes()).unwrap();
            format!("{signed}.{}", b64(sig.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Signer;
    use super::*;

    #[test]
    fn tokens_are_verified_then_checked() {
        let s = Signer::new();
        let jwks = Jwks::parse(&s.jwks()).unwrap();
        let now = 1_800_000_000;
        let good = s.token(&serde_json::json!({
            "iss": "issuer.test", "sub": "alice", "aud": ["app"], "exp": now + 3600, "groups": ["dev"],
        }));
        let claims = verify(&good, &jwks, "issuer.test", &["app".into()], now).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(issuer(&good).as_deref(), Some("issuer.test"));
        assert!(verify(&good, &jwks, "other", &[], now)
            .unwrap_err()
            .contains("issuer"));
        assert!(verify(&good, &jwks, "issuer.test", &["x".into()], now)
            .unwrap_err()
            .contains("Audiences"));
        assert!(verify(&good, &jwks, "issuer.test", &[], now + 7200)
            .unwrap_err()
            .contains("expired"));
        // Another key's signature, a changed payload, garbage.
        let other = Signer::new().token(&serde_json::json!({"iss": "issuer.test"}));
        assert!(verify(&other, &jwks, "issuer.test", &[], now).is_err());
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = super::testing::b64(br#"{"iss":"issuer.test","sub":"root"}"#);
        parts[1] = &forged;
        assert!(verify(&parts.join("."), &jwks, "issuer.test", &[], now).is_err());
        assert!(verify("abc", &jwks, "issuer.test", &[], now).is_err());
        assert!(Jwks::parse(r#"{"keys":[]}"#).is_err());
    }
}
