//! Data-plane crypto benchmarks: ciphertext v1 seal/open against raw AES-256-GCM.
//!
//! Run: `cargo bench -p kms-core --bench crypto` (about a minute). The "raw" group uses one
//! fixed ring AES-256-GCM key with a counter nonce and no HKDF and no RNG, so the ratio
//! `seal / raw seal` shows what the per-message key derivation (and salt) costs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kms_core::Secret32;
use kms_core::ciphertext::{self, EncryptionContext, KeyId};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

const SIZES: [(usize, &str); 3] = [(64, "64 B"), (4096, "4 KiB"), (65536, "64 KiB")];

fn context() -> EncryptionContext {
    EncryptionContext::new([
        ("tenant".to_string(), "acme".to_string()),
        ("purpose".to_string(), "billing".to_string()),
    ])
    .expect("valid context")
}

fn data_plane(c: &mut Criterion) {
    let material = Secret32::from_bytes([7; 32]);
    let key_id = KeyId([0xa0; 16]);
    let ctx = context();

    let mut group = c.benchmark_group("ciphertext v1 seal");
    for (size, label) in SIZES {
        let pt = vec![0x42u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &pt, |b, pt| {
            b.iter(|| ciphertext::seal(&material, key_id, 1, &ctx, black_box(pt)).expect("seal"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ciphertext v1 open");
    for (size, label) in SIZES {
        let ct = ciphertext::seal(&material, key_id, 1, &ctx, &vec![0x42u8; size]).expect("seal");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &ct, |b, ct| {
            b.iter(|| ciphertext::open(&material, black_box(ct), &ctx).expect("open"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ciphertext v1 seal batch");
    let pt = [0x42u8; 64];
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 x 64 B", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                black_box(
                    ciphertext::seal(&material, key_id, 1, &ctx, black_box(&pt)).expect("seal"),
                );
            }
        })
    });
    group.finish();
}

fn raw_aes_gcm(c: &mut Criterion) {
    let key = LessSafeKey::new(
        UnboundKey::new(&aead::AES_256_GCM, &[7; 32]).expect("32-byte AES-256 key"),
    );
    // Same AAD length as the data plane (53-byte header + the context's canonical bytes).
    let mut aad = vec![0u8; 53];
    aad.extend(context().canonical_bytes());
    let mut counter: u64 = 0;
    let mut next_nonce = move || {
        counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };

    let mut group = c.benchmark_group("raw AES-256-GCM (ring, fixed key, no HKDF) seal");
    for (size, label) in SIZES {
        let pt = vec![0x42u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &pt, |b, pt| {
            b.iter(|| {
                // Allocate and copy like `seal` does, so only the derivation differs.
                let mut out = Vec::with_capacity(pt.len() + 16);
                out.extend_from_slice(black_box(pt));
                key.seal_in_place_append_tag(next_nonce(), Aad::from(&aad), &mut out)
                    .expect("seal");
                out
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("raw AES-256-GCM (ring, fixed key, no HKDF) open");
    for (size, label) in SIZES {
        let nonce = [0u8; 12];
        let mut ct = vec![0x42u8; size];
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut ct,
        )
        .expect("seal");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &ct, |b, ct| {
            b.iter(|| {
                let mut buf = black_box(ct).to_vec();
                let n = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut buf,
                    )
                    .expect("open")
                    .len();
                buf.truncate(n);
                buf
            })
        });
    }
    group.finish();

    // The two costs `seal` adds to raw AES-GCM, measured alone.
    let mut group = c.benchmark_group("per-message overhead parts");
    group.bench_function("fill_random 32 B (salt)", |b| {
        b.iter(|| {
            let mut salt = [0u8; 32];
            kms_core::fill_random(&mut salt).expect("rng");
            salt
        })
    });
    let material = [7u8; 32];
    group.bench_function("HKDF-SHA256 + AES-256-GCM key setup", |b| {
        b.iter(|| {
            let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, black_box(&[1u8; 32]))
                .extract(&material);
            let okm = prk
                .expand(&[b"kms data v1"], &aead::AES_256_GCM)
                .expect("hkdf");
            LessSafeKey::new(UnboundKey::from(okm))
        })
    });
    // `open` returns the plaintext in a `Zeroizing<Vec<u8>>`, wiped byte by byte on drop.
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("copy + zeroize plaintext", label), |b| {
            b.iter(|| zeroize::Zeroizing::new(black_box(vec![0x42u8; size])))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = data_plane, raw_aes_gcm
}
criterion_main!(benches);
