//! Dev mode in one command, and shares encrypted to officers' age keys.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use kms_tests::{Installation, Server, bin, cli_json};

fn start_dev(dir: &std::path::Path) -> Server {
    let tls = dir.join("tls");
    Server::spawn(
        Command::new(bin("kms-server"))
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir),
        &dir.with_extension("log"),
        tls.join("ca.pem"),
        kms_server::transport::pki::files(&tls, "client"),
    )
}

/// `kms-server dev` on port 0: unsealed at once, `DATA_DIR/env` can be sourced by a shell and
/// points kms-cli at the actual port; a restart reuses the same installation.
#[tokio::test]
async fn dev_mode_is_one_command_and_survives_restart() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("dev");
    let server = start_dev(&dir);
    for role in ["client", "admin", "service", "auditor", "officer"] {
        assert!(
            dir.join(format!("tls/{role}.pem")).exists(),
            "{role} certificate missing"
        );
    }
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(
        env.contains(&format!("export KMS_ADDR='{}'", server.addr)),
        "{env}"
    );
    let script = format!(
        ". '{}/env' && '{}' --format json operator status",
        dir.display(),
        bin("kms-cli").display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env_remove("KMS_ADDR")
        .env_remove("KMS_TLS_SERVER_NAME")
        .output()
        .unwrap();
    let st = cli_json(&out);
    assert_eq!(st["sealed"], false);
    assert_eq!(st["initialized"], true);
    let set = st["share_set_id"].as_str().unwrap().to_string();
    assert!(server.terminate());

    let server = start_dev(&dir);
    let st = server.client().await.status().await.unwrap();
    assert!(!st.sealed);
    assert_eq!(st.share_set_id, set);
}

/// `init --officer-key` encrypts each share to its officer's age key and prints none; each
/// officer unseals from their file with their identity.
#[tokio::test]
async fn shares_encrypted_to_officer_age_keys() {
    let inst = Installation::new();
    let server = inst.start();
    let ids: Vec<age::x25519::Identity> =
        (0..3).map(|_| age::x25519::Identity::generate()).collect();
    let out_dir = inst.root.path().join("shares");
    let mut args = vec![
        "--format".to_string(),
        "json".into(),
        "operator".into(),
        "init".into(),
        "--shares".into(),
        "3".into(),
        "--threshold".into(),
        "2".into(),
        "--out-dir".into(),
        out_dir.display().to_string(),
    ];
    for id in &ids {
        args.push("--officer-key".into());
        args.push(id.to_public().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.cli(&args);
    let v = cli_json(&out);
    assert!(v.get("shares").is_none(), "plaintext shares printed: {v}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("kms1-"));
    assert_eq!(v["share_files"].as_array().unwrap().len(), 3);

    // Officer 2's file does not open with officer 1's identity.
    let key1 = inst.root.path().join("officer1.key");
    let key3 = inst.root.path().join("officer3.key");
    use age::secrecy::ExposeSecret;
    std::fs::write(&key1, ids[0].to_string().expose_secret()).unwrap();
    std::fs::write(&key3, ids[2].to_string().expose_secret()).unwrap();
    let share = |i: usize| out_dir.join(format!("share-{i}.age")).display().to_string();
    let wrong = server.cli(&[
        "operator",
        "unseal",
        "--share-file",
        &share(2),
        "--identity",
        key1.to_str().unwrap(),
    ]);
    assert_eq!(wrong.status.code(), Some(2));

    let st = cli_json(&server.cli(&[
        "--format",
        "json",
        "operator",
        "unseal",
        "--share-file",
        &share(1),
        "--identity",
        key1.to_str().unwrap(),
    ]));
    assert_eq!(st["progress"], 1);
    let st = cli_json(&server.cli(&[
        "--format",
        "json",
        "operator",
        "unseal",
        "--share-file",
        &share(3),
        "--identity",
        key3.to_str().unwrap(),
    ]));
    assert_eq!(st["sealed"], false);
}
