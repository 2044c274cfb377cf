//! A local certificate authority (ECDSA P-256) for tests and the local mesh. Production
//! identities come from a remote CA (istiod's `IstioCertificateService` or Keelson's own).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::cert::{CertError, WorkloadCertificate};
use crate::Identity;

/// Default workload certificate lifetime (`SECRET_TTL` upstream): 24 h.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far back `not_before` is set, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(60);

/// File names the local CA reads and writes in its directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Roots trusted beside the signing one, during a root rotation (docs/HARDENING.md, F7):
/// first the new root before it signs, then the old one until every certificate it signed
/// has been replaced.
pub const EXTRA_ROOTS_FILE: &str = "extra-roots.pem";

pub struct LocalCa {
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    root_pem: String,
    root_der: CertificateDer<'static>,
    /// Trusted too, not signing: PEM and DER.
    extra_roots_pem: String,
    extra_roots: Vec<CertificateDer<'static>>,
    ttl: Duration,
}

impl LocalCa {
    /// A new self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Keelson local root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let root_pem = cert.pem();
        Ok(LocalCa {
            root_der: cert.der().clone(),
            issuer: cert,
            issuer_key: key,
            root_pem,
            extra_roots_pem: String::new(),
            extra_roots: Vec::new(),
            ttl,
        })
    }

    /// A CA from an existing root certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str, ttl: Duration) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the same parameters with the same key yields an issuer with the same
        // subject and key identifier; the chain we hand out keeps the original root bytes.
        let issuer = params.self_signed(&key)?;
        let root_der = crate::cert::certs_from_pem(cert_pem)?.remove(0);
        Ok(LocalCa {
            issuer,
            issuer_key: key,
            root_pem: cert_pem.to_string(),
            root_der,
            extra_roots_pem: String::new(),
            extra_roots: Vec::new(),
            ttl,
        })
    }

    /// The signing key, PEM (to install this CA elsewhere, as a rotation does).
    pub fn key_pem(&self) -> String {
        self.issuer_key.serialize_pem()
    }

    /// Trusts the roots in `pem` too (they sign nothing here).
    pub fn with_extra_roots(mut self, pem: &str) -> Result<Self, CertError> {
        self.extra_roots = crate::cert::certs_from_pem(pem)?;
        self.extra_roots_pem = pem.to_string();
        Ok(self)
    }

    /// Every trusted root, the signing one first.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.root_der.clone())
            .chain(self.extra_roots.iter().cloned())
            .collect()
    }

    /// The trust bundle handed out with every certificate: the signing root, then the others.
    pub fn bundle_pem(&self) -> String {
        let mut pem = self.root_pem.clone();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&self.extra_roots_pem);
        pem
    }

    /// Reads `root-cert.pem` and `root-key.pem` from `dir`, or creates and writes them; and
    /// `extra-roots.pem` when present.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Self, CertError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path)?;
            let key = std::fs::read_to_string(&key_path)?;
            let ca = Self::from_pem(&cert, &key, ttl)?;
            return match std::fs::read_to_string(dir.join(EXTRA_ROOTS_FILE)) {
                Ok(extra) if !extra.trim().is_empty() => ca.with_extra_roots(&extra),
                _ => Ok(ca),
            };
        }
        std::fs::create_dir_all(dir)?;
        let ca = Self::generate(trust_domain, ttl)?;
        std::fs::write(&cert_path, ca.root_pem())?;
        write_private(&key_path, &ca.issuer_key.serialize_pem())?;
        Ok(ca)
    }

    pub(crate) fn issuer(&self) -> &rcgen::Certificate {
        &self.issuer
    }

    pub(crate) fn issuer_key(&self) -> &KeyPair {
        &self.issuer_key
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a workload certificate for `identity` with the CA's TTL.
    pub fn issue(&self, identity: &Identity) -> Result<WorkloadCertificate, CertError> {
        self.issue_for(identity, self.ttl)
    }

    /// Issues a certificate whose URI SAN is `identity`, valid for `ttl` from now.
    pub fn issue_for(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        set_leaf_params(&mut params, identity, ttl)?;
        let cert = params.signed_by(&key, &self.issuer, &self.issuer_key)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCertificate::new(
            identity.clone(),
            vec![cert.der().clone()],
            key_der,
            self.roots(),
        )
    }
}

impl LocalCa {
    /// A TLS server certificate for the control plane itself: DNS and IP SANs from `names`,
    /// server auth only. Returns the chain (leaf, root) and the key, both DER.
    pub fn issue_serving(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("keelson"),
        );
        p.distinguished_name = dn;
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        p.not_before = (now - BACKDATE).into();
        p.not_after = (now + ttl).into();
        let cert = p.signed_by(&key, &self.issuer, &self.issuer_key)?;
        Ok((
            vec![cert.der().clone(), self.root_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

/// What every workload leaf this CA signs carries, whoever made the key: an empty subject,
/// the identity as the only URI SAN, not a CA, digital-signature and key-encipherment usage,
/// both server and client auth, valid from a minute ago for `ttl`.
pub(crate) fn set_leaf_params(
    p: &mut CertificateParams,
    identity: &Identity,
    ttl: Duration,
) -> Result<(), CertError> {
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    p.custom_extensions.clear();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    // Short-lived certificates (tests, aggressive rotation) are backdated less, so their
    // half-life still lies in the future.
    p.not_before = (now - BACKDATE.min(ttl / 4)).into();
    p.not_after = (now + ttl).into();
    Ok(())
}

/// Writes a file only its owner can read (keys, tokens).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::LeafInfo;

    #[test]
    fn issues_a_leaf_naming_the_identity() {
        let ca = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let id = Identity::new("cluster.local", "default", "web");
        let cert = ca.issue(&id).unwrap();
        let info = LeafInfo::parse(cert.leaf()).unwrap();
        assert_eq!(info.identities, vec![id]);
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(
            life >= DEFAULT_CERT_TTL
                && life <= DEFAULT_CERT_TTL + BACKDATE + Duration::from_secs(2)
        );
    }

    #[test]
    fn reloads_from_its_directory() {
        let dir = std::env::temp_dir().join(format!("keelson-ca-test-{}", std::process::id()));
        let a = LocalCa::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        let b = LocalCa::load_or_create(&dir, "cluster.local", DEFAULT_CERT_TTL).unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
        // A leaf issued by the reloaded CA chains to the original root bytes.
        let cert = b.issue(&Identity::new("", "ns", "sa")).unwrap();
        assert_eq!(cert.roots[0], *a.root_der());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
