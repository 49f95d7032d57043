//! What reaches the disk: acknowledged changes survive SIGKILL, and no secret is ever written.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kms_server::storage::SledBackend;
use kms_tests::{Installation, Recovered, init, recover_offline, unseal_with};

/// SIGKILL right after an acknowledged Init: the installation is there after restart.
#[tokio::test]
async fn init_survives_sigkill() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    server.kill();
    let server = inst.start();
    let st = server.client().await.status().await.unwrap();
    assert!(st.initialized && st.sealed);
    unseal_with(&server, &shares, &[1, 3]).await;
}

/// SIGKILL right after an acknowledged Rekey: the new shares work, the old ones do not.
#[tokio::test]
async fn rekey_survives_sigkill() {
    let inst = Installation::new();
    let server = inst.start();
    let old = init(&server, 3, 2).await;
    let new = server
        .client()
        .await
        .rekey(old[..2].to_vec(), 2, 2)
        .await
        .unwrap()
        .shares;
    server.kill();
    let server = inst.start();
    let client = server.client().await;
    assert!(client.unseal(&old[0]).await.is_err());
    assert_eq!(client.status().await.unwrap().shares, 2);
    unseal_with(&server, &new, &[2, 1]).await;
}

/// SIGKILL right after an acknowledged RotateBarrier: the new term is there after restart.
#[tokio::test]
async fn rotate_barrier_survives_sigkill() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 1, 1).await;
    unseal_with(&server, &shares, &[1]).await;
    assert_eq!(
        server.client().await.rotate_barrier().await.unwrap().term,
        2
    );
    server.kill();
    let server = inst.start();
    unseal_with(&server, &shares, &[1]).await;
    assert_eq!(
        server.client().await.status().await.unwrap().barrier_term,
        2
    );
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// No file of the data directory holds the root secret, the root key, a share or any barrier
/// key, in binary or hex. [RGS B2 RègleEffacement / DESIGN §2: the root secret is never written]
#[tokio::test]
async fn no_secret_reaches_the_data_directory() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 5, 3).await;
    unseal_with(&server, &shares, &[1, 2, 3]).await;
    let client = server.client().await;
    client.rotate_barrier().await.unwrap();
    let new_shares = client
        .rekey(shares[2..5].to_vec(), 3, 2)
        .await
        .unwrap()
        .shares;
    drop(client);
    assert!(server.terminate(), "server did not exit cleanly on SIGTERM");

    // Recover every secret from the shares and the stored public configuration.
    let backend = SledBackend::open(&inst.data_dir()).unwrap();
    let Recovered {
        root_secret,
        root_key,
        keyring,
    } = recover_offline(&backend, &new_shares).await;
    drop(backend);

    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("root secret".into(), root_secret.expose().to_vec()),
        ("root key".into(), root_key.expose().to_vec()),
    ];
    for (term, key) in keyring.expose_keys() {
        needles.push((format!("barrier key {term}"), key.expose().to_vec()));
    }
    assert_eq!(needles.len(), 4, "expected 2 barrier terms");
    for (i, s) in shares.iter().chain(&new_shares).enumerate() {
        needles.push((format!("share text {i}"), s.as_bytes().to_vec()));
        let value = hex::decode(s.split('-').nth(3).unwrap()).unwrap();
        needles.push((format!("share value {i}"), value));
    }
    let hex_needles: Vec<(String, Vec<u8>)> = needles
        .iter()
        .filter(|(_, b)| b.len() == 32)
        .map(|(n, b)| (format!("{n} (hex)"), hex::encode(b).into_bytes()))
        .collect();
    needles.extend(hex_needles);

    let mut files = Vec::new();
    files_under(&inst.data_dir(), &mut files);
    assert!(files.len() >= 2, "{files:?}");
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        scanned += bytes.len();
        for (name, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{name} found in {}",
                f.display()
            );
        }
    }
    // The scan must have seen the stored records (the seal record is hundreds of bytes).
    assert!(scanned > 500, "scanned only {scanned} bytes");
}
