//! Scheduled actions and erasure: the rotations and destructions due, and erasing the material
//! of destroyed keys and the orphans of interrupted changes.

use super::*;

use kms_core::key::ScheduledAction;

use crate::storage::Expect;

impl Keystore {
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

    /// Erases material `v` of key `id` that no acknowledged version owns. On a shared store,
    /// under the key's cluster lock and only if the metadata still does not own it: another
    /// node may be creating or rotating that key right now.
    pub(super) async fn erase_orphan(
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

    /// At load: finishes the erasure of a destroyed key's material. On a shared store, under
    /// the key's cluster lock and only if the latest committed record still says destroyed:
    /// another node may be restoring an imported version right now (material written first,
    /// then metadata), and its new material must not be erased under it.
    pub(super) async fn erase_destroyed(
        &self,
        keyring: &Keyring,
        meta: &KeyMeta,
    ) -> Result<(), KmsError> {
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
    pub(super) async fn erase_material(&self, meta: &KeyMeta) -> Result<(), KmsError> {
        for v in 1..=meta.latest() {
            self.seal
                .backend()
                .delete(&material_path(&meta.id, v), Expect::Any)
                .await?;
        }
        Ok(())
    }
}
