//! The audit sink: the open log, its sync policy and group commit, its stats and its sealed
//! head. Appending and rotation are in `writer`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kms_core::audit::Record;
use tokio::sync::oneshot;

use super::writer::{Writer, open_and_resume, sync_loop};

/// How long a request waits for its audit record before it is refused: a stuck disk must not
/// hang the server.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a data-plane append checks that the log is still the file at its path
/// (renamed or replaced from outside); state changes check every time.
pub(super) const RECHECK: Duration = Duration::from_millis(100);

/// When a record must be durable (fsynced) before its response leaves (`[audit] sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Calls that change state (and every call of the operator, policy, MFA and audit
    /// services) wait for fsync. Data-plane calls (encrypt, decrypt, re-encrypt, data keys,
    /// random, key reads) wait until their record is written to the operating system, which
    /// survives a crash of the server process; group commit fsyncs it within
    /// `sync_interval_ms`. A power loss can lose at most that window of data-plane records.
    #[default]
    StateChanges,
    /// Every call waits for fsync.
    EveryRequest,
}

/// Calls that change no state: with [`SyncPolicy::StateChanges`] their records are not
/// waited on for fsync. Every other operation (including unknown ones) is.
const DATA_PLANE: &[&str] = &[
    "/kms.v1.Crypto/Encrypt",
    "/kms.v1.Crypto/Decrypt",
    "/kms.v1.Crypto/ReEncrypt",
    "/kms.v1.Crypto/GenerateDataKey",
    "/kms.v1.Crypto/BatchEncrypt",
    "/kms.v1.Crypto/BatchDecrypt",
    "/kms.v1.Crypto/GenerateRandom",
    "/kms.v1.KeyAdmin/GetKey",
    "/kms.v1.KeyAdmin/ListKeys",
    "/kms.v1.Operator/Status",
];

/// An fsync running longer than this means the log's disk is not responding: records are
/// then refused rather than written, so a request never blocks on a stuck device.
const STALL: Duration = Duration::from_secs(1);

/// The `[audit]` section.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The JSON Lines audit log (hash-chained; see docs/audit-format.md).
    pub path: PathBuf,
    /// This node's name in every record.
    pub node: String,
    /// Rotate the log once it reaches this many bytes (0: never). Rotated files are named
    /// `<path>.<last sequence number>`; the chain continues across them.
    pub max_bytes: u64,
    /// Which calls wait for their record to be fsynced: `"state-changes"` (default: data-plane
    /// calls wait until the record is written to the OS and are fsynced by group commit within
    /// `sync_interval_ms`) or `"every-request"`.
    pub sync: SyncPolicy,
    /// The longest a written record stays un-fsynced (1–1000 ms; default 10).
    pub sync_interval_ms: u64,
    /// Optional shipping of every record to a remote collector (JSON lines over TLS).
    pub ship: Option<super::ship::ShipConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("audit.log"),
            node: "kms-1".into(),
            max_bytes: 64 * 1024 * 1024,
            sync: Default::default(),
            sync_interval_ms: 10,
            ship: None,
        }
    }
}

/// The audit log. A request appends its record itself (one `write` to the OS, under a
/// mutex that keeps the chain in order: no thread hand-off on the data path); a sync thread
/// makes records durable, one `fdatasync` for every record appended before it started (group
/// commit). State changes wait for that fsync, with a bound.
pub struct AuditSink {
    pub(super) path: PathBuf,
    pub(super) node: String,
    pub(super) policy: SyncPolicy,
    /// False only in dev mode's `--no-audit` (benchmarks): nothing is recorded.
    pub(super) enabled: AtomicBool,
    /// Holds the context HMAC key while unsealed (set once the server is built).
    pub(crate) keystore: std::sync::OnceLock<Arc<crate::keystore::Keystore>>,
    /// `NODE-START`, START being this process's start time (unix ms, hex), so request ids stay
    /// unique across restarts of a node.
    id_prefix: String,
    next_request: AtomicU64,
    pub(super) writer: Mutex<Writer>,
    pub(super) shared: Arc<Shared>,
}

/// State shared with the sync thread.
pub(super) struct Shared {
    pub(super) sync: Mutex<SyncState>,
    pub(super) sync_cv: Condvar,
    /// False after a failed write or fsync, until the log has been reopened: requests then
    /// check the log before they run (fail closed).
    pub(super) healthy: AtomicBool,
    /// Tickets of buffered data-plane records that are resolved (written, or failed).
    pub(super) progress: tokio::sync::watch::Sender<u64>,
    /// How many buffered batches ever failed: waiters look at `Writer::failed` only then.
    pub(super) failures: AtomicU64,
    /// Completed fsyncs and their total time (µs), for the metrics endpoint.
    pub(super) fsyncs: AtomicU64,
    pub(super) fsync_micros: AtomicU64,
}

/// The audit log's state, for the metrics endpoint (`docs/metrics.md`).
pub struct AuditStats {
    /// Records written to the current file and not yet fsynced.
    pub unsynced_records: u64,
    /// Whether records are being accepted (false after a failed write or fsync, until the log
    /// is reopened).
    pub healthy: bool,
    /// Completed fsyncs, and their total duration in seconds.
    pub fsyncs: u64,
    pub fsync_seconds: f64,
}

type Done = oneshot::Sender<Result<(), String>>;

/// A request waiting for durability: (generation, line count that must be synced, answer).
type Waiter = (u64, u64, Done);

/// What the sync thread works from; writers update it after every append.
pub(super) struct SyncState {
    /// The open file and its generation (bumped on every reopen or rotation).
    pub(super) file: Option<(Arc<File>, u64)>,
    /// Lines appended to the current generation, and how many of them are fsynced.
    pub(super) written: u64,
    pub(super) synced: u64,
    pub(super) waiters: Vec<Waiter>,
    /// Set by the sync thread when an fsync failed: the writer must reopen this generation.
    pub(super) broken: Option<u64>,
    /// When the running fsync started (None: none running).
    pub(super) syncing_since: Option<Instant>,
    /// The sync thread sleeps with nothing to sync: the next append must wake it.
    pub(super) idle: bool,
    pub(super) interval: Duration,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn answer(done: Done, r: Result<(), String>) {
    // The request may have given up (timeout); nothing to tell it then.
    let _ = done.send(r);
}

impl AuditSink {
    /// Opens (or creates) the log named in `config` and resumes its chain from the last
    /// complete line. A torn last line (a crash mid-write, never acknowledged) is cut off.
    /// Starts the sync thread.
    pub fn open(config: &crate::audit::AuditConfig) -> Result<Self, String> {
        let (file, ino, chain) = open_and_resume(&config.path)?;
        let len = file
            .metadata()
            .map_err(|e| format!("audit log {}: {e}", config.path.display()))?
            .len();
        let file = Arc::new(file);
        let shared = Arc::new(Shared {
            sync: Mutex::new(SyncState {
                file: Some((file.clone(), 0)),
                written: 0,
                synced: 0,
                waiters: Vec::new(),
                broken: None,
                syncing_since: None,
                idle: false,
                interval: Duration::from_millis(config.sync_interval_ms.clamp(1, 1000)),
            }),
            sync_cv: Condvar::new(),
            healthy: AtomicBool::new(true),
            progress: tokio::sync::watch::Sender::new(0),
            failures: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_micros: AtomicU64::new(0),
        });
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || sync_loop(&syncer))
            .map_err(|e| format!("cannot start the audit sync thread: {e}"))?;
        Ok(Self {
            path: config.path.clone(),
            node: config.node.clone(),
            policy: config.sync,
            enabled: AtomicBool::new(true),
            keystore: std::sync::OnceLock::new(),
            id_prefix: format!(
                "{}-{:x}",
                config.node,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ),
            next_request: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                path: config.path.clone(),
                node: config.node.clone(),
                max_bytes: config.max_bytes,
                file: Some((file, ino, len)),
                chain,
                generation: 0,
                checked: Instant::now(),
                buf: String::new(),
                buf_lines: 0,
                tickets: 0,
                flushing: false,
                failed: std::collections::VecDeque::new(),
                forgotten: 0,
            }),
            shared,
        })
    }

    /// Stops recording (dev mode `--no-audit`, to measure what the audit costs).
    pub fn disable(&self) {
        tracing::warn!("audit disabled (dev mode --no-audit): nothing is recorded");
        self.enabled.store(false, Ordering::SeqCst);
    }

    /// The log's state for the metrics endpoint: one short lock of the sync state.
    pub fn stats(&self) -> AuditStats {
        let unsynced_records = {
            let st = lock(&self.shared.sync);
            st.written.saturating_sub(st.synced)
        };
        AuditStats {
            unsynced_records,
            healthy: self.shared.healthy.load(Ordering::SeqCst),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            fsync_seconds: self.shared.fsync_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Refuses while an fsync has been stuck for longer than [`STALL`].
    fn check_not_stalled(&self) -> Result<(), String> {
        let since = lock(&self.shared.sync).syncing_since;
        match since {
            Some(t) if t.elapsed() > STALL => Err(format!(
                "the disk of audit log {} has not completed an fsync for {} s",
                self.path.display(),
                t.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Appends one record (written to the OS when this returns Ok); if `durable`, returns
    /// once it is also fsynced (waiting at most [`WRITE_TIMEOUT`]).
    ///
    /// A data-plane record is buffered and written by the first request of its batch (the
    /// leader), after letting the other ready requests add theirs: one `write` for many.
    pub(super) async fn write(&self, record: Record, durable: bool) -> Result<(), String> {
        if durable {
            let wait = {
                self.check_not_stalled()?;
                let mut w = lock(&self.writer);
                w.append_durable(&self.shared, Some(record))?
            };
            return self.wait_durable(wait).await;
        }
        let (ticket, leader) = {
            self.check_not_stalled()?;
            let mut w = lock(&self.writer);
            w.push(&self.shared, record)?
        };
        if leader {
            // Writes the batch when dropped, even if this request is cancelled meanwhile.
            let flush = FlushOnDrop(self);
            tokio::task::yield_now().await;
            drop(flush);
        }
        let mut progress = self.shared.progress.subscribe();
        match tokio::time::timeout(WRITE_TIMEOUT, progress.wait_for(|t| *t >= ticket)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err("the audit log is closed".into()),
            Err(_) => {
                return Err(format!(
                    "audit log {} was not written within {} s",
                    self.path.display(),
                    WRITE_TIMEOUT.as_secs()
                ));
            }
        }
        if self.shared.failures.load(Ordering::SeqCst) > 0 {
            let w = lock(&self.writer);
            if let Some((_, _, e)) = w
                .failed
                .iter()
                .find(|(a, b, _)| (*a..=*b).contains(&ticket))
            {
                return Err(e.clone());
            }
            if ticket <= w.forgotten {
                return Err("the audit log failed repeatedly while this record waited".into());
            }
        }
        Ok(())
    }

    /// Appends and writes one record at once, without waiting (for drop paths).
    pub(super) fn write_now(&self, record: Record) -> Result<(), String> {
        self.check_not_stalled()?;
        let mut w = lock(&self.writer);
        w.push(&self.shared, record)?;
        w.write_buffered(&self.shared)
    }

    /// Checks that the log is open and writable (reopening it if it was replaced or after a
    /// failure). One `stat`.
    pub(super) fn probe(&self) -> Result<(), String> {
        self.check_not_stalled()?;
        let mut w = lock(&self.writer);
        w.ensure_open(&self.shared)?;
        w.reserve()
    }

    /// Returns once every record written so far is durable, with the head of those records.
    pub async fn flush(&self) -> Result<kms_core::audit::Head, String> {
        let (wait, head) = {
            let mut w = lock(&self.writer);
            let wait = w.append_durable(&self.shared, None)?;
            // The buffer is empty now: the head is the last line written, which `wait`
            // makes durable (a line chained later could still fail or be lost).
            (wait, w.chain.head())
        };
        self.wait_durable(wait).await?;
        Ok(head)
    }

    async fn wait_durable(&self, rx: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
        self.shared.sync_cv.notify_one();
        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the audit sync thread stopped".into()),
            Err(_) => Err(format!(
                "audit log {} was not fsynced within {} s",
                self.path.display(),
                WRITE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Whether a call must wait for its record to be fsynced.
    pub(super) fn durable(&self, path: &str) -> bool {
        self.policy == SyncPolicy::EveryRequest || !DATA_PLANE.contains(&path)
    }

    /// Seals the current head into storage (`audit/head/<node>`, barrier-encrypted), so a log
    /// whose tail was cut no longer reaches it. Needs the KMS unsealed. The log is flushed
    /// first: a sealed head never points past what is durable.
    pub async fn seal_head(
        &self,
        seal: &crate::Seal,
    ) -> Result<kms_core::audit::Head, crate::KmsError> {
        let head = self
            .flush()
            .await
            .map_err(crate::KmsError::AuditUnavailable)?;
        let keyring = seal.keyring().await?;
        let path = format!("audit/head/{}", hex::encode(self.node.as_bytes()));
        let json =
            serde_json::to_vec(&head).map_err(|e| crate::KmsError::Internal(e.to_string()))?;
        let sealed = keyring.seal(&path, &json)?;
        seal.backend()
            .put(&path, sealed, crate::storage::Expect::Any)
            .await?;
        Ok(head)
    }

    /// Connects the keystore, which holds the context HMAC key while unsealed.
    pub fn attach_keystore(&self, keystore: Arc<crate::keystore::Keystore>) {
        let _ = self.keystore.set(keystore);
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.id_prefix)
    }
}

/// Writes the buffered batch when dropped (see [`AuditSink::write`]).
struct FlushOnDrop<'a>(&'a AuditSink);

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        // A failure reaches the batch's waiters through `Writer::failed`.
        let _ = lock(&self.0.writer).write_buffered(&self.0.shared);
    }
}
