//! The backup file format (v1): a consistent copy of every stored record, as stored.
//!
//! Layout (all integers big-endian; see `docs/backup-format.md`):
//!
//! ```text
//! magic "KMSBKUP\n" (8) ‖ format version u32 = 1 ‖ created (unix seconds) u64
//! ‖ server version: length u16 ‖ UTF-8
//! ‖ record count u64
//! ‖ count × ( key length u32 ‖ key UTF-8 ‖ version u64 ‖ value length u32 ‖ value )
//! ‖ SHA-256 of every byte before it (32)
//! ```
//!
//! Records are in strictly increasing byte order of their keys (the store's order), which the
//! reader checks, so a restore never sees one key twice. The values are copied as the store
//! holds them: barrier-sealed ciphertext, and the public seal record. Nothing here is plaintext
//! key material.
//!
//! The checksum detects damage (a flipped bit, a cut or an extended file), not a deliberate
//! edit: anyone can recompute it. Each sealed value is still authenticated by the barrier (its
//! AEAD binds the record's path) when the restored KMS opens it.

use std::fmt;
use std::io::Read;

use ring::digest::{Context, SHA256};
use subtle::ConstantTimeEq;

/// The first bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"KMSBKUP\n";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest record key accepted (bytes). Store keys are short paths (`keys/<id>/meta`).
pub const MAX_KEY_LEN: usize = 4096;
/// Longest record value accepted (bytes): far above any record the server writes, and low
/// enough that a damaged length field cannot make a reader allocate gigabytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;
/// Longest server version string accepted (bytes).
pub const MAX_SERVER_VERSION_LEN: usize = 256;
/// Length of the trailing checksum.
pub const CHECKSUM_LEN: usize = 32;

/// What the file says about itself, before the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// When the snapshot was taken (unix seconds, UTC).
    pub created_unix: u64,
    /// The version of the server that wrote it (informational).
    pub server_version: String,
    /// How many records follow.
    pub records: u64,
}

/// One stored record: its key, its store version and its value exactly as stored.
///
/// `Debug` shows the value's length only: values are ciphertext, but there is no reason to
/// print them either.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub version: u64,
    pub value: Vec<u8>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key)
            .field("version", &self.version)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Why a backup cannot be written or read. Messages name what is wrong and where (byte
/// offsets count from the start of the file).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a KMS backup file (it does not start with the backup magic bytes)")]
    BadMagic,
    #[error(
        "backup format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("the file is truncated: it ends inside {what} at byte {offset}")]
    Truncated { what: String, offset: u64 },
    #[error("the file is malformed at byte {offset}: {reason}")]
    Malformed { reason: String, offset: u64 },
    #[error("checksum mismatch: the file is damaged or was altered")]
    Checksum,
    #[error("unexpected bytes after the checksum at byte {0}: the file is damaged or was altered")]
    TrailingBytes(u64),
    #[error("cannot read the file: {0}")]
    Io(String),
    /// Only when writing: a record the format cannot hold, or a count that does not match.
    #[error("cannot write the backup: {0}")]
    Unwritable(String),
}

/// Writes a backup into byte buffers, hashing as it goes. The caller sends or stores the bytes
/// appended to `out` by each call, in order.
pub struct Encoder {
    digest: Context,
    expected: u64,
    written: u64,
    last_key: Option<String>,
}

impl Encoder {
    /// Appends the magic and the header to `out`.
    pub fn start(header: &Header, out: &mut Vec<u8>) -> Result<Self, BackupError> {
        let version = header.server_version.as_bytes();
        if version.len() > MAX_SERVER_VERSION_LEN {
            return Err(BackupError::Unwritable(format!(
                "server version is longer than {MAX_SERVER_VERSION_LEN} bytes"
            )));
        }
        let mut enc = Self {
            digest: Context::new(&SHA256),
            expected: header.records,
            written: 0,
            last_key: None,
        };
        let mut buf = Vec::with_capacity(8 + 4 + 8 + 2 + version.len() + 8);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        buf.extend_from_slice(&header.created_unix.to_be_bytes());
        // Checked above: fits in u16.
        buf.extend_from_slice(&(version.len() as u16).to_be_bytes());
        buf.extend_from_slice(version);
        buf.extend_from_slice(&header.records.to_be_bytes());
        enc.emit(&buf, out);
        Ok(enc)
    }

    /// Appends one record. Records must come in strictly increasing key order.
    pub fn record(
        &mut self,
        key: &str,
        version: u64,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BackupError> {
        if self.written >= self.expected {
            return Err(BackupError::Unwritable(format!(
                "more records than the {} announced in the header",
                self.expected
            )));
        }
        if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN || version == 0 {
            return Err(BackupError::Unwritable(format!(
                "record {key:?} (key {} bytes, value {} bytes, version {version}) is outside the format's limits",
                key.len(),
                value.len()
            )));
        }
        if self.last_key.as_deref().is_some_and(|k| k >= key) {
            return Err(BackupError::Unwritable(format!(
                "record {key:?} is not after the previous one in key order"
            )));
        }
        let mut buf = Vec::with_capacity(4 + key.len() + 8 + 4 + value.len());
        // Both lengths are checked above: they fit in u32.
        buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&version.to_be_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
        buf.extend_from_slice(value);
        self.emit(&buf, out);
        self.written += 1;
        self.last_key = Some(key.to_string());
        Ok(())
    }

    /// Appends the checksum; returns it. Fails if fewer records were written than announced.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<[u8; CHECKSUM_LEN], BackupError> {
        if self.written != self.expected {
            return Err(BackupError::Unwritable(format!(
                "{} records written but {} announced in the header",
                self.written, self.expected
            )));
        }
        let sum = checksum(self.digest);
        out.extend_from_slice(&sum);
        Ok(sum)
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.digest.update(bytes);
        out.extend_from_slice(bytes);
    }
}

fn checksum(digest: Context) -> [u8; CHECKSUM_LEN] {
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(digest.finish().as_ref());
    sum
}

/// Reads a backup record by record, hashing as it goes. Nothing read is trustworthy until
/// [`Reader::finish`] returns `Ok`: a restore must read to the end before writing anything.
pub struct Reader<R> {
    inner: R,
    digest: Context,
    offset: u64,
    header: Header,
    read: u64,
    last_key: Option<String>,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the magic, the format version and the header.
    pub fn open(inner: R) -> Result<Self, BackupError> {
        let mut r = Self {
            inner,
            digest: Context::new(&SHA256),
            offset: 0,
            header: Header {
                created_unix: 0,
                server_version: String::new(),
                records: 0,
            },
            read: 0,
            last_key: None,
        };
        let magic = r.bytes(MAGIC.len(), "the magic bytes")?;
        if magic != MAGIC {
            return Err(BackupError::BadMagic);
        }
        let version = r.u32("the format version")?;
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        let created_unix = r.u64("the header")?;
        let at = r.offset;
        let len = usize::from(r.u16("the header")?);
        if len > MAX_SERVER_VERSION_LEN {
            return Err(r.malformed(at, format!("server version length {len} is too long")));
        }
        let server_version = r.text(len, "the header", at)?;
        let records = r.u64("the header")?;
        r.header = Header {
            created_unix,
            server_version,
            records,
        };
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next record, or `None` after the last one the header announced.
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        if self.read == self.header.records {
            return Ok(None);
        }
        let n = self.read + 1;
        let what = format!("record {n} of {}", self.header.records);
        let at = self.offset;
        let key_len = self.u32(&what)? as usize;
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(self.malformed(at, format!("{what}: key length {key_len} is out of range")));
        }
        let key = self.text(key_len, &what, at)?;
        if self.last_key.as_deref().is_some_and(|k| k >= key.as_str()) {
            return Err(self.malformed(
                at,
                format!(
                    "{what}: key {key:?} is not after the previous key (duplicate or out of order)"
                ),
            ));
        }
        let at = self.offset;
        let version = self.u64(&what)?;
        if version == 0 {
            return Err(self.malformed(at, format!("{what}: version 0 is not a stored version")));
        }
        let at = self.offset;
        let value_len = self.u32(&what)? as usize;
        if value_len > MAX_VALUE_LEN {
            return Err(self.malformed(
                at,
                format!("{what}: value length {value_len} exceeds the limit of {MAX_VALUE_LEN}"),
            ));
        }
        let value = self.bytes(value_len, &what)?;
        self.read = n;
        self.last_key = Some(key.clone());
        Ok(Some(Record {
            key,
            version,
            value,
        }))
    }

    /// After the last record: reads the checksum, compares it with the bytes read, and checks
    /// that the file ends there. Returns the checksum.
    pub fn finish(mut self) -> Result<[u8; CHECKSUM_LEN], BackupError> {
        if self.read != self.header.records {
            return Err(BackupError::Unwritable(format!(
                "finish called after {} of {} records",
                self.read, self.header.records
            )));
        }
        let expected = checksum(self.digest.clone());
        let mut stored = [0u8; CHECKSUM_LEN];
        read_exact(&mut self.inner, &mut stored).map_err(|e| match e {
            Short::Eof(got) => BackupError::Truncated {
                what: "the checksum".into(),
                offset: self.offset + got as u64,
            },
            Short::Io(e) => BackupError::Io(e),
        })?;
        if !bool::from(stored.ct_eq(&expected)) {
            return Err(BackupError::Checksum);
        }
        let end = self.offset + CHECKSUM_LEN as u64;
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(0) => return Ok(stored),
                Ok(_) => return Err(BackupError::TrailingBytes(end)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackupError::Io(e.to_string())),
            }
        }
    }

    fn malformed(&self, offset: u64, reason: String) -> BackupError {
        BackupError::Malformed { reason, offset }
    }

    fn bytes(&mut self, len: usize, what: &str) -> Result<Vec<u8>, BackupError> {
        let mut buf = vec![0u8; len];
        read_exact(&mut self.inner, &mut buf).map_err(|e| match e {
            Short::Eof(got) => BackupError::Truncated {
                what: what.to_string(),
                offset: self.offset + got as u64,
            },
            Short::Io(e) => BackupError::Io(e),
        })?;
        self.digest.update(&buf);
        self.offset += len as u64;
        Ok(buf)
    }

    fn text(&mut self, len: usize, what: &str, at: u64) -> Result<String, BackupError> {
        let raw = self.bytes(len, what)?;
        String::from_utf8(raw).map_err(|_| self.malformed(at, format!("{what}: text is not UTF-8")))
    }

    fn u16(&mut self, what: &str) -> Result<u16, BackupError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, BackupError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, BackupError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
}

/// A whole backup, checked: every record is returned only once the checksum and the end of
/// the file have been verified.
#[derive(Debug)]
pub struct Verified {
    pub header: Header,
    pub records: Vec<Record>,
    pub checksum: [u8; CHECKSUM_LEN],
}

/// Reads and verifies a whole backup (magic, version, every record, checksum, end of file).
/// `on_record` is called after each record is read (for progress); the records are kept.
pub fn read_all(input: impl Read, mut on_record: impl FnMut(u64)) -> Result<Verified, BackupError> {
    let mut r = Reader::open(input)?;
    // The count comes from the file: never preallocate from it.
    let mut records = Vec::new();
    while let Some(rec) = r.next_record()? {
        records.push(rec);
        on_record(records.len() as u64);
    }
    let header = r.header().clone();
    let checksum = r.finish()?;
    Ok(Verified {
        header,
        records,
        checksum,
    })
}

/// Verifies a whole backup without keeping its records. Returns the header and checksum.
pub fn verify(
    input: impl Read,
    mut on_record: impl FnMut(u64),
) -> Result<(Header, [u8; CHECKSUM_LEN]), BackupError> {
    let mut r = Reader::open(input)?;
    let mut n = 0u64;
    while r.next_record()?.is_some() {
        n += 1;
        on_record(n);
    }
    let header = r.header().clone();
    Ok((header, r.finish()?))
}

enum Short {
    /// End of input after this many bytes.
    Eof(usize),
    Io(String),
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), Short> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(Short::Eof(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Short::Io(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> (Vec<u8>, Vec<Record>) {
        let records = vec![
            Record {
                key: "core/seal".into(),
                version: 3,
                value: b"{\"public\":true}".to_vec(),
            },
            Record {
                key: "keys/0001/meta".into(),
                version: 1,
                value: vec![0xAA; 100],
            },
            Record {
                key: "keys/0001/v/1".into(),
                version: 7,
                value: Vec::new(),
            },
        ];
        let header = Header {
            created_unix: 1_700_000_000,
            server_version: "0.1.0".into(),
            records: records.len() as u64,
        };
        let mut out = Vec::new();
        let mut enc = Encoder::start(&header, &mut out).unwrap();
        for r in &records {
            enc.record(&r.key, r.version, &r.value, &mut out).unwrap();
        }
        let sum = enc.finish(&mut out).unwrap();
        assert_eq!(&out[out.len() - CHECKSUM_LEN..], &sum);
        (out, records)
    }

    #[test]
    fn round_trip() {
        let (bytes, records) = sample();
        let v = read_all(bytes.as_slice(), |_| {}).unwrap();
        assert_eq!(v.records, records);
        assert_eq!(v.header.server_version, "0.1.0");
        assert_eq!(v.header.created_unix, 1_700_000_000);
        assert_eq!(v.header.records, 3);
        let (h, sum) = verify(bytes.as_slice(), |_| {}).unwrap();
        assert_eq!(h, v.header);
        assert_eq!(sum, v.checksum);
    }

    #[test]
    fn empty_backup_round_trips() {
        let header = Header {
            created_unix: 1,
            server_version: String::new(),
            records: 0,
        };
        let mut out = Vec::new();
        Encoder::start(&header, &mut out)
            .unwrap()
            .finish(&mut out)
            .unwrap();
        assert!(read_all(out.as_slice(), |_| {}).unwrap().records.is_empty());
    }

    /// Every single-byte change anywhere in the file is refused (never read as a valid backup).
    #[test]
    fn every_flipped_byte_is_refused() {
        let (bytes, _) = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                read_all(b.as_slice(), |_| {}).is_err(),
                "flipped byte {i} was accepted"
            );
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let (bytes, _) = sample();
        for len in 0..bytes.len() {
            let e = read_all(&bytes[..len], |_| {}).unwrap_err();
            assert!(
                matches!(e, BackupError::Truncated { .. } | BackupError::BadMagic),
                "cut at {len}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let (bytes, _) = sample();
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(
            read_all(b.as_slice(), |_| {}).unwrap_err(),
            BackupError::BadMagic
        );

        let mut b = bytes.clone();
        b[11] = 2;
        assert_eq!(
            read_all(b.as_slice(), |_| {}).unwrap_err(),
            BackupError::UnsupportedVersion(2)
        );

        // A flipped byte inside a value: only the checksum can tell.
        let mut b = bytes.clone();
        let inside = b.iter().position(|&x| x == 0xAA).unwrap() + 10;
        b[inside] ^= 0xFF;
        assert_eq!(
            read_all(b.as_slice(), |_| {}).unwrap_err(),
            BackupError::Checksum
        );

        let mut b = bytes.clone();
        b.extend_from_slice(b"junk");
        assert_eq!(
            read_all(b.as_slice(), |_| {}).unwrap_err(),
            BackupError::TrailingBytes(bytes.len() as u64)
        );

        let e = read_all(&bytes[..bytes.len() - 1], |_| {}).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let (mut bytes, _) = sample();
        // The first record's key length (after magic, version, time, version string, count).
        let at = 8 + 4 + 8 + 2 + "0.1.0".len() + 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = read_all(bytes.as_slice(), |_| {}).unwrap_err();
        assert!(matches!(e, BackupError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("record 1 of 3"), "{e}");
    }

    #[test]
    fn writer_refuses_what_the_reader_would() {
        let header = Header {
            created_unix: 0,
            server_version: "x".into(),
            records: 2,
        };
        let mut out = Vec::new();
        let mut enc = Encoder::start(&header, &mut out).unwrap();
        enc.record("b", 1, b"", &mut out).unwrap();
        assert!(enc.record("a", 1, b"", &mut out).is_err());
        assert!(enc.record("c", 0, b"", &mut out).is_err());
        // One record short of the header's count.
        assert!(enc.finish(&mut out).is_err());
    }
}
