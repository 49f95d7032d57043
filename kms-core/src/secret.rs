//! Types for secret bytes: zeroized on drop, never printed, compared in constant time.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes (a key, a root secret, a share value).
///
/// Guarantees: the bytes are wiped when the value is dropped; `Debug` never shows them;
/// the only way to read them is [`Secret32::expose`], so every use is greppable.
/// The bytes live in one heap allocation for the value's whole life: moving a `Secret32` moves
/// a pointer, so no moved-from copy is left behind on a stack or in an async task's state,
/// where nothing would wipe it (found by tests/tests/memory.rs).
#[derive(Clone)]
pub struct Secret32(Box<[u8; 32]>);

impl Zeroize for Secret32 {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for Secret32 {}

impl Secret32 {
    /// Wraps bytes the caller already owns. The caller should zeroize its own copy; this
    /// function wipes the copy it was passed.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let mut boxed = Box::new([0u8; 32]);
        boxed.copy_from_slice(&bytes);
        bytes.zeroize();
        Self(boxed)
    }

    /// Copies exactly 32 bytes straight to their heap home (no stack copy left behind);
    /// `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut boxed = Box::new([0u8; 32]);
        boxed.copy_from_slice(bytes);
        Some(Self(boxed))
    }

    /// Fresh bytes from the operating system's CSPRNG, written straight to their heap home.
    pub fn random() -> Result<Self, crate::CryptoError> {
        let mut boxed = Box::new([0u8; 32]);
        crate::fill_random(&mut boxed[..])?;
        Ok(Self(boxed))
    }

    /// The secret bytes. Callers must not copy them into non-zeroizing storage.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = Secret32::from_bytes([0xab; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn from_slice_takes_exactly_32_bytes() {
        assert!(Secret32::from_slice(&[7; 31]).is_none());
        assert!(Secret32::from_slice(&[7; 33]).is_none());
        let s = Secret32::from_slice(&[7; 32]).unwrap();
        assert_eq!(s.expose(), &[7; 32]);
    }

    #[test]
    fn ct_eq_compares_content() {
        let a = Secret32::from_bytes([1; 32]);
        assert!(a.ct_eq(&Secret32::from_bytes([1; 32])));
        assert!(!a.ct_eq(&Secret32::from_bytes([2; 32])));
    }
}
