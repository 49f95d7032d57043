//! The audit sink: one hash-chained JSON line per request (format in `docs/audit-format.md`),
//! written before the response leaves (and fsynced first, for state changes: see
//! [`SyncPolicy`]); if it cannot be written the request is refused (fail closed).
//!
//! Implemented as a tower layer around every gRPC service, so denied and failed calls are
//! recorded like successful ones. What it records: time, sequence, request id, node,
//! principal, peer, operation (the gRPC method), outcome and status code. Never a request or
//! response body: no plaintext, data key, share or key material can reach the log.
//! The access check notes the key of every key and crypto call ([`AuditSlot`]); successful
//! calls also add the version ([`detail`]). Context values are not yet recorded (as HMACs).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;

use kms_core::audit::{Chain, GENESIS_PREV, Record};
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::codegen::http;

/// What a handler adds to its response for the audit record: the key and version it used.
#[derive(Clone, Debug)]
pub struct AuditDetail {
    pub key: String,
    pub version: Option<u32>,
}

/// Where the access check notes the key a request is about, so that its audit record names it
/// whether the request is allowed, denied or fails. Put in the request's extensions by the
/// audit layer.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotData>>);

#[derive(Default)]
struct SlotData {
    key: Option<String>,
    /// The request's encryption context: recorded only as HMACs, never in clear.
    context: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSlot(..)")
    }
}

impl AuditSlot {
    pub fn set(&self, key: &str, context: &std::collections::BTreeMap<String, String>) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        d.key = Some(key.to_string());
        if !context.is_empty() {
            d.context = context.clone();
        }
    }

    fn take(&self) -> (Option<String>, std::collections::BTreeMap<String, String>) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (d.key.clone(), std::mem::take(&mut d.context))
    }
}

/// Attaches `key` and `version` to a response for its audit record.
pub fn detail<T>(
    mut resp: tonic::Response<T>,
    key: &str,
    version: Option<u32>,
) -> tonic::Response<T> {
    resp.extensions_mut().insert(AuditDetail {
        key: key.to_string(),
        version,
    });
    resp
}

/// How long a request waits for its audit record before it is refused: a stuck disk must not
/// hang the server.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a data-plane append checks that the log is still the file at its path
/// (renamed or replaced from outside); state changes check every time.
const RECHECK: Duration = Duration::from_millis(100);

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

/// The audit log. A request appends its record itself (one `write` to the OS, under a
/// mutex that keeps the chain in order: no thread hand-off on the data path); a sync thread
/// makes records durable, one `fdatasync` for every record appended before it started (group
/// commit). State changes wait for that fsync, with a bound.
pub struct AuditSink {
    path: PathBuf,
    node: String,
    policy: SyncPolicy,
    /// False only in dev mode's `--no-audit` (benchmarks): nothing is recorded.
    enabled: AtomicBool,
    /// Holds the context HMAC key while unsealed (set once the server is built).
    keystore: std::sync::OnceLock<Arc<crate::keystore::Keystore>>,
    /// `NODE-START`, START being this process's start time (unix ms, hex), so request ids stay
    /// unique across restarts of a node.
    id_prefix: String,
    next_request: AtomicU64,
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
}

/// State shared with the sync thread.
struct Shared {
    sync: Mutex<SyncState>,
    sync_cv: Condvar,
    /// False after a failed write or fsync, until the log has been reopened: requests then
    /// check the log before they run (fail closed).
    healthy: AtomicBool,
    /// Tickets of buffered data-plane records that are resolved (written, or failed).
    progress: tokio::sync::watch::Sender<u64>,
    /// How many buffered batches ever failed: waiters look at `Writer::failed` only then.
    failures: AtomicU64,
    /// Completed fsyncs and their total time (µs), for the metrics endpoint.
    fsyncs: AtomicU64,
    fsync_micros: AtomicU64,
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
struct SyncState {
    /// The open file and its generation (bumped on every reopen or rotation).
    file: Option<(Arc<File>, u64)>,
    /// Lines appended to the current generation, and how many of them are fsynced.
    written: u64,
    synced: u64,
    waiters: Vec<Waiter>,
    /// Set by the sync thread when an fsync failed: the writer must reopen this generation.
    broken: Option<u64>,
    /// When the running fsync started (None: none running).
    syncing_since: Option<Instant>,
    /// The sync thread sleeps with nothing to sync: the next append must wake it.
    idle: bool,
    interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn answer(done: Done, r: Result<(), String>) {
    // The request may have given up (timeout); nothing to tell it then.
    let _ = done.send(r);
}

impl AuditSink {
    /// Opens (or creates) the log named in `config` and resumes its chain from the last
    /// complete line. A torn last line (a crash mid-write, never acknowledged) is cut off.
    /// Starts the sync thread.
    pub fn open(config: &crate::config::AuditConfig) -> Result<Self, String> {
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
    async fn write(&self, record: Record, durable: bool) -> Result<(), String> {
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
    fn write_now(&self, record: Record) -> Result<(), String> {
        self.check_not_stalled()?;
        let mut w = lock(&self.writer);
        w.push(&self.shared, record)?;
        w.write_buffered(&self.shared)
    }

    /// Checks that the log is open and writable (reopening it if it was replaced or after a
    /// failure). One `stat`.
    fn probe(&self) -> Result<(), String> {
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
    fn durable(&self, path: &str) -> bool {
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

    fn request_id(&self) -> String {
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

/// Failed batches remembered for their waiters.
const FAILURES_REMEMBERED: usize = 16;

/// The file and the chain; behind the sink's mutex.
struct Writer {
    path: PathBuf,
    node: String,
    /// Rotate the file once it reaches this size (0: never).
    max_bytes: u64,
    /// The open file, its inode and its length; None after a failed write.
    file: Option<(Arc<File>, u64, u64)>,
    chain: Chain,
    generation: u64,
    /// When `ensure_open` last checked the path.
    checked: Instant,
    /// Data-plane lines chained but not yet written, and how many.
    buf: String,
    buf_lines: u64,
    /// Tickets issued to buffered records (the last one's number).
    tickets: u64,
    /// A leader will write the buffer.
    flushing: bool,
    /// Ticket ranges whose batch could not be written, with the reason.
    failed: std::collections::VecDeque<(u64, u64, String)>,
    /// The last ticket of the newest range dropped from `failed`: a waiter at or below it
    /// that finds no range is refused (it may have been in a forgotten failed batch).
    forgotten: u64,
}

impl Writer {
    /// Makes sure `self.file` is the file at the path: reopens it if it was replaced, after
    /// a failed write, or after a failed fsync. One `stat`.
    fn ensure_open(&mut self, shared: &Shared) -> Result<(), String> {
        self.checked = Instant::now();
        let broken = lock(&shared.sync).broken == Some(self.generation);
        let current = std::fs::metadata(&self.path).ok().filter(|m| m.is_file());
        let same = match (&self.file, &current) {
            (Some((_, ino, _)), Some(m)) => m.ino() == *ino,
            _ => false,
        };
        if same && !broken {
            return Ok(());
        }
        // Buffered lines were chained onto the file being dropped: refuse them.
        self.fail_buffered(
            shared,
            "the audit log was replaced before this record was written",
        );
        self.file = None;
        let reopened = open_and_resume(&self.path).and_then(|(file, ino, chain)| {
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            Ok((file, ino, chain, len))
        });
        let (file, ino, chain, len) = match reopened {
            Ok(r) => r,
            Err(e) => {
                shared.healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "audit log unavailable");
                return Err(e);
            }
        };
        let file = Arc::new(file);
        self.chain = chain;
        self.new_generation(shared, file.clone());
        self.file = Some((file, ino, len));
        // Healthy again only once a write succeeds: a reopen also succeeds on a full disk.
        tracing::warn!(path = %self.path.display(), "audit log reopened");
        Ok(())
    }

    /// Switches the sync thread to a new file. Records of the old file still waiting for
    /// fsync are refused: their lines went to a file that is no longer the log (or whose
    /// fsync failed).
    fn new_generation(&mut self, shared: &Shared, file: Arc<File>) {
        self.generation += 1;
        let mut sync = lock(&shared.sync);
        for (_, _, done) in sync.waiters.drain(..) {
            answer(
                done,
                Err("the audit log was replaced before this record was durable".into()),
            );
        }
        sync.file = Some((file, self.generation));
        sync.written = 0;
        sync.synced = 0;
        sync.broken = None;
    }

    /// Checks that the disk has room for the next records (64 KiB past the end of the file,
    /// allocated without changing its size), so a state change is refused before it runs
    /// when the disk is full, not after. A filesystem without fallocate skips the check.
    fn reserve(&self) -> Result<(), String> {
        let Some((file, _, len)) = &self.file else {
            return Err("audit log is not open".into());
        };
        match rustix::fs::fallocate(&**file, rustix::fs::FallocateFlags::KEEP_SIZE, *len, 65536) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(format!(
                "no room for the audit log {}: {e}",
                self.path.display()
            )),
        }
    }

    /// Chains `record` into the buffer. Returns its ticket, and whether this request leads
    /// the batch (must call [`Writer::write_buffered`]).
    fn push(&mut self, shared: &Shared, mut record: Record) -> Result<(u64, bool), String> {
        if self.file.is_none()
            || !shared.healthy.load(Ordering::Relaxed)
            || self.checked.elapsed() >= RECHECK
        {
            self.ensure_open(shared)?;
        }
        record.node.clone_from(&self.node);
        self.buf.push_str(&self.chain.append(record));
        self.buf.push('\n');
        self.buf_lines += 1;
        self.tickets += 1;
        let leader = !std::mem::replace(&mut self.flushing, true);
        Ok((self.tickets, leader))
    }

    /// Refuses every buffered record (their chain is discarded with them on reopen).
    fn fail_buffered(&mut self, shared: &Shared, why: &str) {
        if self.buf_lines > 0 {
            let first = self.tickets - self.buf_lines + 1;
            self.failed
                .push_back((first, self.tickets, why.to_string()));
            if self.failed.len() > FAILURES_REMEMBERED
                && let Some((_, last, _)) = self.failed.pop_front()
            {
                self.forgotten = last;
            }
            shared.failures.fetch_add(1, Ordering::SeqCst);
        }
        self.buf.clear();
        self.buf_lines = 0;
        shared.progress.send_replace(self.tickets);
    }

    /// Writes the buffered lines in one `write` and tells their waiters. On failure they
    /// are refused (see `fail_buffered`) and the error is returned.
    fn write_buffered(&mut self, shared: &Shared) -> Result<(), String> {
        self.flushing = false;
        if self.buf_lines == 0 {
            return Ok(());
        }
        let Some((file, _, len)) = self.file.clone() else {
            let e = "audit log is not open".to_string();
            self.fail_buffered(shared, &e);
            return Err(e);
        };
        if let Err(e) = (&*file).write_all(self.buf.as_bytes()) {
            // The file may now end with a partial line: reopen (and cut it) next time.
            self.file = None;
            shared.healthy.store(false, Ordering::SeqCst);
            let e = format!("cannot write the audit log {}: {e}", self.path.display());
            tracing::error!(error = %e, "audit records not written");
            self.fail_buffered(shared, &e);
            return Err(e);
        }
        shared.healthy.store(true, Ordering::SeqCst);
        let len = len + self.buf.len() as u64;
        if let Some(f) = &mut self.file {
            f.2 = len;
        }
        let wake = {
            let mut sync = lock(&shared.sync);
            sync.written += self.buf_lines;
            std::mem::take(&mut sync.idle)
        };
        self.buf.clear();
        self.buf_lines = 0;
        shared.progress.send_replace(self.tickets);
        if wake {
            shared.sync_cv.notify_one();
        }
        self.rotate_if_full(shared, &file, len);
        Ok(())
    }

    fn rotate_if_full(&mut self, shared: &Shared, file: &File, len: u64) {
        if self.max_bytes > 0 && len >= self.max_bytes {
            // These records are written; but after a failed fsync the file's earlier lines
            // may be lost, and after a rename the file is no longer the log: either way it
            // must not be written again. Its durable waiters are refused; the next record
            // reopens the log (a new generation).
            if let Err(e) = self.rotate(shared, file) {
                tracing::error!(error = %e, "audit log rotation failed; reopening the log");
                self.file = None;
                shared.healthy.store(false, Ordering::SeqCst);
                let generation = self.generation;
                let mut sync = lock(&shared.sync);
                let (failed, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut sync.waiters)
                    .into_iter()
                    .partition(|(g, _, _)| *g == generation);
                sync.waiters = keep;
                sync.broken = Some(generation);
                for (_, _, d) in failed {
                    answer(d, Err(format!("audit log rotation failed: {e}")));
                }
            }
        }
    }

    /// Appends `record` (None: nothing, a flush marker) after any buffered lines, writes them
    /// all now, and returns what to wait on for their fsync. For state changes and flushes:
    /// the log is checked (one `stat`) every time.
    fn append_durable(
        &mut self,
        shared: &Shared,
        record: Option<Record>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        self.ensure_open(shared)?;
        if let Some(record) = record {
            self.push(shared, record)?;
        }
        self.write_buffered(shared)?;
        let (tx, rx) = oneshot::channel();
        let mut sync = lock(&shared.sync);
        // Every line written to this generation so far, this one included.
        let upto = sync.written;
        sync.waiters.push((self.generation, upto, tx));
        Ok(rx)
    }

    /// Renames the full log to `<path>.<last seq>` and continues the chain in a new file.
    /// Every line of the old file is fsynced first, so its waiters are answered.
    fn rotate(&mut self, shared: &Shared, old: &File) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.path.display());
        lock(&shared.sync).syncing_since = Some(Instant::now());
        let synced = old.sync_data();
        lock(&shared.sync).syncing_since = None;
        synced.map_err(io)?;
        {
            let mut sync = lock(&shared.sync);
            let generation = self.generation;
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut sync.waiters)
                .into_iter()
                .partition(|(g, _, _)| *g == generation);
            sync.waiters = keep;
            for (_, _, d) in done {
                answer(d, Ok(()));
            }
            sync.synced = sync.written;
        }
        let rotated = rotated_name(&self.path, self.chain.head().seq);
        std::fs::rename(&self.path, &rotated).map_err(io)?;
        let new = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let ino = new.metadata().map_err(io)?.ino();
        // The chain goes on: the new file's first record points at the old file's last.
        let new = Arc::new(new);
        self.new_generation(shared, new.clone());
        self.file = Some((new, ino, 0));
        tracing::info!(rotated = %rotated.display(), "audit log rotated");
        Ok(())
    }
}

/// The sync thread: fsyncs when a request waits for durability (at once: group commit) or
/// when written lines are older than the sync interval.
fn sync_loop(shared: &Shared) {
    let mut last_sync = Instant::now();
    let mut st = lock(&shared.sync);
    loop {
        // A broken file is not synced again (see below): nothing to do until it is replaced.
        let broken = st.file.as_ref().is_some_and(|(_, g)| st.broken == Some(*g));
        let dirty = st.written > st.synced && !broken;
        let due = dirty && last_sync.elapsed() >= st.interval;
        if st.waiters.is_empty() && !due {
            let wait = if dirty {
                st.interval.saturating_sub(last_sync.elapsed())
            } else {
                st.idle = true;
                Duration::from_secs(3600)
            };
            st = shared
                .sync_cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.idle = false;
            continue;
        }
        let Some((file, generation)) = st.file.clone() else {
            for (_, _, done) in st.waiters.drain(..) {
                answer(done, Err("audit log is not open".into()));
            }
            continue;
        };
        if st.broken == Some(generation) {
            // An earlier fsync of this file failed: a later one may succeed although lines
            // were lost. Its waiters are refused; the writer reopens the log.
            for (_, _, done) in st.waiters.drain(..) {
                answer(done, Err("an earlier fsync of the audit log failed".into()));
            }
            continue;
        }
        let covering = st.written;
        let started = Instant::now();
        st.syncing_since = Some(started);
        drop(st);
        let result = file.sync_data();
        last_sync = Instant::now();
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        shared.fsync_micros.fetch_add(
            u64::try_from(last_sync.duration_since(started).as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        st = lock(&shared.sync);
        st.syncing_since = None;
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit log fsync failed; reopening it");
            shared.healthy.store(false, Ordering::SeqCst);
            if st.file.as_ref().is_some_and(|(_, g)| *g == generation) {
                st.broken = Some(generation);
            }
        } else if st.file.as_ref().is_some_and(|(_, g)| *g == generation) {
            st.synced = st.synced.max(covering);
        }
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|(g, n, _)| *g == generation && (*n <= covering || !ok));
        st.waiters = keep;
        for (_, _, d) in done {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("cannot fsync the audit log: {e}")),
            };
            answer(d, r);
        }
    }
}

fn open_and_resume(path: &Path) -> Result<(File, u64, Chain), String> {
    let err = |e: std::io::Error| format!("cannot open the audit log {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    // Everything after the last newline is a torn, unacknowledged record: cut it. Bytes, not
    // text: the cut may fall inside a multi-byte character (context keys are any text).
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let text = std::str::from_utf8(&bytes[..complete]).map_err(|e| {
        format!(
            "audit log {} is not UTF-8 text: {e}; the server writes only JSON text, so it was \
             altered",
            path.display()
        )
    })?;
    if complete < bytes.len() {
        file.set_len(complete as u64).map_err(err)?;
        file.seek(SeekFrom::End(0)).map_err(err)?;
        file.sync_data().map_err(err)?;
    }
    // An empty current file continues the chain of the newest rotated file, if any.
    let last_line = match text.lines().last() {
        Some(l) => Some(l.to_string()),
        None => last_rotated_line(path)?,
    };
    let chain = match last_line {
        Some(last) => Chain::resume(&last).map_err(|e| {
            format!(
                "audit log {} does not end in a valid record: {e}",
                path.display()
            )
        })?,
        None => Chain::genesis(),
    };
    let ino = file.metadata().map_err(err)?.ino();
    Ok((file, ino, chain))
}

/// The name of a rotated file: the current path, a dot and the last sequence number it holds,
/// zero-padded so that name order is chain order.
fn rotated_name(path: &Path, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{last_seq:012}"));
    PathBuf::from(name)
}

/// The last line of the newest rotated file beside `path`, if there is one.
fn last_rotated_line(path: &Path) -> Result<Option<String>, String> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", base.to_string_lossy());
    let newest = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
        })
        .max();
    let Some(newest) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(dir.join(&newest))
        .map_err(|e| format!("cannot read rotated audit log {newest}: {e}"))?;
    Ok(text.lines().last().map(str::to_string))
}

/// Decodes a `grpc-message` header (percent-encoded, RFC 3986 style).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = hex {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 UTC with milliseconds.
fn now_rfc3339() -> String {
    use std::fmt::Write as _;
    thread_local! {
        // The formatted second, reused by every record within it.
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != now.as_secs() {
            *secs = now.as_secs();
            // "YYYY-MM-DDTHH:MM:SSZ" without the Z.
            *text = kms_core::key::fmt_utc(now.as_secs())
                .trim_end_matches('Z')
                .to_string();
        }
        let mut out = String::with_capacity(text.len() + 5);
        out.push_str(text);
        let _ = write!(out, ".{:03}Z", now.subsec_millis());
        out
    })
}

/// The tower layer that audits every call to the wrapped services.
#[derive(Clone)]
pub struct AuditLayer {
    sink: Arc<AuditSink>,
}

impl AuditLayer {
    pub fn new(sink: Arc<AuditSink>) -> Self {
        Self { sink }
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audited {
            inner,
            sink: self.sink.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    sink: Arc<AuditSink>,
}

/// Health checks and reflection are not security-relevant and would flood the log.
fn audited(path: &str) -> bool {
    path.starts_with("/kms.v1.")
}

/// "/kms.v1.Crypto/GenerateDataKey" → "generate-data-key".
fn operation_of(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or(path);
    let mut out = String::new();
    for (i, ch) in method.chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The gRPC status name of `code` (audit records and metrics labels).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Audited<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is not ready; use the ready one and leave the clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let sink = self.sink.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if !sink.enabled.load(Ordering::Relaxed) || !audited(&path) {
                return inner.call(req).await;
            }
            let time = now_rfc3339();
            let slot = AuditSlot::default();
            let mut req = req;
            req.extensions_mut().insert(slot.clone());
            let request_id = sink.request_id();
            let span = crate::logging::request_span(&request_id, &operation_of(&path));
            let (principal, peer) = match req.extensions().get::<crate::tls::Peer>() {
                Some(p) => (
                    p.principal.as_deref().unwrap_or_default().to_string(),
                    p.addr_text.to_string(),
                ),
                None => (String::new(), String::new()),
            };
            // Fail closed: a request runs only if its record can be written. A state change
            // checks with the writer first; a data-plane call only after a failure (its
            // result is withheld anyway if the record cannot be written).
            let durable = sink.durable(&path);
            if (durable || !sink.shared.healthy.load(Ordering::SeqCst))
                && let Err(e) = sink.probe()
            {
                tracing::error!(parent: &span, error = %e, "audit unavailable; refusing the request");
                return Ok(tonic::Status::unavailable("audit unavailable: the request was not run; the operators must restore the audit log").into_http());
            }
            // If the client goes away (RST_STREAM, grpc-timeout), the request's future is
            // dropped wherever it is. A state change therefore runs in its own task, which
            // finishes (and records it) regardless; a data-plane call that is dropped before
            // its record is queued leaves a "cancelled" record instead.
            let mut cancelled = CancelGuard {
                sink: sink.clone(),
                armed: true,
                record: Record {
                    seq: 0,
                    time,
                    request_id,
                    node: String::new(),
                    principal,
                    peer,
                    operation: operation_of(&path),
                    key: None,
                    version: None,
                    outcome: "error".into(),
                    code: code_name(tonic::Code::Cancelled).into(),
                    error: Some(
                        "the call was dropped before it completed: the client cancelled it or the server deadline passed".into(),
                    ),
                    context_hmac: Default::default(),
                    prev: GENESIS_PREV.to_string(),
                },
                slot: slot.clone(),
            };
            let work = async move {
                let resp = inner.call(req).await?;
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok);
                // The refusal's reason, as the client saw it (messages never carry secrets).
                let error = (code != tonic::Code::Ok)
                    .then(|| {
                        resp.headers()
                            .get("grpc-message")
                            .map(|v| percent_decode(v.as_bytes()))
                    })
                    .flatten();
                let detail = resp.extensions().get::<AuditDetail>().cloned();
                let (slot_key, context) = slot.take();
                let key = (!context.is_empty())
                    .then(|| sink.keystore.get().and_then(|k| k.audit_key()))
                    .flatten();
                let context_hmac = key
                    .map(|k| kms_core::audit::context_hmacs(&k, context.iter()))
                    .unwrap_or_default();
                drop(context);
                let outcome = match code {
                    tonic::Code::Ok => "ok",
                    tonic::Code::PermissionDenied => "denied",
                    _ => "error",
                };
                // From here the record is on its way (written even if this future is dropped).
                let mut record = cancelled.take();
                record.key = detail.as_ref().map(|d| d.key.clone()).or(slot_key);
                record.version = detail.and_then(|d| d.version);
                record.outcome = outcome.into();
                record.code = code_name(code).into();
                record.error = error;
                record.context_hmac = context_hmac;
                let written = sink.write(record, durable).await;
                if let Err(e) = written {
                    tracing::error!(error = %e, "audit record not written; refusing the response");
                    return Ok(tonic::Status::unavailable("audit unavailable: the outcome could not be recorded; check the operation's effect before retrying").into_http());
                }
                Ok(resp)
            }
            .instrument(span);
            if durable {
                match tokio::spawn(work).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "audited request task failed");
                        Ok(tonic::Status::internal(
                            "the request failed; check its effect before retrying",
                        )
                        .into_http())
                    }
                }
            } else {
                work.await
            }
        })
    }
}

/// Holds a call's record while the call runs; writes it as cancelled if the call's future is
/// dropped before the record was taken to be written (see `call`).
struct CancelGuard {
    sink: Arc<AuditSink>,
    armed: bool,
    record: Record,
    slot: AuditSlot,
}

impl CancelGuard {
    /// The record, to be completed and written by the caller; disarms the guard.
    fn take(&mut self) -> Record {
        self.armed = false;
        std::mem::take(&mut self.record)
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut record = std::mem::take(&mut self.record);
        record.key = self.slot.take().0;
        if let Err(e) = self.sink.write_now(record) {
            tracing::error!(error = %e, "the record of a cancelled call was not written");
        }
    }
}

/// The `kms.v1.Audit` gRPC service.
pub struct AuditService {
    sink: Arc<AuditSink>,
    seal: Arc<crate::Seal>,
    authz: Arc<crate::Authz>,
}

impl AuditService {
    pub fn new(sink: Arc<AuditSink>, seal: Arc<crate::Seal>, authz: Arc<crate::Authz>) -> Self {
        Self { sink, seal, authz }
    }

    /// Both RPCs need the `audit-read` grant.
    fn allow<T>(&self, req: &tonic::Request<T>) -> Result<(), crate::KmsError> {
        let who = crate::principal::of(req)?;
        self.authz.check(
            &who,
            kms_core::policy::Operation::AuditRead,
            None,
            &Default::default(),
        )
    }
}

#[tonic::async_trait]
impl kms_proto::v1::audit_server::Audit for AuditService {
    async fn head(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHeadRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHeadResponse>, tonic::Status> {
        self.allow(&req)?;
        let head = self.sink.seal_head(&self.seal).await?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHeadResponse {
            seq: head.seq,
            hash: head.hash,
            node: self.sink.node().to_string(),
        }))
    }

    async fn hmac(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHmacRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHmacResponse>, tonic::Status> {
        self.allow(&req)?;
        let key = self
            .sink
            .keystore
            .get()
            .and_then(|k| k.audit_key())
            .ok_or(crate::KmsError::Sealed)?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHmacResponse {
            hmac: key.hmac_value(&req.into_inner().value),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            operation_of("/kms.v1.Crypto/GenerateDataKey"),
            "generate-data-key"
        );
        assert_eq!(operation_of("/kms.v1.Operator/Unseal"), "unseal");
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert!(now_rfc3339().ends_with('Z') && now_rfc3339().contains('.'));
    }
}
