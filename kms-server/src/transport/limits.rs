//! The `[limits]` section: what one client may hold of the server's memory, sockets and
//! tasks (docs/limits.md).

use std::time::Duration;

use serde::Deserialize;

/// Connection and request limits (the `[limits]` section), so that no client, slow, silent or
/// hostile, can hold the server's memory, sockets or tasks without bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gRPC request message decoded, in bytes (default 4 MiB, tonic's own default made
    /// explicit). A larger message is refused with OUT_OF_RANGE before it is buffered. Must
    /// hold one Encrypt of `keys.max_plaintext_bytes` with a full context.
    pub max_message_bytes: usize,
    /// Most concurrent calls (HTTP/2 streams) on one connection (default 100, the floor RFC
    /// 9113 advises). More are refused with RST_STREAM(REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// Longest a call may run, in seconds (default 30); past it the client gets
    /// DEADLINE_EXCEEDED naming this setting (see `deadline`). A client's shorter
    /// `grpc-timeout` wins, enforced by tonic (CANCELLED "Timeout expired").
    pub request_timeout_secs: u64,
    /// Longest a client may take to complete the TLS handshake, in seconds (default 10).
    pub handshake_timeout_secs: u64,
    /// A connection from which nothing at all (not even an HTTP/2 ping answer) is read for
    /// this many seconds is closed (default 300). Must exceed `keepalive_interval_secs`, so a
    /// responsive client is never cut.
    pub idle_timeout_secs: u64,
    /// The server pings each connection after this many seconds without traffic (default 60).
    pub keepalive_interval_secs: u64,
    /// A ping not answered within this many seconds closes the connection (default 20).
    pub keepalive_timeout_secs: u64,
    /// Most open connections, TLS handshakes included (default 512). Beyond it new
    /// connections are closed at once (a warning is logged, at most every 10 s). Keep it well
    /// below the process's open-file limit (`ulimit -n`).
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 100,
            request_timeout_secs: 30,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            max_connections: 512,
        }
    }
}

impl LimitsConfig {
    /// Room for the encryption context (at most 8 KiB) and the protobuf framing of one item.
    const ITEM_OVERHEAD: usize = 16 * 1024;
    /// Upper bound of every timeout (in seconds: 30 days) and of `max_connections`.
    const MAX_BOUND: u64 = 30 * 24 * 3600;

    /// Checks the limits against each other and against the key settings.
    ///
    /// Returns an error naming the field when a limit is zero or above 2,592,000 (30 days in
    /// seconds; for `max_connections` too), when `max_message_bytes` cannot
    /// carry one maximal Encrypt, or when the idle timeout would cut a client that answers
    /// pings.
    pub fn check(&self, keys: &crate::keystore::KeySettings) -> Result<(), String> {
        // The upper bounds are far beyond any sensible value, and small enough for timer
        // arithmetic and the connection semaphore never to overflow.
        let fields = [
            ("max_message_bytes", self.max_message_bytes as u64, u64::MAX),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
                u64::MAX,
            ),
            (
                "request_timeout_secs",
                self.request_timeout_secs,
                Self::MAX_BOUND,
            ),
            (
                "handshake_timeout_secs",
                self.handshake_timeout_secs,
                Self::MAX_BOUND,
            ),
            ("idle_timeout_secs", self.idle_timeout_secs, Self::MAX_BOUND),
            (
                "keepalive_interval_secs",
                self.keepalive_interval_secs,
                Self::MAX_BOUND,
            ),
            (
                "keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                Self::MAX_BOUND,
            ),
            (
                "max_connections",
                self.max_connections as u64,
                Self::MAX_BOUND,
            ),
        ];
        for (name, value, max) in fields {
            if value == 0 {
                return Err(format!("[limits] {name} must be at least 1"));
            }
            if value > max {
                return Err(format!("[limits] {name} must be at most {max}"));
            }
        }
        let needed = keys.max_plaintext_bytes.saturating_add(Self::ITEM_OVERHEAD);
        if self.max_message_bytes < needed {
            return Err(format!(
                "[limits] max_message_bytes = {} cannot carry one Encrypt of [keys] \
                 max_plaintext_bytes = {} with its context: set it to at least {needed}",
                self.max_message_bytes, keys.max_plaintext_bytes
            ));
        }
        if self.idle_timeout_secs <= self.keepalive_interval_secs {
            return Err(format!(
                "[limits] idle_timeout_secs = {} must exceed keepalive_interval_secs = {}, or \
                 idle clients that answer pings would be cut",
                self.idle_timeout_secs, self.keepalive_interval_secs
            ));
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
}
