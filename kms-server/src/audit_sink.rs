//! The audit sink: one hash-chained JSON line per request (format in `docs/audit-format.md`),
//! written and fsynced before the response leaves; if it cannot be written the request is
//! refused (fail closed).
//!
//! Implemented as a tower layer around every gRPC service, so denied and failed calls are
//! recorded like successful ones. What it records: time, sequence, request id, node,
//! principal, peer, operation (the gRPC method), outcome and status code. Never a request or
//! response body: no plaintext, data key, share or key material can reach the log.
//! The access check notes the key of every key and crypto call ([`AuditSlot`]); successful
//! calls also add the version ([`detail`]). Context values are not yet recorded (as HMACs).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use kms_core::audit::{Chain, GENESIS_PREV, Record};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What a handler adds to its response for the audit record: the key and version it used.
#[derive(Clone, Debug)]
pub struct AuditDetail {
    pub key: String,
    pub version: Option<u32>,
}

/// Where the access check notes the key a request is about, so that its audit record names it
/// whether the request is allowed, denied or fails. Put in the request's extensions by the
/// audit layer.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotData>>);

#[derive(Default)]
struct SlotData {
    key: Option<String>,
    /// The request's encryption context: recorded only as HMACs, never in clear.
    context: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for AuditSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSlot(..)")
    }
}

impl AuditSlot {
    pub fn set(&self, key: &str, context: &std::collections::BTreeMap<String, String>) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        d.key = Some(key.to_string());
        if !context.is_empty() {
            d.context = context.clone();
        }
    }

    fn take(&self) -> (Option<String>, std::collections::BTreeMap<String, String>) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (d.key.clone(), std::mem::take(&mut d.context))
    }
}

/// Attaches `key` and `version` to a response for its audit record.
pub fn detail<T>(
    mut resp: tonic::Response<T>,
    key: &str,
    version: Option<u32>,
) -> tonic::Response<T> {
    resp.extensions_mut().insert(AuditDetail {
        key: key.to_string(),
        version,
    });
    resp
}

/// How long a request waits for its audit record to be durable before it is refused: a stuck
/// disk must not hang the server.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The open log and the chain state.
pub struct AuditSink {
    path: PathBuf,
    node: String,
    /// Rotate the file once it reaches this size (0: never).
    max_bytes: u64,
    /// Holds the context HMAC key while unsealed (set once the server is built).
    keystore: std::sync::OnceLock<Arc<crate::keystore::Keystore>>,
    state: Mutex<State>,
    /// Group commit: the highest line known durable in the current file generation, and the
    /// same for the file retired by the last rotation. One fsync covers every line appended
    /// before it started; concurrent writers wait for it instead of syncing.
    synced: Mutex<Synced>,
}

#[derive(Default)]
struct Synced {
    current: (u64, u64),
    /// Generations closed by rotation: every line of them was fsynced before the rename.
    /// (A file replaced from outside is not here: its unsynced writers are refused.)
    rotated: std::collections::VecDeque<u64>,
}

/// Rotated generations remembered; a writer stalled across more rotations than this is
/// refused (fail closed) rather than wrongly acknowledged.
const ROTATIONS_REMEMBERED: usize = 64;

impl Synced {
    fn covers(&self, generation: u64, ticket: u64) -> bool {
        (self.current.0 == generation && self.current.1 >= ticket)
            || self.rotated.contains(&generation)
    }
}

struct State {
    /// None after a failed write: the next request reopens the path or is refused.
    file: Option<(Arc<File>, u64)>,
    chain: Chain,
    next_request: u64,
    /// Bumped when the file is reopened; lines are counted per generation.
    generation: u64,
    /// Lines appended to the current file.
    written: u64,
}

impl AuditSink {
    /// Opens (or creates) the log at `path` and resumes its chain from the last complete
    /// line. A torn last line (a crash mid-write, never acknowledged) is cut off.
    pub fn open(path: &Path, node: &str, max_bytes: u64) -> Result<Self, String> {
        let (file, ino, chain) = open_and_resume(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            node: node.to_string(),
            max_bytes,
            keystore: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                file: Some((Arc::new(file), ino)),
                chain,
                next_request: 0,
                generation: 0,
                written: 0,
            }),
            synced: Mutex::new(Synced::default()),
        })
    }

    /// Checks that the log can take a record: its path is still the file we hold (reopened
    /// if it was replaced or after a failed write). Called before a request runs.
    fn available(&self) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let current = std::fs::metadata(&self.path).ok().filter(|m| m.is_file());
        let same = match (&st.file, &current) {
            (Some((_, ino)), Some(m)) => m.ino() == *ino,
            _ => false,
        };
        if !same {
            let (file, ino, chain) = open_and_resume(&self.path)?;
            st.file = Some((Arc::new(file), ino));
            st.chain = chain;
            st.generation += 1;
            st.written = 0;
            tracing::warn!(path = %self.path.display(), "audit log reopened");
        }
        Ok(())
    }

    /// Appends one record and makes it durable (blocking: call from the blocking pool).
    fn write(&self, mut record: Record) -> Result<(), String> {
        let fail =
            |e: std::io::Error| format!("cannot write the audit log {}: {e}", self.path.display());
        // 1. Append under the state lock, so lines and the chain stay in order.
        let (file, generation, ticket) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some((f, _)) = st.file.clone() else {
                return Err("audit log is not open".into());
            };
            record.node = self.node.clone();
            let mut next = st.chain.clone();
            let line = next.append(record);
            if let Err(e) = (&*f).write_all(format!("{line}\n").as_bytes()) {
                // The file may now end with a partial line: reopen (and cut it) next time.
                st.file = None;
                return Err(fail(e));
            }
            st.chain = next;
            st.written += 1;
            (f, st.generation, st.written)
        };
        // 2. Make it durable, sharing one fsync among concurrent writers.
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if synced.covers(generation, ticket) {
            return Ok(());
        }
        let covering = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.generation != generation {
                // Reopened since our append: our line went to the file that was replaced.
                return Err(format!("audit log {} was replaced", self.path.display()));
            }
            st.written
        };
        if let Err(e) = file.sync_data() {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.generation == generation {
                st.file = None;
            }
            return Err(fail(e));
        }
        synced.current = (generation, covering);
        if self.max_bytes > 0 {
            // Under the sync lock: no writer of the old file can be left unsynced. A failed
            // rotation is logged, not returned: this record is already durable.
            if let Err(e) = self.rotate_if_full(&mut synced) {
                tracing::error!(error = %e, "audit log rotation failed; will retry");
            }
        }
        Ok(())
    }

    /// Renames a full log to `<path>.<last seq>` and continues the chain in a new file.
    fn rotate_if_full(&self, synced: &mut Synced) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((file, _)) = st.file.clone() else {
            return Ok(());
        };
        let io = |e: std::io::Error| format!("{}: {e}", self.path.display());
        if file.metadata().map_err(io)?.len() < self.max_bytes {
            return Ok(());
        }
        // Lines appended since this writer's fsync are made durable before the file closes.
        file.sync_data().map_err(io)?;
        synced.rotated.push_back(st.generation);
        if synced.rotated.len() > ROTATIONS_REMEMBERED {
            synced.rotated.pop_front();
        }
        let rotated = rotated_name(&self.path, st.chain.head().seq);
        std::fs::rename(&self.path, &rotated).map_err(io)?;
        let new = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let ino = new.metadata().map_err(io)?.ino();
        // The chain goes on: the new file's first record points at the old file's last.
        st.file = Some((Arc::new(new), ino));
        st.generation += 1;
        st.written = 0;
        tracing::info!(rotated = %rotated.display(), "audit log rotated");
        Ok(())
    }

    /// The head of the chain: the last record written.
    pub fn head(&self) -> kms_core::audit::Head {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chain
            .head()
    }

    /// Seals the current head into storage (`audit/head/<node>`, barrier-encrypted), so a log
    /// whose tail was cut no longer reaches it. Needs the KMS unsealed.
    pub async fn seal_head(
        &self,
        seal: &crate::Seal,
    ) -> Result<kms_core::audit::Head, crate::KmsError> {
        let head = self.head();
        let keyring = seal.keyring().await?;
        let path = format!("audit/head/{}", hex::encode(self.node.as_bytes()));
        let json =
            serde_json::to_vec(&head).map_err(|e| crate::KmsError::Internal(e.to_string()))?;
        let sealed = keyring.seal(&path, &json)?;
        seal.backend()
            .put(&path, sealed, crate::storage::Expect::Any)
            .await?;
        Ok(head)
    }

    /// Connects the keystore, which holds the context HMAC key while unsealed.
    pub fn attach_keystore(&self, keystore: Arc<crate::keystore::Keystore>) {
        let _ = self.keystore.set(keystore);
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn request_id(&self) -> String {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.next_request += 1;
        format!("{}-{}", self.node, st.next_request)
    }
}

fn open_and_resume(path: &Path) -> Result<(File, u64, Chain), String> {
    let err = |e: std::io::Error| format!("cannot open the audit log {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(err)?;
    // Everything after the last newline is a torn, unacknowledged record: cut it.
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    if complete < text.len() {
        file.set_len(complete as u64).map_err(err)?;
        file.seek(SeekFrom::End(0)).map_err(err)?;
        file.sync_data().map_err(err)?;
    }
    // An empty current file continues the chain of the newest rotated file, if any.
    let last_line = match text[..complete].lines().last() {
        Some(l) => Some(l.to_string()),
        None => last_rotated_line(path)?,
    };
    let chain = match last_line {
        Some(last) => Chain::resume(&last).map_err(|e| {
            format!(
                "audit log {} does not end in a valid record: {e}",
                path.display()
            )
        })?,
        None => Chain::genesis(),
    };
    let ino = file.metadata().map_err(err)?.ino();
    Ok((file, ino, chain))
}

/// The name of a rotated file: the current path, a dot and the last sequence number it holds,
/// zero-padded so that name order is chain order.
fn rotated_name(path: &Path, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{last_seq:012}"));
    PathBuf::from(name)
}

/// The last line of the newest rotated file beside `path`, if there is one.
fn last_rotated_line(path: &Path) -> Result<Option<String>, String> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", base.to_string_lossy());
    let newest = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
        })
        .max();
    let Some(newest) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(dir.join(&newest))
        .map_err(|e| format!("cannot read rotated audit log {newest}: {e}"))?;
    Ok(text.lines().last().map(str::to_string))
}

/// Decodes a `grpc-message` header (percent-encoded, RFC 3986 style).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = hex {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3339 UTC with milliseconds.
fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = kms_core::key::fmt_utc(now.as_secs());
    // "YYYY-MM-DDTHH:MM:SSZ" → insert the milliseconds before the Z.
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), now.subsec_millis())
}

/// The tower layer that audits every call to the wrapped services.
#[derive(Clone)]
pub struct AuditLayer {
    sink: Arc<AuditSink>,
}

impl AuditLayer {
    pub fn new(sink: Arc<AuditSink>) -> Self {
        Self { sink }
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audited {
            inner,
            sink: self.sink.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    sink: Arc<AuditSink>,
}

/// Health checks and reflection are not security-relevant and would flood the log.
fn audited(path: &str) -> bool {
    path.starts_with("/kms.v1.")
}

/// "/kms.v1.Crypto/GenerateDataKey" → "generate-data-key".
fn operation_of(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or(path);
    let mut out = String::new();
    for (i, ch) in method.chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn code_name(code: tonic::Code) -> String {
    let s = format!("{code:?}");
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Audited<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is not ready; use the ready one and leave the clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let sink = self.sink.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if !audited(&path) {
                return inner.call(req).await;
            }
            let time = now_rfc3339();
            let slot = AuditSlot::default();
            let mut req = req;
            req.extensions_mut().insert(slot.clone());
            let request_id = sink.request_id();
            let (principal, peer) = match req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
                Some(info) => (
                    info.peer_certs()
                        .and_then(|c| {
                            c.first()
                                .and_then(|c| crate::principal::name_of(c.as_ref()).ok())
                        })
                        .unwrap_or_default(),
                    info.get_ref()
                        .remote_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                ),
                None => (String::new(), String::new()),
            };
            // Fail closed: a request runs only if its record can be written.
            if let Err(e) = sink.available() {
                tracing::error!(error = %e, "audit unavailable; refusing the request");
                return Ok(tonic::Status::unavailable("audit unavailable: the request was not run; the operators must restore the audit log").into_http());
            }
            let resp = inner.call(req).await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from_i32)
                .unwrap_or(tonic::Code::Ok);
            // The refusal's reason, as the client saw it (messages never carry secrets).
            let error = (code != tonic::Code::Ok)
                .then(|| {
                    resp.headers()
                        .get("grpc-message")
                        .map(|v| percent_decode(v.as_bytes()))
                })
                .flatten();
            let detail = resp.extensions().get::<AuditDetail>().cloned();
            let (slot_key, context) = slot.take();
            let key = (!context.is_empty())
                .then(|| sink.keystore.get().and_then(|k| k.audit_key()))
                .flatten();
            let context_hmac = key
                .map(|k| kms_core::audit::context_hmacs(&k, context.iter()))
                .unwrap_or_default();
            drop(context);
            let outcome = match code {
                tonic::Code::Ok => "ok",
                tonic::Code::PermissionDenied => "denied",
                _ => "error",
            };
            let record = Record {
                seq: 0,
                time,
                request_id,
                node: String::new(),
                principal,
                peer,
                operation: operation_of(&path),
                key: detail.as_ref().map(|d| d.key.clone()).or(slot_key),
                version: detail.and_then(|d| d.version),
                outcome: outcome.into(),
                code: code_name(code),
                error,
                context_hmac,
                prev: GENESIS_PREV.to_string(),
            };
            // The write and fsync block: run them off the async workers, with a bound.
            let writer = sink.clone();
            let written = tokio::time::timeout(
                WRITE_TIMEOUT,
                tokio::task::spawn_blocking(move || writer.write(record)),
            )
            .await;
            let written = match written {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("audit writer failed: {e}")),
                Err(_) => Err(format!(
                    "audit write did not finish within {} s",
                    WRITE_TIMEOUT.as_secs()
                )),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, "audit record not written; refusing the response");
                return Ok(tonic::Status::unavailable("audit unavailable: the outcome could not be recorded; check the operation's effect before retrying").into_http());
            }
            Ok(resp)
        })
    }
}

/// The `kms.v1.Audit` gRPC service.
pub struct AuditService {
    sink: Arc<AuditSink>,
    seal: Arc<crate::Seal>,
    authz: Arc<crate::Authz>,
}

impl AuditService {
    pub fn new(sink: Arc<AuditSink>, seal: Arc<crate::Seal>, authz: Arc<crate::Authz>) -> Self {
        Self { sink, seal, authz }
    }

    /// Both RPCs need the `audit-read` grant.
    fn allow<T>(&self, req: &tonic::Request<T>) -> Result<(), crate::KmsError> {
        let who = crate::principal::of(req)?;
        self.authz.check(
            &who,
            kms_core::policy::Operation::AuditRead,
            None,
            &Default::default(),
        )
    }
}

#[tonic::async_trait]
impl kms_proto::v1::audit_server::Audit for AuditService {
    async fn head(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHeadRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHeadResponse>, tonic::Status> {
        self.allow(&req)?;
        let head = self.sink.seal_head(&self.seal).await?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHeadResponse {
            seq: head.seq,
            hash: head.hash,
            node: self.sink.node().to_string(),
        }))
    }

    async fn hmac(
        &self,
        req: tonic::Request<kms_proto::v1::AuditHmacRequest>,
    ) -> Result<tonic::Response<kms_proto::v1::AuditHmacResponse>, tonic::Status> {
        self.allow(&req)?;
        let key = self
            .sink
            .keystore
            .get()
            .and_then(|k| k.audit_key())
            .ok_or(crate::KmsError::Sealed)?;
        Ok(tonic::Response::new(kms_proto::v1::AuditHmacResponse {
            hmac: key.hmac_value(&req.into_inner().value),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            operation_of("/kms.v1.Crypto/GenerateDataKey"),
            "generate-data-key"
        );
        assert_eq!(operation_of("/kms.v1.Operator/Unseal"), "unseal");
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert!(now_rfc3339().ends_with('Z') && now_rfc3339().contains('.'));
    }
}
