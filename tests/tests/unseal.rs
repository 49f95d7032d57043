//! Init, restart sealed, t-of-n unseal, bad shares, concurrent officers, rekey, rotation.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_tests::{Installation, cli_json, init, unseal_with};
use tonic::Code;

fn status_code(e: kms_client::ClientError) -> tonic::Status {
    match e {
        kms_client::ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// A 3-of-5 installation comes back sealed after every restart and any 3 shares unseal it.
/// [RègleGénérationCentralisée-1: the root secret is generated in the server and only shares leave]
#[tokio::test]
async fn init_restart_sealed_then_any_three_shares_unseal() {
    let inst = Installation::new();
    let server = inst.start();
    let out = server.cli(&[
        "--format",
        "json",
        "operator",
        "init",
        "--shares",
        "5",
        "--threshold",
        "3",
    ]);
    let v = cli_json(&out);
    let shares: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);
    assert_eq!(v["threshold"], 3);
    // Init leaves it sealed: officers must unseal.
    assert_eq!(
        cli_json(&server.cli(&["--format", "json", "operator", "status"]))["sealed"],
        true
    );
    drop(server);

    let server = inst.start();
    let st = cli_json(&server.cli(&["--format", "json", "operator", "status"]));
    assert_eq!(st["initialized"], true);
    assert_eq!(st["sealed"], true);
    assert_eq!(st["threshold"], 3);
    assert_eq!(st["shares"], 5);
    assert_eq!(st["progress"], 0);
    for (k, i) in [1usize, 3].iter().enumerate() {
        let st = cli_json(&server.cli(&["--format", "json", "operator", "unseal", &shares[i - 1]]));
        assert_eq!(st["sealed"], true);
        assert_eq!(st["progress"], k as u64 + 1);
    }
    // The last share through the no-echo prompt path (piped stdin).
    let st = cli_json(&server.cli_with_stdin(
        &["--format", "json", "operator", "unseal"],
        &format!("{}\n", shares[4]),
    ));
    assert_eq!(st["sealed"], false);
    drop(server);

    let server = inst.start();
    assert!(server.client().await.status().await.unwrap().sealed);
    unseal_with(&server, &shares, &[2, 4, 5]).await;
}

/// A mistyped share, a share of another installation and a duplicate are each refused at
/// once, named by index, and leave the progress unchanged; the right shares still unseal.
#[tokio::test]
async fn bad_shares_are_refused_by_index_and_progress_is_kept() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 5, 3).await;
    let other = Installation::new();
    let other_server = other.start();
    let foreign = init(&other_server, 5, 3).await;

    let client = server.client().await;
    assert_eq!(client.unseal(&shares[0]).await.unwrap().progress, 1);

    // One changed character: the CLI catches it locally (exit 2, nothing sent)...
    let mut typo = shares[1].clone().into_bytes();
    let pos = typo.len() - 20;
    typo[pos] = if typo[pos] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let out = server.cli(&["operator", "unseal", &typo]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("share 2") && err.contains("typo"), "{err}");
    // ...and the server refuses it too if sent directly.
    let s = status_code(client.unseal(&typo).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("share 2"), "{}", s.message());

    // A share of another installation.
    let s = status_code(client.unseal(&foreign[1]).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("share 2"), "{}", s.message());
    assert!(
        s.message().contains("another installation"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("progress unchanged: 1 of 3"),
        "{}",
        s.message()
    );

    // A duplicate.
    let s = status_code(client.unseal(&shares[0]).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("share 1 was already submitted"),
        "{}",
        s.message()
    );

    let st = client.status().await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 1);
    assert_eq!(st.submitted_indexes, vec![1]);

    assert!(client.unseal(&shares[2]).await.unwrap().sealed);
    assert!(!client.unseal(&shares[4]).await.unwrap().sealed);
}

/// Reset discards submitted shares; a seal erases the unsealed state and needs t shares again.
#[tokio::test]
async fn reset_and_seal() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    let client = server.client().await;
    assert_eq!(client.unseal(&shares[0]).await.unwrap().progress, 1);
    assert_eq!(client.unseal_reset().await.unwrap().progress, 0);
    unseal_with(&server, &shares, &[1, 2]).await;
    let st = cli_json(&server.cli(&["--format", "json", "operator", "seal"]));
    assert_eq!(st["sealed"], true);
    // Sealed: barrier rotation needs the keys, so it is refused with UNAVAILABLE.
    let s = status_code(client.rotate_barrier().await.unwrap_err());
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("sealed"), "{}", s.message());
    unseal_with(&server, &shares, &[3, 2]).await;
}

/// Two officers submit shares on two connections at the same time.
#[tokio::test]
async fn two_officers_on_two_connections_at_once() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    let a = server.client().await;
    let b = server.client().await;
    let (ra, rb) = tokio::join!(a.unseal(&shares[0]), b.unseal(&shares[2]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Whichever came second completed the unseal.
    assert!(!ra.sealed || !rb.sealed, "{ra:?} {rb:?}");
    assert!(!a.status().await.unwrap().sealed);
}

/// Rekey to 2-of-3: the old shares stop working, the new ones unseal after a restart.
#[tokio::test]
async fn rekey_replaces_shares() {
    let inst = Installation::new();
    let server = inst.start();
    let old = init(&server, 5, 3).await;
    let client = server.client().await;
    // Too few current shares: refused, nothing changed.
    let s = status_code(client.rekey(old[..2].to_vec(), 3, 2).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut args = vec![
        "--format",
        "json",
        "operator",
        "rekey",
        "--shares",
        "3",
        "--threshold",
        "2",
    ];
    for s in &old[1..4] {
        args.push("--current-share");
        args.push(s);
    }
    let v = cli_json(&server.cli(&args));
    let new: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(new.len(), 3);
    assert_eq!(v["threshold"], 2);
    drop(server);

    let server = inst.start();
    let client = server.client().await;
    let st = client.status().await.unwrap();
    assert_eq!((st.shares, st.threshold), (3, 2));
    // Three old shares (a fourth and fifth would trip the unseal lockout for this address).
    for share in old.iter().take(3) {
        let s = status_code(client.unseal(share).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("before a rekey"), "{}", s.message());
    }
    assert_eq!(client.status().await.unwrap().progress, 0);
    unseal_with(&server, &new, &[3, 1]).await;
}

/// Barrier rotation adds terms; after a restart everything written under old terms is read.
#[tokio::test]
async fn rotate_barrier_then_restart_keeps_everything_readable() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    unseal_with(&server, &shares, &[1, 2]).await;
    let v = cli_json(&server.cli(&["--format", "json", "operator", "rotate-barrier"]));
    assert_eq!(v["term"], 2);
    let r = server.client().await.rotate_barrier().await.unwrap();
    assert_eq!((r.term, r.terms), (3, 3));
    drop(server);

    let server = inst.start();
    // Unseal opens the keyring and a record sealed under term 1.
    unseal_with(&server, &shares, &[2, 3]).await;
    let st = server.client().await.status().await.unwrap();
    assert_eq!((st.barrier_term, st.barrier_terms), (3, 3));
}

/// Init parameters outside 1 ≤ t ≤ n ≤ 32 (t ≥ 2 unless n = 1) are refused; init runs once.
#[tokio::test]
async fn init_parameters_are_checked_and_init_runs_once() {
    let inst = Installation::new();
    let server = inst.start();
    let client = server.client().await;
    for (n, t) in [(0, 0), (3, 4), (33, 2), (3, 1), (300, 2)] {
        let s = status_code(client.init(n, t).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument, "n={n} t={t}");
    }
    assert!(!client.status().await.unwrap().initialized);
    let shares = init(&server, 1, 1).await;
    let s = status_code(client.init(3, 2).await.unwrap_err());
    assert_eq!(s.code(), Code::AlreadyExists);
    unseal_with(&server, &shares, &[1]).await;
}

/// After five invalid shares in a row from one address, Unseal refuses that address for a
/// while, even with a valid share. [SNC 9.5.b: lock after repeated authentication failures]
#[tokio::test]
async fn repeated_invalid_shares_lock_the_peer_out() {
    let inst = Installation::new();
    let server = inst.start();
    let shares = init(&server, 3, 2).await;
    let other = Installation::new();
    let other_server = other.start();
    let foreign = init(&other_server, 3, 2).await;
    let client = server.client().await;
    for _ in 0..5 {
        let s = status_code(client.unseal(&foreign[0]).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument);
    }
    let s = status_code(client.unseal(&shares[0]).await.unwrap_err());
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(
        s.message().contains("too many invalid shares"),
        "{}",
        s.message()
    );
    let st = client.status().await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 0);
}
