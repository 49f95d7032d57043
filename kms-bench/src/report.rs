//! The report of one run: a table for people, one JSON object for scripts (`--json`).

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency of answered requests, in microseconds.
#[derive(Serialize)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// What the server process used over the measured window.
#[derive(Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// utime + stime over the measured window, in seconds.
    pub cpu_s: f64,
    /// `cpu_s` per successful request, in microseconds.
    pub cpu_us_per_op: f64,
    /// `cpu_s` per successful batch item, in microseconds (batch-encrypt only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_item: Option<f64>,
    /// VmRSS at the end of the window.
    pub rss_kib: u64,
}

/// One run. Field names are the JSON keys.
#[derive(Serialize)]
pub struct Report {
    pub op: &'static str,
    pub addr: String,
    pub concurrency: usize,
    /// Open loop: the requests per second asked for (`--rate`); null when closed loop.
    pub rate: Option<f64>,
    /// Open loop: measured requests that started more than 1 ms after they were due; null
    /// when closed loop.
    pub late_starts: Option<u64>,
    pub connections: usize,
    pub payload_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub elapsed_s: f64,
    /// Requests sent in the measured window: `ok + failed_requests`.
    pub requests: u64,
    pub ok: u64,
    pub failed_requests: u64,
    /// Items refused inside answered batch requests.
    pub failed_items: u64,
    /// Successful requests per second.
    pub ops_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_per_s: Option<f64>,
    pub latency_us: Latency,
    /// Failed requests and batch items by gRPC code (`mismatch`: a wrong answer).
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUsage>,
    /// This process's CPU per successful request, in microseconds.
    pub client_cpu_us_per_op: Option<f64>,
    /// Clock ticks per second used for the CPU times.
    pub clk_tck: u64,
    /// False when `getconf CLK_TCK` failed and 100 was assumed.
    pub clk_tck_measured: bool,
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            // Serializing plain numbers, strings and maps with string keys cannot fail.
            match serde_json::to_string(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("kms-bench: cannot write the JSON report: {e}"),
            }
            return;
        }
        print!("{}", self.table());
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("{label:<14}{value}\n"));
        };
        let batch = self
            .batch
            .map(|b| format!(", {b} items per request"))
            .unwrap_or_default();
        line(
            "op",
            format!(
                "{} against {}, {}-byte payload{batch}",
                self.op, self.addr, self.payload_bytes
            ),
        );
        let pacing = match self.rate {
            Some(r) => format!("open loop at {r} requests/s, at most {}", self.concurrency),
            None => self.concurrency.to_string(),
        };
        line(
            "load",
            format!(
                "{pacing} in flight over {} connection(s); {:.2} s measured after {:.1} s warm-up",
                self.connections, self.elapsed_s, self.warmup_s
            ),
        );
        line(
            "requests",
            format!(
                "{} ({} ok, {} failed)",
                self.requests, self.ok, self.failed_requests
            ),
        );
        line("ops/s", format!("{:.0}", self.ops_per_s));
        if let Some(late) = self.late_starts {
            let share = if self.requests == 0 {
                0.0
            } else {
                late as f64 * 100.0 / self.requests as f64
            };
            line(
                "late",
                format!("{late} ({share:.1} %) started more than 1 ms after due"),
            );
        }
        if let (Some(items), Some(per_s)) = (self.items, self.items_per_s) {
            line(
                "items/s",
                format!(
                    "{per_s:.0} ({items} items ok, {} failed)",
                    self.failed_items
                ),
            );
        }
        let l = &self.latency_us;
        line(
            "latency µs",
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  (min {:.1}, max {:.1}, mean {:.1})",
                l.p50, l.p90, l.p99, l.p99_9, l.min, l.max, l.mean
            ),
        );
        let tck = if self.clk_tck_measured {
            format!("CLK_TCK {}", self.clk_tck)
        } else {
            format!("CLK_TCK assumed {}", self.clk_tck)
        };
        if let Some(s) = &self.server {
            let item = s
                .cpu_us_per_item
                .map(|i| format!(" ({i:.1} µs per item)"))
                .unwrap_or_default();
            line(
                "server",
                format!(
                    "pid {}: {:.1} µs CPU per request{item}, {:.2} s CPU ({tck}); RSS {:.1} MiB",
                    s.pid,
                    s.cpu_us_per_op,
                    s.cpu_s,
                    s.rss_kib as f64 / 1024.0
                ),
            );
        }
        if let Some(c) = self.client_cpu_us_per_op {
            line("client", format!("{c:.1} µs CPU per request ({tck})"));
        }
        if self.errors.is_empty() {
            line("errors", "none".into());
        } else {
            let by_code: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            line("errors", by_code.join(", "));
            if let Some(first) = &self.first_error {
                line("first error", first.clone());
            }
        }
        out
    }
}
