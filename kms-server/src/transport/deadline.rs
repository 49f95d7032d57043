//! The server's request deadline: a call still running at `[limits] request_timeout_secs` is
//! dropped and answered DEADLINE_EXCEEDED, naming the setting.
//!
//! tonic's own `Server::timeout` would answer CANCELLED "Timeout expired", which names no
//! limit. A client's `grpc-timeout` is left to tonic, which always enforces it (with that
//! answer) in a layer outside this one: enforcing it here too would race tonic's timer for
//! the same instant.
//!
//! Init and Rekey are not cut: they return the shares of a new root secret, which exist
//! nowhere else, and as state changes they run to completion even when their caller is
//! dropped (see `audit::layer`). Cut at the deadline, a rekey would commit the new share set and
//! throw its shares away: once sealed, the KMS could never be unsealed again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;

/// The calls the deadline never cuts (see the module doc).
const UNBOUNDED: [&str; 2] = ["/kms.v1.Operator/Init", "/kms.v1.Operator/Rekey"];

/// The tower layer that puts a deadline on every call of the wrapped services but
/// [`UNBOUNDED`].
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
        let bounded = !UNBOUNDED.contains(&req.uri().path());
        let call = self.inner.call(req);
        Box::pin(async move {
            if !bounded {
                return call.await;
            }
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response,
                // Dropping the call here is what a client's RST_STREAM does too: a state
                // change finishes in its own task and is audited; see `audit::layer`.
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "deadline exceeded: the call ran past the server's request timeout \
                     ({limit:?}, [limits] request_timeout_secs)"
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::codegen::Service;
    use tower_layer::Layer;

    /// Answers OK after a while.
    #[derive(Clone)]
    struct Slow(Duration);

    impl Service<http::Request<Body>> for Slow {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future =
            Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let d = self.0;
            Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok(http::Response::new(Body::empty()))
            })
        }
    }

    /// The grpc-status of a call to `path` that outlives a 20 ms deadline (None: answered).
    async fn status_of(path: &str) -> Option<String> {
        let mut svc =
            DeadlineLayer::new(Duration::from_millis(20)).layer(Slow(Duration::from_millis(200)));
        let req = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = svc.call(req).await.unwrap();
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// A call past the deadline is answered DEADLINE_EXCEEDED (4), but Init and Rekey, whose
    /// answers carry the only copy of the new shares, are let finish.
    #[tokio::test]
    async fn init_and_rekey_are_not_cut_other_calls_are() {
        assert_eq!(
            status_of("/kms.v1.KeyAdmin/CreateKey").await.as_deref(),
            Some("4")
        );
        assert_eq!(status_of("/kms.v1.Operator/Rekey").await, None);
        assert_eq!(status_of("/kms.v1.Operator/Init").await, None);
    }
}
