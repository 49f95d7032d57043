//! The KMS daemon as a library, so tests and the binary run the same code.
//!
//! The public interface is:
//! - [`Config`]: the TOML configuration file; [`Config::load`].
//! - [`load_tls`], [`open_audit`], [`open_seal`], then [`serve`]: serve on a bound listener
//!   until shutdown ([`shutdown_signal`]).
//! - [`dev`]: dev mode (generated PKI, auto init and unseal); [`backup`]: restore a backup.
//! - [`transport::pki`]: certificate generation used by dev mode and tests.
//!
//! The crate is one folder a concern, met by a request in this order:
//! - [`transport`]: the mTLS listener, connection limits, deadlines, the dev PKI.
//! - [`audit`]: the layer that records every call, the hash-chained log, shipping.
//! - `api`: one thin file per gRPC service (crypto, key admin, operator, policy, MFA, audit).
//! - [`access`]: the principal of a certificate, policy decisions, MFA.
//! - [`keystore`]: keys and versions; the cache Encrypt and Decrypt read.
//! - `seal`: init, unseal, rekey, barrier rotation: the root of the hierarchy.
//! - [`storage`]: the backends (sled, PostgreSQL).
//! - [`ops`]: metrics, logging, process hardening.
//!
//! Imports run one way, with no cycle between folders (`scripts/module-graph.py
//! kms-server/src --folders` prints the graph): `api` may call `access`, `audit`, `keystore`,
//! `seal` and `storage`; `transport` calls `access` (to name a certificate's principal) and
//! `keystore` (key settings bound the message size); `audit` calls `keystore` and `seal` (the
//! context HMAC key, the sealed head); `access` calls `keystore`, `seal` and `storage`, never
//! `audit`, `api` or `transport`; `keystore` calls `seal`; `seal` calls `storage`; `storage`
//! calls nothing. What one call carries across folders (the peer, the audit slot and detail,
//! its log span) is in `call`, which imports nothing of the crate. `lib.rs`, `config.rs` and
//! `dev.rs` wire the folders together; `ops` reads the others' state for metrics.

#![forbid(unsafe_code)]

pub mod access;
mod api;
pub mod audit;
pub mod backup;
mod call;
mod config;
pub mod dev;
mod error;
pub mod keystore;
pub mod ops;
mod seal;
pub mod storage;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use access::authz::Authz;
pub use audit::AuditConfig;
pub use config::{Config, SealSettings, StorageConfig, TlsConfig};
pub use error::KmsError;
pub use seal::{Fingerprint, Seal};
pub use transport::LimitsConfig;

/// How long open connections may take to finish once shutdown starts.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the TLS files named in the configuration and builds the mTLS server configuration
/// (TLS 1.3 only, client certificate required). Errors name the file at fault.
pub fn load_tls(config: &Config) -> Result<rustls::ServerConfig, String> {
    transport::tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        &config.tls.client_ca,
        config.tls.crl.as_deref(),
    )
}

/// Opens the configured audit log (before anything is served: a log that cannot be opened
/// stops the server).
pub fn open_audit(config: &Config) -> Result<Arc<audit::AuditSink>, String> {
    if let Some(ship) = &config.audit.ship {
        audit::ship::check(ship)?;
    }
    audit::AuditSink::open(&config.audit).map(Arc::new)
}

/// Opens the configured storage and loads the seal configuration (sealed), pinned to
/// `[seal] installation` if set.
pub async fn open_seal(config: &Config) -> Result<Arc<Seal>, String> {
    let backend: Arc<dyn storage::Backend> = match &config.storage {
        StorageConfig::Sled { path } => {
            Arc::new(storage::SledBackend::open(path).map_err(|e| e.to_string())?)
        }
        // An unreachable database at start stops the server with the reason: an operator
        // error to see at once, not a node that starts and serves nothing.
        StorageConfig::Postgres(pg) => Arc::new(
            storage::PostgresBackend::connect(pg)
                .await
                .map_err(|e| format!("cannot open storage: {e}"))?,
        ),
    };
    let seal = Seal::load(backend)
        .await
        .map_err(|e| e.to_string())?
        .pinned(config.seal.installation);
    // The server still starts (status shows both, and the operator must see why): unseal,
    // rekey and init are what it refuses.
    if let Some(pin) = config.seal.installation {
        match seal.pin_mismatch().await {
            Some(e) => tracing::error!(error = %e, "this server will not unseal this store"),
            None => {
                tracing::info!(installation = %pin, "pinned to installation ([seal] installation)")
            }
        }
    }
    Ok(Arc::new(seal))
}

/// Serves every service on `listener` with mTLS until `shutdown` resolves.
///
/// Served: `kms.v1.Operator`, `kms.v1.KeyAdmin`, `kms.v1.Crypto`, `grpc.health.v1.Health`
/// ("", "kms.v1.Crypto" and "kms.v1.KeyAdmin" are NOT_SERVING while sealed and SERVING when
/// unsealed; "kms.v1.Operator" is always SERVING), and server reflection in `v1` and `v1alpha`.
///
/// After `shutdown` resolves, open connections get [`SHUTDOWN_GRACE`] to finish; then the
/// server stops anyway, so an idle client cannot hold a shutdown (or a restart) for ever.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    config: &Config,
    authz: Arc<Authz>,
    sink: Arc<audit::AuditSink>,
    seal: Arc<Seal>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    // On a shared store (several nodes), the longest the key cache serves unchecked.
    let staleness = match &config.storage {
        StorageConfig::Postgres(pg) => pg.max_staleness(),
        StorageConfig::Sled { .. } => std::time::Duration::from_secs(1),
    };
    let keystore = Arc::new(
        keystore::Keystore::new(seal.clone(), config.keys.clone()).with_max_staleness(staleness),
    );
    // Two nodes with one name would write one audit head record and make their logs
    // indistinguishable: the name is held (as a cluster lock) while this node runs.
    let _node_name = if seal.backend().shared() {
        let lock = format!("node/{}", config.audit.node);
        match seal.backend().try_lock(&lock).await {
            Ok(Some(guard)) => Some(guard),
            Ok(None) => {
                return Err(format!(
                    "another kms-server node named {:?} ([audit] node) is connected to this \
                     database: give every node its own name",
                    config.audit.node
                ));
            }
            Err(e) => return Err(format!("cannot register this node's name: {e}")),
        }
    } else {
        None
    };
    sink.attach_keystore(keystore.clone());
    let mfa = Arc::new(access::mfa::Mfa::new(seal.clone()));
    authz.attach_mfa(mfa.clone());
    if !seal.status().await.sealed {
        keystore
            .load()
            .await
            .map_err(|e| format!("cannot load keys: {e}"))?;
        mfa.load()
            .await
            .map_err(|e| format!("cannot load MFA enrolments: {e}"))?;
    }
    // --- metrics (docs/metrics.md): its own plain-HTTP listener, and a layer counting calls.
    let request_metrics = ops::metrics::Metrics::new();
    let metrics_server = ops::metrics::bind(&config.metrics).await?.map(|l| {
        let sources = Arc::new(ops::metrics::Sources {
            metrics: request_metrics.clone(),
            seal: seal.clone(),
            keystore: keystore.clone(),
            audit: sink.clone(),
        });
        tokio::spawn(ops::metrics::serve(l, sources))
    });
    // --- end metrics
    let reloader = tokio::spawn(reload_on_sighup(authz.clone()));
    let head_sealer = tokio::spawn(seal_audit_head(sink.clone(), seal.clone()));
    let shipper = config
        .audit
        .ship
        .clone()
        .map(|s| tokio::spawn(audit::ship::run(s, config.audit.path.clone())));
    let scheduler = tokio::spawn(run_scheduler(
        keystore.clone(),
        std::time::Duration::from_secs(config.keys.scheduler_interval_secs.max(1)),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    // Health changes are published by the Operator service before it answers, so a client that
    // saw "unsealed" never then reads a stale NOT_SERVING.
    api::operator::publish_health(&health, seal.status().await.sealed).await;
    let follower = seal.backend().shared().then(|| {
        tokio::spawn(follow_store(
            keystore.clone(),
            seal.clone(),
            mfa.clone(),
            authz.clone(),
            health.clone(),
            staleness,
        ))
    });

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kms_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;

    let limits = &config.limits;
    let max_message = limits.max_message_bytes;
    let operator =
        kms_proto::v1::operator_server::OperatorServer::new(api::operator::OperatorService::new(
            seal.clone(),
            keystore.clone(),
            mfa.clone(),
            authz.clone(),
            health,
        ))
        .max_decoding_message_size(max_message);

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    warn_if_few_files(limits.max_connections);
    // The limits of [limits] (docs/limits.md): each bounds what one client can hold.
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        // Outermost, so it sees what the client sees (deadline and audit refusals included).
        .layer(ops::metrics::MetricsLayer::new(request_metrics))
        // Outside the audit layer, as a client's RST_STREAM is: see deadline.rs.
        .layer(transport::deadline::DeadlineLayer::new(
            limits.request_timeout(),
        ))
        .layer(audit::AuditLayer::new(sink.clone()))
        .add_service(health_service.max_decoding_message_size(max_message))
        .add_service(reflection_v1.max_decoding_message_size(max_message))
        .add_service(reflection_v1alpha.max_decoding_message_size(max_message))
        .add_service(operator)
        .add_service(
            kms_proto::v1::key_admin_server::KeyAdminServer::new(api::KeysService::new(
                keystore.clone(),
                authz.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            kms_proto::v1::audit_server::AuditServer::new(api::audit::AuditService::new(
                sink.clone(),
                seal.clone(),
                authz.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            kms_proto::v1::mfa_server::MfaServer::new(api::mfa::MfaService::new(mfa.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            kms_proto::v1::policy_server::PolicyServer::new(api::policy::PolicyService::new(
                authz.clone(),
                seal.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            kms_proto::v1::crypto_server::CryptoServer::new(api::KeysService::new(
                keystore.clone(),
                authz.clone(),
            ))
            .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(transport::tls::incoming_with(listener, tls, limits), signal);
    let grace = async {
        match stopping_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("server error: {e}"))?,
        () = grace => tracing::warn!("connections still open after the shutdown grace period; closing them"),
    }
    // Drop every secret before returning.
    scheduler.abort();
    reloader.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Some(f) = follower {
        f.abort();
    }
    head_sealer.abort();
    if let Some(s) = shipper {
        s.abort();
    }
    // The last head, so a cut tail after this stop is visible.
    if let Err(e) = sink.seal_head(&seal).await {
        tracing::info!(error = %e, "audit head not sealed at shutdown");
    }
    keystore.clear();
    mfa.clear();
    let _ = seal.seal().await;
    Ok(())
}

/// Reloads the policies on every SIGHUP; a broken set is refused and logged, the old one
/// stays in force.
async fn reload_on_sighup(authz: Arc<Authz>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload policies with `kms-cli policy reload`");
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = authz.reload() {
            tracing::error!(error = %e, "policy reload refused; the previous policies stay in force");
        }
    }
}

/// Follows the changes other nodes commit to a shared store: at once when PostgreSQL notifies
/// one, and at least every quarter of the staleness bound (so a lost notification, or a
/// reconnection, costs at most that). Key changes go into the cache (`Keystore::catch_up`);
/// a changed seal configuration is reloaded (this node seals itself if a rekey elsewhere made
/// its root key stale), a policy reload made on another node reloads this node's policy
/// directory, and changed MFA enrolments are read again.
async fn follow_store(
    keystore: Arc<keystore::Keystore>,
    seal: Arc<Seal>,
    mfa: Arc<access::mfa::Mfa>,
    authz: Arc<Authz>,
    health: tonic_health::server::HealthReporter,
    staleness: std::time::Duration,
) {
    let poll = (staleness / 4).max(std::time::Duration::from_millis(25));
    let backend = seal.backend().clone();
    let mut failing = false;
    loop {
        tokio::select! {
            () = backend.changed() => {}
            () = tokio::time::sleep(poll) => {}
        }
        if let Err(e) = keystore.catch_up().await {
            if !failing {
                tracing::error!(error = %e, "cannot follow the changes of other nodes; this node refuses key use until it can (UNAVAILABLE)");
                failing = true;
                // Load balancers route around it meanwhile.
                api::operator::publish_health(&health, true).await;
            }
            continue;
        }
        if failing {
            tracing::warn!("following the changes of other nodes again; serving");
            failing = false;
            api::operator::publish_health(&health, seal.status().await.sealed).await;
        }
        for path in keystore.take_other_changes() {
            if path == seal::SEAL_PATH {
                // Reloaded by the catch-up; a rekey elsewhere may have sealed this node.
                if seal.status().await.sealed {
                    keystore.clear();
                    mfa.clear();
                    api::operator::publish_health(&health, true).await;
                }
            } else if path == access::authz::POLICY_RELOAD_PATH {
                match authz.reload() {
                    Ok(rules) => tracing::info!(rules, "policies reloaded (asked on another node)"),
                    Err(e) => {
                        tracing::error!(error = %e, "policy reload asked on another node refused; the previous policies stay in force")
                    }
                }
            } else if path.starts_with("mfa/") {
                match mfa.load().await {
                    Ok(()) | Err(KmsError::Sealed) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload MFA enrolments changed by another node")
                    }
                }
            }
        }
    }
}

/// Seals the audit chain's head into storage every 10 s while unsealed.
async fn seal_audit_head(sink: Arc<audit::AuditSink>, seal: Arc<Seal>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if seal.status().await.sealed {
            continue;
        }
        if let Err(e) = sink.seal_head(&seal).await {
            tracing::warn!(error = %e, "audit head not sealed");
        }
    }
}

/// Runs due rotations and destructions every `interval` while unsealed.
async fn run_scheduler(keystore: Arc<keystore::Keystore>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if keystore.check_unsealed().is_err() {
            continue;
        }
        if let Err(e) = keystore.run_scheduled(keystore::now_unix()).await {
            tracing::warn!(error = %e, "scheduler run failed");
        }
    }
}

/// Warns when `max_connections` open sockets could exhaust the process's open-file limit
/// (then accept fails before the limit is reached, and storage or the audit log may fail to
/// open a file).
fn warn_if_few_files(max_connections: usize) {
    // Files the server keeps open besides its connections: storage, audit log, stdio.
    const RESERVED: u64 = 64;
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(soft) = soft
        && soft < max_connections as u64 + RESERVED
    {
        tracing::warn!(
            max_connections,
            open_files_limit = soft,
            "[limits] max_connections is close to or above the open-file limit (ulimit -n): \
             raise the limit or lower max_connections"
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
