//! Transport: the mTLS listener (TLS 1.3 only, client certificates, CRL), connection and
//! request limits, deadlines, and the PKI that dev mode and tests generate.
//!
//! The first concern a request meets. It may call `access` (to name a certificate's
//! principal) and the shared [`crate::call`] types (it sets the [`crate::call::Peer`]).

pub mod deadline;
mod limits;
pub mod pki;
pub mod tls;

pub use limits::LimitsConfig;
