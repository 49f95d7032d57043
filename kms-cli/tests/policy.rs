//! `kms-cli policy check` and `policy list`, offline, against the repository's example policies.

use std::path::PathBuf;
use std::process::Command;

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kms-cli"))
        .args(args)
        .env_remove("KMS_ADDR")
        .output()
        .expect("run kms-cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn policies() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .display()
        .to_string()
}

/// `policy check` prints the decision and the deciding rule's file:line, offline.
#[test]
fn check_names_the_deciding_rule() {
    let dir = policies();
    let check = |p: &str, op: &str, key: &str| {
        cli(&[
            "policy",
            "check",
            "--dir",
            &dir,
            "--principal",
            p,
            "--operation",
            op,
            "--key",
            key,
        ])
    };
    let (code, out, _) = check("spiffe://kms.dev/service", "encrypt", "app/orders");
    assert_eq!(code, Some(0));
    assert!(out.starts_with("allow by service.toml:"), "{out}");
    let (_, out, _) = check("spiffe://kms.dev/service", "decrypt", "app/escrow/x");
    assert!(out.starts_with("deny by service.toml:"), "{out}");
    let (_, out, _) = check("spiffe://nobody", "read", "app/orders");
    assert_eq!(out.trim(), "default deny");
    let (code, _, err) = check("x", "fly", "k");
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown operation"), "{err}");
}

/// `policy list` answers both "all rights of this identity" and "who can access this key".
#[test]
fn list_by_principal_and_by_key() {
    let dir = policies();
    let (code, out, _) = cli(&["policy", "list", "--dir", &dir, "--key", "app/orders"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("spiffe://kms.dev/service") && out.contains("spiffe://kms.dev/admin"),
        "{out}"
    );
    let (_, out, _) = cli(&[
        "policy",
        "list",
        "--dir",
        &dir,
        "--principal",
        "spiffe://kms.dev/auditor",
    ]);
    assert!(
        out.contains("auditor.toml:") && !out.contains("service.toml"),
        "{out}"
    );
    let (_, out, _) = cli(&[
        "policy",
        "list",
        "--dir",
        &dir,
        "--principal",
        "spiffe://nobody",
    ]);
    assert!(out.contains("default deny"), "{out}");
    let (code, _, err) = cli(&["policy", "list", "--dir", "/nonexistent", "--key", "k"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent"), "{err}");
}
