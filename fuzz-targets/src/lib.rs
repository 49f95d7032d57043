//! The bodies of the fuzz targets in `fuzz/`, one module per parser that meets untrusted bytes.
//!
//! Each `run(data)` feeds `data` to the parser and panics if a property fails: not only "no
//! panic inside the parser" but what the parser promises (a ciphertext or envelope file never
//! opens to a plaintext that was not sealed; a parsed share or commitment set re-encodes to its
//! input; a policy set decides as its rules say; a verified audit log resumes to its own head;
//! an accepted backup file re-encodes to itself; an import blob never unwraps to a material
//! that was not wrapped, and an accepted recipient has at least 3072 bits).
//! It returns whether the input was accepted, so the corpus replay can also check that the
//! valid seeds still pass.
//!
//! The same bodies run in three places: `cargo fuzz run <target>` (fuzz/fuzz_targets/*.rs),
//! the stable replay of the committed corpus (`tests/replay.rs`, part of `cargo test`), and the
//! seed generator (`tests/replay.rs`, `regenerate_seed_corpus`, ignored). See
//! `docs/fuzzing.md`.
//!
//! Keys here are fixed, public test values: never use them for anything else.

#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod ciphertext;
pub mod envelope;
pub mod policy;
pub mod shares;
pub mod wrap;

/// A target's body: runs the input, panics if a property fails, returns whether it was accepted.
pub type Body = fn(&[u8]) -> bool;

/// Every target: its name (the `fuzz/` binary and the `fuzz/corpus/` folder) and its body.
pub const TARGETS: [(&str, Body); 7] = [
    ("ciphertext", ciphertext::run),
    ("shares", shares::run),
    ("policy", policy::run),
    ("envelope", envelope::run),
    ("audit", audit::run),
    ("backup", backup::run),
    ("wrap", wrap::run),
];

/// The plaintext every seed of the ciphertext and envelope corpora seals: `pattern(n)` for
/// its length `n`. Anything that opens under the fixed keys must be a prefix of this, since
/// nothing else was ever sealed under them.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// Whether `text` holds a run of at least `n` hex digits: a secret (share value, key) would.
fn has_hex_run(text: &str, n: usize) -> bool {
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= n {
            return true;
        }
    }
    false
}
