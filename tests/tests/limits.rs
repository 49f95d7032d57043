//! Server limits (`[limits]` and `[keys]`, docs/limits.md), each proven against the real server:
//! message size, batch items, context entries and sizes, concurrent streams per connection,
//! request deadline, handshake and idle timeouts, unanswered keepalive pings, max connections.
//!
//! SECNUMCLOUD.md names no availability or resource-exhaustion rule, so these tests name none.
//! Waits are on events (a connection closed, a frame received) with generous upper bounds.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kms_client::Client;
use kms_client::proto as pb;
use kms_tests::{Installation, Server, bin, start_unsealed, status};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Code;

/// Upper bound for an event that should come within a few seconds; generous for a loaded CI.
const EVENT_BOUND: Duration = Duration::from_secs(30);

async fn unsealed(config: &str) -> (Installation, Server) {
    let inst = Installation::with_config(config);
    let server = start_unsealed(&inst, &mut None).await;
    (inst, server)
}

async fn create(c: &Client, name: &str) {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req)).await.unwrap();
}

fn addr(server: &Server) -> String {
    server.addr.trim_start_matches("https://").to_string()
}

/// The test client's rustls configuration (client certificate, the installation's CA, h2).
fn tls_config(inst: &Installation) -> Arc<rustls::ClientConfig> {
    Arc::new(kms_tests::rustls_client(inst, &[&rustls::version::TLS13]))
}

/// A raw mTLS connection with the handshake done, nothing else sent.
async fn tls_connect(
    inst: &Installation,
    server: &Server,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr(server)).await?;
    tokio_rustls::TlsConnector::from(tls_config(inst))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads (and discards) until the peer closes the connection (end of stream or an error).
/// Returns false if it is still open after `bound`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), bound: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, drain).await.is_ok()
}

fn server_log(inst: &Installation) -> String {
    std::fs::read_to_string(inst.root.path().join("server.log")).unwrap()
}

// ---- Raw HTTP/2 frames (RFC 9113 §4.1), for what no well-behaved client library will do.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// Reads one frame: (type, flags, stream id, payload).
async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// A gRPC request's header block, HPACK-encoded as literals without indexing (RFC 7541
/// §6.2.2), so no table or Huffman code is needed.
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        for s in [name, value] {
            block.push(u8::try_from(s.len()).unwrap());
            block.extend(s.as_bytes());
        }
    }
    block
}

/// Sends the client preface and empty SETTINGS, then reads the server's SETTINGS (and
/// acknowledges them). Returns the server's settings as (id, value) pairs.
async fn h2_open(s: &mut TlsStream<TcpStream>) -> Vec<(u16, u32)> {
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    loop {
        let (kind, flags, _, payload) = read_frame(s).await.unwrap();
        if kind == SETTINGS && flags & ACK == 0 {
            s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            return payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
}

// ---- The tests.

/// A request message above `max_message_bytes` is refused with OUT_OF_RANGE naming the
/// limit, before the keystore sees it (a smaller but too-large plaintext gets the keystore's
/// INVALID_ARGUMENT instead), and the same connection keeps serving.
#[tokio::test]
async fn oversized_messages_are_refused_and_the_connection_keeps_serving() {
    let (_inst, server) =
        unsealed("[keys]\nmax_plaintext_bytes = 1024\n[limits]\nmax_message_bytes = 20000\n").await;
    let c = server.client().await;
    create(&c, "k").await;

    let s = status(
        c.encrypt("k", vec![7u8; 30_000], HashMap::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());
    assert!(s.message().contains("20000"), "{}", s.message());

    // Within the message limit, over the plaintext limit: the keystore's own refusal.
    let s = status(
        c.encrypt("k", vec![7u8; 2000], HashMap::new())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("1024"), "{}", s.message());

    // A batch within max_batch_items but beyond the message size.
    let items = vec![
        pb::EncryptItem {
            plaintext: vec![1u8; 1000],
            context: HashMap::new(),
        };
        30
    ];
    let s = status(
        c.call(c.crypto().batch_encrypt(pb::BatchEncryptRequest {
            key: "k".into(),
            items,
        }))
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());

    // Same client, same connection: still served, and a maximal plaintext fits.
    let ct = c
        .encrypt("k", vec![9u8; 1024], HashMap::new())
        .await
        .unwrap();
    let d = c.decrypt(ct.ciphertext, HashMap::new()).await.unwrap();
    assert_eq!(d.plaintext, vec![9u8; 1024]);
}

/// `keys.max_batch_items` bounds BatchEncrypt and BatchDecrypt: one item more is refused
/// whole with INVALID_ARGUMENT naming the limit; exactly the limit is served.
#[tokio::test]
async fn batches_beyond_max_batch_items_are_refused() {
    let (_inst, server) = unsealed("[keys]\nmax_batch_items = 3\n").await;
    let c = server.client().await;
    create(&c, "k").await;
    let item = pb::EncryptItem {
        plaintext: b"x".to_vec(),
        context: HashMap::new(),
    };
    let batch = |n: usize| pb::BatchEncryptRequest {
        key: "k".into(),
        items: vec![item.clone(); n],
    };
    let s = status(
        c.call(c.crypto().batch_encrypt(batch(4)))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("limit is 3"), "{}", s.message());

    let r = c.call(c.crypto().batch_encrypt(batch(3))).await.unwrap();
    assert_eq!(r.results.len(), 3);
    let ct = match &r.results[0].result {
        Some(pb::batch_encrypt_result::Result::Ok(e)) => e.ciphertext.clone(),
        other => panic!("item not encrypted: {other:?}"),
    };
    let dec = |n: usize| pb::BatchDecryptRequest {
        items: vec![
            pb::DecryptRequest {
                ciphertext: ct.clone(),
                context: HashMap::new(),
            };
            n
        ],
    };
    let s = status(c.call(c.crypto().batch_decrypt(dec(4))).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("limit is 3"), "{}", s.message());
    let r = c.call(c.crypto().batch_decrypt(dec(3))).await.unwrap();
    assert_eq!(r.results.len(), 3);
}

/// Each encryption-context limit (kms-core `EncryptionContext`: MAX_ENTRIES, MAX_KEY_LEN,
/// MAX_VALUE_LEN, MAX_TOTAL) holds over RPC: at the limit the call is served, one beyond it
/// gets INVALID_ARGUMENT naming the limit, on Encrypt, Decrypt and GenerateDataKey.
#[tokio::test]
async fn context_limits_are_enforced_over_rpc() {
    let (_inst, server) = unsealed("").await;
    let c = server.client().await;
    create(&c, "k").await;
    let entries = |n: usize, key_len: usize, value_len: usize| -> HashMap<String, String> {
        (0..n)
            .map(|i| {
                let key = format!("{i:0>key_len$}");
                (key, "v".repeat(value_len))
            })
            .collect()
    };
    // (at the limit, one beyond, the limit's name). Keys are zero-padded numbers.
    let cases = [
        (entries(64, 3, 1), entries(65, 3, 1), "MAX_ENTRIES"),
        (entries(1, 128, 1), entries(1, 129, 1), "MAX_KEY_LEN"),
        (entries(1, 3, 1024), entries(1, 3, 1025), "MAX_VALUE_LEN"),
        // 8 × (4 + 1020) = 8192 bytes, then 8 × (4 + 1021) = 8200.
        (entries(8, 4, 1020), entries(8, 4, 1021), "MAX_TOTAL"),
    ];
    for (at, beyond, name) in cases {
        let ct = c.encrypt("k", b"p".to_vec(), at.clone()).await.unwrap();
        assert_eq!(
            c.decrypt(ct.ciphertext.clone(), at.clone())
                .await
                .unwrap()
                .plaintext,
            b"p"
        );
        let refusals = [
            c.encrypt("k", b"p".to_vec(), beyond.clone())
                .await
                .unwrap_err(),
            c.decrypt(ct.ciphertext, beyond.clone()).await.unwrap_err(),
            c.generate_data_key("k", beyond).await.unwrap_err(),
        ];
        for e in refusals {
            let s = status(e);
            assert_eq!(s.code(), Code::InvalidArgument, "{name}: {}", s.message());
            assert!(s.message().contains(name), "{name}: {}", s.message());
        }
    }
}

/// The server announces `max_concurrent_streams` in its HTTP/2 SETTINGS and enforces it: with
/// the limit (2) of calls open on one connection, a third is refused with
/// RST_STREAM(REFUSED_STREAM) while the open ones are not reset; other connections are
/// served. Deterministic: the open calls never send their body, so they cannot finish.
#[tokio::test]
async fn concurrent_streams_beyond_the_limit_are_refused() {
    let (inst, server) = unsealed("[limits]\nmax_concurrent_streams = 2\n").await;
    let mut s = tls_connect(&inst, &server).await.unwrap();
    let settings = h2_open(&mut s).await;
    assert!(
        settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 2)),
        "{settings:?}"
    );

    // Streams 1 and 3 fill the limit; 5 is one too many. No END_STREAM: the bodies stay open.
    let block = grpc_headers("/grpc.health.v1.Health/Check");
    let mut out = Vec::new();
    for id in [1, 3, 5] {
        out.extend(frame(HEADERS, END_HEADERS, id, &block));
    }
    s.write_all(&out).await.unwrap();
    let refused = tokio::time::timeout(EVENT_BOUND, async {
        loop {
            let (kind, _, id, payload) = read_frame(&mut s).await.unwrap();
            if kind == RST_STREAM {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                return (id, code);
            }
            assert_ne!(
                kind, GOAWAY,
                "connection closed instead of refusing one stream"
            );
        }
    })
    .await
    .expect("no RST_STREAM for the stream over the limit");
    assert_eq!(refused, (5, REFUSED_STREAM));

    // Another client on another connection is served meanwhile.
    let c = server.client().await;
    assert!(!c.status().await.unwrap().sealed);
}

/// Starts a call whose request body never ends (h2 client, `grpc-timeout` optional) and
/// returns the response's grpc-status and grpc-message.
async fn call_left_open(
    inst: &Installation,
    server: &Server,
    grpc_timeout: Option<&str>,
) -> (String, String) {
    let tls = tls_connect(inst, server).await.unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .handshake::<_, &'static [u8]>(tls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("{}/grpc.health.v1.Health/Check", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let (response, _body_left_open) = send.send_request(req.body(()).unwrap(), false).unwrap();
    let response = tokio::time::timeout(EVENT_BOUND, response)
        .await
        .expect("no answer within the bound: the deadline was not applied")
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (
        header("grpc-status"),
        percent_decode(&header("grpc-message")),
    )
}

/// grpc-message is percent-encoded on the wire (gRPC over HTTP/2 spec).
fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).unwrap()
}

/// `request_timeout_secs` ends a call that is still running when it expires: the client gets
/// DEADLINE_EXCEEDED naming the setting rather than waiting for ever.
#[tokio::test]
async fn a_call_past_the_request_timeout_is_ended_by_the_server() {
    let (inst, server) = unsealed("[limits]\nrequest_timeout_secs = 1\n").await;
    let (code, message) = call_left_open(&inst, &server, None).await;
    assert_eq!(
        code,
        (Code::DeadlineExceeded as i32).to_string(),
        "{code} {message}"
    );
    assert!(message.contains("request_timeout_secs"), "{message}");
}

/// A client's `grpc-timeout` shorter than the server's request timeout is honoured by the
/// server: the call is answered once the client's deadline passes (here 1 s), well before the
/// server's own (300 s). The h2 client has no deadline of its own, so only the server can end
/// the call.
#[tokio::test]
async fn the_server_honours_the_client_grpc_timeout() {
    let (inst, server) = unsealed("[limits]\nrequest_timeout_secs = 300\n").await;
    let (code, message) = call_left_open(&inst, &server, Some("1S")).await;
    // tonic's own answer: it enforces grpc-timeout in a layer outside ours (deadline.rs).
    assert_eq!(
        code,
        (Code::Cancelled as i32).to_string(),
        "{code} {message}"
    );
    assert!(message.contains("Timeout expired"), "{message}");
}

/// TCP clients that connect and send nothing are disconnected after `handshake_timeout_secs`,
/// and while they wait, a real client is served.
#[tokio::test]
async fn silent_tcp_clients_are_dropped_and_do_not_block_others() {
    let (_inst, server) = unsealed("[limits]\nhandshake_timeout_secs = 3\n").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    // Served while 50 handshakes are pending.
    let c = server.client().await;
    create(&c, "k").await;
    c.encrypt("k", b"p".to_vec(), HashMap::new()).await.unwrap();
    for s in &mut silent {
        assert!(
            closed_within(s, EVENT_BOUND).await,
            "a silent TCP client is still connected"
        );
    }
}

/// A slow client that trickles its TLS handshake (one byte every 100 ms, never completing it)
/// is disconnected at `handshake_timeout_secs` all the same: the timeout bounds the whole
/// handshake, not the gap between bytes.
#[tokio::test]
async fn a_client_trickling_its_handshake_is_disconnected() {
    let (inst, server) = unsealed("[limits]\nhandshake_timeout_secs = 3\n").await;
    let (mut rx, mut tx) = TcpStream::connect(addr(&server))
        .await
        .unwrap()
        .into_split();
    // A handshake record header announcing 512 bytes, then the body, slowly.
    let trickle = tokio::spawn(async move {
        if tx.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.is_err() {
            return;
        }
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..511 {
            interval.tick().await;
            if tx.write_all(&[0x01]).await.is_err() {
                return;
            }
        }
    });
    assert!(
        closed_within(&mut rx, EVENT_BOUND).await,
        "the trickling client is still connected"
    );
    trickle.abort();
    assert!(
        server_log(&inst).contains("TLS handshake timed out"),
        "{}",
        server_log(&inst)
    );
}

/// A client that completes the TLS handshake and then sends nothing (not even the HTTP/2
/// preface, so no ping can reach it) is disconnected after `idle_timeout_secs`.
#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_idle_timeout() {
    let (inst, server) =
        unsealed("[limits]\nidle_timeout_secs = 2\nkeepalive_interval_secs = 1\n").await;
    let mut s = tls_connect(&inst, &server).await.unwrap();
    assert!(
        closed_within(&mut s, EVENT_BOUND).await,
        "the idle connection is still open"
    );
    assert!(
        server_log(&inst).contains("idle connection closed"),
        "{}",
        server_log(&inst)
    );
}

/// A peer that speaks HTTP/2 but does not answer the server's keepalive PING is disconnected
/// after `keepalive_interval_secs` + `keepalive_timeout_secs` (here about 2 s; the idle
/// timeout, 600 s, cannot be what closes it).
#[tokio::test]
async fn a_peer_that_ignores_keepalive_pings_is_disconnected() {
    let (inst, server) = unsealed(
        "[limits]\nkeepalive_interval_secs = 1\nkeepalive_timeout_secs = 1\nidle_timeout_secs = 600\n",
    )
    .await;
    let mut s = tls_connect(&inst, &server).await.unwrap();
    h2_open(&mut s).await;
    let outcome = tokio::time::timeout(EVENT_BOUND, async {
        let mut pinged = false;
        loop {
            match read_frame(&mut s).await {
                Ok((PING, flags, _, _)) if flags & ACK == 0 => pinged = true,
                Ok(_) => {}
                Err(_) => return pinged,
            }
        }
    })
    .await;
    assert_eq!(
        outcome,
        Ok(true),
        "expected a PING, then the connection closed"
    );
}

/// `max_connections` (2 here) bounds open connections: beyond it a new connection is closed
/// before any TLS answer, a warning naming the setting is logged, and once a connection
/// closes a real client is served again.
#[tokio::test]
async fn connections_beyond_max_connections_are_refused_until_one_closes() {
    let (inst, server) = unsealed("[limits]\nmax_connections = 2\n").await;
    // The harness's own clients may still hold slots until the server sees them close, so
    // fill the slots by retrying until two connections of ours are established.
    let mut held = Vec::new();
    let fill = async {
        while held.len() < 2 {
            if let Ok(s) = tls_connect(&inst, &server).await {
                held.push(s);
            }
        }
    };
    tokio::time::timeout(EVENT_BOUND, fill)
        .await
        .expect("could not open two connections");

    // Full: a raw handshake and a real client both fail.
    assert!(tls_connect(&inst, &server).await.is_err());
    // kms-client connects eagerly; should it not, its first call must fail instead.
    if let Ok(c) = Client::connect(&server.options(&inst.pki.client("client"))).await {
        c.status().await.unwrap_err();
    }
    let log = server_log(&inst);
    assert!(
        log.contains("connection limit reached") && log.contains("max_connections"),
        "{log}"
    );

    // One closes: a real client is served again (once the server has seen the close).
    drop(held.pop());
    let served = tokio::time::timeout(EVENT_BOUND, async {
        loop {
            if let Ok(c) = Client::connect(&server.options(&inst.pki.client("client"))).await
                && let Ok(st) = c.status().await
            {
                return st;
            }
        }
    })
    .await
    .expect("no client served after a connection closed");
    assert!(!served.sealed);
}

/// A `[limits]` section that cannot work stops the server at start with a message naming
/// the field; an unknown key is refused too.
#[test]
fn impossible_limits_are_refused_at_start() {
    for (extra, expected) in [
        ("[limits]\nmax_connections = 0\n", "max_connections"),
        ("[limits]\nmax_message_bytes = 1000\n", "max_message_bytes"),
        (
            "[limits]\nidle_timeout_secs = 30\nkeepalive_interval_secs = 60\n",
            "idle_timeout_secs",
        ),
        ("[limits]\nmax_conections = 10\n", "max_conections"),
        (
            "[limits]\nidle_timeout_secs = 9223372036854775807\n",
            "idle_timeout_secs must be at most",
        ),
    ] {
        let inst = Installation::with_config(extra);
        let out = std::process::Command::new(bin("kms-server"))
            .arg("--config")
            .arg(inst.root.path().join("config.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: started");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}
