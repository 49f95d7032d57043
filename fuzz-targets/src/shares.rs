//! Target `shares`: the share text form (`kms1-…`, `Share::from_str`) and
//! `Commitments::from_bytes`, on the same input.
//!
//! Asserts:
//! - a share that parses re-encodes (`to_text`) to its input trimmed and lowercased, and
//!   parses again to the same set id and index;
//! - a share that verifies against the fixed commitments [`COMMITMENTS`] is the genuine share
//!   of that index ([`SHARES`]): Feldman verification admits no other value; combining it with
//!   another genuine share gives [`ROOT`];
//! - neither `Debug` of a share nor any error message shows a share value (no run of 16 hex
//!   digits);
//! - commitments that parse re-encode (`to_bytes`) to exactly the input, with a threshold in
//!   1..=32.

use std::str::FromStr;

use kms_core::shares::{self, Commitments, MAX_SHARES, Share};

/// A 2-of-3 split made once by `shares::split(3, 2)` for this target (public test values).
pub const ROOT: &str = "72888c09b44479c2129aeb813c89e7e9804e9487e37752c73b1f5732a756fc96";
pub const COMMITMENTS: &str = "0166bfe132020311c6d35d72b2ad41fb335c6c6110efe10679897e6c2614d7ec90b34b886e973e02d41154b6c94622f1b5f35b8c16a23453da5a766291bd6aef14e7e567768ca6c6";
pub const SHARES: [&str; 3] = [
    "kms1-66bfe132-01-41c476aac9279e97ea935d1eac576f2c91cb9a17b868e8bc05ca81096c6d6d9b-1bd5bbda",
    "kms1-66bfe132-02-1100614bde0ac36dc28bcebc1c24f66fa3489fa78d5a7eb0d075aae03183dea0-d9bb959c",
    "kms1-66bfe132-03-e03c4bebf2ede8449a8440598bf27db271ac9fe50963b32a8eda9f79f2fd74f6-613d2a34",
];

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| match u8::from_str_radix(&s[i..i + 2], 16) {
            Ok(b) => b,
            Err(e) => panic!("the fixed constants are hex: {e}"),
        })
        .collect()
}

pub fn commitments() -> Commitments {
    match Commitments::from_bytes(&from_hex(COMMITMENTS)) {
        Ok(c) => c,
        Err(e) => panic!("the fixed commitments parse: {e}"),
    }
}

fn genuine(index: u8) -> Share {
    match Share::from_str(SHARES[usize::from(index) - 1]) {
        Ok(s) => s,
        Err(e) => panic!("the fixed shares parse: {e}"),
    }
}

fn assert_no_secret(text: &str) {
    assert!(
        !crate::has_hex_run(text, 16),
        "a message shows a hex run (a share value?): {text:?}"
    );
}

pub fn run(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(text) = std::str::from_utf8(data) {
        match Share::from_str(text) {
            Ok(share) => {
                accepted = true;
                check_share(text, &share);
            }
            Err(e) => assert_no_secret(&e.to_string()),
        }
    }
    match Commitments::from_bytes(data) {
        Ok(c) => {
            accepted = true;
            assert_eq!(
                c.to_bytes(),
                data,
                "commitments do not re-encode to their input"
            );
            assert!((1..=MAX_SHARES).contains(&c.threshold()));
            let _ = format!("{c:?}");
        }
        Err(e) => assert_no_secret(&e.to_string()),
    }
    accepted
}

fn check_share(text: &str, share: &Share) {
    let canonical = share.to_text();
    assert_eq!(
        canonical.as_str(),
        text.trim().to_ascii_lowercase(),
        "a share does not re-encode to its input"
    );
    match Share::from_str(&canonical) {
        Ok(again) => {
            assert_eq!(again.index(), share.index());
            assert_eq!(again.set_id(), share.set_id());
        }
        Err(e) => panic!("a share's own text does not parse: {e}"),
    }
    assert!((1..=MAX_SHARES).contains(&share.index()));
    assert_no_secret(&format!("{share:?}"));

    let commitments = commitments();
    match shares::verify(share, &commitments) {
        Ok(()) => {
            assert!(
                usize::from(share.index()) <= SHARES.len()
                    && canonical.as_str() == SHARES[usize::from(share.index()) - 1],
                "a share that is not the genuine one verified"
            );
        }
        Err(e) => assert_no_secret(&e.to_string()),
    }
    // Combining with a genuine share of another index: the root, or an error, never another
    // secret.
    let other = if share.index() == 1 { 2 } else { 1 };
    match shares::combine(&[share.clone(), genuine(other)], &commitments) {
        Ok(root) => assert_eq!(
            &root.expose()[..],
            &from_hex(ROOT)[..],
            "combined to a wrong root"
        ),
        Err(e) => assert_no_secret(&e.to_string()),
    }
}
