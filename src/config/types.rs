//! The validated config: types that cannot be wrong (parsed addresses, durations, non-empty
//! lists), built by the validator from the file structs.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::permissions::Vocabulary;
use crate::request_target::RouteTemplate;

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub store: StoreConfig,
    pub key_prefix: String,
    /// `keys.max_lifetime_days`: the latest `expires_at` a new key may have, from now.
    pub max_key_lifetime: Option<Duration>,
    /// The permission names keys may hold, and the opt-in ones.
    pub permissions: Vocabulary,
    pub management_tokens: Vec<ManagementToken>,
    pub inbox_directory: InboxDirectory,
    pub cache: CacheConfig,
    pub usage_flush_interval: Duration,
    pub access_log: bool,
    pub limits: LimitsConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Abuse limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Failed authentications per client IP per window before 429 (0: no limit).
    pub failed_auth_per_ip: u32,
    pub failed_auth_window: Duration,
    /// Most clients whose failures are tracked at once.
    pub failed_auth_max_clients: usize,
    /// IPv6 clients are counted by this prefix length.
    pub failed_auth_ipv6_prefix: u8,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upstream_keepalive_pool_size: usize,
    pub work_stealing: bool,
    /// Let the kernel back the heap with 2 MiB pages (off: the process opts out).
    pub transparent_huge_pages: bool,
    /// Total time a request head may take to arrive, from its first byte.
    pub header_read_timeout: Duration,
    /// After SIGTERM, `/readyz` answers 503 this long while the listeners still serve.
    pub drain: Duration,
    /// Written at start, removed at exit; names this process to `kill -QUIT` for an upgrade.
    pub pid_file: String,
    /// Where a new process started with `--upgrade` receives the listening sockets.
    pub upgrade_sock: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `None`: plaintext HTTP (behind a TLS-terminating balancer, or on loopback).
    pub tls: Option<crate::tls::FrontDoorSettings>,
    pub http2: Http2Config,
}

/// HTTP/2 towards clients.
#[derive(Debug, Clone)]
pub struct Http2Config {
    /// Offer HTTP/2 by ALPN on the TLS listener.
    pub enabled: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on a plaintext listener.
    pub cleartext: bool,
    pub max_concurrent_streams: u32,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Sqlite { path: PathBuf },
    Postgres(PostgresConfig),
}

/// A PostgreSQL store shared by several gateways.
#[derive(Clone)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string (may hold a password: never logged).
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// CA to verify the server's certificate against (sslmode=prefer/require); without it the
    /// connection is encrypted but the server is not authenticated (libpq's `require`).
    pub tls_ca_path: Option<PathBuf>,
    /// How long cached keys are trusted while the revocation listener is down.
    pub revocation_max_staleness: Duration,
    /// Age after which revocation-log entries are pruned.
    pub revocation_log_retention: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls_ca_path", &self.tls_ca_path)
            .field("revocation_max_staleness", &self.revocation_max_staleness)
            .field("revocation_log_retention", &self.revocation_log_retention)
            .finish()
    }
}

/// What a management token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    All,
    Pods(HashSet<String>),
    Inboxes(HashSet<String>),
}

#[derive(Debug, Clone)]
pub struct ManagementToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scope: TokenScope,
}

/// Who owns an inbox.
#[derive(Debug, Clone)]
pub enum InboxDirectory {
    /// Every inbox exists; none has a pod. Only valid when every token has scope `all`.
    None,
    /// A fixed table: inbox id to its pod (if any).
    Static(BTreeMap<String, Option<String>>),
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub ttl: Duration,
    pub negative_max_entries: u64,
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// `addresses` as written: literal IPs and DNS names.
    pub entries: Vec<UpstreamAddress>,
    /// Every address the entries stood for when the config was loaded (names resolved),
    /// without repeats.
    pub addresses: Vec<SocketAddr>,
    /// How often the DNS names among the entries are resolved again.
    pub resolve_interval: Duration,
    /// `None`: TCP connect check. `Some(path)`: HTTP GET of that path, 200 is healthy.
    pub health_check_path: Option<String>,
    pub health_check_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `None`: writes to the upstream are not timed (each timed write costs a timer).
    pub write_timeout: Option<Duration>,
    /// `None`: plaintext HTTP/1.1 to the upstream.
    pub tls: Option<crate::tls::upstream::UpstreamTls>,
    /// Speak HTTP/2 to the upstream (negotiated by ALPN; TLS only).
    pub http2: bool,
}

/// One entry of `upstreams[].addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddress {
    /// A literal `IP:port`.
    Ip(SocketAddr),
    /// `host:port`: every address the name resolves to joins the group.
    Name { host: String, port: u16 },
}

impl UpstreamAddress {
    /// Whether this entry is a DNS name, resolved again from time to time.
    pub fn is_name(&self) -> bool {
        matches!(self, UpstreamAddress::Name { .. })
    }

    /// The addresses this entry stands for now, without repeats; a name is looked up with the
    /// system resolver (blocking: for config loading and start-up). A name with no address
    /// is an error.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        match self {
            UpstreamAddress::Ip(a) => Ok(vec![*a]),
            UpstreamAddress::Name { host, port } => {
                distinct_addresses((host.as_str(), *port).to_socket_addrs()?)
            }
        }
    }
}

/// What a name lookup found, without repeats, in order; nothing found is an error. Shared by
/// the start-up lookup here and the upstream groups' re-resolution.
pub fn distinct_addresses(
    found: impl IntoIterator<Item = SocketAddr>,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in found {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        ));
    }
    Ok(out)
}

impl std::fmt::Display for UpstreamAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddress::Ip(a) => write!(f, "{a}"),
            UpstreamAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub template: RouteTemplate,
    pub upstream: usize,
    /// Which methods the route takes and the permission each needs; `None`: any method, a
    /// valid key of the inbox is enough.
    pub require: Option<Requirements>,
}

/// A route's methods and the permission each one needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub methods: Vec<(http::Method, crate::permissions::Permission)>,
    /// The names of the permissions, by index (for messages).
    pub names: Vec<(crate::permissions::Permission, String)>,
    /// The `Allow` header of a 405: the methods, comma-separated.
    pub allow: http::HeaderValue,
}

impl Requirements {
    /// The name of one of this route's permissions.
    pub fn name(&self, p: crate::permissions::Permission) -> &str {
        self.names
            .iter()
            .find(|(q, _)| *q == p)
            .map_or("", |(_, n)| n.as_str())
    }

    /// The permission `method` needs here; `None`: the route does not take it.
    pub fn permission_for(&self, method: &http::Method) -> Option<crate::permissions::Permission> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, p)| *p)
    }
}
