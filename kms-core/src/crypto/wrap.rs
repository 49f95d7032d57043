//! Key distribution: wrapping key material to a public key on its way in (bring your own key)
//! and out (export, data keys for a partner) [RègleAcheminementCléCentral-1, RègleInjectionClé].
//!
//! One RSA scheme both ways, the one AWS KMS calls `RSA_AES_KEY_WRAP_SHA_256` and Vault uses
//! for BYOK, so that `openssl` alone can produce and open it:
//!
//! ```text
//! RSA-OAEP(SHA-256, MGF1-SHA-256, no label)(fresh AES-256 key K)  ‖  AES-KWP(K, material)
//! ```
//!
//! The RSA part is exactly the modulus length; AES-KWP is AES key wrap with padding (RFC 5649,
//! NIST SP 800-38F), which authenticates the material. The second recipient kind is an age
//! X25519 recipient (an age file). RSA and key wrap come from AWS-LC (`aws-lc-rs`): ring has
//! neither RSA decryption nor key wrap, and AWS-LC's RSA decryption is constant-time (the
//! pure-Rust `rsa` crate is not: RUSTSEC-2023-0071).

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::Secret32;

/// The smallest RSA modulus accepted, for wrapping keys and recipients alike (ANSSI: ≥ 3072
/// bits after 2030, preferred now) [RègleFactorisation].
pub const MIN_RSA_BITS: usize = 3072;

/// The AES-256 key-encryption key inside the RSA part.
const KEK_LEN: usize = 32;

/// The most material a wrap may carry: our keys are 32 bytes; a little room lets a wrong
/// length be reported as such rather than as a damaged wrap.
const MAX_MATERIAL: usize = 1024;

/// Why a wrap or unwrap failed. No variant ever holds key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrapError {
    /// The recipient public key is unusable (what is wrong with it is said).
    #[error("recipient public key: {0}")]
    Recipient(String),
    /// The wrapped blob has the wrong shape (lengths only; nothing was decrypted).
    #[error("wrapped key material: {0}")]
    Malformed(String),
    /// The blob did not open: wrapped to another key, or altered. Deliberately one error for
    /// a failed RSA-OAEP decryption and a failed AES-KWP integrity check, so that the answer
    /// says nothing about which step failed.
    #[error(
        "the wrapped key material does not open with this import's wrapping key: it was wrapped to another public key, or altered"
    )]
    DoesNotOpen,
    /// The material opened but has the wrong length.
    #[error(
        "the unwrapped key material is {got} bytes; AES-256 key material is exactly {want} bytes"
    )]
    WrongLength { got: usize, want: usize },
    /// The cryptographic library failed (not the caller's fault).
    #[error("key wrapping failed: {0}")]
    Internal(&'static str),
}

/// An RSA key pair that import material is wrapped to. Its private half never leaves the
/// KMS except sealed under the barrier (as PKCS#8, see [`WrappingKey::pkcs8`]).
pub struct WrappingKey {
    key: PrivateDecryptingKey,
}

impl fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappingKey(RSA-{}, private)", self.key.key_size_bits())
    }
}

impl WrappingKey {
    /// A fresh RSA-3072 key pair from the OS CSPRNG.
    pub fn generate() -> Result<Self, WrapError> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa3072)
            .map_err(|_| WrapError::Internal("RSA key generation failed"))?;
        Ok(Self { key })
    }

    /// A key pair stored earlier with [`WrappingKey::pkcs8`].
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, WrapError> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|_| WrapError::Internal("stored wrapping key is not a valid RSA key"))?;
        if key.key_size_bits() < MIN_RSA_BITS {
            return Err(WrapError::Internal("stored wrapping key is too small"));
        }
        Ok(Self { key })
    }

    /// The private key as PKCS#8 DER, wiped on drop. For sealed storage only.
    pub fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        let der = self
            .key
            .as_der()
            .map_err(|_| WrapError::Internal("cannot encode the wrapping key"))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn public_der(&self) -> Result<Vec<u8>, WrapError> {
        let der = self
            .key
            .public_key()
            .as_der()
            .map_err(|_| WrapError::Internal("cannot encode the wrapping public key"))?;
        Ok(der.as_ref().to_vec())
    }

    /// The public key, PEM (`-----BEGIN PUBLIC KEY-----`), as `openssl pkeyutl -pubin` reads it.
    pub fn public_pem(&self) -> Result<String, WrapError> {
        Ok(pem("PUBLIC KEY", &self.public_der()?))
    }

    /// The public half as a recipient (to wrap to this key, e.g. in tests and the CLI).
    pub fn recipient(&self) -> Result<RsaRecipient, WrapError> {
        RsaRecipient::from_der(&self.public_der()?)
    }

    /// Checks the blob's lengths only (nothing is decrypted): the RSA part must be the modulus
    /// length and the AES-KWP part a multiple of 8 bytes, at least 16.
    pub fn check_shape(&self, blob: &[u8]) -> Result<(), WrapError> {
        let n = self.key.key_size_bytes();
        let rest = blob.len().saturating_sub(n);
        if blob.len() < n + 16 || !rest.is_multiple_of(8) || rest > MAX_MATERIAL + 8 {
            return Err(WrapError::Malformed(format!(
                "{} bytes; expected the {n}-byte RSA-OAEP part followed by an AES-KWP part of \
                 a multiple of 8 bytes (40 for 32 bytes of key material)",
                blob.len()
            )));
        }
        Ok(())
    }

    /// Opens `RSA-OAEP(K) ‖ AES-KWP(K, material)` and returns the material, which must be
    /// exactly 32 bytes (AES-256).
    pub fn unwrap(&self, blob: &[u8]) -> Result<Secret32, WrapError> {
        self.check_shape(blob)?;
        let (rsa_part, kwp_part) = blob.split_at(self.key.key_size_bytes());
        let oaep = OaepPrivateDecryptingKey::new(self.key.clone())
            .map_err(|_| WrapError::Internal("RSA-OAEP key setup failed"))?;
        let mut kek = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
        let kek_len = oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, rsa_part, &mut kek, None)
            .map_err(|_| WrapError::DoesNotOpen)?
            .len();
        if kek_len != KEK_LEN {
            return Err(WrapError::DoesNotOpen);
        }
        let kek = AesKek::new(&AES_256, &kek[..KEK_LEN])
            .map_err(|_| WrapError::Internal("AES-KWP key setup failed"))?;
        let mut out = Zeroizing::new(vec![0u8; kwp_part.len()]);
        let len = kek
            .unwrap_with_padding(kwp_part, &mut out)
            .map_err(|_| WrapError::DoesNotOpen)?
            .len();
        Secret32::from_slice(&out[..len]).ok_or(WrapError::WrongLength { got: len, want: 32 })
    }
}

/// An RSA public key (≥ 3072 bits) that material is wrapped to on its way out.
#[derive(Clone)]
pub struct RsaRecipient {
    key: PublicEncryptingKey,
}

impl fmt::Debug for RsaRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaRecipient(RSA-{})", self.key.key_size_bits())
    }
}

impl RsaRecipient {
    /// Reads a public key given as PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey
    /// -pubout` writes it) or as DER SubjectPublicKeyInfo.
    pub fn parse(bytes: &[u8]) -> Result<Self, WrapError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            return Err(WrapError::Recipient(
                "it is empty: give an RSA public key (PEM or DER, `openssl pkey -in KEY -pubout`)"
                    .into(),
            ));
        }
        if trimmed.starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(trimmed)
                .map_err(|_| WrapError::Recipient("PEM that is not text".into()))?;
            Self::from_der(&unpem(text)?)
        } else {
            Self::from_der(bytes)
        }
    }

    /// Reads a DER SubjectPublicKeyInfo RSA public key.
    pub fn from_der(der: &[u8]) -> Result<Self, WrapError> {
        let key = PublicEncryptingKey::from_der(der).map_err(|_| {
            WrapError::Recipient(
                "not an RSA public key in SubjectPublicKeyInfo form: give the output of \
                 `openssl pkey -in KEY -pubout` (PEM or DER)"
                    .into(),
            )
        })?;
        let bits = key.key_size_bits();
        if bits < MIN_RSA_BITS {
            return Err(WrapError::Recipient(format!(
                "RSA-{bits} is too small: use at least RSA-{MIN_RSA_BITS}"
            )));
        }
        check_exponent(der)?;
        Ok(Self { key })
    }

    /// The key's size in bits.
    pub fn bits(&self) -> usize {
        self.key.key_size_bits()
    }

    /// `RSA-OAEP(K) ‖ AES-KWP(K, material)` with a fresh AES-256 key K.
    pub fn wrap(&self, material: &[u8]) -> Result<Vec<u8>, WrapError> {
        let mut kek = Zeroizing::new([0u8; KEK_LEN]);
        crate::fill_random(&mut kek[..]).map_err(|_| WrapError::Internal("no randomness"))?;
        let oaep = OaepPublicEncryptingKey::new(self.key.clone())
            .map_err(|_| WrapError::Internal("RSA-OAEP key setup failed"))?;
        let mut out = vec![0u8; oaep.ciphertext_size()];
        let n = oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, &kek[..], &mut out, None)
            .map_err(|_| WrapError::Internal("RSA-OAEP encryption failed"))?
            .len();
        out.truncate(n);
        let wrapper = AesKek::new(&AES_256, &kek[..])
            .map_err(|_| WrapError::Internal("AES-KWP key setup failed"))?;
        let mut wrapped = vec![0u8; material.len() + 16];
        let w = wrapper
            .wrap_with_padding(material, &mut wrapped)
            .map_err(|_| WrapError::Internal("AES-KWP wrap failed"))?
            .len();
        out.extend_from_slice(&wrapped[..w]);
        Ok(out)
    }
}

/// Refuses a public exponent of 2^16 or less (ANSSI: e > 2^16) [RègleFactorisation]. AWS-LC
/// accepts any odd e ≥ 3 and aws-lc-rs does not expose e, so the SubjectPublicKeyInfo is read
/// again with x509-parser (after AWS-LC accepted it).
fn check_exponent(der: &[u8]) -> Result<(), WrapError> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let bad = || WrapError::Recipient("cannot read the RSA public exponent".into());
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).map_err(|_| bad())?;
    let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
        return Err(bad());
    };
    let e = rsa.exponent;
    let first = e.iter().position(|&b| b != 0).unwrap_or(e.len());
    let significant = &e[first..];
    // More than 3 significant bytes is above 2^16; otherwise compare the value.
    let big = significant.len() > 3
        || significant
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
            > 1 << 16;
    if !big {
        return Err(WrapError::Recipient(
            "the public exponent is 2^16 or less: ANSSI requires e > 2^16 (use the usual 65537)"
                .into(),
        ));
    }
    Ok(())
}

/// Where exported material goes: an RSA public key or an age X25519 recipient.
#[derive(Clone)]
pub enum Recipient {
    Rsa(RsaRecipient),
    Age(Box<age::x25519::Recipient>),
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa(r) => r.fmt(f),
            Self::Age(r) => write!(f, "AgeRecipient({r})"),
        }
    }
}

impl Recipient {
    /// An age X25519 recipient (`age1…`).
    pub fn age(s: &str) -> Result<Self, WrapError> {
        let r = s.trim().parse::<age::x25519::Recipient>().map_err(|e| {
            WrapError::Recipient(format!(
                "not an age X25519 recipient ({e}); it looks like age1… (`age-keygen -y`)"
            ))
        })?;
        Ok(Self::Age(Box::new(r)))
    }

    /// Wraps `material` to this recipient: the RSA scheme, or a binary age file.
    pub fn wrap(&self, material: &[u8]) -> Result<Vec<u8>, WrapError> {
        match self {
            Self::Rsa(r) => r.wrap(material),
            Self::Age(r) => age::encrypt(r.as_ref(), material)
                .map_err(|_| WrapError::Internal("age encryption failed")),
        }
    }
}

/// A fingerprint of imported key material, bound to the key id and version, so that a
/// destroyed imported version can be restored only with the very same material. SHA-256 of a
/// domain label, the id, the version and the material: a preimage would need the 256-bit
/// material itself. Stored in the (sealed) key metadata, never shown.
pub fn fingerprint(key_id: &[u8], version: u32, material: &Secret32) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"kms import fingerprint v1\0");
    ctx.update(&(key_id.len() as u64).to_be_bytes());
    ctx.update(key_id);
    ctx.update(&version.to_be_bytes());
    ctx.update(material.expose());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Where an import token's record is stored: a hash of the token, so that storage (rows,
/// change feeds, backups, error messages naming a path) never holds a usable token.
pub fn token_digest(token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"kms import token v1\0");
    ctx.update(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Constant-time equality of two fingerprints.
pub fn same_fingerprint(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// PEM armour: base64 in 64-character lines between BEGIN/END `label` lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a `PUBLIC KEY` PEM block.
fn unpem(text: &str) -> Result<Vec<u8>, WrapError> {
    let bad = |why: &str| WrapError::Recipient(format!("PEM {why}"));
    let begin = "-----BEGIN PUBLIC KEY-----";
    let end = "-----END PUBLIC KEY-----";
    let start = text.find(begin).ok_or_else(|| {
        if text.contains("-----BEGIN CERTIFICATE-----") {
            bad("holding a certificate, not a public key: extract its key with `openssl x509 -in cert.pem -pubkey -noout > partner.pub.pem`")
        } else if text.contains("PRIVATE KEY-----") {
            bad("holding a PRIVATE key: never hand it out; give its public key, `openssl pkey -in KEY -pubout`")
        } else if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
            bad("holding a PKCS#1 RSA PUBLIC KEY: convert it with `openssl rsa -RSAPublicKey_in -in FILE -pubout`")
        } else {
            bad("without a `-----BEGIN PUBLIC KEY-----` line: give the output of `openssl pkey -in KEY -pubout`")
        }
    })? + begin.len();
    let stop = text[start..]
        .find(end)
        .ok_or_else(|| bad("without its `-----END PUBLIC KEY-----` line"))?
        + start;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("whose body is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(b: u8) -> Secret32 {
        Secret32::from_slice(&[b; 32]).expect("32 bytes")
    }

    #[test]
    fn round_trip_through_pem_and_pkcs8() {
        let wk = WrappingKey::generate().expect("generate");
        let stored = WrappingKey::from_pkcs8(&wk.pkcs8().expect("pkcs8")).expect("reload");
        let r = RsaRecipient::parse(wk.public_pem().expect("pem").as_bytes()).expect("parse");
        assert_eq!(r.bits(), 3072);
        let blob = r.wrap(material(7).expose()).expect("wrap");
        assert_eq!(blob.len(), 384 + 40);
        let back = stored.unwrap(&blob).expect("unwrap");
        assert_eq!(back.expose(), material(7).expose());
    }

    /// Every altered byte, in either part, gives the same opaque error [RègleInjectionClé].
    #[test]
    fn altered_or_misdirected_wraps_do_not_open() {
        let wk = WrappingKey::generate().expect("generate");
        let blob = wk
            .recipient()
            .expect("recipient")
            .wrap(material(1).expose())
            .expect("wrap");
        for i in [0, 100, 383, 384, 400, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert_eq!(
                wk.unwrap(&bad).err(),
                Some(WrapError::DoesNotOpen),
                "byte {i}"
            );
        }
        let other = WrappingKey::generate().expect("generate");
        assert_eq!(other.unwrap(&blob).err(), Some(WrapError::DoesNotOpen));
    }

    #[test]
    fn wrong_shapes_and_lengths_are_named() {
        let wk = WrappingKey::generate().expect("generate");
        for len in [0, 10, 384, 384 + 8, 384 + 41] {
            assert!(
                matches!(wk.unwrap(&vec![0u8; len]), Err(WrapError::Malformed(_))),
                "{len}"
            );
        }
        let r = wk.recipient().expect("recipient");
        for n in [16, 31, 33, 64] {
            let blob = r.wrap(&vec![9u8; n]).expect("wrap");
            assert_eq!(
                wk.unwrap(&blob).err(),
                Some(WrapError::WrongLength { got: n, want: 32 })
            );
        }
    }

    #[test]
    fn small_or_malformed_recipients_are_refused() {
        let small = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("2048");
        let der = small.public_key().as_der().expect("der");
        let e = RsaRecipient::parse(der.as_ref()).expect_err("2048 refused");
        assert!(e.to_string().contains("RSA-2048 is too small"), "{e}");
        assert!(RsaRecipient::parse(b"not a key").is_err());
        let e = RsaRecipient::parse(
            b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
        )
        .expect_err("PKCS#1 PEM");
        assert!(e.to_string().contains("-RSAPublicKey_in"), "{e}");
        let e =
            RsaRecipient::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .expect_err("certificate");
        assert!(e.to_string().contains("openssl x509"), "{e}");
        let e =
            RsaRecipient::parse(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .expect_err("private key");
        assert!(e.to_string().contains("PRIVATE key"), "{e}");
        let e = RsaRecipient::parse(b" \n").expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = RsaRecipient::parse(b"\x30\x03\x02\x01\x01").expect_err("not SPKI");
        assert!(!e.to_string().contains("Invalid"), "no internal names: {e}");
        assert!(Recipient::age("age1nope").is_err());
    }

    /// e = 3 is refused, e = 65537 accepted [RègleFactorisation]. The key with e = 3 is made
    /// by openssl when it is present (AWS-LC generates only 65537).
    #[test]
    fn small_public_exponents_are_refused() {
        let wk = WrappingKey::generate().expect("generate");
        assert!(check_exponent(&wk.public_der().expect("der")).is_ok());
        let dir = std::env::temp_dir().join(format!("kms-e3-{}", std::process::id()));
        let Ok(out) = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:3072",
            ])
            .args(["-pkeyopt", "rsa_keygen_pubexp:3", "-out"])
            .arg(&dir)
            .output()
        else {
            eprintln!("NOTE: openssl not found; e = 3 not tested");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&dir)
            .output()
            .expect("openssl pkey");
        let _ = std::fs::remove_file(&dir);
        let e = RsaRecipient::parse(&public.stdout).expect_err("e = 3 refused");
        assert!(e.to_string().contains("e > 2^16"), "{e}");
    }

    #[test]
    fn age_recipient_round_trip() {
        let id = age::x25519::Identity::generate();
        let r = Recipient::age(&id.to_public().to_string()).expect("recipient");
        let file = r.wrap(material(3).expose()).expect("wrap");
        let back = age::decrypt(&id, &file).expect("decrypt");
        assert_eq!(back, material(3).expose());
    }

    #[test]
    fn fingerprints_bind_id_version_and_material() {
        let f = fingerprint(b"id-1", 1, &material(1));
        assert!(same_fingerprint(&f, &fingerprint(b"id-1", 1, &material(1))));
        assert!(!same_fingerprint(
            &f,
            &fingerprint(b"id-1", 1, &material(2))
        ));
        assert!(!same_fingerprint(
            &f,
            &fingerprint(b"id-2", 1, &material(1))
        ));
        assert!(!same_fingerprint(
            &f,
            &fingerprint(b"id-1", 2, &material(1))
        ));
        assert!(!same_fingerprint(&f, &f[..31]));
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let wk = WrappingKey::generate().expect("generate");
        assert_eq!(format!("{wk:?}"), "WrappingKey(RSA-3072, private)");
    }
}
