//! The audit log format: one JSON record per line, hash-chained, with HMAC'd context values.
//!
//! Pure: no files, no clock. The server's sink gives each [`Record`] to a [`Chain`], which
//! fills `seq` and `prev` and returns the exact line to write; [`verify`] (and the streaming
//! [`Verifier`] behind it) checks a log offline, as `kms-cli audit verify` does. The format is
//! specified in `docs/audit-format.md`.
//!
//! Guarantees of the chain:
//! - `seq` starts at 1 and grows by exactly 1 per line, across restarts and file rotation
//!   (a new file continues from [`Chain::resume`] on the previous file's last line).
//! - `prev` is the hex SHA-256 of the previous line's exact bytes (without its `'\n'`), or 64
//!   zeros for the first record. The hash is over the bytes as written, so no JSON
//!   canonicalisation is needed: any change to a line, however small, changes its hash.
//! - Editing, deleting, reordering or inserting a line breaks the chain at that point. Cutting
//!   the tail is not visible from the lines alone: it is detected against a sealed [`Head`]
//!   the server stores elsewhere.

use std::collections::BTreeMap;
use std::fmt;

use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

use crate::Secret32;

/// `prev` of the first record of a chain: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record: one request (allowed, denied or failed) or one seal operation.
///
/// **Never put secrets here.** The caller must not store plaintext, data keys, shares, TOTP
/// codes, tokens or any key material in any field, including `error`; encryption-context
/// values go only through [`context_hmacs`]. Everything in a record is readable by whoever can
/// read the log file.
///
/// The JSON line is `serde_json::to_string(&record)`: fields in the order below, `null` for a
/// `None`. Readers ignore unknown fields, so fields may be added (at the end) later.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Sequence number, 1 for the first record of the chain; set by [`Chain::append`].
    pub seq: u64,
    /// When the request was received, RFC 3339 UTC with milliseconds, e.g.
    /// `2026-11-28T04:00:00.123Z` (given by the caller).
    pub time: String,
    /// The request id (also returned to the client), to match a log line with a call.
    pub request_id: String,
    /// The node that served the request.
    pub node: String,
    /// The authenticated principal (from the client certificate), or `""` if none.
    pub principal: String,
    /// The peer's address, `IP:port`.
    pub peer: String,
    /// The operation name, as in the policies (`encrypt`, `create`, `unseal`, …).
    pub operation: String,
    /// The key name the request is about, if any.
    pub key: Option<String>,
    /// The key version used or created, if any.
    pub version: Option<u32>,
    /// `"ok"`, `"denied"` or `"error"`.
    pub outcome: String,
    /// The gRPC status code name, e.g. `OK`, `PERMISSION_DENIED`, `UNAVAILABLE`.
    pub code: String,
    /// Why it failed or was denied (never a secret), if it did.
    pub error: Option<String>,
    /// Encryption context: key → hex HMAC-SHA256 of the value under the audit key.
    pub context_hmac: BTreeMap<String, String>,
    /// Hex SHA-256 of the previous line's bytes, [`GENESIS_PREV`] for the first record; set by
    /// [`Chain::append`].
    pub prev: String,
}

/// The key that HMACs encryption-context values, derived from the keyring by the caller.
///
/// `Debug` never shows the bytes; they are zeroized on drop (through [`Secret32`]).
pub struct AuditKey(Secret32);

impl AuditKey {
    /// Wraps the audit key.
    pub fn from_secret(s: Secret32) -> Self {
        Self(s)
    }

    /// Hex HMAC-SHA256 of `value` (64 lowercase hex digits). Deterministic for one key, so an
    /// auditor with the right can compute it for a known value and search the log for it.
    pub fn hmac_value(&self, value: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.0.expose());
        hex::encode(hmac::sign(&key, value.as_bytes()).as_ref())
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// The `context_hmac` field for an encryption context: each key kept, each value replaced by
/// [`AuditKey::hmac_value`]. Works with any map of `String` to `String`.
pub fn context_hmacs<'a>(
    key: &AuditKey,
    context: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    let hkey = hmac::Key::new(hmac::HMAC_SHA256, key.0.expose());
    context
        .into_iter()
        .map(|(k, v)| {
            let tag = hmac::sign(&hkey, v.as_bytes());
            (k.clone(), hex::encode(tag.as_ref()))
        })
        .collect()
}

/// The end of a chain: the last sequence number written and the hash of its line.
///
/// The server seals it into storage periodically; `kms-cli audit verify --head` checks that the
/// log reaches it. As JSON: `{"seq":42,"hash":"…64 hex…"}`. An empty chain's head is seq 0 and
/// [`GENESIS_PREV`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last sequence number written (0: none).
    pub seq: u64,
    /// Hex SHA-256 of that record's line.
    pub hash: String,
}

/// The writer's state: the next sequence number and the hash of the last line.
#[derive(Clone, Debug)]
pub struct Chain {
    next_seq: u64,
    head: [u8; 32],
}

impl Chain {
    /// A new chain: the next record gets seq 1 and `prev` = [`GENESIS_PREV`].
    pub fn genesis() -> Self {
        Self {
            next_seq: 1,
            head: [0; 32],
        }
    }

    /// Continues after `last_line`, the last complete line (without `'\n'`) of an existing log:
    /// the next record gets its seq + 1 and `prev` = its hash. Used at start-up and when a new
    /// file is started by rotation. A torn final line (no `'\n'`) is not a record: the sink
    /// passes the last line that ends in `'\n'`.
    ///
    /// Returns [`VerifyError::Resume`] if `last_line` is not an audit record.
    pub fn resume(last_line: &str) -> Result<Self, VerifyError> {
        let record: Record = serde_json::from_str(last_line).map_err(|e| {
            VerifyError::Resume(format!("the last line is not an audit record: {e}"))
        })?;
        let next_seq = record.seq.checked_add(1).ok_or_else(|| {
            VerifyError::Resume("the last line's seq is the largest possible".into())
        })?;
        Ok(Self {
            next_seq,
            head: sha256(last_line),
        })
    }

    /// Fills `seq` and `prev`, returns the JSON line (no newline) and advances the head.
    ///
    /// The caller writes exactly these bytes followed by `'\n'`. If the write fails, the
    /// caller must not reuse this chain state (the head has moved on): it resumes from the
    /// file's actual last line instead.
    pub fn append(&mut self, mut record: Record) -> String {
        record.seq = self.next_seq;
        record.prev = hex::encode(self.head);
        // Invariant: a Record is strings, integers, options and a string map; serializing it
        // to a String cannot fail.
        let line = serde_json::to_string(&record).expect("a Record always serializes");
        self.head = sha256(&line);
        self.next_seq += 1;
        line
    }

    /// The last record written (seq 0 and [`GENESIS_PREV`] if none).
    pub fn head(&self) -> Head {
        Head {
            seq: self.next_seq - 1,
            hash: hex::encode(self.head),
        }
    }
}

fn sha256(line: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, line.as_bytes()).as_ref());
    out
}

/// What a successful verification found.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Number of records (complete lines) checked.
    pub records: u64,
    /// The last record: its seq and the hash of its line.
    pub head: Head,
    /// The very last line had no `'\n'` and was not a complete record: a write cut short by a
    /// crash, for a request that was never acknowledged. Not an error.
    pub torn_last_line: bool,
}

/// Why a log does not verify. Line numbers are 1-based and count over all files given, in
/// order; [`VerifyError::line`] gives the line to point at.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum VerifyError {
    /// The line itself is wrong: not a record, wrong seq, wrong first record.
    #[error("line {line}: {reason}")]
    Bad { line: usize, reason: String },
    /// Line `line` parses, but its hash is not the `prev` of line `next` (= `line` + 1): line
    /// `line` was edited, or line `next`'s `prev` field was.
    #[error(
        "line {line}: hash of line {line} does not match prev of line {next}: line {line} was \
         edited (or the prev field of line {next})"
    )]
    Broken { line: usize, next: usize },
    /// The record with the sealed head's seq does not hash to the sealed hash.
    #[error(
        "line {line}: the hash of this line (seq {seq}) does not match the sealed head: the \
         line was edited"
    )]
    HeadMismatch { line: usize, seq: u64 },
    /// The log stops before the sealed head: its tail was cut (or files are missing).
    #[error(
        "log ends at seq {last_seq} but the sealed head is seq {sealed_seq}: records after \
         seq {last_seq} were removed (the tail was cut, or a later file is missing)"
    )]
    Truncated {
        /// The last record line; the torn line if it is the only line; 0 if none.
        line: usize,
        last_seq: u64,
        sealed_seq: u64,
    },
    /// [`Chain::resume`] was given a line that is not an audit record.
    #[error("cannot resume the audit chain: {0}")]
    Resume(String),
}

impl VerifyError {
    /// The line to point at (1-based over all files), if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Bad { line, .. }
            | Self::Broken { line, .. }
            | Self::HeadMismatch { line, .. }
            | Self::Truncated { line, .. } => Some(*line),
            Self::Resume(_) => None,
        }
    }
}

/// Checks a log line by line, for logs too large to hold in memory; [`verify`] drives it.
///
/// Feed every line of every file, oldest file first, with [`Verifier::push`], then call
/// [`Verifier::finish`]. Stops at the first error.
#[derive(Debug)]
pub struct Verifier {
    expected_head: Option<Head>,
    /// Lines pushed so far.
    lines: usize,
    /// Line number of a torn line (no newline, not a record) seen last, if any.
    torn: Option<usize>,
    records: u64,
    last_seq: u64,
    last_hash: [u8; 32],
}

impl Verifier {
    /// `expected_head`: the sealed head exported from the server, if any; the log must then
    /// contain it (same seq, same hash) and not end before it.
    pub fn new(expected_head: Option<Head>) -> Self {
        Self {
            expected_head,
            lines: 0,
            torn: None,
            records: 0,
            last_seq: 0,
            last_hash: [0; 32],
        }
    }

    /// Checks the next line (`line` without its `'\n'`; `had_newline` whether it had one).
    ///
    /// Returns: `Ok` if the line continues the chain, or is a torn line (then only
    /// [`Verifier::finish`] may follow); [`VerifyError::Bad`] for a line that is not a record,
    /// a wrong seq or a wrong first record; [`VerifyError::Broken`] if its `prev` is not the
    /// previous line's hash; [`VerifyError::HeadMismatch`] if it has the sealed head's seq but
    /// not its hash.
    pub fn push(&mut self, line: &str, had_newline: bool) -> Result<(), VerifyError> {
        self.push_record(line, had_newline).map(drop)
    }

    /// [`Verifier::push`], also returning the record the line holds (`None` for a torn line),
    /// so a caller can check more of it (e.g. that every record of a file names one node)
    /// without parsing the line a second time.
    pub fn push_record(
        &mut self,
        line: &str,
        had_newline: bool,
    ) -> Result<Option<Record>, VerifyError> {
        if let Some(torn) = self.torn {
            return Err(VerifyError::Bad {
                line: torn,
                reason: "incomplete line (no newline, not a record) followed by more lines: \
                         only the very last line may be torn"
                    .into(),
            });
        }
        self.lines += 1;
        let n = self.lines;
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            // A write cut short by a crash: a prefix of a record, never a complete one.
            Err(_) if !had_newline => {
                self.torn = Some(n);
                return Ok(None);
            }
            Err(e) => {
                return Err(VerifyError::Bad {
                    line: n,
                    reason: format!("not an audit record: {e}"),
                });
            }
        };
        let expected = self.last_seq + 1;
        if record.seq != expected {
            let reason = if self.records == 0 {
                format!(
                    "the chain starts at seq {}, not 1: give every log file, oldest first",
                    record.seq
                )
            } else if record.seq > expected {
                format!(
                    "seq {} follows seq {}: {} record(s) missing before this line (deleted), or \
                     lines out of order",
                    record.seq,
                    self.last_seq,
                    record.seq - expected
                )
            } else {
                format!(
                    "seq {} follows seq {}: lines out of order or repeated",
                    record.seq, self.last_seq
                )
            };
            return Err(VerifyError::Bad { line: n, reason });
        }
        if record.prev != hex::encode(self.last_hash) {
            return Err(if self.records == 0 {
                VerifyError::Bad {
                    line: n,
                    reason: "the first record's prev is not 64 zeros".into(),
                }
            } else {
                VerifyError::Broken {
                    line: n - 1,
                    next: n,
                }
            });
        }
        let hash = sha256(line);
        if let Some(head) = &self.expected_head
            && head.seq == record.seq
            && head.hash != hex::encode(hash)
        {
            return Err(VerifyError::HeadMismatch {
                line: n,
                seq: record.seq,
            });
        }
        self.records += 1;
        self.last_seq = record.seq;
        self.last_hash = hash;
        Ok(Some(record))
    }

    /// Ends the check. Returns [`VerifyError::Truncated`] if a sealed head was given and the
    /// log ends before it; else the report.
    pub fn finish(self) -> Result<VerifyReport, VerifyError> {
        if let Some(head) = &self.expected_head
            && self.last_seq < head.seq
        {
            // The last record line; when a torn line is all there is, that line (the place
            // the log was cut), so the error names a line of the file whenever it has one.
            let records = self.lines - usize::from(self.torn.is_some());
            return Err(VerifyError::Truncated {
                line: if records == 0 { self.lines } else { records },
                last_seq: self.last_seq,
                sealed_seq: head.seq,
            });
        }
        Ok(VerifyReport {
            records: self.records,
            head: Head {
                seq: self.last_seq,
                hash: hex::encode(self.last_hash),
            },
            torn_last_line: self.torn.is_some(),
        })
    }
}

/// Verifies lines in order (several files concatenated in order): JSON parse, seq = previous
/// + 1 (starting at 1), prev = SHA-256 of the previous line (64 zeros for the first).
///
/// A final line without `'\n'` that does not parse is reported as torn
/// ([`VerifyReport::torn_last_line`], not an error); anywhere else it is an error.
/// `expected_head`: if given (exported from the server), the chain must contain it and must
/// not end before it (a cut tail is [`VerifyError::Truncated`], naming both seq numbers).
/// Records after the sealed head are fine: they were written after it was sealed.
///
/// Returns the first error, as [`Verifier::push`] and [`Verifier::finish`] describe.
pub fn verify(
    reader_lines: impl Iterator<Item = (String, bool)>,
    expected_head: Option<&Head>,
) -> Result<VerifyReport, VerifyError> {
    let mut v = Verifier::new(expected_head.cloned());
    for (line, had_newline) in reader_lines {
        v.push(&line, had_newline)?;
    }
    v.finish()
}

/// Splits text into `(line without '\n', had newline)` pairs, as [`verify`] takes them. A
/// trailing `'\n'` does not start an extra empty line.
pub fn lines_of(text: &str) -> impl Iterator<Item = (String, bool)> + '_ {
    text.split_inclusive('\n')
        .map(|l| match l.strip_suffix('\n') {
            Some(l) => (l.to_string(), true),
            None => (l.to_string(), false),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str) -> Record {
        Record {
            seq: 0,
            time: "2026-11-28T04:00:00.123Z".into(),
            request_id: format!("req-{op}"),
            node: "node-1".into(),
            principal: "spiffe://example.org/payments".into(),
            peer: "127.0.0.1:50000".into(),
            operation: op.into(),
            key: Some("payments/cards".into()),
            version: Some(1),
            outcome: "ok".into(),
            code: "OK".into(),
            error: None,
            context_hmac: BTreeMap::new(),
            prev: String::new(),
        }
    }

    /// Five lines from a fresh chain, and the chain.
    fn five() -> (Vec<String>, Chain) {
        let mut chain = Chain::genesis();
        let lines = (0..5)
            .map(|i| chain.append(record(&format!("op{i}"))))
            .collect();
        (lines, chain)
    }

    fn check(lines: &[String], head: Option<&Head>) -> Result<VerifyReport, VerifyError> {
        verify(lines.iter().map(|l| (l.clone(), true)), head)
    }

    #[test]
    fn a_chain_of_five_verifies() {
        let (lines, chain) = five();
        let report = check(&lines, Some(&chain.head())).expect("verifies");
        assert_eq!(report.records, 5);
        assert_eq!(report.head, chain.head());
        assert_eq!(report.head.seq, 5);
        assert!(!report.torn_last_line);
        let first: Record = serde_json::from_str(&lines[0]).expect("record");
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev, GENESIS_PREV);
        // Through the text helper, with a final newline.
        let text = lines.join("\n") + "\n";
        assert_eq!(verify(lines_of(&text), None), Ok(report));
    }

    #[test]
    fn empty_chain() {
        let report = check(&[], Some(&Chain::genesis().head())).expect("verifies");
        assert_eq!(report.records, 0);
        assert_eq!(report.head.seq, 0);
        assert_eq!(report.head.hash, GENESIS_PREV);
    }

    #[test]
    fn editing_a_line_names_it_and_the_next() {
        let (mut lines, _) = five();
        lines[2] = lines[2].replace("op2", "op9");
        let err = check(&lines, None).expect_err("edited");
        assert_eq!(err, VerifyError::Broken { line: 3, next: 4 });
        assert_eq!(err.line(), Some(3));
        let msg = err.to_string();
        assert!(
            msg.contains("hash of line 3 does not match prev of line 4"),
            "{msg}"
        );
    }

    #[test]
    fn editing_the_seq_of_a_line_is_a_seq_error() {
        let (mut lines, _) = five();
        lines[2] = lines[2].replace("\"seq\":3", "\"seq\":7");
        let err = check(&lines, None).expect_err("edited");
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("seq 7 follows seq 2"), "{err}");
    }

    #[test]
    fn editing_the_last_line_is_caught_by_the_head() {
        let (mut lines, chain) = five();
        lines[4] = lines[4].replace("op4", "op9");
        // Nothing follows the last line: only the sealed head can tell.
        assert!(check(&lines, None).is_ok());
        let err = check(&lines, Some(&chain.head())).expect_err("edited");
        assert_eq!(err, VerifyError::HeadMismatch { line: 5, seq: 5 });
    }

    #[test]
    fn deleting_a_line_is_a_seq_gap_at_the_line_after() {
        let (mut lines, _) = five();
        lines.remove(2);
        let err = check(&lines, None).expect_err("deleted");
        assert_eq!(err.line(), Some(3));
        let msg = err.to_string();
        assert!(msg.contains("seq 4 follows seq 2"), "{msg}");
        assert!(msg.contains("1 record(s) missing"), "{msg}");
    }

    #[test]
    fn swapping_two_lines_is_an_error() {
        let (mut lines, _) = five();
        lines.swap(1, 3);
        let err = check(&lines, None).expect_err("swapped");
        assert_eq!(err.line(), Some(2));
        assert!(err.to_string().contains("seq 4 follows seq 1"), "{err}");
        // Swapping lines and their seq numbers (a rewrite without the hashes) breaks the chain.
        let (mut lines, _) = five();
        lines.swap(1, 2);
        lines[1] = lines[1].replace("\"seq\":3", "\"seq\":2");
        lines[2] = lines[2].replace("\"seq\":2", "\"seq\":3");
        let err = check(&lines, None).expect_err("swapped");
        assert!(matches!(err, VerifyError::Broken { .. }), "{err}");
    }

    #[test]
    fn cutting_the_tail_is_caught_by_the_head() {
        let (mut lines, chain) = five();
        lines.truncate(3);
        assert!(check(&lines, None).is_ok(), "undetectable without the head");
        let err = check(&lines, Some(&chain.head())).expect_err("cut");
        assert_eq!(
            err,
            VerifyError::Truncated {
                line: 3,
                last_seq: 3,
                sealed_seq: 5
            }
        );
        assert!(
            err.to_string()
                .contains("log ends at seq 3 but the sealed head is seq 5"),
            "{err}"
        );
    }

    #[test]
    fn records_after_the_sealed_head_are_fine() {
        let (lines, _) = five();
        let mut chain = Chain::genesis();
        for _ in 0..3 {
            chain.append(record("x"));
        }
        // A head sealed at seq 3 of a different chain does not match this one.
        let err = check(&lines, Some(&chain.head())).expect_err("other chain");
        assert_eq!(err, VerifyError::HeadMismatch { line: 3, seq: 3 });
        // The head sealed at seq 3 of this chain, with two records written after it.
        let head = Chain::resume(&lines[2]).expect("resume").head();
        assert_eq!(head.seq, 3);
        assert_eq!(check(&lines, Some(&head)).map(|r| r.records), Ok(5));
    }

    /// Found by `proptest_audit`: a log of one record whose newline became another byte is a
    /// torn line only, cut before the sealed head; the error names that line, not line 0.
    #[test]
    fn a_lone_torn_line_before_the_head_names_its_line() {
        let mut chain = Chain::genesis();
        let line = chain.append(record("create-key"));
        let text = format!("{line}\0");
        let err = verify(lines_of(&text), Some(&chain.head())).expect_err("cut");
        assert_eq!(err.line(), Some(1), "{err:?}");
        assert!(
            matches!(err, VerifyError::Truncated { last_seq: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_torn_last_line_is_reported_not_an_error() {
        let (lines, chain) = five();
        let mut text = lines.join("\n") + "\n";
        let sixth = Chain::resume(&lines[4])
            .expect("resume")
            .append(record("op5"));
        text.push_str(&sixth[..sixth.len() / 2]);
        let report = verify(lines_of(&text), Some(&chain.head())).expect("torn is fine");
        assert!(report.torn_last_line);
        assert_eq!(report.records, 5);
        assert_eq!(report.head, chain.head());
    }

    #[test]
    fn a_torn_line_in_the_middle_is_an_error() {
        let (lines, _) = five();
        let mut input: Vec<(String, bool)> = lines.iter().map(|l| (l.clone(), true)).collect();
        input[2] = (lines[2][..10].to_string(), false);
        let err = verify(input.into_iter(), None).expect_err("torn in the middle");
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("only the very last line"), "{err}");
        // A complete line without a newline between files is a normal record.
        let input = lines.iter().enumerate().map(|(i, l)| (l.clone(), i != 2));
        assert_eq!(verify(input, None).map(|r| r.records), Ok(5));
    }

    #[test]
    fn push_record_returns_each_record_and_none_for_a_torn_line() {
        let (lines, _) = five();
        let mut v = Verifier::new(None);
        for (i, l) in lines.iter().enumerate() {
            let r = v.push_record(l, true).expect("chains").expect("a record");
            assert_eq!((r.seq, r.node.as_str()), (i as u64 + 1, "node-1"));
        }
        assert_eq!(v.push_record("{\"seq\":6,\"ti", false), Ok(None));
        assert_eq!(v.finish().map(|r| r.torn_last_line), Ok(true));
    }

    #[test]
    fn a_garbage_line_is_named() {
        let (mut lines, _) = five();
        lines.insert(2, "hello".into());
        let err = check(&lines, None).expect_err("garbage");
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("not an audit record"), "{err}");
    }

    #[test]
    fn the_chain_must_start_at_genesis() {
        let (lines, _) = five();
        let err = check(&lines[2..], None).expect_err("no start");
        assert_eq!(err.line(), Some(1));
        assert!(err.to_string().contains("starts at seq 3, not 1"), "{err}");
        let mut first: Record = serde_json::from_str(&lines[0]).expect("record");
        first.prev = "ab".repeat(32);
        let forged = serde_json::to_string(&first).expect("json");
        let err = check(&[forged], None).expect_err("forged prev");
        assert!(err.to_string().contains("first record's prev"), "{err}");
    }

    #[test]
    fn resume_continues_the_chain_across_files() {
        let mut chain = Chain::genesis();
        let file1: Vec<String> = (0..3).map(|_| chain.append(record("a"))).collect();
        // A restart: the writer knows only the first file's last line.
        let mut chain = Chain::resume(file1.last().expect("line")).expect("resume");
        assert_eq!(chain.head().seq, 3);
        let file2: Vec<String> = (0..2).map(|_| chain.append(record("b"))).collect();
        let all: Vec<String> = file1.iter().chain(&file2).cloned().collect();
        let report = check(&all, Some(&chain.head())).expect("verifies");
        assert_eq!(report.records, 5);
        assert_eq!(report.head, chain.head());
        assert!(matches!(
            Chain::resume("{\"seq\":"),
            Err(VerifyError::Resume(_))
        ));
    }

    #[test]
    fn hmac_is_deterministic_and_differs_per_key() {
        let k1 = AuditKey::from_secret(Secret32::from_bytes([1; 32]));
        let k1b = AuditKey::from_secret(Secret32::from_bytes([1; 32]));
        let k2 = AuditKey::from_secret(Secret32::from_bytes([2; 32]));
        let h = k1.hmac_value("tenant-42");
        assert_eq!(h.len(), 64);
        assert_eq!(h, k1b.hmac_value("tenant-42"));
        assert_ne!(h, k2.hmac_value("tenant-42"));
        assert_ne!(h, k1.hmac_value("tenant-43"));
        // RFC 4231 test case 2 pins the construction (HMAC-SHA256, hex).
        let jefe: [u8; 32] = *b"Jefe\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(
            AuditKey::from_secret(Secret32::from_bytes(jefe))
                .hmac_value("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(!format!("{k1:?}").contains("01"), "{k1:?}");
    }

    #[test]
    fn a_record_holds_only_the_hmac_of_a_context_value() {
        let key = AuditKey::from_secret(Secret32::from_bytes([7; 32]));
        let mut context = std::collections::HashMap::new();
        context.insert("tenant".to_string(), "ACME-secret-tenant".to_string());
        let mut r = record("encrypt");
        r.context_hmac = context_hmacs(&key, &context);
        let line = Chain::genesis().append(r);
        assert!(!line.contains("ACME-secret-tenant"), "{line}");
        assert!(line.contains("\"tenant\""), "{line}");
        assert!(
            line.contains(&key.hmac_value("ACME-secret-tenant")),
            "{line}"
        );
    }

    #[test]
    fn line_fields_are_in_struct_order() {
        let line = Chain::genesis().append(record("encrypt"));
        assert!(line.starts_with("{\"seq\":1,\"time\":"), "{line}");
        assert!(
            line.ends_with(&format!(
                "\"context_hmac\":{{}},\"prev\":\"{GENESIS_PREV}\"}}"
            )),
            "{line}"
        );
    }

    /// The example in `docs/audit-format.md`, frozen: the exact bytes, hashes and HMAC.
    #[test]
    fn frozen_example_from_the_docs() {
        let key = AuditKey::from_secret(Secret32::from_bytes([7; 32]));
        let mut context = BTreeMap::new();
        context.insert("tenant".to_string(), "acme".to_string());
        let mut chain = Chain::genesis();
        let first = chain.append(Record {
            seq: 0,
            time: "2026-11-28T04:00:00.123Z".into(),
            request_id: "3f2a9c1e-0b7d-4e51-9a86-1c2d3e4f5a6b".into(),
            node: "kms-1".into(),
            principal: "spiffe://example.org/payments".into(),
            peer: "10.0.0.7:51544".into(),
            operation: "encrypt".into(),
            key: Some("payments/cards".into()),
            version: Some(3),
            outcome: "ok".into(),
            code: "OK".into(),
            error: None,
            context_hmac: context_hmacs(&key, &context),
            prev: String::new(),
        });
        let second = chain.append(Record {
            seq: 0,
            time: "2026-11-28T04:00:00.140Z".into(),
            request_id: "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f".into(),
            node: "kms-1".into(),
            principal: "spiffe://example.org/billing".into(),
            peer: "10.0.0.9:40112".into(),
            operation: "decrypt".into(),
            key: Some("payments/cards".into()),
            version: None,
            outcome: "denied".into(),
            code: "PERMISSION_DENIED".into(),
            error: Some("not allowed: decrypt on payments/cards".into()),
            context_hmac: BTreeMap::new(),
            prev: String::new(),
        });
        assert_eq!(
            first,
            r#"{"seq":1,"time":"2026-11-28T04:00:00.123Z","request_id":"3f2a9c1e-0b7d-4e51-9a86-1c2d3e4f5a6b","node":"kms-1","principal":"spiffe://example.org/payments","peer":"10.0.0.7:51544","operation":"encrypt","key":"payments/cards","version":3,"outcome":"ok","code":"OK","error":null,"context_hmac":{"tenant":"e076aedd171f85a41eda61e73b47ff6f4cda099368f46d8b6d919a1d81e24ad3"},"prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        assert_eq!(
            second,
            r#"{"seq":2,"time":"2026-11-28T04:00:00.140Z","request_id":"7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f","node":"kms-1","principal":"spiffe://example.org/billing","peer":"10.0.0.9:40112","operation":"decrypt","key":"payments/cards","version":null,"outcome":"denied","code":"PERMISSION_DENIED","error":"not allowed: decrypt on payments/cards","context_hmac":{},"prev":"91c374993fe025e9390031e433657334fdcf7056f4357dbd39dddc80813f7726"}"#
        );
        assert_eq!(
            chain.head(),
            Head {
                seq: 2,
                hash: "9a9bccc4712206880863050224bef2544acbe351aac6f8db207be0f1ddc36513".into()
            }
        );
    }
}
