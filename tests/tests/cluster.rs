//! Several kms-server nodes on one PostgreSQL database (real binaries, real PostgreSQL, real
//! mTLS): what one node changes, the others serve within the staleness bound or refuse; a
//! killed node or a restarted database loses nothing acknowledged; scheduled actions run once.
//!
//! The bound is `[storage] max_staleness_ms` (500 ms here). A node serves from its cache only
//! while a check against the database that started less than the bound ago succeeded, so a
//! call made a whole bound after a change was acknowledged either sees the change or is
//! refused with UNAVAILABLE — never the old state. The tests assert exactly that; they wait
//! for the bound, not for the change, so a slow machine makes them slower, not flaky.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_tests::cluster::{Cluster, MAX_STALENESS_MS, after_bound, code, unless_unavailable};
use tonic::Code;

fn ctx() -> HashMap<String, String> {
    HashMap::from([("tenant".to_string(), "acme".to_string())])
}

fn by_name(name: &str) -> pb::KeyNameRequest {
    pb::KeyNameRequest { name: name.into() }
}

async fn create(c: &Client, name: &str) -> Result<pb::Key, ClientError> {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req)).await
}

/// Rotate, disable, enable, revoke, a barrier rotation and a policy reload made on node A are
/// served by nodes B and C one bound later, never the state before. A revoked version is never
/// served from a stale cache past the bound.
/// [SNC 11.9.a / RègleVérificationUtilisabilité-1: usability checked before every use, on every
/// node; RègleRévocation: a revocation takes effect on every node within a documented bound]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_node_reach_the_others_within_the_bound() {
    let cl = Cluster::new(3, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let others = [nodes[1].client().await, nodes[2].client().await];

    // Created on A: usable on B and C.
    create(&a, "orders").await.unwrap();
    for o in &others {
        let r = after_bound(|| o.encrypt("orders", b"x".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(r.version, 1);
    }
    let v1 = a.encrypt("orders", b"one".to_vec(), ctx()).await.unwrap();

    // Rotated on A: B and C encrypt with version 2.
    a.call(a.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "orders".into(),
    }))
    .await
    .unwrap();
    for o in &others {
        let r = after_bound(|| o.encrypt("orders", b"x".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(r.version, 2, "a node served version 1 after the rotation");
    }

    // Disabled on A: refused on B and C; enabled again: served again.
    a.call(a.key_admin().disable_key(by_name("orders")))
        .await
        .unwrap();
    for o in &others {
        let e = after_bound(|| o.encrypt("orders", b"x".to_vec(), ctx()))
            .await
            .expect_err("a node served a disabled key");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
        let e = after_bound(|| o.decrypt(v1.ciphertext.clone(), ctx()))
            .await
            .expect_err("a node decrypted with a disabled key");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    }
    a.call(a.key_admin().enable_key(by_name("orders")))
        .await
        .unwrap();
    for o in &others {
        let d = after_bound(|| o.decrypt(v1.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"one");
    }

    // Version 1 revoked on A: B and C refuse its ciphertexts.
    a.call(
        a.key_admin()
            .revoke_key_version(pb::RevokeKeyVersionRequest {
                name: "orders".into(),
                version: 1,
                reason: pb::RevocationReason::Compromised as i32,
            }),
    )
    .await
    .unwrap();
    for o in &others {
        let e = after_bound(|| o.decrypt(v1.ciphertext.clone(), ctx()))
            .await
            .expect_err("a node decrypted with a revoked version past the bound");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    }

    // A barrier rotation on A, then a key created there (sealed under the new term): B and C
    // read it, so they follow the seal configuration too.
    a.rotate_barrier().await.unwrap();
    create(&a, "after-barrier-rotation").await.unwrap();
    let ct = a
        .encrypt("after-barrier-rotation", b"two".to_vec(), ctx())
        .await
        .unwrap();
    for o in &others {
        let d = after_bound(|| o.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"two");
    }

    // A policy reload asked on A reloads every node's policy directory: the test client loses
    // encrypt on every node.
    let policy = std::fs::read_to_string(cl.policies_dir().join("test.toml")).unwrap();
    let without_encrypt = policy.replacen("\"encrypt\", ", "", 1);
    assert_ne!(policy, without_encrypt);
    std::fs::write(cl.policies_dir().join("test.toml"), without_encrypt).unwrap();
    a.call(a.policy().reload(pb::ReloadPoliciesRequest {}))
        .await
        .unwrap();
    for o in &others {
        let e = after_bound(|| o.encrypt("orders", b"x".to_vec(), ctx()))
            .await
            .expect_err("a node kept the old policies past the bound");
        assert_eq!(code(&e), Code::PermissionDenied, "{e}");
    }

    // Every node's audit log verifies; one chain per node.
    drop(nodes);
    let files = cl.audit_files();
    let out = std::process::Command::new(kms_tests::bin("kms-cli"))
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key created and rotated on node A, and a ciphertext made there, are served by node B at
/// once (B catches up on a key or version it does not know), never refused as tampered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_has_not_seen_yet_is_read_at_once_not_refused() {
    let cl = Cluster::new(2, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    for i in 0..5 {
        let name = format!("fresh/{i}");
        create(&a, &name).await.unwrap();
        // No wait: B has (most likely) not followed the create yet.
        let r = unless_unavailable(|| b.encrypt(&name, b"x".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(r.version, 1);
        a.call(
            a.key_admin()
                .rotate_key(pb::RotateKeyRequest { name: name.clone() }),
        )
        .await
        .unwrap();
        let ct = unless_unavailable(|| a.encrypt(&name, b"new".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(ct.version, 2);
        let d = unless_unavailable(|| b.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"new");
    }
}

/// Three nodes create the same names at the same moment: each name is created exactly once,
/// the others are told it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_created_on_several_nodes_at_once_exists_once() {
    let cl = Cluster::new(3, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(Arc::new(n.client().await));
    }
    for round in 0..10 {
        let name = format!("race/{round}");
        let mut tasks = Vec::new();
        for c in &clients {
            let c = c.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move { create(&c, &name).await }));
        }
        let mut created = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(k) => created.push(k.id),
                Err(e) => assert_eq!(code(&e), Code::AlreadyExists, "{e}"),
            }
        }
        assert_eq!(created.len(), 1, "{name} created {} times", created.len());
        // Every node names the same key.
        for c in &clients {
            let k = after_bound(|| async {
                c.call(
                    c.key_admin()
                        .get_key(pb::GetKeyRequest { name: name.clone() }),
                )
                .await
            })
            .await
            .unwrap();
            assert_eq!(k.id, created[0]);
        }
    }
}

/// Under `kms-bench` load through all three nodes, one node is SIGKILLed: calls retried on
/// another node succeed, and every acknowledged key and ciphertext is served by the survivors
/// and by the killed node once restarted and unsealed.
/// [SNC 12.3 / availability: no single node is needed; nothing acknowledged is lost]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_calls_succeed_elsewhere() {
    let cl = Cluster::new(3, "");
    let (mut nodes, share) = cl.start_all_unsealed().await;
    let first = nodes[0].client().await;
    create(&first, "load").await.unwrap();
    for n in &nodes {
        let c = n.client().await;
        after_bound(|| c.encrypt("load", b"x".to_vec(), ctx()))
            .await
            .unwrap();
    }
    let benches: Vec<_> = nodes
        .iter()
        .map(|n| {
            n.bench_spawn(&[
                "run",
                "--op",
                "encrypt",
                "--key",
                "load",
                "--concurrency",
                "2",
                "--rate",
                "100",
                "--duration",
                "8",
                "--warmup",
                "0",
                "--json",
            ])
        })
        .collect();
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(Some(n.client().await));
    }
    let mut acked_ct: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut acked_keys: Vec<String> = Vec::new();
    let mut retried = 0;
    for i in 0..120 {
        if i == 60 {
            nodes.pop().unwrap().kill();
        }
        let plaintext = format!("message {i}").into_bytes();
        let name = format!("made/{i}");
        // Node i % 3 first; on a transport failure or UNAVAILABLE, the next one.
        let mut done = false;
        for attempt in 0..3 {
            let idx = (i + attempt) % 3;
            let Some(c) = clients[idx].as_ref() else {
                continue;
            };
            let r = if i % 4 == 0 {
                match create(c, &name).await {
                    Ok(_) => Ok(true),
                    // The killed node may have committed it before dying.
                    Err(ClientError::Status(s))
                        if s.code() == Code::AlreadyExists && attempt > 0 =>
                    {
                        Ok(true)
                    }
                    Err(e) => Err(e),
                }
            } else {
                c.encrypt("load", plaintext.clone(), ctx()).await.map(|r| {
                    acked_ct.push((r.ciphertext, plaintext.clone()));
                    false
                })
            };
            match r {
                Ok(created) => {
                    if created {
                        acked_keys.push(name.clone());
                    }
                    done = true;
                    break;
                }
                Err(ClientError::Status(s))
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) =>
                {
                    retried += 1;
                }
                // The killed node's address refuses connections.
                Err(ClientError::Connect { .. }) => retried += 1,
                Err(e) => panic!("call {i} on node {idx}: {e}"),
            }
        }
        assert!(done, "call {i} failed on every node");
    }
    assert!(
        retried > 0,
        "no call met the killed node: the test proved nothing"
    );
    for (i, b) in benches.into_iter().enumerate() {
        let out = b.wait_with_output().unwrap();
        if i == 2 {
            continue; // the killed node's load generator fails with it
        }
        // The surviving nodes served their load throughout; at most refusals that fail closed
        // (UNAVAILABLE, on an overloaded machine), never another error.
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kms-bench on node {i}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
        for code in report["errors"].as_object().unwrap().keys() {
            assert_eq!(code, "Unavailable", "node {i}: {report}");
        }
    }
    let check = |c: &Client| {
        let acked_ct = acked_ct.clone();
        let acked_keys = acked_keys.clone();
        let c = c.clone();
        async move {
            for (ct, pt) in &acked_ct {
                let d = c.decrypt(ct.clone(), ctx()).await.unwrap();
                assert_eq!(&d.plaintext, pt);
            }
            for k in &acked_keys {
                c.call(c.key_admin().get_key(pb::GetKeyRequest { name: k.clone() }))
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged key {k} is missing: {e}"));
            }
        }
    };
    for n in &nodes {
        check(&n.client().await).await;
    }
    let restarted = cl.start(2);
    kms_tests::unseal_with(&restarted, std::slice::from_ref(&share), &[1]).await;
    check(&restarted.client().await).await;
}

/// PostgreSQL stopped and started again under load (`kms-bench` on node A, a client making
/// keys and ciphertexts on node B): after one bound, every node refuses key use with
/// UNAVAILABLE (it cannot confirm its cache), changes fail with UNAVAILABLE, nothing hangs and
/// nothing answers anything else; once PostgreSQL is back, the nodes serve again by themselves
/// and every acknowledged key and ciphertext is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_makes_nodes_unavailable_then_they_recover() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cl = Cluster::new(2, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    create(&a, "steady").await.unwrap();
    let before = after_bound(|| b.encrypt("steady", b"before".to_vec(), ctx()))
        .await
        .unwrap();

    let bench = nodes[0].bench_spawn(&[
        "run",
        "--op",
        "encrypt",
        "--key",
        "steady",
        "--concurrency",
        "2",
        "--rate",
        "100",
        "--duration",
        "6",
        "--warmup",
        "0",
        "--json",
    ]);
    // The load on B: keys and ciphertexts, what was acknowledged, and anything unexpected.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut keys, mut cts, mut unexpected) = (Vec::new(), Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let name = format!("load/{i}");
                let r = if i % 3 == 0 {
                    create(&b, &name).await.map(|_| keys.push(name))
                } else {
                    let pt = format!("load {i}").into_bytes();
                    b.encrypt("steady", pt.clone(), ctx())
                        .await
                        .map(|r| cts.push((r.ciphertext, pt)))
                };
                match r {
                    Ok(()) => {}
                    Err(e) if code(&e) == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => unexpected.push(e.to_string()),
                }
            }
            (keys, cts, unexpected)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    cl.pg.stop();
    tokio::time::sleep(Duration::from_millis(MAX_STALENESS_MS + 100)).await;
    for c in [&a, &b] {
        let e = c
            .encrypt("steady", b"x".to_vec(), ctx())
            .await
            .expect_err("a node served while it could not check its cache");
        assert_eq!(code(&e), Code::Unavailable, "{e}");
        let e = c
            .decrypt(before.ciphertext.clone(), ctx())
            .await
            .expect_err("a node served while it could not check its cache");
        assert_eq!(code(&e), Code::Unavailable, "{e}");
        let e = create(c, "during-outage")
            .await
            .expect_err("created without a database");
        assert_eq!(code(&e), Code::Unavailable, "{e}");
    }

    cl.pg.start_again();
    for c in [&a, &b] {
        let d = after_bound(|| c.decrypt(before.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"before");
    }
    // Some load after the outage too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (keys, cts, unexpected) = load.await.unwrap();
    assert!(
        unexpected.is_empty(),
        "answers other than OK or UNAVAILABLE: {unexpected:?}"
    );
    assert!(!keys.is_empty() && !cts.is_empty(), "the load made nothing");
    let out = bench.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kms-bench: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    for code in report["errors"].as_object().unwrap().keys() {
        assert_eq!(code, "Unavailable", "kms-bench saw {code}: {report}");
    }

    // Everything acknowledged, on both nodes.
    create(&a, "after-outage").await.unwrap();
    for c in [&a, &b] {
        after_bound(|| c.encrypt("after-outage", b"x".to_vec(), ctx()))
            .await
            .unwrap();
        for k in &keys {
            c.call(c.key_admin().get_key(pb::GetKeyRequest { name: k.clone() }))
                .await
                .unwrap_or_else(|e| panic!("acknowledged key {k} is missing: {e}"));
        }
        for (ct, pt) in &cts {
            assert_eq!(&c.decrypt(ct.clone(), ctx()).await.unwrap().plaintext, pt);
        }
    }
    // The refused create left nothing behind.
    let e = b
        .call(b.key_admin().get_key(pb::GetKeyRequest {
            name: "during-outage".into(),
        }))
        .await
        .expect_err("a create refused during the outage exists");
    assert_eq!(code(&e), Code::NotFound, "{e}");
}

/// Rekey on node A replaces the root key: the other nodes seal themselves (they could not read
/// records under a later barrier term, and their shares are void), and unseal with the new
/// shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_on_one_node_seals_the_others_until_unsealed_with_new_shares() {
    let cl = Cluster::new(2, "");
    let (nodes, share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    let new = a.rekey(vec![share.clone()], 1, 1).await.unwrap();
    let status = after_bound(|| b.status()).await.unwrap();
    assert!(status.sealed, "node B still unsealed with a stale root key");
    let e = b.unseal(&share).await.expect_err("the old share unsealed");
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    kms_tests::unseal_with(&nodes[1], &new.shares, &[1]).await;
    create(&a, "after-rekey").await.unwrap();
    after_bound(|| b.encrypt("after-rekey", b"x".to_vec(), ctx()))
        .await
        .unwrap();
}

/// Automatic rotation with three nodes (keystores on one PostgreSQL database, time injected):
/// all three run the scheduler at the same moment, each due rotation happens exactly once.
/// [RègleRenouvellement-1: planned renewal, exactly once across nodes]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_runs_once_across_three_nodes() {
    use kms_server::keystore::{KeySettings, Keystore, now_unix};
    use kms_server::storage::{Backend, PostgresBackend, PostgresConfig};

    let pg = kms_tests::pg::PgServer::start();
    let cfg: PostgresConfig =
        toml::from_str(&format!("url = \"{}\"\ntls = \"disable\"", pg.url())).unwrap();
    let mut nodes = Vec::new();
    let mut share = None;
    for _ in 0..3 {
        let backend: Arc<dyn Backend> = Arc::new(PostgresBackend::connect(&cfg).await.unwrap());
        let seal = Arc::new(kms_server::Seal::load(backend).await.unwrap());
        let s = match &share {
            Some(s) => s,
            None => share.insert(seal.init(1, 1).await.unwrap().shares.remove(0)),
        };
        seal.unseal(s).await.unwrap();
        let ks = Arc::new(Keystore::new(seal.clone(), KeySettings::default()));
        ks.load().await.unwrap();
        nodes.push((seal, ks));
    }
    let t0 = now_unix();
    let mut names = Vec::new();
    for i in 0..20 {
        let name: kms_core::keyname::KeyName = format!("auto/{i}").parse().unwrap();
        nodes[i % 3]
            .1
            .create(
                name.clone(),
                kms_core::key::Purpose::EncryptDecrypt,
                String::new(),
                BTreeMap::new(),
                Some(3600),
                false,
            )
            .await
            .unwrap();
        names.push(name);
    }
    for period in 1..=3u64 {
        let now = t0 + period * 3700;
        let runs: Vec<_> = nodes
            .iter()
            .map(|(_, ks)| {
                let ks = ks.clone();
                tokio::spawn(async move { ks.run_scheduled(now).await.unwrap() })
            })
            .collect();
        let mut done = 0;
        for r in runs {
            done += r.await.unwrap();
        }
        assert_eq!(
            done,
            names.len(),
            "period {period}: {done} rotations for {} due keys",
            names.len()
        );
        for (_, ks) in &nodes {
            ks.catch_up().await.unwrap();
            for n in &names {
                assert_eq!(
                    ks.get(n).unwrap().latest(),
                    period as u32 + 1,
                    "{n} after period {period}"
                );
            }
        }
    }
}

/// A second node started with a name already in use on the database is refused at start,
/// naming the setting, so two nodes never share an audit chain name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_the_same_name_is_refused() {
    let cl = Cluster::new(2, "");
    let _first = cl.start(0);
    // Node 1's folder with node 0's name.
    let config = cl.node_dir(1).join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("node = \"kms-1\"", "node = \"kms-0\""),
    )
    .unwrap();
    let mut child = std::process::Command::new(kms_tests::bin("kms-server"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang guard only: the refusal comes at start.
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the second node named kms-0 kept running");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("another kms-server node named \"kms-0\""),
        "{err}"
    );
}

/// A backup taken on one node of a PostgreSQL cluster (one consistent snapshot of the
/// database) restores into an empty database only; a node started on it unseals with the same
/// share and decrypts what was encrypted before the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backup_restores_into_an_empty_database() {
    let cl = Cluster::new(2, "");
    let (nodes, share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    create(&a, "kept").await.unwrap();
    let ct = a.encrypt("kept", b"kept".to_vec(), ctx()).await.unwrap();
    // Taken on the other node: the backup reads the database, not that node's cache.
    let file = cl.root.path().join("cluster.backup");
    let out = nodes[1].cli(&["operator", "backup", "--out", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restore = |config: &std::path::Path| {
        std::process::Command::new(kms_tests::bin("kms-server"))
            .arg("restore")
            .arg("--config")
            .arg(config)
            .arg("--from")
            .arg(&file)
            .output()
            .unwrap()
    };
    // Into the database in use: refused, nothing written.
    let out = restore(&cl.node_dir(0).join("config.toml"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore only into an empty database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Into a new, empty database, for a new node.
    let url = cl.pg.create_database("restored");
    let dir = cl.root.path().join("node-restored");
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(cl.node_dir(0).join("config.toml"))
        .unwrap()
        .replace(&cl.pg.url(), &url)
        .replace("node = \"kms-0\"", "node = \"kms-restored\"");
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let out = restore(&dir.join("config.toml"));
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = kms_tests::Server::spawn(
        std::process::Command::new(kms_tests::bin("kms-server"))
            .arg("--config")
            .arg(dir.join("config.toml")),
        &dir.join("server.log"),
        cl.pki.ca(),
        cl.pki.client("client"),
    );
    kms_tests::unseal_with(&restored, std::slice::from_ref(&share), &[1]).await;
    let d = restored
        .client()
        .await
        .decrypt(ct.ciphertext, ctx())
        .await
        .unwrap();
    assert_eq!(d.plaintext, b"kept");
}

/// Deletion scheduled on node A with a zero-day window (this test config allows it): the
/// scheduler of one of the three nodes destroys the key once, every node refuses its
/// ciphertexts one bound later, its name is never reused, and its material is gone from the
/// database. [SNC 11.9.a / RègleEffacement-1: destruction reaches every node]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destruction_reaches_every_node_and_erases_the_material() {
    let cl = Cluster::new(3, kms_tests::FAST_LIFECYCLE);
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let k = create(&a, "doomed").await.unwrap();
    a.call(a.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "doomed".into(),
    }))
    .await
    .unwrap();
    let ct = a.encrypt("doomed", b"bye".to_vec(), ctx()).await.unwrap();
    a.call(
        a.key_admin()
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                name: "doomed".into(),
                waiting_period_days: Some(0),
            }),
    )
    .await
    .unwrap();
    // The schedulers run every second; wait (bounded) until the key is destroyed.
    let mut destroyed = false;
    for _ in 0..300 {
        let key = a
            .call(a.key_admin().get_key(pb::GetKeyRequest {
                name: "doomed".into(),
            }))
            .await
            .unwrap();
        if key.state == pb::KeyState::Destroyed as i32 {
            destroyed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(destroyed, "the key was not destroyed within 30 s");
    for n in &nodes {
        let c = n.client().await;
        let e = after_bound(|| c.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .expect_err("a node decrypted with a destroyed key past the bound");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
        let e = create(&c, "doomed")
            .await
            .expect_err("a destroyed name was reused");
        assert_eq!(code(&e), Code::AlreadyExists, "{e}");
    }
    // Every version's material record is erased from the database; the metadata tombstone
    // stays (a name is never reused).
    let material = cl.pg.psql(&format!(
        "SELECT count(*) FROM kms_records WHERE key LIKE 'keys/{}/v/%'",
        k.id
    ));
    assert_eq!(material, "0");
    let meta = cl.pg.psql(&format!(
        "SELECT count(*) FROM kms_records WHERE key = 'keys/{}/meta'",
        k.id
    ));
    assert_eq!(meta, "1");
}
