//! Operations: Prometheus metrics, diagnostic logs, and process hardening at start.
//!
//! Metrics read the state of `seal`, `keystore` and `audit` at scrape time; logging and
//! hardening call nothing else in the crate.

pub mod harden;
pub mod logging;
pub mod metrics;
