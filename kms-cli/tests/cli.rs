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
    run_with_stdin(args, None)
}

/// [`run`], with `input` on standard input (closed when `None`).
fn run_with_stdin(args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = cli()
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kms-cli");
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        // A writer thread: the child may exit before reading it all (then the write fails).
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
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
    fails_with_stdin(code, args, None)
}

/// [`fails_with`], with `input` on standard input.
fn fails_with_stdin(code: i32, args: &[&str], input: Option<&[u8]>) -> String {
    let out = run_with_stdin(args, input);
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

/// `key --help` lists every key subcommand.
#[test]
fn key_help_lists_every_subcommand() {
    let help = ok(&["key", "--help"]);
    for sub in [
        "create",
        "list",
        "show",
        "rotate",
        "set-rotation",
        "set-min-decryption-version",
        "disable",
        "enable",
        "revoke",
        "schedule-deletion",
        "cancel-deletion",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "`{sub}` missing from key --help:\n{help}"
        );
    }
}

/// Every command's `--help` ends with at least one runnable example, and the top-level help
/// names the new command groups.
#[test]
fn every_command_help_shows_an_example() {
    let help = ok(&["--help"]);
    for cmd in [
        "key",
        "encrypt",
        "decrypt",
        "reencrypt",
        "datakey",
        "random",
        "envelope",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
    let help = ok(&["encrypt", "--help"]);
    assert!(
        help.contains("kms-cli encrypt --key payments --context tenant=acme --in secret.txt"),
        "encrypt --help:\n{help}"
    );
    let commands: &[&[&str]] = &[
        &["key", "create"],
        &["key", "list"],
        &["key", "show"],
        &["key", "rotate"],
        &["key", "set-rotation"],
        &["key", "set-min-decryption-version"],
        &["key", "disable"],
        &["key", "enable"],
        &["key", "revoke"],
        &["key", "schedule-deletion"],
        &["key", "cancel-deletion"],
        &["encrypt"],
        &["decrypt"],
        &["reencrypt"],
        &["datakey"],
        &["random"],
        &["envelope", "encrypt"],
        &["envelope", "decrypt"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ok(&args);
        let example = format!("kms-cli {}", cmd.join(" "));
        assert!(
            help.contains("Example") && help.contains(&example),
            "{cmd:?} --help has no example `{example} …`:\n{help}"
        );
        assert!(help.contains("--format"), "{cmd:?} --help:\n{help}");
    }
}

/// Input that is not base64 is refused locally: exit 2, the message names base64 and says
/// nothing was sent, and it comes before the missing connection settings (input is read
/// first).
#[test]
fn decrypt_refuses_non_base64_before_connecting() {
    let err = fails_with_stdin(2, &["decrypt"], Some(b"this is not base64!\n"));
    assert!(err.contains("base64"), "stderr:\n{err}");
    assert!(err.contains("nothing was sent"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");
    assert_eq!(err.lines().count(), 1, "one-line message:\n{err}");

    let err = fails_with_stdin(2, &["reencrypt"], Some(b"%%%"));
    assert!(err.contains("base64"), "stderr:\n{err}");

    // Valid base64 passes the local check and then stops at the missing settings.
    let err = fails_with_stdin(2, &["decrypt"], Some(b"aGVsbG8=\n"));
    assert!(err.contains("KMS_ADDR"), "stderr:\n{err}");
}

/// `--context` without '=' is a usage error (exit 2) that shows the expected form; a key given
/// twice is refused before connecting, naming the key.
#[test]
fn bad_context_is_a_usage_error() {
    let err = fails_with(2, &["encrypt", "--key", "k", "--context", "novalue"]);
    assert!(err.contains("KEY=VALUE"), "stderr:\n{err}");
    let err = fails_with(2, &["datakey", "--key", "k", "--context", "=v"]);
    assert!(err.contains("KEY=VALUE"), "stderr:\n{err}");
    let err = fails_with_stdin(
        2,
        &[
            "encrypt",
            "--key",
            "k",
            "--context",
            "t=a",
            "--context",
            "t=b",
        ],
        Some(b"x"),
    );
    assert!(err.contains("context key t given twice"), "stderr:\n{err}");
    let err = fails_with(
        2,
        &["key", "create", "k", "--label", "a=1", "--label", "a=2"],
    );
    assert!(err.contains("label key a given twice"), "stderr:\n{err}");
}

/// Durations need a unit; `off` is only for set-rotation; a revocation needs a reason.
#[test]
fn durations_and_reasons_are_checked_locally() {
    let err = fails_with(2, &["key", "create", "k", "--rotation-period", "90"]);
    assert!(err.contains("90d"), "stderr:\n{err}");
    let err = fails_with(2, &["key", "set-rotation", "k", "1y"]);
    assert!(err.contains("off"), "stderr:\n{err}");
    let err = fails_with(2, &["key", "revoke", "k", "--version", "1"]);
    assert!(err.contains("--reason"), "stderr:\n{err}");
    let err = fails_with(
        2,
        &["key", "revoke", "k", "--version", "1", "--reason", "bored"],
    );
    assert!(err.contains("compromised"), "stderr:\n{err}");
}

/// Envelope commands check their files before connecting: a missing input or an input that
/// is not an envelope file is named (exit 2), and no output file appears.
#[test]
fn envelope_checks_files_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, b"not an envelope").expect("write");
    let out = dir.path().join("out");
    let (missing, plain, out_s) = (
        missing.display().to_string(),
        plain.display().to_string(),
        out.display().to_string(),
    );

    let err = fails_with(
        2,
        &[
            "envelope", "encrypt", "--key", "k", "--in", &missing, "--out", &out_s,
        ],
    );
    assert!(err.contains(&missing), "stderr:\n{err}");
    let err = fails_with(2, &["envelope", "decrypt", "--in", &plain, "--out", &out_s]);
    assert!(err.contains("not a KMS envelope file"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");
    let nodir = dir.path().join("no-such-dir").join("out");
    let err = fails_with(
        2,
        &[
            "envelope",
            "encrypt",
            "--key",
            "k",
            "--in",
            &plain,
            "--out",
            &nodir.display().to_string(),
        ],
    );
    assert!(err.contains("does not exist"), "stderr:\n{err}");
    // Only the input file is left: no output, no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["plain.txt"], "files left: {names:?}");
}

/// Key import and export check their files before connecting: with no connection settings
/// at all, a bad file is named (exit 2), never the missing KMS_ADDR.
#[test]
fn key_distribution_checks_files_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.bin");
    std::fs::write(&short, [7u8; 31]).expect("write");
    let private = dir.path().join("private.pem");
    std::fs::write(
        &private,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let (short, private) = (short.display().to_string(), private.display().to_string());

    let err = fails_with(2, &["key", "import", "k", "--material", &short]);
    assert!(err.contains("is 31 bytes"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");
    let err = fails_with(2, &["key", "import", "k", "--wrapped", &short]);
    assert!(err.contains("--wrapped needs --token"), "stderr:\n{err}");
    let err = fails_with(
        2,
        &[
            "key",
            "import",
            "k",
            "--wrapped",
            &short,
            "--token",
            "t",
            "--material",
            &short,
        ],
    );
    assert!(err.contains("cannot be used with"), "stderr:\n{err}");
    let err = fails_with(
        2,
        &["key", "export", "k", "--recipient", &private, "--out", "x"],
    );
    assert!(err.contains("this is a private key"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");
    let err = fails_with(2, &["key", "export", "k", "--recipient", &private]);
    assert!(err.contains("--out FILE is required"), "stderr:\n{err}");
    let err = fails_with(
        2,
        &[
            "datakey",
            "--key",
            "k",
            "--recipient",
            &private,
            "--recipient-out",
            "x",
        ],
    );
    assert!(err.contains("this is a private key"), "stderr:\n{err}");
}

/// The files of key distribution are checked, and output files claimed, before connecting:
/// text given as a wrap, a recipient given on the command line, an existing output file.
#[test]
fn key_distribution_output_files_are_claimed_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    std::fs::write(path("partner.txt"), format!("# ACME\n{recipient}\n")).expect("write");
    std::fs::write(path("existing.bin"), b"keep me").expect("write");
    std::fs::write(path("wrapped.b64"), "QUJD".repeat(141) + "\n").expect("write");

    // A base64 wrap: refused with the command that decodes it, nothing sent.
    let err = fails_with(
        2,
        &[
            "key",
            "import",
            "k",
            "--wrapped",
            &path("wrapped.b64"),
            "--token",
            "t",
        ],
    );
    assert!(err.contains("base64 -d"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");

    // The recipient itself instead of its file.
    let err = fails_with(
        2,
        &[
            "key",
            "export",
            "k",
            "--recipient",
            &recipient,
            "--out",
            &path("x"),
        ],
    );
    assert!(
        err.contains("--recipient takes a FILE holding the recipient"),
        "stderr:\n{err}"
    );

    // Existing output files are never replaced without --force, for all three commands.
    for args in [
        vec!["key", "import-params", "k", "--public-key-out"],
        vec!["key", "export", "k", "--recipient", "RCPT", "--out"],
        vec![
            "datakey",
            "--key",
            "k",
            "--recipient",
            "RCPT",
            "--recipient-out",
        ],
    ] {
        let rcpt = path("partner.txt");
        let existing = path("existing.bin");
        let mut args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "RCPT" { rcpt.as_str() } else { a })
            .collect();
        args.push(&existing);
        let err = fails_with(2, &args);
        assert!(err.contains("already exists"), "{args:?}:\n{err}");
        assert!(err.contains("--force"), "{args:?}:\n{err}");
        assert!(!err.contains("KMS_ADDR"), "{args:?}:\n{err}");
        // With --force it gets as far as connecting (no settings here): the old file stays.
        args.push("--force");
        let err = fails_with(2, &args);
        assert!(err.contains("KMS_ADDR"), "{args:?}:\n{err}");
        assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    }

    // A new output file is created before connecting and removed when the request fails.
    let err = fails_with(
        2,
        &[
            "key",
            "export",
            "k",
            "--recipient",
            &path("partner.txt"),
            "--out",
            &path("new.age"),
        ],
    );
    assert!(err.contains("KMS_ADDR"), "stderr:\n{err}");
    // A folder that does not exist is named before connecting.
    let err = fails_with(
        2,
        &[
            "key",
            "export",
            "k",
            "--recipient",
            &path("partner.txt"),
            "--out",
            &path("no-such-dir/new.age"),
        ],
    );
    assert!(err.contains("nothing was sent"), "stderr:\n{err}");
    assert!(!err.contains("KMS_ADDR"), "stderr:\n{err}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["existing.bin", "partner.txt", "wrapped.b64"]);
}
