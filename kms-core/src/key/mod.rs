//! Key metadata and its lifecycle state machine: pure, with the time passed in as `now`.
//!
//! This module never reads the clock and never touches key material: the server keeps each
//! version's 32-byte material in its own record and asks this module what may be done.
//!
//! Key-level states (DESIGN §3): `Enabled` → `Disabled` ⇄ `Enabled`;
//! `Enabled | Disabled` → `PendingDeletion` → (`cancel_deletion`) back to where it was, or
//! (`destroy`, once the waiting period is over) → `Destroyed`, which is final for a key the
//! KMS generated. An imported key (origin external) comes back from `Destroyed` only when the
//! very material of a destroyed version is imported again (`restore_version`, checked by
//! fingerprint): its owner held that material all along.
//! Version-level: `Enabled` (shown as "active" for the latest, "decrypt-only" for older ones),
//! `Revoked` (final, keeps its first reason, even through destruction) and `Destroyed` (final
//! but for the restore above).
//!
//! Guarantees common to every method of [`KeyMeta`]:
//! - A method that returns `Err` leaves the metadata exactly as it was.
//! - Every change sets `updated = now`; a call that changes nothing (disable a disabled key,
//!   revoke a revoked version) returns `Ok` and leaves `updated` alone.
//! - Nothing leaves `Destroyed` and no destroyed version becomes usable again, except an
//!   imported version whose same material is imported again; a revoked version never does.
//! - Every error names the key and says what to do next.
//!
//! Within the crate this module calls only [`crate::keyname`].

mod config;
mod import;
mod lifecycle;
mod model;
mod schedule;
#[cfg(test)]
mod test_support;
mod usage;

pub use lifecycle::{DEFAULT_DELETION_WAITING_DAYS, LifecycleError, fmt_utc};
pub use model::{
    KeyMeta, KeyState, MAX_DESCRIPTION_LEN, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS,
    MIN_ROTATION_PERIOD, Operation, Origin, Purpose, RevocationReason, VersionMeta, VersionState,
};
pub use schedule::{ScheduledAction, due_action};
