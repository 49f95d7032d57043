//! The documented exit codes (README "kms-cli exit codes") against a real `kms-server`: 1 the
//! server refused, 2 bad usage (nothing sent), 3 cannot connect.
//!
//! The server binary is the workspace's (`cargo test --workspace` builds it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use kms_tests::{Installation, start_unsealed};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit `code`, a one-line `kms-cli: …` message (no panic, no clap noise) and nothing
/// on stdout; returns the message.
fn exits(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    err
}

/// Refusals by the server exit 1 whatever the status: not found, permission denied, sealed;
/// the message names the gRPC status.
#[tokio::test]
async fn server_refusals_exit_1() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;

    let err = exits(&server.cli(&["key", "show", "no/such-key"]), 1);
    assert!(err.starts_with("kms-cli: not found"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let other = inst.pki.client("other");
    let err = exits(
        &server.cli(&[
            "--client-cert",
            other.cert.to_str().unwrap(),
            "--client-key",
            other.key.to_str().unwrap(),
            "key",
            "list",
        ]),
        1,
    );
    assert!(err.contains("permission denied"), "{err}");

    server.client().await.seal().await.unwrap();
    let err = exits(&server.cli(&["random", "--bytes", "16"]), 1);
    assert!(err.contains("sealed"), "{err}");
    // Status still answers while sealed: the refusal above is the server's, not the link's.
    assert!(server.cli(&["operator", "status"]).status.success());
}

/// Usage errors exit 2 before anything is sent, with a server running and the connection
/// settings valid: an unknown flag, a missing argument, a value out of range, an unknown shell.
#[tokio::test]
async fn usage_errors_exit_2_with_a_server_up() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    for args in [
        &["key", "list", "--bogus"][..],
        &["key", "create"],
        &["random", "--bytes", "0"],
        &["completions", "tcsh"],
        &["nosuchcommand"],
    ] {
        let out = server.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("error:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Local input checked before connecting: no key was created by the refused command.
    let out = server.cli(&["key", "create", "k", "--label", "a=1", "--label", "a=2"]);
    let err = exits(&out, 2);
    assert!(err.contains("given twice"), "{err}");
    let out = server.cli(&["--format", "json", "key", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"k\""));
}

/// No connection to a KMS exits 3 with a hint: nothing listening at the address, a server
/// whose certificate does not chain to the CA given (refused by the client), a client
/// certificate revoked in the server's CRL (refused by the server).
#[tokio::test]
async fn connection_failures_exit_3() {
    let inst = Installation::new();
    let server = inst.start();

    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("https://127.0.0.1:{port}");
    let err = exits(&server.cli(&["--addr", &addr, "operator", "status"]), 3);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains("check --addr"), "{err}");

    // Another installation's CA: the server's certificate is not trusted.
    let foreign = Installation::new();
    let ca = foreign.pki.ca();
    let err = exits(
        &server.cli(&["--ca-cert", ca.to_str().unwrap(), "operator", "status"]),
        3,
    );
    assert!(err.contains("cannot connect"), "{err}");

    // A client certificate the server refuses (listed in its CRL): refused in the handshake.
    let revoked = inst.pki.client("revoked");
    let err = exits(
        &server.cli(&[
            "--client-cert",
            revoked.cert.to_str().unwrap(),
            "--client-key",
            revoked.key.to_str().unwrap(),
            "operator",
            "status",
        ]),
        3,
    );
    assert!(err.contains("cannot connect"), "{err}");

    // The same server with the right settings answers: the failures above were the link's.
    assert!(server.cli(&["operator", "status"]).status.success());
}
