//! The barrier: the keyring of barrier keys, and the sealing of every stored record.
//!
//! Construction (one for records and for the keyring itself):
//! `sealed = version(1) ‖ term(u32 BE) ‖ salt(32) ‖ AES-256-GCM(k, nonce = 0, aad, plaintext)`
//! with `k = HKDF-SHA256(ikm = barrier key of term, salt, info = purpose)` and
//! `aad = version ‖ term ‖ salt ‖ record path`.
//!
//! Guarantees:
//! - Each message gets its own key, derived from a fresh random 256-bit salt, and each derived
//!   key seals exactly one message; so the fixed nonce never repeats under a key and no barrier
//!   key approaches the 2^32-message bound of random 96-bit GCM nonces (NIST SP 800-38D §8.3).
//! - The record's path and key term are authenticated: a record moved to another path, or
//!   relabelled with another term, fails to open. A single changed byte fails to open.
//!   Opening never returns data that was not sealed for that path.

use std::collections::BTreeMap;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::Zeroizing;

use crate::Secret32;

const FORMAT_V1: u8 = 1;
const SALT_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 4 + SALT_LEN;
const TAG_LEN: usize = 16;
const RECORD_INFO: &[u8] = b"kms barrier record v1";
const KEYRING_INFO: &[u8] = b"kms keyring v1";
const KEYRING_PATH: &[u8] = b"core/keyring";
const ROOT_KEY_SALT: &[u8] = b"kms root key v1";

/// Why a sealed blob could not be opened or made. Deliberately coarse: the caller learns
/// that authentication failed, not why (tamper, wrong path, wrong key look the same).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarrierError {
    /// The blob is too short or has an unknown format version.
    #[error("sealed record is malformed")]
    Malformed,
    /// The record names a barrier-key term the keyring does not hold.
    #[error("sealed record uses unknown barrier term {0}")]
    UnknownTerm(u32),
    /// The AEAD tag did not verify: tampered bytes, wrong path, or wrong key.
    #[error("sealed record failed authentication")]
    Authentication,
    /// The random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
}

/// The key that seals the keyring, derived from the root secret. Memory only.
pub struct RootKey(Secret32);

impl RootKey {
    /// Derives the root key from the root secret with HKDF-SHA256, bound to the installation.
    pub fn derive(root_secret: &Secret32, installation_id: &[u8]) -> Self {
        let mut salt = Vec::with_capacity(ROOT_KEY_SALT.len() + installation_id.len());
        salt.extend_from_slice(ROOT_KEY_SALT);
        salt.extend_from_slice(installation_id);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(root_secret.expose());
        let mut out = [0u8; 32];
        // Invariant: 32 bytes is far below HKDF-SHA256's 255*32-byte output limit.
        #[allow(clippy::expect_used)]
        prk.expand(&[b"kms root key"], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32-byte HKDF output is always valid");
        let key = Secret32::from_bytes(out);
        zeroize::Zeroize::zeroize(&mut out);
        Self(key)
    }
}

impl RootKey {
    /// The key bytes. For audits and tests only.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// One barrier key and when it was created.
#[derive(Clone)]
struct TermKey {
    key: Secret32,
    created_unix: u64,
}

/// The barrier keys by term. The highest term seals new records; every term still opens.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, TermKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active_term", &self.active_term())
            .field("terms", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring with one fresh random key, term 1.
    pub fn generate(now_unix: u64) -> Result<Self, BarrierError> {
        let mut keys = BTreeMap::new();
        keys.insert(
            1,
            TermKey {
                key: Secret32::random().map_err(|_| BarrierError::Random)?,
                created_unix: now_unix,
            },
        );
        Ok(Self { keys })
    }

    /// The term that seals new records.
    pub fn active_term(&self) -> u32 {
        // Invariant: a keyring always holds at least one term (generate and decode ensure it).
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    /// How many terms the keyring holds.
    pub fn term_count(&self) -> usize {
        self.keys.len()
    }

    /// When the active term's key was created (Unix seconds).
    pub fn active_created_unix(&self) -> u64 {
        self.keys
            .values()
            .next_back()
            .map(|k| k.created_unix)
            .unwrap_or(0)
    }

    /// Every barrier key with its term. For audits and tests that check no key reached disk in
    /// clear; greppable like [`Secret32::expose`].
    pub fn expose_keys(&self) -> impl Iterator<Item = (u32, &Secret32)> {
        self.keys.iter().map(|(t, k)| (*t, &k.key))
    }

    /// A key for another purpose (`info` names it), derived with HKDF-SHA256 from the first
    /// term's key, so it stays the same across barrier rotations (e.g. the audit HMAC key,
    /// which must give the same HMAC for a value over the whole life of the log).
    pub fn derive_stable(&self, info: &[u8]) -> Secret32 {
        let mut out = [0u8; 32];
        if let Some(first) = self.keys.values().next() {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kms derived key v1")
                .extract(first.key.expose());
            let info = [info];
            // Invariant: 32 bytes is far below HKDF-SHA256's output limit.
            #[allow(clippy::expect_used)]
            prk.expand(&info, Len32)
                .and_then(|okm| okm.fill(&mut out))
                .expect("32-byte HKDF output is always valid");
        }
        let key = Secret32::from_bytes(out);
        zeroize::Zeroize::zeroize(&mut out);
        key
    }

    /// Adds a fresh key as a new term and makes it active. Returns the new term.
    /// Records sealed under older terms stay readable.
    pub fn rotate(&mut self, now_unix: u64) -> Result<u32, BarrierError> {
        let term = self
            .active_term()
            .checked_add(1)
            .ok_or(BarrierError::Malformed)?;
        let key = Secret32::random().map_err(|_| BarrierError::Random)?;
        self.keys.insert(
            term,
            TermKey {
                key,
                created_unix: now_unix,
            },
        );
        Ok(term)
    }

    /// Seals `plaintext` for storage at `path` under the active term.
    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
        let term = self.active_term();
        let key = self
            .keys
            .get(&term)
            .ok_or(BarrierError::UnknownTerm(term))?;
        seal_with(&key.key, term, RECORD_INFO, path.as_bytes(), plaintext)
    }

    /// Opens a record sealed for `path`. Never returns data sealed for another path or altered.
    pub fn open(&self, path: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, BarrierError> {
        let term = read_term(sealed)?;
        let key = self
            .keys
            .get(&term)
            .ok_or(BarrierError::UnknownTerm(term))?;
        open_with(&key.key, RECORD_INFO, path.as_bytes(), sealed)
    }

    /// The term a sealed record was written under (read from its header, not authenticated
    /// until the record is opened).
    pub fn record_term(sealed: &[u8]) -> Result<u32, BarrierError> {
        read_term(sealed)
    }

    /// Encrypts the whole keyring under the root key, for storage.
    pub fn seal_under(&self, root: &RootKey) -> Result<Vec<u8>, BarrierError> {
        let encoded = self.encode();
        seal_with(&root.0, 0, KEYRING_INFO, KEYRING_PATH, &encoded)
    }

    /// Decrypts a keyring sealed by [`Keyring::seal_under`]. Fails with `Authentication`
    /// when the root key is wrong.
    pub fn open_under(root: &RootKey, sealed: &[u8]) -> Result<Self, BarrierError> {
        let plain = open_with(&root.0, KEYRING_INFO, KEYRING_PATH, sealed)?;
        Self::decode(&plain)
    }

    // Encoding: count(u32) then per term: term(u32) created(u64) key(32), all big-endian.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(4 + self.keys.len() * 44));
        out.extend_from_slice(&(self.keys.len() as u32).to_be_bytes());
        for (term, k) in &self.keys {
            out.extend_from_slice(&term.to_be_bytes());
            out.extend_from_slice(&k.created_unix.to_be_bytes());
            out.extend_from_slice(k.key.expose());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, BarrierError> {
        let (count, mut rest) = split_u32(bytes)?;
        let count = count as usize;
        if count == 0 || rest.len() != count * 44 {
            return Err(BarrierError::Malformed);
        }
        let mut keys = BTreeMap::new();
        for _ in 0..count {
            let (term, r) = split_u32(rest)?;
            let (created, r) = r.split_at(8);
            let (key, r) = r.split_at(32);
            rest = r;
            let mut k = [0u8; 32];
            k.copy_from_slice(key);
            let mut c = [0u8; 8];
            c.copy_from_slice(created);
            keys.insert(
                term,
                TermKey {
                    key: Secret32::from_bytes(k),
                    created_unix: u64::from_be_bytes(c),
                },
            );
            zeroize::Zeroize::zeroize(&mut k);
        }
        if keys.len() != count {
            return Err(BarrierError::Malformed);
        }
        Ok(Self { keys })
    }
}

fn split_u32(b: &[u8]) -> Result<(u32, &[u8]), BarrierError> {
    if b.len() < 4 {
        return Err(BarrierError::Malformed);
    }
    let (head, rest) = b.split_at(4);
    let mut a = [0u8; 4];
    a.copy_from_slice(head);
    Ok((u32::from_be_bytes(a), rest))
}

fn read_term(sealed: &[u8]) -> Result<u32, BarrierError> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return Err(BarrierError::Malformed);
    }
    Ok(split_u32(&sealed[1..])?.0)
}

fn message_key(key: &Secret32, salt: &[u8], info: &[u8]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(key.expose());
    let info = [info];
    // Invariant: AES-256-GCM's 32-byte key length is a valid HKDF-SHA256 output length.
    #[allow(clippy::expect_used)]
    let okm = prk
        .expand(&info, &aead::AES_256_GCM)
        .expect("AES-256 key length is a valid HKDF output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn aad_for(header: &[u8], path: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + path.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(path);
    aad
}

fn seal_with(
    key: &Secret32,
    term: u32,
    info: &[u8],
    path: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, BarrierError> {
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&term.to_be_bytes());
    let mut salt = [0u8; SALT_LEN];
    crate::fill_random(&mut salt).map_err(|_| BarrierError::Random)?;
    out.extend_from_slice(&salt);
    let aad = aad_for(&out, path);
    let mk = message_key(key, &salt, info);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(HEADER_LEN);
    // The derived key seals this one message only, so the all-zero nonce is unique under it.
    mk.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(&aad),
        &mut body,
    )
    .map_err(|_| BarrierError::Authentication)?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn open_with(
    key: &Secret32,
    info: &[u8],
    path: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BarrierError> {
    read_term(sealed)?;
    let (header, body) = sealed.split_at(HEADER_LEN);
    let salt = &header[5..];
    let aad = aad_for(header, path);
    let mk = message_key(key, salt, info);
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = mk
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(&aad),
            &mut buf,
        )
        .map_err(|_| BarrierError::Authentication)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::generate(1_700_000_000).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let k = ring();
        let sealed = k.seal("keys/a", b"hello").unwrap();
        assert_eq!(&k.open("keys/a", &sealed).unwrap()[..], b"hello");
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
    }

    /// RègleBlocSym / authenticated modes: any single changed byte is refused, never wrong data.
    #[test]
    fn every_tampered_byte_is_refused() {
        let k = ring();
        let sealed = k.seal("keys/a", b"some record body").unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            let r = k.open("keys/a", &t);
            assert!(r.is_err(), "byte {i} flipped but record opened");
        }
        assert_eq!(
            k.open("keys/a", &sealed[..sealed.len() - 1]).unwrap_err(),
            BarrierError::Authentication
        );
        assert_eq!(
            k.open("keys/a", &sealed[..10]).unwrap_err(),
            BarrierError::Malformed
        );
    }

    #[test]
    fn record_moved_to_another_path_is_refused() {
        let k = ring();
        let sealed = k.seal("keys/a", b"x").unwrap();
        assert_eq!(
            k.open("keys/b", &sealed).unwrap_err(),
            BarrierError::Authentication
        );
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let k = ring();
        assert_ne!(k.seal("p", b"x").unwrap(), k.seal("p", b"x").unwrap());
    }

    #[test]
    fn rotation_keeps_old_terms_readable() {
        let mut k = ring();
        let old = k.seal("p", b"old").unwrap();
        assert_eq!(k.rotate(1).unwrap(), 2);
        let new = k.seal("p", b"new").unwrap();
        assert_eq!(Keyring::record_term(&old).unwrap(), 1);
        assert_eq!(Keyring::record_term(&new).unwrap(), 2);
        assert_eq!(&k.open("p", &old).unwrap()[..], b"old");
        assert_eq!(&k.open("p", &new).unwrap()[..], b"new");
        // A keyring without term 2 cannot open the new record.
        assert_eq!(
            ring().open("p", &new).unwrap_err(),
            BarrierError::UnknownTerm(2)
        );
    }

    #[test]
    fn keyring_round_trips_under_root_key_and_refuses_wrong_root() {
        let mut k = ring();
        k.rotate(5).unwrap();
        let secret = Secret32::from_bytes([7; 32]);
        let root = RootKey::derive(&secret, b"install-1");
        let blob = k.seal_under(&root).unwrap();
        let back = Keyring::open_under(&root, &blob).unwrap();
        assert_eq!(back.active_term(), 2);
        let rec = k.seal("p", b"v").unwrap();
        assert_eq!(&back.open("p", &rec).unwrap()[..], b"v");

        let wrong = RootKey::derive(&Secret32::from_bytes([8; 32]), b"install-1");
        assert_eq!(
            Keyring::open_under(&wrong, &blob).unwrap_err(),
            BarrierError::Authentication
        );
        let other_install = RootKey::derive(&secret, b"install-2");
        assert!(Keyring::open_under(&other_install, &blob).is_err());
    }

    #[test]
    fn debug_hides_keys() {
        let k = ring();
        let shown = format!(
            "{k:?} {:?}",
            RootKey::derive(&Secret32::from_bytes([9; 32]), b"")
        );
        assert!(
            shown.contains("redacted") || !shown.contains('9'),
            "{shown}"
        );
    }
}
