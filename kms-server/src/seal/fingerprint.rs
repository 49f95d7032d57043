//! The installation fingerprint: a short public name of one installation's seal configuration,
//! which a server can be pinned to (`[seal] installation`) and an officer can check before
//! handing over a share (`kms-cli operator unseal --expect-installation`).
//!
//! `sha256:` + hex of SHA-256 over, in order:
//! - the label `kms installation fingerprint v1` and a zero byte (domain separation: no other
//!   hash of the KMS covers these bytes with this prefix);
//! - the installation id, the share-set id and the Feldman commitments, the bytes the hex
//!   fields of `core/seal` encode, each preceded by its length (4 bytes, big-endian).
//!
//! It changes when the share set changes (rekey), never with a barrier rotation; it is public
//! (it reveals nothing the clear `core/seal` does not). See docs/installation-pin.md.

use std::fmt;
use std::str::FromStr;

use ring::digest::{Context, SHA256};

/// The domain-separation label hashed first.
const LABEL: &[u8] = b"kms installation fingerprint v1\0";
/// The text prefix naming the hash.
const PREFIX: &str = "sha256:";

/// An installation fingerprint (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a seal configuration, from the bytes its stored hex fields encode.
    pub(crate) fn of(installation_id: &[u8], share_set_id: &[u8], commitments: &[u8]) -> Self {
        let mut ctx = Context::new(&SHA256);
        ctx.update(LABEL);
        for part in [installation_id, share_set_id, commitments] {
            // Lengths are tiny (16, 4, ≤ 1 KiB); the prefix keeps the encoding unambiguous.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            ctx.update(&len.to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// `sha256:` and 64 hex digits (either case), as `kms-cli operator init` prints it.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not an installation fingerprint: expected \"sha256:\" followed by 64 \
                 hex digits, as `kms-cli operator init` and `kms-cli operator status` print it"
            )
        };
        let hex_part = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if hex_part.len() != 64 {
            return Err(bad());
        }
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Self(out))
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [0x11; 16];
    const SET: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
    const COMMITMENTS: &[u8] = b"\x01commitments";

    /// A known vector, computed once outside this code (Python's hashlib over the label, then
    /// each part with its 4-byte big-endian length): a change of the encoding would change
    /// every pinned value in the field, so it must fail here first.
    #[test]
    fn known_vector() {
        let fp = Fingerprint::of(&ID, &SET, COMMITMENTS);
        assert_eq!(
            fp.to_string(),
            "sha256:6d72728a9d2d868531276641c2ee15669235c1145b81fd832a138e356cc1be7f"
        );
    }

    /// Domain separation: the plain SHA-256 of the same bytes without the label differs, and
    /// the length prefixes keep a byte moved from one field to the next from colliding.
    #[test]
    fn domain_separated_and_unambiguous() {
        let fp = Fingerprint::of(&ID, &SET, COMMITMENTS);
        let mut plain = Context::new(&SHA256);
        for part in [&ID[..], &SET[..], COMMITMENTS] {
            plain.update(&(part.len() as u32).to_be_bytes());
            plain.update(part);
        }
        assert_ne!(fp.0.as_slice(), plain.finish().as_ref());
        let mut unlabelled_concat = Context::new(&SHA256);
        unlabelled_concat.update(LABEL);
        unlabelled_concat.update(&ID);
        unlabelled_concat.update(&SET);
        unlabelled_concat.update(COMMITMENTS);
        assert_ne!(fp.0.as_slice(), unlabelled_concat.finish().as_ref());
        // The last byte of the id moved into the share-set id: same concatenation.
        let moved = Fingerprint::of(&ID[..15], &[&[0x11][..], &SET[..]].concat(), COMMITMENTS);
        assert_ne!(fp, moved);
        // Each part counts.
        assert_ne!(fp, Fingerprint::of(&[0x12; 16], &SET, COMMITMENTS));
        assert_ne!(
            fp,
            Fingerprint::of(&ID, &[0xde, 0xad, 0xbe, 0xee], COMMITMENTS)
        );
        assert_ne!(fp, Fingerprint::of(&ID, &SET, b"\x01commitmentt"));
    }

    #[test]
    fn text_round_trip_and_malformed_values() {
        let fp = Fingerprint::of(&ID, &SET, COMMITMENTS);
        let text = fp.to_string();
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256:", "sha256:")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        for bad in [
            "",
            "sha256:",
            &text[7..],
            &text[..text.len() - 1],
            &format!("{text}0"),
            &text.replace("sha256:", "sha1:"),
            &text.replace("sha256:", "SHA256:"),
            &format!("{}g", &text[..text.len() - 1]),
            &format!(" {text}"),
        ] {
            let e = bad.parse::<Fingerprint>().unwrap_err();
            assert!(e.contains("sha256:") && e.contains("64 hex digits"), "{e}");
        }
    }
}
