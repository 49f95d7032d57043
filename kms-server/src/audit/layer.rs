//! The tower layer that writes one audit record per gRPC call, allowed, denied or failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;

use kms_core::audit::{GENESIS_PREV, Record};
use tonic::body::Body;
use tonic::codegen::http;

use super::sink::AuditSink;
use crate::call::{AuditDetail, AuditSlot};

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
    use std::fmt::Write as _;
    thread_local! {
        // The formatted second, reused by every record within it.
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != now.as_secs() {
            *secs = now.as_secs();
            // "YYYY-MM-DDTHH:MM:SSZ" without the Z.
            *text = kms_core::key::fmt_utc(now.as_secs())
                .trim_end_matches('Z')
                .to_string();
        }
        let mut out = String::with_capacity(text.len() + 5);
        out.push_str(text);
        let _ = write!(out, ".{:03}Z", now.subsec_millis());
        out
    })
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

/// The gRPC status name of `code` (audit records and metrics labels).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
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
            if !sink.enabled.load(Ordering::Relaxed) || !audited(&path) {
                return inner.call(req).await;
            }
            let time = now_rfc3339();
            let slot = AuditSlot::default();
            let mut req = req;
            req.extensions_mut().insert(slot.clone());
            let request_id = sink.request_id();
            let span = crate::call::request_span(&request_id, &operation_of(&path));
            let (principal, peer) = match req.extensions().get::<crate::call::Peer>() {
                Some(p) => (
                    p.principal.as_deref().unwrap_or_default().to_string(),
                    p.addr_text.to_string(),
                ),
                None => (String::new(), String::new()),
            };
            // Fail closed: a request runs only if its record can be written. A state change
            // checks with the writer first; a data-plane call only after a failure (its
            // result is withheld anyway if the record cannot be written).
            let durable = sink.durable(&path);
            if (durable || !sink.shared.healthy.load(Ordering::SeqCst))
                && let Err(e) = sink.probe()
            {
                tracing::error!(parent: &span, error = %e, "audit unavailable; refusing the request");
                return Ok(tonic::Status::unavailable("audit unavailable: the request was not run; the operators must restore the audit log").into_http());
            }
            // If the client goes away (RST_STREAM, grpc-timeout), the request's future is
            // dropped wherever it is. A state change therefore runs in its own task, which
            // finishes (and records it) regardless; a data-plane call that is dropped before
            // its record is queued leaves a "cancelled" record instead.
            let mut cancelled = CancelGuard {
                sink: sink.clone(),
                armed: true,
                record: Record {
                    seq: 0,
                    time,
                    request_id,
                    node: String::new(),
                    principal,
                    peer,
                    operation: operation_of(&path),
                    key: None,
                    version: None,
                    outcome: "error".into(),
                    code: code_name(tonic::Code::Cancelled).into(),
                    error: Some(
                        "the call was dropped before it completed: the client cancelled it or the server deadline passed".into(),
                    ),
                    context_hmac: Default::default(),
                    prev: GENESIS_PREV.to_string(),
                },
                slot: slot.clone(),
            };
            let work = async move {
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
                // From here the record is on its way (written even if this future is dropped).
                let mut record = cancelled.take();
                record.key = detail.as_ref().map(|d| d.key.clone()).or(slot_key);
                record.version = detail.and_then(|d| d.version);
                record.outcome = outcome.into();
                record.code = code_name(code).into();
                record.error = error;
                record.context_hmac = context_hmac;
                let written = sink.write(record, durable).await;
                if let Err(e) = written {
                    tracing::error!(error = %e, "audit record not written; refusing the response");
                    return Ok(tonic::Status::unavailable("audit unavailable: the outcome could not be recorded; check the operation's effect before retrying").into_http());
                }
                Ok(resp)
            }
            .instrument(span);
            if durable {
                match tokio::spawn(work).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "audited request task failed");
                        Ok(tonic::Status::internal(
                            "the request failed; check its effect before retrying",
                        )
                        .into_http())
                    }
                }
            } else {
                work.await
            }
        })
    }
}

/// Holds a call's record while the call runs; writes it as cancelled if the call's future is
/// dropped before the record was taken to be written (see `call`).
struct CancelGuard {
    sink: Arc<AuditSink>,
    armed: bool,
    record: Record,
    slot: AuditSlot,
}

impl CancelGuard {
    /// The record, to be completed and written by the caller; disarms the guard.
    fn take(&mut self) -> Record {
        self.armed = false;
        std::mem::take(&mut self.record)
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut record = std::mem::take(&mut self.record);
        record.key = self.slot.take().0;
        if let Err(e) = self.sink.write_now(record) {
            tracing::error!(error = %e, "the record of a cancelled call was not written");
        }
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
