//! Rust client for the KMS: an mTLS connection and typed calls.
//!
//! [`envelope`]: streaming file encryption under a KMS data key (`docs/envelope-format.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), kms_client::ClientError> {
//! let client = kms_client::Client::connect(&kms_client::ConnectOptions::from_env()?).await?;
//! let status = client.status().await?;
//! println!("sealed: {}", status.sealed);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod envelope;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use kms_proto::v1 as proto;
use kms_proto::v1::crypto_client::CryptoClient;
use kms_proto::v1::key_admin_client::KeyAdminClient;
use kms_proto::v1::operator_client::OperatorClient;
use kms_proto::v1::{
    BackupChunk, BackupRequest, InitRequest, InitResponse, RekeyRequest, RekeyResponse,
    RotateBarrierRequest, RotateBarrierResponse, SealRequest, StatusRequest, StatusResponse,
    UnsealRequest, unseal_request,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Environment variables read by [`ConnectOptions::from_env`] (and written by `kms-server dev`).
pub const ENV_ADDR: &str = "KMS_ADDR";
pub const ENV_CA_CERT: &str = "KMS_CA_CERT";
pub const ENV_CLIENT_CERT: &str = "KMS_CLIENT_CERT";
pub const ENV_CLIENT_KEY: &str = "KMS_CLIENT_KEY";

/// Client errors. `Status` carries the server's gRPC status and message unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Missing or unreadable connection settings.
    #[error("{0}")]
    Config(String),
    /// No connection could be made (address, TLS handshake, certificates).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
}

fn code_name(code: tonic::Code) -> String {
    // "FailedPrecondition" → "failed precondition": friendlier in one-line CLI errors.
    let s = format!("{code:?}");
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// Where the server is and which certificates to use.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `https://host:port` (a bare `host:port` gets `https://` prepended).
    pub addr: String,
    /// CA certificate (PEM) that the server certificate must chain to.
    pub ca_cert: PathBuf,
    /// This client's certificate and key (PEM).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// TLS server name to verify, if not the host in `addr`.
    pub server_name: Option<String>,
}

impl ConnectOptions {
    /// Reads `KMS_ADDR`, `KMS_CA_CERT`, `KMS_CLIENT_CERT`, `KMS_CLIENT_KEY`.
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                ClientError::Config(format!(
                    "{name} is not set: pass it as a flag, or `source DATA_DIR/env` after `kms-server dev`"
                ))
            })
        };
        Ok(Self {
            addr: var(ENV_ADDR)?,
            ca_cert: var(ENV_CA_CERT)?.into(),
            client_cert: var(ENV_CLIENT_CERT)?.into(),
            client_key: var(ENV_CLIENT_KEY)?.into(),
            server_name: None,
        })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// A connected client. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    addr: String,
    totp: Totp,
}

/// Adds the TOTP code, when set, to every request (header `x-kms-totp`), for policy rules
/// that require a second factor.
#[derive(Clone, Default)]
pub struct Totp(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Totp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(code) = &self.0 {
            req.metadata_mut().insert("x-kms-totp", code.clone());
        }
        Ok(req)
    }
}

/// The channel as the generated clients see it: with the TOTP header added.
pub type Svc = tonic::service::interceptor::InterceptedService<Channel, Totp>;

impl Client {
    /// Connects with mTLS and completes the TLS handshake before returning.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let addr = if opts.addr.contains("://") {
            opts.addr.clone()
        } else {
            format!("https://{}", opts.addr)
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(
                &opts.ca_cert,
                "CA certificate",
            )?))
            .identity(Identity::from_pem(
                read(&opts.client_cert, "client certificate")?,
                read(&opts.client_key, "client key")?,
            ));
        if let Some(name) = &opts.server_name {
            tls = tls.domain_name(name.clone());
        }
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| connect_err(format!("bad address: {e}")))?
            .tls_config(tls)
            .map_err(|e| {
                ClientError::Config(format!(
                    "bad TLS settings (CA {}, certificate {}, key {}): {}",
                    opts.ca_cert.display(),
                    opts.client_cert.display(),
                    opts.client_key.display(),
                    error_chain(&e)
                ))
            })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        Ok(Self {
            channel,
            addr,
            totp: Totp::default(),
        })
    }

    /// The underlying channel, for services without a typed wrapper here (health, reflection).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A status the server sent stays `Status`; a failure below gRPC (TLS refused after
    /// connect, connection reset) becomes `Connect`, since no KMS answered.
    fn rpc_error(&self, s: tonic::Status) -> ClientError {
        if std::error::Error::source(&s).is_some() {
            ClientError::Connect {
                addr: self.addr.clone(),
                reason: error_chain(&s),
            }
        } else {
            ClientError::Status(s)
        }
    }

    /// The same connection, sending `code` as the TOTP second factor with every request.
    pub fn with_totp(&self, code: &str) -> Result<Client, ClientError> {
        let value = code
            .trim()
            .parse()
            .map_err(|_| ClientError::Config("the TOTP code must be ASCII digits".into()))?;
        Ok(Client {
            totp: Totp(Some(value)),
            ..self.clone()
        })
    }

    /// The generated `KeyAdmin` client; pair it with [`Client::call`] for error mapping.
    pub fn key_admin(&self) -> KeyAdminClient<Svc> {
        KeyAdminClient::with_interceptor(self.channel.clone(), self.totp.clone())
    }

    /// The generated `Crypto` client; pair it with [`Client::call`] for error mapping.
    pub fn crypto(&self) -> CryptoClient<Svc> {
        CryptoClient::with_interceptor(self.channel.clone(), self.totp.clone())
    }

    /// The generated `Policy` client.
    pub fn policy(&self) -> proto::policy_client::PolicyClient<Svc> {
        proto::policy_client::PolicyClient::with_interceptor(
            self.channel.clone(),
            self.totp.clone(),
        )
    }

    /// The generated `Mfa` client.
    pub fn mfa(&self) -> proto::mfa_client::MfaClient<Svc> {
        proto::mfa_client::MfaClient::with_interceptor(self.channel.clone(), self.totp.clone())
    }

    /// Awaits a generated-client call and maps its error like every typed call here.
    pub async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        fut.await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.rpc_error(e))
    }

    /// Encrypts up to the server's plaintext limit (64 KiB by default) under `key`.
    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: Vec<u8>,
        context: HashMap<String, String>,
    ) -> Result<proto::EncryptResponse, ClientError> {
        let req = proto::EncryptRequest {
            key: key.to_string(),
            plaintext,
            context,
        };
        self.call(self.crypto().encrypt(req)).await
    }

    /// Decrypts a ciphertext; the ciphertext names its key and version.
    pub async fn decrypt(
        &self,
        ciphertext: Vec<u8>,
        context: HashMap<String, String>,
    ) -> Result<proto::DecryptResponse, ClientError> {
        let req = proto::DecryptRequest {
            ciphertext,
            context,
        };
        self.call(self.crypto().decrypt(req)).await
    }

    /// A fresh AES-256 data key: plaintext and wrapped under `key`.
    pub async fn generate_data_key(
        &self,
        key: &str,
        context: HashMap<String, String>,
    ) -> Result<proto::GenerateDataKeyResponse, ClientError> {
        let req = proto::GenerateDataKeyRequest {
            key: key.to_string(),
            context,
            without_plaintext: false,
            recipient: None,
        };
        self.call(self.crypto().generate_data_key(req)).await
    }

    /// Bring your own key, step 1: a fresh RSA-3072 wrapping public key and a single-use
    /// import token for key `name` (a new name, or an existing imported key).
    pub async fn import_params(&self, name: &str) -> Result<proto::ImportParameters, ClientError> {
        let req = proto::GetImportParametersRequest {
            name: name.to_string(),
        };
        self.call(self.key_admin().get_import_parameters(req)).await
    }

    /// Bring your own key, step 2: sends material already wrapped to the public key of
    /// [`Client::import_params`] (`RSA-OAEP-SHA256 ‖ AES-KWP`), with that call's token.
    /// The token is consumed once the server gets as far as unwrapping, whatever the outcome.
    pub async fn import_key_material(
        &self,
        req: proto::ImportKeyMaterialRequest,
    ) -> Result<proto::Key, ClientError> {
        self.call(self.key_admin().import_key_material(req)).await
    }

    /// One version's material (`version` 0 = the latest) wrapped to `recipient`; only for
    /// keys created or imported exportable.
    pub async fn export_key(
        &self,
        name: &str,
        version: u32,
        recipient: proto::recipient::Recipient,
    ) -> Result<proto::ExportKeyResponse, ClientError> {
        let req = proto::ExportKeyRequest {
            name: name.to_string(),
            version,
            recipient: Some(proto::Recipient {
                recipient: Some(recipient),
            }),
        };
        self.call(self.key_admin().export_key(req)).await
    }

    fn operator(&self) -> OperatorClient<Svc> {
        OperatorClient::with_interceptor(self.channel.clone(), self.totp.clone())
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        Ok(self
            .operator()
            .status(StatusRequest {})
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    pub async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse, ClientError> {
        let req = InitRequest { shares, threshold };
        Ok(self
            .operator()
            .init(req)
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    /// Submits one share; returns the progress.
    pub async fn unseal(&self, share: &str) -> Result<StatusResponse, ClientError> {
        let req = UnsealRequest {
            action: Some(unseal_request::Action::Share(share.to_string())),
        };
        Ok(self
            .operator()
            .unseal(req)
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    /// Discards the shares submitted so far.
    pub async fn unseal_reset(&self) -> Result<StatusResponse, ClientError> {
        let req = UnsealRequest {
            action: Some(unseal_request::Action::Reset(true)),
        };
        Ok(self
            .operator()
            .unseal(req)
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    pub async fn seal(&self) -> Result<StatusResponse, ClientError> {
        Ok(self
            .operator()
            .seal(SealRequest {})
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    pub async fn rekey(
        &self,
        current_shares: Vec<String>,
        new_shares: u32,
        new_threshold: u32,
    ) -> Result<RekeyResponse, ClientError> {
        let req = RekeyRequest {
            current_shares,
            new_shares,
            new_threshold,
        };
        Ok(self
            .operator()
            .rekey(req)
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    pub async fn rotate_barrier(&self) -> Result<RotateBarrierResponse, ClientError> {
        Ok(self
            .operator()
            .rotate_barrier(RotateBarrierRequest {})
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    /// Starts a backup: the server's refusal (not allowed, sealed) comes back here; the
    /// stream then yields the file's bytes in order (`docs/backup-format.md`). Read it with
    /// [`Client::next_backup_chunk`].
    pub async fn backup(&self) -> Result<tonic::Streaming<BackupChunk>, ClientError> {
        Ok(self
            .operator()
            .backup(BackupRequest {})
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner())
    }

    /// The next chunk of a backup stream, `None` at its end; errors mapped like every call.
    pub async fn next_backup_chunk(
        &self,
        stream: &mut tonic::Streaming<BackupChunk>,
    ) -> Result<Option<BackupChunk>, ClientError> {
        stream.message().await.map_err(|e| self.rpc_error(e))
    }
}

/// The error and its sources on one line: tonic's top-level transport error says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why an envelope file operation failed: the KMS refused (data key), or the local file or
/// its format did.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeFileError {
    #[error(transparent)]
    Kms(#[from] ClientError),
    #[error("{0}")]
    Envelope(#[from] envelope::EnvelopeError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an envelope file operation did.
#[derive(Debug, Clone)]
pub struct EnvelopeOutcome {
    /// Plaintext bytes encrypted or decrypted.
    pub bytes: u64,
    /// The KMS key (and version) that wraps the file's data key.
    pub key: String,
    pub version: u32,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnvelopeFileError + '_ {
    move |source| EnvelopeFileError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary file beside `output`, renamed over it only on success, so a failure never
/// leaves a partial or unauthenticated output behind.
fn temp_beside(output: &Path) -> Result<tempfile::NamedTempFile, EnvelopeFileError> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir).map_err(file_err(output))
}

fn data_key(bytes: &[u8]) -> Result<zeroize::Zeroizing<[u8; 32]>, EnvelopeFileError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| {
        EnvelopeFileError::Envelope(envelope::EnvelopeError::Header(
            "the wrapped data key did not decrypt to 32 bytes",
        ))
    })?;
    Ok(zeroize::Zeroizing::new(arr))
}

/// Runs `write` on the blocking pool into a buffered `tmp`, then syncs it and renames it over
/// `output`. On any error `tmp` is dropped, which deletes it: no partial output remains.
async fn write_then_rename(
    tmp: tempfile::NamedTempFile,
    output: &Path,
    write: impl FnOnce(
        &mut std::io::BufWriter<tempfile::NamedTempFile>,
    ) -> Result<u64, envelope::EnvelopeError>
    + Send
    + 'static,
) -> Result<u64, EnvelopeFileError> {
    let path = output.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
        let n = write(&mut out)?;
        let tmp = out
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(file_err(&path))?;
        tmp.as_file().sync_all().map_err(file_err(&path))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(file_err(&path))?;
        Ok(n)
    })
    .await
    .map_err(|e| EnvelopeFileError::File {
        path: output.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?
}

impl Client {
    /// Encrypts the file `input` into `output` with a fresh data key from `key` (one
    /// GenerateDataKey call; the file never leaves this machine). Streams, so files larger
    /// than memory work. `progress` gets the plaintext bytes done. Returns the plaintext size.
    pub async fn envelope_encrypt_file(
        &self,
        key: &str,
        context: HashMap<String, String>,
        input: &Path,
        output: &Path,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<EnvelopeOutcome, EnvelopeFileError> {
        let reader = std::fs::File::open(input).map_err(file_err(input))?;
        let tmp = temp_beside(output)?;
        let dk = self.generate_data_key(key, context).await?;
        let plain = data_key(&dk.plaintext)?;
        drop(zeroize::Zeroizing::new(dk.plaintext));
        let wrapped = dk.ciphertext;
        let (key_name, version) = (dk.key, dk.version);
        let n = write_then_rename(tmp, output, move |out| {
            envelope::encrypt(
                std::io::BufReader::with_capacity(1 << 20, reader),
                out,
                &plain,
                &wrapped,
                envelope::DEFAULT_CHUNK,
                &mut progress,
            )
        })
        .await?;
        Ok(EnvelopeOutcome {
            bytes: n,
            key: key_name,
            version,
        })
    }

    /// Decrypts an envelope file: unwraps its data key with one Decrypt call (the KMS checks
    /// the key's state and the context), then streams and authenticates every chunk. The
    /// output appears only if the whole file authenticated. Returns the plaintext size.
    pub async fn envelope_decrypt_file(
        &self,
        context: HashMap<String, String>,
        input: &Path,
        output: &Path,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<EnvelopeOutcome, EnvelopeFileError> {
        let file = std::fs::File::open(input).map_err(file_err(input))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let header = envelope::Header::read(&mut reader)?;
        let tmp = temp_beside(output)?;
        let dk = self.decrypt(header.wrapped_key.clone(), context).await?;
        let plain = data_key(&dk.plaintext)?;
        drop(zeroize::Zeroizing::new(dk.plaintext));
        let (key_name, version) = (dk.key, dk.version);
        let n = write_then_rename(tmp, output, move |out| {
            envelope::decrypt(&header, reader, out, &plain, &mut progress)
        })
        .await?;
        Ok(EnvelopeOutcome {
            bytes: n,
            key: key_name,
            version,
        })
    }
}
