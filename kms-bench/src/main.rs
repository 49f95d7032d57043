//! `kms-bench`: the KMS's load generator, and an echo server for the transport floor.
//!
//! `kms-bench run` drives a running kms-server over mTLS gRPC with the kms-client connection
//! code (same TLS and channel settings), closed loop: `--concurrency` requests in flight over
//! `--connections` HTTP/2 connections, an unmeasured warm-up, then a measured window. It
//! reports ops/s (items/s for batches), p50/p90/p99/p99.9 latency, failures by gRPC code and,
//! with `--server-pid`, the server's CPU time per request and its RSS. The generator runs on
//! one current-thread runtime: on a small machine it shares the cores with the server, and a
//! multi-thread client doubled p99 and client CPU (docs: PERFORMANCE-NOTES).
//!
//! With `--rate R` the run is open loop instead: request n of a phase is due at
//! phase start + n/R and a free worker sends it then, so latency can be compared at the same
//! offered load (e.g. p99 at half of the peak ops/s) across servers; requests that could not
//! leave on time are counted as `late`.
//!
//! `kms-bench echo-server` serves `kms.bench.v1.Echo` with exactly kms-server's TLS settings
//! and tonic server, so `run --op echo` against it measures what mTLS + HTTP/2 + gRPC cost
//! without any key, policy or audit work.
//!
//! `kms-bench collector` receives kms-server's shipped audit log (TLS, newline-delimited
//! JSON), counts the records and discards them, so a run can include the cost of shipping.
//!
//! Build with `--release`: the workspace's dev profile does not optimise our crates.
//!
//! ```text
//! cargo build --release -p kms-server -p kms-bench
//! kms-server dev --data-dir /tmp/kms --listen 127.0.0.1:0 &
//! KMS_PID=$!
//! kms-bench echo-server --tls-dir /tmp/kms/tls --listen 127.0.0.1:7001 &
//! ECHO_PID=$!
//! . /tmp/kms/env
//! kms-bench run --op encrypt --concurrency 16 --connections 1 --duration 10 --server-pid $KMS_PID
//! kms-bench run --op decrypt --concurrency 64 --connections 4 --count 100000 --json
//! kms-bench run --op batch-encrypt --batch 100 --duration 5
//! kms-bench run --op echo --addr https://127.0.0.1:7001 --concurrency 16 --server-pid $ECHO_PID
//! kms-bench run --op encrypt --rate 5000 --concurrency 64 --duration 10 --json
//!
//! # With audit shipping (the dev server's certificate serves the collector too):
//! kms-server dev --data-dir /tmp/kms2 --listen 127.0.0.1:0 --ship-to 127.0.0.1:7002 &
//! kms-bench collector --tls-dir /tmp/kms2/tls --listen 127.0.0.1:7002 &
//! ```
//!
//! Exit codes: 0 every request succeeded; 1 some request or batch item failed (report
//! printed); 2 bad usage, cannot connect, or the preparation failed.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod collector;
mod echo;
mod hist;
mod procfs;
mod report;
mod run;

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for the KMS, and an echo server with the same mTLS for the transport floor",
    after_help = "Examples (`. DATA_DIR/env` after `kms-server dev --data-dir DATA_DIR`):\n  \
                  kms-bench run --op encrypt --concurrency 16 --duration 10 --server-pid PID\n  \
                  kms-bench echo-server --tls-dir DATA_DIR/tls --listen 127.0.0.1:7001\n  \
                  kms-bench run --op echo --addr https://127.0.0.1:7001\n  \
                  kms-bench run --op encrypt --rate 2000 --concurrency 32 --duration 10\n  \
                  kms-bench collector --tls-dir DATA_DIR/tls --listen 127.0.0.1:7002 \
                  (with `kms-server dev --data-dir DATA_DIR --ship-to 127.0.0.1:7002`)\n\n\
                  Build with --release: the dev profile does not optimise the workspace crates."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a running server (kms-server, or an echo-server with --op echo) and report
    /// throughput, latency, errors and server CPU per request.
    Run(run::RunArgs),
    /// Serve kms.bench.v1.Echo with kms-server's exact TLS settings (the transport floor).
    EchoServer(echo::EchoArgs),
    /// Receive kms-server's shipped audit log over TLS, count the records and discard them.
    Collector(collector::CollectorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            // One client thread: see the crate docs.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 2),
            };
            match runtime.block_on(run::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(run::RunError::Failures) => ExitCode::from(1),
                Err(run::RunError::Setup(e)) => fail(&e, 2),
            }
        }
        Command::EchoServer(args) => {
            // kms-server's runtime: tokio's default multi-thread runtime.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 2),
            };
            match runtime.block_on(echo::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, 2),
            }
        }
        Command::Collector(args) => {
            // One thread: the collector only counts lines, and should take as little of the
            // machine from the server under test as it can.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 2),
            };
            match runtime.block_on(collector::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, 2),
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM (the servers' stop signal).
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the server.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("kms-bench: {message}");
    ExitCode::from(code)
}

/// A TLS file given by its flag, or else found as `name` in `--tls-dir` (the layout
/// `kms-server dev` writes).
fn tls_file(
    explicit: Option<&std::path::Path>,
    tls_dir: Option<&std::path::Path>,
    name: &str,
    flag: &str,
) -> Result<std::path::PathBuf, String> {
    match (explicit, tls_dir) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(d)) => Ok(d.join(name)),
        (None, None) => Err(format!("{flag} is not set: pass it, or --tls-dir DIR")),
    }
}
