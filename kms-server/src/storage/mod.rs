//! Storage backends: an async key-value store with compare-and-set on a record version.
//!
//! Backends only ever hold public seal configuration and barrier-sealed ciphertext.

mod sled;

pub use self::sled::SledBackend;

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
    /// A short name for status output ("sled").
    fn name(&self) -> &'static str;
}
