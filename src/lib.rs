//! agentry-gateway: an API-key reverse-proxy auth gateway on pingora. `build` wires it up.

pub mod access_log;
pub mod admin;
pub mod answer;
pub mod auth;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod demo_upstream;
pub mod header_deadline;
pub mod keys;
pub mod management;
pub mod metrics;
pub mod permissions;
pub mod process;
pub mod proxy;
pub mod request_head;
pub mod request_target;
pub mod store;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use auth::limiter::{FailureLimiter, LimiterConfig};
use auth::usage::{UsageFlusher, UsageRecorder};
use auth::Verifier;
use config::{Config, StoreConfig};
use keys::KeyFormat;
use management::Management;
use metrics::Metrics;
use proxy::{Gateway, RequestIds};
use store::metered::MeteredStore;
use store::postgres::PostgresStore;
use store::sqlite::SqliteStore;
use store::Store;
use upstream::Upstream;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("upstreams[{index}]: {message}")]
    Upstream { index: usize, message: String },
    #[error("server: {0}")]
    Server(String),
}

/// A built, not yet running gateway.
pub struct Built {
    pub server: Server,
    /// For the final `used_at` flush after the server stops.
    pub usage: Arc<UsageRecorder>,
    /// Drain state, requests in flight, listener readiness.
    pub lifecycle: Arc<process::Lifecycle>,
    /// Applies a reloaded config file to the running gateway.
    pub reloader: Arc<process::reload::Reloader>,
}

/// How much longer than the old process's own stop an upgraded process waits for the SQLite
/// lock before it logs that the old one still holds it.
const UPGRADE_LOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// How the process starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartMode {
    /// Take the listening sockets from the running process (`server.upgrade_sock`) instead
    /// of binding them.
    pub upgrade: bool,
}

/// An opened store, and for a shared store the listener that keeps this instance's caches
/// following changes made through other instances.
pub struct OpenedStore {
    pub store: Arc<dyn Store>,
    pub listener: Option<store::postgres::RevocationListener>,
}

/// Opens the configured store (schema migrated), on `rt` for stores that need a runtime.
/// With `--upgrade`, a SQLite file still held by the old process is opened at once and its
/// single-writer lock taken when the old process exits (after its drain, grace period and
/// shutdown timeout).
pub fn open_store(
    config: &Config,
    rt: &tokio::runtime::Runtime,
    mode: StartMode,
) -> Result<OpenedStore, StartError> {
    match &config.store {
        StoreConfig::Sqlite { path } => {
            let s = &config.server;
            let handover = mode.upgrade.then(|| {
                s.drain + s.grace_period + s.graceful_shutdown_timeout + UPGRADE_LOCK_SLACK
            });
            Ok(OpenedStore {
                store: Arc::new(SqliteStore::open_exclusive(path, handover)?),
                listener: None,
            })
        }
        StoreConfig::Postgres(pg) => {
            let store = rt.block_on(PostgresStore::open(pg))?;
            let listener = store.listener();
            if pg.tls_ca_path.is_none() {
                log::info!("store: TLS to PostgreSQL (when sslmode uses it) is encrypted but does not authenticate the server; set store.tls_ca_path to verify it");
            }
            Ok(OpenedStore {
                store: Arc::new(store),
                listener: Some(listener),
            })
        }
    }
}

/// A runtime for start-up work (migrations, the page-token secret); dropped before serving.
fn startup_runtime() -> Result<tokio::runtime::Runtime, StartError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Server(format!("start-up runtime: {e}")))
}

/// The page-token MAC key: the store's secret, generated from the OS RNG by whichever
/// instance asks first.
fn page_token_key(
    store: &dyn Store,
    rt: &tokio::runtime::Runtime,
) -> Result<store::cursor::PageTokenKey, StartError> {
    use rand::RngCore;
    let mut candidate = vec![0u8; store::cursor::SECRET_LEN];
    rand::rngs::OsRng.fill_bytes(&mut candidate);
    let secret = rt.block_on(store.get_or_create_secret(store::cursor::SECRET_NAME, candidate))?;
    if secret.len() < store::cursor::SECRET_LEN {
        return Err(StartError::Store(store::StoreError::Unavailable(format!(
            "stored secret {} is {} bytes; expected {}",
            store::cursor::SECRET_NAME,
            secret.len(),
            store::cursor::SECRET_LEN
        ))));
    }
    Ok(store::cursor::PageTokenKey::new(&secret))
}

/// The listening service: pingora's HTTP proxy around the gateway, HTTP/2 settings, and the
/// connection wrapper that terminates TLS (with its certificate watcher) and times request heads.
fn proxy_service(
    config: &Config,
    server: &mut Server,
    gateway: Gateway,
    metrics: &Arc<Metrics>,
) -> Result<Service<header_deadline::HeaderDeadline<pingora::proxy::HttpProxy<Gateway>>>, StartError>
{
    let mut app = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    app.handle_init_modules();
    let h2 = &config.server.http2;
    let mut server_options = pingora::apps::HttpServerOptions::default();
    server_options.h2c = h2.cleartext;
    server_options.h2_idle_timeout = Some(h2.idle_timeout);
    app.server_options = Some(server_options);
    app.h2_options = Some(h2_options(config));
    let front_door = match &config.server.tls {
        Some(settings) => {
            let door = tls::FrontDoor::new(settings, metrics.clone())
                .map_err(|e| StartError::Server(e.to_string()))?;
            server.add_service(background_service(
                "certificate watcher",
                tls::CertWatcher {
                    cert: door.cert(),
                    interval: settings.reload_interval,
                    metrics: metrics.clone(),
                },
            ));
            Some(Arc::new(door))
        }
        None => None,
    };
    Ok(Service::new(
        "agentry-gateway".to_owned(),
        header_deadline::HeaderDeadline::new(app, config.server.header_read_timeout)
            .with_tls(front_door)
            .with_h2c(h2.cleartext),
    ))
}

/// HTTP/2 limits towards clients. The h2 crate also bounds CONTINUATION frames per header
/// block (from the header-list size) and answers a flood of resets with GOAWAY.
fn h2_options(config: &Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(config.server.http2.max_concurrent_streams)
        .max_header_list_size(config.limits.max_header_bytes as u32)
        // Streams reset by the client before the gateway took them (CVE-2023-44487): past
        // this many at once, the connection gets GOAWAY ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams the gateway had to reset for the client's protocol errors.
        .max_local_error_reset_streams(Some(H2_MAX_ERROR_RESETS));
    o
}

/// See `h2_options`.
pub const H2_MAX_PENDING_RESETS: usize = 20;
pub const H2_MAX_ERROR_RESETS: usize = 200;

/// Transparent huge pages for this process: left to the host's setting when `allowed`, else
/// turned off (`PR_SET_THP_DISABLE`; a no-op where Linux is not). mimalloc asks for them on its
/// arenas (`MADV_HUGEPAGE`, which the common `madvise` setting grants). With them, the p99
/// while the key cache fills was twice as high and the heap a third larger; without them,
/// cache hits cost up to 7% more CPU (bench/HISTORY.md, tuning log: cold-cache one-connection p99
/// 1.16 -> 0.57 ms). The binary calls it with `server.transparent_huge_pages` before `build`.
pub fn huge_pages(allowed: bool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if !allowed {
        nix::sys::prctl::set_thp_disable(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allowed;
    Ok(())
}

/// Builds the pingora server with every service: proxy + management listener, metrics
/// listener, used_at flusher and upstream health checks.
pub fn build(
    config: Config,
    file: &process::reload::ConfigFile,
    mode: StartMode,
) -> Result<Built, StartError> {
    let route_names: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.template.as_str().to_owned())
        .collect();
    let upstream_names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&route_names, &upstream_names));
    let rt = startup_runtime()?;
    let opened = open_store(&config, &rt, mode)?;
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(opened.store, metrics.clone()));

    let page_tokens = page_token_key(store.as_ref(), &rt)?;
    drop(rt);
    let key_format = KeyFormat::new(&config.key_prefix);
    let vocabulary = Arc::new(config.permissions.clone());
    let limiter = Arc::new(FailureLimiter::new(LimiterConfig {
        limit: config.limits.failed_auth_per_ip,
        window: config.limits.failed_auth_window,
        max_clients: config.limits.failed_auth_max_clients,
        ipv6_prefix: config.limits.failed_auth_ipv6_prefix,
    }));
    let feed = opened
        .listener
        .as_ref()
        .map_or_else(|| Arc::new(store::FeedHealth::always()), |l| l.health());
    let verifier = Arc::new(
        Verifier::new(
            key_format.clone(),
            &config.cache,
            store.clone(),
            metrics.clone(),
            limiter.clone(),
        )
        .with_feed(feed)
        .with_vocabulary(vocabulary.clone()),
    );
    let usage = Arc::new(UsageRecorder::new(store.clone(), metrics.clone()));

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        work_stealing: config.server.work_stealing,
        pid_file: config.server.pid_file.clone(),
        upgrade_sock: config.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let conf = conf
        .validate()
        .map_err(|e| StartError::Server(e.to_string()))?;
    let opt = pingora::server::configuration::Opt {
        upgrade: mode.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With --upgrade: waits here for the old process's sockets (it sends them on SIGQUIT).
    server.bootstrap();

    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for (index, u) in config.upstreams.iter().enumerate() {
        let (upstream, health) =
            Upstream::build(u, metrics.upstream_resolve_failures[index].clone()).map_err(|e| {
                StartError::Upstream {
                    index,
                    message: e.to_string(),
                }
            })?;
        upstreams.push(upstream);
        server.add_service(health);
    }
    let upstreams = Arc::new(upstreams);

    let events_sink = verifier.clone();
    let lifecycle = process::Lifecycle::new(vec![config.server.listen]);
    let live = Arc::new(arc_swap::ArcSwap::from_pointee(process::reload::live(
        &config,
        &key_format,
        &metrics,
    )));
    let principals = Arc::new(arc_swap::ArcSwap::from_pointee(
        process::reload::principals(&config),
    ));
    let reloader = process::reload::Reloader::new(
        file,
        live.clone(),
        principals.clone(),
        key_format.clone(),
        metrics.clone(),
    )
    .map_err(|e| StartError::Server(e.to_string()))?;
    let gateway = Gateway {
        management: Management {
            store: store.clone(),
            verifier: verifier.clone(),
            usage: usage.clone(),
            principals,
            key_format: key_format.clone(),
            clock: Default::default(),
            page_tokens,
            limiter,
            vocabulary,
            max_lifetime: config.max_key_lifetime,
        },
        verifier,
        usage: usage.clone(),
        live,
        lifecycle: lifecycle.clone(),
        upstreams: upstreams.clone(),
        metrics: metrics.clone(),
        // Started whatever the config says: a reload may turn the log on.
        access_log: access_log::AccessLog::start(metrics.clone()),
        request_ids: RequestIds::default(),
        trusted_proxies: client_ip::TrustedProxies::new(config.server.trusted_proxies.clone()),
    };
    let mut proxy = proxy_service(&config, &mut server, gateway, &metrics)?;
    proxy.add_tcp(&config.server.listen.to_string());
    server.add_service(proxy);

    if let Some(addr) = config.metrics_listen {
        let mut admin = Service::new(
            "metrics".to_owned(),
            admin::AdminApp {
                metrics: metrics.clone(),
                store: store.clone(),
                upstreams,
                lifecycle: lifecycle.clone(),
            },
        );
        admin.add_tcp(&addr.to_string());
        admin.threads = Some(1);
        server.add_service(admin);
    }

    if let Some(listener) = opened.listener {
        let events: Arc<dyn store::KeyEvents> = events_sink;
        server.add_service(background_service(
            "revocation listener",
            listener.into_service(events, metrics.clone()),
        ));
    }
    server.add_service(background_service(
        "used_at flusher",
        UsageFlusher {
            recorder: usage.clone(),
            interval: config.usage_flush_interval,
        },
    ));
    Ok(Built {
        server,
        usage,
        lifecycle,
        reloader: Arc::new(reloader),
    })
}
