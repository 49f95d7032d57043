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
}
