//! Validating upstream groups and routes (templates, their upstream, what each method needs).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::file::*;
use super::super::types::*;
use super::super::*;
use super::Validator;
use crate::permissions::Vocabulary;
use crate::request_target::RouteTemplate;

impl Validator<'_> {
    pub(super) fn upstreams(
        &self,
        ups: Vec<FileUpstream>,
    ) -> Result<Vec<UpstreamConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(ups.len());
        for (i, u) in ups.into_iter().enumerate() {
            let field = |f: &str| format!("upstreams[{i}].{f}");
            let name_ok = !u.name.is_empty()
                && u.name.len() <= 64
                && u.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(self.err(
                    field("name"),
                    format!("{:?} must be 1 to 64 characters of A-Z a-z 0-9 _ -", u.name),
                ));
            }
            if !names.insert(u.name.clone()) {
                return Err(self.err(field("name"), format!("{:?} is defined twice", u.name)));
            }
            if u.addresses.is_empty() {
                return Err(self.err(
                    field("addresses"),
                    "must list at least one IP:port or host:port (e.g. [\"127.0.0.1:3000\"])",
                ));
            }
            let http2 = u.http2.unwrap_or(false);
            let tls = self.upstream_tls(i, &u)?;
            let mut entries = Vec::with_capacity(u.addresses.len());
            let mut addresses = Vec::with_capacity(u.addresses.len());
            for (j, a) in u.addresses.iter().enumerate() {
                let f = format!("upstreams[{i}].addresses[{j}]");
                let entry = self.upstream_address(&f, a)?;
                for resolved in self.resolve(&f, &entry)? {
                    if !addresses.contains(&resolved) {
                        addresses.push(resolved);
                    }
                }
                entries.push(entry);
            }
            let resolve_interval = self.positive(
                &field("resolve_interval_seconds"),
                u.resolve_interval_seconds
                    .unwrap_or(DEFAULT_RESOLVE_INTERVAL_SECS),
            )?;
            let (health_check_path, interval) = match u.health_check {
                None => (None, DEFAULT_HEALTH_CHECK_INTERVAL_SECS),
                Some(h) => {
                    if let Some(p) = &h.path {
                        if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                            return Err(self.err(
                                field("health_check.path"),
                                format!("{p:?} must start with '/' and hold no spaces or control characters"),
                            ));
                        }
                    }
                    (
                        h.path,
                        self.positive(
                            &field("health_check.interval_seconds"),
                            h.interval_seconds
                                .unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL_SECS),
                        )?,
                    )
                }
            };
            let connect = self.positive(
                &field("connect_timeout_ms"),
                u.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            )?;
            let read = self.positive(
                &field("read_timeout_ms"),
                u.read_timeout_ms.unwrap_or(DEFAULT_READ_TIMEOUT_MS),
            )?;
            let write = match u.write_timeout_ms {
                Some(ms) => Some(Duration::from_millis(
                    self.positive(&field("write_timeout_ms"), ms)?,
                )),
                None => None,
            };
            if http2 && tls.is_none() {
                return Err(self.err(
                    field("http2"),
                    "needs tls = true: HTTP/2 to an upstream is negotiated by ALPN over TLS",
                ));
            }
            out.push(UpstreamConfig {
                tls,
                http2,
                name: u.name,
                entries,
                addresses,
                resolve_interval: Duration::from_secs(resolve_interval),
                health_check_path,
                health_check_interval: Duration::from_secs(interval),
                connect_timeout: Duration::from_millis(connect),
                read_timeout: Duration::from_millis(read),
                write_timeout: write,
            });
        }
        Ok(out)
    }

    /// One entry of `upstreams[].addresses`: `IP:port` (`[v6]:port`) or `host:port`.
    fn upstream_address(&self, field: &str, value: &str) -> Result<UpstreamAddress, ConfigError> {
        if let Ok(a) = value.parse() {
            return Ok(UpstreamAddress::Ip(a));
        }
        let bad = || {
            self.err(
                field,
                format!(
                    "{value:?} is not an IP:port or host:port address (write e.g. \"127.0.0.1:3000\" or \"inbox.internal:3000\")"
                ),
            )
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(UpstreamAddress::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The addresses an entry stands for now: a name that does not resolve is an error, so
    /// `check-config` and start-up catch a typo.
    fn resolve(
        &self,
        field: &str,
        entry: &UpstreamAddress,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        entry.resolve().map_err(|e| {
            self.err(
                field,
                format!("\"{entry}\" does not resolve ({e}): check the name, or write an IP:port"),
            )
        })
    }

    /// An upstream group's TLS keys: only with `tls = true`, which needs `sni`.
    fn upstream_tls(
        &self,
        i: usize,
        u: &FileUpstream,
    ) -> Result<Option<crate::tls::upstream::UpstreamTls>, ConfigError> {
        let field = |f: &str| format!("upstreams[{i}].{f}");
        if !u.tls.unwrap_or(false) {
            let set = [
                ("sni", u.sni.is_some()),
                ("verify", u.verify.is_some()),
                ("ca_path", u.ca_path.is_some()),
                ("client_cert_path", u.client_cert_path.is_some()),
                ("client_key_path", u.client_key_path.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, s)| *s) {
                return Err(self.err(
                    field(name),
                    "applies only with tls = true (add it, or remove this key)",
                ));
            }
            return Ok(None);
        }
        let sni = match u.sni.as_deref() {
            Some(s) if !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_graphic()) => {
                s.to_owned()
            }
            _ => {
                return Err(self.err(
                    field("sni"),
                    "required with tls = true: the host name the upstream's certificate is issued for, e.g. \"inbox.internal\"",
                ))
            }
        };
        let ca_path = u.ca_path.as_ref().map(PathBuf::from);
        if let Some(ca) = &ca_path {
            crate::tls::material::certificates(ca)
                .map_err(|e| self.err(field("ca_path"), e.to_string()))?;
        }
        let client_cert = match (&u.client_cert_path, &u.client_key_path) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let (c, k) = (PathBuf::from(c), PathBuf::from(k));
                self.pair(
                    &field("client_cert_path"),
                    &field("client_key_path"),
                    &c,
                    &k,
                )?;
                Some((c, k))
            }
            (Some(_), None) => {
                return Err(self.err(field("client_key_path"), "required with client_cert_path"))
            }
            (None, Some(_)) => {
                return Err(self.err(field("client_cert_path"), "required with client_key_path"))
            }
        };
        Ok(Some(crate::tls::upstream::UpstreamTls {
            sni,
            verify: u.verify.unwrap_or(true),
            ca_path,
            client_cert,
        }))
    }

    fn requirements(
        &self,
        i: usize,
        require: Option<BTreeMap<String, String>>,
        vocabulary: &Vocabulary,
    ) -> Result<Option<Requirements>, ConfigError> {
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        let Some(require) = require else {
            return Ok(None);
        };
        if require.is_empty() {
            return Err(self.err(
                format!("routes[{i}].require"),
                "must name at least one method, e.g. require = { GET = \"message_read\" }; omit it to allow every method",
            ));
        }
        let mut methods = Vec::with_capacity(require.len());
        for (method, permission) in require {
            if !METHODS.contains(&method.as_str()) {
                return Err(self.err(
                    format!("routes[{i}].require.{method}"),
                    format!(
                        "{method:?} is not a method (use one of {})",
                        METHODS.join(", ")
                    ),
                ));
            }
            let p = vocabulary.lookup(&permission).ok_or_else(|| {
                self.err(
                    format!("routes[{i}].require.{method}"),
                    format!("{permission:?} is not a permission name (see [permissions] names)"),
                )
            })?;
            let m = http::Method::from_bytes(method.as_bytes())
                .map_err(|_| self.err(format!("routes[{i}].require.{method}"), "not a method"))?;
            methods.push((m, p));
        }
        let allow = methods
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let allow = http::HeaderValue::from_str(&allow)
            .map_err(|_| self.err(format!("routes[{i}].require"), "bad method names"))?;
        let names = methods
            .iter()
            .map(|(_, p)| (*p, vocabulary.name(*p).to_owned()))
            .collect();
        Ok(Some(Requirements {
            methods,
            names,
            allow,
        }))
    }

    pub(super) fn routes(
        &self,
        routes: Vec<FileRoute>,
        upstreams: &[UpstreamConfig],
        vocabulary: &Vocabulary,
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.into_iter().enumerate() {
            let template = RouteTemplate::parse(&r.path)
                .map_err(|msg| self.err(format!("routes[{i}].path"), msg))?;
            if crate::request_target::Router::claimed_by_own_api(&template) {
                return Err(self.err(
                    format!("routes[{i}].path"),
                    format!(
                        "{:?} is under the gateway's own API (/human/... or /v0/inboxes/{{inbox_id}}/api-keys/...), which is answered by the gateway and never proxied; remove this route",
                        r.path
                    ),
                ));
            }
            let upstream = upstreams
                .iter()
                .position(|u| u.name == r.upstream)
                .ok_or_else(|| {
                    let defined: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    self.err(
                        format!("routes[{i}].upstream"),
                        format!(
                            "{:?} is not a defined upstream (defined: {})",
                            r.upstream,
                            if defined.is_empty() {
                                "none".to_owned()
                            } else {
                                defined.join(", ")
                            }
                        ),
                    )
                })?;
            let require = self.requirements(i, r.require, vocabulary)?;
            if let Some(j) = out
                .iter()
                .position(|o: &RouteConfig| o.template.same_paths_as(&template))
            {
                return Err(self.err(
                    format!("routes[{i}].path"),
                    format!(
                        "{:?} matches exactly the paths of routes[{j}] ({:?}); merge them into one route",
                        template.as_str(),
                        out[j].template.as_str()
                    ),
                ));
            }
            out.push(RouteConfig {
                template,
                upstream,
                require,
            });
        }
        // Most specific first: the proxy takes the first match, which is then the most specific
        // one whatever the order in the file.
        out.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
        Ok(out)
    }
}
