//! Request deadlines: a call still running at the server's request timeout, or at the client's
//! shorter `grpc-timeout`, is dropped and answered DEADLINE_EXCEEDED with the limit named.
//!
//! tonic's own `Server::timeout` answers CANCELLED "Timeout expired", which the gRPC spec
//! reserves for a call the client cancelled, and names neither limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;

/// The tower layer that puts a deadline on every call of the wrapped services.
#[derive(Clone)]
pub struct DeadlineLayer {
    server: Duration,
}

impl DeadlineLayer {
    /// `server`: the longest any call may run (`[limits] request_timeout_secs`).
    pub fn new(server: Duration) -> Self {
        Self { server }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            server: self.server,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    server: Duration,
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Deadline<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (limit, message) = match grpc_timeout(req.headers()) {
            Some(client) if client < self.server => (
                client,
                format!(
                    "deadline exceeded: the call ran past the client's grpc-timeout ({client:?})"
                ),
            ),
            _ => (
                self.server,
                format!(
                    "deadline exceeded: the call ran past the server's request timeout ({:?}, [limits] request_timeout_secs)",
                    self.server
                ),
            ),
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response,
                // Dropping the call here is what a client's RST_STREAM does too: a state
                // change finishes in its own task and is audited; see audit_sink.
                Err(_) => Ok(tonic::Status::deadline_exceeded(message).into_http()),
            }
        })
    }
}

/// The `grpc-timeout` header (gRPC over HTTP/2: 1 to 8 ASCII digits and a unit, H M S m u n).
///
/// Returns None when it is absent or malformed; the server's timeout then applies alone.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 99,999,999: no overflow below.
    let n: u64 = digits.parse().ok()?;
    Some(match &value[digits.len()..] {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
        grpc_timeout(&h)
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(
            parse("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            "",
            "S",
            "1",
            "1s",
            "123456789S",
            "-1S",
            "1.5S",
            "+1S",
            " 1S",
            "１S",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
