//! Certificate requests and responses of the CA protocol (docs/WIRE.md §4): the client's
//! ECDSA P-256 CSR with one critical SPIFFE URI SAN, the CA signing it for the identity it
//! decides (istiod ignores the CSR's SAN), and the response chain (leaf first, intermediates,
//! the root bundle last, which may hold several roots).

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, CustomExtension, DistinguishedName, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ca::LocalCa;
use crate::cert::{certs_from_pem, CertError, WorkloadCertificate};
use crate::Identity;

/// OID of subjectAltName (2.5.29.17).
const SAN_OID: &[u64] = &[2, 5, 29, 17];

/// A CSR for `id` and the private key that goes with it.
pub struct CertRequest {
    pub csr_pem: String,
    pub key: PrivateKeyDer<'static>,
}

/// DER of `SEQUENCE { [6] uri }` (GeneralNames with one uniformResourceIdentifier).
fn san_uri_der(uri: &str) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    tlv(0x30, &tlv(0x86, uri.as_bytes()))
}

/// An ECDSA P-256 / SHA-256 CSR with an empty subject and one critical URI SAN naming `id`.
pub fn generate_csr(id: &Identity) -> Result<CertRequest, CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let mut san = CustomExtension::from_oid_content(SAN_OID, san_uri_der(&id.to_string()));
    san.set_criticality(true);
    params.custom_extensions = vec![san];
    let csr = params.serialize_request(&key)?;
    Ok(CertRequest {
        csr_pem: csr.pem()?,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

impl LocalCa {
    /// Signs a CSR (its signature is verified: proof of possession) for `id`, whatever SAN
    /// the CSR asked for, valid for `ttl`. Returns the response chain: the leaf, then the root.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, CertError> {
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem)?;
        crate::ca::set_leaf_params(&mut req.params, id, ttl)?;
        let cert = req.signed_by(self.issuer(), self.issuer_key())?;
        Ok(vec![cert.pem(), self.bundle_pem()])
    }
}

/// Builds the certificate from a CA response: element 0 is the leaf, the last element the root
/// bundle (one or more roots), anything between intermediates. The leaf must name `id`.
pub fn from_response(
    id: &Identity,
    key: PrivateKeyDer<'static>,
    cert_chain: &[String],
) -> Result<WorkloadCertificate, CertError> {
    if cert_chain.len() < 2 {
        return Err(CertError::Provider(format!(
            "CA returned {} certificate(s); expected a leaf and a root bundle",
            cert_chain.len()
        )));
    }
    let mut chain: Vec<CertificateDer<'static>> = certs_from_pem(&cert_chain[0])?;
    chain.truncate(1);
    for pem in &cert_chain[1..cert_chain.len() - 1] {
        chain.extend(certs_from_pem(pem)?);
    }
    let roots = certs_from_pem(&cert_chain[cert_chain.len() - 1])?;
    WorkloadCertificate::new(id.clone(), chain, key, roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::DEFAULT_CERT_TTL;

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "default", sa)
    }

    #[test]
    fn csr_signed_and_parsed_round_trip() {
        let ca = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let req = generate_csr(&id("web")).unwrap();
        assert!(req.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        let chain = ca
            .sign_csr(&req.csr_pem, &id("web"), Duration::from_secs(3600))
            .unwrap();
        let cert = from_response(&id("web"), req.key, &chain).unwrap();
        assert_eq!(cert.roots, vec![ca.root_der().clone()]);
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(life <= Duration::from_secs(3660));
    }

    #[test]
    fn the_csr_carries_a_critical_spiffe_uri_san() {
        use x509_parser::prelude::FromDer;
        let req = generate_csr(&id("web")).unwrap();
        let der = rustls_pemfile::csr(&mut req.csr_pem.as_bytes())
            .unwrap()
            .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        csr.verify_signature().unwrap();
        let ext = csr
            .certification_request_info
            .iter_attributes()
            .find_map(|a| match a.parsed_attribute() {
                x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(r) => {
                    Some(r.extensions.clone())
                }
                _ => None,
            })
            .expect("extension request");
        let san = ext
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.17")
            .expect("SAN");
        assert!(san.critical, "the URI SAN must be critical");
        assert!(matches!(san.parsed_extension(),
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s)
                if matches!(s.general_names[..], [x509_parser::extensions::GeneralName::URI("spiffe://cluster.local/ns/default/sa/web")])));
    }

    #[test]
    fn the_ca_decides_the_identity_and_the_client_checks_it() {
        let ca = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let req = generate_csr(&id("web")).unwrap();
        // The CA signs for another identity (as if impersonation were mis-granted):
        let chain = ca
            .sign_csr(&req.csr_pem, &id("other"), DEFAULT_CERT_TTL)
            .unwrap();
        let e = from_response(&id("web"), req.key, &chain).unwrap_err();
        assert!(matches!(e, CertError::WrongIdentity { .. }), "{e}");
    }

    #[test]
    fn several_roots_in_the_last_element_are_all_trusted() {
        let ca = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let next = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let req = generate_csr(&id("web")).unwrap();
        let mut chain = ca
            .sign_csr(&req.csr_pem, &id("web"), DEFAULT_CERT_TTL)
            .unwrap();
        let last = chain.len() - 1;
        chain[last] = format!("{}{}", chain[last], next.root_pem());
        let cert = from_response(&id("web"), req.key, &chain).unwrap();
        assert_eq!(cert.roots.len(), 2);
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = LocalCa::generate("cluster.local", DEFAULT_CERT_TTL).unwrap();
        let other = generate_csr(&id("web")).unwrap();
        // Splice another CSR's body into this one: the signature no longer matches.
        let req = generate_csr(&id("web")).unwrap();
        let body = |pem: &str| {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
        };
        let (a, b) = (body(&req.csr_pem), body(&other.csr_pem));
        let mixed = format!("{}{}", &a[..a.len() / 2], &b[b.len() / 2..]);
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{mixed}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert!(ca.sign_csr(&pem, &id("web"), DEFAULT_CERT_TTL).is_err());
        assert!(ca
            .sign_csr("garbage", &id("web"), DEFAULT_CERT_TTL)
            .is_err());
    }

    #[test]
    fn short_responses_are_errors() {
        let req = generate_csr(&id("web")).unwrap();
        assert!(from_response(&id("web"), req.key, &["x".into()]).is_err());
    }
}
