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
//! - raw ring AES-256-GCM on 64 KiB buffers over the same volume, two ways:
//!   - "hot": `seal_in_place_separate_tag` and `open_in_place` on one 64 KiB buffer, in place, a
//!     fresh nonce each time, no copies and no I/O (each open follows the seal of the same
//!     buffer; only the calls themselves are timed): the cipher's own speed;
//!   - "with reads": each 64 KiB piece (+ tag when opening) read from the same kind of in-memory
//!     reader as the envelope's into one buffer, then sealed or opened in place. The volume is
//!     far larger than the caches, so these reads are memory copies at DRAM speed, which every
//!     `Read`-based code pays; this isolates what the envelope format itself costs.
//!
//! Reported: the median of the runs in MB/s (10^6 bytes of plaintext per second), and
//! envelope / raw for both baselines. Everything runs on the calling thread.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::io::{self, Read};
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

/// Raw AES-256-GCM with the same reads as the envelope: each 64 KiB piece is read from `plain`
/// (through `Read`) and sealed in place. Returns the elapsed time.
fn raw_seal_with_reads(key: &LessSafeKey, plain: &[u8], first_nonce: u64) -> Duration {
    let mut buf = vec![0u8; BUF];
    let mut input = plain;
    let t = Instant::now();
    for n in first_nonce.. {
        let len = read_full(&mut input, &mut buf);
        if len == 0 {
            break;
        }
        let tag = key
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf[..len])
            .unwrap();
        black_box(&tag);
    }
    t.elapsed()
}

/// Raw AES-256-GCM with the same reads as the envelope: each 64 KiB piece and its tag is read
/// from `sealed` (through `Read`) and opened in place. Returns the elapsed time.
fn raw_open_with_reads(key: &LessSafeKey, sealed: &[u8]) -> Duration {
    let mut buf = vec![0u8; BUF + 16];
    let mut input = sealed;
    let t = Instant::now();
    for n in 0.. {
        let len = read_full(&mut input, &mut buf);
        if len == 0 {
            break;
        }
        let plain = key
            .open_in_place(nonce(n), Aad::empty(), &mut buf[..len])
            .unwrap();
        black_box(plain);
    }
    t.elapsed()
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
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
    // The volume sealed raw, 64 KiB pieces each followed by its tag, nonces 0, 1, 2, ...
    let mut raw_sealed = Vec::with_capacity(sealed.len());
    for (n, piece) in plain.chunks(BUF).enumerate() {
        let start = raw_sealed.len();
        raw_sealed.extend_from_slice(piece);
        let tag = raw_key
            .seal_in_place_separate_tag(nonce(n as u64), Aad::empty(), &mut raw_sealed[start..])
            .unwrap();
        raw_sealed.extend_from_slice(tag.as_ref());
    }
    let mut hot_buf = plain[..BUF].to_vec();

    println!("CPU: {}", cpu_model());
    println!(
        "volume: {mib} MiB per measurement, {runs} runs, chunk {} KiB, one thread",
        DEFAULT_CHUNK / 1024
    );

    let mb_s = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    // encrypt, decrypt, hot seal, hot open, seal with reads, open with reads
    let mut m: [Vec<f64>; 6] = Default::default();
    // Nonces for the raw seals, never reused under raw_key (raw_sealed used 0..pieces).
    let pieces = total.div_ceil(BUF) as u64;
    for run in 0..runs as u64 {
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
        m[0].push(mb_s(t.elapsed()));
        assert_eq!(n as usize, total);

        let t = Instant::now();
        let mut input = &sealed[..];
        let header = Header::read(&mut input).unwrap();
        let n = envelope::decrypt(&header, input, io::sink(), &data_key, &mut |_| {}).unwrap();
        m[1].push(mb_s(t.elapsed()));
        assert_eq!(n as usize, total);

        let (s, o) = raw_gcm(&raw_key, &mut hot_buf, total, (1 + 2 * run) * pieces);
        m[2].push(mb_s(s));
        m[3].push(mb_s(o));
        m[4].push(mb_s(raw_seal_with_reads(
            &raw_key,
            &plain,
            (2 + 2 * run) * pieces,
        )));
        m[5].push(mb_s(raw_open_with_reads(&raw_key, &raw_sealed)));
        let r = run as usize;
        println!(
            "run {}: encrypt {:.0}, decrypt {:.0}; raw hot: seal {:.0}, open {:.0}; \
             raw with reads: seal {:.0}, open {:.0} MB/s",
            r + 1,
            m[0][r],
            m[1][r],
            m[2][r],
            m[3][r],
            m[4][r],
            m[5][r]
        );
    }

    let [enc, dec, hot_seal, hot_open, read_seal, read_open] = m.map(median);
    println!();
    println!(
        "| median of {runs} runs, MB/s | envelope | raw GCM, hot 64 KiB buffer | ratio | \
         raw GCM + same reads | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, env, hot, read) in [
        ("encrypt (seal)", enc, hot_seal, read_seal),
        ("decrypt (open)", dec, hot_open, read_open),
    ] {
        println!(
            "| {what}, memory → sink | {env:.0} | {hot:.0} | {:.0} % | {read:.0} | {:.0} % |",
            100.0 * env / hot,
            100.0 * env / read
        );
    }
}
