//! The gRPC services of `kms.v1`, one thin file each: parse the request at the edge, ask
//! `access`, call the `keystore` (or `seal`, `audit`), map the outcome to the wire through
//! [`crate::KmsError`]. No policy or cryptography lives here.
//!
//! - `crypto`: `kms.v1.Crypto` (Encrypt, Decrypt, data keys, batches)
//! - `key_admin`: `kms.v1.KeyAdmin` (create, lifecycle, import and export)
//! - `operator`: `kms.v1.Operator` (init, unseal, seal, rekey, barrier rotation, backup)
//! - `policy`, `mfa`, `audit`: `kms.v1.Policy`, `kms.v1.Mfa`, `kms.v1.Audit`

pub mod audit;
pub mod crypto;
pub mod key_admin;
mod keys;
pub mod mfa;
pub mod operator;
pub mod policy;

pub use keys::KeysService;
