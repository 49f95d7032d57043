//! Access: who is calling ([`principal`]), what the policies allow them ([`authz`]: deny by
//! default, separation of duties), and their second factor ([`mfa`]).
//!
//! Every gRPC handler asks here before any key is touched. It may call `keystore` (the
//! clock), `seal` and `storage` (MFA enrolments, the shared policy-reload record) and
//! [`crate::call`] (it notes the key of each call in the audit slot); never `api` or
//! `transport`.

pub mod authz;
pub mod mfa;
pub mod principal;
