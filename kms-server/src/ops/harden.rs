//! Process hardening at start, before any secret is in memory: no core dumps, not dumpable
//! (no ptrace attach by other users, `/proc/PID/mem` closed to them), and memory locked so
//! keys are never written to swap, where the OS allows it.

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{
    DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
};

/// The log target these lines had before the module moved to `ops/`: operators filter on it
/// (`KMS_LOG=kms_server::harden=off`) and the startup tests look for it.
const TARGET: &str = "kms_server::harden";

/// Applies what the OS allows and logs what it does not. Never fails: a server that cannot
/// lock memory still runs, with a warning saying how to allow it.
pub fn apply() {
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, no_core) {
        tracing::warn!(target: TARGET, error = %e, "cannot disable core dumps");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(target: TARGET, error = %e, "cannot mark the process non-dumpable");
    }
    // Locking future mappings under a finite RLIMIT_MEMLOCK would make allocations fail once
    // the process outgrows it: lock only when the limit cannot bite.
    let unlimited = getrlimit(Resource::Memlock).current.is_none();
    if !unlimited && !has_cap_ipc_lock() {
        tracing::warn!(target: TARGET, "memory not locked: RLIMIT_MEMLOCK is finite and the process lacks CAP_IPC_LOCK (e.g. systemd LimitMEMLOCK=infinity or AmbientCapabilities=CAP_IPC_LOCK); keys may be swapped out"
        );
        return;
    }
    // ONFAULT: lock pages as they are used, rather than committing every mapping up front.
    match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT) {
        Ok(()) => tracing::info!(target: TARGET, "memory locked: keys are never swapped out"),
        Err(e) => tracing::warn!(target: TARGET, error = %e,
            "cannot lock memory (needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK, e.g. systemd LimitMEMLOCK=infinity): keys may be swapped out"
        ),
    }
}

/// Whether CAP_IPC_LOCK (capability 14) is in the effective set, from `/proc/self/status`.
fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 14) != 0)
}
