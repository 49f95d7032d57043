//! The `kms.v1.KeyAdmin` and `kms.v1.Crypto` gRPC services: request parsing at the edge,
//! then the [`Keystore`].

use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument as _;

use kms_core::ciphertext::EncryptionContext;
use kms_core::key::{KeyMeta, KeyState, Origin, Purpose, RevocationReason, VersionState};
use kms_core::keyname::KeyName;
use kms_core::wrap::{Recipient, RsaRecipient};
use kms_proto::v1 as pb;
use kms_proto::v1::crypto_server::Crypto;
use kms_proto::v1::key_admin_server::KeyAdmin;
use tonic::{Request, Response, Status};

use crate::audit_sink::detail;
use crate::authz::Authz;
use crate::error::KmsError;
use crate::keystore::{Keystore, NewKeyFields};
use crate::principal::{self, Principal};
use kms_core::policy::Operation as Op;

const MAX_RANDOM: u32 = 1024;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct KeysService {
    keystore: Arc<Keystore>,
    authz: Arc<Authz>,
}

impl KeysService {
    pub fn new(keystore: Arc<Keystore>, authz: Arc<Authz>) -> Self {
        Self { keystore, authz }
    }

    /// Checks a grant for a key operation that carries no encryption context.
    fn allow(&self, who: &Principal, op: Op, key: &KeyName) -> Result<(), KmsError> {
        self.authz
            .check(who, op, Some(key.as_str()), &BTreeMap::new())
    }
}

/// The request's context as the policy sees it.
fn cmap(h: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn name(s: &str) -> Result<KeyName, KmsError> {
    Ok(s.parse::<KeyName>()?)
}

fn context(map: std::collections::HashMap<String, String>) -> Result<EncryptionContext, KmsError> {
    Ok(EncryptionContext::new(map)?)
}

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

type R<T> = Result<Response<T>, Status>;

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

/// The recipient of a request, with the format its wrap will have; None when absent.
fn recipient(r: Option<pb::Recipient>) -> Result<Option<(Recipient, pb::WrapFormat)>, KmsError> {
    use pb::recipient::Recipient as R;
    let bad = |e: kms_core::wrap::WrapError| KmsError::invalid(e.to_string());
    Ok(match r.and_then(|r| r.recipient) {
        None => None,
        Some(R::RsaPublicKey(der)) => Some((
            Recipient::Rsa(RsaRecipient::parse(&der).map_err(bad)?),
            pb::WrapFormat::RsaOaepSha256AesKwp,
        )),
        Some(R::AgeRecipient(a)) => Some((Recipient::age(&a).map_err(bad)?, pb::WrapFormat::Age)),
    })
}

fn item_error(e: KmsError) -> pb::ItemError {
    let s = Status::from(e);
    pb::ItemError {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

#[tonic::async_trait]
impl Crypto for KeysService {
    async fn encrypt(&self, req: Request<pb::EncryptRequest>) -> R<pb::EncryptResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let key = name(&r.key)?;
        self.authz
            .check(&who, Op::Encrypt, Some(key.as_str()), &cmap(&r.context))?;
        self.keystore.follow_unknown_name(&key).await;
        let e = self
            .keystore
            .encrypt(&key, &r.plaintext, &context(r.context)?)?;
        let (k, v) = (e.key.to_string(), e.version);
        Ok(detail(
            Response::new(pb::EncryptResponse {
                ciphertext: e.ciphertext,
                key: k.clone(),
                version: v,
            }),
            &k,
            Some(v),
        ))
    }

    async fn decrypt(&self, req: Request<pb::DecryptRequest>) -> R<pb::DecryptResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        self.keystore
            .follow_unknown_ciphertexts([r.ciphertext.as_slice()])
            .await;
        self.check_ciphertext(&who, Op::Decrypt, &r.ciphertext, &r.context)?;
        let d = self.keystore.decrypt(&r.ciphertext, &context(r.context)?)?;
        let (k, v) = (d.key.to_string(), d.version);
        Ok(detail(
            Response::new(pb::DecryptResponse {
                // The response must own the bytes; the zeroizing buffer is wiped here.
                plaintext: d.plaintext.to_vec(),
                key: k.clone(),
                version: v,
            }),
            &k,
            Some(v),
        ))
    }

    async fn re_encrypt(&self, req: Request<pb::ReEncryptRequest>) -> R<pb::ReEncryptResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let dest = if r.destination_key.is_empty() {
            None
        } else {
            Some(name(&r.destination_key)?)
        };
        self.keystore
            .follow_unknown_ciphertexts([r.ciphertext.as_slice()])
            .await;
        if let Some(d) = &dest {
            self.keystore.follow_unknown_name(d).await;
        }
        let source = self.check_ciphertext(&who, Op::Reencrypt, &r.ciphertext, &r.context)?;
        // The destination needs the same grant (the source's key if none is named).
        if let Some(target) = dest.as_ref().or(source.as_ref()) {
            let dctx = if r.destination_context.is_empty() && !r.replace_context {
                cmap(&r.context)
            } else {
                cmap(&r.destination_context)
            };
            self.authz
                .check(&who, Op::Reencrypt, Some(target.as_str()), &dctx)?;
        }
        let ctx = context(r.context)?;
        let dest_ctx = if r.destination_context.is_empty() && !r.replace_context {
            ctx.clone()
        } else {
            context(r.destination_context)?
        };
        let (d, e) = self
            .keystore
            .reencrypt(&r.ciphertext, &ctx, dest.as_ref(), &dest_ctx)?;
        let (k, v) = (e.key.to_string(), e.version);
        Ok(detail(
            Response::new(pb::ReEncryptResponse {
                ciphertext: e.ciphertext,
                source_key: d.key.to_string(),
                source_version: d.version,
                key: k.clone(),
                version: v,
            }),
            &k,
            Some(v),
        ))
    }

    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> R<pb::GenerateDataKeyResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        let key = name(&r.key)?;
        self.authz.check(
            &who,
            Op::GenerateDataKey,
            Some(key.as_str()),
            &cmap(&r.context),
        )?;
        let to = recipient(r.recipient)?;
        self.keystore.follow_unknown_name(&key).await;
        let (dk, e) = self
            .keystore
            .generate_data_key(&key, &context(r.context)?)?;
        let (recipient_wrapped, recipient_format) = match &to {
            Some((rcpt, format)) => (
                rcpt.wrap(dk.expose())
                    .map_err(|e| KmsError::Internal(e.to_string()))?,
                *format as i32,
            ),
            None => (Vec::new(), 0),
        };
        let (k, v) = (e.key.to_string(), e.version);
        Ok(detail(
            Response::new(pb::GenerateDataKeyResponse {
                plaintext: if r.without_plaintext {
                    Vec::new()
                } else {
                    dk.expose().to_vec()
                },
                ciphertext: e.ciphertext,
                key: k.clone(),
                version: v,
                recipient_wrapped,
                recipient_format,
            }),
            &k,
            Some(v),
        ))
    }

    async fn batch_encrypt(
        &self,
        req: Request<pb::BatchEncryptRequest>,
    ) -> R<pb::BatchEncryptResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        self.check_batch(r.items.len())?;
        let key = name(&r.key)?;
        self.keystore.follow_unknown_name(&key).await;
        let results = r
            .items
            .into_iter()
            .map(|item| {
                let res = self
                    .authz
                    .check(&who, Op::Encrypt, Some(key.as_str()), &cmap(&item.context))
                    .and_then(|()| context(item.context))
                    .and_then(|c| self.keystore.encrypt(&key, &item.plaintext, &c));
                pb::BatchEncryptResult {
                    result: Some(match res {
                        Ok(e) => pb::batch_encrypt_result::Result::Ok(pb::EncryptResponse {
                            ciphertext: e.ciphertext,
                            key: e.key.to_string(),
                            version: e.version,
                        }),
                        Err(e) => pb::batch_encrypt_result::Result::Error(item_error(e)),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::BatchEncryptResponse { results }))
    }

    async fn batch_decrypt(
        &self,
        req: Request<pb::BatchDecryptRequest>,
    ) -> R<pb::BatchDecryptResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        let r = req.into_inner();
        self.check_batch(r.items.len())?;
        self.keystore
            .follow_unknown_ciphertexts(r.items.iter().map(|i| i.ciphertext.as_slice()))
            .await;
        let results = r
            .items
            .into_iter()
            .map(|item| {
                let res = self
                    .check_ciphertext(&who, Op::Decrypt, &item.ciphertext, &item.context)
                    .and_then(|_| context(item.context))
                    .and_then(|c| self.keystore.decrypt(&item.ciphertext, &c));
                pb::BatchDecryptResult {
                    result: Some(match res {
                        Ok(d) => pb::batch_decrypt_result::Result::Ok(pb::DecryptResponse {
                            plaintext: d.plaintext.to_vec(),
                            key: d.key.to_string(),
                            version: d.version,
                        }),
                        Err(e) => pb::batch_decrypt_result::Result::Error(item_error(e)),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::BatchDecryptResponse { results }))
    }

    async fn generate_random(
        &self,
        req: Request<pb::GenerateRandomRequest>,
    ) -> R<pb::GenerateRandomResponse> {
        self.keystore.check_unsealed()?;
        let who = principal::of(&req)?;
        self.authz
            .check(&who, Op::GenerateRandom, None, &BTreeMap::new())?;
        let n = req.into_inner().length;
        if n == 0 || n > MAX_RANDOM {
            return Err(
                KmsError::invalid(format!("length {n}: ask for 1 to {MAX_RANDOM} bytes")).into(),
            );
        }
        let mut buf = vec![0u8; n as usize];
        kms_core::fill_random(&mut buf).map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(Response::new(pb::GenerateRandomResponse { random: buf }))
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

    /// Checks `op` on the key a ciphertext names. An unknown key id is left to decryption,
    /// which refuses it with the opaque authentication error. Returns the key's name.
    fn check_ciphertext(
        &self,
        who: &Principal,
        op: Op,
        ciphertext: &[u8],
        ctx: &std::collections::HashMap<String, String>,
    ) -> Result<Option<KeyName>, KmsError> {
        let key = self.keystore.key_name_of(ciphertext);
        if let Some(k) = &key {
            self.authz.check(who, op, Some(k.as_str()), &cmap(ctx))?;
        }
        Ok(key)
    }

    fn check_batch(&self, n: usize) -> Result<(), KmsError> {
        let max = self.keystore.settings().max_batch_items;
        if n > max {
            return Err(KmsError::invalid(format!(
                "batch of {n} items, the limit is {max}: split it"
            )));
        }
        Ok(())
    }
}
