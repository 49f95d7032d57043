//! Key names and key ids, parsed at the edge so the inside never sees a raw string.

use std::fmt;
use std::str::FromStr;

/// Longest key name, in bytes.
pub const MAX_KEY_NAME: usize = 256;

/// A valid key name: `/`-separated segments of `[a-z0-9._-]`, no empty segment, no `.` or
/// `..` segment, at most [`MAX_KEY_NAME`] bytes. Example: `payments/card-tokens`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

/// Why a key name was refused; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key name: {0}")]
pub struct KeyNameError(String);

impl KeyName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ordering, equality and hashing are those of the name's text, so maps keyed by `KeyName`
/// can be searched (and range-scanned) with a `&str`.
impl std::borrow::Borrow<str> for KeyName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyName {
    type Err = KeyNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| Err(KeyNameError(m.to_string()));
        if s.is_empty() {
            return err("the name is empty");
        }
        if s.len() > MAX_KEY_NAME {
            return Err(KeyNameError(format!(
                "{} bytes, the limit is {MAX_KEY_NAME}",
                s.len()
            )));
        }
        for segment in s.split('/') {
            if segment.is_empty() {
                return err("empty segment (leading, trailing or double '/')");
            }
            if segment == "." || segment == ".." {
                return err("'.' and '..' segments are not allowed");
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
            {
                return Err(KeyNameError(format!(
                    "character {c:?} is not allowed: use a-z, 0-9, '.', '_', '-' and '/' between segments"
                )));
            }
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyName({})", self.0)
    }
}

/// A key's permanent random identifier, carried in every ciphertext. Public.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// A fresh random id.
    pub fn random() -> Result<Self, crate::CryptoError> {
        let mut b = [0u8; 16];
        crate::fill_random(&mut b)?;
        Ok(Self(b))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = hex::decode(s).map_err(|_| KeyNameError("key id is not hex".into()))?;
        let b: [u8; 16] = b
            .try_into()
            .map_err(|_| KeyNameError("key id must be 16 bytes".into()))?;
        Ok(Self(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_path_like_names() {
        for ok in ["a", "payments/card-tokens", "team/app.v2/key_1", "a/b/c-d"] {
            assert_eq!(ok.parse::<KeyName>().unwrap().as_str(), ok);
        }
        assert!("a".repeat(256).parse::<KeyName>().is_ok());
    }

    #[test]
    fn refuses_odd_names() {
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "..", ".", "A", "a b", "a\nb", "a\u{0}b", "é",
            "a\\b", "a:b",
        ] {
            assert!(bad.parse::<KeyName>().is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(257);
        let e = long.parse::<KeyName>().unwrap_err();
        assert!(e.to_string().contains("256"), "{e}");
    }

    #[test]
    fn key_id_round_trips() {
        let id = KeyId::random().unwrap();
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("zz".parse::<KeyId>().is_err());
    }
}
