//! Envelope encryption of files under a KMS data key: streaming, chunked AES-256-GCM (STREAM).
//!
//! The KMS hands out a fresh AES-256 data key per file, in clear and wrapped. [`encrypt`] writes
//! the wrapped key into the file's header and encrypts the file chunk by chunk; to read it back,
//! [`Header::read`] gives the wrapped key to have the KMS unwrap, then [`decrypt`] checks every
//! chunk before writing it out. Everything is synchronous (`std::io::Read`/`Write`; async callers
//! use `tokio::task::spawn_blocking`) and works in constant memory — about two chunks — so files
//! larger than memory work.
//!
//! The byte format is specified in `docs/envelope-format.md`. In short:
//! `header = MAGIC ‖ chunk_size u32 BE ‖ wrapped_key_len u32 BE ‖ wrapped_key ‖ nonce_prefix(7)`,
//! then every chunk is `AES-256-GCM(k, nonce_prefix ‖ counter u32 BE ‖ last_flag, SHA-256(header),
//! plaintext)` with the full 16-byte tag, and `k = HKDF-SHA256(data_key, salt = nonce_prefix,
//! info = "kms envelope v1")`.
//!
//! Guarantees:
//! - Authenticated encryption only, full 128-bit tags, AES-256 (SecNumCloud via RGS B1:
//!   RecommandationModeChiff, RègleCléSym).
//! - No GCM nonce repeats under a key: each file gets its own key derived from the data key and a
//!   random nonce prefix, and within a file the nonce is a chunk counter (at most 2^32 chunks,
//!   refused beyond) plus the final-chunk flag.
//! - [`decrypt`] never outputs a byte it has not authenticated, and returns `Ok` only for the
//!   exact file [`encrypt`] wrote: a changed byte anywhere (header included), reordered,
//!   duplicated or removed chunks, a cut at any point and data appended after the final chunk all
//!   fail. Chunks are written out as they are authenticated, so a failure can come after some
//!   plaintext was written: see [`decrypt`] for what the caller does about it.
//!
//! ```
//! use kms_client::envelope::{self, Header};
//! # fn main() -> Result<(), envelope::EnvelopeError> {
//! // Both come from the KMS in real use: a fresh data key per file, and its wrapped form.
//! let data_key = [7u8; 32];
//! let wrapped_key = b"opaque bytes from the KMS";
//!
//! let mut sealed = Vec::new();
//! let n = envelope::encrypt(
//!     &b"hello"[..], &mut sealed, &data_key, wrapped_key, envelope::DEFAULT_CHUNK, &mut |_| {},
//! )?;
//! assert_eq!(n, 5);
//!
//! let mut input = &sealed[..];
//! let header = Header::read(&mut input)?;
//! assert_eq!(header.wrapped_key, wrapped_key); // ask the KMS to unwrap this
//! let mut plain = Vec::new();
//! envelope::decrypt(&header, input, &mut plain, &data_key, &mut |_| {})?;
//! assert_eq!(plain, b"hello");
//! # Ok(()) }
//! ```

use std::io::{self, Read, Write};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf};
use zeroize::Zeroizing;

/// The first 8 bytes of every envelope file: `KMSENV\0` identifies the format, the last byte is
/// the format version (1).
pub const MAGIC: &[u8; 8] = b"KMSENV\x00\x01";
/// The plaintext chunk size [`encrypt`] callers should use unless they have a reason not to.
pub const DEFAULT_CHUNK: u32 = 64 * 1024;

const MIN_CHUNK: u32 = 1024;
const MAX_CHUNK: u32 = 16 * 1024 * 1024;
const MAX_WRAPPED_KEY: usize = 65536;
const NONCE_PREFIX_LEN: usize = 7;
const TAG_LEN: usize = 16;
/// MAGIC, chunk size, wrapped key length.
const FIXED_LEN: usize = 8 + 4 + 4;
const KDF_INFO: &[u8] = b"kms envelope v1";

/// Why a file could not be encrypted or decrypted.
///
/// `Authentication`, `Truncated` and `TrailingData` all mean "this is not, byte for byte, a file
/// that [`encrypt`] wrote under this data key"; they differ only in the likeliest cause.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The input does not start with `KMSENV\0` (or is shorter than 8 bytes).
    #[error("not a KMS envelope file (bad magic)")]
    NotEnvelope,
    /// The input is an envelope file of a version this code does not read.
    #[error("unsupported envelope format version {0}")]
    Version(u8),
    /// The header is cut short or holds an out-of-range chunk size or wrapped-key length.
    #[error("corrupt envelope header: {0}")]
    Header(&'static str),
    /// Chunk `chunk` (counting from 0) did not authenticate.
    #[error(
        "envelope authentication failed at chunk {chunk}: the file was modified, truncated, reordered, or the wrong key was used"
    )]
    Authentication { chunk: u64 },
    /// The input ended without a final chunk (every chunk read was authentic).
    #[error("envelope is truncated: the final chunk is missing")]
    Truncated,
    /// Bytes follow the final chunk.
    #[error("data after the final chunk")]
    TrailingData,
    /// Reading or writing failed; also invalid arguments to [`encrypt`] (`InvalidInput`), input
    /// too long for the chunk size (`FileTooLarge`) and a failed random number generator.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Parsed header: the wrapped data key and the exact header bytes (authenticated in every chunk).
///
/// Nothing in it is authenticated until [`decrypt`] has opened the first chunk: the wrapped key
/// read here may have been altered, in which case the KMS refuses to unwrap it or the first
/// chunk fails with [`EnvelopeError::Authentication`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The data key as the KMS wrapped it: send it to the KMS to unwrap.
    pub wrapped_key: Vec<u8>,
    /// Plaintext bytes per chunk (every chunk but the final one holds exactly this many).
    pub chunk_size: u32,
    /// The header exactly as read. [`decrypt`] takes the chunk size and nonce prefix from here,
    /// not from the public fields, which a caller could have changed.
    raw: Vec<u8>,
}

impl Header {
    /// Reads and parses the header from the start of an envelope file.
    ///
    /// Consumes exactly the header's bytes and nothing more (no read-ahead), so the same reader
    /// then goes to [`decrypt`].
    ///
    /// Returns:
    /// - `NotEnvelope` if the input is shorter than 8 bytes or does not start with `KMSENV\0`;
    /// - `Version(v)` if it does but the version byte `v` is not 1;
    /// - `Header(..)` if the chunk size is not within 1 KiB..=16 MiB, the wrapped key length not
    ///   within 1..=65536, or the input ends inside the header;
    /// - `Io` if reading fails.
    pub fn read(r: &mut impl Read) -> Result<Header, EnvelopeError> {
        let mut fixed = [0u8; FIXED_LEN];
        if read_full(r, &mut fixed[..8])? < 8 || fixed[..7] != MAGIC[..7] {
            return Err(EnvelopeError::NotEnvelope);
        }
        if fixed[7] != MAGIC[7] {
            return Err(EnvelopeError::Version(fixed[7]));
        }
        if read_full(r, &mut fixed[8..])? < FIXED_LEN - 8 {
            return Err(EnvelopeError::Header("the file ends inside the header"));
        }
        let chunk_size = be_u32(&fixed[8..12]);
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(EnvelopeError::Header(
                "chunk size is not between 1 KiB and 16 MiB",
            ));
        }
        let wrapped_len = be_u32(&fixed[12..16]) as usize;
        if !(1..=MAX_WRAPPED_KEY).contains(&wrapped_len) {
            return Err(EnvelopeError::Header(
                "wrapped key length is not between 1 and 65536 bytes",
            ));
        }
        let mut raw = vec![0u8; FIXED_LEN + wrapped_len + NONCE_PREFIX_LEN];
        raw[..FIXED_LEN].copy_from_slice(&fixed);
        if read_full(r, &mut raw[FIXED_LEN..])? < wrapped_len + NONCE_PREFIX_LEN {
            return Err(EnvelopeError::Header("the file ends inside the header"));
        }
        Ok(Header {
            wrapped_key: raw[FIXED_LEN..FIXED_LEN + wrapped_len].to_vec(),
            chunk_size,
            raw,
        })
    }
}

/// Encrypts all of `input` to `output`; calls progress(bytes_of_plaintext_done) after each chunk.
/// Returns plaintext length.
///
/// `data_key` is the KMS data key in clear, `wrapped_key` its wrapped form (stored in the
/// header, 1..=65536 bytes), `chunk_size` the plaintext bytes per chunk (1 KiB..=16 MiB;
/// [`DEFAULT_CHUNK`] unless there is a reason). Use a fresh data key per file. Reads until
/// `input` ends; `progress` gets the running plaintext total, which ends at the return value.
/// Flushes `output` at the end but does not sync it: a caller writing a file calls
/// `File::sync_all` before relying on it.
///
/// Returns:
/// - `Ok(n)`: all `n` bytes of `input` were encrypted and written;
/// - `Io` with kind `InvalidInput` if `chunk_size` or the wrapped key length is out of range,
///   with kind `FileTooLarge` if the input needs more than 2^32 chunks (4 TiB at 1 KiB chunks,
///   256 TiB at the default), or any error from `input`, `output` or the random number
///   generator. On error, `output` holds a partial file that [`decrypt`] refuses.
pub fn encrypt(
    input: impl Read,
    mut output: impl Write,
    data_key: &[u8; 32],
    wrapped_key: &[u8],
    chunk_size: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return Err(invalid_input("chunk size must be between 1 KiB and 16 MiB"));
    }
    if !(1..=MAX_WRAPPED_KEY).contains(&wrapped_key.len()) {
        return Err(invalid_input(
            "wrapped key must be between 1 and 65536 bytes",
        ));
    }
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    SystemRandom::new()
        .fill(&mut nonce_prefix)
        .map_err(|_| io::Error::other("the operating system's random number generator failed"))?;
    let mut raw = Vec::with_capacity(FIXED_LEN + wrapped_key.len() + NONCE_PREFIX_LEN);
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(&chunk_size.to_be_bytes());
    raw.extend_from_slice(&(wrapped_key.len() as u32).to_be_bytes());
    raw.extend_from_slice(wrapped_key);
    raw.extend_from_slice(&nonce_prefix);
    output.write_all(&raw)?;

    let mut stream = Stream::new(data_key, &raw, nonce_prefix);
    encrypt_chunks(&mut stream, input, output, chunk_size as usize, progress)
}

fn encrypt_chunks(
    stream: &mut Stream,
    mut input: impl Read,
    mut output: impl Write,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    // One chunk and its tag. Each read asks for chunk + 1 bytes: the extra byte, landing at
    // buf[chunk], says whether more input follows, i.e. whether this chunk is the final one.
    let mut buf = Zeroizing::new(vec![0u8; chunk + TAG_LEN]);
    let mut carried = 0; // the look-ahead byte kept at buf[0] from the previous round
    let mut done = 0u64;
    loop {
        let filled = carried + read_full(&mut input, &mut buf[carried..=chunk])?;
        let last = filled <= chunk;
        let len = filled.min(chunk);
        if !last && stream.at_last_counter() {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "input needs more than 2^32 chunks: use a larger chunk size",
            )
            .into());
        }
        let look_ahead = buf[chunk];
        let tag = stream.seal(last, &mut buf[..len])?;
        buf[len..len + TAG_LEN].copy_from_slice(tag.as_ref());
        output.write_all(&buf[..len + TAG_LEN])?;
        done += len as u64;
        progress(done);
        if last {
            break;
        }
        stream.advance();
        buf[0] = look_ahead;
        carried = 1;
    }
    output.flush()?;
    Ok(done)
}

/// Decrypts the body after `header` was read from the same reader. Writes plaintext chunk by
/// chunk (a caller writing to a file should write to a temp file and rename on success).
///
/// Each chunk is authenticated before any of its bytes reach `output`, but the file as a whole
/// (truncation, trailing data) is only known to be good when this returns `Ok`; an error can come
/// after earlier chunks were written. So a caller writing a file writes a temporary file in the
/// destination's directory, and on `Ok` syncs it and renames it over the destination; on error
/// it deletes it:
///
/// ```no_run
/// # use kms_client::envelope::{self, Header};
/// # fn f(src: &std::path::Path, dest: &std::path::Path, key: &[u8; 32]) -> Result<(), Box<dyn std::error::Error>> {
/// let mut input = std::io::BufReader::new(std::fs::File::open(src)?);
/// let header = Header::read(&mut input)?;
/// // ... have the KMS unwrap header.wrapped_key into `key` ...
/// let tmp = dest.with_extension("partial");
/// let mut out = std::fs::File::create_new(&tmp)?;
/// match envelope::decrypt(&header, &mut input, std::io::BufWriter::new(&mut out), key, &mut |_| {}) {
///     Ok(_) => {
///         out.sync_all()?;
///         std::fs::rename(&tmp, dest)?;
///     }
///     Err(e) => {
///         std::fs::remove_file(&tmp)?;
///         return Err(e.into());
///     }
/// }
/// # Ok(()) }
/// ```
///
/// `progress` gets the running plaintext total after each chunk written.
///
/// Returns:
/// - `Ok(n)`: the whole file was authentic and its `n` plaintext bytes were written;
/// - `Authentication { chunk }`: chunk `chunk` did not authenticate (changed bytes, chunks
///   reordered, a cut inside a chunk, a changed header, or the wrong data key: then chunk 0);
/// - `Truncated`: the input ended right after a complete, authentic non-final chunk, right
///   after the header, or less than a tag's length (16 bytes) into a chunk;
/// - `TrailingData`: bytes follow an authentic final chunk of full size. After a shorter final
///   chunk the format cannot tell appended bytes from a changed chunk: that is `Authentication`;
/// - `Io`: reading or writing failed.
pub fn decrypt(
    header: &Header,
    input: impl Read,
    output: impl Write,
    data_key: &[u8; 32],
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let raw = &header.raw;
    let malformed = || EnvelopeError::Header("not a header returned by Header::read");
    let chunk = raw
        .get(8..12)
        .map(be_u32)
        .filter(|c| (MIN_CHUNK..=MAX_CHUNK).contains(c))
        .ok_or_else(malformed)? as usize;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = raw
        .len()
        .checked_sub(NONCE_PREFIX_LEN)
        .and_then(|start| raw.get(start..))
        .and_then(|p| p.try_into().ok())
        .ok_or_else(malformed)?;
    let mut stream = Stream::new(data_key, raw, nonce_prefix);
    decrypt_chunks(&mut stream, input, output, chunk, progress)
}

fn decrypt_chunks(
    stream: &mut Stream,
    mut input: impl Read,
    mut output: impl Write,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, EnvelopeError> {
    let sealed_len = chunk + TAG_LEN;
    // Ciphertext as read, plus one byte of look-ahead that says whether more input follows.
    let mut frame = vec![0u8; sealed_len + 1];
    // Where chunks are opened. ring zeroes the buffer when opening fails, so opening a copy keeps
    // the ciphertext for a second attempt with the other final flag, which tells a cut at a chunk
    // boundary (Truncated) or bytes after a full-size final chunk (TrailingData) from tampering.
    let mut work = Zeroizing::new(vec![0u8; sealed_len]);
    let mut carried = 0; // the look-ahead byte kept at frame[0] from the previous round
    let mut done = 0u64;
    loop {
        let filled = carried + read_full(&mut input, &mut frame[carried..])?;
        let more = filled > sealed_len;
        let len = filled.min(sealed_len);
        if len < TAG_LEN {
            // Nothing after the header, or the input ends inside a chunk's tag.
            return Err(EnvelopeError::Truncated);
        }
        // The chunk at the last counter value must be the final one: encrypt never goes beyond.
        let last = !more || stream.at_last_counter();
        work[..len].copy_from_slice(&frame[..len]);
        let Some(plain) = stream.open(last, &mut work[..len]) else {
            return Err(stream.classify_failure(last, &mut work[..], &frame[..len]));
        };
        output.write_all(plain)?;
        done += plain.len() as u64;
        progress(done);
        if last {
            if more {
                return Err(EnvelopeError::TrailingData);
            }
            break;
        }
        stream.advance();
        frame[0] = frame[sealed_len];
        carried = 1;
    }
    output.flush()?;
    Ok(done)
}

/// One file's STREAM state: the derived key, the nonce prefix, the header digest (the AAD of
/// every chunk) and the current chunk counter.
struct Stream {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    aad: [u8; 32],
    counter: u32,
}

impl Stream {
    fn new(data_key: &[u8; 32], raw_header: &[u8], nonce_prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &nonce_prefix).extract(data_key);
        // Invariant: AES-256-GCM's 32-byte key length is a valid HKDF-SHA256 output length.
        #[allow(clippy::expect_used)]
        let okm = prk
            .expand(&[KDF_INFO], &aead::AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF output length");
        let mut aad = [0u8; 32];
        aad.copy_from_slice(digest::digest(&digest::SHA256, raw_header).as_ref());
        Self {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            nonce_prefix,
            aad,
            counter: 0,
        }
    }

    fn nonce(&self, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_LEN..11].copy_from_slice(&self.counter.to_be_bytes());
        n[11] = u8::from(last);
        // Unique: the key is this file's own, and (counter, last) differs for every chunk.
        Nonce::assume_unique_for_key(n)
    }

    /// Whether the counter has its largest value, so that this chunk must be the final one.
    fn at_last_counter(&self) -> bool {
        self.counter == u32::MAX
    }

    /// Moves to the next chunk. Callers check [`Stream::at_last_counter`] first.
    fn advance(&mut self) {
        self.counter = self.counter.saturating_add(1);
    }

    fn seal(&self, last: bool, chunk: &mut [u8]) -> Result<aead::Tag, EnvelopeError> {
        self.key
            .seal_in_place_separate_tag(self.nonce(last), Aad::from(&self.aad), chunk)
            // ring refuses only inputs beyond GCM's limit (about 64 GiB); chunks are ≤ 16 MiB.
            .map_err(|_| io::Error::other("AES-GCM refused to seal a chunk").into())
    }

    fn open<'a>(&self, last: bool, sealed: &'a mut [u8]) -> Option<&'a mut [u8]> {
        self.key
            .open_in_place(self.nonce(last), Aad::from(&self.aad), sealed)
            .ok()
    }

    /// Names the error after `sealed`, the chunk at the current counter, failed to open with
    /// flag `last`. A chunk of full size (as large as `work`) that opens with the other flag is
    /// authentic: the file was cut after a non-final chunk, or bytes follow a final one.
    /// Anything else is `Authentication`.
    fn classify_failure(&self, last: bool, work: &mut [u8], sealed: &[u8]) -> EnvelopeError {
        // At the last counter the flag was forced to final, not guessed from the length.
        if sealed.len() == work.len() && !self.at_last_counter() {
            work.copy_from_slice(sealed);
            if self.open(!last, work).is_some() {
                return if last {
                    EnvelopeError::Truncated
                } else {
                    EnvelopeError::TrailingData
                };
            }
        }
        EnvelopeError::Authentication {
            chunk: u64::from(self.counter),
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The big-endian u32 in the first 4 bytes of `b` (callers pass exactly 4).
fn be_u32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |a| u32::from_be_bytes(*a))
}

fn invalid_input(msg: &'static str) -> EnvelopeError {
    io::Error::new(io::ErrorKind::InvalidInput, msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 1024;

    fn stream_at(counter: u32) -> Stream {
        let mut s = Stream::new(&[1; 32], b"some header", [2; NONCE_PREFIX_LEN]);
        s.counter = counter;
        s
    }

    fn seal_chunk(s: &Stream, last: bool, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        let tag = s.seal(last, &mut buf).unwrap();
        buf.extend_from_slice(tag.as_ref());
        buf
    }

    /// GCM nonces never repeat under one key (SP 800-38D §8, as SecNumCloud requires): the
    /// chunk counter never wraps. Encryption stops with `FileTooLarge` instead of sealing a
    /// chunk after counter 2^32 - 1, which can only be a final chunk.
    #[test]
    fn encryption_stops_before_the_counter_wraps() {
        let input = vec![5u8; 2 * CHUNK + 1];
        let mut sealed = Vec::new();
        let err = encrypt_chunks(
            &mut stream_at(u32::MAX - 1),
            &input[..],
            &mut sealed,
            CHUNK,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Io(ref e) if e.kind() == io::ErrorKind::FileTooLarge),
            "{err}"
        );
        assert_eq!(
            sealed.len(),
            CHUNK + TAG_LEN,
            "only chunk 2^32 - 2 was written"
        );

        // Two chunks fit: 2^32 - 2, then 2^32 - 1 as the final one.
        let mut sealed = Vec::new();
        encrypt_chunks(
            &mut stream_at(u32::MAX - 1),
            &input[..2 * CHUNK],
            &mut sealed,
            CHUNK,
            &mut |_| {},
        )
        .unwrap();
        let mut plain = Vec::new();
        let n = decrypt_chunks(
            &mut stream_at(u32::MAX - 1),
            &sealed[..],
            &mut plain,
            CHUNK,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((n, &plain[..]), (2 * CHUNK as u64, &input[..2 * CHUNK]));

        // Whatever follows chunk 2^32 - 1 is trailing data.
        sealed.extend_from_slice(&[0; CHUNK + TAG_LEN]);
        let err = decrypt_chunks(
            &mut stream_at(u32::MAX - 1),
            &sealed[..],
            io::sink(),
            CHUNK,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::TrailingData), "{err}");
    }

    /// Decryption never wraps the counter either: a chunk 2^32 - 1 sealed as non-final (which
    /// encrypt never writes), followed by what would be chunk 0 again, is refused.
    #[test]
    fn decryption_refuses_a_wrapped_counter() {
        let mut sealed = seal_chunk(&stream_at(u32::MAX), false, &[1; CHUNK]);
        sealed.extend(seal_chunk(&stream_at(0), true, &[2; 10]));
        let err = decrypt_chunks(
            &mut stream_at(u32::MAX),
            &sealed[..],
            io::sink(),
            CHUNK,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Authentication { chunk } if chunk == u64::from(u32::MAX)),
            "{err}"
        );
    }

    #[test]
    fn nonce_is_prefix_counter_and_flag() {
        let s = stream_at(0x0102_0304);
        let mut a = [0u8; 12];
        let mut b = [0u8; 12];
        a.copy_from_slice(s.nonce(false).as_ref());
        b.copy_from_slice(s.nonce(true).as_ref());
        assert_eq!(a, [2, 2, 2, 2, 2, 2, 2, 1, 2, 3, 4, 0]);
        assert_eq!(b, [2, 2, 2, 2, 2, 2, 2, 1, 2, 3, 4, 1]);
    }
}
