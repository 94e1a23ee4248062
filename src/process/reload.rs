//! SIGHUP's config reload: the file is read and validated in full first; a bad file, or one
//! that changes a setting only a restart can apply, is refused whole and the running config
//! stays. A good one swaps, for new requests: management tokens and the inbox directory, the
//! routes, the header limits and the access log switch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter, IntCounterVec, Opts};

use crate::config::{Config, ConfigError};
use crate::keys::KeyFormat;
use crate::management::principal::Principals;
use crate::metrics::Metrics;
use crate::proxy::{Live, Pipeline, SharedLive};

/// What a reload may not change, as TOML paths: whole sections, and single fields of a
/// section that is otherwise reloadable. Listeners, threads, TLS and the store are built once;
/// the key format, vocabulary, caches and upstream groups are shared by parts a reload does
/// not rebuild.
const RESTART_ONLY_SECTIONS: &[&str] = &[
    "server",
    "metrics",
    "store",
    "keys",
    "permissions",
    "cache",
    "usage",
    "upstreams",
];
const RESTART_ONLY_LIMITS: &[&str] = &[
    "failed_auth_per_ip",
    "failed_auth_window_seconds",
    "failed_auth_max_clients",
    "failed_auth_ipv6_prefix",
];

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{path}: not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{} changed, which only a restart applies; nothing was applied (restart the gateway, or set them back in the file)", .0.join(", "))]
    RestartOnly(Vec<String>),
}

/// The config file as the running process knows it.
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// The proxy's reloadable part built from a validated config.
pub fn live(config: &Config, key_format: &KeyFormat, metrics: &Metrics) -> Live {
    let names: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.template.as_str().to_owned())
        .collect();
    Live {
        pipeline: Pipeline::new(
            config.routes.clone(),
            key_format.clone(),
            crate::request_head::HeaderLimits {
                max_headers: config.limits.max_headers,
                max_header_bytes: config.limits.max_header_bytes,
            },
        ),
        route_requests: metrics.route_requests(&names),
        access_log: config.access_log,
    }
}

/// Management principals built from a validated config.
pub fn principals(config: &Config) -> Principals {
    Principals::new(
        config.management_tokens.clone(),
        config.inbox_directory.clone(),
    )
}

pub struct Reloader {
    path: PathBuf,
    /// The running file's TOML, to name what a new file changes.
    running: Mutex<toml::Value>,
    live: SharedLive,
    principals: Arc<ArcSwap<Principals>>,
    key_format: KeyFormat,
    metrics: Arc<Metrics>,
    ok: IntCounter,
    error: IntCounter,
    last_success: Gauge,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Reloader {
    /// `file` is the text the running config was validated from.
    pub fn new(
        file: &ConfigFile,
        live: SharedLive,
        principals: Arc<ArcSwap<Principals>>,
        key_format: KeyFormat,
        metrics: Arc<Metrics>,
    ) -> Result<Reloader, ReloadError> {
        let running = parse_toml(&file.path, &file.text)?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "agentry_gateway_config_reloads_total",
                "Config reloads (SIGHUP) by result",
            ),
            &["result"],
        );
        let last_success = Gauge::new(
            "agentry_gateway_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start-up or the last good reload), Unix seconds",
        );
        let (reloads, last_success) = match (reloads, last_success) {
            (Ok(r), Ok(g)) => (r, g),
            (Err(e), _) | (_, Err(e)) => unreachable_metric(e),
        };
        for c in [
            Box::new(reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_success.clone()),
        ] {
            if let Err(e) = metrics.registry().register(c) {
                unreachable_metric(e);
            }
        }
        last_success.set(unix_now());
        Ok(Reloader {
            path: file.path.clone(),
            running: Mutex::new(running),
            live,
            principals,
            key_format,
            ok: reloads.with_label_values(&["ok"]),
            error: reloads.with_label_values(&["error"]),
            last_success,
            metrics,
        })
    }

    /// Reads, validates and applies the file; on any error nothing changes.
    pub fn reload(&self) -> Result<Config, ReloadError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| ConfigError::Read {
            path: self.path.clone(),
            source,
        })?;
        let config = Config::parse(&text, &self.path)?;
        let new = parse_toml(&self.path, &text)?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let changed = restart_only_changes(&running, &new);
        if !changed.is_empty() {
            return Err(ReloadError::RestartOnly(changed));
        }
        // Principals first: a management request reads the router of `live` and then the
        // principals, and the built-in management routes never change, so the order is safe.
        self.principals.store(Arc::new(principals(&config)));
        self.live
            .store(Arc::new(live(&config, &self.key_format, &self.metrics)));
        *running = new;
        Ok(config)
    }

    /// SIGHUP: reload, log the outcome, count it.
    pub fn reload_and_report(&self) {
        match self.reload() {
            Ok(c) => {
                self.ok.inc();
                self.last_success.set(unix_now());
                log::info!(
                    "config reloaded from {}: {} routes, {} management tokens, access log {}",
                    self.path.display(),
                    c.routes.len(),
                    c.management_tokens.len(),
                    if c.access_log { "on" } else { "off" }
                );
            }
            Err(e) => {
                self.error.inc();
                log::error!("config reload refused, the running config stays: {e}");
            }
        }
    }
}

fn unreachable_metric(e: prometheus::Error) -> ! {
    // Fixed names and help texts: only a programming error (a duplicate) gets here.
    panic!("config reload metrics: {e}")
}

fn parse_toml(path: &std::path::Path, text: &str) -> Result<toml::Value, ReloadError> {
    text.parse::<toml::Value>().map_err(|e| ReloadError::Toml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The restart-only settings that differ between two files, as TOML paths (names only:
/// values can be secrets).
pub fn restart_only_changes(old: &toml::Value, new: &toml::Value) -> Vec<String> {
    let mut out = Vec::new();
    for section in RESTART_ONLY_SECTIONS {
        differences(section, old.get(section), new.get(section), &mut out);
    }
    let (old_limits, new_limits) = (old.get("limits"), new.get("limits"));
    for field in RESTART_ONLY_LIMITS {
        differences(
            &format!("limits.{field}"),
            old_limits.and_then(|l| l.get(field)),
            new_limits.and_then(|l| l.get(field)),
            &mut out,
        );
    }
    out
}

fn differences(
    path: &str,
    old: Option<&toml::Value>,
    new: Option<&toml::Value>,
    out: &mut Vec<String>,
) {
    use toml::Value;
    match (old, new) {
        (Some(Value::Table(a)), Some(Value::Table(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                differences(&format!("{path}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(old: &str, new: &str) -> Vec<String> {
        restart_only_changes(&old.parse().unwrap(), &new.parse().unwrap())
    }

    #[test]
    fn names_each_restart_only_field_and_never_its_value() {
        let old = "[server]\nlisten = \"127.0.0.1:1\"\nthreads = 2\n[store]\nkind = \"postgres\"\nurl = \"postgres://u:secret@h/db\"\n[limits]\nmax_headers = 10\n";
        let new = "[server]\nlisten = \"127.0.0.1:2\"\nthreads = 2\n[store]\nkind = \"postgres\"\nurl = \"postgres://u:other@h/db\"\n[limits]\nmax_headers = 20\nfailed_auth_per_ip = 5\n";
        assert_eq!(
            changes(old, new),
            ["server.listen", "store.url", "limits.failed_auth_per_ip"]
        );
    }

    #[test]
    fn reloadable_sections_are_not_named() {
        let old = "[server]\nlisten = \"a\"\n[[routes]]\npath = \"/x\"\nupstream = \"u\"\n[logging]\naccess_log = false\n";
        let new = "[server]\nlisten = \"a\"\n[[routes]]\npath = \"/y\"\nupstream = \"u\"\n[[routes]]\npath = \"/z\"\nupstream = \"u\"\n[logging]\naccess_log = true\n[management]\ntokens = []\n";
        assert!(changes(old, new).is_empty());
    }

    #[test]
    fn an_added_upstream_or_address_is_named() {
        let old = "[[upstreams]]\nname = \"a\"\naddresses = [\"127.0.0.1:1\"]\n";
        let new = "[[upstreams]]\nname = \"a\"\naddresses = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n[[upstreams]]\nname = \"b\"\naddresses = [\"127.0.0.1:3\"]\n";
        assert_eq!(changes(old, new), ["upstreams"]);
        let new = "[[upstreams]]\nname = \"a\"\naddresses = [\"127.0.0.1:9\"]\n";
        assert_eq!(changes(old, new), ["upstreams[0].addresses[0]"]);
    }
}
