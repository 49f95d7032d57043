//! Authorisation: the policy set from the policies directory, reloadable, checked on every
//! request that needs a grant. Deny by default; an explicit deny wins (see `kms_core::policy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kms_core::policy::{Decision, Operation, PolicySet, Request};

use crate::error::KmsError;
use crate::principal::Principal;

/// The policy set in force and where it came from.
pub struct Authz {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    /// Verifies the second factor for `mfa = true` rules (set once the server is built).
    mfa: std::sync::OnceLock<Arc<crate::mfa::Mfa>>,
}

/// Reads the policies directory (see [`PolicySet::load_dir`]).
pub fn read_dir(dir: &Path) -> Result<PolicySet, String> {
    PolicySet::load_dir(dir)
}

impl Authz {
    /// Loads the policy set; a broken set is an error (the server refuses to start).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let set = read_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(set)),
            mfa: std::sync::OnceLock::new(),
        })
    }

    /// Connects the MFA verifier; until then `mfa = true` rules are refused.
    pub fn attach_mfa(&self, mfa: Arc<crate::mfa::Mfa>) {
        let _ = self.mfa.set(mfa);
    }

    /// Reloads from disk. A broken set is refused and the old one stays in force.
    pub fn reload(&self) -> Result<usize, String> {
        let set = read_dir(&self.dir)?;
        let n = set.rules().len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        tracing::warn!(dir = %self.dir.display(), rules = n, "policies reloaded");
        Ok(n)
    }

    fn set(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Allows the request or returns PERMISSION_DENIED naming the operation and the key.
    pub fn check(
        &self,
        who: &Principal,
        op: Operation,
        key: Option<&str>,
        context: &BTreeMap<String, String>,
    ) -> Result<(), KmsError> {
        if let Some(k) = key {
            who.audit.set(k, context);
        }
        let req = Request {
            principal: &who.name,
            operation: op,
            key,
            context,
        };
        let on = key.map(|k| format!(" on key {k}")).unwrap_or_default();
        match self.set().decide(&req) {
            Decision::Allow { mfa: false, .. } => Ok(()),
            Decision::Allow { mfa: true, rule } => match self.mfa.get() {
                Some(mfa) => mfa.verify(&who.name, who.totp.as_deref()).map_err(|e| {
                    KmsError::PermissionDenied(format!(
                        "{} may not {op}{on} without MFA (rule {rule}): {e}",
                        who.name
                    ))
                }),
                None => Err(KmsError::PermissionDenied(format!(
                    "{} may not {op}{on}: rule {rule} requires MFA, which is not available",
                    who.name
                ))),
            },
            Decision::Deny { rule: Some(rule) } => Err(KmsError::PermissionDenied(format!(
                "{} may not {op}{on}: denied by rule {rule}",
                who.name
            ))),
            Decision::Deny { rule: None } => Err(KmsError::PermissionDenied(format!(
                "{} may not {op}{on}: no policy rule allows it (default deny); ask a security officer for a grant",
                who.name
            ))),
        }
    }

    /// Whether the request would be allowed (for filtering lists).
    pub fn allows(&self, who: &Principal, op: Operation, key: &str) -> bool {
        let ctx = BTreeMap::new();
        matches!(
            self.set().decide(&Request {
                principal: &who.name,
                operation: op,
                key: Some(key),
                context: &ctx,
            }),
            Decision::Allow { mfa: false, .. }
        )
    }
}

/// The record a policy reload writes on a shared store, so every node reloads its own policy
/// directory (deploy the same files to every node first).
pub(crate) const POLICY_RELOAD_PATH: &str = "sys/policy-reload";

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
        let who = crate::principal::of(&req)?;
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
