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
    /// Highest ticket known durable. Guarded by the mutex so one thread syncs at a time.
    synced: std::sync::Mutex<u64>,
    /// Set by the first failed sync; from then on every write is refused.
    failed: std::sync::atomic::AtomicBool,
    dir: PathBuf,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            StorageError::Io(format!(
                "cannot open sled database in {}: {e}",
                dir.display()
            ))
        })?;
        let data_path: PathBuf = dir.join("db");
        let data_file = File::open(&data_path).map_err(|e| io_err(&data_path, e))?;
        // Make the files sled may just have created durable in their folder.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                data_file,
                written: AtomicU64::new(0),
                synced: std::sync::Mutex::new(0),
                failed: std::sync::atomic::AtomicBool::new(false),
                dir: dir.to_path_buf(),
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
}

impl Inner {
    fn sync_through(&self, ticket: u64) -> Result<(), StorageError> {
        let mut synced = self
            .synced
            .lock()
            .map_err(|_| StorageError::Io("sync lock poisoned by an earlier panic".into()))?;
        self.check_healthy()?;
        if *synced >= ticket {
            // A sync that started after our insert already completed.
            return Ok(());
        }
        let covering = self.written.load(Ordering::SeqCst);
        if let Err(e) = self.flush_and_sync() {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "storage sync failed; refusing further writes");
            return Err(e);
        }
        *synced = covering;
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

fn io_err(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{}: {e}", path.display()))
}

fn sled_err(e: sled::Error) -> StorageError {
    StorageError::Io(format!("sled: {e}"))
}

/// Stored form: version (u64 BE) ‖ value.
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
        let old_raw = self.inner.db.get(key.as_bytes()).map_err(sled_err)?;
        let current = old_raw.as_deref().map(|r| decode(key, r)).transpose()?;
        check(key, expect, current.as_ref())?;
        let version = current.as_ref().map(|c| c.version).unwrap_or(0) + 1;
        let mut raw = Vec::with_capacity(8 + value.len());
        raw.extend_from_slice(&version.to_be_bytes());
        raw.extend_from_slice(&value);
        // Compare-and-swap on the exact bytes read, so a concurrent writer between our read
        // and our write is detected rather than overwritten.
        let swapped = self
            .inner
            .db
            .compare_and_swap(key.as_bytes(), old_raw, Some(raw))
            .map_err(sled_err)?;
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

    fn name(&self) -> &'static str {
        "sled"
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
}
