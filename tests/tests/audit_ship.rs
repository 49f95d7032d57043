//! Log shipping to a remote collector over TLS, with the local log as the spool.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_tests::{Installation, start_unsealed};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A TLS collector on `listener` that records the `seq` of every line it receives.
fn collector(
    inst: &Installation,
    listener: tokio::net::TcpListener,
    seen: Arc<Mutex<BTreeSet<u64>>>,
) -> tokio::task::JoinHandle<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = CertificateDer::pem_file_iter(inst.pki.dir.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(inst.pki.dir.join("server-key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Send our TLS 1.3 session tickets now, then read slowly: the shipper has
                // closed its side before we read a byte, with the tickets unread on its side
                // (it must drain them and wait for our close, not reset the connection).
                let mut tls = tls;
                let _ = tls.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut lines = tokio::io::BufReader::new(tls).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    seen.lock().unwrap().insert(v["seq"].as_u64().unwrap());
                }
            });
        }
    })
}

/// Waits (bounded) until the collector has every seq from 1 to `upto`.
async fn wait_for(seen: &Arc<Mutex<BTreeSet<u64>>>, upto: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if (1..=upto).all(|s| seen.lock().unwrap().contains(&s)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "collector missing records up to {upto}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The highest seq in the log and its rotated files.
fn last_seq(inst: &Installation) -> u64 {
    let mut max = 0;
    for entry in std::fs::read_dir(inst.root.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("audit.log") || name.ends_with(".shipped") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let seq = serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap();
            max = max.max(seq);
        }
    }
    max
}

/// Every record reaches the collector, in full, across log rotations; while it is down
/// nothing is lost: the local log (and its rotated files) is the spool and the shipper
/// catches up. [SNC 12.8: logs forwarded to a central store]
#[tokio::test]
async fn records_reach_the_collector_and_survive_its_outage() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inst = Installation::with_config(&format!(
        "[audit]\nmax_bytes = 4000\n[audit.ship]\naddr = \"{addr}\"\nserver_name = \"localhost\"\nca = \"tls/ca.pem\"\n"
    ));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let task = collector(&inst, listener, seen.clone());
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let c = server.client().await;
    for _ in 0..30 {
        c.status().await.unwrap();
    }
    wait_for(&seen, last_seq(&inst)).await;

    // The collector goes away; the KMS keeps serving and keeps its records.
    task.abort();
    let _ = task.await;
    for _ in 0..30 {
        c.status().await.unwrap();
    }
    let upto = last_seq(&inst);
    assert!(
        std::fs::read_dir(inst.root.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("audit.log.") && !n.ends_with(".shipped")
            })
            .count()
            >= 2,
        "the log should have rotated"
    );
    // It comes back on the same address: the shipper catches up.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _task = collector(&inst, listener, seen.clone());
    wait_for(&seen, upto).await;
}
