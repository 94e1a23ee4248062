//! One gateway per SQLite file: a second one on a file another holds refuses to start, naming
//! the file and the holder's pid; once the holder is gone (stopped or killed), a new one starts.

mod common;

use std::time::Duration;

use common::*;

/// The config of `g` with other ports, pid file and upgrade socket, on the same database.
fn second_config(g: &Gateway) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    let text = text
        .replace(&g.addr.to_string(), &format!("127.0.0.1:{}", free_port()))
        .replace(
            &g.metrics_addr.to_string(),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace("gw.pid", "second.pid")
        .replace("gw.sock", "second.sock");
    let path = g.dir.path().join("second.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_second_gateway_on_a_held_file_exits_1_naming_the_file_and_the_holder() {
    let mut first = Gateway::start("");
    let id = first.create_key("support@example.com", "k")["api_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exit = run_to_exit("run", &second_config(&first), Duration::from_secs(20));
    assert_eq!(exit.code, 1, "{}", exit.output);
    assert!(exit.took < Duration::from_secs(5), "{:?}", exit.took);
    let db = first.db_path();
    let expected = format!(
        "error: store: store unavailable: database file {db} is in use by another gateway \
         (pid {pid}; lock file {db}.lock): two gateways must not share a SQLite file (stop the \
         other one, or use the PostgreSQL store for several gateways)",
        db = db.display(),
        pid = first.pid()
    );
    assert!(exit.output.contains(&expected), "{}", exit.output);
    assert!(!exit.output.contains("listening on"), "{}", exit.output);

    // The holder is untouched, and check-config does not need the lock.
    assert_eq!(first.delete_key("support@example.com", &id).status, 204);
    let check = run_to_exit(
        "check-config",
        &second_config(&first),
        Duration::from_secs(20),
    );
    assert_eq!((check.code, check.output.trim()), (0, "config ok"));

    // Stopped: a new gateway starts on the file.
    assert!(first.sigterm().success());
    first.restart();
    assert_eq!(
        first
            .mgmt(
                "GET",
                "/human/v0/inboxes/support@example.com/api-keys",
                ADMIN_TOKEN,
                None
            )
            .status,
        200
    );
}

#[test]
fn a_killed_holder_leaves_no_lock_behind() {
    let mut first = Gateway::start("");
    first.kill9();
    // The lock file is still there (with the dead pid); the lock itself went with the process.
    assert!(first.dir.path().join("gateway.db.lock").exists());
    first.restart();
    let exit = run_to_exit("run", &second_config(&first), Duration::from_secs(20));
    assert_eq!(exit.code, 1, "{}", exit.output);
    assert!(
        exit.output
            .contains(&format!("in use by another gateway (pid {};", first.pid())),
        "{}",
        exit.output
    );
}
