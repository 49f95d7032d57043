//! The `kms-cli` binary's help, usage errors and local input checks, run as a real process
//! with no server and no connection settings in the environment.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a run may take. Nothing here reaches a server, so runs end at once; the bound only
/// turns a hang (a prompt, a connect attempt) into a test failure.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `kms-cli` with every connection setting removed from the environment, stdin closed.
fn cli() -> Command {
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
    cmd
}

/// Reads a child's pipe to the end on its own thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `kms-cli ARGS` to completion, killing it and failing the test after [`TIMEOUT`].
fn run(args: &[&str]) -> Output {
    let mut child = cli()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kms-cli");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll kms-cli") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kms-cli {args:?} still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the run succeeded and returns its stdout.
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

/// Asserts the run exited with `code` (and did not panic) and returns its stderr.
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

/// A fresh, valid share text (share 1 of a 2-of-3 split), made by the same library the
/// server uses.
fn valid_share() -> String {
    let (_secret, _commitments, _set_id, shares) =
        kms_core::shares::split(3, 2).expect("split 3 shares, threshold 2");
    shares[0].to_text().to_string()
}

/// `--help` and `operator --help` succeed; `operator init --help` shows a runnable example.
#[test]
fn help_succeeds_and_shows_examples() {
    let help = ok(&["--help"]);
    assert!(help.contains("operator"), "--help:\n{help}");
    assert!(help.contains("KMS_ADDR"), "--help:\n{help}");
    let help = ok(&["operator", "--help"]);
    assert!(help.contains("unseal"), "operator --help:\n{help}");
    let help = ok(&["operator", "init", "--help"]);
    assert!(
        help.contains("kms-cli operator init --shares 5 --threshold 3"),
        "operator init --help:\n{help}"
    );
}

/// Without connection settings the CLI does not guess a server: it exits 2 (usage) and says
/// how to provide them (KMS_ADDR, or the env file `kms-server dev` writes).
#[test]
fn status_without_settings_says_how_to_connect() {
    let err = fails_with(2, &["operator", "status"]);
    assert!(err.contains("KMS_ADDR"), "stderr:\n{err}");
    assert!(err.contains("kms-server dev"), "stderr:\n{err}");
}

/// A share with one mistyped character is caught by its checksum before any connection is
/// attempted (there is no server and no settings here), the message says so, and the share
/// value is not echoed. The unaltered share passes the same check and only then fails for the
/// missing settings, which shows it is the typo that is caught.
#[test]
fn mistyped_share_is_caught_locally() {
    let share = valid_share();
    // kms1-<set id: 8>-<index: 2>-<value: 64>-<check: 8>: the value starts at byte 17.
    let value = &share[17..81];
    let pos = 17 + 10;
    let old = share.as_bytes()[pos];
    let new = if old == b'0' { '1' } else { '0' };
    let mut typo = share.clone();
    typo.replace_range(pos..=pos, &new.to_string());
    assert_ne!(typo, share);

    let err = fails_with(2, &["operator", "unseal", &typo]);
    assert!(err.contains("typo"), "stderr:\n{err}");
    assert!(err.contains("checksum"), "stderr:\n{err}");
    assert!(err.contains("nothing was sent"), "stderr:\n{err}");
    assert!(!err.contains(value), "share value in stderr:\n{err}");
    assert!(
        !err.contains(&typo[17..81]),
        "share value in stderr:\n{err}"
    );

    let err = fails_with(2, &["operator", "unseal", &share]);
    assert!(!err.contains("typo"), "stderr:\n{err}");
    assert!(err.contains("KMS_ADDR"), "stderr:\n{err}");
    assert!(!err.contains(value), "share value in stderr:\n{err}");
}

/// Text that is not a share at all is refused as malformed, locally, before connecting.
#[test]
fn malformed_share_is_refused() {
    let err = fails_with(2, &["operator", "unseal", "not-a-share"]);
    assert!(err.contains("malformed"), "stderr:\n{err}");
    assert!(err.contains("nothing was sent"), "stderr:\n{err}");
}

/// Certificate paths that do not exist are a local configuration error (exit 2) naming the
/// file, not a connection failure or a panic.
#[test]
fn missing_certificate_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("no-ca.pem");
    let cert = dir.path().join("no-client.pem");
    let key = dir.path().join("no-client-key.pem");
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let err = fails_with(
        2,
        &[
            "--addr",
            "https://127.0.0.1:1",
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "operator",
            "status",
        ],
    );
    assert!(err.contains(&ca), "stderr:\n{err}");
}

/// Like a share typo, a malformed officer key is local input: refused (exit 2, naming the key)
/// before any connection is attempted.
#[test]
fn bad_officer_key_is_refused_locally() {
    let err = fails_with(
        2,
        &[
            "operator",
            "init",
            "--shares",
            "2",
            "--threshold",
            "2",
            "--officer-key",
            "notakey",
            "--officer-key",
            "x",
        ],
    );
    assert!(err.contains("--officer-key #1"), "stderr:\n{err}");
    assert!(err.contains("age"), "stderr:\n{err}");
}
