//! Process hardening of the real server: no core dumps, and memory locked where the OS allows.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_tests::{Installation, start_unsealed};

fn proc_file(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap()
}

/// Whether this (test) process may lock memory without limit, as the server it starts may.
fn can_lock_memory() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let unlimited = limits
        .lines()
        .any(|l| l.starts_with("Max locked memory") && l.contains("unlimited"));
    caps & (1 << 14) != 0 || unlimited
}

/// An unsealed server writes no core file (its core limit is 0, hard and soft), and keeps its
/// memory locked (no key in swap) when the OS allows it. [SNC 10.5: keys in a protected
/// container; RègleEffacement-1: no stray copies of keys]
#[tokio::test]
async fn no_core_dumps_and_locked_memory() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let pid = server.pid();
    let core = proc_file(pid, "limits")
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(core, "0 0", "core limit (soft hard)");
    let locked_kib: u64 = proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    if can_lock_memory() {
        assert!(locked_kib > 0, "memory should be locked");
    } else {
        eprintln!("memory locking not permitted here: only the core limit was checked");
    }
}
