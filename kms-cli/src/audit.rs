//! `kms-cli audit verify`: checks audit log files offline (sequence, hash chain, sealed head).
//!
//! Nothing here connects to the server: an auditor can verify copies of the log on any
//! machine. The format and the checks are `kms_core::audit`'s (see `docs/audit-format.md`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kms_core::audit::{Head, Verifier, VerifyError, VerifyReport};
use serde_json::json;

use crate::Failure;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub(crate) enum Audit {
    /// Verify audit log files offline: every line a record, seq numbers without gaps, each
    /// line's prev the hash of the line before, and (with --head) no cut tail.
    #[command(after_help = "Examples:\n  \
        kms-cli audit verify /var/lib/kms/audit/audit.log\n  \
        kms-cli audit verify audit.log.1 audit.log.2 audit.log --head head.json\n  \
        kms-cli audit verify audit.log --format json\n\n\
        Give every file of the log, oldest first: the chain starts at seq 1 and continues \
        across files. HEADFILE is the sealed head exported from the server, \
        {\"seq\":N,\"hash\":\"<64 hex digits>\"}; without it a cut tail cannot be seen.\n\n\
        Prints `OK: N records, head seq S hash H`, or the first bad line as `FILE:LINE: reason`. \
        Exit codes: 0 the log verifies, 1 it does not, 2 a file cannot be read.")]
    Verify {
        /// The log files, oldest first (rotated files, then the current one).
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// The sealed head exported from the server (JSON); the log must reach it.
        #[arg(long, value_name = "HEADFILE")]
        head: Option<PathBuf>,
    },
    /// Seal the server's current audit chain head and print it as JSON, for `verify --head`
    /// (needs the `audit-read` grant; connects to the server).
    #[command(
        after_help = "Example:\n  kms-cli audit head > head.json\n  kms-cli audit verify audit.log --head head.json"
    )]
    Head,
    /// The HMAC the audit log records for an encryption-context value, to search the log
    /// (needs the `audit-read` grant; connects to the server).
    #[command(after_help = "Example:\n  grep \"$(kms-cli audit hmac acme)\" audit.log")]
    Hmac {
        /// The context value to look for.
        value: String,
    },
}

/// Runs `audit verify`. Offline: never connects.
///
/// Exit codes: 0 the log verifies (a torn last line is reported, not an error); 1 it does not
/// (the first bad line is named as `FILE:LINE: reason`); 2 a file or the head file cannot be
/// read or the head file is not a head.
pub(crate) async fn run(cmd: Audit, conn: &crate::Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Audit::Head => {
            let client = crate::connect(conn).await?;
            let h = client
                .call(
                    kms_client::proto::audit_client::AuditClient::new(client.channel())
                        .head(kms_client::proto::AuditHeadRequest {}),
                )
                .await?;
            // Always JSON: it is meant for a file that `verify --head` reads.
            output::json(&json!({"seq": h.seq, "hash": h.hash}))
        }
        Audit::Hmac { value } => {
            let client = crate::connect(conn).await?;
            let h = client
                .call(
                    kms_client::proto::audit_client::AuditClient::new(client.channel())
                        .hmac(kms_client::proto::AuditHmacRequest { value }),
                )
                .await?;
            match fmt {
                Format::Json => output::json(&json!({"hmac": h.hmac})),
                Format::Human => output::print(&format!("{}\n", h.hmac)),
            }
        }
        Audit::Verify { files, head } => {
            let head = head.as_deref().map(read_head).transpose()?;
            match verify_files(&files, head.clone())? {
                Ok(report) => print_ok(&report, head.as_ref(), fmt),
                Err(bad) => {
                    if fmt == Format::Json {
                        output::json(&json!({
                            "ok": false,
                            "file": bad.file.as_ref().map(|f| f.display().to_string()),
                            "line": bad.line,
                            "error": bad.message,
                        }))?;
                    }
                    Err(Failure {
                        code: 1,
                        message: bad.message,
                    })
                }
            }
        }
    }
}

/// Reads and checks `--head`: `{"seq":N,"hash":"<64 hex digits>"}`.
fn read_head(path: &Path) -> Result<Head, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let not_a_head = |why: String| {
        Failure::usage(format!(
            "{} is not a sealed audit head: {why}; expected {{\"seq\":N,\"hash\":\"<64 hex \
             digits>\"}} as exported from the server",
            path.display()
        ))
    };
    let mut head: Head = serde_json::from_str(&text).map_err(|e| not_a_head(e.to_string()))?;
    head.hash.make_ascii_lowercase();
    if head.hash.len() != 64 || !head.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_a_head("the hash is not 64 hex digits".into()));
    }
    Ok(head)
}

/// The first bad line, located in its file.
struct BadLine {
    file: Option<PathBuf>,
    line: Option<usize>,
    message: String,
}

/// Where each file's lines start in the concatenation [`Verifier`] sees.
struct Files {
    /// (file, number of lines before it).
    starts: Vec<(PathBuf, usize)>,
}

impl Files {
    /// The file and 1-based line in it of `global` (1-based over all files), if any.
    fn locate(&self, global: usize) -> Option<(&Path, usize)> {
        self.starts
            .iter()
            .rev()
            .find(|(_, before)| *before < global)
            .map(|(f, before)| (f.as_path(), global - before))
    }

    fn name(&self, global: usize) -> String {
        match self.locate(global) {
            Some((f, n)) => format!("{}:{n}", f.display()),
            None => self
                .starts
                .last()
                .map(|(f, _)| f.display().to_string())
                .unwrap_or_default(),
        }
    }

    fn bad(&self, e: &VerifyError) -> BadLine {
        let message = match e {
            VerifyError::Bad { line, reason } => format!("{}: {reason}", self.name(*line)),
            VerifyError::Broken { line, next } => format!(
                "{}: hash of this line does not match prev of {}: this line was edited (or \
                 the prev field of the next one)",
                self.name(*line),
                self.name(*next)
            ),
            VerifyError::HeadMismatch { line, seq } => format!(
                "{}: this line (seq {seq}) does not hash to the sealed head: it was edited",
                self.name(*line)
            ),
            VerifyError::Truncated {
                line,
                last_seq,
                sealed_seq,
            } => format!(
                "{}: log ends at seq {last_seq} but the sealed head is seq {sealed_seq}: \
                 records after seq {last_seq} were removed (the tail was cut, or a later file \
                 is missing)",
                self.name(*line)
            ),
            VerifyError::Resume(_) => e.to_string(),
        };
        let loc = e.line().and_then(|l| self.locate(l));
        BadLine {
            file: loc
                .map(|(f, _)| f.to_path_buf())
                .or_else(|| self.starts.last().map(|(f, _)| f.clone())),
            line: loc.map(|(_, n)| n),
            message,
        }
    }
}

/// Streams every line of `paths` through a [`Verifier`].
///
/// Returns `Err(Failure)` (exit 2) if a file cannot be read, `Ok(Err(BadLine))` for the first
/// bad line, `Ok(Ok(report))` if the log verifies.
fn verify_files(
    paths: &[PathBuf],
    head: Option<Head>,
) -> Result<Result<VerifyReport, BadLine>, Failure> {
    let mut verifier = Verifier::new(head);
    let mut files = Files { starts: Vec::new() };
    let mut total = 0usize;
    for path in paths {
        let cannot =
            |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", path.display()));
        let mut reader = BufReader::new(File::open(path).map_err(cannot)?);
        files.starts.push((path.clone(), total));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(cannot)? == 0 {
                break;
            }
            total += 1;
            let had_newline = buf.last() == Some(&b'\n');
            if had_newline {
                buf.pop();
            }
            let line = match std::str::from_utf8(&buf) {
                Ok(s) => s.to_string(),
                // A torn last line may end inside a multi-byte character; it is still torn.
                Err(_) if !had_newline => String::from_utf8_lossy(&buf).into_owned(),
                Err(_) => {
                    return Ok(Err(files.bad(&VerifyError::Bad {
                        line: total,
                        reason: "not UTF-8 text: the server writes only JSON text, so this \
                                 line was altered"
                            .into(),
                    })));
                }
            };
            if let Err(e) = verifier.push(&line, had_newline) {
                return Ok(Err(files.bad(&e)));
            }
        }
    }
    Ok(verifier.finish().map_err(|e| files.bad(&e)))
}

fn print_ok(report: &VerifyReport, head: Option<&Head>, fmt: Format) -> Result<(), Failure> {
    if fmt == Format::Json {
        return output::json(&json!({
            "ok": true,
            "records": report.records,
            "head": { "seq": report.head.seq, "hash": report.head.hash },
            "torn_last_line": report.torn_last_line,
            "sealed_head_checked": head.is_some(),
        }));
    }
    let mut text = format!(
        "OK: {} records, head seq {} hash {}\n",
        report.records, report.head.seq, report.head.hash
    );
    if let Some(h) = head {
        text.push_str(&format!(
            "the log reaches the sealed head (seq {}) and matches it\n",
            h.seq
        ));
    } else {
        text.push_str("no --head given: a cut tail cannot be detected\n");
    }
    if report.torn_last_line {
        text.push_str("last line torn (an unacknowledged request)\n");
    }
    output::print(&text)
}
