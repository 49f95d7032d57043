//! Audit log benchmarks: appending a record to the hash chain, HMAC'ing its context, and
//! verifying a 10,000-line log.
//!
//! Run: `cargo bench -p kms-core --bench audit` (about 5 s). The record is filled like the
//! server's audit sink fills one for a successful `encrypt` (RFC 3339 time, `node-n` request
//! id, SPIFFE principal, peer address, key and version, two context HMACs). The baseline
//! "SHA-256 of the line" hashes the exact bytes `append` returns, so `append / SHA-256` is what
//! serialising the record (and hex-encoding `prev`) costs on top of the hash the chain needs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kms_core::Secret32;
use kms_core::audit::{self, AuditKey, Chain, GENESIS_PREV, Record};

const VERIFY_LINES: usize = 10_000;

fn context() -> BTreeMap<String, String> {
    [("tenant", "acme"), ("purpose", "billing")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn record(key: &AuditKey, n: u64) -> Record {
    Record {
        seq: 0,
        time: "2026-11-28T04:00:00.123Z".into(),
        request_id: format!("kms-1-{n}"),
        node: "kms-1".into(),
        principal: "spiffe://prod/payments/api".into(),
        peer: "10.0.0.7:51544".into(),
        operation: "encrypt".into(),
        key: Some("payments/cards".into()),
        version: Some(3),
        outcome: "ok".into(),
        code: "OK".into(),
        error: None,
        context_hmac: audit::context_hmacs(key, &context()),
        // As the sink leaves it: `append` overwrites it.
        prev: GENESIS_PREV.to_string(),
    }
}

fn chain(c: &mut Criterion) {
    let key = AuditKey::from_secret(Secret32::from_bytes([7; 32]));
    let rec = record(&key, 1_000_042);
    let line = Chain::genesis().append(rec.clone());

    let mut group = c.benchmark_group("audit record");
    group.throughput(Throughput::Elements(1));
    // The clone is made outside the timed part: the sink moves its record into `append`.
    let mut chain = Chain::genesis();
    group.bench_function(format!("Chain::append ({} B line)", line.len()), |b| {
        b.iter_batched(
            || rec.clone(),
            |r| chain.append(black_box(r)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function(format!("SHA-256 of the line ({} B)", line.len()), |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(line.as_bytes())))
    });
    let ctx = context();
    group.bench_function("context_hmacs, 2 entries", |b| {
        b.iter(|| audit::context_hmacs(&key, black_box(&ctx)))
    });
    group.finish();
}

fn verify(c: &mut Criterion) {
    let key = AuditKey::from_secret(Secret32::from_bytes([7; 32]));
    let mut chain = Chain::genesis();
    let mut text = String::new();
    for n in 0..VERIFY_LINES as u64 {
        text.push_str(&chain.append(record(&key, n)));
        text.push('\n');
    }
    let head = chain.head();
    let report = audit::verify(audit::lines_of(&text), Some(&head)).expect("the chain verifies");
    assert_eq!(report.records, VERIFY_LINES as u64);

    let mut group = c.benchmark_group("audit verify");
    group.throughput(Throughput::Elements(VERIFY_LINES as u64));
    // One iteration is about 15 ms: 10 samples (55 iterations) fit in 1.5 s.
    group.sample_size(10);
    group.measurement_time(Duration::from_millis(1500));
    // Includes splitting the text into lines, as `kms-cli audit verify` does.
    group.bench_function(format!("{VERIFY_LINES} lines, with sealed head"), |b| {
        b.iter(|| audit::verify(audit::lines_of(black_box(&text)), Some(&head)).expect("verifies"))
    });
    group.finish();
}

/// Short runs, so that `cargo bench -p kms-core` (mostly `crypto`) stays near a minute. Fewer
/// bootstrap resamples than the default 100,000: the analysis otherwise takes longer than the
/// measurement, and 20,000 still gives stable confidence intervals at this sample size.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20)
        .nresamples(20_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = chain, verify
}
criterion_main!(benches);
