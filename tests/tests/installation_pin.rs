//! The installation fingerprint and the pinned installation (`[seal] installation`), through
//! the real server and kms-cli: someone who can write the storage cannot replace the whole
//! installation with one of their own and have a pinned server, or a careful officer, take it.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kms_tests::{Installation, Server, bin, cli_json, copy_dir, init, status, unseal_with};
use tonic::Code;

/// The config file of `inst` with `[seal] installation = fp` (replacing an earlier pin), or
/// without a `[seal]` section when `fp` is `None`.
fn pin(inst: &Installation, fp: Option<&str>) {
    let path = inst.root.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut text = match text.find("\n[seal]\n") {
        Some(i) => text[..=i].to_string(),
        None => text,
    };
    if let Some(fp) = fp {
        text.push_str(&format!("\n[seal]\ninstallation = \"{fp}\"\n"));
    }
    std::fs::write(&path, text).unwrap();
}

/// The `operation` of every audit record of `inst`.
fn audited(inst: &Installation) -> Vec<String> {
    std::fs::read_to_string(inst.root.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["operation"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn fingerprint(server: &Server) -> String {
    server
        .client()
        .await
        .status()
        .await
        .unwrap()
        .installation_fingerprint
}

fn is_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Replaces the data directory `data` with a copy of `with`, keeping the original in `keep`.
fn swap(data: &Path, with: &Path, keep: &Path) {
    std::fs::rename(data, keep).unwrap();
    copy_dir(with, data);
}

/// Init prints the installation fingerprint (text and JSON, with the sentence to pin it); it is
/// the one Status reports, before and after unseal, and it does not change across restarts or
/// a barrier rotation; a server pinned to it unseals as before.
/// [SNC 10.5.c/d: the key storage container is named by a stable, public identity the
/// operator can pin]
#[tokio::test]
async fn init_prints_the_fingerprint_status_shows_it_and_it_is_stable() {
    let inst = Installation::new();
    let server = inst.start();
    assert_eq!(
        fingerprint(&server).await,
        "",
        "empty while not initialised"
    );
    let st = cli_json(&server.cli(&["--format", "json", "operator", "status"]));
    assert_eq!(st["installation_fingerprint"], "");

    let v = cli_json(&server.cli(&[
        "--format",
        "json",
        "operator",
        "init",
        "--shares",
        "3",
        "--threshold",
        "2",
    ]));
    let fp = v["installation_fingerprint"].as_str().unwrap().to_string();
    assert!(is_fingerprint(&fp), "{fp}");
    let advice = v["pin"].as_str().unwrap();
    assert!(
        advice.contains("[seal]") && advice.contains(&format!("installation = \"{fp}\"")),
        "{advice}"
    );
    let shares: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(fingerprint(&server).await, fp);
    let human = server.cli(&["operator", "status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("installation: {fp}")), "{text}");
    let st = cli_json(&server.cli(&["--format", "json", "operator", "status"]));
    assert_eq!(st["installation_fingerprint"], fp.as_str());
    drop(server);

    // The human form of init says it too (another installation, same code path).
    let other = Installation::new();
    let other_server = other.start();
    let out = other_server.cli(&["operator", "init", "--shares", "1", "--threshold", "1"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let other_fp = fingerprint(&other_server).await;
    assert_ne!(other_fp, fp, "two installations, two fingerprints");
    assert!(
        text.contains(&format!("installation: {other_fp}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("`installation = \"{other_fp}\"`"))
            && text.contains("[seal] section"),
        "{text}"
    );

    // Stable across a restart, an unseal and a barrier rotation.
    let server = inst.start();
    assert_eq!(fingerprint(&server).await, fp);
    unseal_with(&server, &shares, &[1, 3]).await;
    assert_eq!(fingerprint(&server).await, fp);
    server.client().await.rotate_barrier().await.unwrap();
    assert_eq!(fingerprint(&server).await, fp);
    drop(server);

    // Pinned to it: starts, unseals as before.
    pin(&inst, Some(&fp));
    let server = inst.start();
    assert_eq!(fingerprint(&server).await, fp);
    unseal_with(&server, &shares, &[2, 3]).await;
}

/// An installation swap: the data directory of a pinned server replaced with another
/// installation's (its own seal record, keyring, marker and keys, and shares its author
/// holds). Unseal is refused with FAILED_PRECONDITION naming both fingerprints; no share is
/// evaluated or counted (progress stays 0, and t shares in a row do not unseal it); init on
/// an emptied store is refused too. The original data directory put back unseals.
/// [SNC 10.5.c/d: keys are only ever served from the installation's own key storage
/// container; RègleVérificationUtilisabilité-1: the container is checked before use]
#[tokio::test]
async fn a_swapped_installation_is_refused_before_any_share_counts() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    let fp = fingerprint(&server).await;
    drop(server);

    let impostor = Installation::new();
    let impostor_server = impostor.start();
    let foreign = init(&impostor_server, 3, 2).await;
    let foreign_fp = fingerprint(&impostor_server).await;
    drop(impostor_server);
    assert_ne!(foreign_fp, fp);

    pin(&inst, Some(&fp));
    let keep = inst.root.path().join("data.orig");
    swap(&inst.data_dir(), &impostor.data_dir(), &keep);
    let server = inst.start();
    let client = server.client().await;
    // Status shows what the store holds, so the operator can see it is not theirs.
    assert_eq!(fingerprint(&server).await, foreign_fp);
    for share in [&foreign[0], &foreign[1], &shares[0]] {
        let s = status(client.unseal(share).await.unwrap_err());
        assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
        let m = s.message();
        assert!(
            m.contains(
                "the data directory or database holds another installation than the one this \
                 server is pinned to"
            ),
            "{m}"
        );
        assert!(m.contains(&fp) && m.contains(&foreign_fp), "{m}");
        assert!(m.contains("No share was evaluated or counted"), "{m}");
        let st = client.status().await.unwrap();
        assert!(st.sealed);
        assert_eq!(st.progress, 0);
        assert!(st.submitted_indexes.is_empty());
    }
    // Not an invalid share: no lockout was counted against this address either (six refusals
    // in a row would lock it for 60 s after five).
    for _ in 0..3 {
        let s = status(client.unseal(&foreign[2]).await.unwrap_err());
        assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    }
    // Init on a store that is already initialised stays ALREADY_EXISTS.
    let s = status(client.init(1, 1).await.unwrap_err());
    assert_eq!(s.code(), Code::AlreadyExists, "{}", s.message());
    drop(client);
    drop(server);

    // An emptied store: a pinned server does not initialise a new installation.
    std::fs::remove_dir_all(inst.data_dir()).unwrap();
    let server = inst.start();
    let s = status(server.client().await.init(1, 1).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(
        s.message().contains(&fp) && s.message().contains("swapped or lost"),
        "{}",
        s.message()
    );
    assert!(!server.client().await.status().await.unwrap().initialized);
    drop(server);

    // The original data directory back: the pinned server unseals with its own shares.
    std::fs::remove_dir_all(inst.data_dir()).unwrap();
    std::fs::rename(&keep, inst.data_dir()).unwrap();
    let server = inst.start();
    assert_eq!(fingerprint(&server).await, fp);
    unseal_with(&server, &shares, &[2, 3]).await;
    assert!(
        std::fs::read_to_string(inst.root.path().join("server.log"))
            .unwrap()
            .contains("this server will not unseal this store"),
        "the swap was logged at start"
    );
}

/// What the pin is for, stated as a test: without `[seal] installation`, a server takes a
/// swapped store and unseals it with its author's shares (SECURITY.md says so). Pin it.
/// [SNC 10.5.c/d: the unpinned limit, documented]
#[tokio::test]
async fn an_unpinned_server_still_accepts_a_swapped_store() {
    let inst = Installation::new();
    let server = inst.start();
    init(&server, 1, 1).await;
    drop(server);
    let impostor = Installation::new();
    let impostor_server = impostor.start();
    let foreign = init(&impostor_server, 1, 1).await;
    drop(impostor_server);
    swap(
        &inst.data_dir(),
        &impostor.data_dir(),
        &inst.root.path().join("data.orig"),
    );
    let server = inst.start();
    unseal_with(&server, &foreign, &[1]).await;
}

/// A malformed `[seal] installation` (or an unknown key in `[seal]`) stops the start with an
/// error naming the config file and the line.
/// [SNC 10.5.c/d: a pin that cannot be read is not silently ignored]
#[test]
fn a_malformed_pin_stops_the_start_naming_the_file() {
    let good = format!("sha256:{}", "ab".repeat(32));
    for (extra, expected) in [
        (
            "[seal]\ninstallation = \"sha256:abc\"\n".to_string(),
            "64 hex digits",
        ),
        (
            format!("[seal]\ninstallation = \"{}\"\n", &good[7..]),
            "64 hex digits",
        ),
        (
            format!("[seal]\ninstallation = \"{}zz\"\n", &good[..good.len() - 2]),
            "64 hex digits",
        ),
        ("[seal]\ninstallation = 42\n".to_string(), "string"),
        (
            format!("[seal]\ninstalation = \"{good}\"\n"),
            "unknown field",
        ),
    ] {
        let inst = Installation::with_config(&extra);
        let config = inst.root.path().join("config.toml");
        let out = std::process::Command::new(bin("kms-server"))
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stderr}");
        assert!(
            stderr.contains(&format!("config file {}", config.display()))
                && stderr.contains("line 12"),
            "{extra}: {stderr}"
        );
        assert!(stderr.contains(expected), "{extra}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{extra}: it started"
        );
    }
    // A well-formed value starts.
    let inst = Installation::with_config(&format!("[seal]\ninstallation = \"{good}\"\n"));
    drop(inst.start());
}

/// `kms-cli operator unseal --expect-installation`: with another fingerprint than the server's,
/// it exits 1 naming both and sends no share (the audit log holds its Status call but no new
/// `unseal` record, and the progress is unchanged); a malformed one exits 2 before connecting;
/// the right one (in any case) unseals.
/// [SNC 9.6: the server is authenticated before an officer's secret is handed over]
#[tokio::test]
async fn the_cli_refuses_to_hand_a_share_to_another_installation() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    let fp = fingerprint(&server).await;
    let client = server.client().await;
    assert_eq!(client.unseal(&shares[0]).await.unwrap().progress, 1);

    let wrong = format!("sha256:{}", "0".repeat(64));
    let before = audited(&inst);
    let unseals = |ops: &[String]| ops.iter().filter(|o| *o == "unseal").count();
    let out = server.cli(&[
        "operator",
        "unseal",
        "--expect-installation",
        &wrong,
        &shares[1],
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&fp) && err.contains(&wrong), "{err}");
    assert!(err.contains("the share was not sent"), "{err}");
    assert!(!err.contains(&shares[1]), "share in stderr: {err}");
    let after = audited(&inst);
    assert_eq!(
        unseals(&after),
        unseals(&before),
        "an unseal reached the server"
    );
    assert_eq!(
        after.len(),
        before.len() + 1,
        "only its Status call: {after:?}"
    );
    assert_eq!(after.last().unwrap(), "status");
    let st = client.status().await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 1);
    assert_eq!(st.submitted_indexes, vec![1]);

    // Malformed: usage error, nothing sent at all.
    let before = audited(&inst);
    let out = server.cli(&[
        "operator",
        "unseal",
        "--expect-installation",
        "sha256:1234",
        &shares[1],
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("64 hex digits") && err.contains("nothing was sent"),
        "{err}"
    );
    assert_eq!(audited(&inst), before);

    // The help says what a mismatch does.
    let help = server.cli(&["operator", "unseal", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--expect-installation")
            && help.contains("KMS_EXPECT_INSTALLATION")
            && help.contains("exits 1 (refused)"),
        "{help}"
    );

    // The right one, even in upper case: sent, and it unseals.
    let upper = format!("sha256:{}", fp[7..].to_uppercase());
    let st = cli_json(&server.cli(&[
        "--format",
        "json",
        "operator",
        "unseal",
        "--expect-installation",
        &upper,
        &shares[1],
    ]));
    assert_eq!(st["sealed"], false);
    assert_eq!(unseals(&audited(&inst)), 2);
}

/// Rekey changes the fingerprint (it covers the share set) and its response says so, with the
/// sentence to update the pin. The node that ran the rekey follows the new fingerprint until it
/// restarts; restarted with the old pin it refuses to unseal (naming both), and with the new
/// pin it unseals with the new shares.
/// [RègleRenouvellement-1: renewing the shares renews the pinned identity, visibly]
#[tokio::test]
async fn a_rekey_changes_the_fingerprint_and_the_response_says_so() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 1, 1).await;
    let old = fingerprint(&server).await;
    drop(server);
    pin(&inst, Some(&old));
    let server = inst.start();
    unseal_with(&server, &shares, &[1]).await;

    let v = cli_json(&server.cli(&[
        "--format",
        "json",
        "operator",
        "rekey",
        "--shares",
        "3",
        "--threshold",
        "2",
        "--current-share",
        &shares[0],
    ]));
    let new = v["installation_fingerprint"].as_str().unwrap().to_string();
    assert!(is_fingerprint(&new), "{new}");
    assert_ne!(new, old);
    let advice = v["pin"].as_str().unwrap();
    assert!(
        advice.contains("changed") && advice.contains(&format!("installation = \"{new}\"")),
        "{advice}"
    );
    let new_shares: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(fingerprint(&server).await, new);
    // The client library's response carries it too.
    let resp = server
        .client()
        .await
        .rekey(new_shares[..2].to_vec(), 3, 2)
        .await
        .unwrap();
    assert!(is_fingerprint(&resp.installation_fingerprint));
    assert_ne!(resp.installation_fingerprint, new);
    let (new, new_shares) = (resp.installation_fingerprint, resp.shares);

    // This node ran the rekey (t shares of its pinned installation vouched for it): it follows.
    server.client().await.seal().await.unwrap();
    unseal_with(&server, &new_shares, &[1, 2]).await;
    drop(server);

    // Restarted with the old pin: refused, naming both, nothing counted.
    let server = inst.start();
    let client = server.client().await;
    let s = status(client.unseal(&new_shares[0]).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(
        s.message().contains(&old) && s.message().contains(&new),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("another node rekeyed"),
        "{}",
        s.message()
    );
    assert_eq!(client.status().await.unwrap().progress, 0);
    drop(client);
    drop(server);

    // With the new pin: unseals.
    pin(&inst, Some(&new));
    let server = inst.start();
    unseal_with(&server, &new_shares, &[2, 3]).await;
}

/// The production config (and the example) carry the pin commented, with how to fill it; the
/// line uncommented with a fingerprint loads and pins. `kms-server dev` is never pinned (its
/// config is built in code: `dev_and_officers.rs` starts it from an empty directory).
/// [SNC 10.5.c/d: the pin is part of the deployed configuration]
#[test]
fn the_example_configs_carry_the_pin_commented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fp = format!("sha256:{}", "5e".repeat(32));
    for file in [
        "deploy/config.production.toml",
        "kms-server/config.example.toml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let line = "# installation = \"sha256:<64 hex digits from kms-cli operator init>\"";
        assert!(text.contains("# [seal]\n") && text.contains(line), "{file}");
        assert!(
            text.contains("kms-cli operator init") && text.contains("rekey"),
            "{file}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let pinned = text
            .replace("# [seal]\n", "[seal]\n")
            .replace(line, &format!("installation = \"{fp}\""));
        std::fs::write(&path, pinned).unwrap();
        let config = kms_server::Config::load(&path).unwrap();
        assert_eq!(
            config.seal.installation.map(|f| f.to_string()),
            Some(fp.clone()),
            "{file}"
        );
        std::fs::write(&path, &text).unwrap();
        assert!(
            kms_server::Config::load(&path)
                .unwrap()
                .seal
                .installation
                .is_none()
        );
    }
}
