//! Envelope throughput against raw AES-256-GCM, measured in the same run on one core.
//!
//! Run: `cargo bench -p kms-client --bench envelope`
//!
//! Environment: `KMS_BENCH_MIB` (volume per measurement, default 256), `KMS_BENCH_RUNS`
//! (default 3).
//!
//! What is measured, interleaved in each run so all cases share the machine's conditions:
//! - `envelope::encrypt` of the volume (pseudo-random bytes in memory, read through `&[u8]`)
//!   to `std::io::sink()`, default chunk size (64 KiB);
//! - `Header::read` + `envelope::decrypt` of that ciphertext (in memory) to `std::io::sink()`;
//! - raw ring AES-256-GCM over the same volume: `seal_in_place_separate_tag` and
//!   `open_in_place` on one 64 KiB buffer in place, a fresh nonce each time, no copies and no
//!   I/O (each open follows the seal of the same buffer; only the call itself is timed).
//!
//! Reported: the median of the runs in MB/s (10^6 bytes of plaintext per second), and
//! envelope / raw. Everything runs on the calling thread.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use kms_client::envelope::{self, DEFAULT_CHUNK, Header};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const BUF: usize = 64 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// Deterministic pseudo-random bytes (xorshift64): incompressible, no page-sharing tricks.
fn generate(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for w in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    out
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Raw AES-256-GCM seal and open over `total` bytes in 64 KiB buffers: (seal time, open time).
fn raw_gcm(
    key: &LessSafeKey,
    buf: &mut [u8],
    total: usize,
    first_nonce: u64,
) -> (Duration, Duration) {
    let (mut seal, mut open) = (Duration::ZERO, Duration::ZERO);
    let mut sealed = vec![0u8; BUF + 16];
    for i in 0..(total / BUF) as u64 {
        let n = first_nonce + i;
        let t = Instant::now();
        let tag = key
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), buf)
            .unwrap();
        seal += t.elapsed();
        sealed[..BUF].copy_from_slice(buf);
        sealed[BUF..].copy_from_slice(tag.as_ref());
        let t = Instant::now();
        let plain = key
            .open_in_place(nonce(n), Aad::empty(), &mut sealed)
            .unwrap();
        open += t.elapsed();
        black_box(plain);
    }
    (seal, open)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let mib = env_usize("KMS_BENCH_MIB", 256);
    let runs = env_usize("KMS_BENCH_RUNS", 3);
    let total = mib << 20;
    let data_key = [0x5A; 32];
    let wrapped = [0xA5; 60];

    let plain = generate(total);
    let mut sealed = Vec::with_capacity(total + (total / BUF + 1) * 16 + 128);
    envelope::encrypt(
        &plain[..],
        &mut sealed,
        &data_key,
        &wrapped,
        DEFAULT_CHUNK,
        &mut |_| {},
    )
    .unwrap();
    let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x3C; 32]).unwrap());
    let mut raw_buf = plain[..BUF].to_vec();

    println!("CPU: {}", cpu_model());
    println!(
        "volume: {mib} MiB per measurement, {runs} runs, chunk {} KiB, one thread",
        DEFAULT_CHUNK / 1024
    );

    let mb_s = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    let (mut enc, mut dec, mut raw_seal, mut raw_open) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let t = Instant::now();
        let n = envelope::encrypt(
            &plain[..],
            io::sink(),
            &data_key,
            &wrapped,
            DEFAULT_CHUNK,
            &mut |_| {},
        )
        .unwrap();
        enc.push(mb_s(t.elapsed()));
        assert_eq!(n as usize, total);

        let t = Instant::now();
        let mut input = &sealed[..];
        let header = Header::read(&mut input).unwrap();
        let n = envelope::decrypt(&header, input, io::sink(), &data_key, &mut |_| {}).unwrap();
        dec.push(mb_s(t.elapsed()));
        assert_eq!(n as usize, total);

        let (s, o) = raw_gcm(&raw_key, &mut raw_buf, total, (run * total / BUF) as u64);
        raw_seal.push(mb_s(s));
        raw_open.push(mb_s(o));
        println!(
            "run {}: encrypt {:.0}, decrypt {:.0}, raw seal {:.0}, raw open {:.0} MB/s",
            run + 1,
            enc[run],
            dec[run],
            raw_seal[run],
            raw_open[run]
        );
    }

    let (enc, dec) = (median(enc), median(dec));
    let (raw_seal, raw_open) = (median(raw_seal), median(raw_open));
    println!();
    println!("| operation (median of {runs}) | MB/s | raw AES-256-GCM MB/s | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| envelope encrypt, memory → sink | {enc:.0} | {raw_seal:.0} (seal) | {:.0} % |",
        100.0 * enc / raw_seal
    );
    println!(
        "| envelope decrypt, memory → sink | {dec:.0} | {raw_open:.0} (open) | {:.0} % |",
        100.0 * dec / raw_open
    );
}
