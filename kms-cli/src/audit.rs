//! `kms-cli audit verify`: checks audit log files offline (sequence, hash chain, sealed head),
//! one chain per node when the files come from several nodes.
//!
//! Nothing here connects to the server: an auditor can verify copies of the log on any
//! machine. The format and the checks are `kms_core::audit`'s (see `docs/audit-format.md`).
//!
//! Each node writes its own chain (seq 1, 2, … in its own files), so a set of files from
//! several nodes is several chains. The files are grouped by the node their records name and
//! ordered by their first seq (the auditor may give them in any order); each group is then
//! verified exactly as a single node's log is, against that node's sealed head if given.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kms_core::audit::{Head, Record, Verifier, VerifyError, VerifyReport};
use serde_json::{Value, json};

use crate::Failure;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub(crate) enum Audit {
    /// Verify audit log files offline: every line a record, seq numbers without gaps, each
    /// line's prev the hash of the line before, and (with --head) no cut tail. Files of several
    /// nodes are verified as one chain per node.
    #[command(after_help = "Examples:\n  \
        kms-cli audit verify /var/lib/kms/audit/audit.log\n  \
        kms-cli audit verify audit.log.* audit.log --head head.json\n  \
        kms-cli audit verify audit.log --format json\n\n\
        Two nodes, files copied into one folder per node, in any order:\n  \
        kms-cli audit verify kms-a/audit.log* kms-b/audit.log* \\\n    \
        --head head-kms-a.json --head head-kms-b.json\n\n\
        Give every file of every node's log, in any order: the files are grouped by the node \
        their records name and ordered by seq; each node's chain starts at seq 1 and \
        continues across its files without gap or overlap. HEADFILE is a node's sealed head \
        from `kms-cli audit head`, {\"seq\":N,\"hash\":\"<64 hex digits>\",\"node\":\"NAME\"}; \
        give one per node (--head again); without it a cut tail cannot be seen. A head file \
        without \"node\" (older exports) is accepted when the files hold one node's log.\n\n\
        Prints `OK: N records, …` then `OK node NAME: N records, head seq S hash H` per node, \
        or each node's first bad line as `FILE:LINE: reason`. \
        Exit codes: 0 every node's log verifies, 1 one does not, 2 a file cannot be read or \
        a head file is not a head.")]
    Verify {
        /// The log files of one or several nodes (rotated files and current ones), in any
        /// order.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// A node's sealed head exported from the server (JSON); that node's log must reach
        /// it. Repeat for each node.
        #[arg(long, value_name = "HEADFILE")]
        head: Vec<PathBuf>,
    },
    /// Seal the server's current audit chain head and print it as JSON, for `verify --head`
    /// (needs the `audit-read` grant; connects to the server). The head names its node.
    #[command(
        after_help = "Example:\n  kms-cli audit head > head.json\n  kms-cli audit verify audit.log --head head.json\n\n\
        With several nodes, export each node's head (connect to each node in turn):\n  \
        KMS_ADDR=https://kms-a:8200 kms-cli audit head > head-kms-a.json\n  \
        KMS_ADDR=https://kms-b:8200 kms-cli audit head > head-kms-b.json"
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

/// Runs an `audit` command. `verify` is offline: it never connects.
///
/// Exit codes of `verify`: 0 every node's log verifies (a torn last line is reported, not an
/// error); 1 one does not (each failing node's first bad line is named as `FILE:LINE:
/// reason`); 2 a file or a head file cannot be read, a head file is not a head, or the heads
/// given do not say which node they belong to.
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
            // Always JSON: it is meant for a file that `verify --head` reads. The node lets
            // `verify` match the head with that node's files; an older server sends none.
            let head = if h.node.is_empty() {
                json!({"seq": h.seq, "hash": h.hash})
            } else {
                json!({"seq": h.seq, "hash": h.hash, "node": h.node})
            };
            output::json(&head)
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
            let heads = head
                .iter()
                .map(|p| read_head(p))
                .collect::<Result<Vec<_>, _>>()?;
            let (groups, empty) = match group_files(&files)? {
                Ok(g) => g,
                // A file that belongs to no single node: nothing else can be checked soundly.
                Err(bad) => return fail(fmt, &[(None, bad)]),
            };
            let groups = attach_heads(groups, heads)?;
            let mut results = Vec::with_capacity(groups.len());
            for group in &groups {
                results.push(verify_group(group)?);
            }
            report(&groups, &results, &empty, fmt)
        }
    }
}

/// A sealed head given with `--head`.
struct SealedHead {
    path: PathBuf,
    /// The node it names; `None` for head files exported before heads named their node.
    node: Option<String>,
    head: Head,
}

/// Reads and checks `--head`: `{"seq":N,"hash":"<64 hex digits>","node":"NAME"}`, `node`
/// optional.
fn read_head(path: &Path) -> Result<SealedHead, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let not_a_head = |why: String| {
        Failure::usage(format!(
            "{} is not a sealed audit head: {why}; expected {{\"seq\":N,\"hash\":\"<64 hex \
             digits>\",\"node\":\"NAME\"}} as exported by `kms-cli audit head`",
            path.display()
        ))
    };
    let mut head: Head = serde_json::from_str(&text).map_err(|e| not_a_head(e.to_string()))?;
    head.hash.make_ascii_lowercase();
    if head.hash.len() != 64 || !head.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_a_head("the hash is not 64 hex digits".into()));
    }
    // `Head` ignores fields it does not know; the node is read beside it.
    let node = match serde_json::from_str::<Value>(&text)
        .map_err(|e| not_a_head(e.to_string()))?
        .get("node")
    {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if !n.is_empty() => Some(n.clone()),
        Some(_) => return Err(not_a_head("\"node\" is not a node name".into())),
    };
    Ok(SealedHead {
        path: path.to_path_buf(),
        node,
        head,
    })
}

/// One file, as the first pass saw it.
struct LogFile {
    path: PathBuf,
    /// The seq of its first complete record, if it has one; files are ordered by it.
    first_seq: Option<u64>,
    /// The line of that record (1-based).
    first_line: usize,
}

/// One node's files, ordered by their first seq, and its sealed head if given.
struct Group {
    /// The node the records name (`""` only when no file holds a record at all).
    node: String,
    files: Vec<LogFile>,
    head: Option<SealedHead>,
}

/// What the first pass learns of a file: its node and first seq (from its first complete
/// record), or, for a file without one, whether it is empty and a node named in a torn line.
enum Peek {
    Empty,
    Record {
        node: String,
        seq: u64,
        line: usize,
    },
    /// Lines, none of them a complete record: garbage or a torn line. `node` if a torn line
    /// got as far as its `"node"` field.
    NoRecord {
        node: Option<String>,
    },
}

/// Reads `path` up to its first complete record.
fn peek(path: &Path) -> Result<Peek, Failure> {
    let cannot = |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", path.display()));
    let mut reader = BufReader::new(File::open(path).map_err(cannot)?);
    let mut buf = Vec::new();
    let mut n = 0usize;
    let mut torn_node = None;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(cannot)? == 0 {
            break;
        }
        n += 1;
        let had_newline = buf.last() == Some(&b'\n');
        let line = if had_newline {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        if let Ok(r) = serde_json::from_slice::<Record>(line) {
            return Ok(Peek::Record {
                node: r.node,
                seq: r.seq,
                line: n,
            });
        }
        if !had_newline {
            torn_node = sniff_node(line);
        }
    }
    Ok(if n == 0 {
        Peek::Empty
    } else {
        Peek::NoRecord { node: torn_node }
    })
}

/// The node named in a torn line (a record cut short by a crash), if the cut came after it.
/// The server writes compact JSON with `"node"` as the fourth field, so this finds it without
/// a full parse.
fn sniff_node(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let rest = &text[text.find("\"node\":\"")? + "\"node\":\"".len()..];
    let name = &rest[..rest.find('"')?];
    // A name with escapes would need a real parser; such a torn line is left unassigned.
    (!name.is_empty() && !name.contains('\\')).then(|| name.to_string())
}

/// The groups and the empty files (which hold nothing to verify).
type Grouped = (Vec<Group>, Vec<PathBuf>);

/// Groups `paths` by node, each group ordered by first seq. With no record in any file, one
/// group named `""` holds the files that have lines, so that they are still checked.
///
/// Returns `Err(Failure)` (exit 2) if a file cannot be read, `Ok(Err(BadLine))` for a file
/// that cannot be attributed to one node, else the groups and the empty files.
fn group_files(paths: &[PathBuf]) -> Result<Result<Grouped, BadLine>, Failure> {
    let mut by_node: BTreeMap<String, Vec<LogFile>> = BTreeMap::new();
    let mut unnamed: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut empty = Vec::new();
    for path in paths {
        match peek(path)? {
            Peek::Empty => empty.push(path.clone()),
            Peek::Record { node, seq, line } => by_node.entry(node).or_default().push(LogFile {
                path: path.clone(),
                first_seq: Some(seq),
                first_line: line,
            }),
            Peek::NoRecord { node } => unnamed.push((path.clone(), node)),
        }
    }
    // A file with no complete record (a torn line only, or garbage) still has to be verified:
    // it goes with the node its torn line names, or with the only node there is.
    let sole = (by_node.len() <= 1).then(|| by_node.keys().next().cloned().unwrap_or_default());
    for (path, node) in unnamed {
        let Some(node) = node.or_else(|| sole.clone()) else {
            let nodes: Vec<&str> = by_node.keys().map(String::as_str).collect();
            return Ok(Err(BadLine {
                file: Some(path.clone()),
                line: Some(1),
                message: format!(
                    "{}:1: no complete audit record in this file, so it cannot be told which \
                     node's log it belongs to (the files hold the logs of nodes {}): verify it \
                     with the other files of its node only",
                    path.display(),
                    nodes.join(", ")
                ),
            }));
        };
        by_node.entry(node).or_default().push(LogFile {
            path,
            first_seq: None,
            first_line: 0,
        });
    }
    if by_node.is_empty() {
        // Nothing names a node (no file, or empty ones only): one unnamed chain, as before
        // logs named their node, so an empty log still reports seq 0.
        by_node.insert(String::new(), Vec::new());
    }
    let groups = by_node
        .into_iter()
        .map(|(node, mut files)| {
            // Stable: files with the same first seq (an overlap) keep the order given. A file
            // without a record goes last: at most a torn line, which only the end may hold.
            files.sort_by_key(|f| f.first_seq.unwrap_or(u64::MAX));
            Group {
                node,
                files,
                head: None,
            }
        })
        .collect();
    Ok(Ok((groups, empty)))
}

/// Gives each group the head that names its node.
///
/// A head that names no node goes to the only group there is; with several nodes that is a
/// usage error (exit 2), as is a second head for one node. A head for a node no file belongs
/// to makes a group without files, which fails (unless the head is of an empty chain).
fn attach_heads(mut groups: Vec<Group>, heads: Vec<SealedHead>) -> Result<Vec<Group>, Failure> {
    for head in heads {
        let node = match &head.node {
            Some(n) => n.clone(),
            None if groups.len() <= 1 => groups.first().map(|g| g.node.clone()).unwrap_or_default(),
            None => {
                let nodes: Vec<&str> = groups.iter().map(|g| g.node.as_str()).collect();
                return Err(Failure::usage(format!(
                    "{} does not say which node's head it is, and the files hold the logs of \
                     {} nodes ({}): export each node's head again with `kms-cli audit head` \
                     (it now writes \"node\"), or add \"node\":\"NAME\" to the file",
                    head.path.display(),
                    nodes.len(),
                    nodes.join(", ")
                )));
            }
        };
        let i = match groups.iter().position(|g| g.node == node) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    node: node.clone(),
                    files: Vec::new(),
                    head: None,
                });
                groups.len() - 1
            }
        };
        if let Some(first) = &groups[i].head {
            return Err(Failure::usage(format!(
                "two sealed heads for node {node}: {} and {}; give one head per node (the \
                 latest)",
                first.path.display(),
                head.path.display()
            )));
        }
        groups[i].head = Some(head);
    }
    // The unnamed placeholder of a set of empty files is not a node when heads name nodes.
    if groups.len() > 1 {
        groups.retain(|g| !(g.node.is_empty() && g.files.is_empty() && g.head.is_none()));
    }
    groups.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(groups)
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
        self.at(e.line(), message)
    }

    /// A [`BadLine`] at `global` (1-based over all files).
    fn at(&self, global: Option<usize>, message: String) -> BadLine {
        let loc = global.and_then(|l| self.locate(l));
        BadLine {
            file: loc
                .map(|(f, _)| f.to_path_buf())
                .or_else(|| self.starts.last().map(|(f, _)| f.clone())),
            line: loc.map(|(_, n)| n),
            message,
        }
    }
}

/// Streams every line of a node's files, in order, through one [`Verifier`]; checks that
/// every record names the node and that each file continues the previous one's seq.
///
/// Returns `Err(Failure)` (exit 2) if a file cannot be read, `Ok(Err(BadLine))` for the first
/// bad line, `Ok(Ok(report))` if the node's log verifies.
fn verify_group(group: &Group) -> Result<Result<VerifyReport, BadLine>, Failure> {
    let node = group.node.as_str();
    if group.files.is_empty() {
        // Only a head names this node: its whole log is missing, unless its chain is empty.
        if let Some(h) = group.head.as_ref().filter(|h| h.head.seq > 0) {
            return Ok(Err(BadLine {
                file: Some(h.path.clone()),
                line: None,
                message: format!(
                    "{}: the sealed head of node {node} is seq {}, but no log file of node \
                     {node} was given: give every file of its log",
                    h.path.display(),
                    h.head.seq
                ),
            }));
        }
    }
    let mut verifier = Verifier::new(group.head.as_ref().map(|h| h.head.clone()));
    let mut files = Files { starts: Vec::new() };
    let mut total = 0usize;
    // The file before this one, its last record's seq, and whether it ended torn.
    let mut prev: Option<(&Path, u64, bool)> = None;
    for file in &group.files {
        let path = file.path.as_path();
        files.starts.push((file.path.clone(), total));
        // Checked before the file's lines so that a missing or repeated file is named as such,
        // not as lines deleted or out of order. Only when the first line is the first record:
        // otherwise the verifier names what is wrong with the first line.
        if let Some(bad) = file_boundary(node, file, prev)
            .filter(|_| file.first_line == 1)
            .map(|m| files.at(Some(total + 1), m))
        {
            return Ok(Err(bad));
        }
        let cannot =
            |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", path.display()));
        let mut reader = BufReader::new(File::open(path).map_err(cannot)?);
        let mut buf = Vec::new();
        let mut last = None;
        let mut torn = false;
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
            match verifier.push_record(&line, had_newline) {
                Err(e) => return Ok(Err(files.bad(&e))),
                Ok(None) => torn = true,
                Ok(Some(r)) if r.node != node => {
                    return Ok(Err(files.at(
                        Some(total),
                        format!(
                            "{}: this record names node {:?}, but the file's first record (line \
                             {}) names node {node:?}: a file holds one node's log, so lines of \
                             another node's log were put in it, or this line was edited",
                            files.name(total),
                            r.node,
                            file.first_line
                        ),
                    )));
                }
                Ok(Some(r)) => last = Some(r.seq),
            }
        }
        if let Some(seq) = last {
            prev = Some((path, seq, torn));
        }
    }
    Ok(verifier.finish().map_err(|e| files.bad(&e)))
}

/// Why `file` does not continue `prev` (the file before it in seq order: its path, last seq
/// and whether it ended torn), or does not start node's chain at seq 1; `None` if it does, or
/// if the verifier will say better (a torn line before it).
fn file_boundary(node: &str, file: &LogFile, prev: Option<(&Path, u64, bool)>) -> Option<String> {
    let first = file.first_seq?;
    let here = format!("{}:{}", file.path.display(), file.first_line);
    match prev {
        None if first != 1 => Some(format!(
            "{here}: the chain starts at seq {first}, not 1: records 1 to {} of node {node} are \
             missing (give every log file of the node, in any order)",
            first - 1
        )),
        None => None,
        // The verifier names the torn line that should have been the end of the log.
        Some((_, _, true)) => None,
        Some((p, last, false)) if first > last.saturating_add(1) => {
            let what = if first - last == 2 {
                format!("record {} of node {node} is", last + 1)
            } else {
                format!("records {} to {} of node {node} are", last + 1, first - 1)
            };
            Some(format!(
                "{here}: seq {first} follows seq {last}, the last record of {}: {what} missing: \
                 a log file between these two is missing (rotated files are named \
                 <path>.<last seq>), or lines were deleted or moved",
                p.display()
            ))
        }
        Some((p, last, false)) if first <= last => Some(format!(
            "{here}: seq {first} follows seq {last}, the last record of {}: the files overlap: \
             the same file given twice, copies of one file taken at different times, or two \
             servers configured with the same [audit] node name",
            p.display()
        )),
        Some(_) => None,
    }
}

/// A node's name for messages: `(no records)` when no file held a record.
fn shown(node: &str) -> &str {
    if node.is_empty() {
        "(no records)"
    } else {
        node
    }
}

/// Prints the per-node results; fails (exit 1) if any node's log does not verify.
fn report(
    groups: &[Group],
    results: &[Result<VerifyReport, BadLine>],
    empty: &[PathBuf],
    fmt: Format,
) -> Result<(), Failure> {
    let failures: Vec<(Option<&str>, &BadLine)> = groups
        .iter()
        .zip(results)
        .filter_map(|(g, r)| r.as_ref().err().map(|b| (Some(g.node.as_str()), b)))
        .collect();
    let single = groups.len() == 1;
    if fmt == Format::Json {
        let nodes: Vec<Value> = groups
            .iter()
            .zip(results)
            .map(|(g, r)| {
                let files: Vec<String> = g
                    .files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect();
                match r {
                    Ok(rep) => json!({
                        "node": g.node,
                        "ok": true,
                        "records": rep.records,
                        "head": { "seq": rep.head.seq, "hash": rep.head.hash },
                        "torn_last_line": rep.torn_last_line,
                        "sealed_head_checked": g.head.is_some(),
                        "files": files,
                    }),
                    Err(bad) => json!({
                        "node": g.node,
                        "ok": false,
                        "file": bad.file.as_ref().map(|f| f.display().to_string()),
                        "line": bad.line,
                        "error": bad.message,
                        "files": files,
                    }),
                }
            })
            .collect();
        let empty: Vec<String> = empty.iter().map(|p| p.display().to_string()).collect();
        let mut out = match failures.first() {
            // The first failure at the top, as for a single node.
            Some((_, bad)) => json!({
                "ok": false,
                "file": bad.file.as_ref().map(|f| f.display().to_string()),
                "line": bad.line,
                "error": bad.message,
            }),
            None => {
                let oks = || results.iter().filter_map(|r| r.as_ref().ok());
                json!({
                    "ok": true,
                    "records": oks().map(|r| r.records).sum::<u64>(),
                    "torn_last_line": oks().any(|r| r.torn_last_line),
                    "sealed_head_checked": groups.iter().all(|g| g.head.is_some()),
                })
            }
        };
        // One node: its head at the top too, as before several nodes were supported.
        if let (true, Some(Ok(rep))) = (single, results.first()) {
            out["head"] = json!({ "seq": rep.head.seq, "hash": rep.head.hash });
        }
        out["nodes"] = Value::Array(nodes);
        out["empty_files"] = json!(empty);
        output::json(&out)?;
        return if failures.is_empty() {
            Ok(())
        } else {
            Err(failure(&failures))
        };
    }

    let mut text = String::new();
    if failures.is_empty() {
        match results {
            [Ok(rep)] => text.push_str(&format!(
                "OK: {} records, head seq {} hash {}\n",
                rep.records, rep.head.seq, rep.head.hash
            )),
            _ => text.push_str(&format!(
                "OK: {} records, {} nodes\n",
                results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .map(|r| r.records)
                    .sum::<u64>(),
                groups.len()
            )),
        }
    }
    for (g, r) in groups.iter().zip(results) {
        let node = shown(&g.node);
        match r {
            Ok(rep) => {
                // No record names a node (empty files only): the summary says it all.
                if !g.node.is_empty() {
                    text.push_str(&format!(
                        "OK node {node}: {} records, head seq {} hash {}\n",
                        rep.records, rep.head.seq, rep.head.hash
                    ));
                }
                match &g.head {
                    Some(h) => text.push_str(&format!(
                        "  the log reaches the sealed head (seq {}) and matches it\n",
                        h.head.seq
                    )),
                    None if g.node.is_empty() => {
                        text.push_str("  no --head given: a cut tail cannot be detected\n")
                    }
                    None => text.push_str(&format!(
                        "  no --head given for node {node}: a cut tail cannot be detected\n"
                    )),
                }
                if rep.torn_last_line {
                    text.push_str("  last line torn (an unacknowledged request)\n");
                }
            }
            // A single node's failure is on standard error only, as before.
            Err(bad) if !single => {
                text.push_str(&format!("FAILED node {node}: {}\n", bad.message));
            }
            Err(_) => {}
        }
    }
    for p in empty {
        text.push_str(&format!("empty file, no records: {}\n", p.display()));
    }
    output::print(&text)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failure(&failures))
    }
}

/// Reports a failure found before any chain was checked: JSON on stdout if asked, exit 1.
fn fail(fmt: Format, failures: &[(Option<&str>, BadLine)]) -> Result<(), Failure> {
    let refs: Vec<(Option<&str>, &BadLine)> = failures.iter().map(|(n, b)| (*n, b)).collect();
    if fmt == Format::Json
        && let Some((_, bad)) = failures.first()
    {
        output::json(&json!({
            "ok": false,
            "file": bad.file.as_ref().map(|f| f.display().to_string()),
            "line": bad.line,
            "error": bad.message,
        }))?;
    }
    Err(failure(&refs))
}

/// Exit 1 ([`crate::exit::REFUSED`]) with each failing node's first bad line, one per line
/// (`FILE:LINE: reason`).
fn failure(failures: &[(Option<&str>, &BadLine)]) -> Failure {
    let message = match failures {
        [(_, bad)] => bad.message.clone(),
        _ => failures
            .iter()
            .map(|(node, bad)| match node {
                Some(n) => format!("node {}: {}", shown(n), bad.message),
                None => bad.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Failure::server(message)
}
