//! The change feed: the clock (`kms_clock.seq`), the keys changed since a position, and the
//! `LISTEN kms_changes` connection that wakes the node when another one commits.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio::sync::Notify;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::PostgresBackend;
use super::config::Connector;
use super::session::{to_i64, to_u64, with_causes};
use crate::storage::{Changes, StorageError};

/// Most keys one [`Backend::changes_since`](crate::storage::Backend::changes_since) call
/// returns.
const CHANGES_LIMIT: i64 = 5000;
/// Longest pause between two reconnection attempts of the change listener.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

const CLOCK: &str = "SELECT seq FROM kms_clock WHERE id = 1";
const CHANGES: &str =
    "SELECT key, changed FROM kms_records WHERE changed > $1 ORDER BY changed LIMIT $2";

impl PostgresBackend {
    /// [`Backend::change_seq`](crate::storage::Backend::change_seq): the clock.
    pub(super) async fn current_seq(&self) -> Result<u64, StorageError> {
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            let seq: i64 = c
                .query_one(&c.prepare_cached(CLOCK).await?, &[])
                .await?
                .try_get(0)?;
            Ok(to_u64("kms_clock", seq)?)
        })
        .await
    }

    /// [`Backend::changes_since`](crate::storage::Backend::changes_since): one page of the keys
    /// changed after `seq`.
    pub(super) async fn changes_after(&self, seq: u64) -> Result<Changes, StorageError> {
        let from = to_i64("sequence position", seq)?;
        let conn = self.conn().await?;
        self.run(conn, self.inner.op_timeout, async |c: &mut Object| {
            // The clock first: every change numbered up to it is committed (writers commit in
            // sequence order), so the query below, run after, sees them all.
            let now: i64 = c
                .query_one(&c.prepare_cached(CLOCK).await?, &[])
                .await?
                .try_get(0)?;
            let rows = c
                .query(&c.prepare_cached(CHANGES).await?, &[&from, &CHANGES_LIMIT])
                .await?;
            let mut keys = Vec::with_capacity(rows.len());
            let mut last = from;
            for row in &rows {
                keys.push(row.try_get::<_, String>(0)?);
                last = row.try_get(1)?;
            }
            // A full page: go on from its last change; otherwise everything up to the clock
            // has been seen. Changes past it may be listed again next time (harmless).
            let reached = if rows.len() as i64 >= CHANGES_LIMIT {
                last
            } else {
                now.max(from)
            };
            Ok(Changes {
                seq: to_u64("kms_clock", reached)?,
                keys,
            })
        })
        .await
    }
}

/// Keeps a connection with `LISTEN kms_changes` open for ever, waking `notify` on every
/// notification and after every (re)connection (changes may have been missed meanwhile).
pub(super) async fn listen_forever(
    pg: tokio_postgres::Config,
    connector: Connector,
    notify: Arc<Notify>,
    target: String,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    // Whether the last attempt was listening: a lost connection is logged once per outage.
    let mut up = true;
    loop {
        let mut listening = false;
        let r = match &connector {
            Connector::Plain => listen_once(&pg, NoTls, &notify, timeout, &mut listening).await,
            Connector::Rustls(t) => {
                listen_once(&pg, t.clone(), &notify, timeout, &mut listening).await
            }
        };
        if listening {
            backoff = Duration::from_millis(50);
            if !up {
                tracing::info!("change listener: PostgreSQL at {target} is reachable again");
            }
            up = true;
        }
        if up {
            let why = match r {
                Ok(()) => "the connection closed".to_string(),
                Err(e) => e,
            };
            tracing::warn!(
                "change listener: lost PostgreSQL at {target} ({why}); reconnecting every \
                 second at most, other nodes' changes are seen only by the periodic check \
                 meanwhile"
            );
            up = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Wakes the current waiters, and the next caller of `changed` too (a change committed
/// between two calls is not missed).
fn wake(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

/// One listening connection, until it ends. Sets `listening` once `LISTEN` succeeded.
async fn listen_once<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    notify: &Notify,
    timeout: Duration,
    listening: &mut bool,
) -> Result<(), String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = match tokio::time::timeout(timeout, pg.connect(tls)).await {
        Ok(r) => r.map_err(|e| with_causes(&e))?,
        Err(_) => return Err(format!("no connection within {} s", timeout.as_secs())),
    };
    let listen = client.batch_execute("LISTEN kms_changes");
    tokio::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen, if !*listening => {
                r.map_err(|e| with_causes(&e))?;
                *listening = true;
                wake(notify);
            }
            // The connection is driven here (not in a task of its own) so its notifications
            // come to us.
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(_))) => wake(notify),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(with_causes(&e)),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::fresh;
    use super::*;
    use crate::storage::{Backend, Expect, Versioned};

    /// Another node's put is seen by `changes_since` in commit order, and wakes `changed`.
    #[tokio::test]
    async fn changes_reach_another_node() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let start = b.change_seq().await.unwrap();
        // The listener's first (re)connection wakes once: consume it.
        let _ = tokio::time::timeout(Duration::from_secs(2), b.changed()).await;
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.changed().await })
        };
        a.put("k/1", b"x".to_vec(), Expect::Any).await.unwrap();
        a.put("k/2", b"x".to_vec(), Expect::Any).await.unwrap();
        a.put("k/1", b"y".to_vec(), Expect::Any).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("no notification")
            .unwrap();
        let c = b.changes_since(start).await.unwrap();
        assert_eq!(c.keys, ["k/2", "k/1"]);
        assert_eq!(c.seq, b.change_seq().await.unwrap());
        assert_eq!(c.seq, start + 3);
        let none = b.changes_since(c.seq).await.unwrap();
        assert_eq!(
            none,
            Changes {
                seq: c.seq,
                keys: vec![]
            }
        );
        // A delete moves the sequence but lists nothing.
        a.delete("k/2", Expect::Any).await.unwrap();
        let d = b.changes_since(c.seq).await.unwrap();
        assert!(d.keys.is_empty() && d.seq == c.seq + 1, "{d:?}");
    }

    /// More than one page of changes: each page ends at its last change, nothing is skipped.
    #[tokio::test]
    async fn changes_are_paged() {
        let Some(cfg) = fresh().await else { return };
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let n = CHANGES_LIMIT as usize + 10;
        let records = (0..n)
            .map(|i| {
                let v = Versioned {
                    version: 1,
                    value: Vec::new(),
                };
                (format!("r/{i:05}"), v)
            })
            .collect::<Vec<_>>();
        b.restore(records).await.unwrap();
        let first = b.changes_since(0).await.unwrap();
        assert_eq!(first.keys.len(), CHANGES_LIMIT as usize);
        assert_eq!(first.seq, CHANGES_LIMIT as u64);
        let second = b.changes_since(first.seq).await.unwrap();
        assert_eq!(second.keys.len(), 10);
        assert_eq!(second.seq, n as u64);
        assert_eq!(b.change_seq().await.unwrap(), n as u64);
    }
}
