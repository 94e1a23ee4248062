//! The TOML configuration: `File*` structs that mirror the file, validated into a typed `Config`.
//!
//! Three rooms: `file` (structs that mirror the TOML), `validate` (file → validated, errors
//! name the field and the fix) and `types` (the validated `Config`). Nothing here imports
//! from the gateway's request-handling modules; `target` (the request-target grammar) is the
//! one shared module below it.

use std::path::{Path, PathBuf};

mod file;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use types::*;

pub const DEFAULT_THREADS: usize = 2;
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 10;
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_DRAIN_SECS: u64 = 5;
pub const MAX_DRAIN_SECS: u64 = 600;
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 128;
pub const DEFAULT_KEY_PREFIX: &str = "agk";
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 1_000_000;
pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;
pub const DEFAULT_NEGATIVE_CACHE_MAX_ENTRIES: u64 = 100_000;
pub const DEFAULT_NEGATIVE_CACHE_TTL_SECS: u64 = 5;
pub const DEFAULT_USAGE_FLUSH_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_HEALTH_CHECK_INTERVAL_SECS: u64 = 5;
pub const DEFAULT_RESOLVE_INTERVAL_SECS: u64 = 30;
pub const MAX_KEY_PREFIX_LEN: usize = 16;
pub const DEFAULT_FAILED_AUTH_PER_IP: u32 = 100;
pub const DEFAULT_FAILED_AUTH_WINDOW_SECS: u64 = 10;
pub const DEFAULT_FAILED_AUTH_MAX_CLIENTS: usize = 100_000;
pub const DEFAULT_FAILED_AUTH_IPV6_PREFIX: u8 = 64;
pub const DEFAULT_PG_POOL_SIZE: usize = 16;
pub const DEFAULT_PG_CONNECT_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_PG_STATEMENT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_REVOCATION_MAX_STALENESS_MS: u64 = 2000;
pub const DEFAULT_REVOCATION_LOG_RETENTION_SECS: u64 = 86_400;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_TLS_RELOAD_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const DEFAULT_H2_IDLE_TIMEOUT_MS: u64 = 60_000;
/// SHA-256 of `agm_quickstart_change_me`, the token of the shipped example config. The
/// gateway warns at start-up while it is configured.
pub const QUICKSTART_TOKEN_SHA256: &str =
    "1d231f6a036e13bb53d60eff4fd3798c3d8cb3573db0e9ce7f0049d91a02682b";

/// A configuration problem: which field, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` only labels error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: file::FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        validate::Validator { path }.validate(file)
    }
}
