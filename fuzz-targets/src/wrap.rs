//! Target `wrap`: key distribution (`kms_core::wrap`): `WrappingKey::unwrap` and `check_shape`
//! with a fixed RSA-3072 wrapping key, `RsaRecipient::parse`, `Recipient::age`. The first input
//! byte picks the mode (its value modulo 3), the rest is the input:
//!
//! - [`MODE_UNWRAP`]: the rest as an import blob. `unwrap` never panics; it succeeds only with
//!   [`MATERIAL`] (the only material the seeds wrapped to [`wrapping_key`]): **never a wrong
//!   material**; it fails only with `Malformed`, `DoesNotOpen` or `WrongLength`; `Malformed`
//!   exactly when `check_shape` refuses, which is exactly when the blob is not the 384-byte
//!   RSA part followed by a multiple of 8 bytes, 16 to 1032;
//! - [`MODE_RSA`]: the rest as a recipient public key (PEM or DER). `RsaRecipient::parse` never
//!   panics and refuses only with `Recipient`; an accepted key is PEM or DER (starts with
//!   `-----BEGIN` or a DER SEQUENCE), has at least 3072 bits, and wraps 32 bytes to exactly
//!   its modulus length plus 40 bytes; a wrap to the fixed key's own public key (its DER or
//!   PEM) opens with the fixed key to the material wrapped;
//! - [`MODE_AGE`]: the rest as UTF-8 to `Recipient::age`. Never panics, refuses only with
//!   `Recipient`; an accepted recipient is the input trimmed and lowercased (one text per
//!   recipient: bech32 checksums and padding are checked) and encrypts 32 bytes to an age file.

use std::sync::OnceLock;

use kms_core::wrap::{MIN_RSA_BITS, Recipient, RsaRecipient, WrapError, WrappingKey};

/// The fixed wrapping key, PKCS#8 DER, made once by `openssl genpkey -algorithm RSA -pkeyopt
/// rsa_keygen_bits:3072 -outform DER` (public test value).
pub const WRAPPING_KEY_PKCS8: &[u8] = include_bytes!("../keys/wrap-rsa3072.pk8.der");
/// The key material every valid seed wraps (public test value).
pub const MATERIAL: [u8; 32] = [0xc3; 32];

pub const MODE_UNWRAP: u8 = 0;
pub const MODE_RSA: u8 = 1;
pub const MODE_AGE: u8 = 2;

/// The RSA-OAEP part of a blob wrapped to the fixed key: its modulus length.
const RSA_PART: usize = 384;
/// The most material `unwrap` reads (kms_core::wrap's MAX_MATERIAL), plus the KWP overhead.
const MAX_KWP: usize = 1024 + 8;

/// The fixed wrapping key, parsed once (an RSA key parse per input would dominate the run).
pub fn wrapping_key() -> &'static WrappingKey {
    static KEY: OnceLock<WrappingKey> = OnceLock::new();
    KEY.get_or_init(|| match WrappingKey::from_pkcs8(WRAPPING_KEY_PKCS8) {
        Ok(k) => k,
        Err(e) => panic!("the fixed wrapping key loads: {e}"),
    })
}

/// The fixed key's public half, DER SubjectPublicKeyInfo.
pub fn public_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| match wrapping_key().public_der() {
        Ok(d) => d,
        Err(e) => panic!("the fixed wrapping key's public half encodes: {e}"),
    })
}

/// The fixed key's public half, PEM.
pub fn public_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| match wrapping_key().public_pem() {
        Ok(p) => p,
        Err(e) => panic!("the fixed wrapping key's public half encodes: {e}"),
    })
}

/// An input of the given mode.
pub fn input(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(rest);
    out
}

/// `material` wrapped to the fixed key, as an input of [`MODE_UNWRAP`]. Randomized (a fresh
/// KEK and OAEP seed): each call gives another valid blob.
pub fn seed_unwrap(material: &[u8]) -> Vec<u8> {
    let wrapped = RsaRecipient::from_der(public_der()).and_then(|r| r.wrap(material));
    match wrapped {
        Ok(blob) => input(MODE_UNWRAP, &blob),
        Err(e) => panic!("wrapping to the fixed key: {e}"),
    }
}

pub fn run(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    match mode % 3 {
        MODE_UNWRAP => unwrap(rest),
        MODE_RSA => rsa_recipient(rest),
        _ => age_recipient(rest),
    }
}

fn unwrap(blob: &[u8]) -> bool {
    let key = wrapping_key();
    let well_shaped = blob.len() >= RSA_PART + 16
        && (blob.len() - RSA_PART).is_multiple_of(8)
        && blob.len() - RSA_PART <= MAX_KWP;
    let shape = key.check_shape(blob);
    assert_eq!(
        shape.is_ok(),
        well_shaped,
        "check_shape on {} bytes",
        blob.len()
    );
    match key.unwrap(blob) {
        Ok(material) => {
            assert!(well_shaped, "a blob of the wrong shape opened");
            assert!(
                material.expose() == &MATERIAL,
                "opened to a material that was never wrapped"
            );
            // 32 bytes of material wrap to 40 bytes of KWP.
            assert_eq!(blob.len(), RSA_PART + 40);
            true
        }
        Err(WrapError::Malformed(_)) => {
            assert!(
                shape.is_err(),
                "Malformed from unwrap, but check_shape passes"
            );
            false
        }
        Err(WrapError::DoesNotOpen) => {
            assert!(shape.is_ok(), "DoesNotOpen for a blob of the wrong shape");
            false
        }
        Err(WrapError::WrongLength { got, want }) => {
            assert!(shape.is_ok(), "WrongLength for a blob of the wrong shape");
            assert_eq!(want, 32);
            assert_ne!(got, 32, "WrongLength for 32 bytes");
            // KWP pads to 8 bytes and adds 8: the material fits in what follows the RSA part.
            assert!(
                got + 8 <= blob.len() - RSA_PART,
                "{got} bytes out of a smaller wrap"
            );
            false
        }
        Err(e) => panic!("unwrap gave an error it never gives: {e:?}"),
    }
}

fn rsa_recipient(bytes: &[u8]) -> bool {
    let recipient = match RsaRecipient::parse(bytes) {
        Ok(r) => r,
        Err(WrapError::Recipient(why)) => {
            assert!(!why.is_empty());
            return false;
        }
        Err(e) => panic!("parse gave an error it never gives: {e:?}"),
    };
    let trimmed = bytes.trim_ascii();
    assert!(
        trimmed.starts_with(b"-----BEGIN") || bytes.first() == Some(&0x30),
        "accepted a recipient that is neither PEM nor DER"
    );
    let bits = recipient.bits();
    assert!(bits >= MIN_RSA_BITS, "accepted RSA-{bits}");
    assert_eq!(
        format!("{recipient:?}"),
        format!("RsaRecipient(RSA-{bits})")
    );
    let blob = match recipient.wrap(&MATERIAL) {
        Ok(b) => b,
        Err(e) => panic!("an accepted RSA-{bits} recipient cannot wrap: {e}"),
    };
    assert_eq!(blob.len(), bits.div_ceil(8) + 40, "wrap to RSA-{bits}");
    // The fixed key's own public half round-trips; another key's wrap must not open to
    // anything else.
    let own = trimmed == public_der() || trimmed == public_pem().as_bytes().trim_ascii();
    match wrapping_key().unwrap(&blob) {
        Ok(material) => assert!(
            material.expose() == &MATERIAL,
            "round trip changed the material"
        ),
        Err(e) => assert!(!own, "a wrap to the fixed key's own public key: {e}"),
    }
    true
}

fn age_recipient(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let recipient = match Recipient::age(text) {
        Ok(Recipient::Age(r)) => r,
        Ok(r) => panic!("Recipient::age gave another kind: {r:?}"),
        Err(WrapError::Recipient(why)) => {
            assert!(!why.is_empty());
            return false;
        }
        Err(e) => panic!("Recipient::age gave an error it never gives: {e:?}"),
    };
    let canonical = recipient.to_string();
    assert_eq!(
        canonical,
        text.trim().to_ascii_lowercase(),
        "an age recipient with a second text form"
    );
    match Recipient::Age(recipient).wrap(&MATERIAL) {
        Ok(file) => assert!(
            file.starts_with(b"age-encryption.org/v1\n"),
            "the wrap is not an age file"
        ),
        Err(e) => panic!("an accepted age recipient cannot wrap: {e}"),
    }
    true
}
