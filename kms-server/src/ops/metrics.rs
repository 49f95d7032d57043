//! Prometheus metrics: a tower layer that counts and times every gRPC call by method and
//! status code, and a small plain-HTTP listener that serves them (`GET /metrics`, text
//! exposition format 0.0.4) with the seal state and key counts read at scrape time.
//!
//! Labels are the RPC method and the gRPC status code only: never a key name, principal,
//! context value or peer address (confidentiality, and a bounded number of series). A path
//! the server does not serve (answered UNIMPLEMENTED) is counted as method `"unknown"`, so a
//! client cannot create series by inventing paths. See docs/metrics.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::body::Body;
use tonic::codegen::http;

/// The `[metrics]` section: a plain-HTTP Prometheus endpoint (`GET /metrics`) on its own
/// listener. Metrics carry no secret and no key name, but they show request rates and key
/// counts: keep the listener on loopback, or behind a firewall.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve metrics at all (default true).
    pub enabled: bool,
    /// Address of the metrics listener; port 0 picks a free port. When unset, the server
    /// tries [`MetricsConfig::DEFAULT_LISTEN`] and, if that is taken, starts without metrics
    /// (a warning); when set, an address that cannot be bound stops the server.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

impl MetricsConfig {
    /// 127.0.0.1:9464, the port commonly used by Prometheus exporters of applications.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

    /// The address to bind.
    pub fn address(&self) -> SocketAddr {
        self.listen.unwrap_or(Self::DEFAULT_LISTEN)
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` is implied.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Most distinct method labels; beyond it calls are counted as method `"other"`. The server
/// has about 50 methods: this only guards against a bug, not against clients (see module doc).
const MAX_METHODS: usize = 256;

/// The longest a scraper may take to send its request; the most bytes of it read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Scrapes served at once; more wait for a slot (Prometheus scrapes one at a time).
const MAX_SCRAPES: usize = 4;

/// The gRPC status codes (numbered 0 to 16); their label values are the audit log's names
/// (`audit::code_name`).
const CODES: usize = 17;

/// One (method, code) series: a latency histogram whose count is the sum of its buckets.
#[derive(Default)]
struct Series {
    /// Calls per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Series {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Every series of one method, one per status code.
#[derive(Default)]
struct Method {
    codes: [Series; CODES],
}

/// The request metrics of one server; shared by the layer and the listener.
#[derive(Default)]
pub struct Metrics {
    methods: RwLock<HashMap<String, Arc<Method>>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records one call of `path` (the gRPC request path) answered `code` after `elapsed`.
    pub fn observe(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let name = path.strip_prefix('/').unwrap_or(path);
        // A path the server does not serve is the client's text: never a label of its own.
        // A cancelled call may never have reached the router: labelled only if known.
        let unserved = code == tonic::Code::Unimplemented
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'/')
            || (code == tonic::Code::Cancelled && !self.known(name));
        let method = self.method(if unserved { "unknown" } else { name });
        if let Some(series) = method.codes.get(code as usize) {
            series.observe(elapsed);
        }
    }

    fn known(&self, name: &str) -> bool {
        self.methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    fn method(&self, name: &str) -> Arc<Method> {
        if let Some(m) = self
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return m.clone();
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        let name = if methods.len() >= MAX_METHODS && !methods.contains_key(name) {
            "other"
        } else {
            name
        };
        methods.entry(name.to_string()).or_default().clone()
    }

    /// The request series in the text exposition format, methods in name order.
    fn render_requests(&self, out: &mut String) {
        let mut methods: Vec<(String, Arc<Method>)> = self
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        // Read every series once, so the counter and the histogram agree.
        let mut rows = Vec::new();
        for (name, method) in &methods {
            for (number, series) in method.codes.iter().enumerate() {
                let code = crate::audit::code_name(tonic::Code::from_i32(number as i32));
                let buckets: Vec<u64> = series
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let count: u64 = buckets.iter().sum();
                if count == 0 {
                    continue;
                }
                let sum = series.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                rows.push((label(name), code, buckets, count, sum));
            }
        }
        out.push_str(
            "# HELP kms_requests_total gRPC calls answered, by method and status code.\n\
             # TYPE kms_requests_total counter\n",
        );
        for (method, code, _, count, _) in &rows {
            let _ = writeln!(
                out,
                "kms_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP kms_request_duration_seconds Time from a call's arrival to its response \
             headers, by method and status code.\n\
             # TYPE kms_request_duration_seconds histogram\n",
        );
        for (method, code, buckets, count, sum) in &rows {
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "kms_request_duration_seconds_bucket{{method=\"{method}\",code=\"{code}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "kms_request_duration_seconds_bucket{{method=\"{method}\",code=\"{code}\",le=\"+Inf\"}} {count}\n\
                 kms_request_duration_seconds_sum{{method=\"{method}\",code=\"{code}\"}} {sum}\n\
                 kms_request_duration_seconds_count{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
    }
}

/// A label value with `\`, `"` and newlines escaped (exposition format).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Counts by state label.
type Counts<const N: usize> = [(&'static str, u64); N];

/// What a scrape reads besides the request series.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub seal: Arc<crate::Seal>,
    pub keystore: Arc<crate::keystore::Keystore>,
    pub audit: Arc<crate::audit::AuditSink>,
}

impl Sources {
    /// The whole exposition: process state first, then the request series.
    async fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = writeln!(
            out,
            "# HELP kms_build_info The running kms-server's version.\n\
             # TYPE kms_build_info gauge\n\
             kms_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        // The seal lock is held by init, unseal and rekey: do not let a scrape wait on them.
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(1), self.seal.status()).await {
            let _ = writeln!(
                out,
                "# HELP kms_initialized 1 once the KMS is initialised (shares exist).\n\
                 # TYPE kms_initialized gauge\n\
                 kms_initialized {}\n\
                 # HELP kms_sealed 1 while sealed (no key is usable), 0 while unsealed.\n\
                 # TYPE kms_sealed gauge\n\
                 kms_sealed {}",
                u8::from(status.initialized),
                u8::from(status.sealed)
            );
        }
        if let Some((keys, versions)) = self.key_counts() {
            out.push_str(
                "# HELP kms_keys Keys by state (only while unsealed).\n# TYPE kms_keys gauge\n",
            );
            for (state, n) in keys {
                let _ = writeln!(out, "kms_keys{{state=\"{state}\"}} {n}");
            }
            out.push_str(
                "# HELP kms_key_versions Key versions by state (only while unsealed).\n\
                 # TYPE kms_key_versions gauge\n",
            );
            for (state, n) in versions {
                let _ = writeln!(out, "kms_key_versions{{state=\"{state}\"}} {n}");
            }
        }
        let audit = self.audit.stats();
        let _ = writeln!(
            out,
            "# HELP kms_audit_unsynced_records Audit records written and not yet fsynced (the \
             group-commit queue).\n\
             # TYPE kms_audit_unsynced_records gauge\n\
             kms_audit_unsynced_records {}\n\
             # HELP kms_audit_healthy 1 while the audit log accepts records, 0 while every \
             request is refused (fail closed).\n\
             # TYPE kms_audit_healthy gauge\n\
             kms_audit_healthy {}\n\
             # HELP kms_audit_fsync_seconds Time spent in fsyncs of the audit log (sum and count: \
             rate(sum)/rate(count) is the mean latency).\n\
             # TYPE kms_audit_fsync_seconds summary\n\
             kms_audit_fsync_seconds_sum {}\n\
             kms_audit_fsync_seconds_count {}",
            audit.unsynced_records,
            u8::from(audit.healthy),
            audit.fsync_seconds,
            audit.fsyncs
        );
        self.metrics.render_requests(&mut out);
        out
    }

    /// Keys and versions by state, from the key cache a page at a time; None while sealed
    /// (or while a node of a shared store cannot confirm its cache is current).
    fn key_counts(&self) -> Option<(Counts<4>, Counts<3>)> {
        use kms_core::key::{KeyState, VersionState};
        let mut keys = [
            ("enabled", 0),
            ("disabled", 0),
            ("pending_deletion", 0),
            ("destroyed", 0),
        ];
        let mut versions = [("enabled", 0), ("revoked", 0), ("destroyed", 0)];
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self
                .keystore
                .list("", after.as_deref(), 1000, |_| true)
                .ok()?;
            for meta in &page {
                let k = match meta.state {
                    KeyState::Enabled => 0,
                    KeyState::Disabled => 1,
                    KeyState::PendingDeletion { .. } => 2,
                    KeyState::Destroyed { .. } => 3,
                };
                keys[k].1 += 1;
                for v in &meta.versions {
                    let i = match v.state {
                        VersionState::Enabled => 0,
                        VersionState::Revoked { .. } => 1,
                        VersionState::Destroyed { .. } => 2,
                    };
                    versions[i].1 += 1;
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => return Some((keys, versions)),
            }
        }
    }
}

/// Serves `GET /metrics` on `listener` (plain HTTP/1.x, one request per connection) until the
/// task is aborted. Anything else gets 404 (another path), 405 (another method) or 400; a
/// client that does not send its request within 5 s or sends more than 8 KiB is dropped.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = answer(stream, &sources).await {
                tracing::debug!(error = %e, "metrics request not answered");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        // Too large, cut, or too slow: nothing worth answering.
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let response = match (method, target, version) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => {
            let path = t.split('?').next().unwrap_or(t);
            if path != "/metrics" {
                reply("404 Not Found", "text/plain", "not found: try /metrics\n")
            } else if m != "GET" {
                reply("405 Method Not Allowed", "text/plain", "use GET\n")
            } else {
                reply(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &sources.render().await,
                )
            }
        }
        _ => reply("400 Bad Request", "text/plain", "bad request\n"),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; None if the peer closed first or sent too much.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Binds the metrics listener of `config`, announcing the address on stdout as
/// "kms-server metrics on ADDR" (tests and scripts wait for it).
///
/// Returns: None when metrics are disabled, or when the default address cannot be bound (a
/// warning, so several servers on one host still start); an error when an address set in
/// `[metrics] listen` cannot be bound.
pub async fn bind(
    config: &crate::ops::metrics::MetricsConfig,
) -> Result<Option<TcpListener>, String> {
    if !config.enabled {
        return Ok(None);
    }
    let addr = config.address();
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if config.listen.is_none() => {
            tracing::warn!(%addr, error = %e, "metrics not served: cannot listen on the default address; set [metrics] listen");
            println!("kms-server metrics off: cannot listen on {addr}: {e}");
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot listen for metrics on {addr}: {e}")),
    };
    let bound: SocketAddr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the metrics address: {e}"))?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "metrics are served without TLS or authentication beyond the loopback interface: request rates and key counts are visible to anyone who can reach it");
    }
    println!("kms-server metrics on {bound}");
    Ok(Some(listener))
}

/// The tower layer that records every call of the wrapped services in [`Metrics`].
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Measured<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            path: req.uri().path().to_string(),
            start: Instant::now(),
            done: false,
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            // A status in the headers is a refusal (trailers-only response); an answer's
            // status travels in the trailers, and is OK for a unary call that got this far.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Internal,
            };
            pending.finish(code);
            response
        })
    }
}

/// One call being measured. Dropped unfinished (the client reset the stream, or its
/// `grpc-timeout` passed: tonic drops the call), it counts as CANCELLED, as the audit does.
struct Pending {
    metrics: Arc<Metrics>,
    path: String,
    start: Instant,
    done: bool,
}

impl Pending {
    fn finish(&mut self, code: tonic::Code) {
        self.done = true;
        self.metrics.observe(&self.path, code, self.start.elapsed());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Counts land in the right bucket, the histogram is cumulative and its count is the
    /// counter's; an unserved path never becomes a label.
    #[test]
    fn histogram_and_labels() {
        let m = Metrics::default();
        m.observe(
            "/kms.v1.Crypto/Encrypt",
            tonic::Code::Ok,
            Duration::from_micros(300),
        );
        m.observe(
            "/kms.v1.Crypto/Encrypt",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.observe(
            "/kms.v1.Crypto/Decrypt",
            tonic::Code::InvalidArgument,
            Duration::from_secs(60),
        );
        m.observe(
            "/payments/card-tokens",
            tonic::Code::Unimplemented,
            Duration::from_millis(1),
        );
        m.observe(
            "/kms.v1.Crypto/Sign-me",
            tonic::Code::Unavailable,
            Duration::from_millis(1),
        );
        m.observe(
            "/kms.v1.Crypto/NotYetSeen",
            tonic::Code::Cancelled,
            Duration::from_millis(1),
        );
        m.observe(
            "/kms.v1.Crypto/Encrypt",
            tonic::Code::Cancelled,
            Duration::from_millis(1),
        );
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(
            out.contains("kms_requests_total{method=\"kms.v1.Crypto/Encrypt\",code=\"OK\"} 2\n")
        );
        assert!(out.contains(
            "kms_request_duration_seconds_bucket{method=\"kms.v1.Crypto/Encrypt\",code=\"OK\",le=\"0.0005\"} 1\n"
        ));
        assert!(out.contains(
            "kms_request_duration_seconds_bucket{method=\"kms.v1.Crypto/Encrypt\",code=\"OK\",le=\"0.005\"} 2\n"
        ));
        assert!(out.contains(
            "kms_request_duration_seconds_bucket{method=\"kms.v1.Crypto/Decrypt\",code=\"INVALID_ARGUMENT\",le=\"30\"} 0\n"
        ));
        assert!(out.contains(
            "kms_request_duration_seconds_bucket{method=\"kms.v1.Crypto/Decrypt\",code=\"INVALID_ARGUMENT\",le=\"+Inf\"} 1\n"
        ));
        assert!(out.contains("kms_requests_total{method=\"unknown\",code=\"UNIMPLEMENTED\"} 1\n"));
        assert!(out.contains("kms_requests_total{method=\"unknown\",code=\"UNAVAILABLE\"} 1\n"));
        assert!(out.contains("kms_requests_total{method=\"unknown\",code=\"CANCELLED\"} 1\n"));
        assert!(out.contains(
            "kms_requests_total{method=\"kms.v1.Crypto/Encrypt\",code=\"CANCELLED\"} 1\n"
        ));
        for text in ["card-tokens", "Sign-me", "NotYetSeen"] {
            assert!(!out.contains(text), "{text}");
        }
    }

    /// No `[metrics]` section: served, on loopback, at the default port, best effort.
    #[test]
    fn default_config_is_loopback() {
        let c: crate::ops::metrics::MetricsConfig = toml::from_str("").unwrap();
        assert!(c.enabled);
        assert!(c.listen.is_none());
        assert!(c.address().ip().is_loopback());
        assert_eq!(c.address().port(), 9464);
        let c: crate::ops::metrics::MetricsConfig =
            toml::from_str("enabled = false\nlisten = \"127.0.0.1:0\"").unwrap();
        assert!(!c.enabled);
        assert!(toml::from_str::<crate::ops::metrics::MetricsConfig>("lisen = \"x\"").is_err());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
