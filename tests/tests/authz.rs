//! Access control through the real server: principals from client certificates, the example
//! policies, deny by default, reload.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_tests::{Installation, start_unsealed};
use tonic::Code;

/// Ok, or the gRPC code of the refusal.
fn code<T>(r: Result<T, ClientError>) -> Result<T, Code> {
    r.map_err(|e| match e {
        ClientError::Status(s) => {
            if s.code() == Code::PermissionDenied {
                assert!(s.message().contains(" may not "), "{}", s.message());
            }
            s.code()
        }
        other => panic!("expected a gRPC status, got {other}"),
    })
}

async fn create(c: &Client, name: &str) -> Result<pb::Key, Code> {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    code(c.call(c.key_admin().create_key(req)).await)
}

async fn get(c: &Client, name: &str) -> Result<pb::Key, Code> {
    code(
        c.call(
            c.key_admin()
                .get_key(pb::GetKeyRequest { name: name.into() }),
        )
        .await,
    )
}

async fn list(c: &Client) -> Result<pb::ListKeysResponse, Code> {
    code(
        c.call(c.key_admin().list_keys(pb::ListKeysRequest::default()))
            .await,
    )
}

async fn rotate(c: &Client, name: &str) -> Result<pb::Key, Code> {
    code(
        c.call(
            c.key_admin()
                .rotate_key(pb::RotateKeyRequest { name: name.into() }),
        )
        .await,
    )
}

async fn enc(c: &Client, key: &str) -> Result<Vec<u8>, Code> {
    code(c.encrypt(key, b"m".to_vec(), HashMap::new()).await).map(|r| r.ciphertext)
}

async fn dec(c: &Client, ct: &[u8]) -> Result<Vec<u8>, Code> {
    code(c.decrypt(ct.to_vec(), HashMap::new()).await).map(|r| r.plaintext)
}

async fn random(c: &Client) -> Result<pb::GenerateRandomResponse, Code> {
    code(
        c.call(
            c.crypto()
                .generate_random(pb::GenerateRandomRequest { length: 8 }),
        )
        .await,
    )
}

const DENIED: Result<(), Code> = Err(Code::PermissionDenied);

/// Principals × operations × keys against the example policies in `policies/`: every case
/// allowed or denied as the files say; a denial is PERMISSION_DENIED naming the principal,
/// the operation and the key. [SNC 9.2/9.3: named identities and roles; deny by default]
#[tokio::test]
async fn example_policies_table() {
    let inst = Installation::new();
    inst.use_example_policies();
    let mut share = None;
    // Init, Unseal and Status need no grant: the test operator has none in these policies.
    let server = start_unsealed(&inst, &mut share).await;
    let admin = server.client_as(&inst.pki, "admin").await;
    let service = server.client_as(&inst.pki, "service").await;
    let auditor = server.client_as(&inst.pki, "auditor").await;
    let officer = server.client_as(&inst.pki, "officer").await;
    let nobody = server.client_as(&inst.pki, "other").await;
    let ok = Ok(());

    // Administrators manage keys, but do not use them (separation of duties).
    assert_eq!(create(&admin, "app/orders").await.map(drop), ok);
    assert_eq!(create(&admin, "app/escrow/vault").await.map(drop), ok);
    assert_eq!(create(&admin, "infra/db").await.map(drop), ok);
    assert_eq!(get(&admin, "app/orders").await.map(drop), ok);
    assert_eq!(rotate(&admin, "app/orders").await.map(drop), ok);
    assert_eq!(list(&admin).await.map(|l| l.keys.len()), Ok(3));
    assert_eq!(enc(&admin, "app/orders").await.map(drop), DENIED);
    assert_eq!(random(&admin).await.map(drop), DENIED);
    assert_eq!(code(admin.seal().await).map(drop), DENIED);

    // Services use app/** keys only, and may not decrypt under app/escrow/** (explicit deny).
    let ct = enc(&service, "app/orders").await.unwrap();
    assert_eq!(dec(&service, &ct).await.unwrap(), b"m");
    let escrow = enc(&service, "app/escrow/vault").await.unwrap();
    assert_eq!(dec(&service, &escrow).await.map(drop), DENIED);
    assert_eq!(enc(&service, "infra/db").await.map(drop), DENIED);
    assert_eq!(create(&service, "app/new").await.map(drop), DENIED);
    assert_eq!(get(&service, "app/orders").await.map(drop), DENIED);
    assert_eq!(rotate(&service, "app/orders").await.map(drop), DENIED);
    assert_eq!(random(&service).await.map(drop), ok);
    let dk = code(
        service
            .generate_data_key("app/orders", HashMap::new())
            .await,
    );
    assert!(dk.is_ok());
    assert_eq!(
        code(service.generate_data_key("infra/db", HashMap::new()).await).map(drop),
        DENIED
    );

    // Auditors read and list, nothing else.
    assert_eq!(get(&auditor, "infra/db").await.map(drop), ok);
    assert_eq!(list(&auditor).await.map(|l| l.keys.len()), Ok(3));
    assert_eq!(enc(&auditor, "app/orders").await.map(drop), DENIED);
    assert_eq!(dec(&auditor, &ct).await.map(drop), DENIED);
    assert_eq!(rotate(&auditor, "app/orders").await.map(drop), DENIED);

    // Someone with a valid certificate but no rule gets nothing.
    assert_eq!(get(&nobody, "app/orders").await.map(drop), DENIED);
    assert_eq!(list(&nobody).await.map(drop), DENIED);
    assert_eq!(enc(&nobody, "app/orders").await.map(drop), DENIED);
    assert_eq!(dec(&nobody, &ct).await.map(drop), DENIED);
    assert_eq!(code(nobody.rotate_barrier().await).map(drop), DENIED);
    assert_eq!(code(nobody.seal().await).map(drop), DENIED);

    // The message names principal, operation and key.
    let ClientError::Status(s) = service
        .encrypt("infra/db", b"m".to_vec(), HashMap::new())
        .await
        .unwrap_err()
    else {
        panic!()
    };
    assert!(
        s.message().contains("spiffe://kms.dev/service"),
        "{}",
        s.message()
    );
    assert!(
        s.message().contains("encrypt") && s.message().contains("infra/db"),
        "{}",
        s.message()
    );

    // Officers run the barrier and the seal, and nothing on keys.
    assert_eq!(create(&officer, "x").await.map(drop), DENIED);
    assert_eq!(code(officer.rotate_barrier().await).map(drop), ok);
    assert_eq!(code(officer.seal().await).map(drop), ok);
}

async fn reload(c: &Client) -> Result<pb::ReloadPoliciesResponse, ClientError> {
    c.call(
        kms_client::proto::policy_client::PolicyClient::new(c.channel())
            .reload(pb::ReloadPoliciesRequest {}),
    )
    .await
}

/// Reload: a broken file is refused with file and line and the old policies stay in force; a
/// new grant takes effect without a restart; a separation-of-duties violation is refused.
/// [SNC 9.3: incompatible rights refused at grant time]
#[tokio::test]
async fn reload_keeps_old_policies_on_error_and_applies_new_grants() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let op = server.client().await;
    let other = server.client_as(&inst.pki, "other").await;
    create(&op, "k").await.unwrap();
    assert_eq!(get(&other, "k").await.map(drop), DENIED);

    let dir = inst.policies_dir();
    std::fs::write(
        dir.join("zz-broken.toml"),
        "[[rule]]\nid = \"x\"\neffect = \"allow\"\nprincipals = [\n",
    )
    .unwrap();
    let ClientError::Status(s) = reload(&op).await.unwrap_err() else {
        panic!()
    };
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("zz-broken.toml:"), "{}", s.message());
    assert!(s.message().contains("unchanged"), "{}", s.message());
    // Old policy still in force.
    enc(&op, "k").await.unwrap();
    std::fs::remove_file(dir.join("zz-broken.toml")).unwrap();

    std::fs::write(
        dir.join("other.toml"),
        "[[rule]]\nid = \"other-read\"\neffect = \"allow\"\nprincipals = [\"spiffe://kms.test/other\"]\noperations = [\"read\"]\nkeys = [\"**\"]\n",
    )
    .unwrap();
    assert!(reload(&op).await.unwrap().rules >= 2);
    assert_eq!(get(&other, "k").await.map(drop), Ok(()));

    // Granting `other` both key administration and key use breaks separation of duties.
    std::fs::write(
        dir.join("sod.toml"),
        "[[separation_of_duties]]\nid = \"admin-vs-use\"\ngroups = [[\"create\"], [\"encrypt\"]]\nexempt = [\"spiffe://kms.test/operator\"]\n\n[[rule]]\nid = \"other-both\"\neffect = \"allow\"\nprincipals = [\"spiffe://kms.test/other\"]\noperations = [\"create\", \"encrypt\"]\nkeys = [\"**\"]\n",
    )
    .unwrap();
    let ClientError::Status(s) = reload(&op).await.unwrap_err() else {
        panic!()
    };
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("spiffe://kms.test/other"),
        "{}",
        s.message()
    );
    assert_eq!(create(&other, "k2").await.map(drop), DENIED);
    // The same refusal through the CLI: exit 1, one line naming the problem.
    let out = server.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("separation of duties"));
    std::fs::remove_file(dir.join("sod.toml")).unwrap();
    let out = server.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reload RPC itself needs a grant.
    assert_eq!(code(reload(&other).await).map(drop), DENIED);
}

/// The server refuses to start with a broken policy set, naming the file and line.
#[test]
fn broken_policies_stop_the_server_at_start() {
    let inst = Installation::new();
    std::fs::write(inst.policies_dir().join("bad.toml"), "[[rule]]\nid = \"x\"\neffect = \"maybe\"\nprincipals = [\"a\"]\noperations = [\"read\"]\nkeys = [\"**\"]\n").unwrap();
    let out = std::process::Command::new(kms_tests::bin("kms-server"))
        .arg("--config")
        .arg(inst.root.path().join("config.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// SIGHUP reloads the policies like the RPC does (waits, bounded, for the signal to land).
#[tokio::test]
async fn sighup_reloads_policies() {
    let inst = Installation::new();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let op = server.client().await;
    let other = server.client_as(&inst.pki, "other").await;
    create(&op, "k").await.unwrap();
    assert_eq!(get(&other, "k").await.map(drop), DENIED);
    std::fs::write(
        inst.policies_dir().join("other.toml"),
        "[[rule]]\nid = \"other-read\"\neffect = \"allow\"\nprincipals = [\"spiffe://kms.test/other\"]\noperations = [\"read\"]\nkeys = [\"**\"]\n",
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(&other, "k").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the policies"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
