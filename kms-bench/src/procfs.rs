//! CPU time and resident memory of a process, from Linux `/proc` (server CPU per operation is
//! the figure that compares across runs: throughput alone mostly measures the client).

/// Clock ticks per second for `/proc/PID/stat` times: `getconf CLK_TCK`, asked once.
///
/// Returns: the value and whether it was measured; 100 (the Linux default on every common
/// architecture) when `getconf` is missing or says something unexpected.
pub fn clock_ticks() -> (u64, bool) {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    match out {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim().parse() {
            Ok(t) if t > 0 => (t, true),
            _ => (100, false),
        },
        _ => (100, false),
    }
}

/// utime + stime of `pid` (`"self"` for this process), in clock ticks.
pub fn cpu_ticks(pid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_stat(&text).ok_or_else(|| format!("unexpected format in {path}"))
}

/// Fields 14 (utime) and 15 (stime) of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and ')', so count from the last ')'.
fn parse_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th field from there.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line = "4242 (kms) server) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(325));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn own_process_is_readable() {
        cpu_ticks("self").unwrap();
        assert!(rss_kib("self").unwrap() > 0);
    }
}
