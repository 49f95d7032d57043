//! The lifecycle state machine: rotation, enable and disable, revocation, scheduled deletion and
//! destruction, and `LifecycleError`, the refusal every key method returns.

use super::model::{
    KeyMeta, KeyState, Operation, Origin, Purpose, RevocationReason, VersionMeta, VersionState,
};
use crate::keyname::KeyName;

/// Seconds in a day.
pub(super) const DAY: u64 = 86_400;
/// Waiting period before a scheduled deletion becomes a destruction, when none is given.
pub const DEFAULT_DELETION_WAITING_DAYS: u32 = 30;

// ---- errors --------------------------------------------------------------------------------

/// Why a lifecycle check or transition was refused. Each message names the key, says what is
/// wrong and what to do next. Only [`LifecycleError::Invalid`] is the caller's bad argument
/// ([`LifecycleError::is_invalid_argument`]); every other variant is a refused precondition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("key '{name}' is disabled: enable it (EnableKey) to use it again")]
    Disabled { name: KeyName },
    #[error(
        "key '{name}' is scheduled for deletion at {}: cancel the deletion (CancelKeyDeletion) before then to use it again",
        fmt_utc(*deletion_at)
    )]
    PendingDeletion { name: KeyName, deletion_at: u64 },
    #[error(
        "key '{name}' has been destroyed: its material is erased and it can never be used again; create a new key (an imported key comes back only if the material of one of its versions is imported again)"
    )]
    Destroyed { name: KeyName },
    #[error(
        "key '{name}' has purpose {purpose}, which does not allow {operation}: use a key created for that purpose"
    )]
    WrongPurpose {
        name: KeyName,
        purpose: Purpose,
        operation: Operation,
    },
    #[error(
        "key '{name}' has no version {version} (its versions are 1 to {latest}): check that the ciphertext belongs to this key"
    )]
    NoSuchVersion {
        name: KeyName,
        version: u32,
        latest: u32,
    },
    #[error(
        "version {version} of key '{name}' is below the key's minimum decryption version {min}: to read this data, lower min_decryption_version (UpdateKeyConfig), then re-encrypt it (ReEncrypt)"
    )]
    BelowMinDecryption {
        name: KeyName,
        version: u32,
        min: u32,
    },
    #[error(
        "version {version} of key '{name}' was revoked ({reason}) and can no longer be used; revocation cannot be undone: data still under it must be recovered from another copy"
    )]
    VersionRevoked {
        name: KeyName,
        version: u32,
        reason: RevocationReason,
    },
    #[error(
        "version {version} of key '{name}' has been destroyed: its material is erased and data encrypted under it cannot be recovered (unless the key was imported: importing that version's material again restores it)"
    )]
    VersionDestroyed { name: KeyName, version: u32 },
    /// A bad argument; the message names the key.
    #[error("{0}")]
    Invalid(String),
    /// A transition not allowed from the key's current state; the message names the key.
    #[error("{0}")]
    NotAllowed(String),
}

impl LifecycleError {
    /// True only for [`LifecycleError::Invalid`] (INVALID_ARGUMENT on the wire); every other
    /// variant is FAILED_PRECONDITION.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, LifecycleError::Invalid(_))
    }
}

impl KeyMeta {
    /// Adds a new enabled version, which becomes the latest (older enabled versions become
    /// decrypt-only), sets `last_rotated = now` (restarting the automatic period) and returns
    /// the new version number. Only an enabled key rotates (`NotAllowed` otherwise).
    pub fn rotate(&mut self, now: u64) -> Result<u32, LifecycleError> {
        if self.origin == Origin::External {
            return Err(self.not_allowed(
                "holds imported material and the KMS cannot make more: add a version by importing new material (ImportKeyMaterial, `kms-cli key import`)",
            ));
        }
        self.push_version(now, None)
    }

    pub(super) fn push_version(
        &mut self,
        now: u64,
        fingerprint: Option<String>,
    ) -> Result<u32, LifecycleError> {
        let verb = if fingerprint.is_some() {
            "importing new material"
        } else {
            "rotating"
        };
        match self.state {
            KeyState::Enabled => {}
            KeyState::Disabled => {
                return Err(
                    self.not_allowed(&format!("is disabled: enable it (EnableKey) before {verb}"))
                );
            }
            KeyState::PendingDeletion { .. } => {
                return Err(self.not_allowed(&format!(
                    "is scheduled for deletion: cancel the deletion (CancelKeyDeletion) before {verb}"
                )));
            }
            KeyState::Destroyed { .. } if fingerprint.is_some() => {
                return Err(self.not_allowed(
                    "has been destroyed: only the material of one of its destroyed versions can be imported again",
                ));
            }
            KeyState::Destroyed { .. } => {
                return Err(self.not_allowed("has been destroyed and can never be rotated"));
            }
        }
        let Some(next) = self.latest().checked_add(1) else {
            return Err(
                self.not_allowed("has reached the largest version number: create a new key")
            );
        };
        self.versions.push(VersionMeta {
            version: next,
            created: now,
            state: VersionState::Enabled,
            encryptions: 0,
            fingerprint,
            erased: false,
        });
        self.last_rotated = now;
        self.updated = now;
        Ok(next)
    }

    /// Enabled → Disabled. Already disabled: no change, `Ok`. `NotAllowed` when pending
    /// deletion (it is already unusable) or destroyed.
    pub fn disable(&mut self, now: u64) -> Result<(), LifecycleError> {
        match self.state {
            KeyState::Enabled => {
                self.state = KeyState::Disabled;
                self.updated = now;
                Ok(())
            }
            KeyState::Disabled => Ok(()),
            KeyState::PendingDeletion { deletion_at, .. } => Err(self.not_allowed(&format!(
                "is scheduled for deletion at {} and already unusable; to keep it disabled instead, cancel the deletion (CancelKeyDeletion)",
                fmt_utc(deletion_at)
            ))),
            KeyState::Destroyed { .. } => Err(self.not_allowed("has been destroyed and can never change state")),
        }
    }

    /// Disabled → Enabled. Already enabled: no change, `Ok`. `NotAllowed` when pending
    /// deletion (cancel the deletion first) or destroyed.
    pub fn enable(&mut self, now: u64) -> Result<(), LifecycleError> {
        match self.state {
            KeyState::Disabled => {
                self.state = KeyState::Enabled;
                self.updated = now;
                Ok(())
            }
            KeyState::Enabled => Ok(()),
            KeyState::PendingDeletion { deletion_at, .. } => Err(self.not_allowed(&format!(
                "is scheduled for deletion at {}: cancel the deletion first (CancelKeyDeletion)",
                fmt_utc(deletion_at)
            ))),
            KeyState::Destroyed { .. } => Err(self.not_allowed(
                "has been destroyed and can never be enabled again: create a new key",
            )),
        }
    }

    /// Revokes `version` for `reason`: it never encrypts or decrypts again. Allowed in any key
    /// state but `Destroyed`; revoking the latest version stops encryption until the next
    /// rotation. Already revoked: the first reason and time are kept, `Ok`, no change.
    ///
    /// Returns `Destroyed` for a destroyed key, `Invalid` for a version the key does not have,
    /// `VersionDestroyed` for a destroyed version.
    pub fn revoke(
        &mut self,
        version: u32,
        reason: RevocationReason,
        now: u64,
    ) -> Result<(), LifecycleError> {
        if let KeyState::Destroyed { .. } = self.state {
            return Err(LifecycleError::Destroyed {
                name: self.name.clone(),
            });
        }
        let latest = self.latest();
        let name = self.name.clone();
        let Some(v) = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| self.versions.get_mut(i))
        else {
            return Err(LifecycleError::Invalid(format!(
                "key '{name}' has no version {version}: choose one from 1 to {latest}"
            )));
        };
        match v.state {
            VersionState::Enabled => {
                v.state = VersionState::Revoked { reason, at: now };
                self.updated = now;
                Ok(())
            }
            VersionState::Revoked { .. } => Ok(()),
            VersionState::Destroyed { .. } => {
                Err(LifecycleError::VersionDestroyed { name, version })
            }
        }
    }

    /// Schedules the key's destruction after `waiting_days` (default
    /// [`DEFAULT_DELETION_WAITING_DAYS`], or `min_days` if that is larger) and returns
    /// `deletion_at = now + days`. The key is unusable meanwhile and can be brought back with
    /// [`KeyMeta::cancel_deletion`] [SNC 11.9.a]. `min_days` is the server's minimum (7 in
    /// production; 0 in dev, where `Some(0)` gives `deletion_at = now`).
    ///
    /// Returns `NotAllowed` unless the key is enabled or disabled (already pending: names the
    /// date), `Invalid` if `waiting_days < min_days`.
    pub fn schedule_deletion(
        &mut self,
        now: u64,
        waiting_days: Option<u32>,
        min_days: u32,
    ) -> Result<u64, LifecycleError> {
        let was_enabled = match self.state {
            KeyState::Enabled => true,
            KeyState::Disabled => false,
            KeyState::PendingDeletion { deletion_at, .. } => {
                return Err(self.not_allowed(&format!(
                    "is already scheduled for deletion at {}: to change the date, cancel the deletion (CancelKeyDeletion) and schedule it again",
                    fmt_utc(deletion_at)
                )));
            }
            KeyState::Destroyed { .. } => {
                return Err(self.not_allowed("has already been destroyed"));
            }
        };
        let days = waiting_days.unwrap_or(DEFAULT_DELETION_WAITING_DAYS.max(min_days));
        if days < min_days {
            return Err(LifecycleError::Invalid(format!(
                "a waiting period of {days} days is too short to delete key '{}': the server's minimum is {min_days} days; ask for at least {min_days}",
                self.name
            )));
        }
        let deletion_at = now.saturating_add(u64::from(days) * DAY);
        self.state = KeyState::PendingDeletion {
            deletion_at,
            was_enabled,
        };
        self.updated = now;
        Ok(deletion_at)
    }

    /// PendingDeletion → Enabled if the key was enabled when scheduled, else Disabled. Allowed
    /// until [`KeyMeta::destroy`] has run, even past `deletion_at`. `NotAllowed` otherwise.
    pub fn cancel_deletion(&mut self, now: u64) -> Result<(), LifecycleError> {
        match self.state {
            KeyState::PendingDeletion { was_enabled, .. } => {
                self.state = if was_enabled {
                    KeyState::Enabled
                } else {
                    KeyState::Disabled
                };
                self.updated = now;
                Ok(())
            }
            KeyState::Destroyed { .. } => {
                Err(self
                    .not_allowed("has already been destroyed: a destruction cannot be cancelled"))
            }
            KeyState::Enabled | KeyState::Disabled => Err(self.not_allowed(&format!(
                "is {}, not scheduled for deletion: there is nothing to cancel",
                self.state
            ))),
        }
    }

    /// PendingDeletion → Destroyed: the key and every version become `Destroyed { at: now }`
    /// [SNC 11.9.a, RègleEffacement-1]. The caller then erases every version's material.
    ///
    /// Guarantee: never before the end of the waiting period. Returns `NotAllowed` if the key
    /// is not pending deletion or `now < deletion_at`.
    pub fn destroy(&mut self, now: u64) -> Result<(), LifecycleError> {
        let deletion_at = match self.state {
            KeyState::PendingDeletion { deletion_at, .. } => deletion_at,
            KeyState::Destroyed { .. } => {
                return Err(self.not_allowed("has already been destroyed"));
            }
            KeyState::Enabled | KeyState::Disabled => {
                return Err(self.not_allowed(&format!(
                    "is {}: only a key scheduled for deletion (ScheduleKeyDeletion) can be destroyed",
                    self.state
                )));
            }
        };
        if now < deletion_at {
            return Err(self.not_allowed(&format!(
                "is scheduled for deletion at {}, and cannot be destroyed before then",
                fmt_utc(deletion_at)
            )));
        }
        self.state = KeyState::Destroyed { at: now };
        for v in &mut self.versions {
            // A revoked version stays revoked (its material is erased all the same): the
            // revocation must survive a later restore of an imported key.
            if !matches!(v.state, VersionState::Revoked { .. }) {
                v.state = VersionState::Destroyed { at: now };
            }
            v.erased = true;
        }
        self.updated = now;
        Ok(())
    }

    pub(super) fn not_allowed(&self, what: &str) -> LifecycleError {
        LifecycleError::NotAllowed(format!("key '{}' {what}", self.name))
    }
}

/// `secs` (Unix time) as ISO 8601 UTC, e.g. `2024-05-01T00:00:00Z`, for messages and CLI
/// output (SNC 12.6: UTC, ISO 8601).
pub fn fmt_utc(secs: u64) -> String {
    // Civil date from a day count (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
    // i128 so that any u64 fits.
    let days = i128::from(secs / DAY);
    let rem = secs % DAY;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::key::test_support::*;
    use crate::key::{ScheduledAction, due_action};

    /// The whole lifecycle, step by step, with the usability checks made before every use
    /// [RègleVérificationUtilisabilité-1] and the scheduled, irreversible destruction
    /// [SNC 11.9.a, RègleEffacement-1].
    #[test]
    fn whole_lifecycle() {
        let mut k = key(T0);
        assert_eq!(k.latest(), 1);
        assert_eq!(k.min_decryption_version, 1);
        assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(1));
        assert_eq!(k.version_state_label(1), "active");

        // Rotate: v2 encrypts, v1 still decrypts.
        assert_eq!(k.rotate(T0 + 10), Ok(2));
        assert_eq!((k.updated, k.last_rotated), (T0 + 10, T0 + 10));
        assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(2));
        assert_eq!(k.check_decrypt(1), Ok(()));
        assert_eq!(k.version_state_label(1), "decrypt-only");
        assert_eq!(k.version_state_label(2), "active");

        // Minimum decryption version.
        k.set_min_decryption_version(2, T0 + 20).unwrap();
        assert_eq!(k.updated, T0 + 20);
        assert!(matches!(
            k.check_decrypt(1),
            Err(LifecycleError::BelowMinDecryption {
                version: 1,
                min: 2,
                ..
            })
        ));
        assert_eq!(k.check_decrypt(2), Ok(()));

        // Disable / enable.
        k.disable(T0 + 30).unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        assert!(matches!(
            k.check_encrypt(Operation::Encrypt),
            Err(LifecycleError::Disabled { .. })
        ));
        assert!(matches!(
            k.check_decrypt(2),
            Err(LifecycleError::Disabled { .. })
        ));
        k.enable(T0 + 40).unwrap();
        assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(2));

        // Schedule deletion: below the minimum is refused and changes nothing.
        let e = k.schedule_deletion(T0 + 50, Some(3), 7).unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains('3') && msg.contains("minimum is 7 days"),
            "{msg}"
        );
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.updated, T0 + 40);

        let at = k.schedule_deletion(T0 + 50, Some(7), 7).unwrap();
        assert_eq!(at, T0 + 50 + 7 * DAY);
        assert!(matches!(
            k.check_encrypt(Operation::Encrypt),
            Err(LifecycleError::PendingDeletion { deletion_at, .. }) if deletion_at == at
        ));
        assert!(matches!(
            k.check_decrypt(2),
            Err(LifecycleError::PendingDeletion { .. })
        ));
        let e = k.enable(T0 + 60).unwrap_err();
        assert!(matches!(e, LifecycleError::NotAllowed(_)));
        assert!(e.to_string().contains("cancel the deletion first"), "{e}");

        // Cancel: back to enabled, usable again.
        k.cancel_deletion(T0 + 70).unwrap();
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(2));

        // Schedule again (default 30 days), then destroy once due.
        let at = k.schedule_deletion(T0 + 80, None, 7).unwrap();
        assert_eq!(at, T0 + 80 + 30 * DAY);
        assert!(!k.destruction_due(at - 1));
        assert_eq!(due_action(&k, at - 1), None);
        assert!(matches!(
            k.destroy(at - 1),
            Err(LifecycleError::NotAllowed(_))
        ));
        assert!(matches!(k.state, KeyState::PendingDeletion { .. }));
        assert!(k.destruction_due(at));
        assert_eq!(due_action(&k, at), Some(ScheduledAction::Destroy));
        k.destroy(at).unwrap();

        assert_eq!(k.state, KeyState::Destroyed { at });
        assert_eq!(k.destroyed_at(), Some(at));
        assert_eq!(k.updated, at);
        assert!(
            k.versions
                .iter()
                .all(|v| v.state == VersionState::Destroyed { at }
                    || matches!(v.state, VersionState::Revoked { .. }))
        );
        assert_eq!(k.version_state_label(2), "destroyed");
        assert!(matches!(
            k.check_decrypt(2),
            Err(LifecycleError::Destroyed { .. })
        ));
        assert!(matches!(
            k.check_encrypt(Operation::Encrypt),
            Err(LifecycleError::Destroyed { .. })
        ));
        assert!(matches!(
            k.enable(at + 1),
            Err(LifecycleError::NotAllowed(_))
        ));

        // Irreversible: nothing brings a destroyed key back or changes it.
        let before = k.clone();
        assert!(k.cancel_deletion(at + 1).is_err());
        assert!(k.disable(at + 1).is_err());
        assert!(k.rotate(at + 1).is_err());
        assert!(k.schedule_deletion(at + 1, Some(0), 0).is_err());
        assert!(k.destroy(at + 1).is_err());
        assert!(k.revoke(1, RevocationReason::Compromised, at + 1).is_err());
        assert!(k.set_description("x".into(), at + 1).is_err());
        assert!(k.set_min_decryption_version(1, at + 1).is_err());
        assert!(k.set_rotation_period(Some(DAY), at + 1).is_err());
        assert!(k.set_labels(BTreeMap::new(), true, at + 1).is_err());
        assert_eq!(k, before);
        assert_eq!(due_action(&k, u64::MAX), None);
    }

    /// Cancelling restores the state the key had when the deletion was scheduled.
    #[test]
    fn cancel_restores_disabled() {
        let mut k = key(T0);
        k.disable(T0).unwrap();
        k.schedule_deletion(T0, None, 7).unwrap();
        assert!(matches!(
            k.state,
            KeyState::PendingDeletion {
                was_enabled: false,
                ..
            }
        ));
        k.cancel_deletion(T0 + 1).unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        assert!(matches!(
            k.cancel_deletion(T0 + 2),
            Err(LifecycleError::NotAllowed(_))
        ));
    }

    #[test]
    fn schedule_deletion_rules() {
        // Dev mode: minimum 0, destroy at once.
        let mut k = key(T0);
        assert_eq!(k.schedule_deletion(T0, Some(0), 0), Ok(T0));
        assert_eq!(due_action(&k, T0), Some(ScheduledAction::Destroy));
        k.destroy(T0).unwrap();

        // Already pending: refused, naming the date.
        let mut k = key(T0);
        let at = k.schedule_deletion(0, Some(7), 7).unwrap();
        assert_eq!(fmt_utc(at), "1970-01-08T00:00:00Z");
        let e = k.schedule_deletion(1, Some(10), 7).unwrap_err();
        assert!(!e.is_invalid_argument());
        assert!(e.to_string().contains("1970-01-08T00:00:00Z"), "{e}");
        assert_eq!(k.deletion_at(), Some(at));

        // A server minimum above the default raises the default.
        let mut k = key(T0);
        assert_eq!(k.schedule_deletion(T0, None, 45), Ok(T0 + 45 * DAY));

        // Disabling a pending key is refused.
        assert!(matches!(k.disable(T0), Err(LifecycleError::NotAllowed(_))));
    }

    #[test]
    fn revoke_is_idempotent_and_checks_the_version() {
        let mut k = key(T0);
        k.revoke(1, RevocationReason::Superseded, T0 + 1).unwrap();
        k.revoke(1, RevocationReason::Compromised, T0 + 2).unwrap();
        assert_eq!(
            k.versions[0].state,
            VersionState::Revoked {
                reason: RevocationReason::Superseded,
                at: T0 + 1
            }
        );
        assert_eq!(k.updated, T0 + 1);
        for bad in [0, 2, u32::MAX] {
            let e = k
                .revoke(bad, RevocationReason::Cessation, T0 + 3)
                .unwrap_err();
            assert!(e.is_invalid_argument(), "{e}");
        }
        // Allowed while disabled or pending deletion.
        k.rotate(T0 + 4).unwrap();
        k.disable(T0 + 5).unwrap();
        k.revoke(2, RevocationReason::Compromised, T0 + 6).unwrap();
        k.enable(T0 + 7).unwrap();
        k.rotate(T0 + 8).unwrap();
        k.schedule_deletion(T0 + 9, None, 7).unwrap();
        k.revoke(3, RevocationReason::Cessation, T0 + 10).unwrap();
        assert_eq!(k.version_state_label(3), "revoked");
    }

    #[test]
    fn disable_and_enable_are_idempotent() {
        let mut k = key(T0);
        k.enable(T0 + 1).unwrap();
        assert_eq!(k.updated, T0);
        k.disable(T0 + 2).unwrap();
        k.disable(T0 + 3).unwrap();
        assert_eq!((k.state, k.updated), (KeyState::Disabled, T0 + 2));
    }

    #[test]
    fn destroy_only_from_pending_deletion() {
        let mut k = key(T0);
        assert!(matches!(k.destroy(T0), Err(LifecycleError::NotAllowed(_))));
        k.disable(T0).unwrap();
        assert!(matches!(k.destroy(T0), Err(LifecycleError::NotAllowed(_))));
        assert_eq!(k.state, KeyState::Disabled);
    }

    /// Every error names the key, so a log line or a CLI message is enough on its own.
    #[test]
    fn error_messages_name_the_key() {
        let n = name();
        let errors = [
            LifecycleError::Disabled { name: n.clone() },
            LifecycleError::PendingDeletion {
                name: n.clone(),
                deletion_at: T0,
            },
            LifecycleError::Destroyed { name: n.clone() },
            LifecycleError::WrongPurpose {
                name: n.clone(),
                purpose: Purpose::EncryptDecrypt,
                operation: Operation::Decrypt,
            },
            LifecycleError::NoSuchVersion {
                name: n.clone(),
                version: 9,
                latest: 2,
            },
            LifecycleError::BelowMinDecryption {
                name: n.clone(),
                version: 1,
                min: 2,
            },
            LifecycleError::VersionRevoked {
                name: n.clone(),
                version: 1,
                reason: RevocationReason::Compromised,
            },
            LifecycleError::VersionDestroyed {
                name: n.clone(),
                version: 1,
            },
        ];
        for e in &errors {
            assert!(e.to_string().contains(n.as_str()), "{e}");
            assert!(!e.is_invalid_argument());
        }
        // The free-text ones, produced by real transitions.
        let mut k = key(T0);
        let mut produced = vec![
            k.set_min_decryption_version(5, T0).unwrap_err(),
            k.cancel_deletion(T0).unwrap_err(),
            k.destroy(T0).unwrap_err(),
            k.revoke(4, RevocationReason::Superseded, T0).unwrap_err(),
        ];
        k.schedule_deletion(T0, None, 7).unwrap();
        produced.push(k.enable(T0).unwrap_err());
        produced.push(k.rotate(T0).unwrap_err());
        produced.push(k.schedule_deletion(T0, None, 7).unwrap_err());
        for e in &produced {
            assert!(e.to_string().contains(n.as_str()), "{e}");
        }
        let e = LifecycleError::PendingDeletion {
            name: n,
            deletion_at: 1_714_521_600,
        };
        assert!(e.to_string().contains("2024-05-01T00:00:00Z"), "{e}");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert!(fmt_utc(u64::MAX).ends_with('Z'));
    }
}
