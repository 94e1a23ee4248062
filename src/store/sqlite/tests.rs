//! SQLite-only behaviour (file replacement, reopening, usage writes, the single-writer lock);
//! the `Store` contract itself runs against every backend in `tests/store.rs`.

use super::*;

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

#[tokio::test]
async fn removed_file_is_unavailable_and_restored_file_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let s = SqliteStore::open(&path).unwrap();
    s.create_key(key("k1", "i", 10, 1)).await.unwrap();
    let aside = dir.path().join("aside.db");
    std::fs::rename(&path, &aside).unwrap();
    assert!(s.ping().await.is_err());
    assert!(s.find_by_hash(&[1; 32]).await.is_err());
    std::fs::rename(&aside, &path).unwrap();
    s.ping().await.unwrap();
    assert!(s.find_by_hash(&[1; 32]).await.unwrap().is_some());
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_key(key("k1", "i", 10, 1)).await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.list_keys("i", None, 10).await.unwrap().len(), 1);
}

/// Usage marks are written unsynced; the writer is back at FULL for the key writes after
/// them, and the marks are there (forward only).
#[tokio::test]
async fn usage_writes_leave_the_writer_fully_synced() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("g.db")).unwrap();
    s.create_key(key("k1", "i", 10, 1)).await.unwrap();
    let synchronous = |s: &SqliteStore| -> i64 {
        s.inner
            .writer
            .lock()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(synchronous(&s), 2, "FULL");
    s.record_usage(&[("k1".into(), 500)]).await.unwrap();
    s.record_usage(&[("k1".into(), 400)]).await.unwrap();
    assert_eq!(synchronous(&s), 2, "FULL again after the marks");
    let rec = s.get_key("i", "k1").await.unwrap().unwrap();
    assert_eq!(rec.used_at_us, Some(500));
}

/// A second open of a held file fails, naming the file, the lock file and the holder's pid;
/// once the holder is gone, the file opens again.
#[tokio::test]
async fn a_held_file_is_refused_until_its_holder_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let first = SqliteStore::open(&path).unwrap();
    let lock_file = std::fs::read_to_string(dir.path().join("g.db.lock")).unwrap();
    assert_eq!(lock_file, format!("{}\n", std::process::id()));
    let err = SqliteStore::open(&path).err().expect("refused").to_string();
    assert_eq!(
        err,
        format!(
            "store unavailable: database file {db} is in use by another gateway (pid {pid}; lock \
             file {db}.lock): two gateways must not share a SQLite file (stop the other one, or \
             use the PostgreSQL store for several gateways)",
            db = path.display(),
            pid = std::process::id()
        )
    );
    drop(first);
    SqliteStore::open(&path).unwrap();
}

/// An upgrade's new process opens a held file at once and takes the lock when the old lets go.
#[tokio::test]
async fn a_handover_opens_at_once_and_takes_the_lock_when_free() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let old = SqliteStore::open(&path).unwrap();
    let new = SqliteStore::open_exclusive(&path, Some(std::time::Duration::from_secs(5))).unwrap();
    new.create_key(key("k1", "i", 10, 1)).await.unwrap();
    assert!(
        new.inner._writer_lock.lock().is_none(),
        "the old process holds it"
    );
    drop(old);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while new.inner._writer_lock.lock().is_none() {
        assert!(std::time::Instant::now() < deadline, "lock not taken over");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        SqliteStore::open(&path).is_err(),
        "the new process holds it now"
    );
}
