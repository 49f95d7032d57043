//! Feldman-verifiable t-of-n splitting (vsss-rs, P-256 scalars) of a random root secret: `verify`/`combine` accept only shares matching the commitments, typos in share text are caught by a checksum, share values are zeroized on drop and never printed or put in errors.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use p256::elliptic_curve::Group;
use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::group::GroupEncoding;
use p256::{CompressedPoint, FieldBytes, ProjectivePoint, Scalar};
use vsss_rs::{
    DefaultShare, FeldmanVerifierSet, IdentifierPrimeField, ReadableShareSet, ShareVerifierGroup,
    ValueGroup, ValuePrimeField,
};
use zeroize::{Zeroize, Zeroizing};

use crate::{CryptoError, Secret32};

/// Most shares one split may produce; also the largest threshold.
pub const MAX_SHARES: u8 = 32;

/// A vsss-rs share: identifier and value both in the P-256 scalar field.
type FieldShare = DefaultShare<IdentifierPrimeField<Scalar>, ValuePrimeField<Scalar>>;
/// A vsss-rs Feldman verifier: a P-256 point.
type Verifier = ShareVerifierGroup<ProjectivePoint>;

/// Version byte that starts [`Commitments::to_bytes`].
const COMMITMENTS_VERSION: u8 = 1;
/// Bytes of one SEC1 compressed P-256 point.
const POINT_LEN: usize = 33;
/// Bytes before the points: version, set id, count.
const COMMITMENTS_HEADER_LEN: usize = 1 + 4 + 1;

const TEXT_PREFIX: &str = "kms1";
/// `kms1-` + 8 + `-` + 2 + `-` + 64 + `-` + 8.
const TEXT_LEN: usize = 4 + 1 + 8 + 1 + 2 + 1 + 64 + 1 + 8;

/// Why a split, parse, verification or combination failed. Never contains a share value.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// `split` was asked for an impossible n / t.
    #[error("bad sharing parameters: {0}")]
    BadParameters(String),
    /// The share text or the commitment bytes are not in the expected format.
    #[error("{0}")]
    Malformed(&'static str),
    /// The share text is well formed but its checksum does not match: a typo.
    #[error(
        "{} has a typo: its checksum does not match; re-type it",
        share_label(*.index_claimed)
    )]
    Checksum {
        /// The index as typed, if it is a plausible one (1..=32).
        index_claimed: Option<u8>,
    },
    /// The share does not match the commitments: another share set, or an altered value.
    #[error(
        "share {index} does not match this share set's commitments \
         (it belongs to another set or its value was altered)"
    )]
    NotVerified {
        /// The share's index.
        index: u8,
    },
    /// Fewer distinct shares than the threshold.
    #[error("not enough shares: have {have}, need {need}")]
    NotEnough {
        /// Distinct shares given.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// Two of the given shares have the same index.
    #[error("share {index} was given more than once")]
    Duplicate {
        /// The repeated index.
        index: u8,
    },
    /// The operating system's random number generator failed.
    #[error(transparent)]
    Random(#[from] CryptoError),
    /// A broken invariant of this module or of vsss-rs; not caused by the input.
    #[error("internal error in secret sharing: {0}")]
    Internal(&'static str),
}

fn share_label(index: Option<u8>) -> String {
    match index {
        Some(i) => format!("share {i}"),
        None => "a share".to_owned(),
    }
}

/// Identifies one generation of shares (random, 4 bytes, chosen at split time). Public.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShareSetId(pub [u8; 4]);

impl fmt::Display for ShareSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Public Feldman commitments (verifiers) of one share set. Safe to store in clear.
///
/// Holds the set id and `threshold` points `G·a_0, …, G·a_{t-1}` (the polynomial's
/// coefficients times the standard P-256 generator); the generator itself is never read from
/// outside, so hostile bytes cannot substitute one.
#[derive(Clone, PartialEq, Eq)]
pub struct Commitments {
    set_id: ShareSetId,
    /// Never empty, at most [`MAX_SHARES`] points, none the identity.
    points: Vec<ProjectivePoint>,
}

impl Commitments {
    /// Stable encoding: version byte `1`, the 4 set-id bytes, the count `t` (one byte), then
    /// `t` SEC1 compressed points of 33 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMITMENTS_HEADER_LEN + POINT_LEN * self.points.len());
        out.push(COMMITMENTS_VERSION);
        out.extend_from_slice(&self.set_id.0);
        out.push(self.threshold());
        for p in &self.points {
            out.extend_from_slice(p.to_bytes().as_slice());
        }
        out
    }

    /// Strict inverse of [`Commitments::to_bytes`]: the exact length, a count in 1..=32, and
    /// only valid non-identity curve points are accepted.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ShareError> {
        let bad = ShareError::Malformed;
        let (&version, rest) = b.split_first().ok_or(bad("malformed commitments: empty"))?;
        if version != COMMITMENTS_VERSION {
            return Err(bad("malformed commitments: unknown version"));
        }
        let (set_id, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(bad("malformed commitments: truncated header"))?;
        let (&count, points) = rest
            .split_first()
            .ok_or(bad("malformed commitments: truncated header"))?;
        if count == 0 || count > MAX_SHARES {
            return Err(bad("malformed commitments: count must be between 1 and 32"));
        }
        if points.len() != POINT_LEN * usize::from(count) {
            return Err(bad(
                "malformed commitments: length does not match the count",
            ));
        }
        let points = points
            .chunks_exact(POINT_LEN)
            .map(|chunk| {
                let repr = CompressedPoint::try_from(chunk)
                    .map_err(|_| ShareError::Internal("point chunk is not 33 bytes"))?;
                let point = Option::<ProjectivePoint>::from(ProjectivePoint::from_bytes(&repr))
                    .ok_or(bad("malformed commitments: not a valid P-256 point"))?;
                if bool::from(point.is_identity()) {
                    return Err(bad("malformed commitments: identity point"));
                }
                // Only the compressed form `to_bytes` writes (tag 2 or 3): the decoder also
                // takes SEC1's 33-byte compact form (tag 5), a second encoding of the point.
                if point.to_bytes() != repr {
                    return Err(bad("malformed commitments: not a compressed point"));
                }
                Ok(point)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            set_id: ShareSetId(*set_id),
            points,
        })
    }

    /// The number of shares needed to recover the secret.
    pub fn threshold(&self) -> u8 {
        // `points.len()` is in 1..=32 by construction (split and from_bytes), so it fits.
        u8::try_from(self.points.len()).unwrap_or(u8::MAX)
    }

    /// The share set these commitments belong to.
    pub fn set_id(&self) -> ShareSetId {
        self.set_id
    }

    /// The verifier set in vsss-rs's layout: the generator first, then the commitments.
    fn verifier_set(&self) -> Vec<Verifier> {
        std::iter::once(ProjectivePoint::GENERATOR)
            .chain(self.points.iter().copied())
            .map(ValueGroup)
            .collect()
    }
}

impl fmt::Debug for Commitments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commitments")
            .field("set_id", &format_args!("{}", self.set_id))
            .field("threshold", &self.points.len())
            .finish()
    }
}

/// One officer's share. Debug shows only set id and index, never the value. Value zeroized on drop.
///
/// Text format: `kms1-<set id: 8 hex>-<index: 2 digits>-<value: 64 hex>-<check: 8 hex>`, where
/// `check` is the first 4 bytes of SHA-256 over the lowercase ASCII text before the last `-`.
#[derive(Clone)]
pub struct Share {
    set_id: ShareSetId,
    /// In 1..=32.
    index: u8,
    /// Big-endian canonical nonzero P-256 scalar.
    value: Secret32,
}

impl Share {
    /// The share's x-coordinate, 1..=n.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The share set this share belongs to.
    pub fn set_id(&self) -> ShareSetId {
        self.set_id
    }

    /// The text an officer keeps and types back: see the module documentation.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(TEXT_LEN));
        push_body(&mut text, self.set_id, self.index, self.value.expose());
        let check = checksum(&text);
        text.push('-');
        push_hex(&mut text, &check);
        text
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("set_id", &format_args!("{}", self.set_id))
            .field("index", &self.index)
            .field("value", &format_args!("<redacted>"))
            .finish()
    }
}

/// Writes `kms1-<set id>-<index>-<value>` into `out`, which must have room for [`TEXT_LEN`]
/// bytes so that no copy of the value is left behind by a reallocation.
fn push_body(out: &mut String, set_id: ShareSetId, index: u8, value: &[u8; 32]) {
    out.push_str(TEXT_PREFIX);
    out.push('-');
    push_hex(out, &set_id.0);
    out.push('-');
    // Writing to a String cannot fail.
    let _ = write!(out, "{index:02}");
    out.push('-');
    push_hex(out, value);
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// First 4 bytes of SHA-256 over `body`.
fn checksum(body: &str) -> [u8; 4] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let mut out = [0u8; 4];
    out.copy_from_slice(&digest.as_ref()[..4]);
    out
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl FromStr for Share {
    type Err = ShareError;

    /// Parses the text format. Accepts surrounding whitespace and uppercase letters; rejects
    /// everything else. A wrong checksum gives [`ShareError::Checksum`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = ShareError::Malformed;
        let trimmed = s.trim();
        if !trimmed.is_ascii() {
            return Err(bad("malformed share: contains characters other than ASCII"));
        }
        let text = Zeroizing::new(trimmed.to_ascii_lowercase());
        let fields: Vec<&str> = text.split('-').collect();
        let [prefix, set_id, index, value, check] = fields[..] else {
            return Err(bad("malformed share: expected 5 fields separated by '-'"));
        };
        if prefix != TEXT_PREFIX {
            return Err(bad("malformed share: must start with 'kms1-'"));
        }
        if set_id.len() != 8 || !is_lower_hex(set_id) {
            return Err(bad(
                "malformed share: the share set id must be 8 hex digits",
            ));
        }
        if index.len() != 2 || !index.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("malformed share: the index must be 2 decimal digits"));
        }
        if value.len() != 64 || !is_lower_hex(value) {
            return Err(bad("malformed share: the value must be 64 hex digits"));
        }
        if check.len() != 8 || !is_lower_hex(check) {
            return Err(bad("malformed share: the checksum must be 8 hex digits"));
        }
        let index: u8 = index
            .parse()
            .map_err(|_| bad("malformed share: the index must be 2 decimal digits"))?;
        let plausible_index = (1..=MAX_SHARES).contains(&index).then_some(index);

        let mut claimed = [0u8; 4];
        hex::decode_to_slice(check, &mut claimed)
            .map_err(|_| bad("malformed share: the checksum must be 8 hex digits"))?;
        let body_len = text.len() - check.len() - 1;
        if checksum(&text[..body_len]) != claimed {
            return Err(ShareError::Checksum {
                index_claimed: plausible_index,
            });
        }

        let index = plausible_index.ok_or(bad("malformed share: the index must be 01 to 32"))?;
        let mut id = [0u8; 4];
        hex::decode_to_slice(set_id, &mut id)
            .map_err(|_| bad("malformed share: the share set id must be 8 hex digits"))?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(value, &mut bytes[..])
            .map_err(|_| bad("malformed share: the value must be 64 hex digits"))?;
        let mut scalar = scalar_from_bytes(&bytes)
            .ok_or(bad("malformed share: the value is not a valid share value"))?;
        scalar.zeroize();
        Ok(Share {
            set_id: ShareSetId(id),
            index,
            value: Secret32::from_bytes(*bytes),
        })
    }
}

/// The canonical nonzero scalar with these big-endian bytes, if there is one.
fn scalar_from_bytes(bytes: &[u8; 32]) -> Option<Scalar> {
    let mut repr = FieldBytes::from(*bytes);
    let scalar = Option::<Scalar>::from(Scalar::from_repr(repr));
    repr.zeroize();
    scalar.filter(|s| !bool::from(s.is_zero()))
}

/// The big-endian bytes of a scalar, as a secret.
fn scalar_to_secret(scalar: &Scalar) -> Secret32 {
    let mut repr = scalar.to_repr();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(repr.as_slice());
    repr.zeroize();
    let secret = Secret32::from_bytes(bytes);
    bytes.zeroize();
    secret
}

/// A share in vsss-rs's representation. The caller must zeroize it after use (vsss-rs shares
/// are `Copy`, so they are not wiped on drop).
fn to_field_share(share: &Share) -> Result<FieldShare, ShareError> {
    let value = scalar_from_bytes(share.value.expose())
        .ok_or(ShareError::Internal("a share holds a non-canonical value"))?;
    Ok(DefaultShare {
        identifier: IdentifierPrimeField(Scalar::from(u64::from(share.index))),
        value: IdentifierPrimeField(value),
    })
}

/// The OS CSPRNG (through ring) in the infallible shape vsss-rs requires. A failure is
/// recorded instead of panicking; whoever used it must check `failed` and discard the output.
struct OsRandom {
    failed: bool,
}

impl rand::TryRng for OsRandom {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        if crate::fill_random(dst).is_err() {
            self.failed = true;
            dst.fill(0);
        }
        Ok(())
    }
}

impl rand::TryCryptoRng for OsRandom {}

/// A uniformly random nonzero scalar (rejection sampling on OS randomness).
fn random_nonzero_scalar() -> Result<Scalar, ShareError> {
    // A 32-byte draw is rejected with probability about 2^-32, so 64 attempts never all fail
    // unless the RNG is broken.
    for _ in 0..64 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        crate::fill_random(&mut bytes[..])?;
        if let Some(s) = scalar_from_bytes(&bytes) {
            return Ok(s);
        }
    }
    Err(ShareError::Internal(
        "the random number generator keeps producing invalid scalars",
    ))
}

/// Splits a fresh random nonzero root secret into n shares, any t of which recover it.
/// Bounds: 1 <= t <= n <= 32, and t >= 2 unless n == 1.
///
/// Randomness comes from the OS CSPRNG; its failure is an error, never a panic. Every returned
/// share has been verified against the returned commitments. The arithmetic is vsss-rs's,
/// except for 1-of-1, which vsss-rs refuses (threshold < 2): the polynomial is then the constant
/// secret, so the single share's value is the secret and the commitment is `G·secret` (still
/// checked with vsss-rs's Feldman verifier).
pub fn split(n: u8, t: u8) -> Result<(Secret32, Commitments, ShareSetId, Vec<Share>), ShareError> {
    if n == 0 || n > MAX_SHARES || t == 0 || t > n || (t < 2 && n != 1) {
        return Err(ShareError::BadParameters(format!(
            "need 1 <= t <= n <= {MAX_SHARES}, and t >= 2 unless n = 1 (got n = {n}, t = {t})"
        )));
    }
    let mut set_id = [0u8; 4];
    crate::fill_random(&mut set_id)?;
    let set_id = ShareSetId(set_id);

    let mut secret = IdentifierPrimeField(random_nonzero_scalar()?);
    let root = scalar_to_secret(&secret.0);

    let (mut field_shares, verifiers): (Vec<FieldShare>, Vec<Verifier>) = if t == 1 {
        // 1-of-1, which vsss-rs refuses: the constant polynomial `secret`, see the module docs.
        let share = DefaultShare {
            identifier: IdentifierPrimeField(Scalar::ONE),
            value: secret,
        };
        let verifiers = vec![
            ValueGroup(ProjectivePoint::GENERATOR),
            ValueGroup(ProjectivePoint::GENERATOR * secret.0),
        ];
        (vec![share], verifiers)
    } else {
        let mut rng = OsRandom { failed: false };
        let result = vsss_rs::feldman::split_secret::<FieldShare, Verifier>(
            usize::from(t),
            usize::from(n),
            &secret,
            None,
            &mut rng,
        );
        let (mut shares, verifiers) = match result {
            Ok(ok) => ok,
            Err(_) => {
                secret.zeroize();
                return Err(ShareError::Internal("vsss-rs refused to split"));
            }
        };
        if rng.failed {
            secret.zeroize();
            shares.zeroize();
            return Err(ShareError::Random(CryptoError));
        }
        (shares, verifiers)
    };
    secret.zeroize();

    let converted = convert_split(set_id, n, t, &field_shares, &verifiers);
    field_shares.zeroize();
    let (commitments, shares) = converted?;

    // Self-check: every share verifies and the commitment to the secret is G·secret.
    for share in &shares {
        verify(share, &commitments)
            .map_err(|_| ShareError::Internal("a freshly split share does not verify"))?;
    }
    let mut s = scalar_from_bytes(root.expose())
        .ok_or(ShareError::Internal("the root secret is not a scalar"))?;
    let ok = commitments.points.first() == Some(&(ProjectivePoint::GENERATOR * s));
    s.zeroize();
    if !ok {
        return Err(ShareError::Internal(
            "the commitments do not commit to the secret",
        ));
    }
    Ok((root, commitments, set_id, shares))
}

/// Turns vsss-rs's output into our types, checking its shape.
fn convert_split(
    set_id: ShareSetId,
    n: u8,
    t: u8,
    field_shares: &[FieldShare],
    verifiers: &[Verifier],
) -> Result<(Commitments, Vec<Share>), ShareError> {
    // vsss-rs puts the generator first, then one commitment per coefficient.
    let Some((generator, points)) = verifiers.split_first() else {
        return Err(ShareError::Internal("vsss-rs returned no verifiers"));
    };
    if generator.0 != ProjectivePoint::GENERATOR || points.len() != usize::from(t) {
        return Err(ShareError::Internal(
            "vsss-rs returned unexpected verifiers",
        ));
    }
    if points.iter().any(|p| bool::from(p.0.is_identity())) {
        // Only if a coefficient is zero: probability 2^-256.
        return Err(ShareError::Internal("a commitment is the identity point"));
    }
    let commitments = Commitments {
        set_id,
        points: points.iter().map(|p| p.0).collect(),
    };
    if field_shares.len() != usize::from(n) {
        return Err(ShareError::Internal(
            "vsss-rs returned the wrong number of shares",
        ));
    }
    let mut shares = Vec::with_capacity(field_shares.len());
    for (fs, index) in field_shares.iter().zip(1..=n) {
        // vsss-rs's default participant ids are 1, 2, 3, … in order.
        if fs.identifier.0 != Scalar::from(u64::from(index)) {
            return Err(ShareError::Internal(
                "vsss-rs returned unexpected identifiers",
            ));
        }
        if bool::from(fs.value.0.is_zero()) {
            // Probability 2^-256; such a share could not be typed back in.
            return Err(ShareError::Internal("a share value is zero"));
        }
        shares.push(Share {
            set_id,
            index,
            value: scalar_to_secret(&fs.value.0),
        });
    }
    Ok((commitments, shares))
}

/// Checks one share against the commitments (Feldman). Ok(()) only if it is a genuine share of this set.
pub fn verify(share: &Share, commitments: &Commitments) -> Result<(), ShareError> {
    let not_verified = ShareError::NotVerified { index: share.index };
    if share.set_id != commitments.set_id || share.index == 0 || share.index > MAX_SHARES {
        return Err(not_verified);
    }
    let mut field_share = to_field_share(share)?;
    let result = commitments.verifier_set().verify_share(&field_share);
    field_share.zeroize();
    result.map_err(|_| not_verified)
}

/// Combines >= t verified shares (distinct indexes) into the root secret.
///
/// Every share is verified first; duplicates give [`ShareError::Duplicate`], too few distinct
/// shares [`ShareError::NotEnough`].
pub fn combine(shares: &[Share], commitments: &Commitments) -> Result<Secret32, ShareError> {
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.index == a.index) {
            return Err(ShareError::Duplicate { index: a.index });
        }
    }
    for share in shares {
        verify(share, commitments)?;
    }
    let need = usize::from(commitments.threshold());
    if shares.len() < need {
        return Err(ShareError::NotEnough {
            have: shares.len(),
            need,
        });
    }

    let mut secret = if let [only] = shares {
        // Threshold 1 (vsss-rs combines at least 2): the constant polynomial, whose value at
        // any point is the secret; `only` was verified against `G·secret` above.
        to_field_share(only)?.value
    } else {
        let mut field_shares = Vec::with_capacity(shares.len());
        let mut converted = Ok(());
        for share in shares {
            match to_field_share(share) {
                Ok(fs) => field_shares.push(fs),
                Err(e) => {
                    converted = Err(e);
                    break;
                }
            }
        }
        let combined = converted.and_then(|()| {
            field_shares
                .combine()
                .map_err(|_| ShareError::Internal("vsss-rs could not combine the shares"))
        });
        field_shares.zeroize();
        combined?
    };

    let matches = commitments.points.first() == Some(&(ProjectivePoint::GENERATOR * secret.0));
    let nonzero = !bool::from(secret.0.is_zero());
    let root = scalar_to_secret(&secret.0);
    secret.zeroize();
    if !(matches && nonzero) {
        return Err(ShareError::Internal(
            "the combined secret does not match the commitments",
        ));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hex_of(share: &Share) -> String {
        hex::encode(share.value.expose())
    }

    /// The text of a share with this value, with a correct checksum.
    fn text_with(set_id: &str, index: &str, value: &str) -> String {
        let body = format!("kms1-{set_id}-{index}-{value}");
        let check = hex::encode(checksum(&body));
        format!("{body}-{check}")
    }

    fn pick(shares: &[Share], indexes: &[u8]) -> Vec<Share> {
        indexes
            .iter()
            .map(|&i| shares.iter().find(|s| s.index() == i).unwrap().clone())
            .collect()
    }

    #[test]
    fn split_3_of_5_any_3_recover_the_secret() {
        let (root, commitments, set_id, shares) = split(5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        assert_eq!(commitments.threshold(), 3);
        assert_eq!(commitments.set_id(), set_id);
        for (share, index) in shares.iter().zip(1..) {
            assert_eq!(share.index(), index);
            assert_eq!(share.set_id(), set_id);
            verify(share, &commitments).unwrap();
        }
        for set in [&[1, 3, 5][..], &[2, 4, 5], &[5, 1, 2], &[1, 2, 3, 4, 5]] {
            let got = combine(&pick(&shares, set), &commitments).unwrap();
            assert!(got.ct_eq(&root), "shares {set:?} gave another secret");
        }
        assert!(!root.ct_eq(&Secret32::from_bytes([0; 32])));
    }

    #[test]
    fn two_shares_of_3_of_5_are_not_enough() {
        let (_, commitments, _, shares) = split(5, 3).unwrap();
        let err = combine(&pick(&shares, &[2, 4]), &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotEnough { have: 2, need: 3 }),
            "{err:?}"
        );
        let err = combine(&[], &commitments).unwrap_err();
        assert!(matches!(err, ShareError::NotEnough { have: 0, need: 3 }));
    }

    #[test]
    fn duplicate_shares_are_refused() {
        let (_, commitments, _, shares) = split(5, 3).unwrap();
        let err = combine(&pick(&shares, &[1, 2, 2]), &commitments).unwrap_err();
        assert!(matches!(err, ShareError::Duplicate { index: 2 }), "{err:?}");
    }

    #[test]
    fn text_round_trip() {
        let (root, commitments, set_id, shares) = split(3, 2).unwrap();
        let mut parsed = Vec::new();
        for share in &shares {
            let text = share.to_text();
            assert_eq!(text.len(), TEXT_LEN);
            assert!(text.starts_with(&format!("kms1-{set_id}-0{}-", share.index())));
            let back: Share = text.parse().unwrap();
            assert_eq!(back.index(), share.index());
            assert_eq!(back.set_id(), share.set_id());
            assert!(back.value.ct_eq(&share.value));
            verify(&back, &commitments).unwrap();
            parsed.push(back);
        }
        assert!(combine(&parsed[1..], &commitments).unwrap().ct_eq(&root));
    }

    #[test]
    fn text_accepts_whitespace_and_uppercase() {
        let (_, _, _, shares) = split(2, 2).unwrap();
        let text = format!("  \t{}\n", shares[0].to_text().to_uppercase());
        let back: Share = text.parse().unwrap();
        assert!(back.value.ct_eq(&shares[0].value));
        assert_eq!(back.index(), 1);
    }

    #[test]
    fn one_changed_character_is_a_checksum_error() {
        let (_, _, _, shares) = split(5, 3).unwrap();
        let text = shares[2].to_text();
        // Change one hex digit of the value (the value starts after "kms1-xxxxxxxx-nn-").
        let pos = 5 + 8 + 1 + 2 + 1 + 10;
        let mut typo = text.as_bytes().to_vec();
        typo[pos] = if typo[pos] == b'7' { b'8' } else { b'7' };
        let typo = String::from_utf8(typo).unwrap();
        let err = typo.parse::<Share>().unwrap_err();
        assert!(
            matches!(
                err,
                ShareError::Checksum {
                    index_claimed: Some(3)
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("share 3 has a typo"), "{message}");
        assert!(!message.contains(&hex_of(&shares[2])[..8]), "{message}");
    }

    #[test]
    fn malformed_texts_are_refused() {
        let (_, _, _, shares) = split(2, 2).unwrap();
        let good = shares[0].to_text();
        let value = hex_of(&shares[0]);
        let set = shares[0].set_id().to_string();
        let cases = [
            String::new(),
            "kms1".to_owned(),
            good.replacen("kms1", "kms2", 1),
            format!("{}-00", good.as_str()),
            good.replace('-', "_"),
            good.replacen('-', "- ", 1),
            format!("{}é", &good[..good.len() - 1]),
            text_with(&set, "00", &value),
            text_with(&set, "33", &value),
            text_with(&set, "1", &value),
            text_with(&set, "+1", &value),
            text_with(&set, "01", &value[1..]),
            text_with(&set, "01", &"0".repeat(64)),
            text_with(&set, "01", &"f".repeat(64)),
            text_with(&set[1..], "01", &value),
            text_with(&set, "01", &format!("{}g", &value[1..])),
        ];
        for case in &cases {
            let err = case.parse::<Share>().unwrap_err();
            assert!(matches!(err, ShareError::Malformed(_)), "{case}: {err:?}");
            assert!(!err.to_string().contains(&value[..8]));
        }
        let err = "kms1-a".parse::<Share>().unwrap_err().to_string();
        assert!(err.contains("expected 5 fields separated by '-'"), "{err}");
    }

    #[test]
    fn altered_value_with_recomputed_checksum_is_not_verified() {
        let (_, commitments, set_id, shares) = split(5, 3).unwrap();
        let value = hex_of(&shares[3]);
        let mut altered = value.into_bytes();
        altered[40] = if altered[40] == b'1' { b'2' } else { b'1' };
        let altered = String::from_utf8(altered).unwrap();
        let forged: Share = text_with(&set_id.to_string(), "04", &altered)
            .parse()
            .unwrap();
        let err = verify(&forged, &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotVerified { index: 4 }),
            "{err:?}"
        );
        let mut set = pick(&shares, &[1, 2]);
        set.push(forged);
        let err = combine(&set, &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotVerified { index: 4 }),
            "{err:?}"
        );
    }

    #[test]
    fn share_from_another_split_is_not_verified() {
        let (_, commitments, _, shares) = split(5, 3).unwrap();
        let (_, _, other_id, other) = split(5, 3).unwrap();
        let err = verify(&other[1], &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotVerified { index: 2 }),
            "{err:?}"
        );

        // A genuine share relabelled with another set id is refused too.
        let moved = Share {
            set_id: other_id,
            ..shares[1].clone()
        };
        let err = verify(&moved, &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotVerified { index: 2 }),
            "{err:?}"
        );

        // Same set id, other polynomial: the Feldman check itself must refuse it.
        let relabelled = Share {
            set_id: commitments.set_id(),
            ..other[1].clone()
        };
        assert_ne!(other_id, commitments.set_id());
        let err = verify(&relabelled, &commitments).unwrap_err();
        assert!(
            matches!(err, ShareError::NotVerified { index: 2 }),
            "{err:?}"
        );

        let mut mixed = pick(&shares, &[1, 3]);
        mixed.push(relabelled);
        assert!(matches!(
            combine(&mixed, &commitments),
            Err(ShareError::NotVerified { index: 2 })
        ));
    }

    #[test]
    fn one_of_one_works() {
        let (root, commitments, _, shares) = split(1, 1).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(commitments.threshold(), 1);
        assert_eq!(shares[0].index(), 1);
        verify(&shares[0], &commitments).unwrap();
        let back: Share = shares[0].to_text().parse().unwrap();
        assert!(combine(&[back], &commitments).unwrap().ct_eq(&root));
        let (_, _, _, other) = split(1, 1).unwrap();
        let relabelled = Share {
            set_id: commitments.set_id(),
            ..other[0].clone()
        };
        assert!(matches!(
            combine(&[relabelled], &commitments),
            Err(ShareError::NotVerified { index: 1 })
        ));
    }

    #[test]
    fn bad_parameters_are_refused() {
        for (n, t) in [(5, 0), (3, 4), (33, 2), (3, 1), (0, 0), (0, 1), (255, 255)] {
            match split(n, t) {
                Err(ShareError::BadParameters(msg)) => {
                    assert!(msg.contains("t >= 2 unless n = 1"), "{msg}")
                }
                other => panic!("n={n} t={t}: {:?}", other.map(|_| ())),
            }
        }
        split(32, 32).unwrap();
        split(2, 2).unwrap();
    }

    #[test]
    fn commitments_round_trip_and_refuse_bad_bytes() {
        let (_, commitments, _, shares) = split(5, 3).unwrap();
        let bytes = commitments.to_bytes();
        assert_eq!(bytes.len(), 6 + 3 * 33);
        let back = Commitments::from_bytes(&bytes).unwrap();
        assert_eq!(back, commitments);
        assert_eq!(back.to_bytes(), bytes);
        verify(&shares[0], &back).unwrap();
        assert_eq!(format!("{back:?}").matches("threshold: 3").count(), 1);

        for len in 0..bytes.len() {
            assert!(Commitments::from_bytes(&bytes[..len]).is_err(), "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Commitments::from_bytes(&longer).is_err());
        let mut wrong_count = bytes.clone();
        wrong_count[5] = 2;
        assert!(Commitments::from_bytes(&wrong_count).is_err());
        let mut zero_count = bytes[..6].to_vec();
        zero_count[5] = 0;
        assert!(Commitments::from_bytes(&zero_count).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(Commitments::from_bytes(&version).is_err());
        let mut identity = bytes.clone();
        identity[6..6 + 33].fill(0);
        assert!(Commitments::from_bytes(&identity).is_err());
        let mut bad_tag = bytes.clone();
        bad_tag[6] = 0x04;
        assert!(Commitments::from_bytes(&bad_tag).is_err());
        // SEC1's compact tag over the same x: a valid point, but not the canonical encoding
        // (found by the `shares` fuzz target).
        let mut compact = bytes.clone();
        compact[6] = 0x05;
        assert!(Commitments::from_bytes(&compact).is_err());
        let mut off_curve = bytes.clone();
        off_curve[6 + 1..6 + 33].fill(0xff);
        assert!(Commitments::from_bytes(&off_curve).is_err());

        // Garbage of every length up to a few points must give an error, not a panic.
        let mut state = 0x1234_5678_u32;
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state.to_le_bytes()[0]
                })
                .collect();
            let _ = Commitments::from_bytes(&garbage);
        }
        let mut huge = vec![1, 0, 0, 0, 0, 255];
        huge.resize(6 + 255 * 33, 2);
        assert!(Commitments::from_bytes(&huge).is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let (root, commitments, set_id, shares) = split(3, 2).unwrap();
        for share in &shares {
            let shown = format!("{share:?}");
            let value = hex_of(share);
            assert!(!shown.contains(&value[..8]), "{shown}");
            assert!(shown.contains(&set_id.to_string()), "{shown}");
            assert!(
                shown.contains(&format!("index: {}", share.index())),
                "{shown}"
            );
        }
        let shown = format!("{root:?} {commitments:?}");
        assert!(!shown.contains(&hex::encode(root.expose())[..8]), "{shown}");
    }

    #[test]
    fn set_id_displays_as_8_lowercase_hex() {
        assert_eq!(ShareSetId([0xab, 0x01, 0xcd, 0xef]).to_string(), "ab01cdef");
    }
}
