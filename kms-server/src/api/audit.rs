//! `kms.v1.Audit`: the chain head (sealed into storage) and context HMACs for auditors.

use std::sync::Arc;

use crate::audit::AuditSink;

/// The `kms.v1.Audit` gRPC service.
pub struct AuditService {
    sink: Arc<AuditSink>,
    seal: Arc<crate::Seal>,
    authz: Arc<crate::Authz>,
}

impl AuditService {
    pub fn new(sink: Arc<AuditSink>, seal: Arc<crate::Seal>, authz: Arc<crate::Authz>) -> Self {
        Self { sink, seal, authz }
    }

    /// Both RPCs need the `audit-read` grant.
    fn allow<T>(&self, req: &tonic::Request<T>) -> Result<(), crate::KmsError> {
        let who = crate::access::principal::of(req)?;
        self.authz.check(
            &who,
            kms_core::policy::Operation::AuditRead,
            None,
            &Default::default(),
        )
    }
}

#[tonic::async_trait]
impl kms_proto::v1::audit_server::Audit for AuditService {
    async fn head(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHeadRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHeadResponse>, tonic::Status> {
        self.allow(&req)?;
        let head = self.sink.seal_head(&self.seal).await?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHeadResponse {
            seq: head.seq,
            hash: head.hash,
            node: self.sink.node().to_string(),
        }))
    }

    async fn hmac(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHmacRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHmacResponse>, tonic::Status> {
        self.allow(&req)?;
        let key = self
            .sink
            .keystore
            .get()
            .and_then(|k| k.audit_key())
            .ok_or(crate::KmsError::Sealed)?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHmacResponse {
            hmac: key.hmac_value(&req.into_inner().value),
        }))
    }
}
