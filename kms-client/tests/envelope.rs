//! Envelope encryption of files (`kms_client::envelope`): round trips through real files in a
//! temporary directory, and every way of damaging a file is refused, never decrypted.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kms_client::envelope::{self, DEFAULT_CHUNK, EnvelopeError, Header, MAGIC};
use ring::digest;

const KEY: [u8; 32] = [0x42; 32];
const WRAPPED: &[u8] = b"wrapped data key: opaque bytes from the KMS";
/// The smallest chunk size, so multi-chunk files stay small and tests fast.
const SMALL: u32 = 1024;
const CHUNK: usize = SMALL as usize;
const TAG: usize = 16;
/// MAGIC, chunk size, wrapped key length, wrapped key, nonce prefix.
const HEADER_LEN: usize = 8 + 4 + 4 + WRAPPED.len() + 7;

/// Deterministic pseudo-random bytes (xorshift64), so data neither repeats nor compresses.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for w in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            w.copy_from_slice(&self.0.to_le_bytes()[..w.len()]);
        }
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Self::new(seed).fill(&mut v);
        v
    }
}

/// A temporary directory holding the files of one test.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes `bytes` to a new file, returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Encrypts `plain` (through a file) under `KEY`; returns the envelope file's bytes.
    fn seal(&self, plain: &[u8], chunk: u32) -> Vec<u8> {
        let src = self.file("plain", plain);
        let dst = self.path("sealed");
        let n = encrypt_file(&src, &dst, &KEY, chunk, &mut |_| {}).unwrap();
        assert_eq!(n, plain.len() as u64);
        fs::read(dst).unwrap()
    }

    /// Writes `sealed` to a file and decrypts it under `key`, the way an application should:
    /// to a temporary file renamed on success. Returns the plaintext, or the error; on error,
    /// checks that no output file is left.
    fn open_with(&self, sealed: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, EnvelopeError> {
        let src = self.file("to-open", sealed);
        let dst = self.path("opened");
        let _ = fs::remove_file(&dst);
        match decrypt_file(&src, &dst, key, &mut |_| {}) {
            Ok(n) => {
                let plain = fs::read(&dst).unwrap();
                assert_eq!(n, plain.len() as u64);
                Ok(plain)
            }
            Err(e) => {
                assert!(!dst.exists(), "output file left behind after {e}");
                Err(e)
            }
        }
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.open_with(sealed, &KEY)
    }
}

fn encrypt_file(
    src: &Path,
    dst: &Path,
    key: &[u8; 32],
    chunk: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let out = File::create(dst)?;
    envelope::encrypt(File::open(src)?, out, key, WRAPPED, chunk, progress)
}

/// Decrypts `src` to `dst` through `dst.partial`, renamed only on success (as `decrypt` asks;
/// an application also calls `sync_all` before the rename, but durability is not under test).
fn decrypt_file(
    src: &Path,
    dst: &Path,
    key: &[u8; 32],
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let mut input = BufReader::new(File::open(src)?);
    let header = Header::read(&mut input)?;
    let tmp = dst.with_extension("partial");
    let mut out = File::create_new(&tmp)?;
    match envelope::decrypt(&header, &mut input, &mut out, key, progress) {
        Ok(n) => {
            fs::rename(&tmp, dst)?;
            Ok(n)
        }
        Err(e) => {
            fs::remove_file(&tmp)?;
            Err(e)
        }
    }
}

/// In-memory decryption, for sweeps over thousands of variants of one file.
fn open_in_memory(sealed: &[u8], out: &mut Vec<u8>) -> Result<u64, EnvelopeError> {
    out.clear();
    let mut input = sealed;
    let header = Header::read(&mut input)?;
    envelope::decrypt(&header, input, out, &KEY, &mut |_| {})
}

/// Chunks in a file of `len` plaintext bytes: an empty file still has its (empty) final chunk.
fn chunks_for(len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk).max(1)
}

/// The byte range of chunk `i` (sealed, with its tag) in an envelope file of `SMALL` chunks.
fn chunk_range(i: usize, sealed_len: usize) -> std::ops::Range<usize> {
    let start = HEADER_LEN + i * (CHUNK + TAG);
    start..(start + CHUNK + TAG).min(sealed_len)
}

#[track_caller]
fn assert_auth_failure_at(r: Result<Vec<u8>, EnvelopeError>, chunk: u64) {
    match r {
        Err(EnvelopeError::Authentication { chunk: c }) if c == chunk => {}
        other => panic!("expected Authentication at chunk {chunk}, got {other:?}"),
    }
}

/// The test vector of `docs/envelope-format.md`, computed there by an independent implementation
/// of the format (Python `cryptography`): data key 00 01 .. 1f, wrapped key
/// "example wrapped key", chunk size 1024, nonce prefix a0..a6, plaintext byte i = i mod 251 for
/// i in 0..1030.
const VECTOR: &[&str] = &[
    "4b4d53454e56000100000400000000136578616d706c65207772617070656420",
    "6b6579a0a1a2a3a4a5a6eb94f537f8d831134fa28ba36535ee2218cb1d8586f7",
    "c16dc53efc206c4cf095005c7a3acc354c7c02862b00e0ac88d4ab15f54b1348",
    "e61175a633ea1174f0e30b21136320db93bb5751636526375d0b5821998e951a",
    "8d6f6ad0d3fdbd08d937742b65fb440aaca5ac6e33b6f1866829bdd1a402b9c2",
    "6d4bff68c57b744181a3558b5910b942ff8feb3de9ef954a3333f06e0b2b0a48",
    "2866903f1b2b96ec6461a9e6e97fa25ac8d5ddf83ea71d4b56ffdd246d3adff9",
    "87939714ba8b4c97e9ff6878154034f65b97b269289091234a9154aa89161401",
    "47e8ec73a41a5e91aa2e24c9c48200d77ff67be36f24b5ba294516b72f96fc3a",
    "e05bd4623fecb4ceb9d37c3d8f6f21f4ca06da24aaaefbfa1445de20e2b6f56f",
    "2c748e0e99e98368f554b766b7459dfb6622f86eaf84883a55c13d5866491679",
    "711af11f77342c49a2f414024b8cad0f57b655fb4cb03dd741f0720ea2516a61",
    "e70e4e5c1481019497f7ae00c6756460bd635ae08538422128a2f1430b5ec4a8",
    "4b9d71a8e767e9b0cdf65ebe814c0676a80a8575de916a225c5c397ed128da17",
    "c15e2ee8bed1b9b17b3189a834de3a9fd35877c1670a533f8d382161cfc0838d",
    "d62e80c48498dba5aab485dd48c570da546e25f707b003f716cc818d9f7df0e4",
    "c286a580a328deaf4911f6dd613158967c91e1270069823b2c92cb3649b4aacd",
    "aebbd5a4a1d6b544d965966800a87720d0709852cedb602c10958146a9000942",
    "27c13649979573b91cebc1613f30e661a4fc645fb4c682fa361b123ffa81fcdd",
    "460ce892f8667be370366287047005c3e9b2ce38239e603d1a85bb4de44af651",
    "52508c7288e62add8b10e927e994dc22bdaf3dd16da1ec752c3eb0c534bcec01",
    "1b61ac09b3ee61e4eb2a777964bb6e889ade0a653b6bf9413e2da5c14d2f3432",
    "df8c80b6d2b2872216349b0cf20bdc70f5497c2d804cbc45e232ad75f045eaaa",
    "7efc039ce2e6c56fdfbee1b37fdb4f1c39d83f8f1328cecd37fcb4668e11e043",
    "4989759f967c0314e8a15e428a057a2d7d55fc1f3bb38d6873209af54286ec8c",
    "abdd582eb44da983b71cb46c11db94d10d3029a98fa50794761f87c7a5b104af",
    "c167d7177b7bd182b1b082d0f57d2792552a2e20d3c54af0182aa202b4f2b56c",
    "ffdae4addfc966875f4628a17d2b02d8889c033d22c7d28bee396bab18ad9084",
    "363eddbe34dd997b82bd9149f7213b1cc1f0e197929399736214862c3f9a1f3f",
    "443dacd07d9237db6d979a1c95e94d523180b6feb50fd3859d48f4640c4cf8fe",
    "72aee416d6a01a95989131a8fc50ee448b116893f45ec880e4e66003ebb88f01",
    "2a0108b30d8cfe71d42fba16242e77a02c49477683a9194667c05701aaa285a1",
    "de585d33773ce5e1117e68942431cbf7cebdd32c45ce363db3047de1ab650aff",
    "108be2deba1abb5cb886cfe12eb5abd6b9f9e38c905837c3aa48dac3f863f8c1",
    "5b6e6fcc116a430c30a1308fd106c788",
];

/// The same key, wrapped key and nonce prefix, empty plaintext.
const VECTOR_EMPTY: &str = "4b4d53454e56000100000400000000136578616d706c652077726170706564206b6579a0a1a2a3a4a5a6ba111f8e0687236d7fe142f1436dc567";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Round trips through real files at the sizes where chunking has edge cases — empty (one empty
/// final chunk), 1 byte, one chunk − 1, exactly one chunk, one chunk + 1, an exact multiple,
/// several chunks and a partial one — with the smallest and the default chunk size. The envelope
/// is exactly header + plaintext + one full 16-byte GCM tag per chunk (authenticated mode, tag
/// never truncated: RecommandationModeChiff), and the plaintext does not appear in it.
#[test]
fn round_trips_at_chunk_edges() {
    let dir = Dir::new();
    for chunk in [SMALL, DEFAULT_CHUNK] {
        let c = chunk as usize;
        for len in [0, 1, c - 1, c, c + 1, 3 * c, 5 * c + 7] {
            let what = format!("{len} bytes in chunks of {chunk}");
            let plain = Gen::bytes(len as u64, len);
            let sealed = dir.seal(&plain, chunk);
            assert_eq!(
                sealed.len(),
                HEADER_LEN + len + TAG * chunks_for(len, c),
                "{what}"
            );
            let header = Header::read(&mut &sealed[..]).unwrap();
            assert_eq!(
                (&header.wrapped_key[..], header.chunk_size),
                (WRAPPED, chunk)
            );
            if len >= 16 {
                assert!(!sealed.windows(16).any(|w| w == &plain[..16]), "{what}");
            }
            assert_eq!(dir.open(&sealed).unwrap(), plain, "{what}");
        }
    }
}

/// A file larger than 100 MB round trips with the default chunk size, file to file, in constant
/// memory: the plaintext is generated and hashed as it is written, the decrypted file hashed as
/// it is read back (SHA-256), and nothing holds more than 1 MiB.
#[test]
fn file_larger_than_100_mb_round_trips() {
    // 1600 full chunks and a 1-byte final one.
    const LEN: u64 = 100 * 1024 * 1024 + 1;
    let dir = Dir::new();
    let (src, sealed, dst) = (dir.path("big"), dir.path("big.kmsenv"), dir.path("big.out"));
    let mut buf = vec![0u8; 1 << 20];

    let start = Instant::now();
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut out = File::create(&src).unwrap();
    let mut source = Gen::new(7);
    let mut left = LEN;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        source.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(out);
    let written = hash.finish();
    let generated = start.elapsed();

    let start = Instant::now();
    let mut reports = 0u64;
    let n = encrypt_file(&src, &sealed, &KEY, DEFAULT_CHUNK, &mut |_| reports += 1).unwrap();
    let encrypted = start.elapsed();
    let chunks = LEN.div_ceil(u64::from(DEFAULT_CHUNK));
    assert_eq!((n, reports), (LEN, chunks));
    assert_eq!(
        fs::metadata(&sealed).unwrap().len(),
        HEADER_LEN as u64 + LEN + TAG as u64 * chunks
    );

    let start = Instant::now();
    let mut last = 0;
    let n = decrypt_file(&sealed, &dst, &KEY, &mut |p| last = p).unwrap();
    let decrypted = start.elapsed();
    assert_eq!((n, last), (LEN, LEN));

    let start = Instant::now();
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut input = File::open(&dst).unwrap();
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    assert_eq!(total, LEN);
    assert_eq!(
        written.as_ref(),
        hash.finish().as_ref(),
        "decrypted file differs"
    );
    eprintln!(
        "{LEN} bytes: generate+hash+write {generated:?}, encrypt {encrypted:?}, \
         decrypt {decrypted:?}, read+hash {:?}",
        start.elapsed()
    );
}

/// Truncation is detected (STREAM: only the final chunk carries the final flag): a file cut at a
/// chunk boundary is `Truncated`, a cut inside a chunk fails that chunk, and no cut anywhere
/// decrypts — for a short and for a full-size final chunk.
#[test]
fn truncated_files_are_refused() {
    let dir = Dir::new();
    // Chunks 0 and 1 full, chunk 2 final with 100 bytes.
    let sealed = dir.seal(&Gen::bytes(1, 2 * CHUNK + 100), SMALL);
    for chunks in 0..=2 {
        let cut = HEADER_LEN + chunks * (CHUNK + TAG);
        let r = dir.open(&sealed[..cut]);
        assert!(
            matches!(r, Err(EnvelopeError::Truncated)),
            "cut after {chunks} chunks: {r:?}"
        );
    }
    assert_auth_failure_at(dir.open(&sealed[..HEADER_LEN + CHUNK + TAG + 500]), 1);
    assert_auth_failure_at(dir.open(&sealed[..sealed.len() - 1]), 2);
    let r = dir.open(&sealed[..HEADER_LEN + 5]);
    assert!(matches!(r, Err(EnvelopeError::Truncated)), "{r:?}");
    let r = dir.open(&sealed[..HEADER_LEN - 1]);
    assert!(matches!(r, Err(EnvelopeError::Header(_))), "{r:?}");
    let r = dir.open(&sealed[..4]);
    assert!(matches!(r, Err(EnvelopeError::NotEnvelope)), "{r:?}");

    // Three full chunks: the final one is full-size, so only its flag marks the end.
    let exact = dir.seal(&Gen::bytes(2, 3 * CHUNK), SMALL);
    let r = dir.open(&exact[..exact.len() - (CHUNK + TAG)]);
    assert!(matches!(r, Err(EnvelopeError::Truncated)), "{r:?}");

    let mut out = Vec::new();
    for s in [&sealed, &exact] {
        for cut in 0..s.len() {
            let r = open_in_memory(&s[..cut], &mut out);
            assert!(r.is_err(), "cut at {cut} of {} decrypted", s.len());
        }
    }
}

/// Reordering is detected (STREAM: the chunk counter is in the nonce): swapped, duplicated or
/// dropped chunks, and a chunk spliced in from another file under the same data key, fail at the
/// first chunk out of place.
#[test]
fn reordered_chunks_are_refused() {
    let dir = Dir::new();
    let plain = Gen::bytes(3, 4 * CHUNK);
    let sealed = dir.seal(&plain, SMALL);
    let build = |order: &[usize]| {
        let mut v = sealed[..HEADER_LEN].to_vec();
        for &i in order {
            v.extend_from_slice(&sealed[chunk_range(i, sealed.len())]);
        }
        v
    };
    // The pieces reassemble, so the failures below are due to the order alone.
    assert_eq!(dir.open(&build(&[0, 1, 2, 3])).unwrap(), plain);
    assert_auth_failure_at(dir.open(&build(&[1, 0, 2, 3])), 0);
    assert_auth_failure_at(dir.open(&build(&[0, 2, 1, 3])), 1);
    assert_auth_failure_at(dir.open(&build(&[0, 1, 3, 2])), 2);
    assert_auth_failure_at(dir.open(&build(&[0, 0, 1, 2, 3])), 1);
    assert_auth_failure_at(dir.open(&build(&[0, 2, 3])), 1);

    let other = dir.seal(&plain, SMALL);
    let mut spliced = sealed.clone();
    let r = chunk_range(1, sealed.len());
    spliced[r.clone()].copy_from_slice(&other[r]);
    assert_auth_failure_at(dir.open(&spliced), 1);
}

/// Every byte is authenticated (AES-256-GCM with its full tag: RecommandationModeChiff): one
/// flipped bit anywhere in the file, header included, is refused. And decryption never outputs a
/// byte it has not authenticated: on failure the output holds exactly the chunks before the
/// damaged one.
#[test]
fn flipped_bytes_are_refused() {
    let dir = Dir::new();
    let plain = Gen::bytes(4, 2 * CHUNK + 10);
    let sealed = dir.seal(&plain, SMALL);
    let chunk1 = chunk_range(1, sealed.len()).start;
    for (pos, chunk) in [(HEADER_LEN, 0), (chunk1 + 3, 1), (sealed.len() - 1, 2)] {
        let mut t = sealed.clone();
        t[pos] ^= 0x01;
        assert_auth_failure_at(dir.open(&t), chunk);
    }

    let mut t = sealed.clone();
    t[chunk1 + 3] ^= 0x80;
    let mut out = Vec::new();
    let r = open_in_memory(&t, &mut out);
    assert!(
        matches!(r, Err(EnvelopeError::Authentication { chunk: 1 })),
        "{r:?}"
    );
    assert_eq!(out, &plain[..CHUNK], "output must hold chunk 0 only");

    for pos in 0..sealed.len() {
        let mut t = sealed.clone();
        t[pos] ^= 0x01;
        let r = open_in_memory(&t, &mut out);
        assert!(r.is_err(), "byte {pos} flipped but the file decrypted");
    }
}

/// The header is authenticated (its SHA-256 is every chunk's AAD): a changed wrapped key, chunk
/// size, wrapped-key length or nonce prefix is refused, also when the header still parses.
#[test]
fn changed_header_is_refused() {
    let dir = Dir::new();
    let sealed = dir.seal(&Gen::bytes(5, 3 * CHUNK + 1), SMALL);
    let changed = |pos: usize, value: u8| {
        let mut t = sealed.clone();
        t[pos] = value;
        dir.open(&t)
    };
    // Wrapped key, then nonce prefix: the header parses, the first chunk fails.
    assert_auth_failure_at(changed(16, sealed[16] ^ 0x20), 0);
    assert_auth_failure_at(changed(HEADER_LEN - 1, sealed[HEADER_LEN - 1] ^ 0x01), 0);
    // Chunk size 1024 → 2048 (still valid), and → 1025.
    assert_auth_failure_at(changed(10, 0x08), 0);
    assert_auth_failure_at(changed(11, 0x01), 0);
    // Chunk size 1024 → 512: out of range.
    let r = changed(10, 0x02);
    assert!(matches!(r, Err(EnvelopeError::Header(_))), "{r:?}");
    // Wrapped key one byte longer (the nonce prefix shifts), or empty.
    assert_auth_failure_at(changed(15, WRAPPED.len() as u8 + 1), 0);
    let r = changed(15, 0);
    assert!(matches!(r, Err(EnvelopeError::Header(_))), "{r:?}");
}

/// The wrong data key fails at the first chunk, whatever the file's size.
#[test]
fn wrong_data_key_fails_at_chunk_0() {
    let dir = Dir::new();
    let mut wrong = KEY;
    wrong[31] ^= 0x01;
    for len in [0, 10, CHUNK, 3 * CHUNK + 5] {
        let sealed = dir.seal(&Gen::bytes(6, len), SMALL);
        assert_auth_failure_at(dir.open_with(&sealed, &wrong), 0);
        assert!(dir.open(&sealed).is_ok());
    }
}

/// Nothing may follow the final chunk. After a full-size final chunk any appended bytes are
/// `TrailingData`; after a shorter one the format cannot tell where the final chunk ends, so it
/// fails authentication: refused either way.
#[test]
fn trailing_data_is_refused() {
    let dir = Dir::new();
    let sealed = dir.seal(&Gen::bytes(7, 2 * CHUNK), SMALL);
    let final_chunk = sealed[chunk_range(1, sealed.len())].to_vec();
    for extra in [
        &b"x"[..],
        &[0u8; TAG - 1][..],
        &[0u8; CHUNK + TAG][..],
        &[0u8; 3 * CHUNK][..],
        &final_chunk[..],
    ] {
        let r = dir.open(&[&sealed[..], extra].concat());
        assert!(
            matches!(r, Err(EnvelopeError::TrailingData)),
            "{} bytes appended: {r:?}",
            extra.len()
        );
    }

    let short = dir.seal(&Gen::bytes(7, 2 * CHUNK + 5), SMALL);
    for extra in [&b"x"[..], &[0u8; 3 * CHUNK][..]] {
        assert_auth_failure_at(dir.open(&[&short[..], extra].concat()), 2);
    }
}

/// Files that are not envelopes, or of another version, are named as such.
#[test]
fn not_an_envelope_is_refused() {
    let dir = Dir::new();
    let sealed = dir.seal(b"some data", SMALL);
    for bytes in [&b""[..], b"KMSENV", b"plain text, not encrypted at all"] {
        let r = dir.open(bytes);
        assert!(matches!(r, Err(EnvelopeError::NotEnvelope)), "{r:?}");
    }
    for (pos, value) in [(0, b'k'), (6, 1)] {
        let mut t = sealed.clone();
        t[pos] = value;
        let r = dir.open(&t);
        assert!(matches!(r, Err(EnvelopeError::NotEnvelope)), "{r:?}");
    }
    for version in [0, 2, 255] {
        let mut t = sealed.clone();
        t[7] = version;
        let r = dir.open(&t);
        assert!(
            matches!(r, Err(EnvelopeError::Version(v)) if v == version),
            "{r:?}"
        );
    }
}

/// Progress callbacks report the running plaintext total once per chunk, on both sides: rising
/// by one chunk at a time and ending at the file size (0 for an empty file).
#[test]
fn progress_reports_running_totals() {
    let dir = Dir::new();
    for len in [0, CHUNK, 5 * CHUNK + 7] {
        let src = dir.file("plain", &Gen::bytes(9, len));
        let (sealed, out) = (dir.path("sealed"), dir.path("out"));
        let expected: Vec<u64> = (1..=chunks_for(len, CHUNK))
            .map(|i| (i * CHUNK).min(len) as u64)
            .collect();
        let mut seen = Vec::new();
        encrypt_file(&src, &sealed, &KEY, SMALL, &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen, expected, "encrypt, {len} bytes");
        seen.clear();
        decrypt_file(&sealed, &out, &KEY, &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen, expected, "decrypt, {len} bytes");
    }
}

/// A reader that returns a few bytes at a time and `Interrupted` every third call.
struct Dribble<R> {
    inner: R,
    calls: usize,
}

impl<R: Read> Read for Dribble<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(1 + self.calls % 7);
        self.inner.read(&mut buf[..n])
    }
}

/// Short reads and `Interrupted` are not taken for the end of the input (the end is how the
/// final chunk is recognised, so a mistake here would cut files).
#[test]
fn short_reads_and_interrupts_are_not_end_of_input() {
    let dir = Dir::new();
    let plain = Gen::bytes(10, 3 * CHUNK + 9);
    let src = dir.file("plain", &plain);
    let mut sealed = Vec::new();
    let reader = Dribble {
        inner: File::open(&src).unwrap(),
        calls: 0,
    };
    let n = envelope::encrypt(reader, &mut sealed, &KEY, WRAPPED, SMALL, &mut |_| {}).unwrap();
    assert_eq!(n, plain.len() as u64);

    let sealed_path = dir.file("sealed", &sealed);
    let mut reader = Dribble {
        inner: File::open(&sealed_path).unwrap(),
        calls: 0,
    };
    let header = Header::read(&mut reader).unwrap();
    let mut out = Vec::new();
    envelope::decrypt(&header, reader, &mut out, &KEY, &mut |_| {}).unwrap();
    assert_eq!(out, plain);
}

/// GCM nonces never repeat under a key (NIST SP 800-38D, required through SecNumCloud's RGS B1
/// rules): even under the same data key, each encryption draws a fresh nonce prefix and so
/// derives a fresh key; two encryptions of one file share no ciphertext.
#[test]
fn same_data_key_twice_gives_unrelated_files() {
    let dir = Dir::new();
    let plain = Gen::bytes(11, 2 * CHUNK + 3);
    let a = dir.seal(&plain, SMALL);
    let b = dir.seal(&plain, SMALL);
    let prefix = HEADER_LEN - 7..HEADER_LEN;
    assert_eq!(a[..prefix.start], b[..prefix.start]);
    assert_ne!(a[prefix.clone()], b[prefix]);
    // Unrelated bytes agree about once in 256.
    let same = a[HEADER_LEN..]
        .iter()
        .zip(&b[HEADER_LEN..])
        .filter(|(x, y)| x == y)
        .count();
    assert!(same < a.len() / 64, "{same} equal bytes");
}

/// Encryption refuses parameters the format cannot carry, before writing anything; the limits
/// themselves work.
#[test]
fn encrypt_checks_its_parameters() {
    const MAX_CHUNK: u32 = 16 * 1024 * 1024;
    for (chunk, wrapped_len) in [
        (1023, 10),
        (MAX_CHUNK + 1, 10),
        (0, 10),
        (SMALL, 0),
        (SMALL, 65537),
    ] {
        let mut out = Vec::new();
        let wrapped = vec![1; wrapped_len];
        let err =
            envelope::encrypt(&b"x"[..], &mut out, &KEY, &wrapped, chunk, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Io(ref e) if e.kind() == io::ErrorKind::InvalidInput),
            "chunk {chunk}, wrapped key {wrapped_len} bytes: {err}"
        );
        assert!(out.is_empty());
    }
    for (chunk, wrapped_len) in [(SMALL, 1), (MAX_CHUNK, 65536)] {
        let wrapped = vec![7; wrapped_len];
        let mut sealed = Vec::new();
        envelope::encrypt(
            &b"hello"[..],
            &mut sealed,
            &KEY,
            &wrapped,
            chunk,
            &mut |_| {},
        )
        .unwrap();
        let mut input = &sealed[..];
        let header = Header::read(&mut input).unwrap();
        assert_eq!((header.chunk_size, &header.wrapped_key), (chunk, &wrapped));
        let mut out = Vec::new();
        envelope::decrypt(&header, input, &mut out, &KEY, &mut |_| {}).unwrap();
        assert_eq!(out, b"hello");
    }
}

/// `Header::read` parses at the edge (chunk size, wrapped key length) and refuses out-of-range
/// fields before allocating for them; it consumes exactly the header.
#[test]
fn header_read_checks_fields_and_stops_at_the_header() {
    let header = |chunk: u32, wrapped_len: u32, rest: &[u8]| {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&chunk.to_be_bytes());
        v.extend_from_slice(&wrapped_len.to_be_bytes());
        v.extend_from_slice(rest);
        v
    };
    let bad = [
        header(1023, 3, &[0; 10]),
        header(16 * 1024 * 1024 + 1, 3, &[0; 10]),
        header(u32::MAX, 3, &[0; 10]),
        header(SMALL, 0, &[0; 10]),
        header(SMALL, 65537, &[0; 10]),
        header(SMALL, u32::MAX, &[0; 10]),
        header(SMALL, 3, &[0; 9]),
        MAGIC.iter().chain(&[0, 0, 4]).copied().collect(),
    ];
    for b in bad {
        let r = Header::read(&mut &b[..]);
        assert!(matches!(r, Err(EnvelopeError::Header(_))), "{b:?}: {r:?}");
    }
    let bytes = header(SMALL, 3, b"abc1234567REST");
    let mut input = &bytes[..];
    let h = Header::read(&mut input).unwrap();
    assert_eq!((&h.wrapped_key[..], h.chunk_size), (&b"abc"[..], SMALL));
    assert_eq!(input, b"REST");
}

/// The format is exactly the one `docs/envelope-format.md` specifies: the document's test
/// vectors, computed from the document by an independent implementation, decrypt to the stated
/// plaintexts, and the document shows the same vectors as this test.
#[test]
fn decrypts_the_documented_test_vectors() {
    let doc = include_str!("../../docs/envelope-format.md");
    for line in VECTOR.iter().chain([&VECTOR_EMPTY]) {
        assert!(doc.contains(line), "the document lacks {line}");
    }
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let blob = unhex(&VECTOR.concat());
    let header = Header::read(&mut &blob[..]).unwrap();
    assert_eq!(
        (&header.wrapped_key[..], header.chunk_size),
        (&b"example wrapped key"[..], 1024)
    );
    let dir = Dir::new();
    let expected: Vec<u8> = (0..1030).map(|i| (i % 251) as u8).collect();
    assert_eq!(dir.open_with(&blob, &key).unwrap(), expected);
    assert_eq!(dir.open_with(&unhex(VECTOR_EMPTY), &key).unwrap(), b"");
}
