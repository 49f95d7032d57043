//! The audit log file: appends, the chain, group-committed fsyncs, reopening and rotation.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kms_core::audit::{Chain, Record};
use tokio::sync::oneshot;

use super::sink::{RECHECK, Shared, answer, lock};

/// Failed batches remembered for their waiters.
const FAILURES_REMEMBERED: usize = 16;

/// The file and the chain; behind the sink's mutex.
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) node: String,
    /// Rotate the file once it reaches this size (0: never).
    pub(super) max_bytes: u64,
    /// The open file, its inode and its length; None after a failed write.
    pub(super) file: Option<(Arc<File>, u64, u64)>,
    pub(super) chain: Chain,
    pub(super) generation: u64,
    /// When `ensure_open` last checked the path.
    pub(super) checked: Instant,
    /// Data-plane lines chained but not yet written, and how many.
    pub(super) buf: String,
    pub(super) buf_lines: u64,
    /// Tickets issued to buffered records (the last one's number).
    pub(super) tickets: u64,
    /// A leader will write the buffer.
    pub(super) flushing: bool,
    /// Ticket ranges whose batch could not be written, with the reason.
    pub(super) failed: std::collections::VecDeque<(u64, u64, String)>,
    /// The last ticket of the newest range dropped from `failed`: a waiter at or below it
    /// that finds no range is refused (it may have been in a forgotten failed batch).
    pub(super) forgotten: u64,
}

impl Writer {
    /// Makes sure `self.file` is the file at the path: reopens it if it was replaced, after
    /// a failed write, or after a failed fsync. One `stat`.
    pub(super) fn ensure_open(&mut self, shared: &Shared) -> Result<(), String> {
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
    pub(super) fn reserve(&self) -> Result<(), String> {
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
    pub(super) fn push(
        &mut self,
        shared: &Shared,
        mut record: Record,
    ) -> Result<(u64, bool), String> {
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
    pub(super) fn write_buffered(&mut self, shared: &Shared) -> Result<(), String> {
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
    pub(super) fn append_durable(
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
pub(super) fn sync_loop(shared: &Shared) {
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

pub(super) fn open_and_resume(path: &Path) -> Result<(File, u64, Chain), String> {
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
