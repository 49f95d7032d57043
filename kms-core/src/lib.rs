//! The KMS core: pure cryptography and data formats, no network, no async runtime.
//!
//! The public interface is:
//! - [`audit`]: the hash-chained audit log format (records, chain writer, offline verify).
//! - [`backup`]: the backup file format (every stored record, still sealed, with a checksum).
//! - [`Secret32`]: 32 secret bytes, zeroized on drop, never printed.
//! - [`barrier`], [`ciphertext`], [`wrap`], [`shares`] (folder `crypto/`, each re-exported
//!   here under its own name): the barrier keyring and the sealing of every stored record; the
//!   data-plane ciphertext format (v1), encryption context, seal and open; key material wrapped
//!   to a public key (import, export); Feldman-verifiable t-of-n splitting of the root secret
//!   and the share text format.
//! - [`key`] (folder `key/`): key metadata and its lifecycle state machine (pure, time passed in).
//! - [`keyname`]: key names and key ids, parsed at the edge.
//! - [`policy`] (folder `policy/`): access policies (TOML rules, deny by default, separation
//!   of duties) and decisions.
//! - [`totp`]: the TOTP second factor (RFC 6238).
//!
//! Imports run one way, with no cycle between folders (`scripts/module-graph.py kms-core/src
//! --folders` prints the graph): `crypto` calls only the crate root (`Secret32`, `fill_random`,
//! `CryptoError`) and `keyname`; `key` calls only `keyname`; `policy` calls nothing else in the
//! crate. No folder calls another folder.

#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
mod crypto;
pub mod key;
pub mod keyname;
pub mod policy;
mod secret;
pub mod totp;

pub use crypto::{barrier, ciphertext, shares, wrap};
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
