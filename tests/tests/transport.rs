//! Transport security: TLS 1.3 only, a client certificate from the configured CA required by

// Test helpers panic on unexpected failure by design.
#![allow(clippy::unwrap_used)]
//! every service; health and reflection served.

use std::sync::Arc;

use kms_tests::{Installation, Pki, Server, init, rustls_client, unseal_with};
use rustls_pki_types::ServerName;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(
    server: &Server,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Option<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .ok()
}

/// Whether any of Operator, Health and Reflection gives an answer on this channel.
async fn any_service_answers(ch: Option<Channel>) -> bool {
    let Some(ch) = ch else { return false };
    let op = kms_proto::v1::operator_client::OperatorClient::new(ch.clone())
        .status(kms_proto::v1::StatusRequest {})
        .await;
    let health = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let refl = list_services_v1alpha(ch).await;
    op.is_ok() || health.is_ok() || refl.is_ok()
}

async fn list_services_v1alpha(ch: Channel) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let resp = stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("no response"))?;
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        _ => Err(tonic::Status::unknown("unexpected reflection response")),
    }
}

/// No client certificate, or one from a foreign CA: no service answers.
/// [SNC 9.6: authentication before any other interaction]
#[tokio::test]
async fn clients_without_a_trusted_certificate_get_no_answer() {
    let inst = Installation::new();
    let server = inst.start();
    // The control: the right certificate gets answers.
    let good = inst.pki.client("client");
    assert!(
        any_service_answers(channel(&server, &inst.pki.ca(), Some((&good.cert, &good.key))).await)
            .await
    );

    assert!(!any_service_answers(channel(&server, &inst.pki.ca(), None).await).await);

    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Pki::generate(foreign_dir.path());
    let f = foreign.client("client");
    assert!(
        !any_service_answers(channel(&server, &inst.pki.ca(), Some((&f.cert, &f.key))).await).await
    );
}

/// A client certificate listed in the configured CRL is refused during the handshake: no
/// service answers. [ANSSI TLS guide via SNC 10.2.c: revoked certificates refused, hard fail]
#[tokio::test]
async fn revoked_client_certificate_is_refused() {
    let inst = Installation::new();
    let server = inst.start();
    let good = inst.pki.client("client");
    assert!(
        any_service_answers(channel(&server, &inst.pki.ca(), Some((&good.cert, &good.key))).await)
            .await
    );
    let revoked = inst.pki.client("revoked");
    assert!(
        !any_service_answers(
            channel(&server, &inst.pki.ca(), Some((&revoked.cert, &revoked.key))).await
        )
        .await
    );
}

async fn handshake(
    server: &Server,
    cfg: rustls::ClientConfig,
) -> std::io::Result<rustls::ProtocolVersion> {
    let addr = server.addr.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(tls.get_ref().1.protocol_version().unwrap())
}

/// TLS 1.2 is refused; TLS 1.3 is negotiated. [ANSSI TLS guide via SNC 10.2.c: TLS 1.3 preferred]
#[tokio::test]
async fn only_tls13_is_accepted() {
    let inst = Installation::new();
    let server = inst.start();
    let v = handshake(
        &server,
        rustls_client(&inst, &[&rustls::version::TLS13, &rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    assert!(
        handshake(&server, rustls_client(&inst, &[&rustls::version::TLS12]))
            .await
            .is_err()
    );
}

/// Health: the overall service is NOT_SERVING while sealed and SERVING once unsealed; the
/// Operator service is always SERVING (it is how the KMS gets unsealed). Reflection answers in
/// both v1alpha and v1.
#[tokio::test]
async fn health_follows_the_seal_and_reflection_lists_services() {
    let inst = Installation::new();
    let server = inst.start();
    let ch = server.client().await.channel();
    let status = |svc: &str| {
        let mut h = HealthClient::new(ch.clone());
        let svc = svc.to_string();
        async move {
            h.check(HealthCheckRequest { service: svc })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(status("").await, ServingStatus::NotServing);
    assert_eq!(status("kms.v1.Crypto").await, ServingStatus::NotServing);
    assert_eq!(status("kms.v1.KeyAdmin").await, ServingStatus::NotServing);
    assert_eq!(status("kms.v1.Operator").await, ServingStatus::Serving);
    let shares = init(&server, 1, 1).await;
    unseal_with(&server, &shares, &[1]).await;
    assert_eq!(status("").await, ServingStatus::Serving);
    assert_eq!(status("kms.v1.Crypto").await, ServingStatus::Serving);
    assert_eq!(status("kms.v1.KeyAdmin").await, ServingStatus::Serving);
    server.client().await.seal().await.unwrap();
    assert_eq!(status("").await, ServingStatus::NotServing);
    assert_eq!(status("kms.v1.Crypto").await, ServingStatus::NotServing);

    let services = list_services_v1alpha(ch.clone()).await.unwrap();
    assert!(
        services.iter().any(|s| s == "kms.v1.Operator"),
        "{services:?}"
    );
    assert!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "{services:?}"
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert!(format!("{resp:?}").contains("kms.v1.Operator"));
}
