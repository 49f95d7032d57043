//! Key changes: creation, rotation, configuration and the other lifecycle transitions, each
//! written durably (material first, then metadata, by compare-and-set) before the cache shows it.

use super::*;

use kms_core::key::{Purpose, RevocationReason, VersionState};

use crate::storage::{Expect, LockGuard};

impl Keystore {
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
    pub(super) async fn create_with(
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

    /// Applies `change` to a copy of the key's metadata, persists it (and new material, if
    /// `new_version` says so), then installs it in the cache.
    pub(super) async fn update<F>(&self, name: &KeyName, change: F) -> Result<KeyMeta, KmsError>
    where
        F: FnOnce(&mut KeyMeta, u64) -> Result<(), KmsError>,
    {
        self.update_with(name, change, None).await
    }

    /// [`Keystore::update`], with imported material for the version the change adds or
    /// restores (instead of fresh random material).
    pub(super) async fn update_with<F>(
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

    /// The lock stripe of a key name.
    fn stripe(&self, name: &KeyName) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
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
