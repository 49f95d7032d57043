//! The server's request deadline: a call still running at `[limits] request_timeout_secs` is
//! dropped and answered DEADLINE_EXCEEDED, naming the setting.
//!
//! tonic's own `Server::timeout` would answer CANCELLED "Timeout expired", which names no
//! limit. A client's `grpc-timeout` is left to tonic, which always enforces it (with that
//! answer) in a layer outside this one: enforcing it here too would race tonic's timer for
//! the same instant.

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
        let limit = self.server;
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response,
                // Dropping the call here is what a client's RST_STREAM does too: a state
                // change finishes in its own task and is audited; see audit_sink.
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "deadline exceeded: the call ran past the server's request timeout \
                     ({limit:?}, [limits] request_timeout_secs)"
                ))
                .into_http()),
            }
        })
    }
}
