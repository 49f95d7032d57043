//! The `kms.v1.Operator` gRPC service: thin glue from requests to [`Seal`].

use std::sync::Arc;
use tracing::Instrument as _;

use kms_proto::v1::operator_server::Operator;
use kms_proto::v1::{
    BackupChunk, BackupRequest, InitRequest, InitResponse, RekeyRequest, RekeyResponse,
    RotateBarrierRequest, RotateBarrierResponse, SealRequest, StatusRequest, StatusResponse,
    UnsealRequest, unseal_request,
};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use zeroize::Zeroize;

use crate::error::KmsError;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kms_core::policy::Operation as Op;

use crate::access::authz::Authz;
use crate::access::mfa::Mfa;
use crate::access::principal;
use crate::keystore::Keystore;
use crate::seal::{NewShares, Seal, SealStatus};

pub struct OperatorService {
    seal: Arc<Seal>,
    keystore: Arc<Keystore>,
    mfa: Arc<Mfa>,
    authz: Arc<Authz>,
    health: HealthReporter,
    limiter: UnsealLimiter,
    /// One backup at a time: each holds a copy of the whole store in memory until sent.
    backups: Arc<tokio::sync::Semaphore>,
}

/// Invalid shares in a row from one address before it is locked out.
const UNSEAL_MAX_FAILURES: u32 = 5;
/// How long an address is locked out after too many invalid shares.
const UNSEAL_LOCKOUT: Duration = Duration::from_secs(60);

/// Rate limit on Unseal per peer address: after [`UNSEAL_MAX_FAILURES`] invalid shares in a
/// row, the address is refused for [`UNSEAL_LOCKOUT`] (SNC 9.5.b). A valid share resets it.
#[derive(Default)]
struct UnsealLimiter {
    /// Per peer: invalid shares in a row, and the end of its lockout if locked.
    peers: std::sync::Mutex<HashMap<Option<IpAddr>, PeerFailures>>,
}

type PeerFailures = (u32, Option<Instant>);

impl UnsealLimiter {
    fn check(&self, peer: Option<IpAddr>) -> Result<(), KmsError> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, Some(until))) = peers.get(&peer) {
            let now = Instant::now();
            if now < *until {
                return Err(KmsError::ResourceExhausted(format!(
                    "too many invalid shares from this address: unseal refused for {} s more",
                    (*until - now).as_secs() + 1
                )));
            }
        }
        Ok(())
    }

    fn failed(&self, peer: Option<IpAddr>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = peers.entry(peer).or_insert((0, None));
        entry.0 += 1;
        if entry.0 >= UNSEAL_MAX_FAILURES {
            entry.1 = Some(Instant::now() + UNSEAL_LOCKOUT);
            entry.0 = 0;
            tracing::warn!(?peer, "unseal locked out after repeated invalid shares");
        }
    }

    fn succeeded(&self, peer: Option<IpAddr>) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }
}

/// The services that need the KMS unsealed; health reports them NOT_SERVING while sealed.
const DATA_SERVICES: [&str; 3] = ["", "kms.v1.Crypto", "kms.v1.KeyAdmin"];

/// Sets the health of the overall server ("") and the data services from the seal state.
/// "kms.v1.Operator" is always SERVING: it is how the KMS gets unsealed.
pub async fn publish_health(health: &HealthReporter, sealed: bool) {
    let status = if sealed {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    for service in DATA_SERVICES {
        health.set_service_status(service, status).await;
    }
    health
        .set_service_status("kms.v1.Operator", ServingStatus::Serving)
        .await;
}

impl OperatorService {
    pub fn new(
        seal: Arc<Seal>,
        keystore: Arc<Keystore>,
        mfa: Arc<Mfa>,
        authz: Arc<Authz>,
        health: HealthReporter,
    ) -> Self {
        Self {
            seal,
            keystore,
            mfa,
            authz,
            health,
            limiter: UnsealLimiter::default(),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Init, Unseal and Status need no grant (before init there are no keys; a share is its
    /// own authority); Seal, Rekey, RotateBarrier and Backup do.
    fn allow<T>(&self, req: &Request<T>, op: Op) -> Result<(), KmsError> {
        let who = principal::of(req)?;
        self.authz.check(&who, op, None, &BTreeMap::new())
    }

    /// After an unseal completes, loads the keys; if they cannot be loaded the KMS seals
    /// again (fail closed) and the error is returned. The load runs detached so a cancelled
    /// Unseal call cannot leave the KMS unsealed without its keys.
    async fn after_unseal(&self, s: SealStatus) -> Result<SealStatus, KmsError> {
        if s.sealed || self.keystore.check_unsealed().is_ok() {
            return Ok(s);
        }
        let (seal, keystore, mfa) = (self.seal.clone(), self.keystore.clone(), self.mfa.clone());
        // In the request's span, so its log lines carry the request id (docs/logging.md).
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let loaded = match keystore.load().await {
                Ok(_) => mfa.load().await,
                Err(e) => Err(e),
            };
            if let Err(e) = loaded {
                tracing::error!(error = %e, "keys could not be loaded after unseal; sealing again");
                keystore.clear();
                seal.seal().await?;
                return Err(e);
            }
            Ok(())
        }));
        task.await
            .map_err(|e| KmsError::Internal(format!("key load task failed: {e}")))??;
        // Read the state again: a Seal may have come in meanwhile.
        Ok(self.seal.status().await)
    }

    /// Publishes the seal state to health, then builds the response.
    async fn answer(&self, s: SealStatus) -> Response<StatusResponse> {
        publish_health(&self.health, s.sealed).await;
        Response::new(self.status(s))
    }

    fn status(&self, s: SealStatus) -> StatusResponse {
        StatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            threshold: s.threshold,
            shares: s.shares,
            progress: s.progress,
            submitted_indexes: s.submitted_indexes,
            share_set_id: s.share_set_id,
            barrier_term: s.barrier_term,
            barrier_terms: s.barrier_terms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            storage: self.seal.storage_name().to_string(),
            installation_fingerprint: s.installation_fingerprint,
        }
    }
}

fn shares_out(s: NewShares) -> (Vec<String>, u32, String, String) {
    // The response must own plain Strings; the zeroizing originals are wiped on drop here.
    let shares = s.shares.iter().map(|z| z.to_string()).collect();
    (
        shares,
        u32::from(s.threshold),
        s.share_set_id.to_string(),
        s.fingerprint.to_string(),
    )
}

/// The chunks of a backup, produced by a task ([`crate::backup::send`]).
type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<BackupChunk, Status>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    type BackupStream = BackupStream;

    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let r = req.into_inner();
        let (shares, threshold, share_set_id, installation_fingerprint) =
            shares_out(self.seal.init(r.shares, r.threshold).await?);
        Ok(Response::new(InitResponse {
            shares,
            threshold,
            share_set_id,
            installation_fingerprint,
        }))
    }

    async fn unseal(
        &self,
        req: Request<UnsealRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let peer = principal::of(&req)?.peer_ip();
        let status = match req.into_inner().action {
            Some(unseal_request::Action::Share(mut share)) => {
                self.limiter.check(peer)?;
                let result = match self.seal.unseal(&share).await {
                    Ok(s) => self.after_unseal(s).await,
                    Err(e) => Err(e),
                };
                // The decoded request is a plain String: wipe it once used.
                share.zeroize();
                match &result {
                    Err(KmsError::InvalidArgument(_)) => self.limiter.failed(peer),
                    Ok(_) => self.limiter.succeeded(peer),
                    Err(_) => {}
                }
                result?
            }
            Some(unseal_request::Action::Reset(true)) => self.seal.reset().await?,
            _ => {
                return Err(KmsError::invalid(
                    "unseal needs a share, or reset = true to discard submitted shares",
                )
                .into());
            }
        };
        Ok(self.answer(status).await)
    }

    async fn seal(&self, req: Request<SealRequest>) -> Result<Response<StatusResponse>, Status> {
        self.allow(&req, Op::Seal)?;
        // Clear before and after: a key load racing with this Seal cannot install its keys
        // (load checks the keystore's epoch), and nothing loaded in between survives.
        self.keystore.clear();
        let status = self.seal.seal().await?;
        self.keystore.clear();
        self.mfa.clear();
        Ok(self.answer(status).await)
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.status(self.seal.status().await)))
    }

    async fn rekey(&self, req: Request<RekeyRequest>) -> Result<Response<RekeyResponse>, Status> {
        self.allow(&req, Op::Rekey)?;
        let mut r = req.into_inner();
        let result = self
            .seal
            .rekey(&r.current_shares, r.new_shares, r.new_threshold)
            .await;
        r.current_shares.iter_mut().for_each(Zeroize::zeroize);
        let new = result?;
        let (shares, threshold, share_set_id, installation_fingerprint) = shares_out(new);
        Ok(Response::new(RekeyResponse {
            shares,
            threshold,
            share_set_id,
            installation_fingerprint,
        }))
    }

    async fn rotate_barrier(
        &self,
        req: Request<RotateBarrierRequest>,
    ) -> Result<Response<RotateBarrierResponse>, Status> {
        self.allow(&req, Op::RotateBarrier)?;
        let (term, terms) = self.seal.rotate_barrier().await?;
        Ok(Response::new(RotateBarrierResponse { term, terms }))
    }

    /// Needs the `backup` grant and the KMS unsealed. The records are all sealed under the
    /// barrier, so a sealed KMS could hand them out safely; but a backup is an administrative
    /// act, and a sealed KMS is meant to do nothing but get unsealed.
    ///
    /// The snapshot is copied before the first byte is sent (writes wait only for the copy),
    /// so a slow client holds memory, not the store. Audited like every call: the record says
    /// whether the backup was allowed and started.
    async fn backup(
        &self,
        req: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.allow(&req, Op::Backup)?;
        self.keystore.check_unsealed()?;
        let Ok(permit) = self.backups.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "a backup is already running: try again when it has ended",
            ));
        };
        let records = self
            .seal
            .backend()
            .snapshot()
            .await
            .map_err(KmsError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(
            async move {
                crate::backup::send(records, tx).await;
                drop(permit);
            }
            .in_current_span(),
        );
        Ok(Response::new(BackupStream::new(rx)))
    }
}
