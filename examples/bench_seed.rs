//! Benchmark helper: creates N keys spread over M inboxes directly in a SQLite store (one
//! transaction; only hashes stored) and writes the plaintext keys, one `key inbox` per line.
//!
//! `cargo run --release --example bench_seed -- DB KEYS_OUT N M [PREFIX]`

use std::io::Write;

use agentry_gateway::keys::{random_id, KeyFormat};
use agentry_gateway::store::sqlite::SqliteStore;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let db = std::path::PathBuf::from(&args[1]);
    let out = &args[2];
    let n: usize = args[3].parse().expect("N");
    let m: usize = args[4].parse().expect("M");
    let prefix = args.get(5).map(String::as_str).unwrap_or("agk");
    // Opening through the store creates the file and migrates the schema.
    drop(SqliteStore::open(&db).expect("open store"));
    let mut conn = rusqlite::Connection::open(&db).expect("open db");
    let tx = conn.transaction().expect("tx");
    let format = KeyFormat::new(prefix);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("keys file"));
    {
        let mut st = tx
            .prepare(
                "INSERT INTO api_keys (api_key_id, inbox_id, pod_id, name, prefix, key_hash, created_at_us)
                 VALUES (?1, ?2, NULL, 'bench', ?3, ?4, ?5)",
            )
            .expect("prepare");
        for i in 0..n {
            let k = format.generate();
            let inbox = format!("inbox{}@bench.example", i % m);
            st.execute(rusqlite::params![
                random_id("key"),
                inbox,
                k.display_prefix,
                &k.hash[..],
                1_700_000_000_000_000i64 + i as i64
            ])
            .expect("insert");
            writeln!(w, "{} {}", k.plaintext, inbox).expect("write");
        }
    }
    tx.commit().expect("commit");
    w.flush().expect("flush");
}
