//! The PostgreSQL store, for several gateways on one database: `tokio-postgres` with a
//! `deadpool-postgres` pool (async all the way: no pingora worker ever blocks on the database),
//! TLS through rustls, versioned migrations under an advisory lock, and a revocation log that
//! every instance follows (see `listener.rs`).

mod errors;
mod listener;
mod tls;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::{
    AuthRecord, Cursor, KeyHash, KeyRecord, KeyUpdate, KeyVersion, NewKey, PoolStatus, Store,
    StoreError, TOMBSTONE,
};
use crate::config::PostgresConfig;

pub use listener::RevocationListener;
pub use tls::Tls;

/// The channel every instance `LISTEN`s on; payload `seq:at_us:kind:hex(hash):version`.
pub const CHANNEL: &str = "agentry_key_events";
/// Advisory lock held while migrating: ten gateways starting at once migrate exactly once.
const MIGRATION_LOCK: i64 = 0x6167_656e_7472_7901;
/// Advisory lock held by every transaction that appends to the revocation log, so sequence
/// numbers commit in order and a reader that saw `seq` has seen everything below it.
const EVENTS_LOCK: i64 = 0x6167_656e_7472_7902;

/// Schema migrations, applied in order under `MIGRATION_LOCK`; `agentry_schema.version` records
/// how many ran, `agentry_migrations` when each one ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    api_key_id    TEXT PRIMARY KEY,
    inbox_id      TEXT NOT NULL,
    pod_id        TEXT,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE,
    created_at_us BIGINT NOT NULL,
    used_at_us    BIGINT
);
CREATE INDEX api_keys_by_inbox ON api_keys (inbox_id, created_at_us DESC, api_key_id DESC);
CREATE TABLE gateway_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE key_events (
    seq      BIGSERIAL PRIMARY KEY,
    key_hash BYTEA NOT NULL,
    kind     TEXT NOT NULL,
    at_us    BIGINT NOT NULL
);
CREATE INDEX key_events_by_time ON key_events (at_us);
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN permissions TEXT,
                     ADD COLUMN expires_at_us BIGINT,
                     ADD COLUMN updated_at_us BIGINT,
                     ADD COLUMN created_by TEXT;
UPDATE api_keys SET updated_at_us = created_at_us;
ALTER TABLE api_keys ALTER COLUMN updated_at_us SET NOT NULL;
"#,
    // Every change bumps a key's version; the change log carries it (0: logged before versions).
    r#"
ALTER TABLE api_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE key_events ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
"#,
];

/// The columns of a `KeyRecord`, in `row_to_record`'s order.
const RECORD_COLUMNS: &str = "api_key_id, inbox_id, pod_id, name, prefix, created_at_us, \
     used_at_us, permissions, expires_at_us, updated_at_us, created_by";

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict("duplicate api_key_id or key hash".into())
        }
        _ => unavailable(errors::describe(&e)),
    }
}

/// The connection settings shared by the pool and the listener.
#[derive(Clone)]
pub(crate) struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// `host=… port=… database=… user=…`, for messages (never the password).
    pub target: String,
}

impl Connector {
    pub fn new(cfg: &PostgresConfig) -> Result<Connector, StoreError> {
        let mut config: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|_| unavailable("store.url is not a valid connection string"))?;
        config.connect_timeout(cfg.connect_timeout);
        config.options(format!(
            "-c statement_timeout={}",
            cfg.statement_timeout.as_millis()
        ));
        if config.get_application_name().is_none() {
            config.application_name("agentry-gateway");
        }
        let tls = tls::new(cfg.tls_ca_path.as_deref())?;
        let target = errors::target(&config);
        Ok(Connector {
            config,
            tls,
            target,
        })
    }

    /// A failure, with where it happened: `PostgreSQL at host=… port=… database=… user=…: …`.
    pub fn error(&self, what: impl std::fmt::Display) -> StoreError {
        unavailable(format!("PostgreSQL at {}: {what}", self.target))
    }

    /// One connection outside the pool, driven on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, conn) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.error(errors::describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("postgres connection ended: {e}");
            }
        });
        Ok(client)
    }
}

pub struct PostgresStore {
    pool: Pool,
    connector: Connector,
    settings: PostgresConfig,
    /// The revocation log's end when this store was opened (before any cache could fill).
    start_seq: i64,
}

impl PostgresStore {
    /// Connects, migrates the schema (under the advisory lock) and builds the pool. Call on
    /// a runtime; the pool's connections are made later, on the runtimes that use them.
    pub async fn open(settings: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let connector = Connector::new(settings)?;
        let mut client = connector.connect().await?;
        migrate(&mut client)
            .await
            .map_err(|e| connector.error(e.cause()))?;
        let start_seq: i64 = client
            .query_one("SELECT COALESCE(max(seq), 0) FROM key_events", &[])
            .await
            .map_err(|e| connector.error(errors::describe(&e)))?
            .get(0);
        drop(client);
        let manager = Manager::from_config(
            connector.config.clone(),
            connector.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(unavailable)?;
        Ok(PostgresStore {
            pool,
            connector,
            settings: settings.clone(),
            start_seq,
        })
    }

    /// The listener that follows the revocation log for this instance's caches.
    pub fn listener(&self) -> RevocationListener {
        RevocationListener::new(self.connector.clone(), &self.settings, self.start_seq)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| self.connector.error(errors::describe_pool(&e)))
    }

    /// Appends a change (the key's new version) to the revocation log and notifies every
    /// instance, inside `tx`.
    async fn log_change(
        tx: &deadpool_postgres::Transaction<'_>,
        hash: &KeyHash,
        kind: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
            .await
            .map_err(db_error)?;
        let at_us = crate::clock::now_us();
        let row = tx
            .query_one(
                "INSERT INTO key_events (key_hash, kind, at_us, version) VALUES ($1, $2, $3, $4)
                 RETURNING seq",
                &[&&hash[..], &kind, &at_us, &version],
            )
            .await
            .map_err(db_error)?;
        let seq: i64 = row.get(0);
        let payload = format!("{seq}:{at_us}:{kind}:{}:{version}", hex::encode(hash));
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Applies every migration this database has not seen, exactly once however many gateways
/// start together; refuses a database migrated by a newer gateway.
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS agentry_schema (version INT NOT NULL);
         CREATE TABLE IF NOT EXISTS agentry_migrations (
             version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
         INSERT INTO agentry_schema (version)
             SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM agentry_schema);",
    )
    .await
    .map_err(db_error)?;
    let version: i32 = tx
        .query_one("SELECT version FROM agentry_schema", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::Unavailable(format!(
            "database schema version {version} is newer than this gateway knows ({known}); upgrade the gateway"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let v = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute(
            "INSERT INTO agentry_migrations (version) VALUES ($1)",
            &[&v],
        )
        .await
        .map_err(db_error)?;
        tx.execute("UPDATE agentry_schema SET version = $1", &[&v])
            .await
            .map_err(db_error)?;
        log::info!("postgres schema migrated to version {v}");
    }
    tx.commit().await.map_err(db_error)
}

fn hash_of(bytes: &[u8]) -> Result<KeyHash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Unavailable("stored key hash is not 32 bytes".into()))
}

fn row_to_record(r: &tokio_postgres::Row) -> KeyRecord {
    KeyRecord {
        api_key_id: r.get(0),
        inbox_id: r.get(1),
        pod_id: r.get(2),
        name: r.get(3),
        prefix: r.get(4),
        created_at_us: r.get(5),
        used_at_us: r.get(6),
        permissions: r.get(7),
        expires_at_us: r.get(8),
        updated_at_us: r.get(9),
        created_by: r.get(10),
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        let c = self.client().await?;
        let r = &key.record;
        let st = c
            .prepare_cached(
                "INSERT INTO api_keys (api_key_id, inbox_id, pod_id, name, prefix, key_hash,
                                       created_at_us, permissions, expires_at_us, updated_at_us,
                                       created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .await
            .map_err(db_error)?;
        // Autocommit: the row is committed (and, with synchronous_commit on, durable) when
        // this returns.
        c.execute(
            &st,
            &[
                &r.api_key_id,
                &r.inbox_id,
                &r.pod_id,
                &r.name,
                &r.prefix,
                &&key.hash[..],
                &r.created_at_us,
                &r.permissions,
                &r.expires_at_us,
                &r.updated_at_us,
                &r.created_by,
            ],
        )
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn list_keys(
        &self,
        inbox_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let c = self.client().await?;
        let limit = limit as i64;
        let rows = match after {
            None => {
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM api_keys WHERE inbox_id = $1
                         ORDER BY created_at_us DESC, api_key_id DESC LIMIT $2"
                    ))
                    .await
                    .map_err(db_error)?;
                c.query(&st, &[&inbox_id, &limit]).await
            }
            Some(after) => {
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM api_keys WHERE inbox_id = $1
                           AND (created_at_us, api_key_id) < ($2, $3)
                         ORDER BY created_at_us DESC, api_key_id DESC LIMIT $4"
                    ))
                    .await
                    .map_err(db_error)?;
                c.query(
                    &st,
                    &[&inbox_id, &after.created_at_us, &after.api_key_id, &limit],
                )
                .await
            }
        }
        .map_err(db_error)?;
        Ok(rows.iter().map(row_to_record).collect())
    }

    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyVersion>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_error)?;
        let row = tx
            .query_opt(
                "DELETE FROM api_keys WHERE inbox_id = $1 AND api_key_id = $2 RETURNING key_hash",
                &[&inbox_id, &api_key_id],
            )
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash = hash_of(row.get::<_, &[u8]>(0))?;
        // The row removal and its log entry commit together, or not at all.
        PostgresStore::log_change(&tx, &hash, "delete", TOMBSTONE).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(KeyVersion {
            hash,
            version: TOMBSTONE,
        }))
    }

    async fn update_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        update: KeyUpdate,
    ) -> Result<Option<(KeyRecord, KeyVersion)>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_error)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE api_keys SET name = COALESCE($3, name),
                         permissions = COALESCE($4, permissions), updated_at_us = $5,
                         version = version + 1
                     WHERE api_key_id = $1 AND inbox_id = $2
                     RETURNING {RECORD_COLUMNS}, key_hash, version"
                ),
                &[
                    &api_key_id,
                    &inbox_id,
                    &update.name,
                    &update.permissions,
                    &update.updated_at_us,
                ],
            )
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash = hash_of(row.get::<_, &[u8]>(11))?;
        let version: i64 = row.get(12);
        // Every instance learns the new version: the same log as deletes.
        PostgresStore::log_change(&tx, &hash, "update", version).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some((row_to_record(&row), KeyVersion { hash, version })))
    }

    async fn get_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM api_keys WHERE api_key_id = $1 AND inbox_id = $2"
                ),
                &[&api_key_id, &inbox_id],
            )
            .await
            .map_err(db_error)?;
        Ok(row.as_ref().map(row_to_record))
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT api_key_id, inbox_id, pod_id, key_hash, permissions, expires_at_us,
                        version
                 FROM api_keys WHERE key_hash = $1",
            )
            .await
            .map_err(db_error)?;
        let row = c.query_opt(&st, &[&&hash[..]]).await.map_err(db_error)?;
        row.map(|r| {
            Ok(AuthRecord {
                api_key_id: r.get(0),
                inbox_id: r.get(1),
                pod_id: r.get(2),
                hash: hash_of(r.get::<_, &[u8]>(3))?,
                permissions: r.get(4),
                expires_at_us: r.get(5),
                version: r.get(6),
            })
        })
        .transpose()
    }

    async fn record_usage(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = marks.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<i64> = marks.iter().map(|(_, t)| *t).collect();
        let c = self.client().await?;
        // One statement for every mark; GREATEST keeps used_at from moving backwards when
        // instances flush out of order. The rows are locked first, in key order: instances
        // flushing overlapping keys at once then wait for each other instead of deadlocking
        // (an UPDATE ... FROM locks rows in whatever order its join yields them).
        let st = c
            .prepare_cached(
                "WITH m AS (
                     SELECT * FROM unnest($1::text[], $2::bigint[]) AS m(api_key_id, used_at_us)
                 ), locked AS MATERIALIZED (
                     SELECT k.api_key_id FROM api_keys AS k JOIN m USING (api_key_id)
                     ORDER BY k.api_key_id FOR UPDATE OF k
                 )
                 UPDATE api_keys AS k
                 SET used_at_us = GREATEST(COALESCE(k.used_at_us, 0), m.used_at_us)
                 FROM m
                 WHERE k.api_key_id = m.api_key_id
                   AND k.api_key_id IN (SELECT api_key_id FROM locked)",
            )
            .await
            .map_err(db_error)?;
        c.execute(&st, &[&ids, &times]).await.map_err(db_error)?;
        Ok(())
    }

    async fn get_or_create_secret(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO gateway_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate],
        )
        .await
        .map_err(db_error)?;
        let row = c
            .query_one(
                "SELECT value FROM gateway_secrets WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let s = self.pool.status();
        Some(PoolStatus {
            in_use: s.size.saturating_sub(s.available),
            idle: s.available,
            waiting: s.waiting,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[])
            .await
            .map_err(|e| self.connector.error(errors::describe(&e)))?;
        Ok(())
    }
}
