//! TOTP (RFC 6238) second factor: HMAC-SHA-1 (tolerated by RègleHash for HMAC, and what every
//! authenticator app speaks), 6 digits, 30-second steps, ±1 step of clock skew.

use ring::hmac;

use crate::Secret32;

/// Seconds per step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;

/// The code for `secret` at Unix time `now` (RFC 6238 §4, dynamic truncation of RFC 4226 §5.3).
pub fn code_at(secret: &[u8], now: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let counter = (now / STEP).to_be_bytes();
    let tag = hmac::sign(&key, &counter);
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    bin % 10u32.pow(digits)
}

/// Checks a 6-digit `code` at `now` with ±1 step of skew, in constant time over the candidate
/// steps. Returns the matching step (to refuse a replay of the same step), or None.
pub fn verify(secret: &Secret32, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for delta in [-1i64, 0, 1] {
        let t = now.checked_add_signed(delta * STEP as i64)?;
        let expected = format!("{:06}", code_at(secret.expose(), t, DIGITS));
        let equal: bool =
            subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into();
        if equal {
            found = Some(t / STEP);
        }
    }
    found
}

/// The `otpauth://` URI an authenticator app scans, for `account` (the principal).
pub fn otpauth_uri(secret: &Secret32, issuer: &str, account: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        enc(issuer),
        enc(account),
        base32(secret.expose()),
        enc(issuer)
    )
}

/// RFC 4648 base32 without padding (what otpauth URIs carry).
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B test vectors (SHA-1, 8 digits).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code_at(secret, t, 8), code, "t = {t}");
        }
    }

    #[test]
    fn verify_accepts_skew_and_refuses_others() {
        let s = Secret32::from_bytes([3; 32]);
        let now = 1_700_000_000;
        let code = |t| format!("{:06}", code_at(s.expose(), t, 6));
        assert_eq!(verify(&s, &code(now), now), Some(now / STEP));
        assert!(verify(&s, &code(now - STEP), now).is_some());
        assert!(verify(&s, &code(now + STEP), now).is_some());
        assert!(verify(&s, &code(now - 3 * STEP), now).is_none());
        assert!(verify(&s, "12345", now).is_none());
        assert!(verify(&s, "abcdef", now).is_none());
    }

    #[test]
    fn base32_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let uri = otpauth_uri(&Secret32::from_bytes([0; 32]), "KMS", "spiffe://x/y");
        assert!(
            uri.starts_with("otpauth://totp/KMS:spiffe%3A%2F%2Fx%2Fy?secret=AAAA"),
            "{uri}"
        );
    }
}
