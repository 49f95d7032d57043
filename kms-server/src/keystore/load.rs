//! Filling the cache: the load at unseal, and on a shared store following the changes other
//! nodes commit (catch-up, refresh) and refusing to serve past the staleness bound.

use super::*;

use kms_core::ciphertext;

impl Keystore {
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
    pub(super) fn serving(&self) -> Result<Arc<Cache>, KmsError> {
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
    pub(super) async fn refresh(&self, id: &KeyId) -> Result<(), KmsError> {
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

    pub(super) async fn read_material(
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
}

fn to_secret(bytes: &[u8]) -> Result<Secret32, KmsError> {
    Secret32::from_slice(bytes)
        .ok_or_else(|| KmsError::Internal("stored key material has the wrong length".into()))
}
