//! The scheduler with injected time: automatic rotation and destruction run when due, once.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::unsealed_keystore;

use kms_core::ciphertext::EncryptionContext;
use kms_core::key::{KeyState, Purpose};
use kms_core::keyname::KeyName;
use kms_server::keystore::now_unix;

/// Automatic rotation happens when the period has elapsed, not before, and only once per
/// period. [RègleRenouvellement-1: planned renewal of keys]
#[tokio::test]
async fn rotation_runs_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let (_seal, ks) = unsealed_keystore(dir.path()).await;
    let name: KeyName = "auto/rot".parse().unwrap();
    let none: KeyName = "manual".parse().unwrap();
    ks.create(
        name.clone(),
        Purpose::EncryptDecrypt,
        String::new(),
        BTreeMap::new(),
        Some(3600),
        false,
    )
    .await
    .unwrap();
    ks.create(
        none.clone(),
        Purpose::EncryptDecrypt,
        String::new(),
        BTreeMap::new(),
        None,
        false,
    )
    .await
    .unwrap();
    let t0 = now_unix();
    assert_eq!(ks.run_scheduled(t0 + 3000).await.unwrap(), 0);
    assert_eq!(ks.get(&name).unwrap().latest(), 1);
    assert_eq!(ks.run_scheduled(t0 + 3700).await.unwrap(), 1);
    assert_eq!(ks.get(&name).unwrap().latest(), 2);
    // Not due again until another period has passed from the rotation.
    assert_eq!(ks.run_scheduled(t0 + 3700).await.unwrap(), 0);
    assert_eq!(ks.run_scheduled(t0 + 3700 + 3600).await.unwrap(), 1);
    assert_eq!(ks.get(&name).unwrap().latest(), 3);
    assert_eq!(ks.get(&none).unwrap().latest(), 1);

    // New encryptions use the new version; counts are per version.
    let ctx = EncryptionContext::default();
    for _ in 0..3 {
        assert_eq!(ks.encrypt(&name, b"m", &ctx).unwrap().version, 3);
    }
    let meta = ks.get(&name).unwrap();
    assert_eq!(meta.versions[2].encryptions, 3);
    assert_eq!(meta.versions[0].encryptions, 0);
}

/// Destruction happens only once the waiting period has ended, erases the material from
/// storage and keeps the tombstone. [SNC 11.9.a, RègleEffacement-1]
#[tokio::test]
async fn destruction_runs_when_the_waiting_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (seal, ks) = unsealed_keystore(dir.path()).await;
    let name: KeyName = "doomed".parse().unwrap();
    let meta = ks
        .create(
            name.clone(),
            Purpose::EncryptDecrypt,
            String::new(),
            BTreeMap::new(),
            None,
            false,
        )
        .await
        .unwrap();
    let ct = ks
        .encrypt(&name, b"m", &EncryptionContext::default())
        .unwrap()
        .ciphertext;
    let t0 = now_unix();
    ks.schedule_deletion(&name, Some(7)).await.unwrap();
    assert_eq!(ks.run_scheduled(t0 + 6 * 86_400).await.unwrap(), 0);
    assert!(matches!(
        ks.get(&name).unwrap().state,
        KeyState::PendingDeletion { .. }
    ));
    assert_eq!(ks.run_scheduled(t0 + 7 * 86_400 + 10).await.unwrap(), 1);
    assert!(matches!(
        ks.get(&name).unwrap().state,
        KeyState::Destroyed { .. }
    ));
    let keys = seal
        .backend()
        .list(&format!("keys/{}/", meta.id))
        .await
        .unwrap();
    assert_eq!(keys, vec![format!("keys/{}/meta", meta.id)]);
    let err = ks
        .decrypt(&ct, &EncryptionContext::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("destroyed"), "{err}");
    // Reloading (as after a restart) keeps the tombstone and finds no material.
    ks.clear();
    ks.load().await.unwrap();
    assert!(matches!(
        ks.get(&name).unwrap().state,
        KeyState::Destroyed { .. }
    ));
}

/// Key material that no acknowledged version owns (a create or rotation interrupted between
/// writing the material and committing the metadata) is erased at the next load, and does
/// not block the next rotation. [RègleEffacement-1: no unowned key material survives]
#[tokio::test]
async fn interrupted_changes_leave_no_material_behind() {
    use kms_server::storage::Expect;
    let dir = tempfile::tempdir().unwrap();
    let (seal, ks) = unsealed_keystore(dir.path()).await;
    let name: KeyName = "k".parse().unwrap();
    let meta = ks
        .create(
            name.clone(),
            Purpose::EncryptDecrypt,
            String::new(),
            BTreeMap::new(),
            None,
            false,
        )
        .await
        .unwrap();
    // Simulate the leftovers of a rotation and of a create that never committed.
    let keyring = seal.keyring().await.unwrap();
    let orphan_version = format!("keys/{}/v/{:010}", meta.id, 2);
    let orphan_key = format!("keys/{}/v/{:010}", "00112233445566778899aabbccddeeff", 1);
    for path in [&orphan_version, &orphan_key] {
        let sealed = keyring.seal(path, &[7u8; 32]).unwrap();
        seal.backend().put(path, sealed, Expect::Any).await.unwrap();
    }
    ks.clear();
    ks.load().await.unwrap();
    assert_eq!(seal.backend().get(&orphan_version).await.unwrap(), None);
    assert_eq!(seal.backend().get(&orphan_key).await.unwrap(), None);
    let v1 = format!("keys/{}/v/{:010}", meta.id, 1);
    assert!(
        seal.backend().get(&v1).await.unwrap().is_some(),
        "owned material erased"
    );
    assert_eq!(ks.rotate(&name).await.unwrap().latest(), 2);
}
