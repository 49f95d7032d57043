//! Property tests of the envelope file format: the header written by `encrypt` reads back,
//! any file decrypts to its plaintext, and any changed byte or cut is refused without a
//! single wrong byte written.
//!
//! 32 cases per property; raise with
//! `PROPTEST_CASES=1000 cargo test -p kms-client --test proptest_envelope`.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_client::envelope::{self, Header};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(32);
    ProptestConfig::with_cases(cases)
}

const KEY: [u8; 32] = [0x11; 32];

fn seal(plaintext: &[u8], wrapped_key: &[u8], chunk: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let n = envelope::encrypt(plaintext, &mut out, &KEY, wrapped_key, chunk, &mut |_| {}).unwrap();
    assert_eq!(n, plaintext.len() as u64);
    out
}

/// Decrypts `file`; returns the result and every byte written, even on error.
fn open(file: &[u8]) -> (Result<u64, envelope::EnvelopeError>, Vec<u8>) {
    let mut input = file;
    let mut out = Vec::new();
    let result = Header::read(&mut input)
        .and_then(|h| envelope::decrypt(&h, input, &mut out, &KEY, &mut |_| {}));
    (result, out)
}

proptest! {
    #![proptest_config(config())]

    /// The header `encrypt` writes is read back (wrapped key, chunk size, exactly its bytes
    /// consumed) and the file decrypts to its plaintext, across chunk boundaries.
    #[test]
    fn header_and_body_round_trip(
        plaintext in prop::collection::vec(any::<u8>(), 0..6000),
        wrapped_key in prop::collection::vec(any::<u8>(), 1..300),
        chunk in 1024u32..=2048,
    ) {
        let file = seal(&plaintext, &wrapped_key, chunk);
        let mut input = &file[..];
        let header = Header::read(&mut input).unwrap();
        prop_assert_eq!(&header.wrapped_key, &wrapped_key);
        prop_assert_eq!(header.chunk_size, chunk);
        prop_assert_eq!(file.len() - input.len(), 16 + wrapped_key.len() + 7);
        let mut out = Vec::new();
        let n = envelope::decrypt(&header, input, &mut out, &KEY, &mut |_| {}).unwrap();
        prop_assert_eq!(n, plaintext.len() as u64);
        prop_assert_eq!(out, plaintext);
    }

    /// RecommandationModeChiff (authenticated encryption, header bound): any single changed
    /// byte, any cut and any appended byte is refused, and what was written before the error
    /// is a prefix of the plaintext (authenticated chunks only).
    #[test]
    fn any_change_cut_or_append_is_refused(
        plaintext in prop::collection::vec(any::<u8>(), 0..4000),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
        cut in any::<prop::sample::Index>(),
        extra in any::<u8>(),
    ) {
        let file = seal(&plaintext, b"wrapped", 1024);

        let mut changed = file.clone();
        changed[at.index(file.len())] ^= flip;
        let (result, out) = open(&changed);
        prop_assert!(result.is_err());
        prop_assert!(plaintext.starts_with(&out));

        let (result, out) = open(&file[..cut.index(file.len())]);
        prop_assert!(result.is_err());
        prop_assert!(plaintext.starts_with(&out));

        let mut longer = file.clone();
        longer.push(extra);
        let (result, out) = open(&longer);
        prop_assert!(result.is_err());
        prop_assert!(plaintext.starts_with(&out));
    }
}
