//! Envelope encryption of files through the real server: a fresh data key per file, local
//! streaming AEAD, and every kind of tampering refused.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use kms_client::EnvelopeFileError;
use kms_client::proto as pb;
use kms_tests::{Installation, start_unsealed};

/// Writes `len` deterministic pseudo-random bytes, streaming; returns their SHA-256.
fn write_file(path: &Path, len: u64) -> Vec<u8> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            // xorshift64: fast, deterministic, not compressible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf[..n]).unwrap();
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    ctx.finish().as_ref().to_vec()
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    ctx.finish().as_ref().to_vec()
}

/// A file larger than 100 MB round-trips; truncation, swapped chunks, a modified header, a
/// foreign data key and a wrong context are each refused and leave no output file.
/// [SNC authenticated encryption: RecommandationModeChiff]
#[tokio::test]
async fn envelope_round_trip_and_tampering() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    c.call(c.key_admin().create_key(pb::CreateKeyRequest {
        name: "files".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let dir = inst.root.path();
    let plain = dir.join("big.bin");
    let sealed = dir.join("big.kmsenv");
    let back = dir.join("big.out");
    let size = 100 * 1024 * 1024 + 12_345;
    let digest = write_file(&plain, size);
    let ctx: HashMap<String, String> = [("file".to_string(), "big.bin".to_string())].into();

    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = seen.clone();
    let n = c
        .envelope_encrypt_file("files", ctx.clone(), &plain, &sealed, move |done| {
            s2.store(done, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(n.bytes, size);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), size);
    std::fs::remove_file(&plain).unwrap();
    let n = c
        .envelope_decrypt_file(ctx.clone(), &sealed, &back, |_| {})
        .await
        .unwrap();
    assert_eq!(n.bytes, size);
    assert_eq!(sha256_file(&back), digest);
    std::fs::remove_file(&back).unwrap();

    // Tampered copies of a small file (3 chunks of 64 KiB and a bit).
    let small = dir.join("small.bin");
    write_file(&small, 3 * 65536 + 100);
    let small_env = dir.join("small.kmsenv");
    c.envelope_encrypt_file("files", ctx.clone(), &small, &small_env, |_| {})
        .await
        .unwrap();
    let bytes = std::fs::read(&small_env).unwrap();
    let body = bytes.len() - (3 * (65536 + 16) + 100 + 16);
    let chunk = 65536 + 16;
    let other_env = dir.join("other.kmsenv");
    c.envelope_encrypt_file("files", ctx.clone(), &small, &other_env, |_| {})
        .await
        .unwrap();
    let other = std::fs::read(&other_env).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated at a chunk boundary",
            bytes[..body + 2 * chunk].to_vec(),
        ),
        ("truncated mid-chunk", bytes[..bytes.len() - 50].to_vec()),
    ];
    let mut swapped = bytes.clone();
    swapped[body..body + chunk].copy_from_slice(&bytes[body + chunk..body + 2 * chunk]);
    swapped[body + chunk..body + 2 * chunk].copy_from_slice(&bytes[body..body + chunk]);
    cases.push(("swapped chunks", swapped));
    let mut header = bytes.clone();
    header[body - 1] ^= 1; // last byte of the header (nonce prefix)
    cases.push(("modified header", header));
    // This file's body under the other file's header: another data key.
    let mut foreign = other[..body].to_vec();
    foreign.extend_from_slice(&bytes[body..]);
    cases.push(("another file's data key", foreign));
    for (what, content) in cases {
        let f = dir.join("case.kmsenv");
        let out = dir.join("case.out");
        std::fs::write(&f, content).unwrap();
        let r = c.envelope_decrypt_file(ctx.clone(), &f, &out, |_| {}).await;
        assert!(r.is_err(), "{what}: accepted");
        assert!(!out.exists(), "{what}: output left behind");
    }
    // Wrong context: the KMS refuses to unwrap the data key.
    let wrong: HashMap<String, String> = [("file".to_string(), "other".to_string())].into();
    let out = dir.join("wrong.out");
    match c
        .envelope_decrypt_file(wrong, &small_env, &out, |_| {})
        .await
    {
        Err(EnvelopeFileError::Kms(e)) => assert!(
            e.to_string().contains("ciphertext authentication failed"),
            "{e}"
        ),
        other => panic!("expected a KMS refusal, got {other:?}"),
    }
    assert!(!out.exists());
}
