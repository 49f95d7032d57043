//! Types for secret bytes: zeroized on drop, never printed, compared in constant time.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes (a key, a root secret, a share value).
///
/// Guarantees: the bytes are wiped when the value is dropped; `Debug` never shows them;
/// the only way to read them is [`Secret32::expose`], so every use is greppable.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps bytes the caller already owns. The caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Fresh bytes from the operating system's CSPRNG.
    pub fn random() -> Result<Self, crate::CryptoError> {
        let mut bytes = [0u8; 32];
        crate::fill_random(&mut bytes)?;
        Ok(Self(bytes))
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
    fn ct_eq_compares_content() {
        let a = Secret32::from_bytes([1; 32]);
        assert!(a.ct_eq(&Secret32::from_bytes([1; 32])));
        assert!(!a.ct_eq(&Secret32::from_bytes([2; 32])));
    }
}
