//! Config parsing and validation, by example.

use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
[store]
kind = "sqlite"
path = "x.db"
[inbox_directory]
source = "none"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.threads, DEFAULT_THREADS);
    assert_eq!(c.key_prefix, "agk");
    assert_eq!(c.usage_flush_interval, Duration::from_millis(1000));
    assert!(c.access_log);
}

#[test]
fn unknown_field_is_rejected_with_its_name() {
    let text = MINIMAL.replace("[store]", "[store]\nkindd = 1");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("unknown field `kindd`"), "{e}");
}

#[test]
fn bad_listen_names_field() {
    let text = MINIMAL.replace("127.0.0.1:8080", "localhost");
    let e = parse(&text).unwrap_err().to_string();
    assert_eq!(
        e,
        "test.toml: server.listen: \"localhost\" is not an IP:port address (write e.g. \"127.0.0.1:8080\")"
    );
}

#[test]
fn route_to_unknown_upstream_lists_defined() {
    let text = format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"inbox\"\naddresses = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}\"\nupstream = \"mail\"\n"
    );
    let e = parse(&text).unwrap_err().to_string();
    assert_eq!(
        e,
        "test.toml: routes[0].upstream: \"mail\" is not a defined upstream (defined: inbox)"
    );
}

#[test]
fn none_directory_requires_all_scoped_tokens() {
    let text = format!(
        "{MINIMAL}\n[[management.tokens]]\nname = \"a\"\nsha256 = \"{}\"\npods = [\"pod_1\"]\n",
        "0".repeat(64)
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("inbox_directory.source"), "{e}");
}

#[test]
fn token_needs_exactly_one_scope() {
    let text = format!(
        "{MINIMAL}\n[[management.tokens]]\nname = \"a\"\nsha256 = \"{}\"\nscope = \"all\"\npods = [\"p\"]\n",
        "0".repeat(64)
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("management.tokens[0].scope"), "{e}");
}

#[test]
fn bad_sha256_explains_fix() {
    let text = format!(
        "{MINIMAL}\n[[management.tokens]]\nname = \"a\"\nsha256 = \"abc\"\nscope = \"all\"\n"
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("management.tokens[0].sha256"), "{e}");
    assert!(e.contains("new-token"), "{e}");
}

#[test]
fn optional_tuning_keys_parse() {
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nwork_stealing = false\ntransparent_huge_pages = true\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.1\"]",
    );
    let text = format!(
        "{text}\n[[upstreams]]\nname = \"u\"\naddresses = [\"127.0.0.1:1\"]\nwrite_timeout_ms = 250\n"
    );
    let c = parse(&text).unwrap();
    assert!(!c.server.work_stealing);
    assert!(c.server.transparent_huge_pages);
    assert!(!parse(MINIMAL).unwrap().server.transparent_huge_pages);
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert_eq!(
        c.upstreams[0].write_timeout,
        Some(Duration::from_millis(250))
    );
    let bad = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"nope\"]",
    );
    let e = parse(&bad).unwrap_err().to_string();
    assert!(e.contains("server.trusted_proxies[0]"), "{e}");
}

#[test]
fn syntax_error_keeps_line_number() {
    let e = parse("[server\nlisten=1").unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

fn with_routes(routes: &str) -> String {
    format!("{MINIMAL}\n[[upstreams]]\nname = \"u\"\naddresses = [\"127.0.0.1:1\"]\n{routes}")
}

#[test]
fn routes_are_ordered_by_specificity_and_duplicates_refused() {
    let c = parse(&with_routes(
        r#"
[[routes]]
path = "/v0/inboxes/{inbox_id}/**"
upstream = "u"
[[routes]]
path = "/v0/inboxes/{inbox_id}/messages/*/send"
upstream = "u"
require = { POST = "message_send" }
[[routes]]
path = "/v0/inboxes/{inbox_id}/messages"
upstream = "u"
require = { GET = "message_read", POST = "message_send" }
"#,
    ))
    .unwrap();
    let order: Vec<&str> = c.routes.iter().map(|r| r.template.as_str()).collect();
    assert_eq!(
        order,
        [
            "/v0/inboxes/{inbox_id}/messages/*/send",
            "/v0/inboxes/{inbox_id}/messages",
            "/v0/inboxes/{inbox_id}/**"
        ]
    );
    let req = c.routes[1].require.as_ref().unwrap();
    assert_eq!(req.allow, "GET, POST");
    for (dup, field) in [
        ("/v0/inboxes/{inbox_id}", "routes[1].path"),
        ("/v0/inboxes/{inbox_id}/**", "routes[1].path"),
    ] {
        let text = with_routes(&format!(
            "[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}/**\"\nupstream = \"u\"\n[[routes]]\npath = \"{dup}\"\nupstream = \"u\"\n"
        ));
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains("matches exactly the paths of routes[0]"),
            "{e}"
        );
    }
}

#[test]
fn requirements_and_permissions_name_their_field() {
    for (require, field) in [
        ("{ GET = \"nope\" }", "routes[0].require.GET"),
        ("{ FETCH = \"message_read\" }", "routes[0].require.FETCH"),
        ("{}", "routes[0].require"),
    ] {
        let text = with_routes(&format!(
            "[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}\"\nupstream = \"u\"\nrequire = {require}\n"
        ));
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(field), "{require}: {e}");
    }
    let e = parse(&format!(
        "{MINIMAL}\n[permissions]\nnames = [\"a\", \"a\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("permissions.names"), "{e}");
    let e = parse(&format!(
        "{MINIMAL}\n[permissions]\nnames = [\"a\"]\nopt_in = [\"b\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("permissions.opt_in"), "{e}");
    let c = parse(&format!(
        "{MINIMAL}\n[permissions]\nnames = [\"read\", \"write\"]\nopt_in = [\"write\"]\n"
    ))
    .unwrap();
    assert_eq!(c.permissions.names(), ["read", "write"]);
    let e = parse(&MINIMAL.replace(
        "[inbox_directory]",
        "[keys]\nmax_lifetime_days = 0\n[inbox_directory]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("keys.max_lifetime_days"), "{e}");
}

#[test]
fn routes_under_the_gateways_own_api_are_refused() {
    let upstream = "\n[[upstreams]]\nname = \"inbox\"\naddresses = [\"127.0.0.1:3000\"]\n";
    for path in [
        "/v0/inboxes/{inbox_id}/api-keys",
        "/v0/inboxes/{inbox_id}/api-keys/*",
        "/v0/inboxes/{inbox_id}/api-keys/*/rotate",
        "/human/v0/inboxes/{inbox_id}",
    ] {
        let text =
            format!("{MINIMAL}{upstream}[[routes]]\npath = \"{path}\"\nupstream = \"inbox\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("routes[0].path") && e.contains("never proxied"),
            "{path}: {e}"
        );
    }
    let text = format!(
        "{MINIMAL}{upstream}[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}/api-keys-archive\"\nupstream = \"inbox\"\n"
    );
    assert!(parse(&text).is_ok());
}

fn with_addresses(addresses: &str, extra: &str) -> String {
    format!("{MINIMAL}\n[[upstreams]]\nname = \"u\"\naddresses = [{addresses}]\n{extra}")
}

#[test]
fn upstream_names_resolve_at_load_and_keep_their_entry() {
    let c = parse(&with_addresses(
        "\"LocalHost:3000\", \"127.0.0.1:3000\"",
        "",
    ))
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(
        u.entries,
        vec![
            UpstreamAddress::Name {
                host: "localhost".into(),
                port: 3000
            },
            UpstreamAddress::Ip("127.0.0.1:3000".parse().unwrap()),
        ]
    );
    assert!(u.addresses.contains(&"127.0.0.1:3000".parse().unwrap()));
    assert_eq!(
        u.addresses.iter().filter(|a| a.port() == 3000).count(),
        u.addresses.len(),
        "no repeats, every one on the port: {:?}",
        u.addresses
    );
    assert_eq!(
        u.resolve_interval,
        Duration::from_secs(DEFAULT_RESOLVE_INTERVAL_SECS)
    );
    let c = parse(&with_addresses(
        "\"localhost:3000\"",
        "resolve_interval_seconds = 5",
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].resolve_interval, Duration::from_secs(5));
}

#[test]
fn upstream_addresses_that_cannot_be_used_name_the_field() {
    let e = parse(&with_addresses(
        "\"127.0.0.1:1\", \"nonexistent.invalid:80\"",
        "",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "test.toml: upstreams[0].addresses[1]: \"nonexistent.invalid:80\" does not resolve ("
        ) && e.ends_with("): check the name, or write an IP:port"),
        "{e}"
    );
    for bad in [
        "inbox.internal",
        "inbox..internal:80",
        "inbox.internal:0",
        "in box:80",
        "::1:80",
    ] {
        let e = parse(&with_addresses(&format!("{bad:?}"), ""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("test.toml: upstreams[0].addresses[0]: {bad:?} is not an IP:port or host:port address (write e.g. \"127.0.0.1:3000\" or \"inbox.internal:3000\")")
        );
    }
    let e = parse(&with_addresses(
        "\"127.0.0.1:1\"",
        "resolve_interval_seconds = 0",
    ))
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "test.toml: upstreams[0].resolve_interval_seconds: must be greater than 0"
    );
}

#[test]
fn cache_lifetimes_are_bounded_by_a_day() {
    for field in ["ttl_seconds", "negative_ttl_seconds"] {
        let text = format!("{MINIMAL}[cache]\n{field} = 86401\n");
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "test.toml: cache.{field}: 86401 is more than 86400 (a day); use a smaller value"
            )
        );
        let text = format!("{MINIMAL}[cache]\n{field} = 18446744073709551615\n");
        assert!(parse(&text).is_err(), "{field}");
        let text = format!("{MINIMAL}[cache]\n{field} = 86400\n");
        assert!(parse(&text).is_ok(), "{field}");
    }
}
