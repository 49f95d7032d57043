//! What commands print: `--format`, aligned tables, JSON lines, ISO-8601 times, durations, and
//! writing results to standard output or (atomically) to a file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde_json::Value;
use tempfile::NamedTempFile;

use crate::Failure;
use crate::args::Stream;

/// `--format`: tables and sentences for people, or one JSON object per command for scripts.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Human,
    Json,
}

/// A table with a header row, columns separated by two spaces and padded to the widest cell.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in '\n'; trailing spaces trimmed.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(cell.chars().count()),
                    None => widths.push(cell.chars().count()),
                }
            }
        }
        let mut out = String::new();
        let header = self
            .header
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Unix seconds as ISO-8601 UTC, e.g. `2025-03-01T12:00:00Z`.
pub(crate) fn iso8601(unix: i64) -> String {
    // The server never sends negative times; show one as the epoch rather than panic.
    kms_core::key::fmt_utc(u64::try_from(unix).unwrap_or(0))
}

/// A time field where 0 means "none": ISO-8601, or `None`.
pub(crate) fn time(unix: i64) -> Option<String> {
    (unix != 0).then(|| iso8601(unix))
}

/// A time for a table or a detail line: ISO-8601, or `-` for none.
pub(crate) fn time_or_dash(unix: i64) -> String {
    time(unix).unwrap_or_else(|| "-".into())
}

/// A duration in the largest unit that divides it exactly: `90d`, `12h`, `90m`, `3601s`
/// (what `--rotation-period` accepts back).
pub(crate) fn period(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Writes `bytes` to standard output.
pub(crate) fn stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::usage(format!("cannot write to standard output: {e}")))
}

/// Prints `text` to standard output.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    stdout(text.as_bytes())
}

/// Prints one JSON object on one line.
pub(crate) fn json(value: &Value) -> Result<(), Failure> {
    print(&format!("{value}\n"))
}

/// Writes `bytes` to `dest`: standard output, or a file replaced atomically (see
/// [`TempOutput`]).
pub(crate) fn write_to(dest: &Stream, bytes: &[u8]) -> Result<(), Failure> {
    match dest {
        Stream::Std => stdout(bytes),
        Stream::File(path) => {
            let mut tmp = TempOutput::beside(path)?;
            tmp.file()
                .write_all(bytes)
                .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
            tmp.commit()
        }
    }
}

/// A file being written: a temporary file in the destination's folder, renamed over the
/// destination by [`TempOutput::commit`] only. Dropped without commit (any error), it is
/// deleted and the destination is untouched: no command leaves a partial output file.
///
/// Files are created readable and writable by their owner only (0600 on Unix), since they may
/// hold plaintext.
pub(crate) struct TempOutput {
    tmp: NamedTempFile,
    dest: PathBuf,
}

impl TempOutput {
    /// Creates the temporary file next to `dest` (same folder, so the rename is atomic).
    pub(crate) fn beside(dest: &Path) -> Result<Self, Failure> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "cannot write {}: folder {} does not exist; create it first",
                dest.display(),
                dir.display()
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".kms-cli-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| {
                Failure::usage(format!(
                    "cannot write {}: cannot create a file in {}: {} (check that the folder is writable)",
                    dest.display(),
                    dir.display(),
                    std::io::Error::from(e.kind())
                ))
            })?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Syncs the data and renames the file to the destination, replacing any file there.
    pub(crate) fn commit(self) -> Result<(), Failure> {
        let dest = self.dest;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", dest.display())))?;
        self.tmp.persist(&dest).map_err(|e| {
            Failure::usage(format!("cannot create {}: {}", dest.display(), e.error))
        })?;
        // Make the rename itself durable. Best effort: the file is complete either way, and
        // not every platform can open a folder to sync it.
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// An output file claimed before a request whose result it will hold, so that a bad path is
/// found before the server acts (and audits), not after.
///
/// Without `force`, the destination itself is created exclusively (mode 0600): an existing file
/// is refused, and the empty file holds the name until [`Reserved::commit`]. With `force`, the
/// destination is left alone until the commit replaces it; only the folder is checked. Either
/// way the data goes through a [`TempOutput`], and a reservation dropped without commit (the
/// request failed) removes what it created.
pub(crate) struct Reserved {
    /// Always `Some` until [`Reserved::commit`] takes it.
    tmp: Option<TempOutput>,
    dest: PathBuf,
    /// The empty file created without `force`, removed again unless committed.
    placeholder: Option<PathBuf>,
}

impl Reserved {
    /// Claims `dest`; `flag` names the option in messages (e.g. `--out`).
    ///
    /// Returns: the reservation, or a usage failure (exit 2) saying nothing was sent: the
    /// file exists (give `--force`), is a folder, or cannot be created.
    pub(crate) fn claim(dest: &Path, flag: &str, force: bool) -> Result<Self, Failure> {
        if dest.is_dir() {
            return Err(Failure::usage(format!(
                "{flag} {} is a folder: give a file name; nothing was sent",
                dest.display()
            )));
        }
        let placeholder = if force {
            None
        } else {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(dest) {
                Ok(_) => Some(dest.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Failure::usage(format!(
                        "{flag} {} already exists: give another file, or --force to replace it; \
                         nothing was sent",
                        dest.display()
                    )));
                }
                Err(e) => {
                    return Err(Failure::usage(format!(
                        "cannot create {flag} {}: {e}; nothing was sent",
                        dest.display()
                    )));
                }
            }
        };
        match TempOutput::beside(dest) {
            Ok(tmp) => Ok(Self {
                tmp: Some(tmp),
                dest: dest.to_path_buf(),
                placeholder,
            }),
            Err(f) => {
                if let Some(p) = placeholder {
                    let _ = std::fs::remove_file(p);
                }
                Err(f.hint("; nothing was sent"))
            }
        }
    }

    /// Writes `bytes` and renames them over the destination.
    pub(crate) fn commit(mut self, bytes: &[u8]) -> Result<(), Failure> {
        let Some(mut tmp) = self.tmp.take() else {
            return Err(Failure::usage(format!(
                "cannot write {}",
                self.dest.display()
            )));
        };
        tmp.file()
            .write_all(bytes)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", self.dest.display())))?;
        tmp.commit()?;
        // Renamed over: the placeholder is now the result, to keep.
        self.placeholder = None;
        Ok(())
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(p) = self.placeholder.take() {
            // Best effort: the placeholder is empty, and the error was already reported.
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(iso8601(-1), "1970-01-01T00:00:00Z");
        assert_eq!(time(0), None);
        assert_eq!(time_or_dash(0), "-");
    }

    #[test]
    fn periods_round_trip() {
        for s in ["90d", "12h", "90m", "3601s", "1h"] {
            let p: crate::args::Period = s.parse().expect("valid");
            assert_eq!(period(p.0), s);
        }
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["a-long-name".into(), "enabled".into()]);
        t.row(vec!["b".into(), "disabled".into()]);
        assert_eq!(
            t.render(),
            "NAME         STATE\na-long-name  enabled\nb            disabled\n"
        );
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        drop(TempOutput::beside(&dest).expect("temp"));
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        write_to(&Stream::File(dest.clone()), b"hi").expect("write");
        assert_eq!(std::fs::read(&dest).expect("read"), b"hi");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn reserved_output_refuses_an_existing_file_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        std::fs::write(&dest, b"old").expect("write");
        let e = Reserved::claim(&dest, "--out", false)
            .err()
            .expect("exists");
        assert_eq!(e.code, 2);
        assert!(e.message.contains("already exists"), "{}", e.message);
        assert!(e.message.contains("--force"), "{}", e.message);
        assert_eq!(std::fs::read(&dest).expect("read"), b"old");
        // Forced but not committed (the request failed): the old file stays.
        drop(Reserved::claim(&dest, "--out", true).expect("forced"));
        assert_eq!(std::fs::read(&dest).expect("read"), b"old");
        Reserved::claim(&dest, "--out", true)
            .expect("forced")
            .commit(b"new")
            .expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn reserved_output_is_created_before_and_removed_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        let claim = Reserved::claim(&dest, "--out", false).expect("claim");
        assert!(dest.exists(), "the name is held before the request");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dest).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(claim);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        Reserved::claim(&dest, "--out", false)
            .expect("claim")
            .commit(b"data")
            .expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), b"data");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
        for bad in [dir.path().to_path_buf(), dir.path().join("no/such/dir/f")] {
            let e = Reserved::claim(&bad, "--out", false).err().expect("bad");
            assert_eq!(e.code, 2);
            assert!(e.message.ends_with("nothing was sent"), "{}", e.message);
        }
    }
}
