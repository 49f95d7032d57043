//! Key distribution benchmarks: the RSA-3072 work behind GetImportParameters (key generation),
//! ImportKeyMaterial (unwrap) and ExportKey (wrap), against sealing 32 bytes as a ciphertext v1
//! in the same run as the baseline.
//!
//! Run: `cargo bench -p kms-core --bench wrap -- --warm-up-time 1 --measurement-time 5`
//! (about a minute). Key generation is the slow one and happens once per GetImportParameters
//! call, so it bounds that RPC's throughput; its time varies a lot from run to run (the
//! number of candidate primes tried is random), so read its median, not its mean.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kms_core::Secret32;
use kms_core::ciphertext::{self, EncryptionContext, KeyId};
use kms_core::wrap::WrappingKey;

fn wrap(c: &mut Criterion) {
    let material = Secret32::from_bytes([7; 32]);
    let wrapping_key = WrappingKey::generate().expect("RSA-3072 key");
    let recipient = wrapping_key.recipient().expect("recipient");
    let blob = recipient.wrap(material.expose()).expect("wrap");

    let mut group = c.benchmark_group("key distribution");

    // Baseline: what Encrypt does with 32 bytes (HKDF + AES-256-GCM).
    let key_id = KeyId([0xa0; 16]);
    let ctx = EncryptionContext::default();
    group.bench_function("ciphertext v1 seal 32 B (baseline)", |b| {
        b.iter(|| {
            ciphertext::seal(&material, key_id, 1, &ctx, black_box(material.expose()))
                .expect("seal")
        })
    });

    group.bench_function("RsaRecipient::wrap 32 B (RSA-3072)", |b| {
        b.iter(|| recipient.wrap(black_box(material.expose())).expect("wrap"))
    });

    group.bench_function("WrappingKey::unwrap 32 B (RSA-3072)", |b| {
        b.iter(|| wrapping_key.unwrap(black_box(&blob)).expect("unwrap"))
    });

    // Seconds-scale iterations: fewer samples, a longer window.
    group.sampling_mode(criterion::SamplingMode::Flat);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("WrappingKey::generate (RSA-3072)", |b| {
        b.iter(|| WrappingKey::generate().expect("RSA-3072 key"))
    });
    group.finish();
}

criterion_group!(benches, wrap);
criterion_main!(benches);
