//! Target `ciphertext`: `kms_core::ciphertext::{parse_header, open}` with a fixed key.
//!
//! Asserts:
//! - `parse_header` accepts exactly the inputs of at least [`OVERHEAD`] bytes with format byte 1
//!   and a non-zero version, and reads key id and version from their bytes;
//! - `open` never panics, fails with `Malformed` exactly when `parse_header` does, and when it
//!   succeeds the plaintext is [`crate::pattern`] of the right length (the only plaintext the
//!   seeds sealed under [`MATERIAL`]): never a wrong plaintext;
//! - a fixed sealed message with the input XORed over it (cyclically) opens if and only if the
//!   XOR left every byte as it was, and then to the original message.

use kms_core::Secret32;
use kms_core::ciphertext::{self, CiphertextError, EncryptionContext, FORMAT_V1, KeyId, OVERHEAD};

/// The key version material of every seed (public test value).
pub const MATERIAL: [u8; 32] = [0x5a; 32];
/// The key id of the fixed message.
pub const KEY_ID: KeyId = KeyId([0xa5; 16]);
/// The message the XOR mode seals.
const MESSAGE: &[u8] = b"a fixed message for the ciphertext fuzz target";

/// The encryption context every seed was sealed with.
pub fn context() -> EncryptionContext {
    match EncryptionContext::new([("tenant".to_string(), "fuzz".to_string())]) {
        Ok(c) => c,
        Err(e) => panic!("the fixed context is within the limits: {e}"),
    }
}

pub fn material() -> Secret32 {
    Secret32::from_bytes(MATERIAL)
}

/// Seals `pattern(len)` under the fixed material and context, with a caller-chosen salt so
/// the seeds are reproducible byte for byte.
pub fn seed(version: u32, len: usize, salt: [u8; 32]) -> Vec<u8> {
    ciphertext::seal_with_salt(
        &material(),
        KEY_ID,
        version,
        &context(),
        &crate::pattern(len),
        salt,
    )
}

pub fn run(data: &[u8]) -> bool {
    let material = material();
    let context = context();

    let header = ciphertext::parse_header(data);
    let version = data
        .get(17..21)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    let well_formed = data.len() >= OVERHEAD && data[0] == FORMAT_V1 && version != Some(0);
    assert_eq!(
        header.is_ok(),
        well_formed,
        "parse_header on {} bytes",
        data.len()
    );
    if let Ok(h) = &header {
        assert_eq!(&h.key_id.0[..], &data[1..17]);
        assert_eq!(Some(h.version), version);
    }

    let accepted = match ciphertext::open(&material, data, &context) {
        Ok(plain) => {
            assert!(
                header.is_ok(),
                "opened a ciphertext whose header is malformed"
            );
            assert_eq!(plain.len() + OVERHEAD, data.len());
            assert!(
                plain[..] == crate::pattern(plain.len())[..],
                "opened to a plaintext that was never sealed"
            );
            true
        }
        Err(CiphertextError::Malformed(_)) => {
            assert!(
                header.is_err(),
                "Malformed from open, but the header parses"
            );
            false
        }
        Err(CiphertextError::Authentication) => {
            assert!(
                header.is_ok(),
                "Authentication error for a malformed header"
            );
            false
        }
        Err(e) => panic!("open gave an error it never gives: {e:?}"),
    };

    // XOR mode: the input as a change to a known ciphertext.
    let sealed = ciphertext::seal_with_salt(&material, KEY_ID, 1, &context, MESSAGE, [7; 32]);
    let mut changed = sealed.clone();
    for (i, b) in data.iter().enumerate() {
        changed[i % sealed.len()] ^= b;
    }
    match ciphertext::open(&material, &changed, &context) {
        Ok(plain) => {
            assert!(changed == sealed, "a changed ciphertext opened");
            assert_eq!(&plain[..], MESSAGE);
        }
        Err(e) => assert!(changed != sealed, "the unchanged ciphertext failed: {e}"),
    }

    accepted
}
