//! The `Store` contract, run against every backend: SQLite (always) and PostgreSQL (each test
//! in a database of its own; see `common/pgdb.rs` for when it runs). Backend-specific
//! behaviour (migrations under a lock, cross-instance usage merges) follows.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentry_gateway::config::PostgresConfig;
use agentry_gateway::store::postgres::PostgresStore;
use agentry_gateway::store::sqlite::SqliteStore;
use agentry_gateway::store::{
    Cursor, KeyRecord, KeyUpdate, KeyVersion, NewKey, Store, StoreError, TOMBSTONE,
};
use common::TestDb;

fn key(id: &str, inbox: &str, at: i64, h: u8) -> NewKey {
    NewKey {
        record: KeyRecord {
            api_key_id: id.into(),
            inbox_id: inbox.into(),
            pod_id: Some("pod_a".into()),
            name: format!("n{id}"),
            prefix: "agk_abc".into(),
            created_at_us: at,
            used_at_us: None,
            permissions: None,
            expires_at_us: None,
            updated_at_us: at,
            created_by: None,
        },
        hash: [h; 32],
    }
}

fn pg_config(db: &TestDb) -> PostgresConfig {
    PostgresConfig {
        url: db.url(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
        tls_ca_path: None,
        revocation_max_staleness: Duration::from_secs(2),
        revocation_log_retention: Duration::from_secs(3600),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `check` on a fresh SQLite store and, when a server answers, a fresh PostgreSQL one.
fn on_every_store<F, Fut>(test: &str, check: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("g.db")).unwrap());
    rt.block_on(check(sqlite));
    if let Some(db) = TestDb::create(test) {
        let pg: Arc<dyn Store> =
            Arc::new(rt.block_on(PostgresStore::open(&pg_config(&db))).unwrap());
        rt.block_on(check(pg));
    }
}

#[test]
fn create_list_delete_roundtrip() {
    on_every_store("store::create_list_delete_roundtrip", |s| async move {
        s.create_key(key("k1", "i", 10, 1)).await.unwrap();
        s.create_key(key("k2", "i", 20, 2)).await.unwrap();
        s.create_key(key("k3", "other", 30, 3)).await.unwrap();
        let all = s.list_keys("i", None, 10).await.unwrap();
        let ids: Vec<_> = all.iter().map(|k| k.api_key_id.as_str()).collect();
        assert_eq!(ids, ["k2", "k1"]);
        assert_eq!(all[0], key("k2", "i", 20, 2).record);
        let after = Cursor {
            created_at_us: 20,
            api_key_id: "k2".into(),
        };
        let rest = s.list_keys("i", Some(&after), 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].api_key_id, "k1");
        assert_eq!(s.delete_key("other", "k1").await.unwrap(), None);
        assert_eq!(
            s.delete_key("i", "k1").await.unwrap(),
            Some(KeyVersion {
                hash: [1; 32],
                version: TOMBSTONE
            })
        );
        assert_eq!(s.delete_key("i", "k1").await.unwrap(), None);
        assert!(s.find_by_hash(&[1; 32]).await.unwrap().is_none());
        let found = s.find_by_hash(&[2; 32]).await.unwrap().unwrap();
        assert_eq!(found.api_key_id, "k2");
        assert_eq!(found.inbox_id, "i");
        assert_eq!(found.pod_id.as_deref(), Some("pod_a"));
        assert_eq!(found.hash, [2; 32]);
        s.ping().await.unwrap();
    });
}

#[test]
fn keyset_order_breaks_ties_by_id() {
    on_every_store("store::keyset_order_breaks_ties_by_id", |s| async move {
        for (id, h) in [("a", 1), ("c", 2), ("b", 3)] {
            s.create_key(key(id, "i", 5, h)).await.unwrap();
        }
        let page = s.list_keys("i", None, 2).await.unwrap();
        let ids: Vec<_> = page.iter().map(|k| k.api_key_id.as_str()).collect();
        assert_eq!(ids, ["c", "b"]);
        let after = Cursor {
            created_at_us: 5,
            api_key_id: "b".into(),
        };
        let rest = s.list_keys("i", Some(&after), 2).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].api_key_id, "a");
    });
}

#[test]
fn usage_never_moves_backwards() {
    on_every_store("store::usage_never_moves_backwards", |s| async move {
        s.create_key(key("k1", "i", 10, 1)).await.unwrap();
        s.record_usage(&[("k1".into(), 500)]).await.unwrap();
        s.record_usage(&[("k1".into(), 400), ("gone".into(), 1)])
            .await
            .unwrap();
        s.record_usage(&[]).await.unwrap();
        let k = &s.list_keys("i", None, 1).await.unwrap()[0];
        assert_eq!(k.used_at_us, Some(500));
    });
}

#[test]
fn duplicate_hash_or_id_is_a_conflict() {
    on_every_store(
        "store::duplicate_hash_or_id_is_a_conflict",
        |s| async move {
            s.create_key(key("k1", "i", 10, 1)).await.unwrap();
            let e = s.create_key(key("k2", "i", 10, 1)).await.unwrap_err();
            assert!(matches!(e, StoreError::Conflict(_)), "{e}");
            let e = s.create_key(key("k1", "i", 10, 2)).await.unwrap_err();
            assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        },
    );
}

#[test]
fn a_secret_is_created_once() {
    on_every_store("store::a_secret_is_created_once", |s| async move {
        let first = s.get_or_create_secret("x", vec![1; 32]).await.unwrap();
        assert_eq!(first, vec![1; 32]);
        let again = s.get_or_create_secret("x", vec![2; 32]).await.unwrap();
        assert_eq!(again, vec![1; 32]);
        let other = s.get_or_create_secret("y", vec![3; 32]).await.unwrap();
        assert_eq!(other, vec![3; 32]);
    });
}

#[test]
fn ten_gateways_starting_at_once_migrate_exactly_once() {
    let Some(db) = TestDb::create("store::ten_gateways_starting_at_once_migrate_exactly_once")
    else {
        return;
    };
    let rt = runtime();
    let cfg = pg_config(&db);
    rt.block_on(async {
        let opens: Vec<_> = (0..10)
            .map(|_| {
                let cfg = cfg.clone();
                tokio::spawn(async move { PostgresStore::open(&cfg).await.map(|_| ()) })
            })
            .collect();
        for o in opens {
            o.await.unwrap().unwrap();
        }
    });
    let (applied, version): (i64, i32) = db.with(|c| {
        let applied = c
            .query_one("SELECT count(*) FROM agentry_migrations", &[])
            .unwrap()
            .get(0);
        let version = c
            .query_one("SELECT version FROM agentry_schema", &[])
            .unwrap()
            .get(0);
        (applied, version)
    });
    assert_eq!(applied, version as i64);
    assert!(version >= 1);
    // A database migrated by a newer gateway is refused, naming the fix.
    db.with(|c| {
        c.batch_execute("UPDATE agentry_schema SET version = version + 1")
            .unwrap()
    });
    let err = rt.block_on(PostgresStore::open(&cfg)).err().unwrap();
    assert!(err.to_string().contains("upgrade the gateway"), "{err}");
}

#[test]
fn concurrent_usage_flushes_from_three_instances_never_move_backwards() {
    let Some(db) = TestDb::create("store::concurrent_usage_flushes_never_move_backwards") else {
        return;
    };
    let rt = runtime();
    let cfg = pg_config(&db);
    rt.block_on(async {
        let stores: Vec<Arc<PostgresStore>> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(Arc::new(PostgresStore::open(&cfg).await.unwrap()));
            }
            v
        };
        let ids: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            stores[0]
                .create_key(key(id, "i", i as i64, i as u8))
                .await
                .unwrap();
        }
        // 50 rounds: each instance flushes its own marks for every key, in a shuffled order of
        // instances, concurrently; the highest mark must win every time.
        let mut highest = vec![0i64; ids.len()];
        for round in 0..50i64 {
            let mut tasks = Vec::new();
            for (n, s) in stores.iter().enumerate() {
                let marks: Vec<(String, i64)> = ids
                    .iter()
                    .enumerate()
                    .map(|(k, id)| {
                        let t =
                            1_000_000 + round * 100 + ((k as i64 * 7 + n as i64 * 13 + round) % 97);
                        (id.clone(), t)
                    })
                    .collect();
                for (k, (_, t)) in marks.iter().enumerate() {
                    highest[k] = highest[k].max(*t);
                }
                let s = s.clone();
                tasks.push(tokio::spawn(async move { s.record_usage(&marks).await }));
            }
            // Older marks arriving late must not win either.
            let late: Vec<(String, i64)> = ids.iter().map(|id| (id.clone(), 1)).collect();
            let s = stores[(round % 3) as usize].clone();
            tasks.push(tokio::spawn(async move { s.record_usage(&late).await }));
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let rows = stores[0].list_keys("i", None, 100).await.unwrap();
            for r in rows {
                let k: usize = r.api_key_id[1..].parse().unwrap();
                assert_eq!(
                    r.used_at_us,
                    Some(highest[k]),
                    "round {round}, {}",
                    r.api_key_id
                );
            }
        }
    });
}

#[test]
fn a_delete_appends_to_the_revocation_log_in_its_transaction() {
    let Some(db) = TestDb::create("store::a_delete_appends_to_the_revocation_log") else {
        return;
    };
    let rt = runtime();
    let s = rt.block_on(PostgresStore::open(&pg_config(&db))).unwrap();
    rt.block_on(async {
        s.create_key(key("k1", "i", 1, 9)).await.unwrap();
        assert_eq!(s.delete_key("other", "k1").await.unwrap(), None);
        s.create_key(key("k2", "i", 2, 8)).await.unwrap();
        let upd = KeyUpdate {
            name: Some("n".into()),
            permissions: None,
            updated_at_us: 3,
        };
        let (_, changed) = s.update_key("i", "k2", upd).await.unwrap().unwrap();
        assert_eq!(changed.version, 2);
        assert_eq!(
            s.delete_key("i", "k1").await.unwrap(),
            Some(KeyVersion {
                hash: [9; 32],
                version: TOMBSTONE
            })
        );
    });
    let rows: Vec<(i64, String, Vec<u8>, i64)> = db.with(|c| {
        c.query(
            "SELECT seq, kind, key_hash, version FROM key_events ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    });
    assert_eq!(rows.len(), 2, "a delete of nothing logs nothing");
    assert_eq!((rows[0].1.as_str(), rows[0].3), ("update", 2));
    assert_eq!(rows[0].2, vec![8u8; 32]);
    assert_eq!((rows[1].1.as_str(), rows[1].3), ("delete", TOMBSTONE));
    assert_eq!(rows[1].2, vec![9u8; 32]);
}

/// A database of the schema before versions (with a key and a logged delete) gains them: the
/// key at version 1, the old log entry at 0 (unknown), and changes count on from there.
#[test]
fn postgres_migrations_carry_existing_keys_to_versions() {
    let Some(db) = TestDb::create("store::postgres_migrations_carry_existing_keys_to_versions")
    else {
        return;
    };
    db.with(|c| {
        c.batch_execute(
            "CREATE TABLE agentry_schema (version INT NOT NULL);
             CREATE TABLE agentry_migrations (version INT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO agentry_schema VALUES (2);
             INSERT INTO agentry_migrations (version) VALUES (1), (2);
             CREATE TABLE api_keys (api_key_id TEXT PRIMARY KEY, inbox_id TEXT NOT NULL,
                 pod_id TEXT, name TEXT NOT NULL, prefix TEXT NOT NULL,
                 key_hash BYTEA NOT NULL UNIQUE, created_at_us BIGINT NOT NULL,
                 used_at_us BIGINT, permissions TEXT, expires_at_us BIGINT,
                 updated_at_us BIGINT NOT NULL, created_by TEXT);
             CREATE TABLE gateway_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
             CREATE TABLE key_events (seq BIGSERIAL PRIMARY KEY, key_hash BYTEA NOT NULL,
                 kind TEXT NOT NULL, at_us BIGINT NOT NULL);
             INSERT INTO api_keys VALUES ('k1', 'i', NULL, 'old', 'agk_x',
                 decode(repeat('01', 32), 'hex'), 77, NULL, NULL, NULL, 77, NULL);
             INSERT INTO key_events (key_hash, kind, at_us)
                 VALUES (decode(repeat('02', 32), 'hex'), 'delete', 5);",
        )
        .unwrap()
    });
    let rt = runtime();
    let s = rt.block_on(PostgresStore::open(&pg_config(&db))).unwrap();
    rt.block_on(async {
        assert_eq!(s.find_by_hash(&[1; 32]).await.unwrap().unwrap().version, 1);
        let upd = KeyUpdate {
            name: None,
            permissions: Some(r#"{"message_read":true}"#.into()),
            updated_at_us: 80,
        };
        let (_, changed) = s.update_key("i", "k1", upd).await.unwrap().unwrap();
        assert_eq!(changed.version, 2);
        assert_eq!(s.find_by_hash(&[1; 32]).await.unwrap().unwrap().version, 2);
    });
    let old: i64 = db.with(|c| {
        c.query_one("SELECT version FROM key_events WHERE seq = 1", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(old, 0);
}

#[test]
fn migrations_carry_existing_sqlite_keys_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema as version 2 left it, with one key.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE api_keys (api_key_id TEXT PRIMARY KEY NOT NULL, inbox_id TEXT NOT NULL,
                 pod_id TEXT, name TEXT NOT NULL, prefix TEXT NOT NULL, key_hash BLOB NOT NULL UNIQUE,
                 created_at_us INTEGER NOT NULL, used_at_us INTEGER);
             CREATE TABLE gateway_secrets (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
             INSERT INTO api_keys VALUES ('k1', 'i', NULL, 'old', 'agk_x', x'0101010101010101010101010101010101010101010101010101010101010101', 77, NULL);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let rt = runtime();
    let k = rt.block_on(s.list_keys("i", None, 10)).unwrap().remove(0);
    assert_eq!(k.permissions, None, "all permissions");
    assert_eq!(k.expires_at_us, None, "no expiry");
    assert_eq!(k.updated_at_us, 77);
    let a = rt.block_on(s.find_by_hash(&[1; 32])).unwrap().unwrap();
    assert_eq!((a.permissions, a.expires_at_us), (None, None));
    assert_eq!(a.version, 1, "an existing key starts at version 1");
    let upd = KeyUpdate {
        name: Some("new".into()),
        permissions: None,
        updated_at_us: 80,
    };
    let (_, changed) = rt.block_on(s.update_key("i", "k1", upd)).unwrap().unwrap();
    assert_eq!(changed.version, 2);
}

#[test]
fn updates_change_only_what_they_name() {
    on_every_store(
        "store::updates_change_only_what_they_name",
        |s| async move {
            s.create_key(key("k1", "i", 10, 1)).await.unwrap();
            let upd = |name: Option<&str>, perms: Option<&str>, at| KeyUpdate {
                name: name.map(Into::into),
                permissions: perms.map(Into::into),
                updated_at_us: at,
            };
            assert_eq!(s.find_by_hash(&[1; 32]).await.unwrap().unwrap().version, 1);
            let (r, h) = s
                .update_key("i", "k1", upd(Some("new"), None, 20))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (r.name.as_str(), r.permissions.as_deref(), r.updated_at_us),
                ("new", None, 20)
            );
            // Every change is a new version of the key, renames too.
            assert_eq!(
                h,
                KeyVersion {
                    hash: [1; 32],
                    version: 2
                }
            );
            let (r, h) = s
                .update_key("i", "k1", upd(None, Some(r#"{"message_read":true}"#), 30))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.name, "new");
            assert_eq!(r.permissions.as_deref(), Some(r#"{"message_read":true}"#));
            assert_eq!(h.version, 3);
            assert!(s
                .update_key("other", "k1", upd(Some("x"), None, 40))
                .await
                .unwrap()
                .is_none());
            assert_eq!(s.get_key("i", "k1").await.unwrap().unwrap(), r);
            assert!(s.get_key("other", "k1").await.unwrap().is_none());
            let a = s.find_by_hash(&[1; 32]).await.unwrap().unwrap();
            assert_eq!(a.permissions.as_deref(), Some(r#"{"message_read":true}"#));
            assert_eq!(a.version, 3);
        },
    );
}
