//! The checks made before every use of a key: may it encrypt with its latest version, may this
//! version decrypt.

use super::lifecycle::LifecycleError;
use super::model::{KeyMeta, KeyState, Operation, VersionState};

impl KeyMeta {
    /// Checks, before every use, that the key may perform `op` with its latest version
    /// [RègleVérificationUtilisabilité-1, RègleUsage-1], and returns that version.
    /// Callers pass [`Operation::Encrypt`] for Encrypt, GenerateDataKey and the destination
    /// of ReEncrypt.
    ///
    /// Returns, in this order of checks: `Destroyed`, `PendingDeletion`, `Disabled`,
    /// `WrongPurpose`, then `NotAllowed` if the latest version is revoked (rotate to get a
    /// usable one) or `VersionDestroyed`; otherwise `Ok(latest)`.
    pub fn check_encrypt(&self, op: Operation) -> Result<u32, LifecycleError> {
        self.check_usable(op)?;
        let latest = self.latest();
        match self.version(latest).map(|v| v.state) {
            Some(VersionState::Enabled) => Ok(latest),
            Some(VersionState::Revoked { reason, .. }) => Err(LifecycleError::NotAllowed(format!(
                "the latest version ({latest}) of key '{}' was revoked ({reason}): rotate the key to get a usable version",
                self.name
            ))),
            // A destroyed version in a usable key: an imported key restored through an older
            // version (restore_version), whose latest stays destroyed until its material is
            // imported too.
            Some(VersionState::Destroyed { .. }) | None => Err(LifecycleError::VersionDestroyed {
                name: self.name.clone(),
                version: latest,
            }),
        }
    }

    /// Checks, before every use, that `version` of this key may decrypt
    /// [RègleVérificationUtilisabilité-1, RègleUsage-1].
    ///
    /// Returns, in this order of checks: `Destroyed`, `PendingDeletion`, `Disabled`,
    /// `WrongPurpose`, `NoSuchVersion` (outside 1..=latest), `BelowMinDecryption`,
    /// `VersionRevoked` (with its reason), `VersionDestroyed`; otherwise `Ok(())`.
    pub fn check_decrypt(&self, version: u32) -> Result<(), LifecycleError> {
        self.check_usable(Operation::Decrypt)?;
        let Some(v) = self.version(version) else {
            return Err(LifecycleError::NoSuchVersion {
                name: self.name.clone(),
                version,
                latest: self.latest(),
            });
        };
        if version < self.min_decryption_version {
            return Err(LifecycleError::BelowMinDecryption {
                name: self.name.clone(),
                version,
                min: self.min_decryption_version,
            });
        }
        match v.state {
            VersionState::Enabled => Ok(()),
            VersionState::Revoked { reason, .. } => Err(LifecycleError::VersionRevoked {
                name: self.name.clone(),
                version,
                reason,
            }),
            VersionState::Destroyed { .. } => Err(LifecycleError::VersionDestroyed {
                name: self.name.clone(),
                version,
            }),
        }
    }

    /// Key-level state and purpose, shared by both checks.
    fn check_usable(&self, op: Operation) -> Result<(), LifecycleError> {
        let name = || self.name.clone();
        match self.state {
            KeyState::Destroyed { .. } => return Err(LifecycleError::Destroyed { name: name() }),
            KeyState::PendingDeletion { deletion_at, .. } => {
                return Err(LifecycleError::PendingDeletion {
                    name: name(),
                    deletion_at,
                });
            }
            KeyState::Disabled => return Err(LifecycleError::Disabled { name: name() }),
            KeyState::Enabled => {}
        }
        if !self.purpose.allows(op) {
            return Err(LifecycleError::WrongPurpose {
                name: name(),
                purpose: self.purpose,
                operation: op,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RevocationReason;
    use crate::key::test_support::*;

    /// A revoked version never decrypts again, whatever the reason, and the error says why.
    /// [RègleVérificationUtilisabilité-1]
    #[test]
    fn revoke_with_each_reason() {
        for reason in [
            RevocationReason::Superseded,
            RevocationReason::Compromised,
            RevocationReason::Cessation,
        ] {
            let mut k = key(T0);
            k.rotate(T0 + 1).unwrap();
            k.revoke(1, reason, T0 + 2).unwrap();
            assert_eq!(k.updated, T0 + 2);
            assert_eq!(k.version_state_label(1), "revoked");
            let e = k.check_decrypt(1).unwrap_err();
            assert_eq!(
                e,
                LifecycleError::VersionRevoked {
                    name: name(),
                    version: 1,
                    reason
                }
            );
            assert!(e.to_string().contains(&reason.to_string()), "{e}");
            // The latest still works.
            assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(2));
            assert_eq!(k.check_decrypt(2), Ok(()));
        }
        assert_eq!(RevocationReason::Superseded.to_string(), "superseded");
        assert_eq!(RevocationReason::Compromised.to_string(), "compromised");
        assert_eq!(RevocationReason::Cessation.to_string(), "cessation");
    }

    #[test]
    fn revoked_latest_blocks_encryption_until_rotation() {
        let mut k = key(T0);
        k.revoke(1, RevocationReason::Compromised, T0 + 1).unwrap();
        let e = k.check_encrypt(Operation::Encrypt).unwrap_err();
        assert!(matches!(e, LifecycleError::NotAllowed(_)));
        assert!(e.to_string().contains("rotate the key"), "{e}");
        assert_eq!(k.rotate(T0 + 2), Ok(2));
        assert_eq!(k.check_encrypt(Operation::Encrypt), Ok(2));
        assert!(matches!(
            k.check_decrypt(1),
            Err(LifecycleError::VersionRevoked { .. })
        ));
    }

    #[test]
    fn version_checks_on_decrypt() {
        let k = key(T0);
        for bad in [0, 2, u32::MAX] {
            assert_eq!(
                k.check_decrypt(bad),
                Err(LifecycleError::NoSuchVersion {
                    name: name(),
                    version: bad,
                    latest: 1
                })
            );
        }
        assert_eq!(k.version_state_label(2), "unknown");
    }
}
