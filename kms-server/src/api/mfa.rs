//! `kms.v1.Mfa`: a principal enrols its own TOTP secret, once.

use std::sync::Arc;

use kms_core::totp;

use crate::access::mfa::Mfa;

/// The `kms.v1.Mfa` gRPC service.
pub struct MfaService {
    mfa: Arc<Mfa>,
}

impl MfaService {
    pub fn new(mfa: Arc<Mfa>) -> Self {
        Self { mfa }
    }
}

#[tonic::async_trait]
impl kms_proto::v1::mfa_server::Mfa for MfaService {
    async fn enroll(
        &self,
        req: tonic::Request<kms_proto::v1::EnrollMfaRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::EnrollMfaResponse>, tonic::Status> {
        let who = crate::access::principal::of(&req)?;
        let secret = self.mfa.enroll(&who.name).await?;
        Ok(tonic::Response::new(kms_proto::v1::EnrollMfaResponse {
            otpauth_uri: totp::otpauth_uri(&secret, "KMS", &who.name),
            secret_base32: totp::base32(secret.expose()),
        }))
    }
}
