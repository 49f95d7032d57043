//! Authorisation: the policy set from the policies directory, reloadable, checked on every
//! request that needs a grant. Deny by default; an explicit deny wins (see `kms_core::policy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kms_core::policy::{Decision, Operation, PolicySet, Request};

use crate::access::principal::Principal;
use crate::error::KmsError;

/// The policy set in force and where it came from.
pub struct Authz {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
    /// Verifies the second factor for `mfa = true` rules (set once the server is built).
    mfa: std::sync::OnceLock<Arc<crate::access::mfa::Mfa>>,
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
    pub fn attach_mfa(&self, mfa: Arc<crate::access::mfa::Mfa>) {
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
