//! The Prometheus endpoint (`[metrics]`, docs/metrics.md), scraped from the real server with a
//! plain TCP client: request counters and latency histograms per method and status code move
//! with the calls made, the sealed gauge follows the seal, key counts by state, the listener
//! is on loopback by default, and no key name, context value or principal is ever shown.
//!
//! SECNUMCLOUD.md names no monitoring rule, so these tests name none.
//!
//! The harness's `Server` keeps only the "listening on" line of stdout, and the metrics line
//! comes after it: these tests start the binary themselves, the same way (`Spawned`).

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use kms_client::proto as pb;
use kms_client::{Client, ClientError, ConnectOptions};
use kms_tests::{Installation, bin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// A key name and context value that must never appear in the metrics.
const SECRET_NAME: &str = "payments/metrics-card-tokens";
const CONTEXT_VALUE: &str = "tenant-acme-metrics";

/// A `kms-server --config` process, with the gRPC address and the metrics line it printed.
/// Killed on drop.
struct Spawned {
    child: Child,
    grpc: String,
    /// "on ADDR" or "off: cannot listen on ADDR: ...", the rest of "kms-server metrics ...".
    metrics_line: String,
}

impl Spawned {
    fn start(inst: &Installation) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(inst.root.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(bin("kms-server"))
            .arg("--config")
            .arg(inst.root.path().join("config.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc, mut metrics_line) = (None, None);
        while grpc.is_none() || metrics_line.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let log = std::fs::read_to_string(inst.root.path().join("server.log"))
                    .unwrap_or_default();
                panic!("kms-server exited before announcing its listeners; its log:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("kms-server listening on ") {
                grpc = Some(rest.split_whitespace().next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("kms-server metrics ") {
                metrics_line = Some(rest.to_string());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            grpc: grpc.unwrap(),
            metrics_line: metrics_line.unwrap(),
        }
    }

    /// The metrics address, if the server serves metrics.
    fn metrics_addr(&self) -> Option<String> {
        self.metrics_line.strip_prefix("on ").map(str::to_string)
    }

    async fn client(&self, inst: &Installation) -> Client {
        let cert = inst.pki.client("client");
        Client::connect(&ConnectOptions {
            addr: format!("https://{}", self.grpc),
            ca_cert: inst.pki.ca(),
            client_cert: cert.cert,
            client_key: cert.key,
            server_name: Some("localhost".into()),
        })
        .await
        .unwrap()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` on a fresh plain TCP connection; returns the status line and the body.
async fn http(addr: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The server closes the connection after its answer.
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

async fn scrape(addr: &str) -> String {
    let (status, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: kms\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name` (with its labels, exactly as printed), if present.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn requests(body: &str, method: &str, code: &str) -> f64 {
    sample(
        body,
        &format!("kms_requests_total{{method=\"{method}\",code=\"{code}\"}}"),
    )
    .unwrap_or(0.0)
}

fn bucket(body: &str, method: &str, code: &str, le: &str) -> Option<f64> {
    sample(
        body,
        &format!(
            "kms_request_duration_seconds_bucket{{method=\"{method}\",code=\"{code}\",le=\"{le}\"}}"
        ),
    )
}

fn code(e: ClientError) -> Code {
    match e {
        ClientError::Status(s) => s.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// Counters and histograms move for the method and code of each call made (OK and failing),
/// the sealed gauge follows init, unseal and seal, keys are counted by state, and nothing a
/// caller sent (key name, context value) nor the caller's identity appears in the output.
#[tokio::test(flavor = "multi_thread")]
async fn scrape_follows_calls_and_the_seal() {
    let inst = Installation::with_config("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let server = Spawned::start(&inst);
    let addr = server.metrics_addr().expect(&server.metrics_line);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let body = scrape(&addr).await;
    assert_eq!(sample(&body, "kms_sealed"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "kms_initialized"), Some(0.0), "{body}");
    assert!(
        !body.contains("kms_keys{"),
        "no key counts while sealed:\n{body}"
    );

    let client = server.client(&inst).await;
    let share = client.init(1, 1).await.unwrap().shares.remove(0);
    client.unseal(&share).await.unwrap();
    let body = scrape(&addr).await;
    assert_eq!(sample(&body, "kms_sealed"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "kms_initialized"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "kms_keys{state=\"enabled\"}"), Some(0.0));

    // OK calls.
    let create = pb::CreateKeyRequest {
        name: SECRET_NAME.into(),
        ..Default::default()
    };
    client
        .call(client.key_admin().create_key(create))
        .await
        .unwrap();
    let context = HashMap::from([("tenant".to_string(), CONTEXT_VALUE.to_string())]);
    let mut ciphertext = Vec::new();
    for _ in 0..3 {
        ciphertext = client
            .encrypt(SECRET_NAME, b"metrics".to_vec(), context.clone())
            .await
            .unwrap()
            .ciphertext;
    }
    // Failing calls: a wrong context, an unknown key.
    let wrong = HashMap::from([("tenant".to_string(), "other".to_string())]);
    let e = client.decrypt(ciphertext, wrong).await.unwrap_err();
    assert_eq!(code(e), Code::InvalidArgument);
    let get = pb::GetKeyRequest {
        name: format!("{SECRET_NAME}-missing"),
    };
    let e = client
        .call(client.key_admin().get_key(get))
        .await
        .unwrap_err();
    assert_eq!(code(e), Code::NotFound);

    let body = scrape(&addr).await;
    let encrypt = "kms.v1.Crypto/Encrypt";
    assert_eq!(requests(&body, encrypt, "OK"), 3.0, "{body}");
    assert_eq!(requests(&body, "kms.v1.KeyAdmin/CreateKey", "OK"), 1.0);
    assert_eq!(
        requests(&body, "kms.v1.Crypto/Decrypt", "INVALID_ARGUMENT"),
        1.0
    );
    assert_eq!(requests(&body, "kms.v1.Crypto/Decrypt", "OK"), 0.0);
    assert_eq!(requests(&body, "kms.v1.KeyAdmin/GetKey", "NOT_FOUND"), 1.0);
    assert_eq!(requests(&body, "kms.v1.Operator/Unseal", "OK"), 1.0);
    // The histogram holds the same calls: cumulative buckets ending at the count.
    assert_eq!(bucket(&body, encrypt, "OK", "+Inf"), Some(3.0));
    assert_eq!(
        sample(
            &body,
            &format!("kms_request_duration_seconds_count{{method=\"{encrypt}\",code=\"OK\"}}")
        ),
        Some(3.0)
    );
    let mut last = 0.0;
    for le in ["0.0005", "0.005", "0.05", "0.5", "5", "30", "+Inf"] {
        let n = bucket(&body, encrypt, "OK", le).unwrap();
        assert!(n >= last, "buckets must be cumulative: {body}");
        last = n;
    }
    assert_eq!(
        bucket(&body, "kms.v1.Crypto/Decrypt", "INVALID_ARGUMENT", "+Inf"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "kms_keys{state=\"enabled\"}"), Some(1.0));
    assert_eq!(
        sample(&body, "kms_key_versions{state=\"enabled\"}"),
        Some(1.0)
    );
    // The audit log: state changes were fsynced, it accepts records, and its queue is a
    // number (how many wait for the next group commit depends on timing: not asserted).
    assert!(
        sample(&body, "kms_audit_fsync_seconds_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        sample(&body, "kms_audit_fsync_seconds_sum").is_some(),
        "{body}"
    );
    assert_eq!(sample(&body, "kms_audit_healthy"), Some(1.0), "{body}");
    assert!(
        sample(&body, "kms_audit_unsynced_records").is_some(),
        "{body}"
    );
    // Nothing the callers sent, nor who they are.
    for secret in [
        "payments",
        "card-tokens",
        CONTEXT_VALUE,
        "spiffe",
        "test-operator",
    ] {
        assert!(!body.contains(secret), "{secret:?} in the metrics:\n{body}");
    }

    client.seal().await.unwrap();
    let body = scrape(&addr).await;
    assert_eq!(sample(&body, "kms_sealed"), Some(1.0), "{body}");
    assert!(
        !body.contains("kms_keys{"),
        "no key counts while sealed:\n{body}"
    );
    // Counters survive the seal (they count calls, not keys).
    assert_eq!(requests(&body, encrypt, "OK"), 3.0);
    assert_eq!(requests(&body, "kms.v1.Operator/Seal", "OK"), 1.0);
}

/// Only `GET /metrics` is served; another path, another method or a malformed request get a
/// plain error status, and the listener keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn other_requests_are_refused() {
    let inst = Installation::with_config("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let server = Spawned::start(&inst);
    let addr = server.metrics_addr().expect(&server.metrics_line);
    let (status, _) = http(&addr, "GET /keys HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(&addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(&addr, "hello\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // A request head beyond 8 KiB is dropped unanswered.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(16 * 1024));
    let _ = stream.write_all(big.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    assert!(scrape(&addr).await.contains("kms_sealed 1"));
}

/// Without a `[metrics]` section the server serves metrics on 127.0.0.1:9464, loopback only;
/// if that port is taken (another server of the test suite) it says so and starts anyway.
#[tokio::test(flavor = "multi_thread")]
async fn loopback_by_default() {
    let inst = Installation::new();
    let server = Spawned::start(&inst);
    match server.metrics_addr() {
        Some(addr) => {
            assert_eq!(addr, "127.0.0.1:9464");
            assert!(scrape(&addr).await.contains("kms_sealed "));
        }
        None => assert!(
            server
                .metrics_line
                .starts_with("off: cannot listen on 127.0.0.1:9464: "),
            "{}",
            server.metrics_line
        ),
    }
    // Either way the server serves gRPC.
    let status = server.client(&inst).await.status().await.unwrap();
    assert!(!status.initialized);
}

/// A call to a path the server does not serve is counted as method "unknown": the client's
/// text (here a key-like name) never becomes a label.
#[tokio::test(flavor = "multi_thread")]
async fn unserved_paths_are_not_labels() {
    use tonic::codegen::Service;
    let inst = Installation::with_config("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let server = Spawned::start(&inst);
    let addr = server.metrics_addr().expect(&server.metrics_line);
    let mut channel = server.client(&inst).await.channel();
    for path in ["/payments.cardtokens/Leak", "/kms.v1.Crypto/LeakCardTokens"] {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://{}{path}", server.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::empty())
            .unwrap();
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .unwrap();
        let resp = channel.call(req).await.unwrap();
        assert_eq!(
            resp.headers().get("grpc-status").unwrap(),
            "12",
            "UNIMPLEMENTED"
        );
    }
    let body = scrape(&addr).await;
    assert_eq!(requests(&body, "unknown", "UNIMPLEMENTED"), 2.0, "{body}");
    for text in ["Leak", "payments", "CardTokens"] {
        assert!(!body.contains(text), "{text:?} in the metrics:\n{body}");
    }
}
