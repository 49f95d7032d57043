//! The KMS core: pure cryptography and data formats, no network, no async runtime.
//!
//! The public interface is:
//! - [`audit`]: the hash-chained audit log format (records, chain writer, offline verify).
//! - [`backup`]: the backup file format (every stored record, still sealed, with a checksum).
//! - [`Secret32`]: 32 secret bytes, zeroized on drop, never printed.
//! - [`barrier`]: the keyring of barrier keys and the sealing of every stored record.
//! - [`ciphertext`]: the data-plane ciphertext format (v1), encryption context, seal and open.
//! - [`key`]: key metadata and its lifecycle state machine (pure, time passed in).
//! - [`keyname`]: key names and key ids, parsed at the edge.
//! - [`policy`]: access policies (TOML rules, deny by default, separation of duties) and decisions.
//! - [`shares`]: Feldman-verifiable t-of-n splitting of the root secret and the share text format.

#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod barrier;
pub mod ciphertext;
pub mod key;
pub mod keyname;
pub mod policy;
mod secret;
pub mod shares;
pub mod totp;
pub mod wrap;

pub use secret::Secret32;

/// A failure of the operating system's random number generator.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct CryptoError;

/// Fills `buf` from the OS CSPRNG (getrandom, through ring).
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError)
}
