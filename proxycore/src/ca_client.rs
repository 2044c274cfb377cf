//! The CA client (docs/WIRE.md §4): a fresh ECDSA P-256 key and CSR per request, the SPIFFE
//! id as a critical URI SAN, `SECRET_TTL` as the requested lifetime, `ImpersonatedIdentity` in
//! shared mode, and the returned chain checked: the leaf must name the identity asked for. At
//! most 8 requests are in flight. Rotation and backoff are the certificate store's.

use std::sync::Arc;
use std::time::Duration;

use identity::store::{CertProvider, FetchFuture};
use identity::{CertError, Identity};
use prost_types::{value::Kind, Struct, Value};
use tokio::sync::Semaphore;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use xds::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use xds::ca::IstioCertificateRequest;

use crate::config::GrpcTarget;
use crate::grpc;

pub const MAX_CONCURRENT: usize = 8;
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CaClient {
    client: IstioCertificateServiceClient<InterceptedService<Channel, grpc::Auth>>,
    ttl: Duration,
    impersonate: bool,
    limit: Semaphore,
}

impl CaClient {
    pub fn new(
        target: &GrpcTarget,
        mark: Option<u32>,
        auth: grpc::Auth,
        ttl: Duration,
        impersonate: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let channel = grpc::channel(target, mark)?;
        Ok(Arc::new(CaClient {
            client: IstioCertificateServiceClient::with_interceptor(channel, auth),
            ttl,
            impersonate,
            limit: Semaphore::new(MAX_CONCURRENT),
        }))
    }

    async fn request(&self, id: &Identity) -> Result<identity::WorkloadCertificate, CertError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| CertError::Provider("CA client closed".into()))?;
        let csr = identity::csr::generate_csr(id)?;
        let metadata = self.impersonate.then(|| Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: self.ttl.as_secs() as i64,
            metadata,
        });
        req.set_timeout(CALL_TIMEOUT);
        let resp = self
            .client
            .clone()
            .create_certificate(req)
            .await
            .map_err(|s| {
                CertError::Provider(format!("CA refused {id}: {:?}: {}", s.code(), s.message()))
            })?
            .into_inner();
        let cert = identity::csr::from_response(id, csr.key, &resp.cert_chain)?;
        tracing::info!(identity = %id, not_after = ?cert.not_after, "certificate received from the CA");
        Ok(cert)
    }
}

impl CertProvider for CaClient {
    fn fetch<'a>(&'a self, id: &'a Identity) -> FetchFuture<'a> {
        Box::pin(self.request(id))
    }
}
