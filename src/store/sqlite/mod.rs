//! The embedded SQLite store: one file, WAL, `synchronous = FULL`, schema migrated on open.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. One writer connection
//! serialises writes; a few reader connections serve lookups concurrently (WAL allows this).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{
    AuthRecord, Cursor, KeyRecord, KeyUpdate, KeyVersion, NewKey, Store, StoreError, TOMBSTONE,
};
use crate::keys::KeyHash;

pub mod lock;

const READERS: usize = 4;
/// How long a successful check that the database file is still in place is trusted. The
/// check is a `stat`: done on every call it is a syscall per key lookup.
const FILE_CHECK_INTERVAL_US: i64 = 250_000;
const BUSY_TIMEOUT_MS: u32 = 5000;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    api_key_id    TEXT PRIMARY KEY NOT NULL,
    inbox_id      TEXT NOT NULL,
    pod_id        TEXT,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      BLOB NOT NULL UNIQUE,
    created_at_us INTEGER NOT NULL,
    used_at_us    INTEGER
);
CREATE INDEX api_keys_by_inbox ON api_keys (inbox_id, created_at_us DESC, api_key_id DESC);
"#,
    r#"
CREATE TABLE gateway_secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN permissions TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at_us INTEGER;
ALTER TABLE api_keys ADD COLUMN updated_at_us INTEGER;
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
UPDATE api_keys SET updated_at_us = created_at_us;
"#,
    // Every change bumps a key's version (caches refuse copies older than one they know of).
    r#"
ALTER TABLE api_keys ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
"#,
];

/// The columns of a `KeyRecord`, in `row_to_record`'s order.
const RECORD_COLUMNS: &str = "api_key_id, inbox_id, pod_id, name, prefix, created_at_us, \
     used_at_us, permissions, expires_at_us, COALESCE(updated_at_us, created_at_us), created_by";

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Identity of the file the connections have open: (device, inode).
    file_id: AtomicU64,
    /// When the file was last found in place (µs since the epoch); 0 after a failed check.
    file_ok_at_us: AtomicI64,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The single-writer lock, held for the store's life (empty while an upgrade waits).
    _writer_lock: Arc<lock::LockSlot>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn file_id(path: &Path) -> std::io::Result<u64> {
    let m = std::fs::metadata(path)?;
    Ok(m.dev().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ m.ino())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    // FULL: a commit is fsynced before it returns, so a 201 means the key survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(unavailable)? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {version} is newer than this gateway knows ({}); upgrade the gateway",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates its schema, refusing a file
    /// another process holds (see `open_exclusive`).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_exclusive(path, None)
    }

    /// Opens the database file, first taking its single-writer lock (`<path>.lock`).
    ///
    /// `handover: None`: a file another process holds is an error naming the file and that
    /// process's pid. `Some(wait)`, for the new process of a zero-downtime upgrade (the old one
    /// holds the lock until it exits, after its grace period): the file is opened anyway and
    /// the lock taken in the background as soon as the old process lets go; still held after
    /// `wait`, an error is logged. Never blocks the caller.
    pub fn open_exclusive(
        path: &Path,
        handover: Option<std::time::Duration>,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let (lock, wait_for) = match (lock::try_lock(path)?, handover) {
            (lock::Attempt::Taken(l), _) => (Some(l), None),
            (lock::Attempt::Held { pid }, None) => return Err(lock::held_error(path, pid)),
            (lock::Attempt::Held { pid }, Some(wait)) => (None, Some((pid, wait))),
        };
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let id = file_id(path).map_err(unavailable)?;
        let writer_lock = Arc::new(Mutex::new(lock));
        if let Some((pid, wait)) = wait_for {
            lock::take_when_free(path, pid, wait, Arc::downgrade(&writer_lock));
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                file_id: AtomicU64::new(id),
                file_ok_at_us: AtomicI64::new(0),
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                _writer_lock: writer_lock,
            }),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_checked(false, f).await
    }

    /// Runs `f` on the blocking pool after checking the file is in place (`force`: whatever
    /// the last check said).
    async fn run_checked<T, F>(&self, force: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.check_file(force)?;
            f(&inner)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

impl Inner {
    /// Fails when the database file was removed or replaced under us: open connections would
    /// otherwise keep serving a deleted file's stale contents. A file put back (or restored)
    /// at the path is reopened, so the gateway recovers without a restart.
    fn check_file(&self, force: bool) -> Result<(), StoreError> {
        let now_us = crate::clock::now_us();
        let ok_at = self.file_ok_at_us.load(Ordering::Acquire);
        if !force && ok_at != 0 && now_us - ok_at < FILE_CHECK_INTERVAL_US {
            return Ok(());
        }
        let now = file_id(&self.path).map_err(|e| {
            self.file_ok_at_us.store(0, Ordering::Release);
            StoreError::Unavailable(format!("database file {}: {e}", self.path.display()))
        })?;
        if now == self.file_id.load(Ordering::Acquire) {
            self.file_ok_at_us.store(now_us, Ordering::Release);
            return Ok(());
        }
        let mut writer = self.writer.lock();
        let mut fresh = open_connection(&self.path)?;
        migrate(&mut fresh)?;
        *writer = fresh;
        for r in &self.readers {
            *r.lock() = open_connection(&self.path)?;
        }
        self.file_id.store(now, Ordering::Release);
        self.file_ok_at_us.store(now_us, Ordering::Release);
        log::warn!(
            "database file {} was replaced; connections reopened",
            self.path.display()
        );
        Ok(())
    }

    fn reader(&self) -> parking_lot::MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Some(g) = r.try_lock() {
                return g;
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock()
    }
}

/// One transaction of `used_at` marks; a stored time only ever moves forward.
fn write_marks(conn: &mut Connection, marks: &[(String, i64)]) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut st = tx
            .prepare_cached(
                "UPDATE api_keys SET used_at_us = ?2
                 WHERE api_key_id = ?1 AND (used_at_us IS NULL OR used_at_us < ?2)",
            )
            .map_err(unavailable)?;
        for (id, at) in marks {
            st.execute(params![id, at]).map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        api_key_id: r.get(0)?,
        inbox_id: r.get(1)?,
        pod_id: r.get(2)?,
        name: r.get(3)?,
        prefix: r.get(4)?,
        created_at_us: r.get(5)?,
        used_at_us: r.get(6)?,
        permissions: r.get(7)?,
        expires_at_us: r.get(8)?,
        updated_at_us: r.get(9)?,
        created_by: r.get(10)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_or_create_secret(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let name = name.to_owned();
        self.run(move |db| {
            let conn = db.writer.lock();
            conn.execute(
                "INSERT OR IGNORE INTO gateway_secrets (name, value) VALUES (?1, ?2)",
                params![name, candidate],
            )
            .map_err(unavailable)?;
            conn.query_row(
                "SELECT value FROM gateway_secrets WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(unavailable)
        })
        .await
    }

    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        self.run(move |db| {
            let conn = db.writer.lock();
            let r = &key.record;
            conn.execute(
                "INSERT INTO api_keys (api_key_id, inbox_id, pod_id, name, prefix, key_hash, created_at_us,
                                       permissions, expires_at_us, updated_at_us, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    r.api_key_id, r.inbox_id, r.pod_id, r.name, r.prefix, &key.hash[..], r.created_at_us,
                    r.permissions, r.expires_at_us, r.updated_at_us, r.created_by
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict("duplicate api_key_id or key hash".into())
                }
                other => unavailable(other),
            })?;
            Ok(())
        })
        .await
    }

    async fn list_keys(
        &self,
        inbox_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let inbox_id = inbox_id.to_owned();
        let after = after.cloned();
        self.run(move |db| {
            let conn = db.reader();
            let limit = limit as i64;
            let rows = match &after {
                None => {
                    let mut st = conn
                        .prepare_cached(&format!(
                            "SELECT {RECORD_COLUMNS} FROM api_keys WHERE inbox_id = ?1
                             ORDER BY created_at_us DESC, api_key_id DESC LIMIT ?2"
                        ))
                        .map_err(unavailable)?;
                    let it = st
                        .query_map(params![inbox_id, limit], row_to_record)
                        .map_err(unavailable)?;
                    it.collect::<Result<Vec<_>, _>>()
                }
                Some(c) => {
                    let mut st = conn
                        .prepare_cached(&format!(
                            "SELECT {RECORD_COLUMNS} FROM api_keys
                             WHERE inbox_id = ?1 AND (created_at_us, api_key_id) < (?2, ?3)
                             ORDER BY created_at_us DESC, api_key_id DESC LIMIT ?4"
                        ))
                        .map_err(unavailable)?;
                    let it = st
                        .query_map(
                            params![inbox_id, c.created_at_us, c.api_key_id, limit],
                            row_to_record,
                        )
                        .map_err(unavailable)?;
                    it.collect::<Result<Vec<_>, _>>()
                }
            };
            rows.map_err(unavailable)
        })
        .await
    }

    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyVersion>, StoreError> {
        let inbox_id = inbox_id.to_owned();
        let api_key_id = api_key_id.to_owned();
        self.run(move |db| {
            let conn = db.writer.lock();
            let hash: Option<Vec<u8>> = conn
                .query_row(
                    "DELETE FROM api_keys WHERE api_key_id = ?1 AND inbox_id = ?2 RETURNING key_hash",
                    params![api_key_id, inbox_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(hash
                .and_then(|h| h.try_into().ok())
                .map(|hash| KeyVersion {
                    hash,
                    version: TOMBSTONE,
                }))
        })
        .await
    }

    async fn update_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        update: KeyUpdate,
    ) -> Result<Option<(KeyRecord, KeyVersion)>, StoreError> {
        let inbox_id = inbox_id.to_owned();
        let api_key_id = api_key_id.to_owned();
        self.run(move |db| {
            let mut conn = db.writer.lock();
            let tx = conn.transaction().map_err(unavailable)?;
            let changed = tx
                .execute(
                    "UPDATE api_keys SET name = COALESCE(?3, name),
                         permissions = COALESCE(?4, permissions), updated_at_us = ?5,
                         version = version + 1
                     WHERE api_key_id = ?1 AND inbox_id = ?2",
                    params![
                        api_key_id,
                        inbox_id,
                        update.name,
                        update.permissions,
                        update.updated_at_us
                    ],
                )
                .map_err(unavailable)?;
            if changed == 0 {
                return Ok(None);
            }
            let (record, hash, version) = tx
                .query_row(
                    &format!(
                        "SELECT {RECORD_COLUMNS}, key_hash, version FROM api_keys
                         WHERE api_key_id = ?1"
                    ),
                    params![api_key_id],
                    |r| {
                        Ok((
                            row_to_record(r)?,
                            r.get::<_, Vec<u8>>(11)?,
                            r.get::<_, i64>(12)?,
                        ))
                    },
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            let hash: KeyHash = hash
                .try_into()
                .map_err(|_| unavailable("stored key hash is not 32 bytes"))?;
            Ok(Some((record, KeyVersion { hash, version })))
        })
        .await
    }

    async fn get_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let inbox_id = inbox_id.to_owned();
        let api_key_id = api_key_id.to_owned();
        self.run(move |db| {
            let conn = db.reader();
            conn.query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM api_keys WHERE api_key_id = ?1 AND inbox_id = ?2"
                ),
                params![api_key_id, inbox_id],
                row_to_record,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError> {
        let hash = *hash;
        self.run(move |db| {
            let conn = db.reader();
            let mut st = conn
                .prepare_cached(
                    "SELECT api_key_id, inbox_id, pod_id, key_hash, permissions, expires_at_us,
                            version
                     FROM api_keys WHERE key_hash = ?1",
                )
                .map_err(unavailable)?;
            st.query_row(params![&hash[..]], |r| {
                let stored: Vec<u8> = r.get(3)?;
                Ok(AuthRecord {
                    api_key_id: r.get(0)?,
                    inbox_id: r.get(1)?,
                    pod_id: r.get(2)?,
                    hash: stored.try_into().unwrap_or([0u8; 32]),
                    permissions: r.get(4)?,
                    expires_at_us: r.get(5)?,
                    version: r.get(6)?,
                })
            })
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn record_usage(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let marks = marks.to_vec();
        self.run(move |db| {
            let mut conn = db.writer.lock();
            // `used_at` marks are not worth an fsync per transaction (a flush writes many small
            // ones): NORMAL still survives a crash of the process (WAL), and a power loss
            // costs at most the marks since the last synced commit or checkpoint. Key writes
            // keep FULL: it is restored before the lock is released.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(unavailable)?;
            let written = write_marks(&mut conn, &marks);
            if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
                // Never leave the writer unsynced: start over with a fresh connection.
                log::error!("cannot restore synchronous=FULL ({e}); reopening the writer");
                *conn = open_connection(&db.path)?;
            }
            written
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run_checked(true, |db| {
            let conn = db.reader();
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
