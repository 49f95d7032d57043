//! `kms.v1.Crypto`: Encrypt, Decrypt, ReEncrypt, data keys, batches and random bytes, each
//! checked by `access` before the [`Keystore`] touches a byte.

use std::collections::BTreeMap;

use kms_core::keyname::KeyName;
use kms_proto::v1 as pb;
use kms_proto::v1::crypto_server::Crypto;
use tonic::{Request, Response, Status};

use crate::access::principal::{self, Principal};
use crate::call::detail;
use crate::error::KmsError;
use kms_core::policy::Operation as Op;

use super::keys::{KeysService, R, cmap, context, name, recipient};

const MAX_RANDOM: u32 = 1024;

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
