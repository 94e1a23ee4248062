//! The file structs: exactly the TOML, nothing validated yet (`deny_unknown_fields` everywhere,
//! so a typo fails start-up instead of being ignored).

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) server: FileServer,
    pub(super) metrics: Option<FileMetrics>,
    pub(super) store: FileStore,
    #[serde(default)]
    pub(super) keys: FileKeys,
    #[serde(default)]
    pub(super) permissions: FilePermissions,
    #[serde(default)]
    pub(super) management: FileManagement,
    pub(super) inbox_directory: FileInboxDirectory,
    #[serde(default)]
    pub(super) cache: FileCache,
    #[serde(default)]
    pub(super) usage: FileUsage,
    #[serde(default)]
    pub(super) logging: FileLogging,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) upstreams: Vec<FileUpstream>,
    #[serde(default)]
    pub(super) routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    pub(super) listen: String,
    pub(super) threads: Option<usize>,
    pub(super) grace_period_seconds: Option<u64>,
    pub(super) graceful_shutdown_timeout_seconds: Option<u64>,
    pub(super) drain_seconds: Option<u64>,
    pub(super) upstream_keepalive_pool_size: Option<usize>,
    pub(super) work_stealing: Option<bool>,
    pub(super) transparent_huge_pages: Option<bool>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) pid_file: Option<String>,
    pub(super) upgrade_sock: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) http2: FileHttp2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert_path: String,
    pub(super) key_path: String,
    pub(super) min_version: Option<String>,
    pub(super) client_ca_path: Option<String>,
    pub(super) reload_interval_ms: Option<u64>,
    pub(super) handshake_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHttp2 {
    pub(super) enabled: Option<bool>,
    pub(super) cleartext: Option<bool>,
    pub(super) max_concurrent_streams: Option<u32>,
    pub(super) idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) failed_auth_per_ip: Option<u32>,
    pub(super) failed_auth_window_seconds: Option<u64>,
    pub(super) failed_auth_max_clients: Option<usize>,
    pub(super) failed_auth_ipv6_prefix: Option<u8>,
    pub(super) max_headers: Option<usize>,
    pub(super) max_header_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStore {
    pub(super) kind: String,
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
    pub(super) pool_size: Option<usize>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) statement_timeout_ms: Option<u64>,
    pub(super) tls_ca_path: Option<String>,
    pub(super) revocation_max_staleness_ms: Option<u64>,
    pub(super) revocation_log_retention_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKeys {
    pub(super) prefix: Option<String>,
    pub(super) max_lifetime_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePermissions {
    pub(super) names: Option<Vec<String>>,
    pub(super) opt_in: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileManagement {
    #[serde(default)]
    pub(super) tokens: Vec<FileToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileToken {
    pub(super) name: String,
    pub(super) sha256: String,
    pub(super) scope: Option<String>,
    pub(super) pods: Option<Vec<String>>,
    pub(super) inboxes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileInboxDirectory {
    pub(super) source: String,
    #[serde(default)]
    pub(super) inboxes: Vec<FileInbox>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileInbox {
    pub(super) inbox_id: String,
    pub(super) pod_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCache {
    pub(super) max_entries: Option<u64>,
    pub(super) ttl_seconds: Option<u64>,
    pub(super) negative_max_entries: Option<u64>,
    pub(super) negative_ttl_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUsage {
    pub(super) flush_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLogging {
    pub(super) access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub(super) name: String,
    pub(super) addresses: Vec<String>,
    pub(super) resolve_interval_seconds: Option<u64>,
    pub(super) health_check: Option<FileHealthCheck>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) read_timeout_ms: Option<u64>,
    pub(super) write_timeout_ms: Option<u64>,
    pub(super) tls: Option<bool>,
    pub(super) sni: Option<String>,
    pub(super) verify: Option<bool>,
    pub(super) ca_path: Option<String>,
    pub(super) client_cert_path: Option<String>,
    pub(super) client_key_path: Option<String>,
    pub(super) http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealthCheck {
    pub(super) path: Option<String>,
    pub(super) interval_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) path: String,
    pub(super) upstream: String,
    /// Method → the permission it needs, e.g. `{ GET = "message_read" }`.
    pub(super) require: Option<std::collections::BTreeMap<String, String>>,
}
