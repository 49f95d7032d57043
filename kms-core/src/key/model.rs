//! The key record: its limits, purpose, origin, key and version states, the stored form and its
//! invariants, creation, and read-only accessors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::{check_description, check_labels, check_rotation_period};
use super::lifecycle::LifecycleError;
use crate::keyname::{KeyId, KeyName};

/// Shortest automatic rotation period, in seconds (one hour).
pub const MIN_ROTATION_PERIOD: u64 = 3_600;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::lifecycle::DAY;
    use crate::key::test_support::*;

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
    fn encryption_counts_saturate() {
        let mut k = key(T0);
        k.record_encryptions(1, 5);
        k.record_encryptions(1, u64::MAX);
        k.record_encryptions(2, 1); // unknown: ignored
        k.record_encryptions(0, 1);
        assert_eq!(k.versions[0].encryptions, u64::MAX);
        assert_eq!(k.updated, T0);
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
