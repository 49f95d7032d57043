//! Admin MFA: TOTP secrets per principal, stored inside the barrier (`mfa/<principal hex>`),
//! cached in memory while unsealed, verified for policy rules with `mfa = true`.
//!
//! Guarantees: a code is accepted once (a replay of the same or an older 30-second step is
//! refused); after [`MAX_FAILURES`] wrong codes in a row a principal is locked out for
//! [`LOCKOUT`] (SNC 9.5.b); the code travels in the `x-kms-totp` request header and is never
//! logged or audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_core::Secret32;
use kms_core::totp;

use crate::error::KmsError;
use crate::keystore::now_unix;
use crate::seal::Seal;
use crate::storage::Expect;

pub const MAX_FAILURES: u32 = 5;
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// The request header that carries the TOTP code.
pub const HEADER: &str = "x-kms-totp";

#[derive(Default)]
struct PrincipalState {
    failures: u32,
    locked_until: Option<Instant>,
    last_step: u64,
}

pub struct Mfa {
    seal: Arc<Seal>,
    secrets: Mutex<HashMap<String, Secret32>>,
    /// Principals whose enrolment record failed its integrity check at load (why). They are
    /// refused with a clear error, and cannot enrol again (the record is still there).
    damaged: Mutex<HashMap<String, String>>,
    state: Mutex<HashMap<String, PrincipalState>>,
}

fn path(principal: &str) -> String {
    format!("mfa/{}", hex::encode(principal.as_bytes()))
}

impl Mfa {
    pub fn new(seal: Arc<Seal>) -> Self {
        Self {
            seal,
            secrets: Mutex::new(HashMap::new()),
            damaged: Mutex::new(HashMap::new()),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Loads every enrolled secret (after unseal). A damaged record makes only its principal's
    /// MFA fail (logged, and refused with a clear error), not the unseal.
    pub async fn load(&self) -> Result<(), KmsError> {
        let keyring = self.seal.keyring().await?;
        let backend = self.seal.backend();
        let mut loaded = HashMap::new();
        let mut damaged = HashMap::new();
        for p in backend.list("mfa/").await? {
            let Some(principal) = hex::decode(p.trim_start_matches("mfa/"))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            else {
                tracing::error!(path = %p, "MFA record with an unreadable name; ignored");
                continue;
            };
            let secret = match backend.get(&p).await {
                Ok(None) => continue,
                Ok(Some(rec)) => keyring
                    .open(&p, &rec.value)
                    .map_err(|e| format!("failed its integrity check ({e})"))
                    .and_then(|plain| {
                        <[u8; 32]>::try_from(plain.as_slice())
                            .map_err(|_| "has the wrong length".to_string())
                    }),
                Err(e) => Err(e.to_string()),
            };
            match secret {
                Ok(mut bytes) => {
                    loaded.insert(principal, Secret32::from_bytes(bytes));
                    zeroize::Zeroize::zeroize(&mut bytes);
                }
                Err(why) => {
                    tracing::error!(%principal, error = %why, "MFA enrolment record is damaged; that principal's MFA fails");
                    damaged.insert(principal, why);
                }
            }
        }
        *self.secrets.lock().unwrap_or_else(|p| p.into_inner()) = loaded;
        *self.damaged.lock().unwrap_or_else(|p| p.into_inner()) = damaged;
        Ok(())
    }

    /// Drops the secrets from memory (on seal).
    pub fn clear(&self) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Enrolls `principal`; refused if it already is (re-enrolment would let a stolen
    /// certificate replace the second factor).
    pub async fn enroll(&self, principal: &str) -> Result<Secret32, KmsError> {
        let keyring = self.seal.keyring().await?;
        let secret = Secret32::random().map_err(|e| KmsError::Internal(e.to_string()))?;
        let p = path(principal);
        let sealed = keyring.seal(&p, secret.expose())?;
        match self.seal.backend().put(&p, sealed, Expect::Absent).await {
            Ok(_) => {}
            Err(crate::storage::StorageError::Conflict { .. }) => {
                return Err(KmsError::FailedPrecondition(format!(
                    "{principal} is already enrolled for MFA; a second enrolment is refused"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(principal.to_string(), secret.clone());
        tracing::warn!(%principal, "MFA enrolled");
        Ok(secret)
    }

    /// Verifies `code` for `principal` now.
    pub fn verify(&self, principal: &str, code: Option<&str>) -> Result<(), KmsError> {
        let denied = |m: String| Err(KmsError::PermissionDenied(m));
        let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = states.entry(principal.to_string()).or_default();
        if let Some(until) = st.locked_until {
            let now = Instant::now();
            if now < until {
                return denied(format!(
                    "{principal} is locked out after repeated wrong MFA codes; retry in {} s",
                    (until - now).as_secs() + 1
                ));
            }
            st.locked_until = None;
        }
        let Some(code) = code else {
            return denied(format!(
                "this operation requires a second factor: send the current TOTP code in the {HEADER} header (kms-cli --totp CODE)"
            ));
        };
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(secret) = secrets.get(principal) else {
            if let Some(why) = self
                .damaged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(principal)
            {
                return Err(KmsError::DataLoss(format!(
                    "the MFA enrolment of {principal} is damaged in storage ({why}): restore the data directory from backup"
                )));
            }
            return denied(format!(
                "this operation requires a second factor but {principal} is not enrolled: run `kms-cli mfa enroll`"
            ));
        };
        match totp::verify(secret, code, now_unix()) {
            Some(step) if step > st.last_step => {
                st.last_step = step;
                st.failures = 0;
                Ok(())
            }
            _ => {
                st.failures += 1;
                if st.failures >= MAX_FAILURES {
                    st.failures = 0;
                    st.locked_until = Some(Instant::now() + LOCKOUT);
                    tracing::warn!(%principal, "MFA locked out after repeated wrong codes");
                }
                denied("wrong or already used TOTP code".into())
            }
        }
    }
}
