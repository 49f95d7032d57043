//! The embedded sled 0.34 backend, with real durability.
//!
//! sled 0.34's `flush()` writes its log with `sync_file_range`, which does not flush the
//! disk's write cache nor the file's size metadata; it is not an fsync. After every
//! acknowledged write this backend calls `flush()` and then `fdatasync` on sled's data file
//! (`DIR/db`), so an acknowledged write survives a process kill and a power loss.
//! Concurrent writers share one sync (group commit): a writer waits for a sync that started
//! after its own insert, and one sync covers every insert made before it.
//!
//! sled writes log entries larger than about 128 KiB to separate files in `DIR/blobs/`, which
//! its flush does not sync; every sync here also fsyncs those files and that folder.
//! After a failed sync the backend refuses every further write: on Linux a failed fsync may
//! drop the dirty pages, so a retry that "succeeds" would acknowledge lost data. Restart the
//! server (sled recovers from its log) once the disk is healthy.
//!
//! Snapshots (for backups) are consistent: every write holds a shared gate around its
//! read-compare-swap, and a snapshot holds the gate exclusively while it copies the records, so
//! it sees each write wholly or not at all. Neither holds the gate across a sync.
//!
//! Rollback check: sled's recovery stops at the first damaged log entry and silently drops it
//! and every later one, so a flipped byte or a cut in `DIR/db` would bring back an older state
//! (a revoked key valid again, keys gone). Every sync therefore also writes a generation
//! number into sled (tree `kms-meta`, after every write it covers) and, once sled's sync has
//! returned, into the file `DIR/kms-generation`. At open, a store whose generation is behind
//! the file's lost acknowledged writes: the backend refuses to open it, saying so. The file is
//! written without an fsync of its own, so after a power loss it may be behind the store (no
//! false alarm, a weaker check), never ahead. It does not stop someone who replaces the whole
//! directory with an older copy, file included; backups and the audit log are the answer there.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, Expect, StorageError, Versioned};

/// A sled database in one directory.
#[derive(Clone)]
pub struct SledBackend {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    data_file: File,
    /// Number of inserts made; an insert's ticket is the value after its increment.
    written: AtomicU64,
    /// Highest ticket known durable, and the store's generation. Guarded by the mutex so one
    /// thread syncs at a time.
    synced: std::sync::Mutex<Synced>,
    /// sled's tree for the generation (kept out of the records' tree, so `list`, `snapshot`
    /// and the emptiness check of `restore` never see it).
    meta: sled::Tree,
    /// `DIR/kms-generation`, rewritten after every sync.
    generation_file: File,
    /// Set by the first failed sync; from then on every write is refused.
    failed: std::sync::atomic::AtomicBool,
    dir: PathBuf,
    /// Shared by writes around their compare-and-swap, exclusive for a snapshot or a restore.
    /// Writer-preferring (tokio's lock is fair), so a snapshot is not starved by a stream of
    /// writes.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Cluster-wide locks: one process owns a sled store, so in memory.
    locks: super::LocalLocks,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let db = open_db(dir).map_err(|e| {
            let hint = if is_locked(&e) {
                ": another process (a running kms-server?) has it open"
            } else {
                ""
            };
            StorageError::Io(format!(
                "cannot open sled database in {}: {e}{hint}",
                dir.display()
            ))
        })?;
        let data_path: PathBuf = dir.join("db");
        let data_file = File::open(&data_path).map_err(|e| io_err(&data_path, e))?;
        let meta = db.open_tree(META_TREE).map_err(sled_err)?;
        let generation = check_generation(dir, &meta)?;
        let generation_path = dir.join(GENERATION_FILE);
        let generation_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&generation_path)
            .map_err(|e| io_err(&generation_path, e))?;
        write_generation(&generation_file, generation).map_err(|e| io_err(&generation_path, e))?;
        // Make the files sled may just have created durable in their folder, and the folder
        // (perhaps just created, e.g. by a restore) in its parent.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(parent, e))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                data_file,
                written: AtomicU64::new(0),
                synced: std::sync::Mutex::new(Synced {
                    through: 0,
                    generation,
                }),
                meta,
                generation_file,
                failed: std::sync::atomic::AtomicBool::new(false),
                dir: dir.to_path_buf(),
                gate: Arc::new(tokio::sync::RwLock::new(())),
                locks: Default::default(),
            }),
        })
    }

    /// Makes every write made so far durable (flush, then fdatasync), sharing syncs between
    /// concurrent callers. Runs on the blocking pool.
    async fn sync(&self) -> Result<(), StorageError> {
        let ticket = self.inner.written.load(Ordering::SeqCst);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sync_through(ticket))
            .await
            .map_err(|e| StorageError::Io(format!("sync task failed: {e}")))?
    }

    /// Writes `records` into this empty store with their versions kept as they are, in one
    /// atomic batch, and makes them durable. For `kms-server restore` only, never on the
    /// serving path: it bypasses compare-and-set.
    ///
    /// Returns `NotEmpty` (and writes nothing) if the store holds any record.
    async fn restore_batch(&self, records: Vec<(String, Versioned)>) -> Result<(), StorageError> {
        let gate = self.inner.gate.clone().write_owned().await;
        self.inner.check_healthy()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _gate = gate;
            if !inner.db.is_empty() {
                return Err(StorageError::NotEmpty(format!(
                    "the store in {} already holds records",
                    inner.dir.display()
                )));
            }
            let mut batch = sled::Batch::default();
            for (key, rec) in records {
                batch.insert(key.as_bytes(), encode(rec.version, &rec.value));
            }
            inner.db.apply_batch(batch).map_err(sled_err)?;
            inner.written.fetch_add(1, Ordering::SeqCst);
            inner.sync_through(inner.written.load(Ordering::SeqCst))
        })
        .await
        .map_err(|e| StorageError::Io(format!("restore task failed: {e}")))?
    }
}

impl Inner {
    fn sync_through(&self, ticket: u64) -> Result<(), StorageError> {
        let mut synced = self
            .synced
            .lock()
            .map_err(|_| StorageError::Io("sync lock poisoned by an earlier panic".into()))?;
        self.check_healthy()?;
        if synced.through >= ticket {
            // A sync that started after our insert already completed.
            return Ok(());
        }
        let covering = self.written.load(Ordering::SeqCst);
        // After every write it covers in sled's log: if this entry survives recovery, so did
        // they.
        let generation = synced.generation + 1;
        let result = self
            .meta
            .insert(GENERATION_KEY, &generation.to_be_bytes())
            .map_err(sled_err)
            .and_then(|_| self.flush_and_sync())
            .and_then(|()| {
                write_generation(&self.generation_file, generation)
                    .map_err(|e| io_err(&self.dir.join(GENERATION_FILE), e))
            });
        if let Err(e) = result {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "storage sync failed; refusing further writes");
            return Err(e);
        }
        synced.through = covering;
        synced.generation = generation;
        Ok(())
    }

    fn flush_and_sync(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map_err(|e| StorageError::Io(format!("sled flush failed: {e}")))?;
        self.data_file
            .sync_data()
            .map_err(|e| StorageError::Io(format!("fdatasync of sled data file failed: {e}")))?;
        sync_blobs(&self.dir.join("blobs"))
    }

    fn check_healthy(&self) -> Result<(), StorageError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(StorageError::Io(
                "an earlier storage sync failed, so writes are refused: check the disk, then restart the server".into(),
            ));
        }
        Ok(())
    }
}

/// Fsyncs every blob file and the blob folder. Blobs vanish when sled compacts; a blob gone
/// between listing and opening needs no sync.
fn sync_blobs(dir: &Path) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut any = false;
    for entry in entries {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        match File::open(&path) {
            Ok(f) => f.sync_data().map_err(|e| io_err(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path, e)),
        }
        any = true;
    }
    if any {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Opens sled, waiting up to 2 s while its file lock is held: sled's background threads can
/// hold it for a moment after the `Db` of the same process is dropped (seen as a failed
/// reopen in tests). A lock held by another process still fails, after the wait.
fn open_db(dir: &Path) -> sled::Result<sled::Db> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(dir).open() {
            Err(e) if is_locked(&e) && std::time::Instant::now() < give_up => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// sled 0.34 reports a held lock only in its message (`ErrorKind::Other`).
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

struct Synced {
    through: u64,
    generation: u64,
}

const META_TREE: &str = "kms-meta";
const GENERATION_KEY: &str = "generation";
const GENERATION_FILE: &str = "kms-generation";

/// The file's form: the generation (u64 BE) and its bitwise complement, so a damaged file is
/// told from a real number.
fn write_generation(file: &File, generation: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&generation.to_be_bytes());
    b[8..].copy_from_slice(&(!generation).to_be_bytes());
    file.write_all_at(&b, 0)
}

/// The store's generation, after checking it is not behind `DIR/kms-generation` (see the
/// module documentation). A missing or damaged file skips the check, with a warning.
fn check_generation(dir: &Path, meta: &sled::Tree) -> Result<u64, StorageError> {
    let stored = match meta.get(GENERATION_KEY).map_err(sled_err)? {
        None => 0,
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::Corrupt(format!("{META_TREE}/{GENERATION_KEY}")))?;
            u64::from_be_bytes(b)
        }
    };
    let path = dir.join(GENERATION_FILE);
    let recorded = match std::fs::read(&path) {
        Ok(b) if b.len() == 16 => {
            let (n, not_n) = b.split_at(8);
            let n = u64::from_be_bytes(n.try_into().unwrap_or_default());
            let not_n = u64::from_be_bytes(not_n.try_into().unwrap_or_default());
            (n == !not_n).then_some(n)
        }
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if stored > 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the rollback check file is missing: the store's state cannot be checked this time; it is written again now"
                );
            }
            return Ok(stored);
        }
        Err(e) => return Err(io_err(&path, e)),
    };
    match recorded {
        None => {
            tracing::warn!(
                file = %path.display(),
                "the rollback check file is damaged: the store's state cannot be checked this time; it is written again now"
            );
            Ok(stored)
        }
        Some(recorded) if stored < recorded => Err(StorageError::RolledBack(format!(
            "the sled store in {} was rolled back: it holds writes up to generation {stored}, \
             but generation {recorded} was acknowledged, so acknowledged changes (keys, \
             rotations, revocations) are missing. Files of the data directory were damaged or \
             replaced by an older copy. Restore from backup (docs/corruption.md); to serve the \
             older state knowingly, delete {}",
            dir.display(),
            path.display()
        ))),
        Some(_) => Ok(stored),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{}: {e}", path.display()))
}

fn sled_err(e: sled::Error) -> StorageError {
    StorageError::Io(format!("sled: {e}"))
}

/// Stored form: version (u64 BE) ‖ value.
fn encode(version: u64, value: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(8 + value.len());
    raw.extend_from_slice(&version.to_be_bytes());
    raw.extend_from_slice(value);
    raw
}

/// Inverse of [`encode`].
fn decode(key: &str, raw: &[u8]) -> Result<Versioned, StorageError> {
    if raw.len() < 8 {
        return Err(StorageError::Corrupt(key.to_string()));
    }
    let (v, value) = raw.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(v);
    Ok(Versioned {
        version: u64::from_be_bytes(b),
        value: value.to_vec(),
    })
}

fn check(key: &str, expect: Expect, current: Option<&Versioned>) -> Result<(), StorageError> {
    let found = current.map(|c| c.version).unwrap_or(0);
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current.is_some() && found == v,
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::Conflict {
            key: key.to_string(),
            expected: expect,
            found,
        })
    }
}

#[async_trait::async_trait]
impl Backend for SledBackend {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        match self.inner.db.get(key.as_bytes()).map_err(sled_err)? {
            Some(raw) => Ok(Some(decode(key, &raw)?)),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StorageError> {
        self.inner.check_healthy()?;
        let gate = self.inner.gate.read().await;
        let old_raw = self.inner.db.get(key.as_bytes()).map_err(sled_err)?;
        let current = old_raw.as_deref().map(|r| decode(key, r)).transpose()?;
        check(key, expect, current.as_ref())?;
        let version = current.as_ref().map(|c| c.version).unwrap_or(0) + 1;
        // Compare-and-swap on the exact bytes read, so a concurrent writer between our read
        // and our write is detected rather than overwritten.
        let swapped = self
            .inner
            .db
            .compare_and_swap(key.as_bytes(), old_raw, Some(encode(version, &value)))
            .map_err(sled_err)?;
        drop(gate);
        if swapped.is_err() {
            let now = self.get(key).await?;
            return Err(StorageError::Conflict {
                key: key.to_string(),
                expected: expect,
                found: now.map(|c| c.version).unwrap_or(0),
            });
        }
        self.inner.written.fetch_add(1, Ordering::SeqCst);
        self.sync().await?;
        Ok(version)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StorageError> {
        self.inner.check_healthy()?;
        let gate = self.inner.gate.read().await;
        let old_raw = self.inner.db.get(key.as_bytes()).map_err(sled_err)?;
        let current = old_raw.as_deref().map(|r| decode(key, r)).transpose()?;
        check(key, expect, current.as_ref())?;
        if old_raw.is_none() {
            return Ok(());
        }
        let swapped = self
            .inner
            .db
            .compare_and_swap(key.as_bytes(), old_raw, None as Option<&[u8]>)
            .map_err(sled_err)?;
        drop(gate);
        if swapped.is_err() {
            return Err(StorageError::Conflict {
                key: key.to_string(),
                expected: expect,
                found: self.get(key).await?.map(|c| c.version).unwrap_or(0),
            });
        }
        self.inner.written.fetch_add(1, Ordering::SeqCst);
        self.sync().await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(prefix.as_bytes()).keys() {
            let k = item.map_err(sled_err)?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    async fn snapshot(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        // Exclusive: no write is between its read and its swap while the records are copied.
        let gate = self.inner.gate.clone().write_owned().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Under the gate, only the cheap copy (sled's values are reference-counted); the
            // decoding happens after writes are let through again.
            let raw = inner
                .db
                .iter()
                .collect::<Result<Vec<(sled::IVec, sled::IVec)>, sled::Error>>()
                .map_err(sled_err);
            drop(gate);
            let mut out = Vec::new();
            for (k, v) in raw? {
                let key = String::from_utf8(k.to_vec())
                    .map_err(|_| StorageError::Corrupt(String::from_utf8_lossy(&k).into_owned()))?;
                let rec = decode(&key, &v)?;
                out.push((key, rec));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Io(format!("snapshot task failed: {e}")))?
    }

    async fn restore(&self, records: Vec<(String, Versioned)>) -> Result<(), StorageError> {
        self.restore_batch(records).await
    }

    fn name(&self) -> &'static str {
        "sled"
    }

    async fn lock(&self, names: &[String]) -> Result<super::LockGuard, StorageError> {
        Ok(self.inner.locks.lock(names).await)
    }

    async fn try_lock(&self, name: &str) -> Result<Option<super::LockGuard>, StorageError> {
        Ok(self.inner.locks.try_lock(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_cas_delete_list() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get("a").await.unwrap(), None);
        assert_eq!(b.put("a", b"1".to_vec(), Expect::Absent).await.unwrap(), 1);
        assert!(matches!(
            b.put("a", b"x".to_vec(), Expect::Absent).await,
            Err(StorageError::Conflict { found: 1, .. })
        ));
        assert!(matches!(
            b.put("a", b"x".to_vec(), Expect::Version(7)).await,
            Err(StorageError::Conflict { found: 1, .. })
        ));
        assert_eq!(
            b.put("a", b"2".to_vec(), Expect::Version(1)).await.unwrap(),
            2
        );
        assert_eq!(b.get("a").await.unwrap().unwrap().value, b"2");
        b.put("ab", b"3".to_vec(), Expect::Any).await.unwrap();
        b.put("b", b"4".to_vec(), Expect::Any).await.unwrap();
        assert_eq!(b.list("a").await.unwrap(), vec!["a", "ab"]);
        assert!(b.delete("a", Expect::Version(1)).await.is_err());
        b.delete("a", Expect::Version(2)).await.unwrap();
        assert_eq!(b.get("a").await.unwrap(), None);
        b.delete("missing", Expect::Any).await.unwrap();
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = SledBackend::open(dir.path()).unwrap();
            b.put("k", b"v".to_vec(), Expect::Absent).await.unwrap();
        }
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get("k").await.unwrap().unwrap().value, b"v");
    }

    fn copy_files(from: &Path, to: &Path, skip: &str) {
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && p.file_name().unwrap() != skip {
                std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
            }
        }
    }

    /// A store older than its generation file (acknowledged writes lost, as sled's recovery
    /// does after a damaged log entry) is refused at open, naming the way out; without the
    /// file, or with a damaged one, it opens (the check is skipped, with a warning).
    #[tokio::test]
    async fn a_rolled_back_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let b = SledBackend::open(&data).unwrap();
            b.put("a", b"1".to_vec(), Expect::Absent).await.unwrap();
        }
        copy_files(&data, old.path(), GENERATION_FILE);
        {
            let b = SledBackend::open(&data).unwrap();
            b.put("b", b"2".to_vec(), Expect::Absent).await.unwrap();
        }
        // Reopening the whole store is fine.
        drop(SledBackend::open(&data).unwrap());
        // The older sled files under the newer generation file: refused.
        for e in std::fs::read_dir(&data).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != GENERATION_FILE {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        copy_files(old.path(), &data, GENERATION_FILE);
        let e = SledBackend::open(&data)
            .err()
            .expect("a rolled-back store opened");
        assert!(matches!(e, StorageError::RolledBack(_)), "{e}");
        assert!(e.to_string().contains("rolled back"), "{e}");
        // A damaged file skips the check; so does a deleted one (the operator's way out).
        std::fs::write(data.join(GENERATION_FILE), [0xffu8; 16]).unwrap();
        drop(SledBackend::open(&data).unwrap());
        copy_files(old.path(), &data, GENERATION_FILE);
        std::fs::remove_file(data.join(GENERATION_FILE)).unwrap();
        let b = SledBackend::open(&data).unwrap();
        assert_eq!(b.get("a").await.unwrap().unwrap().value, b"1");
        assert_eq!(b.get("b").await.unwrap(), None);
        // The generation is kept out of the records.
        assert_eq!(b.list("").await.unwrap(), vec!["a"]);
    }

    /// `restore` keeps versions, so compare-and-set goes on from where the backup left off;
    /// a snapshot returns exactly what was restored; a second restore is refused.
    #[tokio::test]
    async fn restore_keeps_versions_and_refuses_a_non_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        let records = vec![
            (
                "a".to_string(),
                Versioned {
                    version: 7,
                    value: b"x".to_vec(),
                },
            ),
            (
                "b/c".to_string(),
                Versioned {
                    version: 1,
                    value: Vec::new(),
                },
            ),
        ];
        b.restore(records.clone()).await.unwrap();
        assert_eq!(b.snapshot().await.unwrap(), records);
        assert_eq!(
            b.put("a", b"y".to_vec(), Expect::Version(7)).await.unwrap(),
            8
        );
        let e = b.restore(records).await.unwrap_err();
        assert!(matches!(e, StorageError::NotEmpty(_)), "{e}");
        assert_eq!(b.get("a").await.unwrap().unwrap().version, 8);
        drop(b);
        // Durable: the restored records survive a reopen.
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get("b/c").await.unwrap().unwrap().version, 1);
    }

    /// A snapshot taken while writers run sees one instant. Each writer owns a pair of keys
    /// that sort far apart (`a/..` and `z/..`, with 20,000 records between them, so copying
    /// takes a while) and writes `z` before `a` every round: at any instant `z` is at the same
    /// version as `a` or one ahead. A copy that let writes through would read `a` early and `z`
    /// late, after `a` and `z` had both moved on, and see `z` two or more ahead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn snapshot_during_writes_is_one_instant() {
        const WRITERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        let mut initial: Vec<(String, Versioned)> = (0..20_000)
            .map(|i| {
                let v = Versioned {
                    version: 1,
                    value: vec![0; 64],
                };
                (format!("m/{i:05}"), v)
            })
            .collect();
        for w in 0..WRITERS {
            for side in ["a", "z"] {
                let v = Versioned {
                    version: 1,
                    value: Vec::new(),
                };
                initial.push((format!("{side}/{w}"), v));
            }
        }
        initial.sort_by(|x, y| x.0.cmp(&y.0));
        b.restore(initial).await.unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (b, stop) = (b.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut rounds = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    b.put(&format!("z/{w}"), Vec::new(), Expect::Any)
                        .await
                        .unwrap();
                    b.put(&format!("a/{w}"), Vec::new(), Expect::Any)
                        .await
                        .unwrap();
                    rounds += 1;
                }
                rounds
            }));
        }
        // At least 40 snapshots, and until the writers have moved on (bounded, not timed).
        let (mut moved, mut taken) = (0, 0);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while taken < 40 || moved < 2 {
            assert!(
                std::time::Instant::now() < give_up,
                "writers made no progress"
            );
            let snap: std::collections::HashMap<String, u64> = b
                .snapshot()
                .await
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.version))
                .collect();
            assert_eq!(snap.len(), 20_000 + 2 * WRITERS);
            for w in 0..WRITERS {
                let (a, z) = (snap[&format!("a/{w}")], snap[&format!("z/{w}")]);
                assert!(
                    z == a || z == a + 1,
                    "writer {w}: a at version {a}, z at {z}: not one instant"
                );
                moved = moved.max(a);
            }
            taken += 1;
        }
        stop.store(true, Ordering::SeqCst);
        let mut rounds = 0;
        for w in writers {
            rounds += w.await.unwrap();
        }
        // The writers really ran during the snapshots.
        assert!(
            rounds > 0 && moved > 1,
            "rounds {rounds}, highest version seen {moved}"
        );
    }
}
