//! The key and crypto commands of `kms-cli` against the real server.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_tests::{Installation, cli_json, start_unsealed};

/// Create, encrypt (stdin → one base64 line), decrypt (→ raw bytes), rotate, reencrypt,
/// show; errors exit non-zero with one line.
#[tokio::test]
async fn key_and_crypto_commands() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let k = cli_json(&server.cli(&[
        "--format",
        "json",
        "key",
        "create",
        "app/db",
        "--label",
        "team=pay",
        "--rotation-period",
        "90d",
    ]));
    assert_eq!(k["name"], "app/db");

    let secret = "line one\nline two \u{1F510}";
    let out = server.cli_with_stdin(
        &["encrypt", "--key", "app/db", "--context", "tenant=acme"],
        secret,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ct = String::from_utf8(out.stdout).unwrap();
    assert_eq!(ct.lines().count(), 1, "{ct}");
    assert!(!ct.contains("line one"));

    let out = server.cli_with_stdin(&["decrypt", "--context", "tenant=acme"], &ct);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, secret.as_bytes());

    // Wrong context: refused by the server (exit 1), plaintext not shown.
    let out = server.cli_with_stdin(&["decrypt", "--context", "tenant=evil"], &ct);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ciphertext authentication failed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    cli_json(&server.cli(&["--format", "json", "key", "rotate", "app/db"]));
    let re = cli_json(&server.cli_with_stdin(
        &["--format", "json", "reencrypt", "--context", "tenant=acme"],
        &ct,
    ));
    assert_eq!(re["version"], 2, "{re}");
    let show = cli_json(&server.cli(&["--format", "json", "key", "show", "app/db"]));
    assert_eq!(show["latest_version"], 2, "{show}");

    let out = server.cli(&["key", "disable", "app/db"]);
    assert!(out.status.success());
    let out = server.cli_with_stdin(&["encrypt", "--key", "app/db"], "x");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));

    let out = server.cli(&["key", "create", "Bad Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid key name"));

    let list = cli_json(&server.cli(&["--format", "json", "key", "list", "--prefix", "app/"]));
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    let r = cli_json(&server.cli(&["--format", "json", "random", "--bytes", "16"]));
    assert!(r.to_string().len() > 20, "{r}");
}

/// `kms-cli envelope` round trip; a tampered file exits 2 and writes no output.
#[tokio::test]
async fn envelope_commands() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    assert!(server.cli(&["key", "create", "files"]).status.success());
    let dir = inst.root.path();
    let input = dir.join("in.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let enc = dir.join("in.kmsenv");
    let out = dir.join("out.bin");
    let p = |x: &std::path::Path| x.display().to_string();
    let r = server.cli(&[
        "envelope",
        "encrypt",
        "--key",
        "files",
        "--in",
        &p(&input),
        "--out",
        &p(&enc),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = server.cli(&["envelope", "decrypt", "--in", &p(&enc), "--out", &p(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let mut bad = std::fs::read(&enc).unwrap();
    let n = bad.len();
    bad[n - 100] ^= 1;
    std::fs::write(&enc, bad).unwrap();
    let out2 = dir.join("out2.bin");
    let r = server.cli(&["envelope", "decrypt", "--in", &p(&enc), "--out", &p(&out2)]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("authentication failed"));
    assert!(!out2.exists());
}
