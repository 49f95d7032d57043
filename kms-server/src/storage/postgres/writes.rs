//! The write path: compare-and-set `put`/`delete`, each one transaction behind the clock's
//! row lock, and the cluster locks (session advisory locks) with the writes they fence.

use std::time::Duration;

use deadpool_postgres::Object;

use super::config::Connector;
use super::session::{Fail, discard, pg_err, pool_err, to_i64, to_u64};
use super::{LOCK_CONNECTION_WAIT, PostgresBackend};
use crate::storage::{Expect, LockGuard, StorageError};

/// Increments the change sequence. It runs first in every write transaction: its row lock
/// serialises writers until they commit (see the `storage::postgres` module documentation). The
/// NOTIFY is sent at commit only, so a rolled-back write notifies no one.
const BUMP_CLOCK: &str =
    "UPDATE kms_clock SET seq = seq + 1 WHERE id = 1 RETURNING seq, pg_notify('kms_changes', '')";
const READ_FOR_UPDATE: &str = "SELECT version FROM kms_records WHERE key = $1 FOR UPDATE";
const UPSERT: &str = "INSERT INTO kms_records (key, value, version, changed) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version, \
     changed = EXCLUDED.changed";
const DELETE: &str = "DELETE FROM kms_records WHERE key = $1";

fn check(key: &str, expect: Expect, found: Option<u64>) -> Result<(), StorageError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::Conflict {
            key: key.to_string(),
            expected: expect,
            found: found.unwrap_or(0),
        })
    }
}

/// The first steps of every write, in its transaction: bump the clock FIRST (its row lock makes
/// writers commit in sequence order), read the record's version for update, and check
/// `expect`. Returns the write's sequence number and the version found, or rolls back and
/// fails with the conflict.
async fn begin_write(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &str,
    expect: Expect,
) -> Result<(i64, Option<u64>), Fail> {
    let seq: i64 = tx
        .query_one(&tx.prepare_cached(BUMP_CLOCK).await?, &[])
        .await?
        .try_get(0)?;
    let found = match tx
        .query_opt(&tx.prepare_cached(READ_FOR_UPDATE).await?, &[&key])
        .await?
    {
        Some(row) => Some(to_u64(key, row.try_get(0)?)?),
        None => None,
    };
    check(key, expect, found)?;
    Ok((seq, found))
}

/// One `put` in one transaction (see the `storage::postgres` module documentation for the
/// order of its steps).
pub(super) async fn put_tx(
    c: &mut Object,
    key: &str,
    value: &[u8],
    expect: Expect,
) -> Result<u64, Fail> {
    let tx = c.transaction().await?;
    // A failed check drops `tx`, which rolls it back.
    let (seq, found) = begin_write(&tx, key, expect).await?;
    let version = found.unwrap_or(0) + 1;
    let v = to_i64("version", version)?;
    tx.execute(&tx.prepare_cached(UPSERT).await?, &[&key, &value, &v, &seq])
        .await?;
    tx.commit().await?;
    Ok(version)
}

/// One `delete` in one transaction, ordered like [`put_tx`].
pub(super) async fn delete_tx(c: &mut Object, key: &str, expect: Expect) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    let (_, found) = begin_write(&tx, key, expect).await?;
    if found.is_none() {
        // Nothing to delete: nothing to commit either.
        tx.rollback().await?;
        return Ok(());
    }
    tx.execute(&tx.prepare_cached(DELETE).await?, &[&key])
        .await?;
    tx.commit().await?;
    Ok(())
}

const LOCK: &str = "SELECT pg_advisory_lock(hashtextextended($1, 0))";
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK_ALL: &str = "SELECT pg_advisory_unlock_all()";

/// Session advisory locks held on one connection of the lock pool. Dropping it unlocks them
/// in a spawned task and returns the connection, or discards the connection (which ends the
/// session, and so releases its locks) if unlocking fails or the locks were not all taken.
///
/// Writes fenced by the lock (`put_locked`, `delete_locked`) run on this same session, so they
/// fail once the session, and with it the lock, is gone.
struct PgLock {
    conn: tokio::sync::Mutex<Option<Object>>,
    connector: Connector,
    /// All asked-for locks are held and no lock query is in flight.
    complete: bool,
    timeout: Duration,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.get_mut().take() else {
            return;
        };
        // An acquisition cut short may still have a lock query waiting in the session: only
        // cancelling it and ending the session is sure to leave nothing held or queued.
        let runtime = tokio::runtime::Handle::try_current();
        match (self.complete, runtime) {
            (true, Ok(rt)) => {
                let timeout = self.timeout;
                let connector = self.connector.clone();
                rt.spawn(async move {
                    match tokio::time::timeout(timeout, conn.execute(UNLOCK_ALL, &[])).await {
                        Ok(Ok(_)) => drop(conn),
                        _ => discard(conn, &connector),
                    }
                });
            }
            _ => discard(conn, &self.connector),
        }
    }
}

impl PostgresBackend {
    /// Runs a write on the session that holds `lock`, so that it fails if the lock was lost
    /// with its session. A timeout or a broken session discards the session (the lock goes
    /// with it; later fenced writes fail too).
    pub(super) async fn on_lock_session<T>(
        &self,
        lock: &LockGuard,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, Fail>,
    ) -> Result<T, StorageError> {
        let target = &self.inner.target;
        let lost = || {
            StorageError::Io(format!(
                "the cluster lock's session with PostgreSQL at {target} has ended, and the lock \
                 with it: the write was not made; retry"
            ))
        };
        let Some(held) = lock.downcast_ref::<PgLock>() else {
            return Err(StorageError::Io(
                "a write fenced by a lock of another storage backend".into(),
            ));
        };
        let mut slot = held.conn.lock().await;
        let Some(conn) = slot.as_mut() else {
            return Err(lost());
        };
        if conn.is_closed() {
            if let Some(conn) = slot.take() {
                discard(conn, &self.inner.connector);
            }
            return Err(lost());
        }
        let limit = self.inner.op_timeout;
        match tokio::time::timeout(limit, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Storage(e))) => Err(e),
            Ok(Err(Fail::Pg(e))) => {
                if e.as_db_error().is_none() || conn.is_closed() {
                    if let Some(conn) = slot.take() {
                        discard(conn, &self.inner.connector);
                    }
                    let StorageError::Io(why) = pg_err(target, &e) else {
                        return Err(lost());
                    };
                    return Err(StorageError::Io(format!(
                        "{why} (the cluster lock is lost)"
                    )));
                }
                Err(pg_err(target, &e))
            }
            Err(_) => {
                if let Some(conn) = slot.take() {
                    discard(conn, &self.inner.connector);
                }
                Err(StorageError::Io(format!(
                    "PostgreSQL at {target} did not answer within {} s (whether the write \
                     happened is unknown; the cluster lock is given up)",
                    limit.as_secs()
                )))
            }
        }
    }

    /// [`Backend::lock`](crate::storage::Backend::lock): the locks, on one session of the lock
    /// pool.
    pub(super) async fn lock_names(&self, names: &[String]) -> Result<LockGuard, StorageError> {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.dedup();
        let target = &self.inner.target;
        let conn = self.inner.lock_pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => StorageError::Io(format!(
                "every connection for cluster locks to PostgreSQL at {target} stayed busy \
                     for {} s (other callers waiting for locks)",
                LOCK_CONNECTION_WAIT
                    .max(self.inner.connect_timeout)
                    .as_secs()
            )),
            e => pool_err(target, self.inner.connect_timeout, e),
        })?;
        // Built before the first lock query: if this future is dropped while waiting, the
        // guard discards the session and nothing stays locked.
        let mut guard = PgLock {
            conn: tokio::sync::Mutex::new(Some(conn)),
            connector: self.inner.connector.clone(),
            complete: false,
            timeout: self.inner.op_timeout,
        };
        for name in sorted {
            let Some(conn) = guard.conn.get_mut().as_ref() else {
                return Err(StorageError::Io("lock connection lost".into()));
            };
            // No time bound: a lock is waited for as long as its holder holds it. A dead
            // database ends the wait with an error (keepalives, tcp_user_timeout).
            let stmt = conn
                .prepare_cached(LOCK)
                .await
                .map_err(|e| pg_err(target, &e))?;
            conn.execute(&stmt, &[name])
                .await
                .map_err(|e| pg_err(target, &e))?;
        }
        guard.complete = true;
        Ok(LockGuard::new(guard))
    }

    /// [`Backend::try_lock`](crate::storage::Backend::try_lock).
    pub(super) async fn try_lock_name(
        &self,
        name: &str,
    ) -> Result<Option<LockGuard>, StorageError> {
        let target = &self.inner.target;
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(self.inner.connect_timeout),
            create: Some(self.inner.connect_timeout),
            recycle: Some(self.inner.connect_timeout),
        };
        let conn = self
            .inner
            .lock_pool
            .timeout_get(&timeouts)
            .await
            .map_err(|e| pool_err(target, self.inner.connect_timeout, e))?;
        let mut guard = PgLock {
            conn: tokio::sync::Mutex::new(Some(conn)),
            connector: self.inner.connector.clone(),
            complete: false,
            timeout: self.inner.op_timeout,
        };
        let Some(conn) = guard.conn.get_mut().as_ref() else {
            return Err(StorageError::Io("lock connection lost".into()));
        };
        let query = async {
            let stmt = conn.prepare_cached(TRY_LOCK).await?;
            conn.query_one(&stmt, &[&name]).await?.try_get::<_, bool>(0)
        };
        let taken = match tokio::time::timeout(self.inner.op_timeout, query).await {
            Ok(r) => r.map_err(|e| pg_err(target, &e))?,
            Err(_) => {
                return Err(StorageError::Io(format!(
                    "PostgreSQL at {target} did not answer a lock request within {} s",
                    self.inner.op_timeout.as_secs()
                )));
            }
        };
        guard.complete = true;
        if taken {
            Ok(Some(LockGuard::new(guard)))
        } else {
            // Nothing held: the connection goes back to the pool as it is.
            if let Some(conn) = guard.conn.get_mut().take() {
                drop(conn);
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::fresh;
    use super::*;
    use crate::storage::Backend;
    use tokio_postgres::NoTls;

    /// Locks are cluster-wide: a name held by one node is not free for another until the
    /// guard drops (released by a spawned task, so waited for).
    #[tokio::test]
    async fn locks_exclude_other_nodes_until_dropped() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let g = a.lock(&["y".into(), "x".into(), "x".into()]).await.unwrap();
        assert!(b.try_lock("x").await.unwrap().is_none());
        assert!(b.try_lock("y").await.unwrap().is_none());
        let free = b.try_lock("z").await.unwrap();
        assert!(free.is_some());
        // A waiter on another node gets it once released; its wait uses no main-pool
        // connection, so the holder can still write.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.lock(&["x".into()]).await.map(drop) })
        };
        for i in 0..8 {
            a.put(&format!("w/{i}"), Vec::new(), Expect::Any)
                .await
                .unwrap();
        }
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the lock was not released")
            .unwrap()
            .unwrap();
        // A lock wait dropped half-way leaves nothing held.
        let g = a.lock(&["q".into()]).await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(200), b.lock(&["q".into()])).await;
        assert!(cut.is_err());
        drop(g);
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(g) = a.try_lock("q").await.unwrap() {
                drop(g);
                break;
            }
            assert!(std::time::Instant::now() < give_up, "q stayed locked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes fenced by a lock run on the lock's session: they fail (and write nothing) once
    /// that session, and so the lock, is gone, where plain writes go on; a cancelled lock wait
    /// leaves no session queued in PostgreSQL.
    #[tokio::test]
    async fn fenced_writes_fail_once_the_lock_is_lost() {
        let Some(cfg) = fresh().await else { return };
        let a = PostgresBackend::connect(&cfg).await.unwrap();
        let b = PostgresBackend::connect(&cfg).await.unwrap();
        let g = a.lock(&["name/x".into()]).await.unwrap();
        assert_eq!(
            a.put_locked(&g, "k", b"1".to_vec(), Expect::Absent)
                .await
                .unwrap(),
            1
        );
        a.delete_locked(&g, "k", Expect::Version(1)).await.unwrap();
        // A waiter on B gives up: its session must not stay queued for the lock.
        let cut =
            tokio::time::timeout(Duration::from_millis(200), b.lock(&["name/x".into()])).await;
        assert!(cut.is_err());
        let (admin, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let queued = async || -> i64 {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        };
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while queued().await > 0 {
            assert!(
                std::time::Instant::now() < give_up,
                "a cancelled wait stays queued"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The lock's session ends (a PostgreSQL restart, a failover, pg_terminate_backend).
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        let e = a
            .put_locked(&g, "k", b"2".to_vec(), Expect::Any)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Io(_)), "{e}");
        assert!(e.to_string().contains("lock"), "{e}");
        assert!(a.delete_locked(&g, "k", Expect::Any).await.is_err());
        assert_eq!(a.get("k").await.unwrap(), None);
        // Another node may take the lock now; plain writes still work.
        assert!(b.try_lock("name/x").await.unwrap().is_some());
        a.put("k", b"3".to_vec(), Expect::Any).await.unwrap();
        drop(g);
    }
}
