//! The audit log through the real server: a record per call, no secret in it, a chain that
//! verifies across restarts, and fail-closed when it cannot be written.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use kms_client::ClientError;
use kms_client::proto as pb;
use kms_tests::{Installation, bin, start_unsealed};
use tonic::Code;

fn records(inst: &Installation) -> Vec<serde_json::Value> {
    std::fs::read_to_string(inst.root.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn create(c: &kms_client::Client, name: impl Into<String>) -> Result<pb::Key, ClientError> {
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    }))
    .await
}

fn verify(inst: &Installation) -> std::process::Output {
    std::process::Command::new(bin("kms-cli"))
        .args(["audit", "verify"])
        .arg(inst.root.path().join("audit.log"))
        .output()
        .unwrap()
}

/// Allowed, denied and failed calls are all recorded with principal, operation and status;
/// known plaintexts, data keys and shares never appear (raw, base64 or hex); the chain verifies
/// across a restart and an edited line is caught. [SNC 12.6–12.8: logs of security-relevant
/// activity, integrity protected; no secret in logs]
#[tokio::test]
async fn every_call_is_recorded_and_no_secret_is() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let other = server.client_as(&inst.pki, "other").await;
    create(&c, "k").await.unwrap();
    let secret = b"TOP-SECRET-PLAINTEXT-4711".to_vec();
    let ct = c
        .encrypt("k", secret.clone(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    let dk = c
        .generate_data_key("k", HashMap::new())
        .await
        .unwrap()
        .plaintext;
    c.decrypt(ct, HashMap::new()).await.unwrap();
    assert!(
        other
            .call(
                other
                    .key_admin()
                    .get_key(pb::GetKeyRequest { name: "k".into() })
            )
            .await
            .is_err()
    );
    assert!(
        c.decrypt(b"garbage".to_vec(), HashMap::new())
            .await
            .is_err()
    );

    let recs = records(&inst);
    let find = |op: &str, outcome: &str| {
        recs.iter()
            .any(|r| r["operation"] == op && r["outcome"] == outcome)
    };
    assert!(find("init", "ok") && find("unseal", "ok"), "{recs:?}");
    assert!(find("create-key", "ok") && find("encrypt", "ok") && find("generate-data-key", "ok"));
    let enc = recs.iter().find(|r| r["operation"] == "encrypt").unwrap();
    assert_eq!(
        (enc["key"].as_str(), enc["version"].as_u64()),
        (Some("k"), Some(1)),
        "{enc}"
    );
    let denied = recs
        .iter()
        .find(|r| r["operation"] == "get-key" && r["outcome"] == "denied")
        .unwrap();
    assert_eq!(denied["principal"], "spiffe://kms.test/other");
    assert_eq!(denied["code"], "PERMISSION_DENIED");
    // A denied call names the key it was about, too.
    assert_eq!(denied["key"], "k");
    let failed = recs.iter().rfind(|r| r["operation"] == "decrypt").unwrap();
    assert_eq!(
        (failed["outcome"].as_str(), failed["code"].as_str()),
        (Some("error"), Some("INVALID_ARGUMENT"))
    );
    assert!(
        recs.iter()
            .all(|r| r["time"].as_str().unwrap().ends_with('Z'))
    );

    let log = std::fs::read(inst.root.path().join("audit.log")).unwrap();
    let b64 = |b: &[u8]| {
        use std::fmt::Write;
        // Standard base64 without a crate: enough to search for the encoded form.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                let _ = s.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s.into_bytes()
    };
    let share_text = share.clone().unwrap().into_bytes();
    for (what, needle) in [
        ("plaintext", secret.clone()),
        ("plaintext b64", b64(&secret)[..20].to_vec()),
        ("plaintext hex", hex::encode(&secret).into_bytes()),
        ("data key", dk.clone()),
        ("data key b64", b64(&dk)[..20].to_vec()),
        ("data key hex", hex::encode(&dk).into_bytes()),
        ("share", share_text.clone()),
    ] {
        assert!(
            !log.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{what} in the audit log"
        );
    }

    // The chain continues across a restart and verifies.
    drop((c, other));
    drop(server);
    let server = start_unsealed(&inst, &mut share).await;
    server.client().await.status().await.unwrap();
    let out = verify(&inst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));

    // An edited line is caught and named.
    let path = inst.root.path().join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"outcome\":\"denied\"", "\"outcome\":\"ok\"", 1),
    )
    .unwrap();
    let out = verify(&inst);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// If the audit log cannot be written, requests are refused and nothing is done; service
/// resumes by itself once the log is back. [SNC 12.7: log integrity; fail closed]
#[tokio::test]
async fn unwritable_audit_log_fails_closed() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await.unwrap();
    let path = inst.root.path().join("audit.log");
    let saved = inst.root.path().join("audit.saved");
    std::fs::rename(&path, &saved).unwrap();
    std::fs::create_dir(&path).unwrap();

    let refused = |r: Result<(), ClientError>| match r.unwrap_err() {
        ClientError::Status(s) => {
            assert_eq!(s.code(), Code::Unavailable);
            assert!(
                s.message().starts_with("audit unavailable"),
                "{}",
                s.message()
            );
        }
        other => panic!("{other}"),
    };
    // A state change is checked before it runs; a data-plane call's result is withheld.
    refused(create(&c, "k2").await.map(drop));
    refused(
        c.encrypt("k", b"m".to_vec(), HashMap::new())
            .await
            .map(drop),
    );
    refused(create(&c, "k2").await.map(drop));

    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(&saved, &path).unwrap();
    c.encrypt("k", b"m".to_vec(), HashMap::new()).await.unwrap();
    // Nothing was created while the log was down.
    let s = match c
        .call(
            c.key_admin()
                .get_key(pb::GetKeyRequest { name: "k2".into() }),
        )
        .await
    {
        Err(ClientError::Status(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.code(), Code::NotFound);
    assert!(verify(&inst).status.success());
}

/// A record is written before its response leaves: a data-plane call acknowledged just before
/// the server is killed (SIGKILL) is in the log after the restart, and so is a state change;
/// request ids stay unique across the restart.
/// [SNC 12.6: every security-relevant event is logged]
#[tokio::test]
async fn acknowledged_calls_are_recorded_when_the_server_is_killed() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "killed").await.unwrap();
    for _ in 0..5 {
        c.encrypt("killed", b"m".to_vec(), HashMap::new())
            .await
            .unwrap();
    }
    server.kill();
    let ops: Vec<String> = records(&inst)
        .iter()
        .filter(|r| r["key"] == "killed")
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "create-key",
            "encrypt",
            "encrypt",
            "encrypt",
            "encrypt",
            "encrypt"
        ]
    );
    assert!(verify(&inst).status.success());

    // Request ids never repeat across restarts of the node, so one id names one call.
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    c.encrypt("killed", b"m".to_vec(), HashMap::new())
        .await
        .unwrap();
    server.kill();
    let ids: Vec<String> = records(&inst)
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "repeated request ids: {ids:?}");
}

/// A client cannot skip the audit by abandoning its calls: CreateKey calls with deadlines of
/// 0.2–6 ms (the server drops them mid-way) either create nothing or create a key that has its
/// record. [SNC 12.6: every rights or key change is logged]
#[tokio::test]
async fn abandoned_state_changes_are_still_recorded() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    for i in 0..150u64 {
        let mut req = tonic::Request::new(pb::CreateKeyRequest {
            name: format!("abandoned/k{i}"),
            ..Default::default()
        });
        req.set_timeout(std::time::Duration::from_micros(200 + (i % 30) * 200));
        let _ = c.key_admin().create_key(req).await;
    }
    // A call after them all: the spawned changes it follows are finished and recorded.
    let listed = c
        .call(c.key_admin().list_keys(pb::ListKeysRequest {
            prefix: "abandoned/".into(),
            page_size: 1000,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    let recorded: std::collections::HashSet<String> = records(&inst)
        .iter()
        .filter(|r| r["operation"] == "create-key" && r["outcome"] == "ok")
        .filter_map(|r| r["key"].as_str().map(str::to_string))
        .collect();
    let unrecorded: Vec<&str> = listed
        .keys
        .iter()
        .map(|k| k.name.as_str())
        .filter(|n| !recorded.contains(*n))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "created without a record: {unrecorded:?}"
    );
    assert!(verify(&inst).status.success());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// None where mounting is not permitted (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A full disk under the audit log: CreateKey is refused before it runs (no key is created)
/// once the log's reserved space cannot be renewed; once space is freed, calls work again and
/// the chain verifies.
/// [SNC 12.6: no unlogged action]
#[tokio::test]
async fn full_disk_under_the_audit_log_fails_closed() {
    let Some(fs) = Tmpfs::mount("256k") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the full-disk case is untested"
        );
        return;
    };
    let log = fs.0.path().join("audit.log");
    let inst = Installation::with_config(&format!("[audit]\npath = \"{}\"\n", log.display()));
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "before").await.unwrap();
    // Fill the disk.
    let filler = fs.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let status = |r: Result<(), ClientError>| match r.unwrap_err() {
        ClientError::Status(s) => s,
        other => panic!("{other}"),
    };
    // The log keeps 64 KiB reserved past its end, so records still fit for a while; state
    // changes are refused before they run once the reserve cannot be renewed.
    let mut refused = None;
    for i in 0..2000 {
        let r = c
            .call(c.key_admin().create_key(pb::CreateKeyRequest {
                name: format!("full/k{i}"),
                ..Default::default()
            }))
            .await;
        if let Err(e) = r {
            let s = status(Err(e));
            assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
            assert!(
                s.message().contains("the request was not run"),
                "{}",
                s.message()
            );
            refused = Some(i);
            break;
        }
    }
    let refused = refused.expect("the full disk was never noticed");

    std::fs::remove_file(&filler).unwrap();
    c.encrypt("before", b"m".to_vec(), HashMap::new())
        .await
        .unwrap();
    let s = status(
        c.call(c.key_admin().get_key(pb::GetKeyRequest {
            name: format!("full/k{refused}"),
        }))
        .await
        .map(drop),
    );
    assert_eq!(s.code(), Code::NotFound, "{}", s.message());
    create(&c, "after").await.unwrap();
    drop(c);
    drop(server);
    let out = std::process::Command::new(bin("kms-cli"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Concurrent requests share fsyncs (group commit) and the chain stays whole: every call is
/// one record, in sequence.
#[tokio::test]
async fn concurrent_calls_keep_the_chain_whole() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await.unwrap();
    let before = records(&inst).len();
    let calls = (0..64).map(|i| {
        let c = c.clone();
        tokio::spawn(async move {
            c.encrypt("k", vec![i as u8; 16], HashMap::new())
                .await
                .map(drop)
        })
    });
    for r in futures_join(calls).await {
        r.unwrap().unwrap();
    }
    let recs = records(&inst);
    assert_eq!(recs.len(), before + 64);
    assert!(verify(&inst).status.success());
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await);
    }
    out
}

/// `kms-cli audit head` seals the chain head; with it, `audit verify --head` detects a log
/// whose tail was cut. [SNC 12.7: log integrity, deletion detectable]
#[tokio::test]
async fn sealed_head_reveals_a_cut_tail() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    for _ in 0..3 {
        c.status().await.unwrap();
    }
    let out = server.cli(&["audit", "head"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head_file = inst.root.path().join("head.json");
    std::fs::write(&head_file, &out.stdout).unwrap();
    let verify_head = || {
        std::process::Command::new(bin("kms-cli"))
            .args(["audit", "verify"])
            .arg(inst.root.path().join("audit.log"))
            .arg("--head")
            .arg(&head_file)
            .output()
            .unwrap()
    };
    let ok = verify_head();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Cut the tail: drop the last three records.
    let path = inst.root.path().join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines[..lines.len() - 3].join("\n") + "\n";
    std::fs::write(&path, kept).unwrap();
    let cut = verify_head();
    assert_eq!(cut.status.code(), Some(1));
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(err.contains("sealed head"), "{err}");
}

/// Encryption-context values are recorded only as HMACs; an auditor with `audit-read` gets the
/// HMAC of a known value to search the log, and the value itself never appears.
#[tokio::test]
async fn context_values_are_recorded_as_searchable_hmacs() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await.unwrap();
    let value = "tenant-value-9f3e2a";
    let ctx: HashMap<String, String> = [("tenant".to_string(), value.to_string())].into();
    c.encrypt("k", b"m".to_vec(), ctx).await.unwrap();
    let out = server.cli(&["audit", "hmac", value]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hmac = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hmac.len(), 64);
    let recs = records(&inst);
    let enc = recs.iter().find(|r| r["operation"] == "encrypt").unwrap();
    assert_eq!(enc["context_hmac"]["tenant"], hmac.as_str(), "{enc}");
    let log = std::fs::read_to_string(inst.root.path().join("audit.log")).unwrap();
    assert!(!log.contains(value));
}

/// Size-based rotation: full files are renamed `audit.log.<last seq>` and the chain continues
/// in the new file, across concurrent calls and a restart; verify over all files, in order.
#[tokio::test]
async fn rotation_keeps_one_chain_across_files_and_restarts() {
    let inst = Installation::with_config("[audit]\nmax_bytes = 4000\n");
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let calls = (0..48).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.status().await.map(drop) })
    });
    for r in futures_join(calls).await {
        r.unwrap().unwrap();
    }
    // Sequential calls too: each one syncs and checks the size, so at least one more file.
    for _ in 0..20 {
        c.status().await.unwrap();
    }
    drop(c);
    drop(server);
    let server = start_unsealed(&inst, &mut share).await;
    for _ in 0..10 {
        server.client().await.status().await.unwrap();
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(inst.root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.log.")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected several rotated files: {files:?}"
    );
    files.push(inst.root.path().join("audit.log"));
    let out = std::process::Command::new(bin("kms-cli"))
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every call is there: 2 (init, unseal) + 48 + 20 + 1 (unseal) + 10, at least.
    let text = String::from_utf8_lossy(&out.stdout);
    let n: u64 = text
        .trim_start_matches("OK: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 81, "{text}");
    // Leaving out a middle file breaks the chain.
    let mut gap = files.clone();
    gap.remove(1);
    let out = std::process::Command::new(bin("kms-cli"))
        .args(["audit", "verify"])
        .args(&gap)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
