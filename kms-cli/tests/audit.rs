//! `kms-cli audit verify` as a real process on log files written with `kms_core::audit`:
//! an intact log passes; an edited, deleted, reordered or cut log fails with exit code 1 and
//! names the file, the line and why. No server, no connection settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kms_core::audit::{Chain, Head, Record};

/// Longest a run may take: verify is offline, so this only turns a hang into a failure.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `kms-cli ARGS` with no connection settings and stdin closed.
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms-cli"));
    for var in [
        "KMS_ADDR",
        "KMS_CA_CERT",
        "KMS_CLIENT_CERT",
        "KMS_CLIENT_KEY",
        "KMS_TLS_SERVER_NAME",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kms-cli");
    let start = Instant::now();
    // Outputs are a few lines: they fit in the pipe buffers, so polling before reading is safe.
    while child.try_wait().expect("poll kms-cli").is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kms-cli {args:?} still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("kms-cli output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "kms-cli {args:?}: {:?}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit code `code` without a panic and returns stderr.
fn fails_with(code: i32, args: &[&str]) -> String {
    let out = run(args);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "kms-cli {args:?}\nstdout:\n{}\nstderr:\n{err}",
        text(&out.stdout)
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    err
}

fn record(i: usize) -> Record {
    Record {
        seq: 0,
        time: format!("2026-11-28T04:00:{i:02}.000Z"),
        request_id: format!("req-{i}"),
        node: "node-1".into(),
        principal: "spiffe://example.org/payments".into(),
        peer: "127.0.0.1:50000".into(),
        operation: "encrypt".into(),
        key: Some("payments/cards".into()),
        version: Some(1),
        outcome: "ok".into(),
        code: "OK".into(),
        error: None,
        context_hmac: Default::default(),
        prev: String::new(),
    }
}

/// Writes `lines` (each followed by '\n') to `dir/name`.
fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, body).expect("write log");
    path
}

fn write_head(dir: &Path, head: &Head) -> PathBuf {
    let path = dir.join("head.json");
    std::fs::write(&path, serde_json::to_string(head).expect("json")).expect("write head");
    path
}

/// Six records: lines 1–3 in `a.log`, lines 4–6 (after a restart: `Chain::resume`) in `b.log`.
fn two_files() -> (Vec<String>, Vec<String>, Head) {
    let mut chain = Chain::genesis();
    let a: Vec<String> = (1..=3).map(|i| chain.append(record(i))).collect();
    let mut chain = Chain::resume(a.last().expect("line")).expect("resume");
    let b: Vec<String> = (4..=6).map(|i| chain.append(record(i))).collect();
    (a, b, chain.head())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn an_intact_log_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, head) = two_files();
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let fh = write_head(dir.path(), &head);
    let out = ok(&["audit", "verify", s(&fa), s(&fb), "--head", s(&fh)]);
    assert!(
        out.starts_with(&format!("OK: 6 records, head seq 6 hash {}", head.hash)),
        "{out}"
    );
    let out = ok(&["audit", "verify", s(&fa), s(&fb), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 6);
    assert_eq!(v["head"]["seq"], 6);
    assert_eq!(v["head"]["hash"], head.hash.as_str());
    assert_eq!(v["torn_last_line"], false);

    // A torn last line (a crash mid-write) is reported, not an error.
    let mut body = std::fs::read_to_string(&fb).expect("read");
    body.push_str("{\"seq\":7,\"time\":\"2026-11");
    std::fs::write(&fb, body).expect("write");
    let out = ok(&["audit", "verify", s(&fa), s(&fb), "--head", s(&fh)]);
    assert!(out.contains("OK: 6 records"), "{out}");
    assert!(out.contains("last line torn"), "{out}");
}

#[test]
fn an_edited_line_is_named_with_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, mut b, _) = two_files();
    b[1] = b[1].replace("req-5", "req-X");
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let err = fails_with(1, &["audit", "verify", s(&fa), s(&fb)]);
    let (line, next) = (format!("{}:2", s(&fb)), format!("{}:3", s(&fb)));
    assert!(
        err.contains(&format!(
            "{line}: hash of this line does not match prev of {next}"
        )),
        "{err}"
    );
    // JSON: the same, as an object on stdout.
    let out = run(&["audit", "verify", s(&fa), s(&fb), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["file"], s(&fb));
    assert_eq!(v["line"], 2);
}

#[test]
fn an_edit_across_the_file_boundary_names_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b, _) = two_files();
    a[2] = a[2].replace("req-3", "req-X");
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let err = fails_with(1, &["audit", "verify", s(&fa), s(&fb)]);
    assert!(
        err.contains(&format!(
            "{}:3: hash of this line does not match prev of {}:1",
            s(&fa),
            s(&fb)
        )),
        "{err}"
    );
}

#[test]
fn a_deleted_line_is_a_gap_at_the_line_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b, _) = two_files();
    a.remove(1);
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let err = fails_with(1, &["audit", "verify", s(&fa), s(&fb)]);
    assert!(
        err.contains(&format!("{}:2: seq 3 follows seq 1", s(&fa))),
        "{err}"
    );
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn reordered_lines_are_refused_and_files_ordered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, mut b, _) = two_files();
    b.swap(0, 1);
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let err = fails_with(1, &["audit", "verify", s(&fa), s(&fb)]);
    assert!(
        err.contains(&format!("{}:1: seq 5 follows seq 3", s(&fb))),
        "{err}"
    );
    // Files in any order: verify orders them by their first seq.
    let (a, b, _) = two_files();
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let out = ok(&["audit", "verify", s(&fb), s(&fa)]);
    assert!(out.starts_with("OK: 6 records"), "{out}");
    // Without the first file the chain does not start at seq 1.
    let err = fails_with(1, &["audit", "verify", s(&fb)]);
    assert!(
        err.contains(&format!("{}:1: the chain starts at seq 4, not 1", s(&fb))),
        "{err}"
    );
}

#[test]
fn a_cut_tail_is_caught_by_the_sealed_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, mut b, head) = two_files();
    b.truncate(1);
    let fa = write(dir.path(), "a.log", &a);
    let fb = write(dir.path(), "b.log", &b);
    let fh = write_head(dir.path(), &head);
    // Without the head the shorter log looks fine, and the output says so.
    let out = ok(&["audit", "verify", s(&fa), s(&fb)]);
    assert!(out.contains("OK: 4 records"), "{out}");
    assert!(out.contains("no --head"), "{out}");
    let err = fails_with(1, &["audit", "verify", s(&fa), s(&fb), "--head", s(&fh)]);
    assert!(
        err.contains(&format!(
            "{}:1: log ends at seq 4 but the sealed head is seq 6",
            s(&fb)
        )),
        "{err}"
    );
    // Dropping the whole last file is the same cut.
    let err = fails_with(1, &["audit", "verify", s(&fa), "--head", s(&fh)]);
    assert!(
        err.contains("log ends at seq 3 but the sealed head is seq 6"),
        "{err}"
    );
}

#[test]
fn unreadable_input_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _, _) = two_files();
    let fa = write(dir.path(), "a.log", &a);
    let missing = dir.path().join("missing.log");
    let err = fails_with(2, &["audit", "verify", s(&missing)]);
    assert!(err.contains("cannot read"), "{err}");
    let bad_head = dir.path().join("head.json");
    std::fs::write(&bad_head, "{\"seq\":3}").expect("write");
    let err = fails_with(2, &["audit", "verify", s(&fa), "--head", s(&bad_head)]);
    assert!(err.contains("is not a sealed audit head"), "{err}");
    // At least one file is required.
    fails_with(2, &["audit", "verify"]);
}
