//! TLS for HBONE (docs/WIRE.md §1.1–§1.2): TLS 1.3 only, AES-GCM suites, ALPN `h2`, no SNI,
//! no resumption; mutual authentication by SPIFFE URI SANs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use identity::{Identity, LeafInfo, WorkloadCertificate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};

pub const ALPN_H2: &[u8] = b"h2";

/// The name the client dials: an IP, so rustls sends no SNI (upstream dials 0.0.0.0 too).
pub fn placeholder_server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// The crypto provider: ring, restricted to the two AES-GCM TLS 1.3 suites.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                ..ring::default_provider()
            })
        })
        .clone()
}

fn root_store(cert: &WorkloadCertificate) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for r in &cert.roots {
        roots.add(r.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Server configuration presenting `cert` and requiring a client certificate that chains to
/// the same roots and names an identity in the same trust domain.
pub fn server_config(cert: &WorkloadCertificate) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(root_store(cert)?, provider.clone())
        .build()
        .map_err(|e| Error::General(e.to_string()))?;
    let verifier = TrustDomainVerifier {
        inner,
        trust_domain: cert.identity.trust_domain.clone(),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Client configuration presenting `cert` and accepting a server whose leaf names one of
/// `expected` in a URI SAN.
pub fn client_config(
    cert: &WorkloadCertificate,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier = IdentityVerifier {
        roots: root_store(cert)?,
        expected,
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The peer's identity: the first valid SPIFFE URI SAN of its leaf.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    let leaf = certs?.first()?;
    let mut ids = LeafInfo::parse(leaf).ok()?.identities;
    // The verifiers let only single-identity certificates through.
    (ids.len() == 1).then(|| ids.remove(0))
}

/// Client-side check: chain to the mesh roots (serverAuth), then a URI SAN equal to one of the
/// expected identities. The dialled name is a placeholder and is not checked.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let info = LeafInfo::parse(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // An SVID names exactly one identity (SPIFFE X509-SVID §2); a certificate naming
        // several is refused rather than read one way or another.
        if matches!(info.identities.as_slice(), [id] if self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(
                presented = ?info.identities.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                expected = ?self.expected.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "peer presented an unexpected identity"
            );
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server-side check: the webpki chain check (clientAuth), then an identity in our trust
/// domain.
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = LeafInfo::parse(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // Exactly one identity (SPIFFE X509-SVID §2), in our trust domain.
        if matches!(info.identities.as_slice(), [id] if id.trust_domain == self.trust_domain) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::debug!(trust_domain = %self.trust_domain, identities = info.identities.len(),
                "client certificate is not one identity in our trust domain");
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
