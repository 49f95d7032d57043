//! `kms.v1.Policy`: reloads the policy directory, on every node of a shared store.

use std::collections::BTreeMap;
use std::sync::Arc;

use kms_core::policy::Operation;

use crate::access::authz::{Authz, POLICY_RELOAD_PATH};
use crate::error::KmsError;

/// The `kms.v1.Policy` gRPC service.
pub struct PolicyService {
    authz: Arc<Authz>,
    seal: Arc<crate::Seal>,
}

impl PolicyService {
    pub fn new(authz: Arc<Authz>, seal: Arc<crate::Seal>) -> Self {
        Self { authz, seal }
    }
}

#[tonic::async_trait]
impl kms_proto::v1::policy_server::Policy for PolicyService {
    async fn reload(
        &self,
        req: tonic::Request<kms_proto::v1::ReloadPoliciesRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::ReloadPoliciesResponse>, tonic::Status> {
        let who = crate::access::principal::of(&req)?;
        self.authz
            .check(&who, Operation::PolicyReload, None, &BTreeMap::new())?;
        let rules = self.authz.reload().map_err(|e| {
            KmsError::InvalidArgument(format!("{e}; the policies in force are unchanged"))
        })?;
        let backend = self.seal.backend();
        if backend.shared() {
            // The other nodes see this record change and reload their own directories. Public
            // (a time), like the seal configuration: nothing secret is stored unsealed.
            let stamp = crate::keystore::now_unix().to_string().into_bytes();
            backend
                .put(POLICY_RELOAD_PATH, stamp, crate::storage::Expect::Any)
                .await
                .map_err(|e| {
                    KmsError::Unavailable(format!(
                        "policies reloaded on this node only: the other nodes could not be told ({e}); run the reload again"
                    ))
                })?;
        }
        Ok(tonic::Response::new(
            kms_proto::v1::ReloadPoliciesResponse {
                rules: u32::try_from(rules).unwrap_or(u32::MAX),
            },
        ))
    }
}
