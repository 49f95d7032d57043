//! The schema: creating it in an empty database, checking (and later migrating) its version
//! under an advisory lock, and checking the server's durability settings at connect.

use super::session::{pg_err, with_causes};
use crate::storage::StorageError;

/// The schema version this binary writes and understands.
const SCHEMA_VERSION: i32 = 1;
/// The advisory lock (two-key form, a namespace apart from the one-key locks of
/// [`Backend::lock`](crate::storage::Backend::lock)) that serialises schema creation and
/// migration between nodes starting together.
const SCHEMA_LOCK: (i32, i32) = (0x006b_6d73, 1);

const SCHEMA_V1: &str = r#"
CREATE TABLE kms_records (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    changed bigint NOT NULL
);
CREATE INDEX kms_records_changed ON kms_records (changed);
CREATE TABLE kms_clock (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);
INSERT INTO kms_clock (id, seq) VALUES (1, 0);
"#;

/// Warns loudly when the server may lose acknowledged writes. Returns whether our sessions
/// must set `synchronous_commit = on` themselves (the server's default is off).
pub(super) async fn check_settings(
    client: &tokio_postgres::Client,
    target: &str,
) -> Result<bool, StorageError> {
    let show = async |name: &str| -> Result<String, StorageError> {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| pg_err(target, &e))?;
        row.try_get::<_, String>(0).map_err(|e| pg_err(target, &e))
    };
    if show("fsync").await? != "on" {
        tracing::error!(
            "PostgreSQL at {target} runs with fsync = off: a crash of its machine can lose \
             keys and changes this KMS acknowledged. Set fsync = on in postgresql.conf"
        );
    }
    let sync = show("synchronous_commit").await?;
    if sync == "off" {
        tracing::warn!(
            "PostgreSQL at {target} has synchronous_commit = off: this server sets it on for \
             its own sessions, so its acknowledged writes stay durable; set it on in \
             postgresql.conf (or for the role) to stop this warning"
        );
        return Ok(true);
    }
    Ok(false)
}

/// Creates the schema in an empty database, or checks that its version is one this binary
/// knows, under an advisory lock so that nodes starting together do it once.
pub(super) async fn migrate(
    client: &tokio_postgres::Client,
    target: &str,
) -> Result<(), StorageError> {
    let e = |e: tokio_postgres::Error| pg_err(target, &e);
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
        )
        .await
        .map_err(e)?;
    let r = migrate_locked(client, target).await;
    // Also released when the set-up connection closes, right after.
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
        )
        .await;
    r
}

async fn migrate_locked(client: &tokio_postgres::Client, target: &str) -> Result<(), StorageError> {
    let e = |e: tokio_postgres::Error| pg_err(target, &e);
    client.batch_execute("BEGIN").await.map_err(e)?;
    let r = async {
        // Looked up rather than CREATE ... IF NOT EXISTS, which needs the CREATE privilege
        // even when the table exists.
        let exists: bool = client
            .query_one("SELECT to_regclass('kms_schema') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        let version: Option<i32> = if exists {
            client
                .query_opt("SELECT version FROM kms_schema WHERE id = 1", &[])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
        } else {
            None
        };
        Ok::<_, tokio_postgres::Error>(version)
    }
    .await;
    let version = match r {
        Ok(v) => v,
        Err(err) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e(err));
        }
    };
    match version {
        Some(SCHEMA_VERSION) => {
            client.batch_execute("COMMIT").await.map_err(e)?;
            Ok(())
        }
        Some(v) if v > SCHEMA_VERSION => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StorageError::Io(format!(
                "the database at {target} has schema version {v}, newer than this kms-server \
                 knows ({SCHEMA_VERSION}): a newer kms-server has migrated it. Run that newer \
                 version on every node (nodes are never downgraded once migrated)"
            )))
        }
        Some(v) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StorageError::Io(format!(
                "the database at {target} has schema version {v}, which no kms-server wrote: \
                 is kms_schema from another program?"
            )))
        }
        None => {
            let create = async {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS kms_schema \
                         (id int PRIMARY KEY CHECK (id = 1), version int NOT NULL)",
                    )
                    .await?;
                client.batch_execute(SCHEMA_V1).await?;
                client
                    .execute(
                        "INSERT INTO kms_schema (id, version) VALUES (1, $1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            };
            match create.await {
                Ok(()) => {
                    tracing::info!("created the KMS schema (version {SCHEMA_VERSION}) at {target}");
                    Ok(())
                }
                Err(err) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    let hint = if err.code()
                        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    {
                        ": the role needs CREATE on the database's schema (e.g. own the database)"
                    } else {
                        ""
                    };
                    Err(StorageError::Io(format!(
                        "cannot create the KMS schema at {target}: {}{hint}",
                        err.as_db_error()
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| with_causes(&err))
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::PostgresBackend;
    use super::super::tests::fresh;
    use tokio_postgres::NoTls;

    /// A schema newer than this binary knows stops the start, saying why.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(cfg) = fresh().await else { return };
        drop(PostgresBackend::connect(&cfg).await.unwrap());
        let (client, conn) = tokio_postgres::connect(&cfg.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("UPDATE kms_schema SET version = 99")
            .await
            .unwrap();
        let e = PostgresBackend::connect(&cfg).await.err().unwrap();
        assert!(e.to_string().contains("schema version 99, newer"), "{e}");
    }
}
