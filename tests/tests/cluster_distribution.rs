//! Key distribution (issue 8) across several kms-server nodes on one PostgreSQL database (real
//! binaries, real PostgreSQL, real mTLS): import parameters issued by one node are good on
//! another, since the token record lives in the shared store (`imports/<sha-256(token)>`); a
//! token is used once across the whole cluster, even when two nodes get it at the same moment
//! (compare-and-set on that record before decryption); export and restore-by-import work on
//! any node.
//!
//! Same rules as `cluster.rs`: a node catches up at once on a key or version it has not seen
//! yet; a change to something it already serves is asserted one whole staleness bound later
//! (`after_bound`), never sooner, so a slow machine makes the tests slower, not flaky.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_core::Secret32;
use kms_core::ciphertext::{self, EncryptionContext};
use kms_core::wrap::{RsaRecipient, WrappingKey};
use kms_tests::cluster::{Cluster, after_bound, code, unless_unavailable};
use tonic::Code;

fn message(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => s.message().to_string(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn ctx() -> HashMap<String, String> {
    HashMap::from([("tenant".to_string(), "acme".to_string())])
}

fn local_ctx() -> EncryptionContext {
    EncryptionContext::new(ctx()).unwrap()
}

/// 32 fresh random bytes: key material made outside the KMS.
fn fresh_material() -> [u8; 32] {
    let mut m = [0u8; 32];
    kms_core::fill_random(&mut m).unwrap();
    m
}

fn secret(bytes: &[u8]) -> Secret32 {
    Secret32::from_slice(bytes).unwrap()
}

async fn get(c: &Client, name: &str) -> Result<pb::Key, ClientError> {
    c.call(
        c.key_admin()
            .get_key(pb::GetKeyRequest { name: name.into() }),
    )
    .await
}

/// `material` wrapped to the parameters' public key with the KMS's own scheme (RSA-OAEP
/// SHA-256 ‖ AES-KWP).
fn wrap_to(params: &pb::ImportParameters, material: &[u8]) -> Vec<u8> {
    RsaRecipient::from_der(&params.wrapping_public_key_der)
        .unwrap()
        .wrap(material)
        .unwrap()
}

fn import_req(
    name: &str,
    params: &pb::ImportParameters,
    material: &[u8],
) -> pb::ImportKeyMaterialRequest {
    pb::ImportKeyMaterialRequest {
        name: name.into(),
        import_token: params.import_token.clone(),
        wrapped_material: wrap_to(params, material),
        ..Default::default()
    }
}

/// Import parameters for `name` from node `issuer`, then `material` wrapped and imported
/// through node `importer`, both at once. An UNAVAILABLE answer (an overloaded node failing
/// closed) may come after the token was used up, so the whole exchange is retried with fresh
/// parameters rather than the same token.
async fn import_through(
    issuer: &Client,
    importer: &Client,
    name: &str,
    material: &[u8],
) -> Result<pb::Key, ClientError> {
    // A hang guard only.
    for _ in 0..300 {
        let params = unless_unavailable(|| issuer.import_params(name)).await?;
        assert_eq!(
            params.wrapping_format,
            pb::WrapFormat::RsaOaepSha256AesKwp as i32
        );
        match importer
            .import_key_material(import_req(name, &params, material))
            .await
        {
            Err(e) if code(&e) == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    panic!("the importing node answered UNAVAILABLE 300 times");
}

/// Polls GetKey on `c` (bounded) until `name` is destroyed by a node's scheduler.
async fn wait_destroyed(c: &Client, name: &str) {
    // The schedulers run every second; a bounded wait, no fixed sleep.
    for _ in 0..300 {
        let key = unless_unavailable(|| get(c, name)).await.unwrap();
        if key.state == pb::KeyState::Destroyed as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("key {name} was not destroyed within 30 s");
}

/// Import parameters issued by node A are good on node B: the import there makes a key of
/// origin EXTERNAL that node C (which has not seen it yet) serves at once, and whose
/// ciphertexts A decrypts at once; the KMS holds exactly the material brought (C's ciphertext
/// opens locally with it). A second import (parameters from C, import on A) is version 2,
/// served at once by B. One bound later every node describes the key the same way.
/// [RègleInjectionClé, RègleAcheminementCléCentral-1: material injected wrapped end to end,
/// whichever node takes it]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_imported_through_one_node_is_served_by_the_others() {
    let cl = Cluster::new(3, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    let c = nodes[2].client().await;

    for i in 0..3 {
        let name = format!("byok/{i}");
        let m1 = fresh_material();
        // Parameters from A, import on B at once: B reads the token record from the database.
        let key = import_through(&a, &b, &name, &m1).await.unwrap();
        assert_eq!(key.origin, pb::KeyOrigin::External as i32, "{key:?}");
        assert_eq!(key.state, pb::KeyState::Enabled as i32, "{key:?}");
        assert_eq!((key.latest_version, key.exportable), (1, false), "{key:?}");

        // No wait: C has (most likely) not followed the import yet.
        let ct = unless_unavailable(|| c.encrypt(&name, b"from C".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(ct.version, 1);
        let opened = ciphertext::open(&secret(&m1), &ct.ciphertext, &local_ctx())
            .unwrap_or_else(|e| panic!("C's ciphertext does not open with the material: {e}"));
        assert_eq!(opened.as_slice(), b"from C");
        let d = unless_unavailable(|| a.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"from C");

        // A new version: parameters from C, import on A; B knows version 1 only and catches
        // up on version 2 when asked to decrypt with it.
        let m2 = fresh_material();
        let key = import_through(&c, &a, &name, &m2).await.unwrap();
        assert_eq!(key.latest_version, 2, "{key:?}");
        let ct2 = unless_unavailable(|| a.encrypt(&name, b"version 2".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(ct2.version, 2);
        let opened = ciphertext::open(&secret(&m2), &ct2.ciphertext, &local_ctx()).unwrap();
        assert_eq!(opened.as_slice(), b"version 2");
        let d = unless_unavailable(|| b.decrypt(ct2.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"version 2");
        let d = unless_unavailable(|| c.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"from C");
    }

    // One bound later, every node: the same imported key, version 2 the latest.
    for n in [&a, &b, &c] {
        let key = after_bound(|| get(n, "byok/0")).await.unwrap();
        assert_eq!(key.origin, pb::KeyOrigin::External as i32, "{key:?}");
        assert_eq!((key.latest_version, key.versions.len()), (2, 2), "{key:?}");
        let r = after_bound(|| n.encrypt("byok/0", b"x".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(
            r.version, 2,
            "a node served version 1 after the import of version 2"
        );
    }
}

/// One import token sent to two nodes at the same moment, with the same good blob: exactly
/// one import happens, the other call is refused INVALID_ARGUMENT (already used, or used by
/// another request at the same time) and stores nothing; the key gets exactly one version
/// per token, on every node. Repeated with fresh parameters, a new version each round; the
/// assertions never depend on which node wins. [RègleInjectionClé: a wrapping key answers
/// once, cluster-wide (no decryption oracle)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_import_token_on_two_nodes_at_once_imports_once() {
    let cl = Cluster::new(2, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    let name = "race/byok";
    let mut wins = [0usize; 2];
    // Losers refused by the compare-and-set itself (both read the token unused).
    let mut same_time = 0usize;

    for round in 0..6u32 {
        // Parameters from either node in turn; the race is between A and B.
        let issuer = if round % 2 == 0 { &a } else { &b };
        let params = unless_unavailable(|| issuer.import_params(name))
            .await
            .unwrap();
        let m = fresh_material();
        let req = import_req(name, &params, &m);
        let (ra, rb) = tokio::join!(
            a.import_key_material(req.clone()),
            b.import_key_material(req.clone())
        );
        let mut ok = Vec::new();
        for (i, r) in [ra, rb].into_iter().enumerate() {
            match r {
                Ok(k) => {
                    wins[i] += 1;
                    ok.push(k);
                }
                Err(e) => {
                    assert_eq!(code(&e), Code::InvalidArgument, "round {round}: {e}");
                    let msg = message(&e);
                    if msg.contains("used by another request at the same time") {
                        same_time += 1;
                    }
                    assert!(
                        msg.contains("already used")
                            || msg.contains("used by another request at the same time"),
                        "round {round}: {msg}"
                    );
                    assert!(
                        !msg.contains(&params.import_token),
                        "the token was echoed: {msg}"
                    );
                }
            }
        }
        assert_eq!(
            ok.len(),
            1,
            "round {round}: {} imports with one token",
            ok.len()
        );
        let expected = round + 1;
        assert_eq!(ok[0].latest_version, expected, "round {round}: {:?}", ok[0]);

        // The token stays used up on both nodes.
        for n in [&a, &b] {
            let e = unless_unavailable(|| n.import_key_material(req.clone()))
                .await
                .expect_err("a used token imported again");
            assert_eq!(code(&e), Code::InvalidArgument, "{e}");
            assert!(message(&e).contains("already used"), "{e}");
        }

        // Every node: exactly one new version, holding the material brought.
        for n in [&a, &b] {
            let key = after_bound(|| get(n, name)).await.unwrap();
            assert_eq!(
                (key.latest_version, key.versions.len()),
                (expected, expected as usize),
                "round {round}: {key:?}"
            );
            let ct = after_bound(|| n.encrypt(name, b"raced".to_vec(), ctx()))
                .await
                .unwrap();
            assert_eq!(ct.version, expected);
            let opened = ciphertext::open(&secret(&m), &ct.ciphertext, &local_ctx())
                .unwrap_or_else(|e| panic!("round {round}: not the imported material: {e}"));
            assert_eq!(opened.as_slice(), b"raced");
        }
    }
    // Which node won is not asserted; shown for whoever reads a failure's output.
    eprintln!(
        "race wins: A {}, B {}; refused by the compare-and-set: {same_time}",
        wins[0], wins[1]
    );
}

/// An exportable key created on node A is exported on node B (which has not seen it yet) to an
/// RSA recipient: the unwrapped material opens a ciphertext made on node C. After a rotation
/// on A, B exports the new latest version one bound later, and version 1 on request; a key
/// created not exportable is refused on B. [RègleAcheminementCléCentral-1: material leaves
/// wrapped end to end to its recipient, from any node]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_on_one_node_is_exported_on_another() {
    let cl = Cluster::new(3, "");
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    let c = nodes[2].client().await;
    let wk = WrappingKey::generate().unwrap();
    let recipient = pb::recipient::Recipient::RsaPublicKey(wk.public_pem().unwrap().into_bytes());

    a.call(a.key_admin().create_key(pb::CreateKeyRequest {
        name: "exp/k".into(),
        exportable: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    // No wait: C and B have (most likely) not followed the create yet.
    let ct1 = unless_unavailable(|| c.encrypt("exp/k", b"made on C".to_vec(), ctx()))
        .await
        .unwrap();
    assert_eq!(ct1.version, 1);
    let out = unless_unavailable(|| b.export_key("exp/k", 0, recipient.clone()))
        .await
        .unwrap();
    assert_eq!(out.format, pb::WrapFormat::RsaOaepSha256AesKwp as i32);
    assert_eq!(out.wrapped_material.len(), 384 + 40);
    let m1 = wk.unwrap(&out.wrapped_material).unwrap();
    let opened = ciphertext::open(&m1, &ct1.ciphertext, &local_ctx())
        .unwrap_or_else(|e| panic!("C's ciphertext does not open with B's export: {e}"));
    assert_eq!(opened.as_slice(), b"made on C");

    // Rotated on A: one bound later B exports version 2 as the latest, version 1 on request.
    a.call(a.key_admin().rotate_key(pb::RotateKeyRequest {
        name: "exp/k".into(),
    }))
    .await
    .unwrap();
    let ct2 = after_bound(|| c.encrypt("exp/k", b"version 2".to_vec(), ctx()))
        .await
        .unwrap();
    assert_eq!(ct2.version, 2);
    let out = after_bound(|| b.export_key("exp/k", 0, recipient.clone()))
        .await
        .unwrap();
    let m2 = wk.unwrap(&out.wrapped_material).unwrap();
    assert_ne!(
        m2.expose(),
        m1.expose(),
        "B exported version 1 as the latest"
    );
    let opened = ciphertext::open(&m2, &ct2.ciphertext, &local_ctx()).unwrap();
    assert_eq!(opened.as_slice(), b"version 2");
    let out = unless_unavailable(|| b.export_key("exp/k", 1, recipient.clone()))
        .await
        .unwrap();
    let again = wk.unwrap(&out.wrapped_material).unwrap();
    assert_eq!(again.expose(), m1.expose());

    // Not exportable, created on A: refused on B too.
    a.call(a.key_admin().create_key(pb::CreateKeyRequest {
        name: "exp/kept-in".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let e = unless_unavailable(|| b.export_key("exp/kept-in", 0, recipient.clone()))
        .await
        .expect_err("a key created not exportable was exported");
    assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    assert!(message(&e).contains("not exportable"), "{e}");
}

/// An imported key destroyed through node A (deletion scheduled there with a zero-day window,
/// destroyed by one node's scheduler) is refused by every node one bound later; different
/// material imported on node B is refused and the key stays destroyed; its own material
/// (parameters from node C, import on B) restores it, and one bound later the ciphertext made
/// before the destruction decrypts on every node again. [RègleEffacement-1: erasure reaches
/// every node, and only the owner's material brings the key back; RègleInjectionClé]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_destroyed_through_one_node_is_restored_by_import_on_another() {
    let cl = Cluster::new(3, kms_tests::FAST_LIFECYCLE);
    let (nodes, _share) = cl.start_all_unsealed().await;
    let a = nodes[0].client().await;
    let b = nodes[1].client().await;
    let c = nodes[2].client().await;
    let name = "restore/k";
    let m = fresh_material();

    let key = import_through(&a, &a, name, &m).await.unwrap();
    assert_eq!(key.origin, pb::KeyOrigin::External as i32, "{key:?}");
    let ct = unless_unavailable(|| b.encrypt(name, b"before destruction".to_vec(), ctx()))
        .await
        .unwrap();

    a.call(
        a.key_admin()
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                name: name.into(),
                waiting_period_days: Some(0),
            }),
    )
    .await
    .unwrap();
    wait_destroyed(&a, name).await;
    for n in [&a, &b, &c] {
        let e = after_bound(|| n.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .expect_err("a node decrypted with a destroyed key past the bound");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    }

    // Other material: refused, and the key stays destroyed everywhere.
    let e = import_through(&c, &b, name, &fresh_material())
        .await
        .expect_err("a destroyed key was restored with other material");
    assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    assert!(message(&e).contains("destroyed"), "{e}");
    for n in [&a, &b, &c] {
        let key = after_bound(|| get(n, name)).await.unwrap();
        assert_eq!(key.state, pb::KeyState::Destroyed as i32, "{key:?}");
        let e = n
            .decrypt(ct.ciphertext.clone(), ctx())
            .await
            .expect_err("a refused restore made the key usable");
        assert_eq!(code(&e), Code::FailedPrecondition, "{e}");
    }

    // Its own material: restored.
    let key = import_through(&c, &b, name, &m).await.unwrap();
    assert_eq!(key.state, pb::KeyState::Enabled as i32, "{key:?}");
    assert_eq!((key.latest_version, key.versions.len()), (1, 1), "{key:?}");
    assert_eq!(
        key.versions[0].state,
        pb::VersionState::Active as i32,
        "{key:?}"
    );
    for n in [&a, &b, &c] {
        let d = after_bound(|| n.decrypt(ct.ciphertext.clone(), ctx()))
            .await
            .unwrap();
        assert_eq!(d.plaintext, b"before destruction");
        let r = after_bound(|| n.encrypt(name, b"after".to_vec(), ctx()))
            .await
            .unwrap();
        assert_eq!(r.version, 1);
        let opened = ciphertext::open(&secret(&m), &r.ciphertext, &local_ctx()).unwrap();
        assert_eq!(opened.as_slice(), b"after");
    }
}
