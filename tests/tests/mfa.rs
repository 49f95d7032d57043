//! Admin MFA through the real server: a rule with `mfa = true` needs a valid TOTP code.

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]

use kms_client::proto as pb;
use kms_client::{Client, ClientError};
use kms_tests::{Installation, MFA_POLICY, base32_decode, start_unsealed};
use tonic::Code;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn create(c: &Client, name: &str) -> Result<(), tonic::Status> {
    let req = pb::CreateKeyRequest {
        name: name.into(),
        ..Default::default()
    };
    c.call(c.key_admin().create_key(req))
        .await
        .map(drop)
        .map_err(|e| match e {
            ClientError::Status(s) => s,
            other => panic!("{other}"),
        })
}

/// Without a code → refused; wrong code → refused; right code → allowed once (a replay is
/// refused); repeated wrong codes lock the principal out. [SNC 9.6: strong multi-factor
/// authentication for administration; SNC 9.5.b: lock after repeated failures]
#[tokio::test]
async fn mfa_rules_need_a_valid_totp_code() {
    let inst = Installation::new();
    std::fs::write(inst.policies_dir().join("mfa.toml"), MFA_POLICY).unwrap();
    let mut share = None;
    let server = start_unsealed(&inst, &mut share).await;
    let other = server.client_as(&inst.pki, "other").await;

    let s = create(&other, "mfa/a").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("second factor"), "{}", s.message());

    let enrolled = other
        .call(other.mfa().enroll(pb::EnrollMfaRequest {}))
        .await
        .unwrap();
    assert!(
        enrolled.otpauth_uri.starts_with("otpauth://totp/"),
        "{}",
        enrolled.otpauth_uri
    );
    let again = other
        .call(other.mfa().enroll(pb::EnrollMfaRequest {}))
        .await;
    assert!(
        matches!(again, Err(ClientError::Status(ref s)) if s.code() == Code::FailedPrecondition)
    );
    let secret = base32_decode(&enrolled.secret_base32);
    let code = format!("{:06}", kms_core::totp::code_at(&secret, now(), 6));
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let s = create(&other.with_totp(wrong).unwrap(), "mfa/a")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("wrong"), "{}", s.message());
    create(&other.with_totp(&code).unwrap(), "mfa/a")
        .await
        .unwrap();
    // The same code again is a replay.
    let s = create(&other.with_totp(&code).unwrap(), "mfa/b")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    // Wrong codes until the lockout (the replay above counted as one failure).
    for _ in 0..4 {
        let _ = create(&other.with_totp(wrong).unwrap(), "mfa/b")
            .await
            .unwrap_err();
    }
    let fresh = format!("{:06}", kms_core::totp::code_at(&secret, now() + 30, 6));
    let s = create(&other.with_totp(&fresh).unwrap(), "mfa/b")
        .await
        .unwrap_err();
    assert!(s.message().contains("locked out"), "{}", s.message());

    // Neither the codes nor the secret reach the audit log; the denials do.
    let log = std::fs::read_to_string(inst.root.path().join("audit.log")).unwrap();
    assert!(!log.contains(&format!("\"{code}\"")));
    assert!(!log.contains(&enrolled.secret_base32));
    assert!(log.contains("\"outcome\":\"denied\""));
    // The lockout is visible to auditors, with its reason.
    assert!(log.contains("locked out"), "lockout not in the audit log");
    // MFA does not widen a grant: outside the rule, still denied.
    let s = create(&other.with_totp(&fresh).unwrap(), "plain")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
}
