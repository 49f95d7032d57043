//! The cryptography that protects keys and data: barrier sealing, the ciphertext format, key
//! wrapping and secret sharing; may call only the crate root (`Secret32`, `fill_random`,
//! `CryptoError`) and `keyname`.

pub mod barrier;
pub mod ciphertext;
pub mod shares;
pub mod wrap;
