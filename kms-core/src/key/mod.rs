//! Key metadata and its lifecycle state machine: pure, with the time passed in as `now`.
//!
//! This module never reads the clock and never touches key material: the server keeps each
//! version's 32-byte material in its own record and asks this module what may be done.
//!
//! Key-level states (DESIGN §3): `Enabled` → `Disabled` ⇄ `Enabled`;
//! `Enabled | Disabled` → `PendingDeletion` → (`cancel_deletion`) back to where it was, or
//! (`destroy`, once the waiting period is over) → `Destroyed`, which is final for a key the
//! KMS generated. An imported key (origin external) comes back from `Destroyed` only when the
//! very material of a destroyed version is imported again (`restore_version`, checked by
//! fingerprint): its owner held that material all along.
//! Version-level: `Enabled` (shown as "active" for the latest, "decrypt-only" for older ones),
//! `Revoked` (final, keeps its first reason, even through destruction) and `Destroyed` (final
//! but for the restore above).
//!
//! Guarantees common to every method of [`KeyMeta`]:
//! - A method that returns `Err` leaves the metadata exactly as it was.
//! - Every change sets `updated = now`; a call that changes nothing (disable a disabled key,
//!   revoke a revoked version) returns `Ok` and leaves `updated` alone.
//! - Nothing leaves `Destroyed` and no destroyed version becomes usable again, except an
//!   imported version whose same material is imported again; a revoked version never does.
//! - Every error names the key and says what to do next.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keyname::{KeyId, KeyName};

/// Seconds in a day.
const DAY: u64 = 86_400;
/// Shortest automatic rotation period, in seconds (one hour).
pub const MIN_ROTATION_PERIOD: u64 = 3_600;
/// Waiting period before a scheduled deletion becomes a destruction, when none is given.
pub const DEFAULT_DELETION_WAITING_DAYS: u32 = 30;
/// Most labels on one key.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes (label keys are `[a-z0-9_-]`, at least one byte).
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 8_192;

// ---- serde for the key name and id -------------------------------------------------------

/// As its string; deserializing re-validates it, so a stored or received name is never trusted.
impl Serialize for KeyName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// As 32 lowercase hex digits, the form shown on the wire.
impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---- small enums ---------------------------------------------------------------------------

/// What a key may be used for, fixed at creation: one key, one purpose [RègleUsage-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// AES-256-GCM encryption and decryption.
    EncryptDecrypt,
}

impl Purpose {
    /// Whether a key of this purpose may perform `op`.
    pub fn allows(self, op: Operation) -> bool {
        match self {
            Purpose::EncryptDecrypt => matches!(op, Operation::Encrypt | Operation::Decrypt),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::EncryptDecrypt => "encrypt-decrypt",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller wants to do with a key, checked against the key's [`Purpose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Encrypt,
    Decrypt,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
        })
    }
}

/// Why a version was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// A newer version replaced it and its data has been re-encrypted.
    Superseded,
    /// The material is, or may be, known to someone else.
    Compromised,
    /// The data it protected is no longer in use.
    Cessation,
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevocationReason::Superseded => "superseded",
            RevocationReason::Compromised => "compromised",
            RevocationReason::Cessation => "cessation",
        })
    }
}

/// The state of one version. `Revoked` is final; `Destroyed` too, but for an imported version
/// restored with its own material ([`KeyMeta::restore_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionState {
    /// Usable: encrypts if it is the latest version, decrypts if ≥ the minimum.
    Enabled,
    /// Never used again, for `reason`, since `at` (Unix seconds).
    Revoked { reason: RevocationReason, at: u64 },
    /// Material erased at `at` (Unix seconds).
    Destroyed { at: u64 },
}

/// One version of a key. Its material lives elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// 1-based.
    pub version: u32,
    pub created: u64,
    pub state: VersionState,
    /// Messages encrypted with this version (approximate: see [`KeyMeta::record_encryptions`]).
    pub encryptions: u64,
    /// For imported material only: its fingerprint (hex, see `wrap::fingerprint`), so that a
    /// destroyed version can be restored only with the very same material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The material was erased with the key (destruction), whatever the state says: a revoked
    /// version keeps its state through destruction but not its material.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

/// Where a key's material comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Generated inside the KMS (CreateKey, RotateKey, automatic rotation).
    #[default]
    Kms,
    /// Imported (ImportKeyMaterial): new versions come only from imports.
    External,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Kms => "kms",
            Origin::External => "external",
        }
    }
}

/// The state of the key as a whole. `Destroyed` is final, but for an imported key restored
/// with the material of one of its versions ([`KeyMeta::restore_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    Enabled,
    Disabled,
    /// Unusable; destroyed at `deletion_at` unless cancelled, back to `Enabled` if
    /// `was_enabled`, else `Disabled`.
    PendingDeletion {
        deletion_at: u64,
        was_enabled: bool,
    },
    /// Material of every version erased at `at`; only this metadata remains, as a tombstone.
    Destroyed {
        at: u64,
    },
}

impl KeyState {
    /// "enabled", "disabled", "pending-deletion" or "destroyed".
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion { .. } => "pending-deletion",
            KeyState::Destroyed { .. } => "destroyed",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the scheduler should do with a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduledAction {
    Rotate,
    Destroy,
}

/// The action due for `meta` at `now`, if any. Destruction comes first (the two cannot both
/// be due today, since only an enabled key rotates, but the order is the safe one).
pub fn due_action(meta: &KeyMeta, now: u64) -> Option<ScheduledAction> {
    if meta.destruction_due(now) {
        Some(ScheduledAction::Destroy)
    } else if meta.rotation_due(now) {
        Some(ScheduledAction::Rotate)
    } else {
        None
    }
}

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

// ---- the key -------------------------------------------------------------------------------

/// A key's metadata (never its material).
///
/// Invariants, kept by every method and checked again when deserializing: `versions` is not
/// empty and `versions[i].version == i + 1`; `1 <= min_decryption_version <= latest()`.
/// The fields are public for reading; change them through the methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "KeyMetaRepr")]
pub struct KeyMeta {
    pub name: KeyName,
    pub id: KeyId,
    pub purpose: Purpose,
    pub state: KeyState,
    /// Index `i` holds version `i + 1`.
    pub versions: Vec<VersionMeta>,
    /// Versions below this one refuse to decrypt. At least 1.
    pub min_decryption_version: u32,
    /// Automatic rotation period in seconds, at least [`MIN_ROTATION_PERIOD`]; `None` = manual.
    pub rotation_period: Option<u64>,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    pub updated: u64,
    pub last_rotated: u64,
    /// Where the material comes from; records written before imports existed are `Kms`.
    pub origin: Origin,
    /// Whether ExportKey may wrap this key's material out. Set at creation, never changed.
    pub exportable: bool,
}

/// The stored form of [`KeyMeta`], before its invariants are checked.
#[derive(Deserialize)]
struct KeyMetaRepr {
    name: KeyName,
    id: KeyId,
    purpose: Purpose,
    state: KeyState,
    versions: Vec<VersionMeta>,
    min_decryption_version: u32,
    rotation_period: Option<u64>,
    description: String,
    labels: BTreeMap<String, String>,
    created: u64,
    updated: u64,
    last_rotated: u64,
    #[serde(default)]
    origin: Origin,
    #[serde(default)]
    exportable: bool,
}

impl TryFrom<KeyMetaRepr> for KeyMeta {
    type Error = String;

    fn try_from(r: KeyMetaRepr) -> Result<Self, String> {
        // Only the structural invariants the methods rely on; labels and periods are not
        // re-checked, so that tightening a limit later never makes a stored key unreadable.
        if r.versions.is_empty() || u32::try_from(r.versions.len()).is_err() {
            return Err(format!("key '{}': stored metadata has no versions", r.name));
        }
        for (i, v) in r.versions.iter().enumerate() {
            if usize::try_from(v.version).ok() != Some(i + 1) {
                return Err(format!(
                    "key '{}': stored version {} is at position {}",
                    r.name,
                    v.version,
                    i + 1
                ));
            }
        }
        let latest = r.versions.len() as u32; // fits: checked above
        if r.min_decryption_version == 0 || r.min_decryption_version > latest {
            return Err(format!(
                "key '{}': stored min_decryption_version {} is outside 1..={latest}",
                r.name, r.min_decryption_version
            ));
        }
        Ok(KeyMeta {
            name: r.name,
            id: r.id,
            purpose: r.purpose,
            state: r.state,
            versions: r.versions,
            min_decryption_version: r.min_decryption_version,
            rotation_period: r.rotation_period,
            description: r.description,
            labels: r.labels,
            created: r.created,
            updated: r.updated,
            last_rotated: r.last_rotated,
            origin: r.origin,
            exportable: r.exportable,
        })
    }
}

impl KeyMeta {
    /// A new enabled key with version 1 enabled and `min_decryption_version = 1`.
    ///
    /// Returns `Invalid` when `rotation_period` is under [`MIN_ROTATION_PERIOD`], the
    /// description is over [`MAX_DESCRIPTION_LEN`] bytes, or a label breaks the label rules
    /// (see [`KeyMeta::set_labels`]). `Some(0)` means no automatic rotation, as 0 on the wire.
    pub fn new(
        name: KeyName,
        id: KeyId,
        purpose: Purpose,
        now: u64,
        description: String,
        labels: BTreeMap<String, String>,
        rotation_period: Option<u64>,
    ) -> Result<Self, LifecycleError> {
        let rotation_period = check_rotation_period(&name, rotation_period)?;
        check_description(&name, &description)?;
        check_labels(&name, &labels)?;
        Ok(Self {
            name,
            id,
            purpose,
            state: KeyState::Enabled,
            versions: vec![VersionMeta {
                version: 1,
                created: now,
                state: VersionState::Enabled,
                encryptions: 0,
                fingerprint: None,
                erased: false,
            }],
            min_decryption_version: 1,
            rotation_period,
            description,
            labels,
            created: now,
            updated: now,
            last_rotated: now,
            origin: Origin::Kms,
            exportable: false,
        })
    }

    /// A new enabled key whose version 1 is imported material with `fingerprint` (hex). No
    /// automatic rotation: the KMS cannot make new material for it.
    #[allow(clippy::too_many_arguments)]
    pub fn new_imported(
        name: KeyName,
        id: KeyId,
        now: u64,
        description: String,
        labels: BTreeMap<String, String>,
        exportable: bool,
        fingerprint: String,
    ) -> Result<Self, LifecycleError> {
        let mut meta = Self::new(
            name,
            id,
            Purpose::EncryptDecrypt,
            now,
            description,
            labels,
            None,
        )?;
        meta.origin = Origin::External;
        meta.exportable = exportable;
        meta.versions[0].fingerprint = Some(fingerprint);
        Ok(meta)
    }

    /// Sets `exportable` on a key being created (it is never changed afterwards).
    pub fn with_exportable(mut self, exportable: bool) -> Self {
        self.exportable = exportable;
        self
    }

    /// The newest version number (at least 1).
    pub fn latest(&self) -> u32 {
        // Fits: the number of versions is a u32 by construction and checked on deserialize.
        self.versions.len() as u32
    }

    /// Version `v`, if the key has it.
    pub fn version(&self, v: u32) -> Option<&VersionMeta> {
        let i = usize::try_from(v).ok()?.checked_sub(1)?;
        self.versions.get(i)
    }

    /// The version's state as shown to users. Returns:
    /// - `"active"`: the latest version, enabled;
    /// - `"decrypt-only"`: an older version, enabled;
    /// - `"revoked"`, `"destroyed"`;
    /// - `"unknown"`: the key has no such version.
    ///
    /// This is the version's own state; the key's state (e.g. disabled) is shown separately.
    pub fn version_state_label(&self, v: u32) -> &'static str {
        match self.version(v).map(|m| m.state) {
            Some(VersionState::Enabled) if v == self.latest() => "active",
            Some(VersionState::Enabled) => "decrypt-only",
            Some(VersionState::Revoked { .. }) => "revoked",
            Some(VersionState::Destroyed { .. }) => "destroyed",
            None => "unknown",
        }
    }

    /// When a pending deletion becomes a destruction, if one is scheduled.
    pub fn deletion_at(&self) -> Option<u64> {
        match self.state {
            KeyState::PendingDeletion { deletion_at, .. } => Some(deletion_at),
            _ => None,
        }
    }

    /// When the key was destroyed, if it was.
    pub fn destroyed_at(&self) -> Option<u64> {
        match self.state {
            KeyState::Destroyed { at } => Some(at),
            _ => None,
        }
    }

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

    /// Adds a version of imported material with `fingerprint` (hex), which becomes the latest,
    /// as [`KeyMeta::rotate`] does. Only on an enabled imported key (`NotAllowed` otherwise).
    pub fn import_version(&mut self, fingerprint: String, now: u64) -> Result<u32, LifecycleError> {
        if self.origin != Origin::External {
            return Err(self.not_allowed(
                "was generated by the KMS: material can be imported only into a key created by an import",
            ));
        }
        self.push_version(now, Some(fingerprint))
    }

    /// Restores a destroyed version of an imported key: the destroyed version `v` for which
    /// `matches(v, fingerprint)` holds is enabled again, and a destroyed key with it. Only the
    /// very material that was imported restores a version [RègleInjectionClé]; other versions
    /// stay destroyed until theirs is imported too, and a revoked version never comes back.
    /// `NotAllowed` if the key is not an enabled or destroyed imported key, or no destroyed
    /// version matches.
    pub fn restore_version(
        &mut self,
        matches: impl Fn(u32, &str) -> bool,
        now: u64,
    ) -> Result<u32, LifecycleError> {
        if self.origin != Origin::External
            || !matches!(self.state, KeyState::Destroyed { .. } | KeyState::Enabled)
        {
            return Err(self.not_allowed(
                "is not an enabled or destroyed imported key: only those get destroyed versions back by importing their material again",
            ));
        }
        let matching = |v: &VersionMeta| {
            v.fingerprint
                .as_deref()
                .is_some_and(|f| matches(v.version, f))
        };
        if let Some(v) = self
            .versions
            .iter()
            .find(|v| matches!(v.state, VersionState::Revoked { .. }) && matching(v))
        {
            return Err(self.not_allowed(&format!(
                "had this material as version {}, which was revoked: revocation is final, so it can never be imported again",
                v.version
            )));
        }
        let found = self
            .versions
            .iter()
            .position(|v| matches!(v.state, VersionState::Destroyed { .. }) && matching(v));
        let Some(i) = found else {
            return Err(self.not_allowed(
                "has no destroyed version with this material: a destroyed key gets back only the material of one of its destroyed versions",
            ));
        };
        self.versions[i].state = VersionState::Enabled;
        self.versions[i].erased = false;
        self.state = KeyState::Enabled;
        self.updated = now;
        Ok(self.versions[i].version)
    }

    /// Whether a destroyed version of this key has the material `matches` recognises.
    pub fn has_destroyed_match(&self, matches: impl Fn(u32, &str) -> bool) -> bool {
        self.versions.iter().any(|v| {
            matches!(v.state, VersionState::Destroyed { .. })
                && v.fingerprint
                    .as_deref()
                    .is_some_and(|f| matches(v.version, f))
        })
    }

    fn push_version(
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

    /// Versions below `v` will refuse to decrypt. `v` must be in 1..=latest (`Invalid`);
    /// lowering it again is allowed. `NotAllowed` on a destroyed key.
    pub fn set_min_decryption_version(&mut self, v: u32, now: u64) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        let latest = self.latest();
        if v == 0 || v > latest {
            return Err(LifecycleError::Invalid(format!(
                "min_decryption_version {v} is not a version of key '{}': choose one from 1 to {latest}",
                self.name
            )));
        }
        self.min_decryption_version = v;
        self.updated = now;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`, or `Some(0)` as 0 on the wire) the automatic rotation
    /// period, counted from the last rotation. `Invalid` under [`MIN_ROTATION_PERIOD`];
    /// `NotAllowed` on a destroyed key.
    pub fn set_rotation_period(
        &mut self,
        period: Option<u64>,
        now: u64,
    ) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        if self.origin == Origin::External && period.is_some_and(|p| p > 0) {
            return Err(LifecycleError::Invalid(format!(
                "key '{}' holds imported material, which the KMS cannot rotate: it takes no rotation period; import new material to add a version",
                self.name
            )));
        }
        self.rotation_period = check_rotation_period(&self.name, period)?;
        self.updated = now;
        Ok(())
    }

    /// Replaces the description. `Invalid` over [`MAX_DESCRIPTION_LEN`] bytes; `NotAllowed` on
    /// a destroyed key.
    pub fn set_description(&mut self, description: String, now: u64) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        check_description(&self.name, &description)?;
        self.description = description;
        self.updated = now;
        Ok(())
    }

    /// Replaces all labels (`replace`), or adds `labels` to the existing ones, overwriting
    /// values of keys already present. The result must follow the label rules, else
    /// `Invalid` and nothing changes: at most [`MAX_LABELS`] labels; keys of 1 to
    /// [`MAX_LABEL_KEY_LEN`] bytes of `[a-z0-9_-]`; values of at most [`MAX_LABEL_VALUE_LEN`]
    /// bytes. `NotAllowed` on a destroyed key.
    pub fn set_labels(
        &mut self,
        labels: BTreeMap<String, String>,
        replace: bool,
        now: u64,
    ) -> Result<(), LifecycleError> {
        self.check_configurable()?;
        let merged = if replace {
            labels
        } else {
            let mut m = self.labels.clone();
            m.extend(labels);
            m
        };
        check_labels(&self.name, &merged)?;
        self.labels = merged;
        self.updated = now;
        Ok(())
    }

    fn check_configurable(&self) -> Result<(), LifecycleError> {
        match self.state {
            KeyState::Destroyed { .. } => {
                Err(self.not_allowed("has been destroyed: its configuration can no longer change"))
            }
            _ => Ok(()),
        }
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

    /// When the next automatic rotation is due: `last_rotated + rotation_period`, if the key
    /// is enabled and has a period; `None` otherwise (a disabled key never rotates by itself).
    /// `rotation_due(now)` is exactly `next_rotation() <= now`.
    pub fn next_rotation(&self) -> Option<u64> {
        match (self.state, self.rotation_period) {
            (KeyState::Enabled, Some(p)) => Some(self.last_rotated.saturating_add(p)),
            _ => None,
        }
    }

    /// Whether an automatic rotation is due at `now`.
    pub fn rotation_due(&self, now: u64) -> bool {
        self.next_rotation().is_some_and(|t| now >= t)
    }

    /// Whether a pending deletion has reached its date at `now`.
    pub fn destruction_due(&self, now: u64) -> bool {
        self.deletion_at().is_some_and(|t| now >= t)
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

    /// Adds `n` to the encryption count of `version` (saturating). A counter, not a
    /// configuration change: `updated` is left alone. An unknown version is ignored.
    pub fn record_encryptions(&mut self, version: u32, n: u64) {
        if let Some(v) = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| self.versions.get_mut(i))
        {
            v.encryptions = v.encryptions.saturating_add(n);
        }
    }

    fn not_allowed(&self, what: &str) -> LifecycleError {
        LifecycleError::NotAllowed(format!("key '{}' {what}", self.name))
    }
}

// ---- argument checks -----------------------------------------------------------------------

fn check_rotation_period(name: &KeyName, p: Option<u64>) -> Result<Option<u64>, LifecycleError> {
    match p {
        None | Some(0) => Ok(None),
        Some(p) if p < MIN_ROTATION_PERIOD => Err(LifecycleError::Invalid(format!(
            "a rotation period of {p} seconds is too short for key '{name}': the minimum is {MIN_ROTATION_PERIOD} seconds (one hour); use 0 for no automatic rotation"
        ))),
        Some(p) => Ok(Some(p)),
    }
}

fn check_description(name: &KeyName, d: &str) -> Result<(), LifecycleError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(LifecycleError::Invalid(format!(
            "the description of key '{name}' is {} bytes, the limit is {MAX_DESCRIPTION_LEN}: shorten it",
            d.len()
        )));
    }
    Ok(())
}

fn check_labels(name: &KeyName, labels: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    let invalid = |m: String| Err(LifecycleError::Invalid(format!("key '{name}': {m}")));
    if labels.len() > MAX_LABELS {
        return invalid(format!(
            "{} labels, the limit is {MAX_LABELS}: remove some",
            labels.len()
        ));
    }
    for (k, v) in labels {
        // Long keys are not echoed back: the message stays short whatever the input.
        if k.is_empty() || k.len() > MAX_LABEL_KEY_LEN {
            return invalid(format!(
                "a label key of {} bytes is not allowed: use 1 to {MAX_LABEL_KEY_LEN} bytes",
                k.len()
            ));
        }
        if !k
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        {
            return invalid(format!(
                "label key {k:?} is not allowed: use only a-z, 0-9, '_' and '-'"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return invalid(format!(
                "the value of label {k:?} is {} bytes, the limit is {MAX_LABEL_VALUE_LEN}",
                v.len()
            ));
        }
    }
    Ok(())
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
    use super::*;

    const T0: u64 = 1_700_000_000;
    const HOUR: u64 = 3_600;

    fn name() -> KeyName {
        "payments/card-tokens".parse().unwrap()
    }

    fn key(now: u64) -> KeyMeta {
        KeyMeta::new(
            name(),
            KeyId([7; 16]),
            Purpose::EncryptDecrypt,
            now,
            "card tokens".into(),
            BTreeMap::from([("team".into(), "payments".into())]),
            None,
        )
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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

    /// One key, one purpose [RègleUsage-1]: the purpose decides which operations pass.
    #[test]
    fn purpose_allows_its_operations() {
        assert!(Purpose::EncryptDecrypt.allows(Operation::Encrypt));
        assert!(Purpose::EncryptDecrypt.allows(Operation::Decrypt));
        let e = LifecycleError::WrongPurpose {
            name: name(),
            purpose: Purpose::EncryptDecrypt,
            operation: Operation::Encrypt,
        };
        assert!(!e.is_invalid_argument());
        assert!(e.to_string().contains("encrypt-decrypt"), "{e}");
        assert_eq!(
            serde_json::to_string(&Purpose::EncryptDecrypt).unwrap(),
            "\"encrypt-decrypt\""
        );
    }

    #[test]
    fn rotation_due_with_injected_time() {
        let period = 7 * DAY;
        let mut k = key(T0);
        assert_eq!(k.next_rotation(), None);
        assert!(!k.rotation_due(u64::MAX));
        k.set_rotation_period(Some(period), T0).unwrap();
        assert_eq!(k.next_rotation(), Some(T0 + period));
        assert!(!k.rotation_due(T0 + period - 1));
        assert_eq!(due_action(&k, T0 + period - 1), None);
        assert!(k.rotation_due(T0 + period));
        assert_eq!(due_action(&k, T0 + period), Some(ScheduledAction::Rotate));

        // Rotating restarts the period.
        k.rotate(T0 + period).unwrap();
        assert!(!k.rotation_due(T0 + 2 * period - 1));
        assert!(k.rotation_due(T0 + 2 * period));

        // Off again.
        k.set_rotation_period(None, T0 + 1).unwrap();
        assert!(!k.rotation_due(u64::MAX));
    }

    #[test]
    fn disabled_key_is_never_rotation_due() {
        let mut k = key(T0);
        k.set_rotation_period(Some(HOUR), T0).unwrap();
        k.disable(T0).unwrap();
        for t in [T0 + HOUR, T0 + 1000 * DAY, u64::MAX] {
            assert!(!k.rotation_due(t));
            assert_eq!(due_action(&k, t), None);
        }
        assert_eq!(k.next_rotation(), None);
        assert!(matches!(
            k.rotate(T0 + 1),
            Err(LifecycleError::NotAllowed(_))
        ));
        k.schedule_deletion(T0, Some(7), 7).unwrap();
        assert!(!k.rotation_due(T0 + 2 * HOUR));
    }

    #[test]
    fn rotation_period_must_be_at_least_an_hour() {
        let mk = |p| {
            KeyMeta::new(
                name(),
                KeyId([1; 16]),
                Purpose::EncryptDecrypt,
                T0,
                String::new(),
                BTreeMap::new(),
                p,
            )
        };
        let e = mk(Some(HOUR - 1)).unwrap_err();
        assert!(e.is_invalid_argument());
        assert!(e.to_string().contains("3600"), "{e}");
        assert_eq!(mk(Some(HOUR)).unwrap().rotation_period, Some(HOUR));
        assert_eq!(mk(Some(0)).unwrap().rotation_period, None);
        let mut k = key(T0);
        assert!(
            k.set_rotation_period(Some(59), T0 + 1)
                .unwrap_err()
                .is_invalid_argument()
        );
        assert_eq!((k.rotation_period, k.updated), (None, T0));
    }

    #[test]
    fn min_decryption_version_must_be_a_version() {
        let mut k = key(T0);
        k.rotate(T0).unwrap();
        for bad in [0, 3] {
            assert!(
                k.set_min_decryption_version(bad, T0 + 1)
                    .unwrap_err()
                    .is_invalid_argument()
            );
        }
        assert_eq!(k.min_decryption_version, 1);
        k.set_min_decryption_version(2, T0 + 1).unwrap();
        k.set_min_decryption_version(1, T0 + 2).unwrap();
        assert_eq!(k.check_decrypt(1), Ok(()));
    }

    #[test]
    fn label_rules() {
        let mut k = key(T0);
        k.set_labels(labels(&[("env", "prod")]), false, T0 + 1)
            .unwrap();
        assert_eq!(k.labels, labels(&[("env", "prod"), ("team", "payments")]));
        k.set_labels(labels(&[("env", "dev")]), true, T0 + 2)
            .unwrap();
        assert_eq!(k.labels, labels(&[("env", "dev")]));
        assert_eq!(k.updated, T0 + 2);

        let long_key = "a".repeat(64);
        let long_value = "v".repeat(257);
        for bad in [
            labels(&[("", "x")]),
            labels(&[("Env", "x")]),
            labels(&[("a.b", "x")]),
            labels(&[("é", "x")]),
            labels(&[(&long_key, "x")]),
            labels(&[("ok", &long_value)]),
        ] {
            let e = k.set_labels(bad.clone(), true, T0 + 3).unwrap_err();
            assert!(e.is_invalid_argument(), "{bad:?}");
            assert!(e.to_string().contains("payments/card-tokens"), "{e}");
        }
        assert_eq!(k.labels, labels(&[("env", "dev")]));
        assert!(
            k.set_labels(labels(&[(&"a".repeat(63), &"v".repeat(256))]), false, T0)
                .is_ok()
        );

        // The count limit applies to the merged result.
        let many: BTreeMap<String, String> = (0..MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        assert!(k.set_labels(many.clone(), true, T0 + 4).is_ok());
        let e = k
            .set_labels(labels(&[("one-more", "")]), false, T0 + 5)
            .unwrap_err();
        assert!(e.is_invalid_argument());
        assert_eq!(k.labels, many);
        let too_many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        let e = KeyMeta::new(
            name(),
            KeyId([1; 16]),
            Purpose::EncryptDecrypt,
            T0,
            String::new(),
            too_many,
            None,
        )
        .unwrap_err();
        assert!(e.is_invalid_argument());
    }

    #[test]
    fn description_limit() {
        let mut k = key(T0);
        k.set_description("d".repeat(MAX_DESCRIPTION_LEN), T0 + 1)
            .unwrap();
        let e = k
            .set_description("d".repeat(MAX_DESCRIPTION_LEN + 1), T0 + 2)
            .unwrap_err();
        assert!(e.is_invalid_argument());
        assert_eq!(k.updated, T0 + 1);
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

    #[test]
    fn encryption_counts_saturate() {
        let mut k = key(T0);
        k.record_encryptions(1, 5);
        k.record_encryptions(1, u64::MAX);
        k.record_encryptions(2, 1); // unknown: ignored
        k.record_encryptions(0, 1);
        assert_eq!(k.versions[0].encryptions, u64::MAX);
        assert_eq!(k.updated, T0);
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
    fn json_round_trip() {
        let mut k = key(T0);
        k.set_rotation_period(Some(30 * DAY), T0).unwrap();
        k.rotate(T0 + 1).unwrap();
        k.rotate(T0 + 2).unwrap();
        k.revoke(1, RevocationReason::Compromised, T0 + 3).unwrap();
        k.set_min_decryption_version(2, T0 + 4).unwrap();
        k.record_encryptions(3, 42);
        k.disable(T0 + 5).unwrap();
        k.schedule_deletion(T0 + 6, None, 7).unwrap();
        let json = serde_json::to_string(&k).unwrap();
        assert!(json.contains("\"payments/card-tokens\""), "{json}");
        assert!(json.contains(&"07".repeat(16)), "{json}");
        assert!(json.contains("\"encrypt-decrypt\""), "{json}");
        let back: KeyMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k);

        let mut d = back;
        d.destroy(T0 + 6 + 30 * DAY).unwrap();
        let back: KeyMeta = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn deserializing_rejects_bad_metadata() {
        let good = serde_json::to_value(key(T0)).unwrap();
        assert!(serde_json::from_value::<KeyMeta>(good.clone()).is_ok());

        let with = |field: &str, v: serde_json::Value| {
            let mut j = good.clone();
            j[field] = v;
            serde_json::from_value::<KeyMeta>(j)
        };
        for bad_name in ["Payments/Card", "a/../b", "", "a//b"] {
            let e = with("name", bad_name.into()).unwrap_err();
            assert!(e.to_string().contains("invalid key name"), "{e}");
        }
        assert!(with("id", "zz".into()).is_err());
        assert!(with("id", "0707".into()).is_err());
        assert!(with("versions", serde_json::json!([])).is_err());
        let v2 = serde_json::json!([{"version": 2, "created": T0, "state": "enabled", "encryptions": 0}]);
        assert!(with("versions", v2).is_err());
        assert!(with("min_decryption_version", 0.into()).is_err());
        assert!(with("min_decryption_version", 2.into()).is_err());
        assert!(with("purpose", "sign".into()).is_err());
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert!(fmt_utc(u64::MAX).ends_with('Z'));
    }

    fn imported(now: u64) -> KeyMeta {
        KeyMeta::new_imported(
            name(),
            KeyId([8; 16]),
            now,
            String::new(),
            BTreeMap::new(),
            false,
            "f1".into(),
        )
        .unwrap()
    }

    fn destroyed_imported() -> KeyMeta {
        let mut k = imported(T0);
        assert_eq!(k.import_version("f2".into(), T0 + 1).unwrap(), 2);
        k.schedule_deletion(T0 + 2, Some(0), 0).unwrap();
        k.destroy(T0 + 2).unwrap();
        k
    }

    /// Imported keys never get KMS-made material: no rotation, no rotation period.
    #[test]
    fn imported_keys_grow_only_by_import() {
        let mut k = imported(T0);
        assert_eq!(k.origin, Origin::External);
        assert!(k.rotate(T0 + 1).unwrap_err().to_string().contains("import"));
        assert!(k.set_rotation_period(Some(HOUR * 24), T0).is_err());
        k.set_rotation_period(None, T0).unwrap();
        assert_eq!(k.import_version("f2".into(), T0 + 1).unwrap(), 2);
        assert_eq!(k.versions[1].fingerprint.as_deref(), Some("f2"));
        let mut g = key(T0);
        assert!(g.import_version("x".into(), T0).is_err());
        assert!(g.restore_version(|_, _| true, T0).is_err());
        k.disable(T0 + 2).unwrap();
        assert!(
            k.import_version("f3".into(), T0 + 3)
                .unwrap_err()
                .to_string()
                .contains("importing")
        );
    }

    /// Destroyed imported material comes back only when the same material is imported
    /// [RègleInjectionClé, RègleEffacement-1].
    #[test]
    fn destroyed_imported_versions_restore_only_with_matching_material() {
        let mut k = destroyed_imported();
        let before = k.clone();
        let e = k.restore_version(|_, f| f == "other", T0 + 3).unwrap_err();
        assert!(e.to_string().contains("no destroyed version"), "{e}");
        assert_eq!(k, before);
        assert_eq!(
            k.restore_version(|v, f| v == 1 && f == "f1", T0 + 3)
                .unwrap(),
            1
        );
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.versions[0].state, VersionState::Enabled);
        assert!(matches!(
            k.versions[1].state,
            VersionState::Destroyed { .. }
        ));
        // Enabled again: version 2 comes back with its own material too, version 1 not twice.
        assert!(
            k.restore_version(|v, f| v == 1 && f == "f1", T0 + 4)
                .is_err()
        );
        assert_eq!(
            k.restore_version(|v, f| v == 2 && f == "f2", T0 + 4)
                .unwrap(),
            2
        );
        assert!(k.check_encrypt(Operation::Encrypt).is_ok());
    }

    /// Revocation is final: destroying and re-importing never brings a revoked (e.g.
    /// compromised) version back [RègleVérificationUtilisabilité-1].
    #[test]
    fn revoked_imported_versions_never_come_back() {
        let mut k = imported(T0);
        k.import_version("f2".into(), T0 + 1).unwrap();
        k.revoke(1, RevocationReason::Compromised, T0 + 2).unwrap();
        k.schedule_deletion(T0 + 3, Some(0), 0).unwrap();
        k.destroy(T0 + 3).unwrap();
        assert!(matches!(k.versions[0].state, VersionState::Revoked { .. }));
        assert!(matches!(
            k.versions[1].state,
            VersionState::Destroyed { .. }
        ));
        let e = k.restore_version(|_, f| f == "f1", T0 + 4).unwrap_err();
        assert!(e.to_string().contains("revocation is final"), "{e}");
        assert_eq!(k.restore_version(|_, f| f == "f2", T0 + 4).unwrap(), 2);
        assert!(matches!(k.versions[0].state, VersionState::Revoked { .. }));
        // Version 1's material went with the destruction; version 2's is back.
        assert!(k.versions[0].erased && !k.versions[1].erased);
    }

    #[test]
    fn records_without_origin_read_as_kms_generated() {
        let k = key(T0);
        let mut v: serde_json::Value = serde_json::to_value(&k).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("origin");
        o.remove("exportable");
        let back: KeyMeta = serde_json::from_value(v).unwrap();
        assert_eq!(back.origin, Origin::Kms);
        assert!(!back.exportable);
        let i = imported(T0).with_exportable(true);
        let round: KeyMeta = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(round, i);
    }
}
