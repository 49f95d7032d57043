//! The `kms-server` binary's command line and configuration errors, run as a real process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kms_server::{Config, StorageConfig};

/// Longest a run may take. Every case here fails before serving, so it should end in well
/// under a second; the bound only turns a hang into a test failure.
const TIMEOUT: Duration = Duration::from_secs(20);

fn server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms-server"));
    cmd.env_remove("KMS_LOG");
    cmd
}

/// Runs `cmd` to completion with stdin closed, killing it and failing the test if it is still
/// running after [`TIMEOUT`]. Output is drained on threads so a chatty child cannot block.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kms-server");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll kms-server") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("kms-server still running after {TIMEOUT:?}; stdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the run failed, and returns its stderr.
fn failed(out: &Output) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}; stdout:\n{}\nstderr:\n{err}",
        out.status,
        text(&out.stdout)
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    err
}

/// Writes `contents` as `config.toml` in `dir` and returns its path.
fn write_config(dir: &Path, contents: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, contents).expect("write config");
    path
}

/// `--help` succeeds and points to both ways of running: `--config` and `dev`; `dev --help`
/// documents its two options.
#[test]
fn help_lists_config_and_dev() {
    let mut cmd = server();
    cmd.arg("--help");
    let out = run(cmd);
    assert!(out.status.success(), "--help: {:?}", out.status);
    let help = text(&out.stdout);
    assert!(help.contains("--config"), "--help:\n{help}");
    assert!(help.contains("dev"), "--help:\n{help}");

    let mut cmd = server();
    cmd.args(["dev", "--help"]);
    let out = run(cmd);
    assert!(out.status.success(), "dev --help: {:?}", out.status);
    let help = text(&out.stdout);
    assert!(help.contains("--data-dir"), "dev --help:\n{help}");
    assert!(help.contains("--listen"), "dev --help:\n{help}");
}

/// With no arguments the server does not start on some default: it fails and says what to
/// pass (`--config`) or what to run instead (`kms-server dev`).
#[test]
fn no_arguments_says_what_to_run() {
    let err = failed(&run(server()));
    assert!(err.contains("--config"), "stderr:\n{err}");
    assert!(err.contains("kms-server dev"), "stderr:\n{err}");
}

/// A config path that does not exist fails with the path in the message.
#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-config.toml");
    let mut cmd = server();
    cmd.arg("--config").arg(&path);
    let err = failed(&run(cmd));
    assert!(err.contains(&path.display().to_string()), "stderr:\n{err}");
}

/// A TOML syntax error names the file, the line and the column, and does not quote the line
/// (it may hold a secret, e.g. a database password in `[storage] url`).
#[test]
fn syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The error is on line 3: a value missing after `=`.
    let path = write_config(dir.path(), "# comment\n\nlisten = \n");
    let mut cmd = server();
    cmd.arg("--config").arg(&path);
    let err = failed(&run(cmd));
    assert!(err.contains(&path.display().to_string()), "stderr:\n{err}");
    assert!(err.contains("line 3, column"), "stderr:\n{err}");
    assert!(!err.contains("listen ="), "stderr:\n{err}");
}

/// A misspelt key is refused, not ignored, and the message names it.
#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        r#"lisen = "127.0.0.1:0"
policies = "policies"

[tls]
cert = "server.pem"
key = "server-key.pem"
client_ca = "ca.pem"

[storage]
backend = "sled"
path = "data"
"#,
    );
    let mut cmd = server();
    cmd.arg("--config").arg(&path);
    let err = failed(&run(cmd));
    assert!(err.contains(&path.display().to_string()), "stderr:\n{err}");
    assert!(err.contains("unknown field `lisen`"), "stderr:\n{err}");
    // Nothing was opened: storage is only touched after the whole file is accepted.
    assert!(!dir.path().join("data").exists());
}

/// `config.example.toml`, which the `--help` text points to, is a valid configuration: it
/// loads, uses sled, and its relative paths are resolved against its own folder.
#[test]
fn example_config_loads() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&manifest.join("config.example.toml"))
        .unwrap_or_else(|e| panic!("config.example.toml does not load: {e}"));
    assert_eq!(config.listen.port(), 8200);
    assert_eq!(config.tls.cert, manifest.join("tls/server.pem"));
    assert_eq!(config.tls.key, manifest.join("tls/server-key.pem"));
    assert_eq!(config.tls.client_ca, manifest.join("tls/client-ca.pem"));
    match &config.storage {
        StorageConfig::Sled { path } => assert_eq!(path, Path::new("/var/lib/kms/data")),
        other => panic!("the example config should use sled, not {other:?}"),
    }
    assert_eq!(config.policies, Path::new("/etc/kms/policies"));
}

/// Config with listen 127.0.0.1:0, a fresh sled directory and TLS files that do not exist.
fn config_without_tls_files(dir: &Path) -> PathBuf {
    write_config(
        dir,
        r#"listen = "127.0.0.1:0"
policies = "policies"

[tls]
cert = "missing-server.pem"
key = "missing-server-key.pem"
client_ca = "missing-ca.pem"

[storage]
backend = "sled"
path = "data"
"#,
    )
}

/// A server certificate that does not exist stops the server (it does not hang or serve
/// without TLS), and the message names the file by its resolved path, i.e. relative to the
/// config file's folder.
#[test]
fn missing_tls_cert_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_without_tls_files(dir.path());
    let mut cmd = server();
    cmd.arg("--config").arg(&path);
    let err = failed(&run(cmd));
    let cert = dir.path().join("missing-server.pem");
    assert!(err.contains(&cert.display().to_string()), "stderr:\n{err}");
}

/// A server whose TLS files are unusable never prints the "kms-server listening on" line
/// that scripts and tests wait for: TLS files are read before binding and announcing.
#[test]
fn missing_tls_cert_fails_before_announcing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_without_tls_files(dir.path());
    let mut cmd = server();
    cmd.arg("--config").arg(&path);
    let out = run(cmd);
    failed(&out);
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("listening"), "stdout:\n{stdout}");
}
