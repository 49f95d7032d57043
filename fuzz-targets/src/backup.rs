//! Target `backup`: a backup file (`kms_core::backup`, docs/backup-format.md) read by
//! `read_all` and by `verify`.
//!
//! Asserts:
//! - `read_all` and `verify` agree: both accept or both refuse, with the same header and
//!   checksum;
//! - an accepted file re-encodes, header and records through `Encoder`, to exactly its bytes
//!   (one encoding per backup, so the checksum names one content);
//! - the header's record count is the number of records returned.

use kms_core::backup::{self, Encoder, Header, Record};

pub fn run(data: &[u8]) -> bool {
    let all = backup::read_all(data, |_| {});
    let verified = backup::verify(data, |_| {});
    let (v, (vh, vsum)) = match (all, verified) {
        (Ok(v), Ok(h)) => (v, h),
        (Err(_), Err(_)) => return false,
        (a, b) => panic!(
            "read_all and verify disagree: {:?} / {:?}",
            a.map(|v| v.header),
            b.map(|h| h.0)
        ),
    };
    assert_eq!(v.header, vh);
    assert_eq!(v.checksum, vsum);
    assert_eq!(v.header.records, v.records.len() as u64);
    assert_eq!(
        encode(&v.header, &v.records),
        data,
        "an accepted file re-encodes to itself"
    );
    true
}

/// A backup file of `records` (a seed, or the re-encoding of an accepted input).
pub fn encode(header: &Header, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = Encoder::start(header, &mut out).expect("header encodes");
    for r in records {
        enc.record(&r.key, r.version, &r.value, &mut out)
            .expect("record encodes");
    }
    enc.finish(&mut out).expect("file ends");
    out
}
