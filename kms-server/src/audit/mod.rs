//! The audit sink: one hash-chained JSON line per request (format in `docs/audit-format.md`),
//! written before the response leaves (and fsynced first, for state changes: see
//! [`SyncPolicy`]); if it cannot be written the request is refused (fail closed).
//!
//! Implemented as a tower layer around every gRPC service, so denied and failed calls are
//! recorded like successful ones. What it records: time, sequence, request id, node,
//! principal, peer, operation (the gRPC method), outcome and status code. Never a request or
//! response body: no plaintext, data key, share or key material can reach the log.
//! The access check notes the key of every key and crypto call ([`crate::call::AuditSlot`]); successful
//! calls also add the version ([`crate::call::detail`]). Context values are not yet recorded (as HMACs).

//!
//! Files: `layer` (the tower layer around every service), `sink` (the log, sync policy, group
//! commit, sealed head), `writer` (appends, the chain, reopening, rotation), [`ship`] (copies
//! to a remote collector). It may call `keystore` (the context HMAC key), `seal` (to seal the
//! head), `storage` and [`crate::call`]; never `access`, `api` or `transport`.

mod layer;
pub mod ship;
mod sink;
mod writer;

pub use layer::{AuditLayer, code_name};
pub use sink::{AuditConfig, AuditSink, AuditStats, SyncPolicy, WRITE_TIMEOUT};
