//! Backup while serving and offline restore, through the real binaries: `kms-cli operator
//! backup`, `kms-server restore`, then the restored server unsealed with the same share.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use kms_client::Client;
use kms_client::proto as pb;
use kms_tests::{Installation, Server, bin, start_unsealed, unseal_with};

/// A key whose creation and one encryption under it were acknowledged.
#[derive(Clone)]
struct Acked {
    key: String,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
}

async fn create_and_encrypt(c: &Client, key: &str) -> Acked {
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: key.to_string(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let plaintext = format!("secret of {key}").into_bytes();
    let ciphertext = c
        .encrypt(key, plaintext.clone(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    Acked {
        key: key.to_string(),
        plaintext,
        ciphertext,
    }
}

async fn key_names(c: &Client) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = c
            .call(c.key_admin().list_keys(pb::ListKeysRequest {
                prefix: String::new(),
                page_size: 1000,
                page_token: token,
            }))
            .await
            .unwrap();
        names.extend(page.keys.into_iter().map(|k| k.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        token = page.next_page_token;
    }
}

/// `kms-cli operator backup --out FILE` as the test operator. Blocks in place, so the test's
/// other tasks keep running on the other worker (tests calling it are multi-threaded).
fn backup_cli(server: &Server, out: &Path) -> Output {
    tokio::task::block_in_place(|| {
        server.cli(&["operator", "backup", "--out", out.to_str().unwrap()])
    })
}

/// `kms-server restore --config CONFIG --from FILE` for the installation `inst`.
fn restore(inst: &Installation, from: &Path) -> Output {
    Command::new(bin("kms-server"))
        .arg("restore")
        .arg("--config")
        .arg(inst.root.path().join("config.toml"))
        .arg("--from")
        .arg(from)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Files in a folder (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The audit records of an installation for one operation.
fn audit_records(inst: &Installation, operation: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(inst.root.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["operation"] == operation)
        .collect()
}

/// A backup taken while a client keeps creating keys and encrypting is one consistent
/// instant: restored into an empty data directory of another installation, the KMS starts
/// sealed, unseals with the SAME share (the one valid when the backup was taken, even after a
/// rekey), holds every key acknowledged before the backup began (and only keys that were
/// created), and decrypts the ciphertexts made under each of them.
/// The file holds only sealed records (no plaintext made before the backup appears in it), is
/// private to its owner, and the backup call is in the audit log.
/// [SNC 10.1.d / 12.5.d: backups leaving the perimeter are encrypted — every record stays
/// sealed under the barrier]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_restores_what_was_acknowledged() {
    let a = Installation::new();
    let mut share = None;
    let server = start_unsealed(&a, &mut share).await;
    let c = server.client().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let k = create_and_encrypt(&c, &format!("pre/{i}")).await;
        acked.lock().unwrap().push(k);
    }

    // The workload: keeps creating keys and encrypting until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let k = create_and_encrypt(&c, &format!("live/{i}")).await;
                acked.lock().unwrap().push(k);
                i += 1;
            }
            i
        })
    };
    // The backup starts only once the workload is running (bounded wait, no fixed sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().unwrap().len() < 13 {
        assert!(
            std::time::Instant::now() < deadline,
            "workload made no keys"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: Vec<Acked> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kms.backup");
    let out = backup_cli(&server, &file);
    let after: Vec<Acked> = acked.lock().unwrap().clone();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let made = worker.await.unwrap();
    assert!(out.status.success(), "backup failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("backup written"),
        "{}",
        text(&out.stdout)
    );
    // Only the backup is in the folder: no temporary file left behind.
    assert_eq!(entries(dir.path()), vec![file.clone()]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "backup file mode {mode:o}");
    }
    let bytes = std::fs::read(&file).unwrap();
    for k in &before {
        assert!(
            !bytes.windows(k.plaintext.len()).any(|w| w == k.plaintext),
            "plaintext of {} found in the backup",
            k.key
        );
    }
    // Audited like every call: allowed, by the test operator.
    let recs = audit_records(&a, "backup");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["outcome"], "ok");
    assert_eq!(recs[0]["principal"], "spiffe://kms.test/operator");
    // A rekey after the backup does not reach it: the restored KMS needs the old share.
    let new_share = c
        .rekey(vec![share.clone().unwrap()], 1, 1)
        .await
        .unwrap()
        .shares;
    assert_ne!(new_share, vec![share.clone().unwrap()]);
    drop(server);

    // Offline check of the file.
    let v = Command::new(bin("kms-cli"))
        .args(["--format", "json", "operator", "verify-backup"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", text(&v.stderr));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert!(v["records"].as_u64().unwrap() > 2 * before.len() as u64);

    // Restore into a new installation's empty data directory.
    let b = Installation::new();
    let r = restore(&b, &file);
    assert!(r.status.success(), "restore failed: {}", text(&r.stderr));
    assert!(text(&r.stdout).contains("restored"), "{}", text(&r.stdout));
    let restored = b.start();
    let rc = restored.client().await;
    let st = rc.status().await.unwrap();
    assert!(st.initialized && st.sealed, "{st:?}");
    unseal_with(&restored, &[share.clone().unwrap()], &[1]).await;

    let names = key_names(&rc).await;
    let attempted: BTreeSet<String> = (0..10)
        .map(|i| format!("pre/{i}"))
        .chain((0..=made).map(|i| format!("live/{i}")))
        .collect();
    for k in &before {
        assert!(
            names.contains(&k.key),
            "{} was acknowledged before the backup but is missing",
            k.key
        );
    }
    for n in &names {
        assert!(attempted.contains(n), "restored key {n} was never created");
    }
    // Every restored key decrypts what it encrypted, including keys made during the backup.
    let mut decrypted = 0;
    for k in after.iter().filter(|k| names.contains(&k.key)) {
        let p = rc
            .decrypt(k.ciphertext.clone(), HashMap::new())
            .await
            .unwrap_or_else(|e| panic!("{} does not decrypt after restore: {e}", k.key));
        assert_eq!(p.plaintext, k.plaintext, "{}", k.key);
        decrypted += 1;
    }
    assert!(decrypted >= before.len());
    // And it serves new work, including changes that compare-and-set on the restored
    // records' versions.
    create_and_encrypt(&rc, "after/restore").await;
    let rotated = rc
        .call(rc.key_admin().rotate_key(pb::RotateKeyRequest {
            name: "pre/0".into(),
        }))
        .await
        .unwrap();
    assert_eq!(rotated.latest_version, 2, "{rotated:?}");
}

/// Makes a backup of a small unsealed KMS; returns it, the share, and the folder holding it.
async fn small_backup() -> (Vec<u8>, String, tempfile::TempDir) {
    let a = Installation::new();
    let mut share = None;
    let server = start_unsealed(&a, &mut share).await;
    let c = server.client().await;
    for i in 0..3 {
        create_and_encrypt(&c, &format!("k/{i}")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kms.backup");
    let out = backup_cli(&server, &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (std::fs::read(&file).unwrap(), share.unwrap(), dir)
}

/// A damaged backup (one byte flipped, truncated, garbage appended, an unknown format version,
/// not a backup at all) is refused by restore with a message naming the damage, and the
/// target data directory stays empty; `verify-backup` refuses it too (exit 2). The intact
/// file then restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backup_is_refused_and_nothing_is_written() {
    let (good, share, dir) = small_backup().await;
    let n = good.len();
    let mut flipped = good.clone();
    flipped[n / 2] ^= 0x10;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"\ngarbage");
    let mut magic = good.clone();
    magic[0] = b'X';
    // The last byte of the format version (bytes 8..12).
    let mut version = good.clone();
    version[11] = 2;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "version",
            version,
            "backup format version 2 is not supported",
        ),
        ("flipped", flipped, "the file is damaged or was altered"),
        ("cut-end", good[..n - 1].to_vec(), "truncated"),
        ("cut-half", good[..n / 2].to_vec(), "truncated"),
        ("trailing", trailing, "unexpected bytes after the checksum"),
        ("magic", magic, "not a KMS backup file"),
    ];
    let b = Installation::new();
    for (name, bytes, expected) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        let r = restore(&b, &file);
        let err = text(&r.stderr);
        assert!(
            !r.status.success(),
            "{name}: restore accepted a damaged file"
        );
        assert!(err.contains(expected), "{name}: {err}");
        assert!(err.contains("nothing was written"), "{name}: {err}");
        assert!(
            entries(&b.data_dir()).is_empty(),
            "{name}: restore wrote into the data directory"
        );
        let v = Command::new(bin("kms-cli"))
            .args(["operator", "verify-backup"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(v.status.code(), Some(2), "{name}: {}", text(&v.stderr));
        assert!(
            text(&v.stderr).contains(expected),
            "{name}: {}",
            text(&v.stderr)
        );
    }
    // The same target takes the intact file, and unseals with the same share.
    let file = dir.path().join("good");
    std::fs::write(&file, &good).unwrap();
    let r = restore(&b, &file);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let server = b.start();
    unseal_with(&server, &[share], &[1]).await;
    assert_eq!(key_names(&server.client().await).await.len(), 3);
}

/// Restore never merges into or replaces a store: into a data directory that holds an
/// installation it is refused, and that installation is untouched (same share set, unseals
/// with its own share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_non_empty_data_dir_is_refused() {
    let (good, _, dir) = small_backup().await;
    let file = dir.path().join("kms.backup");
    std::fs::write(&file, &good).unwrap();
    let b = Installation::new();
    let mut b_share = None;
    let server = start_unsealed(&b, &mut b_share).await;
    let set = server.client().await.status().await.unwrap().share_set_id;
    assert!(server.terminate());
    let r = restore(&b, &file);
    assert!(!r.status.success());
    let err = text(&r.stderr);
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    let server = start_unsealed(&b, &mut b_share).await;
    let c = server.client().await;
    assert_eq!(c.status().await.unwrap().share_set_id, set);
    assert!(key_names(&c).await.is_empty());
}

/// A principal without the `backup` operation is refused (PERMISSION_DENIED, exit 1) and no
/// file appears, not even a temporary one; the refusal is audited. A sealed KMS refuses a
/// backup too. [SNC 9.2: rights by role; SNC 12.6: refusals are logged]
#[tokio::test]
async fn backup_without_the_grant_is_denied_and_writes_nothing() {
    let a = Installation::new();
    let mut share = None;
    let server = start_unsealed(&a, &mut share).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kms.backup");
    let other = a.pki.client("other");
    let out = server.cli(&[
        "--client-cert",
        other.cert.to_str().unwrap(),
        "--client-key",
        other.key.to_str().unwrap(),
        "operator",
        "backup",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    let recs = audit_records(&a, "backup");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["outcome"], "denied");
    assert_eq!(recs[0]["principal"], "spiffe://kms.test/other");

    // Sealed: refused even with the grant.
    server.client().await.seal().await.unwrap();
    let out = server.cli(&["operator", "backup", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sealed"),
        "{}",
        text(&out.stderr)
    );
    assert!(entries(dir.path()).is_empty());
}
