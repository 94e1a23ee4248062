//! The validator: file structs in, validated `Config` out; every error names the field and
//! the fix.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod principals;

/// The longest `cache.ttl_seconds` and `cache.negative_ttl_seconds`.
const MAX_CACHE_TTL_SECS: u64 = 86_400;
mod routes;

use super::file::*;
use super::types::*;
use super::*;
use crate::permissions::Vocabulary;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn socket_addr(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                field,
                format!("{value:?} is not an IP:port address (write e.g. \"127.0.0.1:8080\")"),
            )
        })
    }

    fn positive(&self, field: &str, value: u64) -> Result<u64, ConfigError> {
        if value == 0 {
            return Err(self.err(field, "must be greater than 0"));
        }
        Ok(value)
    }

    pub(super) fn validate(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let server = self.server(file.server)?;
        let metrics_listen = match file.metrics {
            Some(m) => Some(self.socket_addr("metrics.listen", &m.listen)?),
            None => None,
        };
        if metrics_listen == Some(server.listen) {
            return Err(self.err(
                "metrics.listen",
                "must differ from server.listen (the metrics endpoint needs its own port)",
            ));
        }
        let store = self.store(file.store)?;
        let max_key_lifetime = match file.keys.max_lifetime_days {
            None => None,
            Some(d) if (1..=36_500).contains(&d) => Some(Duration::from_secs(d * 86_400)),
            Some(_) => {
                return Err(self.err(
                    "keys.max_lifetime_days",
                    "must be between 1 and 36500 days; omit it for keys that may never expire",
                ))
            }
        };
        let key_prefix = self.key_prefix(file.keys)?;
        let permissions = self.permissions(file.permissions)?;
        let management_tokens = self.tokens(file.management)?;
        let inbox_directory = self.directory(file.inbox_directory, &management_tokens)?;
        let cache = self.cache(file.cache)?;
        let flush_ms = file
            .usage
            .flush_interval_ms
            .unwrap_or(DEFAULT_USAGE_FLUSH_INTERVAL_MS);
        self.positive("usage.flush_interval_ms", flush_ms)?;
        let limits = self.limits(file.limits)?;
        let upstreams = self.upstreams(file.upstreams)?;
        let routes = self.routes(file.routes, &upstreams, &permissions)?;
        Ok(Config {
            server,
            metrics_listen,
            store,
            key_prefix,
            max_key_lifetime,
            permissions,
            management_tokens,
            inbox_directory,
            cache,
            usage_flush_interval: Duration::from_millis(flush_ms),
            access_log: file.logging.access_log.unwrap_or(true),
            limits,
            upstreams,
            routes,
        })
    }

    fn server(&self, s: FileServer) -> Result<ServerConfig, ConfigError> {
        let listen = self.socket_addr("server.listen", &s.listen)?;
        let threads = s.threads.unwrap_or(DEFAULT_THREADS);
        if threads == 0 || threads > 1024 {
            return Err(self.err("server.threads", "must be between 1 and 1024"));
        }
        let mut trusted_proxies = Vec::with_capacity(s.trusted_proxies.len());
        for (i, t) in s.trusted_proxies.iter().enumerate() {
            let net = t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        format!("server.trusted_proxies[{i}]"),
                        format!("{t:?} is not an IP address or CIDR range (e.g. \"10.0.0.0/8\")"),
                    )
                })?;
            trusted_proxies.push(net);
        }
        let header_read_timeout_ms = self.positive(
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS),
        )?;
        let http2 = self.http2(s.http2, s.tls.is_some())?;
        let tls = match s.tls {
            Some(t) => Some(self.tls(t, header_read_timeout_ms, http2.enabled)?),
            None => None,
        };
        let pool = s
            .upstream_keepalive_pool_size
            .unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE);
        Ok(ServerConfig {
            listen,
            threads,
            grace_period: Duration::from_secs(
                s.grace_period_seconds.unwrap_or(DEFAULT_GRACE_PERIOD_SECS),
            ),
            graceful_shutdown_timeout: Duration::from_secs(
                s.graceful_shutdown_timeout_seconds
                    .unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECS),
            ),
            upstream_keepalive_pool_size: pool,
            work_stealing: s.work_stealing.unwrap_or(true),
            transparent_huge_pages: s.transparent_huge_pages.unwrap_or(false),
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            drain: self.drain(s.drain_seconds)?,
            pid_file: s
                .pid_file
                .unwrap_or_else(|| format!("/tmp/agentry-gateway-{}.pid", listen.port())),
            upgrade_sock: s
                .upgrade_sock
                .unwrap_or_else(|| format!("/tmp/agentry-gateway-{}.sock", listen.port())),
            trusted_proxies,
            tls,
            http2,
        })
    }

    /// `server.drain_seconds`: how long `/readyz` says 503 after SIGTERM before the listeners
    /// close.
    fn drain(&self, seconds: Option<u64>) -> Result<Duration, ConfigError> {
        let seconds = seconds.unwrap_or(DEFAULT_DRAIN_SECS);
        if seconds > MAX_DRAIN_SECS {
            return Err(self.err(
                "server.drain_seconds",
                format!(
                    "{seconds} is longer than {MAX_DRAIN_SECS}; a load balancer notices a 503 within a few health-check intervals, so use the interval times the failure threshold (0 turns the drain off)"
                ),
            ));
        }
        Ok(Duration::from_secs(seconds))
    }

    /// `[server.tls]`: the files must be readable, parse, belong together and be valid now.
    fn tls(
        &self,
        t: FileTls,
        header_read_timeout_ms: u64,
        http2: bool,
    ) -> Result<crate::tls::FrontDoorSettings, ConfigError> {
        use crate::tls::MinVersion;
        let min_version = match t.min_version.as_deref() {
            None | Some("1.2") => MinVersion::Tls12,
            Some("1.3") => MinVersion::Tls13,
            Some(other) => {
                return Err(self.err(
                    "server.tls.min_version",
                    format!("{other:?} is not supported: write \"1.2\" (the default) or \"1.3\"; TLS 1.0 and 1.1 are never accepted"),
                ))
            }
        };
        let cert_path = PathBuf::from(&t.cert_path);
        let key_path = PathBuf::from(&t.key_path);
        self.pair(
            "server.tls.cert_path",
            "server.tls.key_path",
            &cert_path,
            &key_path,
        )?;
        let client_ca_path = t.client_ca_path.map(PathBuf::from);
        if let Some(ca) = &client_ca_path {
            crate::tls::material::roots(ca)
                .map_err(|e| self.err("server.tls.client_ca_path", e.to_string()))?;
        }
        let reload = self.positive(
            "server.tls.reload_interval_ms",
            t.reload_interval_ms
                .unwrap_or(DEFAULT_TLS_RELOAD_INTERVAL_MS),
        )?;
        let handshake = self.positive(
            "server.tls.handshake_timeout_ms",
            t.handshake_timeout_ms.unwrap_or(header_read_timeout_ms),
        )?;
        Ok(crate::tls::FrontDoorSettings {
            cert_path,
            key_path,
            min_version,
            client_ca_path,
            http2,
            handshake_timeout: Duration::from_millis(handshake),
            reload_interval: Duration::from_millis(reload),
        })
    }

    /// A certificate and its key: the error names the field of the file at fault.
    pub(super) fn pair(
        &self,
        cert_field: &str,
        key_field: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<(), ConfigError> {
        use crate::tls::material::{load_pair, unix_now, MaterialError as M};
        load_pair(cert, key, unix_now()).map(drop).map_err(|e| {
            let field = match &e {
                M::Read { path, .. } if path == key => key_field,
                M::NoKey { .. } | M::BadKey { .. } | M::Mismatch { .. } => key_field,
                _ => cert_field,
            };
            self.err(field, e.to_string())
        })
    }

    fn http2(&self, h: FileHttp2, tls: bool) -> Result<Http2Config, ConfigError> {
        let cleartext = h.cleartext.unwrap_or(false);
        if cleartext && tls {
            return Err(self.err(
                "server.http2.cleartext",
                "applies only to a plaintext listener; with [server.tls] HTTP/2 is negotiated by ALPN (server.http2.enabled)",
            ));
        }
        let streams = h
            .max_concurrent_streams
            .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS);
        if !(1..=10_000).contains(&streams) {
            return Err(self.err(
                "server.http2.max_concurrent_streams",
                "must be between 1 and 10000",
            ));
        }
        Ok(Http2Config {
            enabled: h.enabled.unwrap_or(true),
            cleartext,
            max_concurrent_streams: streams,
            idle_timeout: Duration::from_millis(self.positive(
                "server.http2.idle_timeout_ms",
                h.idle_timeout_ms.unwrap_or(DEFAULT_H2_IDLE_TIMEOUT_MS),
            )?),
        })
    }

    fn store(&self, s: FileStore) -> Result<StoreConfig, ConfigError> {
        let postgres_only = [
            ("store.url", s.url.is_some()),
            ("store.pool_size", s.pool_size.is_some()),
            ("store.connect_timeout_ms", s.connect_timeout_ms.is_some()),
            (
                "store.statement_timeout_ms",
                s.statement_timeout_ms.is_some(),
            ),
            ("store.tls_ca_path", s.tls_ca_path.is_some()),
            (
                "store.revocation_max_staleness_ms",
                s.revocation_max_staleness_ms.is_some(),
            ),
            (
                "store.revocation_log_retention_seconds",
                s.revocation_log_retention_seconds.is_some(),
            ),
        ];
        match s.kind.as_str() {
            "sqlite" => {
                if let Some((field, _)) = postgres_only.iter().find(|(_, set)| *set) {
                    return Err(self.err(
                        *field,
                        "applies only to kind = \"postgres\"; remove it or set store.kind = \"postgres\"",
                    ));
                }
                let path = s.path.filter(|p| !p.trim().is_empty()).ok_or_else(|| {
                    self.err(
                        "store.path",
                        "is required for kind = \"sqlite\" (write e.g. path = \"data/gateway.db\")",
                    )
                })?;
                Ok(StoreConfig::Sqlite { path: path.into() })
            }
            "postgres" => {
                if s.path.is_some() {
                    return Err(self.err(
                        "store.path",
                        "applies only to kind = \"sqlite\"; PostgreSQL is reached through store.url",
                    ));
                }
                let url = s.url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
                    self.err(
                        "store.url",
                        "is required for kind = \"postgres\" (e.g. url = \"postgres://gateway@db.internal/gateway?sslmode=require\")",
                    )
                })?;
                // The parser's own message may quote the string, password included: not shown.
                if url.parse::<tokio_postgres::Config>().is_err() {
                    return Err(self.err(
                        "store.url",
                        "is not a valid PostgreSQL connection string; write a URL (postgres://user@host:5432/db?sslmode=require) or key=value pairs (host=... user=... dbname=...)",
                    ));
                }
                let pool_size = s.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE);
                if !(1..=1000).contains(&pool_size) {
                    return Err(self.err("store.pool_size", "must be between 1 and 1000"));
                }
                let ms =
                    |field: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
                        Ok(Duration::from_millis(
                            self.positive(field, v.unwrap_or(default))?,
                        ))
                    };
                Ok(StoreConfig::Postgres(PostgresConfig {
                    url,
                    pool_size,
                    connect_timeout: ms(
                        "store.connect_timeout_ms",
                        s.connect_timeout_ms,
                        DEFAULT_PG_CONNECT_TIMEOUT_MS,
                    )?,
                    statement_timeout: ms(
                        "store.statement_timeout_ms",
                        s.statement_timeout_ms,
                        DEFAULT_PG_STATEMENT_TIMEOUT_MS,
                    )?,
                    tls_ca_path: s.tls_ca_path.map(Into::into),
                    revocation_max_staleness: ms(
                        "store.revocation_max_staleness_ms",
                        s.revocation_max_staleness_ms,
                        DEFAULT_REVOCATION_MAX_STALENESS_MS,
                    )?,
                    revocation_log_retention: Duration::from_secs(
                        self.positive(
                            "store.revocation_log_retention_seconds",
                            s.revocation_log_retention_seconds
                                .unwrap_or(DEFAULT_REVOCATION_LOG_RETENTION_SECS),
                        )?,
                    ),
                }))
            }
            other => Err(self.err(
                "store.kind",
                format!("{other:?} is not a supported store (supported: \"sqlite\", \"postgres\")"),
            )),
        }
    }

    fn limits(&self, l: FileLimits) -> Result<LimitsConfig, ConfigError> {
        let window = self.positive(
            "limits.failed_auth_window_seconds",
            l.failed_auth_window_seconds
                .unwrap_or(DEFAULT_FAILED_AUTH_WINDOW_SECS),
        )?;
        let max_clients = l
            .failed_auth_max_clients
            .unwrap_or(DEFAULT_FAILED_AUTH_MAX_CLIENTS);
        if !(64..=10_000_000).contains(&max_clients) {
            return Err(self.err(
                "limits.failed_auth_max_clients",
                "must be between 64 and 10000000 (each tracked client takes about 64 bytes)",
            ));
        }
        let ipv6_prefix = l
            .failed_auth_ipv6_prefix
            .unwrap_or(DEFAULT_FAILED_AUTH_IPV6_PREFIX);
        if !(1..=128).contains(&ipv6_prefix) {
            return Err(self.err(
                "limits.failed_auth_ipv6_prefix",
                "must be a prefix length between 1 and 128 (e.g. 64 for a /64)",
            ));
        }
        let max_headers = l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS);
        if !(1..=256).contains(&max_headers) {
            return Err(self.err(
                "limits.max_headers",
                "must be between 1 and 256 (pingora's own ceiling)",
            ));
        }
        let max_header_bytes = l.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if !(1024..=1_048_575).contains(&max_header_bytes) {
            return Err(self.err(
                "limits.max_header_bytes",
                "must be between 1024 and 1048575 bytes",
            ));
        }
        Ok(LimitsConfig {
            failed_auth_per_ip: l.failed_auth_per_ip.unwrap_or(DEFAULT_FAILED_AUTH_PER_IP),
            failed_auth_window: Duration::from_secs(window),
            failed_auth_max_clients: max_clients,
            failed_auth_ipv6_prefix: ipv6_prefix,
            max_headers,
            max_header_bytes,
        })
    }

    fn key_prefix(&self, k: FileKeys) -> Result<String, ConfigError> {
        let prefix = k.prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_KEY_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(self.err(
                "keys.prefix",
                format!(
                    "{prefix:?} must be 1 to {MAX_KEY_PREFIX_LEN} lowercase ASCII letters or digits (e.g. \"agk\")"
                ),
            ));
        }
        Ok(prefix)
    }

    fn permissions(&self, p: FilePermissions) -> Result<Vocabulary, ConfigError> {
        use crate::permissions::{DEFAULT_NAMES, DEFAULT_OPT_IN};
        let custom_names = p.names.is_some();
        let names = p
            .names
            .unwrap_or_else(|| DEFAULT_NAMES.iter().map(|s| s.to_string()).collect());
        let opt_in = p.opt_in.unwrap_or_else(|| {
            if custom_names {
                Vec::new()
            } else {
                DEFAULT_OPT_IN.iter().map(|s| s.to_string()).collect()
            }
        });
        Vocabulary::new(names, &opt_in).map_err(|m| {
            let field = if m.starts_with("opt-in") {
                "permissions.opt_in"
            } else {
                "permissions.names"
            };
            self.err(field, m)
        })
    }

    /// A cache lifetime of at most a day: a cached copy is also the cache's own bound on how
    /// long a change could be missed, and the cache library refuses lifetimes past centuries.
    fn at_most_a_day(&self, field: &str, secs: u64) -> Result<u64, ConfigError> {
        if secs > MAX_CACHE_TTL_SECS {
            return Err(self.err(
                field,
                format!("{secs} is more than {MAX_CACHE_TTL_SECS} (a day); use a smaller value"),
            ));
        }
        Ok(secs)
    }

    fn cache(&self, c: FileCache) -> Result<CacheConfig, ConfigError> {
        let max_entries = self.positive(
            "cache.max_entries",
            c.max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES),
        )?;
        let ttl = self.at_most_a_day(
            "cache.ttl_seconds",
            self.positive(
                "cache.ttl_seconds",
                c.ttl_seconds.unwrap_or(DEFAULT_CACHE_TTL_SECS),
            )?,
        )?;
        let negative_max_entries = self.positive(
            "cache.negative_max_entries",
            c.negative_max_entries
                .unwrap_or(DEFAULT_NEGATIVE_CACHE_MAX_ENTRIES),
        )?;
        let negative_ttl = self.at_most_a_day(
            "cache.negative_ttl_seconds",
            self.positive(
                "cache.negative_ttl_seconds",
                c.negative_ttl_seconds
                    .unwrap_or(DEFAULT_NEGATIVE_CACHE_TTL_SECS),
            )?,
        )?;
        Ok(CacheConfig {
            max_entries,
            ttl: Duration::from_secs(ttl),
            negative_max_entries,
            negative_ttl: Duration::from_secs(negative_ttl),
        })
    }
}
