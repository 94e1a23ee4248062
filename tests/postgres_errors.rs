//! PostgreSQL failures name the server, port, database and role, with the server's message
//! and SQLSTATE, and never the password: at start-up (exit 1) and in `/readyz`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "hunter2-never-shown";

/// A test database, or `None` (reported as not run) without a server.
fn db(test: &str) -> Option<TestDb> {
    TestDb::create(test)
}

/// `host`, `port` and `user` of the test server, from a database's connection string.
fn server_of(db: &TestDb) -> (String, u16, String) {
    let c: postgres::Config = db.url().parse().unwrap();
    let host = match &c.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server must be reached over TCP: {other:?}"),
    };
    (host, c.get_ports()[0], c.get_user().unwrap().to_owned())
}

/// Writes a config whose store URL is `url` and runs the gateway on it until it exits.
fn start_on(url: &str) -> Exit {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\npid_file = \"{d}/gw.pid\"\nupgrade_sock = \"{d}/gw.sock\"\n\
         [store]\nkind = \"postgres\"\nurl = \"{url}\"\nconnect_timeout_ms = 1000\n{}",
        free_port(),
        standard_auth_toml(),
        d = dir.path().display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    run_to_exit("run", &path, Duration::from_secs(20))
}

fn assert_refused(exit: &Exit, expected: &str) {
    assert_eq!(exit.code, 1, "{}", exit.output);
    assert!(
        exit.output
            .contains(&format!("error: store: store unavailable: {expected}\n")),
        "expected {expected:?} in:\n{}",
        exit.output
    );
    assert!(!exit.output.contains(PASSWORD), "{}", exit.output);
}

#[test]
fn a_wrong_database_is_named_with_the_servers_message_and_sqlstate() {
    let Some(db) = db("postgres_errors::wrong_database") else {
        return;
    };
    let (host, port, user) = server_of(&db);
    let exit = start_on(&format!(
        "postgres://{user}:{PASSWORD}@{host}:{port}/agentry_no_such_database"
    ));
    assert_refused(
        &exit,
        &format!(
            "PostgreSQL at host={host} port={port} database=agentry_no_such_database user={user}: \
             FATAL: database \"agentry_no_such_database\" does not exist (SQLSTATE 3D000)"
        ),
    );
}

#[test]
fn a_wrong_role_is_named_with_the_servers_message_and_sqlstate() {
    let Some(db) = db("postgres_errors::wrong_role") else {
        return;
    };
    let (host, port, _) = server_of(&db);
    let exit = start_on(&format!(
        "postgres://agentry_no_such_role:{PASSWORD}@{host}:{port}/{}",
        db.name
    ));
    assert_refused(
        &exit,
        &format!(
            "PostgreSQL at host={host} port={port} database={} user=agentry_no_such_role: \
             FATAL: role \"agentry_no_such_role\" does not exist (SQLSTATE 28000)",
            db.name
        ),
    );
}

#[test]
fn a_port_nothing_listens_on_is_named_with_the_os_error() {
    let Some(db) = db("postgres_errors::wrong_port") else {
        return;
    };
    let (host, _, user) = server_of(&db);
    let port = free_port();
    let exit = start_on(&format!(
        "host={host} port={port} user={user} password={PASSWORD} dbname={}",
        db.name
    ));
    assert_refused(
        &exit,
        &format!(
            "PostgreSQL at host={host} port={port} database={} user={user}: error connecting to \
             server: Connection refused (os error 111)",
            db.name
        ),
    );
    assert!(exit.took < Duration::from_secs(5), "{:?}", exit.took);
}

/// A database that stops taking connections: `/readyz` is 503 and says why, in the store's
/// words; once it takes them again, 200.
#[test]
fn readyz_names_the_store_failure_without_the_password() {
    let Some(db) = db("postgres_errors::readyz") else {
        return;
    };
    let (host, port, user) = server_of(&db);
    let db = Arc::new(db);
    let section = format!(
        "[store]\nkind = \"postgres\"\nurl = \"{} password={PASSWORD}\"\npool_size = 2\nconnect_timeout_ms = 1000\n",
        db.url()
    );
    let g = Gateway::start_on(
        StoreSpec::Raw(section, db.clone()),
        &standard_auth_toml(),
        "",
    );
    let ready = || request(g.metrics_addr, "GET", "/readyz", &[], None);
    assert_eq!(ready().status, 200);

    let name = db.name.clone();
    admin(move |c| {
        c.batch_execute(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
    })
    .unwrap();
    // The first failure may be a pooled connection found dead; the next is the server's answer.
    let mut last = None;
    wait_until(
        "/readyz 503 with the server's answer",
        Duration::from_secs(10),
        || {
            let r = ready();
            let done = r.status == 503 && r.text().contains("SQLSTATE");
            last = Some(r);
            done
        },
    );
    let r = last.unwrap();
    assert!(!r.text().contains(PASSWORD), "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({
            "status": "not_ready",
            "reason": "store_unavailable",
            "message": format!(
                "PostgreSQL at host={host} port={port} database={n} user={user}: FATAL: database \
                 \"{n}\" is not currently accepting connections (SQLSTATE 55000)",
                n = db.name
            ),
        })
    );

    let name = db.name.clone();
    admin(move |c| {
        c.batch_execute(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
        ))
    })
    .unwrap();
    wait_until("/readyz 200", Duration::from_secs(10), || {
        ready().status == 200
    });
}
