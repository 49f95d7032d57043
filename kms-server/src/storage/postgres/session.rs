//! Sessions: one operation on a pooled connection within a time bound, the discarding of
//! sessions that broke or were abandoned, and the mapping of failures to [`StorageError`].

use std::time::Duration;

use deadpool_postgres::Object;
use tokio_postgres::NoTls;

use super::PostgresBackend;
use super::config::Connector;
use crate::storage::StorageError;

/// Longest a cancel request may take (best effort).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure inside an operation, mapped to a [`StorageError`] naming the server once.
pub(super) enum Fail {
    Pg(tokio_postgres::Error),
    Storage(StorageError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

/// Every failure to reach or query PostgreSQL is `Io` (gRPC UNAVAILABLE): the write may or may
/// not have happened, and the caller may retry.
pub(super) fn pg_err(target: &str, e: &tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        Some(db) => StorageError::Io(format!("PostgreSQL at {target} answered: {db}")),
        None => StorageError::Io(format!(
            "PostgreSQL at {target} is unreachable: {}",
            with_causes(e)
        )),
    }
}

/// `e` and its chain of causes ("error connecting to server: Connection refused"): the
/// driver's own text says only what it was doing.
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

pub(super) fn pool_err(
    target: &str,
    timeout: Duration,
    e: deadpool_postgres::PoolError,
) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(target, &e),
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Io(format!(
            "PostgreSQL at {target} is unreachable (or every connection is busy): no \
             connection within {} s",
            timeout.as_secs()
        )),
        other => StorageError::Io(format!("PostgreSQL at {target} is unreachable: {other}")),
    }
}

/// A stored bigint that must be a positive count (a version or a sequence number).
pub(super) fn to_u64(key: &str, v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(key.to_string()))
}

pub(super) fn to_i64(what: &str, v: u64) -> Result<i64, StorageError> {
    i64::try_from(v)
        .map_err(|_| StorageError::Io(format!("{what} {v} is too large for PostgreSQL")))
}

impl PostgresBackend {
    pub(super) async fn conn(&self) -> Result<Object, StorageError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| pool_err(&self.inner.target, self.inner.connect_timeout, e))
    }

    /// Runs `op` (already holding `conn`) within `limit`. On a timeout, a broken connection or
    /// a call dropped half-way (the caller gave up), the connection is discarded rather than
    /// handed out again: its session may be stuck or inside a transaction, and closing it
    /// makes PostgreSQL roll back whatever it had not committed. After a timeout the outcome
    /// is unknown: `Io`.
    pub(super) async fn run<T>(
        &self,
        conn: Object,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let mut out = Checkout(Some(conn), &self.inner.connector);
        let Some(c) = out.0.as_mut() else {
            return Err(StorageError::Io("connection lost".into()));
        };
        let r = tokio::time::timeout(limit, op(c)).await;
        let target = &self.inner.target;
        match r {
            Ok(Ok(v)) => {
                out.release();
                Ok(v)
            }
            Ok(Err(Fail::Storage(e))) => {
                out.release();
                Err(e)
            }
            Ok(Err(Fail::Pg(e))) => {
                // An error PostgreSQL answered leaves a usable session; any other means the
                // connection broke (dropped with `out`).
                if e.as_db_error().is_some() {
                    out.release();
                }
                Err(pg_err(target, &e))
            }
            Err(_) => Err(StorageError::Io(format!(
                "PostgreSQL at {target} did not answer within {} s (whether the last write \
                 happened is unknown)",
                limit.as_secs()
            ))),
        }
    }
}

/// A pooled connection in use: discarded (see [`discard`]) when dropped, unless released back
/// to the pool.
struct Checkout<'a>(Option<Object>, &'a Connector);

impl Checkout<'_> {
    fn release(mut self) {
        // Dropping an `Object` returns it to its pool.
        drop(self.0.take());
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn, self.1);
        }
    }
}

/// Closes a connection whose session may still be busy (a statement waiting for a lock):
/// PostgreSQL would keep such a session, outside any pool, until the statement ends, so a
/// cancel request (on a connection of its own) is sent first when a runtime is at hand. The
/// session's uncommitted work is rolled back.
pub(super) fn discard(conn: Object, connector: &Connector) {
    let token = conn.cancel_token();
    drop(Object::take(conn));
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let connector = connector.clone();
    rt.spawn(async move {
        let cancel = async {
            match connector {
                Connector::Plain => token.cancel_query(NoTls).await,
                Connector::Rustls(t) => token.cancel_query(t).await,
            }
        };
        // Best effort: statement_timeout (main pool) and the closed socket end it anyway.
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel).await;
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::fresh;
    use super::*;
    use crate::storage::{Backend, Expect};

    /// A call dropped half-way (here: a put waiting for the clock's row lock, as behind a
    /// long writer of another node) leaves no session inside a transaction, writes nothing,
    /// and the backend goes on working.
    #[tokio::test]
    async fn a_call_dropped_half_way_leaves_no_open_transaction() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let (other, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        other
            .batch_execute("BEGIN; UPDATE kms_clock SET seq = seq + 1")
            .await
            .unwrap();
        let cut = tokio::time::timeout(
            Duration::from_millis(300),
            b.put("k", b"v".to_vec(), Expect::Absent),
        )
        .await;
        assert!(cut.is_err(), "the put did not wait for the clock");
        other.batch_execute("ROLLBACK").await.unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let open: i64 = other
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = \
                     'kms-server' AND datname = current_database() AND state LIKE 'idle in%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if open == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{open} sessions in a transaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(b.put("k", b"v".to_vec(), Expect::Absent).await.unwrap(), 1);
    }
}
