//! `kms.v1.KeyAdmin`: key creation, lifecycle changes, import and export, each checked by
//! `access` and run by the [`Keystore`].

use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument as _;

use kms_core::key::{KeyMeta, KeyState, Origin, Purpose, RevocationReason, VersionState};
use kms_proto::v1 as pb;
use kms_proto::v1::key_admin_server::KeyAdmin;
use tonic::{Request, Response};

use crate::access::principal::{self};
use crate::call::detail;
use crate::error::KmsError;
use crate::keystore::{Keystore, NewKeyFields};
use kms_core::policy::Operation as Op;

use super::keys::{KeysService, R, name, recipient};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

fn purpose(p: i32) -> Result<Purpose, KmsError> {
    match pb::KeyPurpose::try_from(p) {
        Ok(pb::KeyPurpose::EncryptDecrypt) | Ok(pb::KeyPurpose::Unspecified) => {
            Ok(Purpose::EncryptDecrypt)
        }
        Err(_) => Err(KmsError::invalid(format!(
            "unknown key purpose {p}: use encrypt-decrypt"
        ))),
    }
}

fn reason(r: i32) -> Result<RevocationReason, KmsError> {
    match pb::RevocationReason::try_from(r) {
        Ok(pb::RevocationReason::Superseded) => Ok(RevocationReason::Superseded),
        Ok(pb::RevocationReason::Compromised) => Ok(RevocationReason::Compromised),
        Ok(pb::RevocationReason::Cessation) => Ok(RevocationReason::Cessation),
        _ => Err(KmsError::invalid(
            "a revocation reason is required: superseded, compromised or cessation",
        )),
    }
}

fn to_i64(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

pub fn key_to_pb(m: &KeyMeta) -> pb::Key {
    let (state, deletion, destroyed) = match m.state {
        KeyState::Enabled => (pb::KeyState::Enabled, 0, 0),
        KeyState::Disabled => (pb::KeyState::Disabled, 0, 0),
        KeyState::PendingDeletion { deletion_at, .. } => {
            (pb::KeyState::PendingDeletion, to_i64(deletion_at), 0)
        }
        KeyState::Destroyed { at } => (pb::KeyState::Destroyed, 0, to_i64(at)),
    };
    let latest = m.latest();
    let versions = m
        .versions
        .iter()
        .map(|v| {
            let (state, reason, revoked) = match v.state {
                VersionState::Enabled if v.version == latest => (pb::VersionState::Active, 0, 0),
                VersionState::Enabled => (pb::VersionState::DecryptOnly, 0, 0),
                VersionState::Revoked { reason, at } => (
                    pb::VersionState::Revoked,
                    match reason {
                        RevocationReason::Superseded => pb::RevocationReason::Superseded,
                        RevocationReason::Compromised => pb::RevocationReason::Compromised,
                        RevocationReason::Cessation => pb::RevocationReason::Cessation,
                    } as i32,
                    to_i64(at),
                ),
                VersionState::Destroyed { .. } => (pb::VersionState::Destroyed, 0, 0),
            };
            pb::KeyVersion {
                version: v.version,
                state: state as i32,
                revocation_reason: reason,
                created_unix: to_i64(v.created),
                revoked_unix: revoked,
                encryptions: v.encryptions,
            }
        })
        .collect();
    pb::Key {
        name: m.name.to_string(),
        id: m.id.to_string(),
        purpose: match m.purpose {
            Purpose::EncryptDecrypt => pb::KeyPurpose::EncryptDecrypt as i32,
        },
        state: state as i32,
        latest_version: latest,
        min_decryption_version: m.min_decryption_version,
        rotation_period_seconds: m.rotation_period.unwrap_or(0),
        description: m.description.clone(),
        labels: m.labels.clone().into_iter().collect(),
        created_unix: to_i64(m.created),
        updated_unix: to_i64(m.updated),
        next_rotation_unix: m.next_rotation().map(to_i64).unwrap_or(0),
        deletion_unix: deletion,
        destroyed_unix: destroyed,
        versions,
        origin: match m.origin {
            Origin::Kms => pb::KeyOrigin::Kms,
            Origin::External => pb::KeyOrigin::External,
        } as i32,
        exportable: m.exportable,
    }
}

fn ok_key(m: Result<KeyMeta, KmsError>) -> R<pb::Key> {
    let m = m?;
    Ok(detail(
        Response::new(key_to_pb(&m)),
        m.name.as_str(),
        Some(m.latest()),
    ))
}

#[tonic::async_trait]
impl KeyAdmin for KeysService {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let period = (r.rotation_period_seconds > 0).then_some(r.rotation_period_seconds);
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let (n, p) = (name(&r.name)?, purpose(r.purpose)?);
        self.allow(&who, Op::Create, &n)?;
        let exportable = r.exportable;
        self.detached(move |ks| async move {
            ks.create(n, p, r.description, labels, period, exportable)
                .await
        })
        .await
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::Read, &n)?;
        self.keystore.follow_unknown_name(&n).await;
        ok_key(self.keystore.get(&n))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> R<pb::ListKeysResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        self.authz.check(&who, Op::List, None, &BTreeMap::new())?;
        // Only the keys this principal may list are shown (and counted for paging).
        let (keys, next) = self.keystore.list(&r.prefix, after, size as usize, |n| {
            self.authz.allows(&who, Op::List, n)
        })?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(key_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::Rotate, &n)?;
        self.detached(move |ks| async move { ks.rotate(&n).await })
            .await
    }

    async fn update_key_config(&self, req: Request<pb::UpdateKeyConfigRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let period = r.rotation_period_seconds.map(|p| (p > 0).then_some(p));
        let labels = (r.replace_labels || !r.labels.is_empty())
            .then(|| (r.labels.into_iter().collect(), r.replace_labels));
        let n = name(&r.name)?;
        self.allow(&who, Op::Configure, &n)?;
        self.detached(move |ks| async move {
            ks.update_config(&n, period, r.min_decryption_version, r.description, labels)
                .await
        })
        .await
    }

    async fn disable_key(&self, req: Request<pb::KeyNameRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::Disable, &n)?;
        self.detached(move |ks| async move { ks.disable(&n).await })
            .await
    }

    async fn enable_key(&self, req: Request<pb::KeyNameRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::Enable, &n)?;
        self.detached(move |ks| async move { ks.enable(&n).await })
            .await
    }

    async fn revoke_key_version(&self, req: Request<pb::RevokeKeyVersionRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let (n, why) = (name(&r.name)?, reason(r.reason)?);
        self.allow(&who, Op::Revoke, &n)?;
        self.detached(move |ks| async move { ks.revoke(&n, r.version, why).await })
            .await
    }

    async fn schedule_key_deletion(
        &self,
        req: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let days = r.waiting_period_days;
        let n = name(&r.name)?;
        self.allow(&who, Op::ScheduleDeletion, &n)?;
        self.detached(move |ks| async move { ks.schedule_deletion(&n, days).await })
            .await
    }

    async fn cancel_key_deletion(&self, req: Request<pb::KeyNameRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::CancelDeletion, &n)?;
        self.detached(move |ks| async move { ks.cancel_deletion(&n).await })
            .await
    }

    async fn get_import_parameters(
        &self,
        req: Request<pb::GetImportParametersRequest>,
    ) -> R<pb::ImportParameters> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let n = name(&req.into_inner().name)?;
        self.allow(&who, Op::Import, &n)?;
        self.keystore.follow_unknown_name(&n).await;
        let p = self.keystore.import_params(&n).await?;
        Ok(detail(
            Response::new(pb::ImportParameters {
                name: n.to_string(),
                wrapping_public_key_der: p.public_der,
                wrapping_public_key_pem: p.public_pem,
                import_token: p.token,
                expires_unix: to_i64(p.expires),
                wrapping_format: pb::WrapFormat::RsaOaepSha256AesKwp as i32,
            }),
            n.as_str(),
            None,
        ))
    }

    async fn import_key_material(&self, req: Request<pb::ImportKeyMaterialRequest>) -> R<pb::Key> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let n = name(&r.name)?;
        self.allow(&who, Op::Import, &n)?;
        self.keystore.follow_unknown_name(&n).await;
        let new = NewKeyFields {
            description: r.description,
            labels: r.labels.into_iter().collect(),
            exportable: r.exportable,
        };
        let (token, wrapped) = (r.import_token, r.wrapped_material);
        // Detached, as every key change (see `detached`); the audit record names the version
        // the material went to, which for a restore is not the latest.
        let ks = self.keystore.clone();
        let task = tokio::spawn(
            async move { ks.import_material(n, &token, wrapped, new).await }.in_current_span(),
        );
        let (m, v) = task
            .await
            .map_err(|e| KmsError::Internal(format!("key change task failed: {e}")))??;
        Ok(detail(
            Response::new(key_to_pb(&m)),
            m.name.as_str(),
            Some(v),
        ))
    }

    async fn export_key(&self, req: Request<pb::ExportKeyRequest>) -> R<pb::ExportKeyResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let n = name(&r.name)?;
        self.allow(&who, Op::Export, &n)?;
        self.keystore.follow_unknown_name(&n).await;
        // A key that can never be exported says so, whatever the recipient.
        self.keystore.check_exportable(&n)?;
        let (recipient, format) = recipient(r.recipient)?.ok_or_else(|| {
            KmsError::invalid(
                "a recipient is required: an RSA public key (PEM or DER, at least 3072 bits) or an age X25519 recipient (age1...)",
            )
        })?;
        let (v, wrapped) = self.keystore.export(&n, r.version, &recipient)?;
        Ok(detail(
            Response::new(pb::ExportKeyResponse {
                name: n.to_string(),
                version: v,
                wrapped_material: wrapped,
                format: format as i32,
            }),
            n.as_str(),
            Some(v),
        ))
    }
}

impl KeysService {
    /// Runs a key change to completion even if the caller goes away: tonic drops a request's
    /// future on cancel or deadline, and a change must never stop between its durable commit
    /// and the cache update.
    async fn detached<F, Fut>(&self, change: F) -> R<pb::Key>
    where
        F: FnOnce(Arc<Keystore>) -> Fut,
        Fut: std::future::Future<Output = Result<KeyMeta, KmsError>> + Send + 'static,
    {
        let task = tokio::spawn(change(self.keystore.clone()).in_current_span());
        ok_key(
            task.await
                .map_err(|e| KmsError::Internal(format!("key change task failed: {e}")))?,
        )
    }
}
