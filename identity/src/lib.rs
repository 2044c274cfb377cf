//! Workload identity for Keelson: the strict SPIFFE identity type, workload certificates, the
//! certificate store that renews them, and a local CA for tests and the local mesh.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cert;
pub mod csr;
mod spiffe;
pub mod store;

pub use ca::LocalCa;
pub use cert::{CertError, LeafInfo, WorkloadCertificate};
pub use spiffe::{Identity, IdentityError, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN};
pub use store::{CertProvider, CertStore};
