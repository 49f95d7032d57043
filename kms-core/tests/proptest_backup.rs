//! Property tests of the backup file format: any set of records round-trips; any single-byte
//! change, any cut and any appended bytes are refused; arbitrary bytes never panic the reader,
//! and whatever it accepts re-encodes to exactly the bytes it read.
//!
//! 64 cases per property; `PROPTEST_CASES=10000 cargo test -p kms-core --test proptest_backup`
//! for a longer run.

// Tests panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_core::backup::{BackupError, Encoder, Header, MAGIC, Verified, read_all};
use proptest::prelude::*;

mod common;

fn config() -> ProptestConfig {
    common::config(64)
}

/// Distinct keys (any Unicode), versions ≥ 1, values of any bytes (empty included).
fn records() -> impl Strategy<Value = Vec<(String, u64, Vec<u8>)>> {
    prop::collection::btree_map(
        ".{1,40}",
        (1..=u64::MAX, prop::collection::vec(any::<u8>(), 0..200)),
        0..12,
    )
    .prop_map(|m| m.into_iter().map(|(k, (v, val))| (k, v, val)).collect())
}

fn encode(created: u64, version: &str, recs: &[(String, u64, Vec<u8>)]) -> Vec<u8> {
    let header = Header {
        created_unix: created,
        server_version: version.to_string(),
        records: recs.len() as u64,
    };
    let mut out = Vec::new();
    let mut enc = Encoder::start(&header, &mut out).unwrap();
    for (k, v, val) in recs {
        enc.record(k, *v, val, &mut out).unwrap();
    }
    enc.finish(&mut out).unwrap();
    out
}

fn reencode(v: &Verified) -> Vec<u8> {
    let recs: Vec<(String, u64, Vec<u8>)> = v
        .records
        .iter()
        .map(|r| (r.key.clone(), r.version, r.value.clone()))
        .collect();
    encode(v.header.created_unix, &v.header.server_version, &recs)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_records_round_trip(created in any::<u64>(), version in ".{0,20}", recs in records()) {
        let bytes = encode(created, &version, &recs);
        let v = read_all(bytes.as_slice(), |_| {}).unwrap();
        prop_assert_eq!(v.header.created_unix, created);
        prop_assert_eq!(&v.header.server_version, &version);
        let got: Vec<(String, u64, Vec<u8>)> =
            v.records.into_iter().map(|r| (r.key, r.version, r.value)).collect();
        prop_assert_eq!(got, recs);
    }

    #[test]
    fn any_changed_byte_is_refused(
        recs in records(),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let mut bytes = encode(1, "0.1.0", &recs);
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let accepted = read_all(bytes.as_slice(), |_| {}).is_ok();
        prop_assert!(!accepted, "byte {} changed, accepted", i);
    }

    #[test]
    fn any_cut_or_appended_bytes_are_refused(
        recs in records(),
        at in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = encode(1, "0.1.0", &recs);
        let cut = at.index(bytes.len());
        let cut_accepted = read_all(&bytes[..cut], |_| {}).is_ok();
        prop_assert!(!cut_accepted);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(
            read_all(longer.as_slice(), |_| {}).unwrap_err(),
            BackupError::TrailingBytes(bytes.len() as u64)
        );
    }

    /// Arbitrary input (half of it behind a valid magic and version, so the reader gets past
    /// them): never a panic, and an accepted input is exactly the encoding of what was read.
    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..300),
        framed in any::<bool>(),
    ) {
        let mut data = Vec::new();
        if framed {
            data.extend_from_slice(&MAGIC);
            data.extend_from_slice(&1u32.to_be_bytes());
        }
        data.extend_from_slice(&body);
        if let Ok(v) = read_all(data.as_slice(), |_| {}) {
            prop_assert_eq!(reencode(&v), data);
        }
    }
}
