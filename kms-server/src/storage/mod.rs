//! Storage backends: an async key-value store with compare-and-set on a record version.
//!
//! Backends only ever hold public seal configuration and barrier-sealed ciphertext.

mod locks;
mod postgres;
mod sled;

pub use self::locks::LocalLocks;
pub use self::postgres::{PostgresBackend, PostgresConfig, PostgresTls};
pub use self::sled::SledBackend;

mod files;
pub(crate) use self::files::write_file;

/// A cluster-wide lock (see [`Backend::lock`]), released when dropped.
pub struct LockGuard(Box<dyn std::any::Any + Send + Sync>);

impl LockGuard {
    /// Wraps whatever releases the lock when dropped.
    pub fn new(inner: impl Send + Sync + 'static) -> Self {
        Self(Box::new(inner))
    }

    /// The backend's own lock state (for writes fenced by the lock).
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

/// Records written since a position of the change sequence (see [`Backend::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The position these changes bring the reader to.
    pub seq: u64,
    /// The keys put since the position asked for, in commit order (a key may repeat).
    pub keys: Vec<String>,
}

/// What a write expects to find, for compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there (last writer wins).
    Any,
    /// The record must not exist yet.
    Absent,
    /// The record must exist at exactly this version.
    Version(u64),
}

/// A stored value and its version. Versions start at 1 and grow by one on every put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Vec<u8>,
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The compare-and-set precondition did not hold; nothing was written.
    #[error("record {key} changed concurrently (expected {expected:?}, found version {found})")]
    Conflict {
        key: String,
        expected: Expect,
        found: u64,
    },
    /// The store could not read or write; whether the write happened is unknown.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A stored record is not in a format this server wrote.
    #[error("stored record {0} is corrupt")]
    Corrupt(String),
    /// A restore found records in the store; nothing was written.
    #[error("{0}")]
    NotEmpty(String),
    /// The store holds less than was acknowledged (see the sled backend's rollback check).
    #[error("{0}")]
    RolledBack(String),
}

/// An async key-value store. Every `put`/`delete` that returns `Ok` is durable: it survives a
/// process kill or power loss (see each backend for exactly how).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Reads one record.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StorageError>;
    /// Writes one record if `expect` holds; returns its new version.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StorageError>;
    /// Deletes one record if `expect` holds. Deleting a missing record with `Expect::Any` is Ok.
    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StorageError>;
    /// The keys starting with `prefix`, in byte order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Every record, in byte order of its key, as it was at one instant: no `put` or `delete`
    /// is seen half-way, and none that completed before the call is missing. Writes wait while
    /// the records are copied (not while they are sent anywhere); reads never wait. For backups.
    ///
    /// One `Vec`: 100,000 keys are about 200,000 records of a few hundred bytes, about 100 MB
    /// in memory, and copying them held writes for 0.4-0.5 s, 3.3 s when cold (debug
    /// build, sled, shared 2-core machine). A streaming form would hold writes for as long as its reader is slow.
    async fn snapshot(&self) -> Result<Vec<(String, Versioned)>, StorageError>;
    /// Writes `records` into this empty store with their versions kept as they are, all or
    /// nothing, durably. For `kms-server restore` only: it bypasses compare-and-set.
    /// Returns `NotEmpty` (and writes nothing) if the store holds any record.
    async fn restore(&self, records: Vec<(String, Versioned)>) -> Result<(), StorageError>;
    /// A short name for status output ("sled").
    fn name(&self) -> &'static str;

    // ---- several nodes on one store ------------------------------------------------------

    /// Whether other processes (other kms-server nodes) may write this store. Then each node's
    /// cache follows [`Backend::changes_since`] and serves only while it can check that it is
    /// current. False for a store one process owns (sled).
    fn shared(&self) -> bool {
        false
    }
    /// The current position of the change sequence. It grows with every committed `put` or
    /// `delete` (of any node), and commits happen in sequence order. Always 0 when not shared.
    async fn change_seq(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
    /// The keys put since position `seq` (exclusive), in commit order, and the position they
    /// bring the reader to; at most a few thousand keys per call (call again from the returned
    /// position). Deletions are not listed. Nothing when not shared.
    async fn changes_since(&self, seq: u64) -> Result<Changes, StorageError> {
        Ok(Changes {
            seq,
            keys: Vec::new(),
        })
    }
    /// Resolves soon after another node may have committed a change (PostgreSQL NOTIFY), or
    /// after a reconnection (changes may have been missed): a hint to call `changes_since`
    /// now rather than at the next periodic check. Never resolves when not shared.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    /// Takes the cluster-wide locks `names` (waiting for each, in sorted order, so two callers
    /// never deadlock), held until the guard drops. Every node sees the same locks: sled (one
    /// process) keeps them in memory, PostgreSQL uses advisory locks (released shortly after
    /// the guard drops, by a task). Writes the lock must exclude go through `put_locked` /
    /// `delete_locked`, so they fail if the lock was lost meanwhile.
    async fn lock(&self, names: &[String]) -> Result<LockGuard, StorageError>;
    /// Takes the cluster-wide lock `name` if no one holds it.
    async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, StorageError>;
    /// `put`, made only while `lock` is still held: a lock can be lost without its holder
    /// knowing (PostgreSQL: its session ended), and a write the lock should have excluded must
    /// then fail (`Io`) rather than land. PostgreSQL writes on the lock's own session, which
    /// holds the advisory lock for exactly as long as it lives. In-memory locks cannot be lost.
    async fn put_locked(
        &self,
        lock: &LockGuard,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
    ) -> Result<u64, StorageError> {
        let _ = lock;
        self.put(key, value, expect).await
    }
    /// `delete`, made only while `lock` is still held (see `put_locked`).
    async fn delete_locked(
        &self,
        lock: &LockGuard,
        key: &str,
        expect: Expect,
    ) -> Result<(), StorageError> {
        let _ = lock;
        self.delete(key, expect).await
    }
}
