//! Key lifecycle and the data plane, black-box against the real server.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_tests::{FAST_LIFECYCLE, Installation, ctx, start_unsealed, status};
use tonic::Code;

async fn create(c: &Client, name: &str) -> pb::Key {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req)).await.unwrap()
}

async fn get(c: &Client, name: &str) -> pb::Key {
    let req = pb::GetKeyRequest { name: name.into() };
    c.call(c.key_admin().get_key(req)).await.unwrap()
}

fn by_name(name: &str) -> pb::KeyNameRequest {
    pb::KeyNameRequest { name: name.into() }
}

/// The whole life of a key, with restarts between steps.
/// [RègleVérificationUtilisabilité-1: usability checked before every use;
///  SNC 11.9.a / RègleEffacement-1: destruction is scheduled, irreversible, and erases material]
#[tokio::test]
async fn whole_lifecycle_with_restarts() {
    let inst = Installation::with_config(FAST_LIFECYCLE);
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let k = create(&c, "payments/card-tokens").await;
    assert_eq!(k.latest_version, 1);
    assert_eq!(k.state, pb::KeyState::Enabled as i32);
    let aad = ctx(&[("tenant", "acme"), ("purpose", "test")]);
    let v1 = c
        .encrypt("payments/card-tokens", b"secret one".to_vec(), aad.clone())
        .await
        .unwrap();
    assert_eq!(v1.version, 1);

    drop(c);
    drop(server);
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;

    let k = c
        .call(c.key_admin().rotate_key(pb::RotateKeyRequest {
            name: "payments/card-tokens".into(),
        }))
        .await
        .unwrap();
    assert_eq!(k.latest_version, 2);
    let d = c.decrypt(v1.ciphertext.clone(), aad.clone()).await.unwrap();
    assert_eq!((d.plaintext.as_slice(), d.version), (&b"secret one"[..], 1));
    let re = c
        .call(c.crypto().re_encrypt(pb::ReEncryptRequest {
            ciphertext: v1.ciphertext.clone(),
            context: aad.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!((re.source_version, re.version), (1, 2));
    assert_eq!(
        c.decrypt(re.ciphertext.clone(), aad.clone())
            .await
            .unwrap()
            .plaintext,
        b"secret one"
    );

    let k = c
        .call(c.key_admin().update_key_config(pb::UpdateKeyConfigRequest {
            name: "payments/card-tokens".into(),
            min_decryption_version: Some(2),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(k.min_decryption_version, 2);
    let s = status(
        c.decrypt(v1.ciphertext.clone(), aad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(
        s.message().contains("minimum") || s.message().contains("min"),
        "{}",
        s.message()
    );

    drop(c);
    drop(server);
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    assert_eq!(
        get(&c, "payments/card-tokens").await.min_decryption_version,
        2
    );

    c.call(c.key_admin().disable_key(by_name("payments/card-tokens")))
        .await
        .unwrap();
    let s = status(
        c.encrypt("payments/card-tokens", b"x".to_vec(), aad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("disabled"), "{}", s.message());
    c.call(c.key_admin().enable_key(by_name("payments/card-tokens")))
        .await
        .unwrap();
    c.encrypt("payments/card-tokens", b"x".to_vec(), aad.clone())
        .await
        .unwrap();

    // Schedule with a waiting period long enough not to elapse during the test, then cancel.
    let sched = |days| pb::ScheduleKeyDeletionRequest {
        name: "payments/card-tokens".into(),
        waiting_period_days: Some(days),
    };
    let k = c
        .call(c.key_admin().schedule_key_deletion(sched(30)))
        .await
        .unwrap();
    assert_eq!(k.state, pb::KeyState::PendingDeletion as i32);
    let s = status(
        c.encrypt("payments/card-tokens", b"x".to_vec(), aad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    let s = status(
        c.decrypt(re.ciphertext.clone(), aad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    c.call(
        c.key_admin()
            .cancel_key_deletion(by_name("payments/card-tokens")),
    )
    .await
    .unwrap();
    assert_eq!(
        c.decrypt(re.ciphertext.clone(), aad.clone())
            .await
            .unwrap()
            .plaintext,
        b"secret one"
    );

    // Zero-day window (this test config allows it): the scheduler destroys the key.
    c.call(c.key_admin().schedule_key_deletion(sched(0)))
        .await
        .unwrap();
    let id = get(&c, "payments/card-tokens").await.id;
    // Wait for the scheduler (runs every second here); bounded, never a sleep for correctness.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let k = get(&c, "payments/card-tokens").await;
        if k.state == pb::KeyState::Destroyed as i32 {
            assert!(
                k.versions
                    .iter()
                    .all(|v| v.state == pb::VersionState::Destroyed as i32)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not destroyed within 30 s: {k:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let s = status(
        c.decrypt(re.ciphertext.clone(), aad.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("destroyed"), "{}", s.message());
    let s = status(
        c.call(c.key_admin().create_key(pb::CreateKeyRequest {
            name: "payments/card-tokens".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::AlreadyExists);
    assert!(s.message().contains("destroyed"), "{}", s.message());
    let s = status(
        c.call(c.key_admin().enable_key(by_name("payments/card-tokens")))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::FailedPrecondition);

    // The material is gone from storage; the tombstone stays.
    drop(c);
    server.kill();
    let backend = kms_server::storage::SledBackend::open(&inst.data_dir()).unwrap();
    use kms_server::storage::Backend;
    let left = backend.list(&format!("keys/{id}/")).await.unwrap();
    assert_eq!(
        left,
        vec![format!("keys/{id}/meta")],
        "material records remain"
    );
    drop(backend);
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    assert_eq!(
        get(&c, "payments/card-tokens").await.state,
        pb::KeyState::Destroyed as i32
    );
}

/// SIGKILL right after an acknowledged rotate: the new version survived.
#[tokio::test]
async fn rotation_survives_sigkill() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "app/k").await;
    let old = c
        .encrypt("app/k", b"before".to_vec(), HashMap::new())
        .await
        .unwrap();
    let k = c
        .call(c.key_admin().rotate_key(pb::RotateKeyRequest {
            name: "app/k".into(),
        }))
        .await
        .unwrap();
    assert_eq!(k.latest_version, 2);
    drop(c);
    server.kill();
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    assert_eq!(get(&c, "app/k").await.latest_version, 2);
    assert_eq!(
        c.encrypt("app/k", b"after".to_vec(), HashMap::new())
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        c.decrypt(old.ciphertext, HashMap::new())
            .await
            .unwrap()
            .plaintext,
        b"before"
    );
}

/// Hostile ciphertexts are refused cleanly and the server keeps serving; authentication
/// failures say nothing more precise than "ciphertext authentication failed".
/// [RecommandationModeChiff: authenticated encryption, full tag]
#[tokio::test]
async fn hostile_ciphertexts_are_refused() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await;
    let aad = ctx(&[("a", "1")]);
    let ct = c
        .encrypt("k", b"sixteen byte msg".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;
    // Every byte, header included: the header (key id, version) is only trusted once the
    // ciphertext authenticates, so each flip gets the same opaque answer.
    for i in 0..ct.len() {
        let mut t = ct.clone();
        t[i] ^= 0x80;
        let s = status(c.decrypt(t, aad.clone()).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument, "byte {i}");
        assert_eq!(s.message(), "ciphertext authentication failed", "byte {i}");
    }
    for len in 0..ct.len() {
        let s = status(
            c.decrypt(ct[..len].to_vec(), aad.clone())
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code(), Code::InvalidArgument, "truncated to {len}");
        assert_eq!(s.message(), "ciphertext authentication failed");
    }
    for bad in [ctx(&[]), ctx(&[("a", "2")]), ctx(&[("a", "1"), ("b", "1")])] {
        let s = status(c.decrypt(ct.clone(), bad).await.unwrap_err());
        assert_eq!(s.message(), "ciphertext authentication failed");
    }
    let mut random = vec![0u8; 200];
    kms_core::fill_random(&mut random).unwrap();
    assert!(c.decrypt(random, HashMap::new()).await.is_err());

    // A ciphertext of another installation (same key name) is refused.
    let other = Installation::new();
    let mut other_share = None;
    let other_server = start_unsealed(&other, &mut other_share).await;
    let oc = other_server.client().await;
    create(&oc, "k").await;
    let foreign = oc
        .encrypt("k", b"sixteen byte msg".to_vec(), aad.clone())
        .await
        .unwrap()
        .ciphertext;
    let s = status(c.decrypt(foreign, aad.clone()).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert_eq!(s.message(), "ciphertext authentication failed");

    // Still serving.
    assert_eq!(
        c.decrypt(ct, aad).await.unwrap().plaintext,
        b"sixteen byte msg"
    );
}

/// Limits: oversized plaintext and oversized batch are refused with the limit in the message.
#[tokio::test]
async fn limits_and_batches() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await;
    let s = status(
        c.encrypt("k", vec![0u8; 64 * 1024 + 1], HashMap::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("65536"), "{}", s.message());
    c.encrypt("k", vec![0u8; 64 * 1024], HashMap::new())
        .await
        .unwrap();

    let item = |p: &[u8]| pb::EncryptItem {
        plaintext: p.to_vec(),
        context: HashMap::new(),
    };
    let s = status(
        c.call(c.crypto().batch_encrypt(pb::BatchEncryptRequest {
            key: "k".into(),
            items: vec![item(b"x"); 1001],
        }))
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("1000"), "{}", s.message());

    let r = c
        .call(c.crypto().batch_encrypt(pb::BatchEncryptRequest {
            key: "k".into(),
            items: vec![item(b"a"), item(&vec![0u8; 70_000]), item(b"c")],
        }))
        .await
        .unwrap();
    assert_eq!(r.results.len(), 3);
    let cts: Vec<Option<Vec<u8>>> = r
        .results
        .iter()
        .map(|x| match &x.result {
            Some(pb::batch_encrypt_result::Result::Ok(e)) => Some(e.ciphertext.clone()),
            Some(pb::batch_encrypt_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                None
            }
            None => panic!("empty result"),
        })
        .collect();
    assert!(cts[0].is_some() && cts[1].is_none() && cts[2].is_some());
    let items = vec![
        pb::DecryptRequest {
            ciphertext: cts[0].clone().unwrap(),
            context: HashMap::new(),
        },
        pb::DecryptRequest {
            ciphertext: b"garbage".to_vec(),
            context: HashMap::new(),
        },
        pb::DecryptRequest {
            ciphertext: cts[2].clone().unwrap(),
            context: HashMap::new(),
        },
    ];
    let r = c
        .call(c.crypto().batch_decrypt(pb::BatchDecryptRequest { items }))
        .await
        .unwrap();
    let plain: Vec<Option<Vec<u8>>> = r
        .results
        .iter()
        .map(|x| match &x.result {
            Some(pb::batch_decrypt_result::Result::Ok(d)) => Some(d.plaintext.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(plain, vec![Some(b"a".to_vec()), None, Some(b"c".to_vec())]);

    // Data keys: 32 bytes, and the wrapped form decrypts to them.
    let dk = c.generate_data_key("k", ctx(&[("f", "1")])).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(
        c.decrypt(dk.ciphertext, ctx(&[("f", "1")]))
            .await
            .unwrap()
            .plaintext,
        dk.plaintext
    );
    let dk = c
        .call(c.crypto().generate_data_key(pb::GenerateDataKeyRequest {
            key: "k".into(),
            without_plaintext: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(dk.plaintext.is_empty() && !dk.ciphertext.is_empty());

    // Random: 1..=1024 bytes.
    let r = c
        .call(
            c.crypto()
                .generate_random(pb::GenerateRandomRequest { length: 1024 }),
        )
        .await
        .unwrap();
    assert_eq!(r.random.len(), 1024);
    for n in [0, 1025] {
        let s = status(
            c.call(
                c.crypto()
                    .generate_random(pb::GenerateRandomRequest { length: n }),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}

/// Odd key names are refused at the edge; list filters by prefix and pages.
#[tokio::test]
async fn names_and_listing() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    for bad in ["", "../x", "a//b", "A", "a b", "a\u{7}b", &"a".repeat(257)] {
        let s = status(
            c.call(c.key_admin().create_key(pb::CreateKeyRequest {
                name: bad.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err(),
        );
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}");
        assert!(s.message().contains("invalid key name"), "{}", s.message());
    }
    for n in ["team/a", "team/b", "team/c", "other/x"] {
        create(&c, n).await;
    }
    let s = status(
        c.encrypt("team/none", b"x".to_vec(), HashMap::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::NotFound);
    let page = |token: &str| pb::ListKeysRequest {
        prefix: "team/".into(),
        page_size: 2,
        page_token: token.into(),
    };
    let p1 = c.call(c.key_admin().list_keys(page(""))).await.unwrap();
    let names: Vec<_> = p1.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["team/a", "team/b"]);
    let p2 = c
        .call(c.key_admin().list_keys(page(&p1.next_page_token)))
        .await
        .unwrap();
    let names: Vec<_> = p2.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["team/c"]);
    assert!(p2.next_page_token.is_empty());
    // A page that ends exactly at the last match says there is no more.
    let p = c
        .call(c.key_admin().list_keys(pb::ListKeysRequest {
            prefix: "team/".into(),
            page_size: 3,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(p.keys.len(), 3);
    assert!(p.next_page_token.is_empty());
}

/// Concurrent creates: different names all succeed (they run in parallel and share fsyncs);
/// one name raced by several clients is created exactly once, the others get ALREADY_EXISTS.
#[tokio::test]
async fn concurrent_creates_create_each_name_once() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let c = c.clone();
        tasks.spawn(async move {
            let name = if i % 2 == 0 {
                "race/same".to_string()
            } else {
                format!("race/k{i}")
            };
            let r = c
                .call(c.key_admin().create_key(pb::CreateKeyRequest {
                    name: name.clone(),
                    ..Default::default()
                }))
                .await;
            (name, r.map_err(|e| status(e).code()))
        });
    }
    let (mut same_ok, mut same_exists, mut others_ok) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (n, Ok(_)) if n == "race/same" => same_ok += 1,
            (n, Err(Code::AlreadyExists)) if n == "race/same" => same_exists += 1,
            (_, Ok(_)) => others_ok += 1,
            (n, Err(code)) => panic!("{n}: {code:?}"),
        }
    }
    assert_eq!((same_ok, same_exists, others_ok), (1, 7, 8));
    let listed = c
        .call(c.key_admin().list_keys(pb::ListKeysRequest {
            prefix: "race/".into(),
            page_size: 100,
            page_token: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(listed.keys.len(), 9);
}

/// Revoked versions are refused for decryption with the reason; a revocation needs a reason.
#[tokio::test]
async fn revocation_names_its_reason() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await;
    let ct = c
        .encrypt("k", b"m".to_vec(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    c.call(
        c.key_admin()
            .rotate_key(pb::RotateKeyRequest { name: "k".into() }),
    )
    .await
    .unwrap();
    let revoke = |reason| pb::RevokeKeyVersionRequest {
        name: "k".into(),
        version: 1,
        reason,
    };
    let s = status(
        c.call(c.key_admin().revoke_key_version(revoke(0)))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    c.call(
        c.key_admin()
            .revoke_key_version(revoke(pb::RevocationReason::Compromised as i32)),
    )
    .await
    .unwrap();
    let s = status(c.decrypt(ct.clone(), HashMap::new()).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("compromised"), "{}", s.message());
    // A forged ciphertext naming the revoked version learns nothing about it.
    let mut forged = ct;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let s = status(c.decrypt(forged, HashMap::new()).await.unwrap_err());
    assert_eq!(s.message(), "ciphertext authentication failed");
    // The latest version still works.
    let ct2 = c
        .encrypt("k", b"m".to_vec(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    assert_eq!(c.decrypt(ct2, HashMap::new()).await.unwrap().version, 2);
}

/// The production minimum waiting period (7 days) is enforced by default.
#[tokio::test]
async fn deletion_waiting_period_minimum() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await;
    let s = status(
        c.call(
            c.key_admin()
                .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                    name: "k".into(),
                    waiting_period_days: Some(3),
                }),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains('7'), "{}", s.message());
    let k = c
        .call(
            c.key_admin()
                .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                    name: "k".into(),
                    waiting_period_days: None,
                }),
        )
        .await
        .unwrap();
    // The default is 30 days.
    let days = (k.deletion_unix - k.updated_unix) / 86_400;
    assert_eq!(days, 30);
}

/// A sealed server answers every key and crypto RPC with UNAVAILABLE "kms is sealed".
#[tokio::test]
async fn sealed_server_refuses_every_key_and_crypto_rpc() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "k").await;
    let ct = c
        .encrypt("k", b"m".to_vec(), HashMap::new())
        .await
        .unwrap()
        .ciphertext;
    c.seal().await.unwrap();
    let ka = || c.key_admin();
    let cr = || c.crypto();
    let results: Vec<Result<(), ClientError>> = vec![
        c.call(ka().create_key(pb::CreateKeyRequest {
            name: "k2".into(),
            ..Default::default()
        }))
        .await
        .map(drop),
        c.call(ka().get_key(pb::GetKeyRequest { name: "k".into() }))
            .await
            .map(drop),
        c.call(ka().list_keys(pb::ListKeysRequest::default()))
            .await
            .map(drop),
        c.call(ka().rotate_key(pb::RotateKeyRequest { name: "k".into() }))
            .await
            .map(drop),
        c.call(ka().update_key_config(pb::UpdateKeyConfigRequest {
            name: "k".into(),
            ..Default::default()
        }))
        .await
        .map(drop),
        c.call(ka().disable_key(by_name("k"))).await.map(drop),
        c.call(ka().enable_key(by_name("k"))).await.map(drop),
        c.call(ka().revoke_key_version(pb::RevokeKeyVersionRequest {
            name: "k".into(),
            version: 1,
            reason: 1,
        }))
        .await
        .map(drop),
        c.call(ka().schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
            name: "k".into(),
            waiting_period_days: Some(30),
        }))
        .await
        .map(drop),
        c.call(ka().cancel_key_deletion(by_name("k")))
            .await
            .map(drop),
        c.encrypt("k", b"m".to_vec(), HashMap::new())
            .await
            .map(drop),
        c.decrypt(ct.clone(), HashMap::new()).await.map(drop),
        c.call(cr().re_encrypt(pb::ReEncryptRequest {
            ciphertext: ct.clone(),
            ..Default::default()
        }))
        .await
        .map(drop),
        c.generate_data_key("k", HashMap::new()).await.map(drop),
        c.call(cr().batch_encrypt(pb::BatchEncryptRequest {
            key: "k".into(),
            items: vec![],
        }))
        .await
        .map(drop),
        c.call(cr().batch_decrypt(pb::BatchDecryptRequest { items: vec![] }))
            .await
            .map(drop),
        c.call(cr().generate_random(pb::GenerateRandomRequest { length: 8 }))
            .await
            .map(drop),
    ];
    for (i, r) in results.into_iter().enumerate() {
        let s = status(r.unwrap_err());
        assert_eq!(s.code(), Code::Unavailable, "rpc #{i}: {s:?}");
        assert!(
            s.message().starts_with("kms is sealed"),
            "rpc #{i}: {}",
            s.message()
        );
    }
    // Unsealing again brings the keys back.
    kms_tests::unseal_with(&server, &[share.unwrap()], &[1]).await;
    assert_eq!(c.decrypt(ct, HashMap::new()).await.unwrap().plaintext, b"m");
}

/// ReEncrypt keeps the context by default, replaces it when asked, and can move a ciphertext
/// to another key; the plaintext never leaves the server.
#[tokio::test]
async fn reencrypt_contexts_and_keys() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    create(&c, "src").await;
    create(&c, "dst").await;
    let a = ctx(&[("a", "1")]);
    let ct = c
        .encrypt("src", b"m".to_vec(), a.clone())
        .await
        .unwrap()
        .ciphertext;
    let re = |dest: &str, dctx: HashMap<String, String>, replace: bool| pb::ReEncryptRequest {
        ciphertext: ct.clone(),
        context: a.clone(),
        destination_key: dest.into(),
        destination_context: dctx,
        replace_context: replace,
    };
    let same = c
        .call(c.crypto().re_encrypt(re("", HashMap::new(), false)))
        .await
        .unwrap();
    assert_eq!(same.key, "src");
    assert_eq!(
        c.decrypt(same.ciphertext, a.clone())
            .await
            .unwrap()
            .plaintext,
        b"m"
    );
    let empty = c
        .call(c.crypto().re_encrypt(re("dst", HashMap::new(), true)))
        .await
        .unwrap();
    assert_eq!(empty.key, "dst");
    assert!(
        c.decrypt(empty.ciphertext.clone(), a.clone())
            .await
            .is_err()
    );
    let d = c.decrypt(empty.ciphertext, HashMap::new()).await.unwrap();
    assert_eq!((d.plaintext.as_slice(), d.key.as_str()), (&b"m"[..], "dst"));
}

/// A key whose metadata record is lost (deleted from the store, or left out of an edited
/// backup) while material of a later version is stored is damage, not a create interrupted
/// before its metadata: its material is kept, its ciphertexts fail with DATA_LOSS, and its
/// name cannot be taken by a new key. (Before, the material was erased at unseal as an
/// orphan and the name was free again.)
#[tokio::test]
async fn a_lost_metadata_record_neither_erases_the_key_nor_frees_its_name() {
    use kms_server::storage::{Backend, Expect, SledBackend};
    let inst = Installation::new();
    let mut share = None;
    let context = ctx(&[("k", "v")]);
    let ciphertext = {
        let server = start_unsealed(&inst, &mut share).await;
        let c = server.client().await;
        create(&c, "lost/meta").await;
        let req = pb::RotateKeyRequest {
            name: "lost/meta".into(),
        };
        c.call(c.key_admin().rotate_key(req)).await.unwrap();
        let e = c.encrypt("lost/meta", b"kept".to_vec(), context.clone());
        let ciphertext = e.await.unwrap().ciphertext;
        drop(c);
        server.kill();
        ciphertext
    };
    let id = kms_core::ciphertext::parse_header(&ciphertext)
        .unwrap()
        .key_id
        .to_string();
    let prefix = format!("keys/{id}/");
    {
        let b = SledBackend::open(&inst.data_dir()).unwrap();
        let meta = format!("{prefix}meta");
        b.delete(&meta, Expect::Any).await.unwrap();
    }
    {
        let server = start_unsealed(&inst, &mut share).await;
        let c = server.client().await;
        let s = status(c.decrypt(ciphertext, context).await.unwrap_err());
        assert_eq!(s.code(), Code::DataLoss, "{s:?}");
        let req = pb::CreateKeyRequest {
            name: "lost/meta".into(),
            ..Default::default()
        };
        let s = status(c.call(c.key_admin().create_key(req)).await.unwrap_err());
        assert_eq!(s.code(), Code::DataLoss, "{s:?}");
        drop(c);
        server.kill();
    }
    let b = SledBackend::open(&inst.data_dir()).unwrap();
    assert_eq!(
        b.list(&prefix).await.unwrap().len(),
        2,
        "material was erased"
    );
}
