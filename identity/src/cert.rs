//! A workload certificate: the leaf for one identity, its chain, its key and the mesh roots.

use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("PEM holds no {0}")]
    EmptyPem(&'static str),
    #[error("PEM: {0}")]
    Pem(#[from] std::io::Error),
    #[error("certificate names identity {got}, expected {want}")]
    WrongIdentity { want: Identity, got: String },
    #[error("certificate holds no SPIFFE URI SAN")]
    NoIdentity,
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("certificate provider: {0}")]
    Provider(String),
    #[error("no certificate for {0} within {1:?}")]
    Timeout(Identity, Duration),
}

/// One identity's certificate as handed to TLS. Immutable: rotation replaces the whole value.
#[derive(Debug)]
pub struct WorkloadCertificate {
    pub identity: Identity,
    /// Leaf first, then intermediates (the roots are not part of the chain sent on the wire).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors of the mesh: peers must chain to one of these.
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    /// Builds the value from DER parts, checking that the leaf names `identity`.
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::EmptyPem("certificate"))?;
        let info = LeafInfo::parse(leaf)?;
        if !info.identities.contains(&identity) {
            return Err(CertError::WrongIdentity {
                want: identity,
                got: info
                    .identities
                    .first()
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "none".into()),
            });
        }
        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// When rotation should happen: half of the lifetime.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        t >= self.not_before && t < self.not_after
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// What the proxy needs to know of a peer's leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    /// Every valid SPIFFE URI SAN, in certificate order. Other URI SANs are skipped.
    pub identities: Vec<Identity>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

impl LeafInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let mut identities = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    match uri.parse::<Identity>() {
                        Ok(id) => identities.push(id),
                        Err(e) => tracing::warn!(error = %e, "ignoring non-SPIFFE URI SAN"),
                    }
                }
            }
        }
        let to_system = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        Ok(LeafInfo {
            identities,
            not_before: to_system(cert.validity().not_before),
            not_after: to_system(cert.validity().not_after),
            serial: cert.raw_serial_as_string(),
        })
    }
}

/// `-----BEGIN CERTIFICATE-----` PEM of a DER certificate (RFC 7468), 64 columns.
pub fn to_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate in a PEM bundle, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(CertError::EmptyPem("certificate"));
    }
    Ok(certs)
}

/// The first private key in a PEM bundle.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?.ok_or(CertError::EmptyPem("private key"))
}
