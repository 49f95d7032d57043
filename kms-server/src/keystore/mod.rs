//! The keystore: named keys, their versions' material, the lifecycle changes, and the
//! in-memory cache the data plane reads.
//!
//! Stored records (all barrier-sealed):
//! - `keys/<id>/meta`: the key's metadata ([`KeyMeta`], JSON), kept as a tombstone after
//!   destruction so the name can never be reused;
//! - `keys/<id>/v/<version>`: 32 bytes of key material, erased on destruction.
//!
//! Guarantees:
//! - Every change is durable (material first, then metadata, by compare-and-set) before it is
//!   acknowledged and before the cache shows it.
//! - Encrypt and Decrypt read only the cache, never storage. The cache holds material only
//!   for versions that can still be used and is dropped (zeroized) on seal; a destroyed key's
//!   material is dropped from the cache in the same step that erases it from storage.
//! - Per-version encryption counts are kept in memory and persisted with the key's next
//!   change, so after a crash they may be low.
//! - A record that fails its integrity check (or is missing) at load makes only what it holds
//!   unreadable: a damaged material record makes that key version fail with `DATA_LOSS`, naming
//!   the key; a damaged metadata record makes ciphertexts of that key id fail with `DATA_LOSS`
//!   and, since its name is then unknown and names are never reused, refuses every key
//!   creation. Intact keys are served. Nothing damaged is erased or rewritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kms_core::Secret32;
use kms_core::barrier::Keyring;
use kms_core::key::KeyMeta;
use kms_core::keyname::{KeyId, KeyName};

use crate::error::KmsError;
use crate::seal::Seal;

mod distribution;
mod lifecycle;
mod load;
mod scheduler;
mod serve;

pub use distribution::{ImportParams, NewKeyFields};
pub use serve::{Decrypted, Encrypted};

/// Limits and policy knobs of the keystore (the `[keys]` config section).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// Largest plaintext Encrypt accepts, in bytes.
    pub max_plaintext_bytes: usize,
    /// Most items in one batch call.
    pub max_batch_items: usize,
    /// Shortest waiting period ScheduleKeyDeletion accepts, in days (production: at least 7).
    pub min_deletion_waiting_days: u32,
    /// How often the scheduler looks for keys to rotate or destroy, in seconds.
    pub scheduler_interval_secs: u64,
    /// How long an import token (GetImportParameters) stays valid, in seconds: 1 to 86400
    /// (24 hours, the default). Shorter only narrows the window.
    pub import_token_ttl_secs: u64,
}

/// The longest an import token lives: 24 hours.
pub const MAX_IMPORT_TOKEN_TTL: u64 = 24 * 3600;

impl KeySettings {
    /// Refuses settings outside their ranges (at config load).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_IMPORT_TOKEN_TTL).contains(&self.import_token_ttl_secs) {
            return Err(format!(
                "[keys] import_token_ttl_secs = {} is outside 1..={MAX_IMPORT_TOKEN_TTL} (24 hours)",
                self.import_token_ttl_secs
            ));
        }
        Ok(())
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            max_plaintext_bytes: 64 * 1024,
            max_batch_items: 1000,
            min_deletion_waiting_days: 7,
            scheduler_interval_secs: 60,
            import_token_ttl_secs: MAX_IMPORT_TOKEN_TTL,
        }
    }
}

/// One key in the cache: its metadata, storage version, and usable material.
struct CachedKey {
    meta: KeyMeta,
    record_version: u64,
    /// Shared between a key's successive cache entries, so a change or a refresh never copies
    /// key material (a copy could leave bytes behind that nothing wipes).
    material: BTreeMap<u32, Arc<Secret32>>,
    /// Versions whose material record was damaged or missing at load, with why.
    damaged: BTreeMap<u32, String>,
    /// Encryptions since `meta` was last written, per version (index = version - 1).
    pending_counts: Vec<AtomicU64>,
    /// The stored record is newer than `meta` and could not be read (a record another node
    /// wrote that fails its check here): this entry serves nothing, no change is made from
    /// it, and every refresh reads the record again.
    unreadable: bool,
}

/// The keys of one unsealed period. Changes insert in place (O(log n)), so creating many
/// keys stays linear; a seal replaces the whole cache.
#[derive(Default)]
struct Cache {
    /// In name order, so listing a page is a range scan.
    by_name: RwLock<BTreeMap<KeyName, Arc<CachedKey>>>,
    by_id: RwLock<HashMap<KeyId, Arc<CachedKey>>>,
    /// The audit HMAC key, derived once per unseal; wiped with the cache on seal.
    audit_key: Option<Secret32>,
    /// Metadata records that could not be read at load (path, why). Their keys' names are
    /// unknown, so creation is refused while any is listed.
    damaged_meta: Vec<(String, String)>,
    /// The key ids of those records, where the path names one (and of records another node
    /// wrote that failed their check here).
    damaged_ids: RwLock<HashMap<KeyId, String>>,
}

impl Cache {
    /// The error for a key whose record is damaged, or for a name that may be one of them.
    fn damaged_note(&self) -> String {
        if self.damaged_meta.is_empty() {
            String::new()
        } else {
            format!(
                " ({} key record(s) are damaged and unreadable; it may be one of them: restore \
                 the data directory from backup)",
                self.damaged_meta.len()
            )
        }
    }
}

pub struct Keystore {
    seal: Arc<Seal>,
    settings: KeySettings,
    /// None while sealed (or not loaded yet).
    cache: RwLock<Option<Arc<Cache>>>,
    /// Changes share it; `load` takes it alone.
    writer: tokio::sync::RwLock<()>,
    /// Serialises changes to one key name (striped), so each change is a read-modify-write
    /// of that key's cached state and a name is created once; changes to different keys run
    /// concurrently and share fsyncs.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Bumped by every `clear` (seal); a `load` that started before a clear must not install.
    epoch: AtomicU64,
    /// Whether other nodes write the store too (then the cache follows their changes).
    shared: bool,
    follow: Follow,
}

/// How the cache follows changes other nodes commit to a shared store (PostgreSQL), and
/// whether it may serve: only while a catch-up that started at most `max_staleness` ago
/// succeeded, so a revocation committed elsewhere is never served from this cache for longer.
struct Follow {
    /// The position in the store's change sequence the cache has applied changes up to.
    seq: AtomicU64,
    /// Serialises catch-ups.
    lock: tokio::sync::Mutex<()>,
    /// Changed records that are not keys (seal configuration, policy reloads, MFA), for the
    /// server to act on (`take_other_changes`).
    others: std::sync::Mutex<Vec<String>>,
    origin: Instant,
    /// When the last successful catch-up started, in ms since `origin` plus one (0: never).
    verified: AtomicU64,
    max_staleness: Duration,
}

/// The cluster-wide lock of one key's changes.
fn key_lock(id: &KeyId) -> String {
    format!("key/{id}")
}

/// Lock stripes for key changes.
const STRIPES: usize = 64;

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn meta_path(id: &KeyId) -> String {
    format!("keys/{id}/meta")
}

fn material_path(id: &KeyId, version: u32) -> String {
    format!("keys/{id}/v/{version:010}")
}

/// The key id and version of a material record path, or None for any other path.
fn parse_material_path(path: &str) -> Option<(KeyId, u32)> {
    let rest = path.strip_prefix("keys/")?;
    let (id, v) = rest.split_once("/v/")?;
    Some((id.parse().ok()?, v.parse().ok()?))
}

impl Keystore {
    pub fn new(seal: Arc<Seal>, settings: KeySettings) -> Self {
        let shared = seal.backend().shared();
        Self {
            seal,
            settings,
            cache: RwLock::new(None),
            writer: tokio::sync::RwLock::new(()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            epoch: AtomicU64::new(0),
            shared,
            follow: Follow {
                seq: AtomicU64::new(0),
                lock: tokio::sync::Mutex::new(()),
                others: std::sync::Mutex::new(Vec::new()),
                origin: Instant::now(),
                verified: AtomicU64::new(0),
                max_staleness: Duration::from_secs(1),
            },
        }
    }

    /// The longest this node serves from its cache without a successful check against a shared
    /// store (`[storage] max_staleness_ms`; default 1 s). Unused for a store one node owns.
    pub fn with_max_staleness(mut self, bound: Duration) -> Self {
        self.follow.max_staleness = bound;
        self
    }

    pub fn settings(&self) -> &KeySettings {
        &self.settings
    }

    fn cache(&self) -> Result<Arc<Cache>, KmsError> {
        self.cache
            .read()
            .map_err(|_| KmsError::Internal("key cache lock poisoned".into()))?
            .clone()
            .ok_or(KmsError::Sealed)
    }

    /// The key that HMACs encryption-context values in audit records (stable across barrier
    /// rotations). `None` while sealed. Cached, so the audit of Encrypt touches no lock
    /// beyond the key cache's.
    pub fn audit_key(&self) -> Option<kms_core::audit::AuditKey> {
        let cache = self.cache().ok()?;
        cache
            .audit_key
            .clone()
            .map(kms_core::audit::AuditKey::from_secret)
    }

    /// `Sealed` unless the keys are loaded and the KMS unsealed.
    pub fn check_unsealed(&self) -> Result<(), KmsError> {
        self.cache().map(|_| ())
    }

    /// Drops every cached key and its material (zeroized on drop). Called on seal.
    pub fn clear(&self) {
        // A poisoned lock still holds a valid Option; replacing it is safe.
        let mut guard = self.cache.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *guard = None;
    }

    fn install(&self, cache: &Arc<Cache>, key: CachedKey) {
        let key = Arc::new(key);
        // Holding the read guard: a seal (which takes the write guard) waits for this insert,
        // then drops the whole cache. If it came first, stay sealed and install nothing.
        let guard = read(&self.cache);
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, cache)) {
            let mut by_id = write(&cache.by_id);
            // A refresh that read an older record than a change installed meanwhile loses. An
            // unreadable entry replaces the entry of the same version it stands for.
            if by_id.get(&key.meta.id).is_some_and(|k| {
                k.record_version > key.record_version
                    || (k.record_version == key.record_version && !key.unreadable)
            }) {
                return;
            }
            write(&cache.by_name).insert(key.meta.name.clone(), key.clone());
            by_id.insert(key.meta.id, key);
        }
    }
}

/// Versions whose material the cache holds: those of an enabled key that are not destroyed.
/// A disabled key or one pending deletion keeps its material only in storage (sealed), so
/// disabling a key also wipes it from memory; enabling reads it back.
fn cached_versions(meta: &KeyMeta) -> Vec<u32> {
    if !matches!(meta.state, kms_core::key::KeyState::Enabled) {
        return Vec::new();
    }
    meta.versions
        .iter()
        // A revoked version's material stays cached (to authenticate a ciphertext before
        // saying it is revoked) unless destruction erased it (a restored imported key).
        .filter(|v| !v.erased && !matches!(v.state, kms_core::key::VersionState::Destroyed { .. }))
        .map(|v| v.version)
        .collect()
}

fn counts_for(meta: &KeyMeta) -> Vec<AtomicU64> {
    meta.versions.iter().map(|_| AtomicU64::new(0)).collect()
}

/// The metadata with the in-memory encryption counts added.
fn with_counts(key: &CachedKey) -> KeyMeta {
    let mut meta = key.meta.clone();
    for (i, c) in key.pending_counts.iter().enumerate() {
        meta.record_encryptions(i as u32 + 1, c.load(Ordering::Relaxed));
    }
    meta
}

/// The key id of a metadata record path.
fn parse_meta_path(path: &str) -> Option<KeyId> {
    path.strip_prefix("keys/")?
        .strip_suffix("/meta")?
        .parse()
        .ok()
}

/// Opens one metadata record read from `path`; the error says why it is unreadable.
fn open_meta(
    keyring: &Keyring,
    path: &str,
    rec: crate::storage::Versioned,
) -> Result<(KeyMeta, u64), String> {
    let plain = keyring
        .open(path, &rec.value)
        .map_err(|e| format!("failed its integrity check ({e})"))?;
    let meta: KeyMeta =
        serde_json::from_slice(&plain).map_err(|e| format!("it does not parse ({e})"))?;
    if meta_path(&meta.id) != path {
        return Err("it names another key id".into());
    }
    Ok((meta, rec.version))
}

/// Why a usable version has no material in the cache.
fn no_material(key: &CachedKey, version: u32) -> KmsError {
    match key.damaged.get(&version) {
        Some(why) => KmsError::DataLoss(why.clone()),
        None => KmsError::Internal(format!(
            "key {} version {version}: no material in cache",
            key.meta.name
        )),
    }
}
