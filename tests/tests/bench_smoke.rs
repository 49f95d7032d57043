//! Smoke test of `kms-bench` (never timed): every op against the real server and the echo
//! server finishes with exit 0, no errors and exactly the requested count in its JSON report;
//! a run with failures exits 1 and counts them by gRPC code.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use kms_tests::{Installation, Server, bin, start_unsealed};

/// Runs `kms-bench` with `args` split at spaces (no argument here holds one).
fn bench(server: &Server, args: &str) -> Output {
    server.bench(&args.split_whitespace().collect::<Vec<_>>())
}

/// Parses the `--json` report; panics with stderr unless the run exited 0.
fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kms-bench failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts a clean run of exactly `count` requests.
fn assert_clean(r: &serde_json::Value, op: &str, count: u64) {
    assert_eq!(r["op"], op, "{r}");
    assert_eq!(r["requests"], count, "{r}");
    assert_eq!(r["ok"], count, "{r}");
    assert_eq!(r["failed_requests"], 0, "{r}");
    assert_eq!(r["failed_items"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{r}");
}

/// `kms-bench echo-server`, killed on drop.
struct EchoServer(Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl EchoServer {
    /// Starts it with the installation's server certificate and CA; waits for its
    /// "listening on" line. Returns: the server and its `https://` address.
    fn start(inst: &Installation) -> (EchoServer, String) {
        let mut child = Command::new(bin("kms-bench"))
            .arg("echo-server")
            .arg("--tls-dir")
            .arg(&inst.pki.dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let echo = EchoServer(child);
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("echo-server exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("kms-bench echo-server listening on ") {
                return (echo, format!("https://{}", a.trim()));
            }
        }
    }
}

#[tokio::test]
async fn every_op_runs_clean_and_counts_right() {
    let inst = Installation::new();
    let server = start_unsealed(&inst, &mut None).await;

    // Warm-up and --server-pid exercised once; the other runs skip the warm-up to stay short.
    let pid = server.pid();
    let r = report(&bench(
        &server,
        &format!(
            "run --op encrypt --count 300 --concurrency 8 --warmup 0.2 --server-pid {pid} --json"
        ),
    ));
    assert_clean(&r, "encrypt", 300);
    assert_eq!(r["server"]["pid"], pid, "{r}");
    assert!(r["server"]["rss_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server"]["cpu_us_per_op"].as_f64().unwrap() >= 0.0, "{r}");

    for op in ["decrypt", "generate-data-key"] {
        let args =
            format!("run --op {op} --count 300 --concurrency 8 --connections 2 --warmup 0 --json");
        assert_clean(&report(&bench(&server, &args)), op, 300);
    }

    let args = "run --op batch-encrypt --batch 10 --count 300 --concurrency 8 --warmup 0 --json";
    let r = report(&bench(&server, args));
    assert_clean(&r, "batch-encrypt", 300);
    assert_eq!(r["items"], 3000, "{r}");

    let args = "run --op create-key --key made --count 20 --concurrency 8 --warmup 0 --json";
    assert_clean(&report(&bench(&server, args)), "create-key", 20);
    let list = kms_client::proto::ListKeysRequest {
        prefix: "made-".into(),
        page_size: 1000,
        page_token: String::new(),
    };
    let mut admin = server.client().await.key_admin();
    let keys = admin.list_keys(list).await.unwrap().into_inner().keys;
    assert_eq!(keys.len(), 20);

    // A table by default.
    let out = bench(&server, "run --op encrypt --count 10 --warmup 0");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("10 (10 ok, 0 failed)"), "{table}");
}

#[tokio::test]
async fn failures_exit_1_and_are_counted_by_code() {
    let inst = Installation::new();
    let server = start_unsealed(&inst, &mut None).await;
    // Above the server's batch limit (1000 items): every request is refused.
    let out = bench(
        &server,
        "run --op batch-encrypt --batch 1001 --count 5 --warmup 0 --json",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failed_requests"], 5, "{r}");
    assert_eq!(r["errors"]["InvalidArgument"], 5, "{r}");
    assert!(r["first_error"].as_str().unwrap().contains("limit"), "{r}");

    // Nothing measured when the setup fails (no server there): exit 2.
    let out = bench(&server, "run --addr https://127.0.0.1:1 --count 1");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn echo_server_with_the_server_tls() {
    let inst = Installation::new();
    let server = start_unsealed(&inst, &mut None).await;
    let (echo, addr) = EchoServer::start(&inst);
    let pid = echo.0.id();
    // The KMS connection settings, pointed at the echo server.
    let args = format!(
        "run --op echo --addr {addr} --count 300 --concurrency 8 --warmup 0 --server-pid {pid} --json"
    );
    let r = report(&bench(&server, &args));
    assert_clean(&r, "echo", 300);
    assert_eq!(r["server"]["pid"], pid, "{r}");

    // The same mTLS rules as kms-server: a client certificate from another CA is refused.
    let stranger = tempfile::tempdir().unwrap();
    let other = kms_tests::Pki::generate(stranger.path()).client("client");
    let args = format!(
        "run --op echo --addr {addr} --count 1 --client-cert {} --client-key {}",
        other.cert.display(),
        other.key.display()
    );
    let out = bench(&server, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

#[tokio::test]
async fn open_loop_rate_runs_clean_and_reports_it() {
    let inst = Installation::new();
    let server = start_unsealed(&inst, &mut None).await;
    let r = report(&bench(
        &server,
        "run --op encrypt --rate 500 --count 200 --concurrency 8 --warmup 0 --json",
    ));
    assert_clean(&r, "encrypt", 200);
    assert_eq!(r["rate"], 500.0, "{r}");
    assert!(r["late_starts"].as_u64().unwrap() <= 200, "{r}");
    // Closed loop (no --rate): both null.
    let r = report(&bench(
        &server,
        "run --op encrypt --count 10 --warmup 0 --json",
    ));
    assert!(r["rate"].is_null() && r["late_starts"].is_null(), "{r}");
}

/// `kms-bench collector`'s stdout, line by line, read on a thread so the test can wait on it
/// with a deadline. Killed on drop.
struct Collector {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    /// Starts it with the certificate in `tls_dir` on a free port. Returns: it and its address.
    fn start(tls_dir: &std::path::Path) -> (Collector, String) {
        let mut child = Command::new(bin("kms-bench"))
            .arg("collector")
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut c = Collector { child, lines: rx };
        let line = c.next_line_matching("kms-bench collector listening on ");
        (c, line.trim().to_string())
    }

    /// Waits (at most 60 s) for a line starting with `prefix`. Returns: the rest of it.
    fn next_line_matching(&mut self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `{prefix}` line from the collector: {e}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }
}

/// Parses "N lines, max seq S[, ...]".
fn lines_and_seq(rest: &str) -> (u64, u64) {
    let (n, rest) = rest.split_once(" lines, max seq ").unwrap();
    let s = rest.split(',').next().unwrap();
    (n.parse().unwrap(), s.trim().parse().unwrap())
}

#[tokio::test]
async fn collector_receives_the_shipped_audit_log() {
    // The collector's own PKI (its CA given to the shipper): it must be listening, on a port
    // only it knows, before the server's config can name it.
    let collector_pki = tempfile::tempdir().unwrap();
    let pki = kms_tests::Pki::generate(collector_pki.path());
    let (mut collector, addr) = Collector::start(&pki.dir);
    let inst = Installation::with_config(&format!(
        "[audit.ship]\naddr = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\n",
        pki.ca().display()
    ));
    let server = start_unsealed(&inst, &mut None).await;
    let c = server.client().await;
    for _ in 0..5 {
        c.status().await.unwrap();
    }
    // The highest seq written so far (the calls above are audited before they answer).
    let log = std::fs::read_to_string(inst.root.path().join("audit.log")).unwrap();
    let last = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .max()
        .unwrap();
    assert!(last >= 5, "{log}");
    // Progress lines until the collector has caught up (bounded by the 60 s per line).
    loop {
        let (_, seq) = lines_and_seq(&collector.next_line_matching("received "));
        if seq >= last {
            break;
        }
    }
    // SIGTERM: it prints its totals and exits 0.
    let term = Command::new("kill")
        .args(["-TERM", &collector.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (n, seq) = lines_and_seq(&collector.next_line_matching("total "));
    assert!(
        n >= last && seq >= last,
        "{n} lines, max seq {seq}, want {last}"
    );
    assert!(collector.child.wait().unwrap().success());
}
