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
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kms_core::Secret32;
use kms_core::barrier::Keyring;
use kms_core::ciphertext::{self, EncryptionContext};
use kms_core::key::{
    KeyMeta, LifecycleError, Operation, Purpose, RevocationReason, ScheduledAction, VersionState,
};
use kms_core::keyname::{KeyId, KeyName};
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::seal::Seal;
use crate::storage::{Expect, LockGuard};

mod distribution;
pub use distribution::{ImportParams, NewKeyFields};

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

/// A successful encryption.
pub struct Encrypted {
    pub ciphertext: Vec<u8>,
    pub key: KeyName,
    pub version: u32,
}

/// A successful decryption.
pub struct Decrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key: KeyName,
    pub version: u32,
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

    /// `Unavailable` when the store is shared and no catch-up started within the staleness
    /// bound succeeded: the cache may miss a revocation made on another node.
    fn check_fresh(&self) -> Result<(), KmsError> {
        if !self.shared {
            return Ok(());
        }
        let verified = self.follow.verified.load(Ordering::Acquire);
        let now = self.follow.origin.elapsed().as_millis() as u64 + 1;
        let bound = self.follow.max_staleness.as_millis() as u64;
        if verified != 0 && now.saturating_sub(verified) < bound {
            return Ok(());
        }
        Err(KmsError::Unavailable(format!(
            "this node cannot confirm that its key cache is current: the shared storage has not \
             answered for more than {bound} ms ([storage] max_staleness_ms); retry on another node"
        )))
    }

    /// The cache, if it may serve (see `check_fresh`).
    fn serving(&self) -> Result<Arc<Cache>, KmsError> {
        let cache = self.cache()?;
        self.check_fresh()?;
        Ok(cache)
    }

    /// Applies every change other nodes committed to a shared store since the last call: key
    /// records are read again into the cache; other changed records are kept for
    /// [`Keystore::take_other_changes`]. On success the cache counts as current as of the
    /// moment this call started. Nothing to do for a store one node owns.
    pub async fn catch_up(&self) -> Result<(), KmsError> {
        if !self.shared {
            return Ok(());
        }
        let _one = self.follow.lock.lock().await;
        let started = self.follow.origin.elapsed().as_millis() as u64 + 1;
        let backend = self.seal.backend().clone();
        loop {
            let from = self.follow.seq.load(Ordering::SeqCst);
            let changes = backend.changes_since(from).await?;
            if changes.keys.is_empty() {
                break;
            }
            // A new seal configuration first: records changed in the same batch may be sealed
            // under a barrier term only its keyring has.
            if changes.keys.iter().any(|k| k == crate::seal::SEAL_PATH)
                && self.seal.reload_config().await? == crate::seal::Reloaded::Sealed
            {
                self.clear();
            }
            // Each key once, in commit order (a page holds up to a few thousand).
            let mut ids: Vec<KeyId> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for path in &changes.keys {
                if let Some(id) = parse_meta_path(path) {
                    if seen.insert(id) {
                        ids.push(id);
                    }
                } else if !path.starts_with("keys/")
                    && !path.starts_with("audit/head/")
                    && !path.starts_with(distribution::IMPORTS)
                {
                    let mut others = self.follow.others.lock().unwrap_or_else(|p| p.into_inner());
                    if !others.contains(path) {
                        others.push(path.clone());
                    }
                }
            }
            for id in &ids {
                self.refresh(id).await?;
            }
            // A load in between restarted from its own (earlier) position: keep that one.
            let _ = self.follow.seq.compare_exchange(
                from,
                changes.seq,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.follow.verified.fetch_max(started, Ordering::AcqRel);
        Ok(())
    }

    /// Changed records other than keys seen by `catch_up` since the last call, in order.
    pub fn take_other_changes(&self) -> Vec<String> {
        std::mem::take(&mut *self.follow.others.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads key `id` from storage into the cache if storage holds a newer record than the
    /// cache (another node changed it). A record that does not open is first retried with
    /// the stored seal configuration (another node may have rotated the barrier and written
    /// it under the new term); if it still does not open, the cached key is replaced by one
    /// that serves nothing and from which no change is made (`unreadable`), never kept stale,
    /// and the next refresh reads the record again.
    async fn refresh(&self, id: &KeyId) -> Result<(), KmsError> {
        let Ok(cache) = self.cache() else {
            return Ok(()); // sealed: the next load reads everything
        };
        let path = meta_path(id);
        let Some(rec) = self.seal.backend().get(&path).await? else {
            return Ok(());
        };
        let existing = read(&cache.by_id).get(id).cloned();
        if existing
            .as_ref()
            .is_some_and(|k| !k.unreadable && k.record_version >= rec.version)
        {
            return Ok(());
        }
        let mut keyring = match self.seal.keyring().await {
            Ok(k) => k,
            Err(KmsError::Sealed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut opened = open_meta(&keyring, &path, rec.clone());
        if opened.is_err() {
            if self.seal.reload_config().await? == crate::seal::Reloaded::Sealed {
                self.clear();
                return Ok(());
            }
            keyring = self.seal.keyring().await?;
            opened = open_meta(&keyring, &path, rec);
        }
        let (meta, record_version) = match opened {
            Ok(v) => v,
            Err(why) => {
                tracing::error!(%path, error = %why, "key metadata record written by another node does not open here; that key is unreadable on this node");
                if let Some(old) = existing {
                    let why = format!(
                        "key {}: its latest stored record does not open on this node ({why}); \
                         retry on another node, or restore from backup if it is damaged",
                        old.meta.name
                    );
                    let damaged = old
                        .meta
                        .versions
                        .iter()
                        .map(|v| (v.version, why.clone()))
                        .collect();
                    self.install(
                        &cache,
                        CachedKey {
                            pending_counts: counts_for(&old.meta),
                            meta: old.meta.clone(),
                            // The old version: a change made from this entry could only
                            // fail its compare-and-set.
                            record_version: old.record_version,
                            material: BTreeMap::new(),
                            damaged,
                            unreadable: true,
                        },
                    );
                } else {
                    write(&cache.damaged_ids).insert(*id, why);
                }
                return Ok(());
            }
        };
        let mut material = BTreeMap::new();
        let mut damaged = BTreeMap::new();
        for v in cached_versions(&meta) {
            if let Some(m) = existing.as_ref().and_then(|k| k.material.get(&v)) {
                material.insert(v, Arc::clone(m));
                continue;
            }
            match self.read_material(&keyring, &meta, v).await {
                Ok(m) => {
                    material.insert(v, Arc::new(m));
                }
                Err(KmsError::DataLoss(why)) => {
                    tracing::error!(key = %meta.name, version = v, error = %why, "key material record is damaged; that version is unreadable");
                    damaged.insert(v, why);
                }
                Err(e) => return Err(e),
            }
        }
        // Encryptions this node counted and has not written yet stay counted.
        let pending_counts = counts_for(&meta);
        if let Some(old) = &existing {
            for (new, old) in pending_counts.iter().zip(&old.pending_counts) {
                new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        write(&cache.damaged_ids).remove(id);
        self.install(
            &cache,
            CachedKey {
                pending_counts,
                meta,
                record_version,
                material,
                damaged,
                unreadable: false,
            },
        );
        Ok(())
    }

    /// On a shared store, catches up first when `ciphertexts` name a key id or version this
    /// cache does not know: made on another node moments ago (within the staleness bound),
    /// they would otherwise be refused as not authentic. At most one catch-up per call.
    pub async fn follow_unknown_ciphertexts<'a>(
        &self,
        ciphertexts: impl IntoIterator<Item = &'a [u8]>,
    ) {
        if !self.shared {
            return;
        }
        let Ok(cache) = self.cache() else { return };
        let unknown = ciphertexts.into_iter().any(|ct| {
            ciphertext::parse_header(ct).is_ok_and(|h| {
                read(&cache.by_id)
                    .get(&h.key_id)
                    .is_none_or(|k| h.version > k.meta.latest())
            })
        });
        if unknown {
            // A failure shows in the call itself (the staleness check).
            let _ = self.catch_up().await;
        }
    }

    /// On a shared store, catches up first when this cache does not know key `name` (created
    /// on another node moments ago).
    pub async fn follow_unknown_name(&self, name: &KeyName) {
        if !self.shared {
            return;
        }
        let Ok(cache) = self.cache() else { return };
        let known = read(&cache.by_name).contains_key(name);
        if !known {
            let _ = self.catch_up().await;
        }
    }

    /// Erases material `v` of key `id` that no acknowledged version owns. On a shared store,
    /// under the key's cluster lock and only if the metadata still does not own it: another
    /// node may be creating or rotating that key right now.
    async fn erase_orphan(
        &self,
        keyring: &Keyring,
        path: &str,
        id: &KeyId,
        v: u32,
    ) -> Result<bool, KmsError> {
        let backend = self.seal.backend();
        let _lock = if self.shared {
            let guard = backend.lock(&[key_lock(id)]).await?;
            let meta = meta_path(id);
            if let Some(rec) = backend.get(&meta).await? {
                match open_meta(keyring, &meta, rec) {
                    Ok((m, _)) if v <= m.latest() => return Ok(false),
                    Ok(_) => {}
                    // Damaged: keep the material, it may be all that is left.
                    Err(_) => return Ok(false),
                }
            }
            Some(guard)
        } else {
            None
        };
        match &_lock {
            Some(l) => backend.delete_locked(l, path, Expect::Any).await?,
            None => backend.delete(path, Expect::Any).await?,
        }
        Ok(true)
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

    /// Loads every key from storage into the cache. Called after unseal. A record that fails to
    /// open or parse does not stop the load: its key (or key version) is marked damaged, logged
    /// as an error, and every use of it fails with `DATA_LOSS` naming it (see the module doc).
    /// Listing or reading storage failing as a whole still fails the load.
    pub async fn load(&self) -> Result<usize, KmsError> {
        let _w = self.writer.write().await;
        // No catch-up in between: one that started during the load could count the cache as
        // current as of a moment after the load read a record that changed since.
        let _f = self.follow.lock.lock().await;
        let epoch = self.epoch.load(Ordering::SeqCst);
        let keyring = self.seal.keyring().await?;
        let backend = self.seal.backend();
        // Everything committed before this point is read below; later changes are applied by
        // the next catch-up from here.
        let started = self.follow.origin.elapsed().as_millis() as u64 + 1;
        let position = backend.change_seq().await?;
        let mut cache = Cache {
            audit_key: Some(keyring.derive_stable(b"kms audit hmac v1")),
            ..Cache::default()
        };
        let paths = backend.list("keys/").await?;
        for path in &paths {
            if !path.ends_with("/meta") {
                continue;
            }
            // A read that fails (I/O) fails the load, as a storage error: only a record that was
            // read and does not open is damage.
            let read = match backend.get(path).await {
                Ok(Some(rec)) => open_meta(&keyring, path, rec),
                Ok(None) => Err("it vanished during load".to_string()),
                Err(crate::storage::StorageError::Corrupt(_)) => Err("it is corrupt".to_string()),
                Err(e) => return Err(e.into()),
            };
            let (meta, record_version) = match read {
                Ok(v) => v,
                Err(why) => {
                    tracing::error!(%path, error = %why, "key metadata record is damaged; that key is unreadable");
                    if let Some(id) = parse_meta_path(path) {
                        write(&cache.damaged_ids).insert(id, why.clone());
                    }
                    cache.damaged_meta.push((path.clone(), why));
                    continue;
                }
            };
            if matches!(meta.state, kms_core::key::KeyState::Destroyed { .. }) {
                // Finish an erasure a crash may have interrupted (metadata is written first).
                self.erase_destroyed(&keyring, &meta).await?;
            }
            let mut material = BTreeMap::new();
            let mut damaged = BTreeMap::new();
            for v in cached_versions(&meta) {
                match self.read_material(&keyring, &meta, v).await {
                    Ok(m) => {
                        material.insert(v, Arc::new(m));
                    }
                    Err(e @ KmsError::DataLoss(_)) => {
                        tracing::error!(key = %meta.name, version = v, error = %e, "key material record is damaged; that version is unreadable");
                        damaged.insert(v, e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            let cached = Arc::new(CachedKey {
                pending_counts: counts_for(&meta),
                meta,
                record_version,
                material,
                damaged,
                unreadable: false,
            });
            write(&cache.by_name).insert(cached.meta.name.clone(), cached.clone());
            write(&cache.by_id).insert(cached.meta.id, cached);
        }
        // Material of a key id with no metadata record at all: a create interrupted before its
        // metadata committed leaves version 1 only. A later version proves the key existed and
        // its metadata record was lost: damage, not an orphan, so it is kept and creation is
        // refused, as for damaged metadata (a name must never be reused).
        for path in &paths {
            if let Some((id, v)) = parse_material_path(path)
                && v > 1
                && !read(&cache.by_id).contains_key(&id)
                && !read(&cache.damaged_ids).contains_key(&id)
            {
                let why = format!(
                    "its metadata record is missing, yet material of version {v} is stored"
                );
                tracing::error!(key_id = %id, error = %why, "key metadata record is missing; that key is unreadable");
                write(&cache.damaged_ids).insert(id, why.clone());
                cache.damaged_meta.push((meta_path(&id), why));
            }
        }
        // Material no acknowledged key version owns (a create or rotation interrupted before
        // its metadata committed) is erased, so it can neither block a rotation nor outlive it.
        // Material of a key whose metadata is damaged is kept: it may be all that is left of it.
        for path in &paths {
            if let Some((id, v)) = parse_material_path(path) {
                let owned = read(&cache.by_id)
                    .get(&id)
                    .is_some_and(|k| v <= k.meta.latest());
                if !owned
                    && !read(&cache.damaged_ids).contains_key(&id)
                    && self.erase_orphan(&keyring, path, &id, v).await?
                {
                    tracing::warn!(%path, "erased key material left by an interrupted change");
                }
            }
        }
        let n = read(&cache.by_id).len();
        if !cache.damaged_meta.is_empty() {
            tracing::error!(
                damaged = cache.damaged_meta.len(),
                "some key records are damaged: those keys are unreadable and key creation is refused; restore the data directory from backup"
            );
        }
        let mut guard = self.cache.write().unwrap_or_else(|p| p.into_inner());
        // Sealed while loading: install nothing, keep no key in memory.
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return Err(KmsError::Sealed);
        }
        *guard = Some(Arc::new(cache));
        self.follow.seq.store(position, Ordering::SeqCst);
        self.follow.verified.fetch_max(started, Ordering::AcqRel);
        Ok(n)
    }

    fn lookup(&self, name: &KeyName) -> Result<Arc<CachedKey>, KmsError> {
        let cache = self.serving()?;
        let found = read(&cache.by_name).get(name).cloned();
        found.ok_or_else(|| {
            if cache.damaged_meta.is_empty() {
                KmsError::NotFound(format!(
                    "key {name} does not exist: create it with `kms-cli key create {name}`"
                ))
            } else {
                KmsError::NotFound(format!("key {name} was not found{}", cache.damaged_note()))
            }
        })
    }

    // ---- data plane -------------------------------------------------------------------

    pub fn encrypt(
        &self,
        name: &KeyName,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        if plaintext.len() > self.settings.max_plaintext_bytes {
            return Err(KmsError::invalid(format!(
                "plaintext is {} bytes, the limit is {} bytes: encrypt larger data locally with a data key (`kms-cli envelope encrypt`)",
                plaintext.len(),
                self.settings.max_plaintext_bytes
            )));
        }
        let key = self.lookup(name)?;
        self.encrypt_with(&key, plaintext, context)
    }

    fn encrypt_with(
        &self,
        key: &CachedKey,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let version = key.meta.check_encrypt(Operation::Encrypt)?;
        let material = key
            .material
            .get(&version)
            .ok_or_else(|| no_material(key, version))?;
        let ciphertext = ciphertext::seal(material, key.meta.id, version, context, plaintext)?;
        if let Some(c) = key.pending_counts.get(version as usize - 1) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Encrypted {
            ciphertext,
            key: key.meta.name.clone(),
            version,
        })
    }

    /// Decrypts a ciphertext. The header (key id, version) is not authenticated until the
    /// ciphertext is opened, so anything it gets wrong (unknown key id, a version the key never
    /// had) is reported as the opaque authentication failure; a revoked or below-minimum version
    /// is named only for an authentic ciphertext (the plaintext is then dropped, unreleased).
    pub fn decrypt(&self, ct: &[u8], context: &EncryptionContext) -> Result<Decrypted, KmsError> {
        let header = ciphertext::parse_header(ct)?;
        let auth_failed = || KmsError::from(ciphertext::CiphertextError::Authentication);
        let cache = self.serving()?;
        let found = read(&cache.by_id).get(&header.key_id).cloned();
        let key = match found {
            Some(k) => k,
            // The header is not authenticated, but naming a key id whose record is damaged
            // tells the caller nothing secret and saves them from chasing a wrong context.
            None => match read(&cache.damaged_ids).get(&header.key_id).cloned() {
                Some(why) => {
                    return Err(KmsError::DataLoss(format!(
                        "key id {}: its stored record is damaged ({why}), so this ciphertext cannot be decrypted: restore the data directory from backup",
                        header.key_id
                    )));
                }
                None => return Err(auth_failed()),
            },
        };
        match key.meta.check_decrypt(header.version) {
            Ok(()) => {}
            Err(LifecycleError::NoSuchVersion { .. }) => return Err(auth_failed()),
            Err(
                e @ (LifecycleError::BelowMinDecryption { .. }
                | LifecycleError::VersionRevoked { .. }),
            ) => {
                let authentic = key
                    .material
                    .get(&header.version)
                    .is_some_and(|m| ciphertext::open(m, ct, context).is_ok());
                return Err(if authentic { e.into() } else { auth_failed() });
            }
            Err(e) => return Err(e.into()),
        }
        let material = key
            .material
            .get(&header.version)
            .ok_or_else(|| no_material(&key, header.version))?;
        let plaintext = ciphertext::open(material, ct, context)?;
        Ok(Decrypted {
            plaintext,
            key: key.meta.name.clone(),
            version: header.version,
        })
    }

    /// Decrypts and encrypts again under `dest` (or the same key's latest version); the
    /// plaintext never leaves the server.
    pub fn reencrypt(
        &self,
        ct: &[u8],
        context: &EncryptionContext,
        dest: Option<&KeyName>,
        dest_context: &EncryptionContext,
    ) -> Result<(Decrypted, Encrypted), KmsError> {
        let mut d = self.decrypt(ct, context)?;
        let target = dest.unwrap_or(&d.key);
        let key = self.lookup(target)?;
        let e = self.encrypt_with(&key, &d.plaintext, dest_context)?;
        d.plaintext = Zeroizing::new(Vec::new());
        Ok((d, e))
    }

    /// A fresh AES-256 data key, and the same key encrypted under `name`.
    pub fn generate_data_key(
        &self,
        name: &KeyName,
        context: &EncryptionContext,
    ) -> Result<(Secret32, Encrypted), KmsError> {
        let key = self.lookup(name)?;
        let dk = Secret32::random().map_err(|e| KmsError::Internal(e.to_string()))?;
        let e = self.encrypt_with(&key, dk.expose(), context)?;
        Ok((dk, e))
    }

    // ---- administration -----------------------------------------------------------------

    pub async fn create(
        &self,
        name: KeyName,
        purpose: Purpose,
        description: String,
        labels: BTreeMap<String, String>,
        rotation_period: Option<u64>,
        exportable: bool,
    ) -> Result<KeyMeta, KmsError> {
        self.create_with(
            name,
            |name, id, now| {
                Ok(
                    KeyMeta::new(name, id, purpose, now, description, labels, rotation_period)?
                        .with_exportable(exportable),
                )
            },
            None,
        )
        .await
    }

    /// Creates key `name` with the metadata `make(name, id, now)` builds, and `material` as
    /// version 1 (fresh random material if None).
    async fn create_with(
        &self,
        name: KeyName,
        make: impl FnOnce(KeyName, KeyId, u64) -> Result<KeyMeta, KmsError>,
        material: Option<Arc<Secret32>>,
    ) -> Result<KeyMeta, KmsError> {
        let _w = self.writer.read().await;
        let _k = self.stripe(&name).lock().await;
        let cache = self.cache()?;
        let id = KeyId::random().map_err(|e| KmsError::Internal(e.to_string()))?;
        // On a shared store, another node may create the same name: under the name's cluster
        // lock, with the cache caught up, what the cache says is what storage holds.
        let lock = self
            .cluster_lock(&[format!("name/{name}"), key_lock(&id)])
            .await?;
        self.catch_up().await?;
        if !cache.damaged_meta.is_empty() {
            return Err(KmsError::DataLoss(format!(
                "key {name} was not created: {} key record(s) are damaged and their names are unknown, and a name must never be reused: restore the data directory from backup",
                cache.damaged_meta.len()
            )));
        }
        let existing = read(&cache.by_name).get(&name).cloned();
        if let Some(existing) = existing {
            let why = if matches!(
                existing.meta.state,
                kms_core::key::KeyState::Destroyed { .. }
            ) {
                "was destroyed; names of destroyed keys are never reused"
            } else {
                "already exists"
            };
            return Err(KmsError::AlreadyExists(format!("key {name} {why}")));
        }
        let now = now_unix();
        let meta = make(name, id, now)?;
        let material = match material {
            Some(m) => m,
            None => Arc::new(Secret32::random().map_err(|e| KmsError::Internal(e.to_string()))?),
        };
        let keyring = self.seal.keyring().await?;
        self.write_material(&keyring, lock.as_ref(), &id, 1, &material, Expect::Absent)
            .await?;
        let record_version = self
            .write_meta(&keyring, lock.as_ref(), &meta, Expect::Absent)
            .await?;
        let mut mats = BTreeMap::new();
        mats.insert(1, material);
        self.install(
            &cache,
            CachedKey {
                pending_counts: counts_for(&meta),
                meta: meta.clone(),
                record_version,
                material: mats,
                damaged: BTreeMap::new(),
                unreadable: false,
            },
        );
        tracing::info!(key = %meta.name, id = %meta.id, "key created");
        Ok(meta)
    }

    pub fn get(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        let key = self.lookup(name)?;
        Ok(with_counts(&key))
    }

    /// The name of the key a ciphertext names in its header (not authenticated: for access
    /// checks before decryption only), if this KMS holds it.
    pub fn key_name_of(&self, ciphertext: &[u8]) -> Option<KeyName> {
        let header = ciphertext::parse_header(ciphertext).ok()?;
        let cache = self.cache().ok()?;
        read(&cache.by_id)
            .get(&header.key_id)
            .map(|k| k.meta.name.clone())
    }

    /// Keys whose name starts with `prefix` and that `visible` accepts, in name order, after
    /// `after` (exclusive).
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Result<(Vec<KeyMeta>, Option<String>), KmsError> {
        let cache = self.serving()?;
        let by_name = read(&cache.by_name);
        // Start at the later of the prefix and the page token; stop past the prefix.
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut matching = by_name
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(n, _)| n.as_str().starts_with(prefix))
            .filter(|(n, _)| visible(n.as_str()));
        let page: Vec<KeyMeta> = matching
            .by_ref()
            .take(limit)
            .map(|(_, k)| with_counts(k))
            .collect();
        let more = matching.next().is_some();
        let next = if more {
            page.last().map(|m| m.name.to_string())
        } else {
            None
        };
        Ok((page, next))
    }

    /// Applies `change` to a copy of the key's metadata, persists it (and new material, if
    /// `new_version` says so), then installs it in the cache.
    async fn update<F>(&self, name: &KeyName, change: F) -> Result<KeyMeta, KmsError>
    where
        F: FnOnce(&mut KeyMeta, u64) -> Result<(), KmsError>,
    {
        self.update_with(name, change, None).await
    }

    /// [`Keystore::update`], with imported material for the version the change adds or
    /// restores (instead of fresh random material).
    async fn update_with<F>(
        &self,
        name: &KeyName,
        change: F,
        imported: Option<Arc<Secret32>>,
    ) -> Result<KeyMeta, KmsError>
    where
        F: FnOnce(&mut KeyMeta, u64) -> Result<(), KmsError>,
    {
        let _w = self.writer.read().await;
        let _k = self.stripe(name).lock().await;
        let cache = self.cache()?;
        let mut found = read(&cache.by_name).get(name).cloned();
        if found.is_none() && self.shared {
            // Perhaps created on another node moments ago.
            self.catch_up().await?;
            found = read(&cache.by_name).get(name).cloned();
        }
        let mut current =
            found.ok_or_else(|| KmsError::NotFound(format!("key {name} does not exist")))?;
        // On a shared store: under the key's cluster lock, from the latest committed record,
        // so two nodes' changes to one key never race (nor a change and a scheduled job).
        let id = current.meta.id;
        let lock = self.cluster_lock(&[key_lock(&id)]).await?;
        if self.shared {
            self.refresh(&id).await?;
            if let Some(fresh) = read(&cache.by_id).get(&id).cloned() {
                current = fresh;
            }
            if current.unreadable {
                return Err(KmsError::DataLoss(format!(
                    "key {name} was not changed: its latest stored record does not open on this \
                     node; retry on another node"
                )));
            }
        }
        self.apply(&cache, &current, lock.as_ref(), change, imported)
            .await
    }

    /// Takes cluster-wide locks on a shared store; nothing to take for a store one node owns
    /// (the stripes serialise its changes).
    async fn cluster_lock(&self, names: &[String]) -> Result<Option<LockGuard>, KmsError> {
        if !self.shared {
            return Ok(None);
        }
        Ok(Some(self.seal.backend().lock(names).await?))
    }

    async fn apply<F>(
        &self,
        cache: &Arc<Cache>,
        current: &CachedKey,
        lock: Option<&LockGuard>,
        change: F,
        mut imported: Option<Arc<Secret32>>,
    ) -> Result<KeyMeta, KmsError>
    where
        F: FnOnce(&mut KeyMeta, u64) -> Result<(), KmsError>,
    {
        let now = now_unix();
        let mut meta = with_counts(current);
        let before_latest = meta.latest();
        change(&mut meta, now)?;
        let keyring = self.seal.keyring().await?;
        let mut material = current.material.clone();
        if meta.latest() > before_latest {
            let v = meta.latest();
            let m = match imported.take() {
                Some(m) => m,
                None => {
                    Arc::new(Secret32::random().map_err(|e| KmsError::Internal(e.to_string()))?)
                }
            };
            self.write_material(&keyring, lock, &meta.id, v, &m, Expect::Absent)
                .await?;
            material.insert(v, m);
        }
        // A destroyed imported version brought back by importing its material again: the
        // material is written (its record was erased) before the metadata commits.
        let restored = current
            .meta
            .versions
            .iter()
            .zip(&meta.versions)
            .filter(|(was, now)| {
                matches!(was.state, VersionState::Destroyed { .. })
                    && now.state == VersionState::Enabled
            })
            .map(|(_, now)| now.version);
        for v in restored.collect::<Vec<_>>() {
            let m = imported.take().ok_or_else(|| {
                KmsError::Internal(format!("version {v} restored without material"))
            })?;
            // Over whatever an interrupted erasure left: the fingerprint proved it is the same
            // material.
            self.write_material(&keyring, lock, &meta.id, v, &m, Expect::Any)
                .await?;
            material.insert(v, m);
        }
        if imported.is_some() {
            return Err(KmsError::Internal(
                "imported material matched no new or restored version".into(),
            ));
        }
        // Everything the new cache entry needs is read before the metadata commits, so nothing
        // can fail between the commit and the cache update.
        let wanted = cached_versions(&meta);
        material.retain(|v, _| wanted.contains(v));
        // A damaged version stays unreadable, as at load; it must not block changes to the
        // key's other versions (e.g. revoking a compromised one).
        let mut damaged = BTreeMap::new();
        for v in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = material.entry(v) {
                match self.read_material(&keyring, &meta, v).await {
                    Ok(m) => {
                        slot.insert(Arc::new(m));
                    }
                    Err(KmsError::DataLoss(why)) => {
                        tracing::error!(key = %meta.name, version = v, error = %why, "key material record is damaged; that version is unreadable");
                        damaged.insert(v, why);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let record_version = self
            .write_meta(
                &keyring,
                lock,
                &meta,
                Expect::Version(current.record_version),
            )
            .await?;
        self.install(
            cache,
            CachedKey {
                pending_counts: counts_for(&meta),
                meta: meta.clone(),
                record_version,
                material,
                damaged,
                unreadable: false,
            },
        );
        if matches!(meta.state, kms_core::key::KeyState::Destroyed { .. }) {
            // After the commit: if an erasure fails here, the next load finishes it.
            self.erase_material(&meta).await?;
        }
        Ok(meta)
    }

    pub async fn rotate(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        let meta = self
            .update(name, |m, now| m.rotate(now).map(|_| ()).map_err(Into::into))
            .await?;
        tracing::info!(key = %name, version = meta.latest(), "key rotated");
        Ok(meta)
    }

    pub async fn update_config(
        &self,
        name: &KeyName,
        rotation_period: Option<Option<u64>>,
        min_decryption_version: Option<u32>,
        description: Option<String>,
        labels: Option<(BTreeMap<String, String>, bool)>,
    ) -> Result<KeyMeta, KmsError> {
        self.update(name, |m, now| {
            if let Some(p) = rotation_period {
                m.set_rotation_period(p, now)?;
            }
            if let Some(v) = min_decryption_version {
                m.set_min_decryption_version(v, now)?;
            }
            if let Some(d) = description {
                m.set_description(d, now)?;
            }
            if let Some((l, replace)) = labels {
                m.set_labels(l, replace, now)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn disable(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        self.update(name, |m, now| m.disable(now).map_err(Into::into))
            .await
    }

    pub async fn enable(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        self.update(name, |m, now| m.enable(now).map_err(Into::into))
            .await
    }

    pub async fn revoke(
        &self,
        name: &KeyName,
        version: u32,
        reason: RevocationReason,
    ) -> Result<KeyMeta, KmsError> {
        let meta = self
            .update(name, |m, now| {
                m.revoke(version, reason, now).map_err(Into::into)
            })
            .await?;
        tracing::warn!(key = %name, version, %reason, "key version revoked");
        Ok(meta)
    }

    pub async fn schedule_deletion(
        &self,
        name: &KeyName,
        waiting_days: Option<u32>,
    ) -> Result<KeyMeta, KmsError> {
        let min = self.settings.min_deletion_waiting_days;
        self.update(name, |m, now| {
            m.schedule_deletion(now, waiting_days, min)
                .map(|_| ())
                .map_err(Into::into)
        })
        .await
    }

    pub async fn cancel_deletion(&self, name: &KeyName) -> Result<KeyMeta, KmsError> {
        self.update(name, |m, now| m.cancel_deletion(now).map_err(Into::into))
            .await
    }

    /// Runs every rotation and destruction due at `now`. Returns how many keys changed.
    /// Taking `now` lets tests inject time.
    ///
    /// On a shared store one node at a time runs them (a cluster lock; a node that finds it
    /// held skips this run), and each action is checked again on the key's latest record
    /// under the key's lock, so it happens exactly once across nodes.
    pub async fn run_scheduled(&self, now: u64) -> Result<usize, KmsError> {
        let cache = self.cache()?;
        let backend = self.seal.backend().clone();
        let Some(_job) = backend.try_lock("jobs/scheduled-actions").await? else {
            return Ok(0);
        };
        self.catch_up().await?;
        let due: Vec<(KeyName, ScheduledAction)> = read(&cache.by_name)
            .values()
            .filter_map(|k| {
                kms_core::key::due_action(&k.meta, now).map(|a| (k.meta.name.clone(), a))
            })
            .collect();
        let mut done = 0;
        for (name, action) in due {
            let still_due = |m: &KeyMeta| {
                if kms_core::key::due_action(m, now) == Some(action) {
                    Ok(())
                } else {
                    Err(KmsError::FailedPrecondition(
                        "no longer due (done or changed elsewhere)".into(),
                    ))
                }
            };
            let r = match action {
                ScheduledAction::Rotate => {
                    self.update(&name, |m, t| {
                        still_due(m)?;
                        m.rotate(t.max(now)).map(|_| ()).map_err(Into::into)
                    })
                    .await
                }
                ScheduledAction::Destroy => {
                    self.update(&name, |m, t| {
                        still_due(m)?;
                        m.destroy(t.max(now)).map_err(Into::into)
                    })
                    .await
                }
            };
            match r {
                Ok(_) => {
                    done += 1;
                    tracing::warn!(key = %name, ?action, "scheduled action done");
                }
                // Another change got there first (e.g. the deletion was cancelled): skip.
                Err(e) => {
                    tracing::info!(key = %name, ?action, error = %e, "scheduled action skipped")
                }
            }
        }
        Ok(done)
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

    /// The lock stripe of a key name.
    fn stripe(&self, name: &KeyName) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    async fn read_material(
        &self,
        keyring: &Keyring,
        meta: &KeyMeta,
        version: u32,
    ) -> Result<Secret32, KmsError> {
        let path = material_path(&meta.id, version);
        let damaged = |why: String| {
            KmsError::DataLoss(format!(
                "key {} version {version}: its stored material {why}: restore the data directory from backup",
                meta.name
            ))
        };
        let rec = match self.seal.backend().get(&path).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Err(damaged("is missing".into())),
            Err(crate::storage::StorageError::Corrupt(_)) => {
                return Err(damaged("is corrupt".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let plain = keyring
            .open(&path, &rec.value)
            .map_err(|e| damaged(format!("failed its integrity check ({e})")))?;
        to_secret(&plain).map_err(|_| damaged("has the wrong length".into()))
    }

    /// At load: finishes the erasure of a destroyed key's material. On a shared store, under
    /// the key's cluster lock and only if the latest committed record still says destroyed:
    /// another node may be restoring an imported version right now (material written first,
    /// then metadata), and its new material must not be erased under it.
    async fn erase_destroyed(&self, keyring: &Keyring, meta: &KeyMeta) -> Result<(), KmsError> {
        if !self.shared {
            return self.erase_material(meta).await;
        }
        let backend = self.seal.backend();
        let lock = backend.lock(&[key_lock(&meta.id)]).await?;
        let path = meta_path(&meta.id);
        let Some(rec) = backend.get(&path).await? else {
            return Ok(());
        };
        match open_meta(keyring, &path, rec) {
            Ok((m, _)) if matches!(m.state, kms_core::key::KeyState::Destroyed { .. }) => {
                for v in 1..=m.latest() {
                    backend
                        .delete_locked(&lock, &material_path(&m.id, v), Expect::Any)
                        .await?;
                }
                Ok(())
            }
            // Restored meanwhile, or damaged: erase nothing.
            _ => Ok(()),
        }
    }

    /// Deletes every version's material record of `meta` (missing ones are fine).
    async fn erase_material(&self, meta: &KeyMeta) -> Result<(), KmsError> {
        for v in 1..=meta.latest() {
            self.seal
                .backend()
                .delete(&material_path(&meta.id, v), Expect::Any)
                .await?;
        }
        Ok(())
    }

    async fn write_material(
        &self,
        keyring: &Keyring,
        lock: Option<&LockGuard>,
        id: &KeyId,
        version: u32,
        material: &Secret32,
        expect: Expect,
    ) -> Result<(), KmsError> {
        let path = material_path(id, version);
        let sealed = keyring.seal(&path, material.expose())?;
        self.put(lock, &path, sealed, expect).await?;
        Ok(())
    }

    async fn write_meta(
        &self,
        keyring: &Keyring,
        lock: Option<&LockGuard>,
        meta: &KeyMeta,
        expect: Expect,
    ) -> Result<u64, KmsError> {
        let path = meta_path(&meta.id);
        let json = serde_json::to_vec(meta).map_err(|e| KmsError::Internal(e.to_string()))?;
        let sealed = keyring.seal(&path, &json)?;
        self.put(lock, &path, sealed, expect).await
    }

    /// A write, fenced by `lock` when one is held (it fails rather than lands once the lock
    /// is lost: see `Backend::put_locked`).
    async fn put(
        &self,
        lock: Option<&LockGuard>,
        path: &str,
        value: Vec<u8>,
        expect: Expect,
    ) -> Result<u64, KmsError> {
        let backend = self.seal.backend();
        Ok(match lock {
            Some(l) => backend.put_locked(l, path, value, expect).await?,
            None => backend.put(path, value, expect).await?,
        })
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

fn to_secret(bytes: &[u8]) -> Result<Secret32, KmsError> {
    Secret32::from_slice(bytes)
        .ok_or_else(|| KmsError::Internal("stored key material has the wrong length".into()))
}
