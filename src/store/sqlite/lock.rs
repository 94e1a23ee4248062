//! The single-writer lock: an advisory `flock` on `<database>.lock` beside the database file,
//! holding the holder's pid, so a second gateway on one file refuses to start.
//!
//! Two gateways on one file would each trust their own key cache: a key deleted through one
//! stays valid on the other for the cache's TTL. The kernel drops a `flock` when its holder
//! exits, however it exits (`kill -9` included), so a stale lock file never blocks a start.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::store::StoreError;

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct WriterLock {
    _file: Flock<File>,
}

/// The outcome of one attempt to take the lock.
#[derive(Debug)]
pub enum Attempt {
    Taken(WriterLock),
    /// Another process holds it; its pid as it wrote it, when readable.
    Held {
        pid: Option<u32>,
    },
}

/// The lock file of a database: its path with `.lock` appended.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Tries once, without waiting, to take the lock of the database at `db`.
pub fn try_lock(db: &Path) -> Result<Attempt, StoreError> {
    let path = lock_path(db);
    let cannot = |e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("lock file {}: {e}", path.display()))
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| cannot(&e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let pid = format!("{}\n", std::process::id());
            lock.set_len(0).map_err(|e| cannot(&e))?;
            lock.write_all_at(pid.as_bytes(), 0)
                .map_err(|e| cannot(&e))?;
            Ok(Attempt::Taken(WriterLock { _file: lock }))
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Attempt::Held {
                pid: text.trim().parse().ok(),
            })
        }
        Err((_, errno)) => Err(cannot(&errno)),
    }
}

/// The start-up error for a database another process holds.
pub fn held_error(db: &Path, pid: Option<u32>) -> StoreError {
    let holder = pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
    StoreError::Unavailable(format!(
        "database file {} is in use by another gateway ({holder}; lock file {}): two gateways \
         must not share a SQLite file (stop the other one, or use the PostgreSQL store for \
         several gateways)",
        db.display(),
        lock_path(db).display()
    ))
}

/// Where a store keeps its lock: empty while it waits for an old process to let go.
pub type LockSlot = parking_lot::Mutex<Option<WriterLock>>;

/// For the new process of a zero-downtime upgrade, which opens the database while the old
/// process still holds the lock and serves its last requests: polls on a thread of its own
/// until the lock is free and puts it in `slot`. Past `wait` (the old process's grace period)
/// it logs an error once, then keeps trying each second. Ends when the store is dropped.
pub fn take_when_free(db: &Path, holder: Option<u32>, wait: Duration, slot: Weak<LockSlot>) {
    let db = db.to_owned();
    let holder = holder.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
    log::info!(
        "database file {} is held by {holder}: serving beside it during the upgrade, and taking \
         its writer lock when it exits",
        db.display()
    );
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("sqlite-lock-handover".into())
        .spawn(move || {
            let mut late = false;
            loop {
                let Some(slot) = slot.upgrade() else { return };
                match try_lock(&db) {
                    Ok(Attempt::Taken(lock)) => {
                        *slot.lock() = Some(lock);
                        log::info!(
                            "took the writer lock of {} after {} ms",
                            db.display(),
                            started.elapsed().as_millis()
                        );
                        return;
                    }
                    Ok(Attempt::Held { .. }) => {}
                    Err(e) => log::warn!("{e}"),
                }
                drop(slot);
                if !late && started.elapsed() >= wait {
                    late = true;
                    log::error!(
                        "database file {} is still held by {holder} {} s into the upgrade: two \
                         gateways are writing to one SQLite file; stop the old process",
                        db.display(),
                        wait.as_secs()
                    );
                }
                std::thread::sleep(if late {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(50)
                });
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the SQLite lock handover thread: {e}");
    }
}
