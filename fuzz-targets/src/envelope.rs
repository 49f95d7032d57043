//! Target `envelope`: an envelope file read with `Header::read`, then decrypted with
//! `envelope::decrypt` under a fixed data key (the KMS only unwraps the data key; everything
//! after that runs without a server, so the whole reader is fuzzed).
//!
//! Asserts:
//! - `Header::read` says `NotEnvelope` exactly when the input does not start with `KMSENV\0`,
//!   consumes exactly the header (16 bytes, the wrapped key, 7 bytes of nonce prefix), and
//!   returns the wrapped key and chunk size written in it;
//! - `decrypt` never panics, and every byte it writes, even before an error, is a prefix of
//!   [`crate::pattern`], the only plaintext the seeds sealed under [`DATA_KEY`]: no
//!   unauthenticated or wrong plaintext ever reaches the output; on `Ok(n)` it wrote exactly
//!   `n` bytes, and progress reports end at what was written.

use kms_client::envelope::{self, EnvelopeError, Header, MAGIC};

/// The data key of every seed (public test value).
pub const DATA_KEY: [u8; 32] = [0x3c; 32];

/// Encrypts `pattern(len)` under [`DATA_KEY`]. Not reproducible byte for byte: `encrypt` draws
/// a random nonce prefix, as it must.
pub fn seed(len: usize, wrapped_key: &[u8], chunk_size: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let plain = crate::pattern(len);
    match envelope::encrypt(
        &plain[..],
        &mut out,
        &DATA_KEY,
        wrapped_key,
        chunk_size,
        &mut |_| {},
    ) {
        Ok(n) => assert_eq!(n, len as u64),
        Err(e) => panic!("encrypting a seed failed: {e}"),
    }
    out
}

pub fn run(data: &[u8]) -> bool {
    let mut input = data;
    let header = match Header::read(&mut input) {
        Ok(h) => h,
        Err(e) => {
            let not_ours = data.len() < 8 || data[..7] != MAGIC[..7];
            assert_eq!(matches!(e, EnvelopeError::NotEnvelope), not_ours, "{e}");
            return false;
        }
    };
    let consumed = data.len() - input.len();
    assert_eq!(consumed, 16 + header.wrapped_key.len() + 7, "header length");
    assert_eq!(&data[..8], &MAGIC[..]);
    assert_eq!(header.wrapped_key, &data[16..16 + header.wrapped_key.len()]);
    assert_eq!(header.chunk_size.to_be_bytes(), data[8..12]);

    let mut out = Vec::new();
    let mut reported = 0u64;
    let result = envelope::decrypt(&header, input, &mut out, &DATA_KEY, &mut |n| {
        assert!(n >= reported, "progress went backwards");
        reported = n;
    });
    assert!(
        out[..] == crate::pattern(out.len())[..],
        "decrypt wrote bytes that were never sealed"
    );
    assert_eq!(
        reported,
        out.len() as u64,
        "progress does not end at what was written"
    );
    match result {
        Ok(n) => {
            assert_eq!(n, out.len() as u64);
            true
        }
        Err(EnvelopeError::Io(e)) => panic!("I/O error from in-memory buffers: {e}"),
        Err(_) => false,
    }
}
