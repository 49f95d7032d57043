//! The `kms-bench` command line. (Also makes `cargo test --workspace` build the binary, which
//! the black-box smoke tests in `tests/` run.)

use std::process::Command;

fn kms_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kms-bench"))
}

#[test]
fn help_names_every_subcommand() {
    let out = kms_bench().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "echo-server", "collector"] {
        assert!(text.contains(sub), "--help lacks {sub}: {text}");
    }
}

/// No server to talk to: a usage/connection failure (exit 2) with a message, not a report.
#[test]
fn unreachable_server_exits_2_with_the_reason() {
    let dir = std::env::temp_dir();
    let missing = dir.join("kms-bench-no-such-ca.pem");
    let out = kms_bench()
        .args(["run", "--count", "1", "--addr", "https://127.0.0.1:9"])
        .arg("--ca-cert")
        .arg(&missing)
        .arg("--client-cert")
        .arg(&missing)
        .arg("--client-key")
        .arg(&missing)
        .env_remove("KMS_ADDR")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kms-bench-no-such-ca.pem"), "{err}");
}
