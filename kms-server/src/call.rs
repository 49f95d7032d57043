//! What one call carries between the concerns, as request and response extensions: the
//! peer identity found by `transport`, the audit slot that `access` fills and `audit` writes,
//! the audit detail a handler in `api` adds to its response, and the log span named after the
//! call's audit record. Shared here so that none of those concerns imports another for it.

use std::sync::{Arc, Mutex};

/// Who is on the other end of a connection: named once, after the handshake verified the
/// client certificate, rather than by parsing the certificate on every request. Requests find
/// it in their extensions (tonic's connect info).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The principal (see `access::principal::name_of`); None if the certificate names none.
    pub principal: Option<Arc<str>>,
    /// The peer's socket address, formatted once (audit records, rate limits).
    pub addr_text: Arc<str>,
}

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

    pub(crate) fn take(&self) -> (Option<String>, std::collections::BTreeMap<String, String>) {
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

/// The span in which a request runs, so every log line about it carries `request_id`: the
/// request id of its audit record (`NODE-START-N`), and its operation (e.g. `create-key`).
///
/// Level ERROR so the span is enabled whenever any event of this crate is (a span filtered out
/// would drop the id from the lines inside it); target `kms_server`.
pub fn request_span(request_id: &str, operation: &str) -> tracing::Span {
    tracing::error_span!(target: "kms_server", "request", request_id, operation)
}
