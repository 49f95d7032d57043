//! `kms-bench run`: a load generator. `--concurrency` workers, each with at most one
//! request in flight, spread round-robin over `--connections` HTTP/2 connections; closed loop
//! (each worker sends as soon as its last answer arrives) or, with `--rate`, open loop (the
//! requests are due at a fixed rate and a free worker sends each when due); an unmeasured
//! warm-up, then the measured window; a report of throughput, latency percentiles, late
//! starts, errors by gRPC code and, with `--server-pid`, the server's CPU per request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use kms_client::proto::{
    self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient,
};
use kms_client::{Client, ConnectOptions, Svc};
use kms_proto::bench::v1::{EchoRequest, echo_client::EchoClient};

use crate::hist::Histogram;
use crate::procfs;
use crate::report::{Latency, Report, ServerUsage};

/// Ciphertexts prepared for `--op decrypt` (cycled through), so the measured window only
/// decrypts.
const DECRYPT_POOL: usize = 256;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// Crypto.Encrypt of --payload bytes under --key.
    Encrypt,
    /// Crypto.Decrypt of ciphertexts prepared under --key before the warm-up.
    Decrypt,
    /// Crypto.GenerateDataKey under --key (plaintext and wrapped data key returned).
    GenerateDataKey,
    /// Crypto.BatchEncrypt of --batch items of --payload bytes under --key.
    BatchEncrypt,
    /// KeyAdmin.CreateKey of a new key KEY-<run id>-<n> each time (a durable write).
    CreateKey,
    /// kms.bench.v1.Echo/Echo of --payload bytes (against `kms-bench echo-server`).
    Echo,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::GenerateDataKey => "generate-data-key",
            Op::BatchEncrypt => "batch-encrypt",
            Op::CreateKey => "create-key",
            Op::Echo => "echo",
        }
    }

    /// Whether the op needs `--key` to exist before the run.
    fn uses_key(self) -> bool {
        !matches!(self, Op::CreateKey | Op::Echo)
    }
}

/// Where the server is and which certificates to present: the flags and environment of
/// kms-cli (`kms-server dev` writes the variables to DATA_DIR/env).
#[derive(clap::Args)]
#[command(next_help_heading = "Connection (flags or environment, as kms-cli)")]
pub struct Conn {
    /// Server address, e.g. https://127.0.0.1:8200 (an echo-server's address with --op echo).
    #[arg(long, env = kms_client::ENV_ADDR, value_name = "URL")]
    addr: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, env = kms_client::ENV_CA_CERT, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM); its identity must be allowed the operation by the policies.
    #[arg(long, env = kms_client::ENV_CLIENT_CERT, value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = kms_client::ENV_CLIENT_KEY, value_name = "FILE")]
    client_key: Option<PathBuf>,
    /// TLS name to verify in the server certificate, if not the host of --addr.
    #[arg(long, env = "KMS_TLS_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
}

impl Conn {
    fn options(&self) -> Result<ConnectOptions, String> {
        let need = |v: bool, flag: &str, env: &str| {
            if v {
                Ok(())
            } else {
                Err(format!(
                    "{flag} is not set: pass it, set {env}, or `. DATA_DIR/env` after `kms-server dev`"
                ))
            }
        };
        need(self.addr.is_some(), "--addr", kms_client::ENV_ADDR)?;
        need(self.ca_cert.is_some(), "--ca-cert", kms_client::ENV_CA_CERT)?;
        need(
            self.client_cert.is_some(),
            "--client-cert",
            kms_client::ENV_CLIENT_CERT,
        )?;
        need(
            self.client_key.is_some(),
            "--client-key",
            kms_client::ENV_CLIENT_KEY,
        )?;
        Ok(ConnectOptions {
            addr: self.addr.clone().unwrap_or_default(),
            ca_cert: self.ca_cert.clone().unwrap_or_default(),
            client_cert: self.client_cert.clone().unwrap_or_default(),
            client_key: self.client_key.clone().unwrap_or_default(),
            server_name: self.server_name.clone(),
        })
    }
}

/// The load to generate.
#[derive(clap::Args)]
#[command(after_help = "\
Examples (release build; the dev profile does not optimise the workspace crates):
  kms-server dev --data-dir /tmp/kms --listen 127.0.0.1:0 &
  . /tmp/kms/env
  kms-bench run --op encrypt --concurrency 16 --duration 10 --server-pid $!
  kms-bench run --op batch-encrypt --batch 100 --count 1000 --json
  kms-bench echo-server --tls-dir /tmp/kms/tls --listen 127.0.0.1:7001 &
  kms-bench run --op echo --addr https://127.0.0.1:7001 --concurrency 64 --connections 4 --server-pid $!

Latency is measured per request, from just before the call to the answer, on a
current-thread runtime (one client thread). Percentiles come from a log-linear histogram
and are exact to within 1.6 % (rounded up). ops/s counts successful requests.

Open loop (--rate R): request n of each phase (warm-up, then the measured window) is due at
the phase's start + n/R; a worker claims the next n, sleeps until it is due, then sends it.
To compare servers at the same load, find the peak ops/s closed loop, then run each at
half of it, e.g. `--rate 5000 --concurrency 64`, and compare p99. Two caveats:
  * tokio's timer has about 1 ms granularity, so requests leave in small bursts (about
    R/1000 at a time), not evenly spaced, each within about 1 ms of its due time (the
    timer is aimed 1 ms early, since it fires up to 2 ms after its deadline).
  * Latency is timed from the actual send, not from the due time. When the server (or this
    client) cannot keep up, or all --concurrency workers are busy, requests start late:
    `late` in the table (`late_starts` in the JSON) counts those that started more than
    1 ms after they were due. A run with many late starts did not offer the load asked
    for: raise --concurrency or lower --rate before reading its percentiles.

Exit codes: 0 every request succeeded; 1 at least one request or batch item failed (the
report says which gRPC codes, and the first message); 2 bad usage, cannot connect, or the
preparation (key creation, decrypt ciphertexts) failed.")]
#[command(group(clap::ArgGroup::new("stop").args(["duration", "count"])))]
pub struct RunArgs {
    /// The request to send.
    #[arg(long, value_enum, default_value = "encrypt")]
    op: Op,
    /// Workers, i.e. most requests in flight (each worker sends its next request when the
    /// previous one answers, or with --rate when the next one is due).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 16)]
    concurrency: usize,
    /// Separate HTTP/2 connections (each a TLS session); the workers are spread evenly over
    /// them. At most --concurrency.
    #[arg(long, value_name = "C", default_value_t = 1)]
    connections: usize,
    /// Length of the measured window in seconds (default 10 when --count is not given).
    #[arg(long, short = 'd', value_name = "SECS")]
    duration: Option<f64>,
    /// Measure exactly N requests instead of a time window.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Open loop: R requests per second in total, spread over the workers (see below). Without
    /// it, closed loop.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Seconds of load before the measured window, not reported (connections warm, key
    /// caches filled). 0 for none.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Plaintext (or echo) bytes per request, or per item with --op batch-encrypt.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    payload: usize,
    /// Items per BatchEncrypt request (--op batch-encrypt; the server's limit is
    /// keys.max_batch_items, 1000 by default).
    #[arg(long, value_name = "B", default_value_t = 10)]
    batch: usize,
    /// The key to use, created (AES-256-GCM, no rotation) if it does not exist. With
    /// --op create-key, the prefix of the new keys' names.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    key: String,
    /// The server's process id (same machine): report its CPU time per request over the
    /// measured window (utime + stime from /proc/PID/stat) and its RSS at the end.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    // Last, so its help heading covers only its own flags.
    #[command(flatten)]
    conn: Conn,
}

/// Why a run failed to produce a clean report.
pub enum RunError {
    /// Usage, connection or preparation: nothing was measured (exit 2).
    Setup(String),
    /// The run completed, but some requests failed (exit 1); the report was printed.
    Failures,
}

impl From<String> for RunError {
    fn from(s: String) -> Self {
        RunError::Setup(s)
    }
}

/// What every request needs, shared by the workers.
struct Plan {
    op: Op,
    key: String,
    payload: Vec<u8>,
    items: Vec<pb::EncryptItem>,
    ciphertexts: Vec<Vec<u8>>,
    /// Numbers the requests across warm-up and measurement (new key names, ciphertext pick).
    seq: AtomicU64,
    /// Makes create-key names unique across runs.
    run_id: u128,
}

/// Open-loop pacing: request n of the phase is due at `start + n / rate`.
struct Pace {
    start: Instant,
    /// Requests per second, finite and positive.
    rate: f64,
}

/// A request starting more than this after its due time counts as late (tokio's timer
/// granularity is about 1 ms, so less is only timer noise).
const LATE: Duration = Duration::from_millis(1);

/// The granularity of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// When a phase ends: at a deadline, or after a number of requests; and, open loop, when
/// each request is due.
struct Stop {
    deadline: Option<Instant>,
    limit: Option<u64>,
    issued: AtomicU64,
    pace: Option<Pace>,
}

/// What a worker does next.
enum Next {
    /// The phase is over.
    Done,
    /// Send at once (closed loop).
    Now,
    /// Send at this time (open loop).
    At(Instant),
}

impl Stop {
    /// A phase that starts now.
    fn new(deadline: Option<Instant>, limit: Option<u64>, rate: Option<f64>) -> Self {
        Stop {
            deadline,
            limit,
            issued: AtomicU64::new(0),
            pace: rate.map(|rate| Pace {
                start: Instant::now(),
                rate,
            }),
        }
    }

    /// Claims the next request.
    ///
    /// Returns: `Done` once the phase is over (the deadline has passed or, open loop, the
    /// request would be due at or after it; or the limit is reached); `Now` closed loop; `At`
    /// its due time open loop.
    fn claim(&self) -> Next {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Next::Done;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|l| n >= l) {
            return Next::Done;
        }
        let Some(p) = &self.pace else {
            return Next::Now;
        };
        // Overflow only for absurdly small rates: due beyond any deadline, so the phase ends.
        let due = Duration::try_from_secs_f64(n as f64 / p.rate)
            .ok()
            .and_then(|d| p.start.checked_add(d));
        match due {
            Some(due) if self.deadline.is_none_or(|d| due < d) => Next::At(due),
            _ => Next::Done,
        }
    }
}

/// One worker's generated client.
enum Caller {
    Crypto(CryptoClient<Svc>),
    Admin(KeyAdminClient<Svc>),
    Echo(EchoClient<Svc>),
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latency: Histogram,
    requests: u64,
    ok: u64,
    items_ok: u64,
    failed_requests: u64,
    failed_items: u64,
    /// Open loop: requests that started more than [`LATE`] after they were due.
    late: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, code: String, message: String) {
        if self.first_error.is_none() {
            self.first_error = Some(format!("{code}: {message}"));
        }
        *self.errors.entry(code).or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.latency.merge(&o.latency);
        self.requests += o.requests;
        self.ok += o.ok;
        self.items_ok += o.items_ok;
        self.failed_requests += o.failed_requests;
        self.failed_items += o.failed_items;
        self.late += o.late;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// The outcome of one request, before it is tallied.
enum Outcome {
    /// Answered; `items_ok` results were good, `item_errors` not (batch only).
    Ok {
        items_ok: u64,
        item_errors: Vec<(String, String)>,
    },
    Failed(String, String),
}

async fn call(caller: &mut Caller, plan: &Plan) -> Outcome {
    let status = |s: tonic::Status| Outcome::Failed(code_name(s.code()), s.message().to_string());
    let one = Outcome::Ok {
        items_ok: 1,
        item_errors: Vec::new(),
    };
    match (plan.op, caller) {
        (Op::Encrypt, Caller::Crypto(c)) => {
            let req = pb::EncryptRequest {
                key: plan.key.clone(),
                plaintext: plan.payload.clone(),
                context: Default::default(),
            };
            c.encrypt(req).await.map_or_else(status, |_| one)
        }
        (Op::Decrypt, Caller::Crypto(c)) => {
            let n = plan.seq.fetch_add(1, Ordering::Relaxed) as usize;
            let req = pb::DecryptRequest {
                ciphertext: plan.ciphertexts[n % plan.ciphertexts.len()].clone(),
                context: Default::default(),
            };
            match c.decrypt(req).await {
                Ok(r) if r.get_ref().plaintext == plan.payload => one,
                Ok(_) => Outcome::Failed(
                    "mismatch".into(),
                    "decrypt returned a different plaintext".into(),
                ),
                Err(s) => status(s),
            }
        }
        (Op::GenerateDataKey, Caller::Crypto(c)) => {
            let req = pb::GenerateDataKeyRequest {
                key: plan.key.clone(),
                context: Default::default(),
                without_plaintext: false,
                recipient: None,
            };
            c.generate_data_key(req).await.map_or_else(status, |_| one)
        }
        (Op::BatchEncrypt, Caller::Crypto(c)) => {
            let req = pb::BatchEncryptRequest {
                key: plan.key.clone(),
                items: plan.items.clone(),
            };
            match c.batch_encrypt(req).await {
                Ok(r) => {
                    let mut items_ok = 0;
                    let mut item_errors = Vec::new();
                    for res in &r.get_ref().results {
                        match &res.result {
                            Some(pb::batch_encrypt_result::Result::Ok(_)) => items_ok += 1,
                            Some(pb::batch_encrypt_result::Result::Error(e)) => item_errors
                                .push((code_name(tonic::Code::from(e.code)), e.message.clone())),
                            None => item_errors.push(("mismatch".into(), "empty result".into())),
                        }
                    }
                    let answered = items_ok + item_errors.len();
                    if answered != plan.items.len() {
                        item_errors.push((
                            "mismatch".into(),
                            format!("{answered} results for {} items", plan.items.len()),
                        ));
                    }
                    Outcome::Ok {
                        items_ok: items_ok as u64,
                        item_errors,
                    }
                }
                Err(s) => status(s),
            }
        }
        (Op::CreateKey, Caller::Admin(c)) => {
            let n = plan.seq.fetch_add(1, Ordering::Relaxed);
            let req = pb::CreateKeyRequest {
                name: format!("{}-{:x}-{n}", plan.key, plan.run_id),
                purpose: pb::KeyPurpose::EncryptDecrypt.into(),
                ..Default::default()
            };
            c.create_key(req).await.map_or_else(status, |_| one)
        }
        (Op::Echo, Caller::Echo(c)) => {
            let req = EchoRequest {
                payload: plan.payload.clone(),
            };
            match c.echo(req).await {
                Ok(r) if r.get_ref().payload.len() == plan.payload.len() => one,
                Ok(r) => Outcome::Failed(
                    "mismatch".into(),
                    format!(
                        "echo answered {} bytes for {}",
                        r.get_ref().payload.len(),
                        plan.payload.len()
                    ),
                ),
                Err(s) => status(s),
            }
        }
        // `caller_for` builds the caller from the same `op`.
        _ => Outcome::Failed("internal".into(), "caller does not match the op".into()),
    }
}

fn caller_for(op: Op, client: &Client) -> Caller {
    match op {
        Op::CreateKey => Caller::Admin(client.key_admin()),
        Op::Echo => Caller::Echo(EchoClient::with_interceptor(
            client.channel(),
            kms_client::Totp::default(),
        )),
        _ => Caller::Crypto(client.crypto()),
    }
}

async fn worker(mut caller: Caller, plan: Arc<Plan>, stop: Arc<Stop>) -> (Caller, Tally) {
    let mut t = Tally::default();
    loop {
        match stop.claim() {
            Next::Done => break,
            Next::Now => {}
            Next::At(due) => {
                // Aimed one tick early: tokio fires a timer on the first 1 ms tick at or after
                // its deadline and rounds the wait up to whole ms again, so aiming at `due`
                // woke 0-2 ms late (every request counted late at 50/s, on an idle server).
                // Aimed early, sends land within about a tick either side of `due`.
                let aim = due.checked_sub(TIMER_TICK).unwrap_or(due);
                tokio::time::sleep_until(tokio::time::Instant::from_std(aim)).await;
                if Instant::now().saturating_duration_since(due) > LATE {
                    t.late += 1;
                }
            }
        }
        // From the actual send, not the due time: lateness is reported apart (`late`).
        let start = Instant::now();
        let outcome = call(&mut caller, &plan).await;
        let elapsed = start.elapsed();
        t.requests += 1;
        match outcome {
            Outcome::Ok {
                items_ok,
                item_errors,
            } => {
                // Latency of answered requests only: a refused request is usually fast.
                t.latency
                    .record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                t.ok += 1;
                t.items_ok += items_ok;
                t.failed_items += item_errors.len() as u64;
                for (code, message) in item_errors {
                    t.error(code, message);
                }
            }
            Outcome::Failed(code, message) => {
                t.failed_requests += 1;
                t.error(code, message);
            }
        }
    }
    (caller, t)
}

/// Runs every caller until `stop`; hands the callers back for the next phase.
async fn phase(callers: Vec<Caller>, plan: &Arc<Plan>, stop: Stop) -> (Vec<Caller>, Tally) {
    let stop = Arc::new(stop);
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|c| tokio::spawn(worker(c, plan.clone(), stop.clone())))
        .collect();
    let mut callers = Vec::with_capacity(tasks.len());
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok((c, t)) => {
                callers.push(c);
                total.merge(t);
            }
            // A worker only panics on a bug; count it rather than lose the whole run.
            Err(e) => total.error("internal".into(), format!("worker failed: {e}")),
        }
    }
    (callers, total)
}

/// Makes sure `key` exists (creating it if not) and prepares the decrypt ciphertexts.
async fn prepare(client: &Client, args: &RunArgs, plan: &mut Plan) -> Result<(), String> {
    if !args.op.uses_key() {
        return Ok(());
    }
    let get = pb::GetKeyRequest {
        name: args.key.clone(),
    };
    match client.key_admin().get_key(get).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {
            let req = pb::CreateKeyRequest {
                name: args.key.clone(),
                purpose: pb::KeyPurpose::EncryptDecrypt.into(),
                description: "kms-bench".into(),
                ..Default::default()
            };
            match client.key_admin().create_key(req).await {
                // Another kms-bench may have created it meanwhile.
                Err(s) if s.code() != tonic::Code::AlreadyExists => {
                    return Err(format!(
                        "cannot create key {}: {}",
                        args.key,
                        status_text(&s)
                    ));
                }
                _ => {}
            }
        }
        // A principal may encrypt under a key without the right to read its metadata (the
        // example `service` role): go ahead, a missing key shows as NotFound errors.
        Err(s) if s.code() == tonic::Code::PermissionDenied => eprintln!(
            "kms-bench: cannot check that key {} exists ({}); assuming it does",
            args.key,
            status_text(&s)
        ),
        Err(s) => return Err(format!("cannot read key {}: {}", args.key, status_text(&s))),
    }
    if args.op == Op::Decrypt {
        for _ in 0..DECRYPT_POOL {
            let r = client
                .encrypt(&args.key, plan.payload.clone(), Default::default())
                .await
                .map_err(|e| format!("cannot prepare ciphertexts under {}: {e}", args.key))?;
            plan.ciphertexts.push(r.ciphertext);
        }
    }
    Ok(())
}

fn status_text(s: &tonic::Status) -> String {
    format!("{}: {}", code_name(s.code()), s.message())
}

/// Runs the benchmark and prints the report. Must run on a current-thread runtime (the
/// figures in the docs assume one client thread).
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    if args.concurrency == 0 || args.connections == 0 {
        return Err(RunError::Setup(
            "--concurrency and --connections must be at least 1".into(),
        ));
    }
    if args.connections > args.concurrency {
        return Err(RunError::Setup(format!(
            "--connections {} is more than --concurrency {}: some connections would stay idle",
            args.connections, args.concurrency
        )));
    }
    if args.op == Op::BatchEncrypt && args.batch == 0 {
        return Err(RunError::Setup("--batch must be at least 1".into()));
    }
    let valid_secs = |v: f64| v.is_finite() && v >= 0.0;
    if !valid_secs(args.warmup) || !args.duration.is_none_or(|d| valid_secs(d) && d > 0.0) {
        return Err(RunError::Setup(
            "--duration must be positive and --warmup at least 0 (seconds)".into(),
        ));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(RunError::Setup(
            "--rate must be a positive number of requests per second".into(),
        ));
    }
    if args.count == Some(0) {
        return Err(RunError::Setup("--count must be at least 1".into()));
    }
    let pid = args.server_pid.map(|p| p.to_string());
    if let Some(p) = &pid {
        procfs::cpu_ticks(p).map_err(|e| format!("--server-pid {p}: {e}"))?;
    }
    let opts = args.conn.options()?;

    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let c = Client::connect(&opts).await.map_err(|e| e.to_string())?;
        clients.push(c);
    }
    let payload: Vec<u8> = (0..args.payload).map(|i| (i % 251) as u8).collect();
    let items = if args.op == Op::BatchEncrypt {
        vec![
            pb::EncryptItem {
                plaintext: payload.clone(),
                context: Default::default(),
            };
            args.batch
        ]
    } else {
        Vec::new()
    };
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut plan = Plan {
        op: args.op,
        key: args.key.clone(),
        payload,
        items,
        ciphertexts: Vec::new(),
        seq: AtomicU64::new(0),
        run_id,
    };
    prepare(&clients[0], &args, &mut plan).await?;
    let plan = Arc::new(plan);
    // Worker i uses connection i mod C: an even spread.
    let callers: Vec<Caller> = (0..args.concurrency)
        .map(|i| caller_for(args.op, &clients[i % clients.len()]))
        .collect();

    let callers = if args.warmup > 0.0 {
        let stop = Stop::new(
            Some(Instant::now() + Duration::from_secs_f64(args.warmup)),
            None,
            args.rate,
        );
        let (callers, warm) = phase(callers, &plan, stop).await;
        if warm.ok == 0 {
            // Nothing answered: measuring would only repeat the failure.
            let why = warm.first_error.unwrap_or_else(|| "no answer".into());
            return Err(RunError::Setup(format!(
                "every warm-up request failed, first: {why}"
            )));
        }
        callers
    } else {
        callers
    };

    let (clk_tck, clk_measured) = procfs::clock_ticks();
    let server_before = pid.as_deref().map(procfs::cpu_ticks).transpose()?;
    let client_before = procfs::cpu_ticks("self").ok();
    let start = Instant::now();
    let deadline = match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(start + Duration::from_secs_f64(d.unwrap_or(10.0))),
    };
    let stop = Stop::new(deadline, args.count, args.rate);
    let (_callers, t) = phase(callers, &plan, stop).await;
    let elapsed = start.elapsed().as_secs_f64();
    let client_after = procfs::cpu_ticks("self").ok();
    let server = match (&pid, server_before) {
        (Some(p), Some(before)) => {
            let after = procfs::cpu_ticks(p)?;
            Some(ServerUsage {
                pid: args.server_pid.unwrap_or_default(),
                cpu_s: after.saturating_sub(before) as f64 / clk_tck as f64,
                cpu_us_per_op: per_op(after.saturating_sub(before), clk_tck, t.ok),
                cpu_us_per_item: (args.op == Op::BatchEncrypt)
                    .then(|| per_op(after.saturating_sub(before), clk_tck, t.items_ok)),
                rss_kib: procfs::rss_kib(p)?,
            })
        }
        _ => None,
    };
    let client_cpu = match (client_before, client_after) {
        (Some(b), Some(a)) => Some(per_op(a.saturating_sub(b), clk_tck, t.ok)),
        _ => None,
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    let report = Report {
        op: args.op.name(),
        addr: opts.addr.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        late_starts: args.rate.map(|_| t.late),
        connections: args.connections,
        payload_bytes: args.payload,
        batch: (args.op == Op::BatchEncrypt).then_some(args.batch),
        warmup_s: args.warmup,
        elapsed_s: elapsed,
        requests: t.requests,
        ok: t.ok,
        failed_requests: t.failed_requests,
        failed_items: t.failed_items,
        ops_per_s: t.ok as f64 / elapsed,
        items: (args.op == Op::BatchEncrypt).then_some(t.items_ok),
        items_per_s: (args.op == Op::BatchEncrypt).then(|| t.items_ok as f64 / elapsed),
        latency_us: Latency {
            min: us(t.latency.min()),
            p50: us(t.latency.percentile(50.0)),
            p90: us(t.latency.percentile(90.0)),
            p99: us(t.latency.percentile(99.0)),
            p99_9: us(t.latency.percentile(99.9)),
            max: us(t.latency.max()),
            mean: t.latency.mean() / 1000.0,
        },
        errors: t.errors,
        first_error: t.first_error,
        server,
        client_cpu_us_per_op: client_cpu,
        clk_tck,
        clk_tck_measured: clk_measured,
    };
    report.print(args.json);
    if report.failed_requests + report.failed_items > 0 {
        return Err(RunError::Failures);
    }
    Ok(())
}

fn per_op(ticks: u64, clk_tck: u64, ops: u64) -> f64 {
    if ops == 0 {
        return 0.0;
    }
    ticks as f64 * 1e6 / clk_tck as f64 / ops as f64
}
