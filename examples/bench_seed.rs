//! Benchmark helper: creates N keys spread over M inboxes directly in a store (one
//! transaction; only hashes stored) and writes the plaintext keys, one `key inbox` per line.
//!
//! `cargo run --release --example bench_seed -- STORE KEYS_OUT N M [PREFIX]`
//! STORE is a SQLite file path, or a PostgreSQL connection string (`postgres://…` or
//! `host=… dbname=…`), whose schema is migrated first.

use std::io::Write;
use std::time::Duration;

use agentry_gateway::config::PostgresConfig;
use agentry_gateway::keys::{random_id, KeyFormat, NewKeyMaterial};
use agentry_gateway::store::postgres::PostgresStore;
use agentry_gateway::store::sqlite::SqliteStore;

struct Row {
    id: String,
    inbox: String,
    key: NewKeyMaterial,
    created_at_us: i64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = &args[1];
    let out = &args[2];
    let n: usize = args[3].parse().expect("N");
    let m: usize = args[4].parse().expect("M");
    let prefix = args.get(5).map(String::as_str).unwrap_or("agk");
    let format = KeyFormat::new(prefix);
    let rows: Vec<Row> = (0..n)
        .map(|i| Row {
            id: random_id("key"),
            inbox: format!("inbox{}@bench.example", i % m),
            key: format.generate(),
            created_at_us: 1_700_000_000_000_000i64 + i as i64,
        })
        .collect();
    if store.starts_with("postgres") || store.contains("dbname=") {
        seed_postgres(store, &rows);
    } else {
        seed_sqlite(store, &rows);
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("keys file"));
    for r in &rows {
        writeln!(w, "{} {}", r.key.plaintext, r.inbox).expect("write");
    }
    w.flush().expect("flush");
}

fn seed_sqlite(path: &str, rows: &[Row]) {
    let db = std::path::PathBuf::from(path);
    // Opening through the store creates the file and migrates the schema.
    drop(SqliteStore::open(&db).expect("open store"));
    let mut conn = rusqlite::Connection::open(&db).expect("open db");
    let tx = conn.transaction().expect("tx");
    {
        let mut st = tx
            .prepare(
                "INSERT INTO api_keys (api_key_id, inbox_id, pod_id, name, prefix, key_hash, created_at_us)
                 VALUES (?1, ?2, NULL, 'bench', ?3, ?4, ?5)",
            )
            .expect("prepare");
        for r in rows {
            st.execute(rusqlite::params![
                r.id,
                r.inbox,
                r.key.display_prefix,
                &r.key.hash[..],
                r.created_at_us
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn seed_postgres(url: &str, rows: &[Row]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = PostgresConfig {
            url: url.to_owned(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(600),
            tls_ca_path: None,
            revocation_max_staleness: Duration::from_secs(2),
            revocation_log_retention: Duration::from_secs(86_400),
        };
        drop(PostgresStore::open(&cfg).await.expect("open store"));
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let tx = client.transaction().await.expect("tx");
        for chunk in rows.chunks(5000) {
            let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
            let inboxes: Vec<&str> = chunk.iter().map(|r| r.inbox.as_str()).collect();
            let prefixes: Vec<&str> = chunk.iter().map(|r| r.key.display_prefix.as_str()).collect();
            let hashes: Vec<&[u8]> = chunk.iter().map(|r| &r.key.hash[..]).collect();
            let times: Vec<i64> = chunk.iter().map(|r| r.created_at_us).collect();
            tx.execute(
                "INSERT INTO api_keys (api_key_id, inbox_id, pod_id, name, prefix, key_hash, created_at_us)
                 SELECT id, inbox, NULL, 'bench', prefix, hash, at
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[])
                      AS t(id, inbox, prefix, hash, at)",
                &[&ids, &inboxes, &prefixes, &hashes, &times],
            )
            .await
            .expect("insert");
        }
        tx.commit().await.expect("commit");
        client
            .batch_execute("ANALYZE api_keys")
            .await
            .expect("analyze");
    });
}
