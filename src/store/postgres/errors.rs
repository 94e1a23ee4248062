//! PostgreSQL failures in words an operator can act on: which server, database and role, and
//! the server's own message with its SQLSTATE; never the password.

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::config::Host;

/// Where the store connects, for messages: `host=… port=… database=… user=…`. Built from the
/// parsed settings, so nothing else of the URL (the password above all) can reach a message.
pub(crate) fn target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .chain(config.get_hostaddrs().iter().map(|a| a.to_string()))
        .collect();
    let ports: Vec<String> = match config.get_ports() {
        [] => vec!["5432".to_owned()],
        ports => ports.iter().map(u16::to_string).collect(),
    };
    let user = config.get_user().unwrap_or("(the OS user)");
    format!(
        "host={} port={} database={} user={}",
        if hosts.is_empty() {
            "localhost".to_owned()
        } else {
            hosts.join(",")
        },
        ports.join(","),
        config.get_dbname().unwrap_or(user),
        user
    )
}

/// A driver error as text: the server's message and SQLSTATE when the server answered,
/// otherwise the driver's words and their causes (`error connecting to server: Connection
/// refused (os error 111)`).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A pool's failure to hand out a connection, as text.
pub(crate) fn describe_pool(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => describe(e),
        PoolError::Timeout(TimeoutType::Wait) => {
            "timed out waiting for a free connection (store.pool_size)".to_owned()
        }
        PoolError::Timeout(TimeoutType::Create) => {
            "timed out connecting (store.connect_timeout_ms)".to_owned()
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            "timed out checking a pooled connection (store.connect_timeout_ms)".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_server_database_and_role_but_never_the_password() {
        let c: tokio_postgres::Config = "postgres://alice:s3cret@db.internal:6543/keys"
            .parse()
            .unwrap();
        assert_eq!(
            target(&c),
            "host=db.internal port=6543 database=keys user=alice"
        );
        let c: tokio_postgres::Config = "host=10.0.0.1,10.0.0.2 user=bob password=s3cret"
            .parse()
            .unwrap();
        assert_eq!(
            target(&c),
            "host=10.0.0.1,10.0.0.2 port=5432 database=bob user=bob"
        );
    }
}
