//! One meaning per request, over the wire: the shipped AgentMail route table behind the real
//! binary, on HTTP/1.1 and on HTTP/2. A key holding only `inbox_read`, `inbox_update` and
//! `inbox_delete` tries every respelling of every literal segment, with every method, and
//! method overrides: each is refused by the gateway and nothing reaches the upstream.

mod common;

use common::*;

const INBOX: &str = "support@example.com";

/// The gateway with the shipped route table in front of an echo upstream.
fn agentmail(up: &Upstream) -> Gateway {
    let shipped = std::fs::read_to_string("config/agentmail-inbox-api.toml").unwrap();
    let routes = &shipped[shipped.find("[[routes]]").unwrap()..];
    Gateway::start(&format!(
        "[[upstreams]]\nname = \"inbox\"\naddresses = [\"{}\"]\n\n{routes}",
        up.addr
    ))
}

fn key(g: &Gateway, permissions: &str) -> String {
    let r = g.mgmt(
        "POST",
        &format!("/human/v0/inboxes/{INBOX}/api-keys"),
        ADMIN_TOKEN,
        Some(&format!(r#"{{"name":"k","permissions":{permissions}}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["api_key"].as_str().unwrap().to_owned()
}

/// Every template of the shipped table and of the key-managed API, made concrete.
fn paths() -> Vec<Vec<String>> {
    let shipped = std::fs::read_to_string("config/agentmail-inbox-api.toml").unwrap();
    let mut templates: Vec<String> = shipped
        .lines()
        .filter_map(|l| l.strip_prefix("path = \"/v0"))
        .map(|l| format!("/v0{}", l.trim_end_matches('"')))
        .collect();
    templates.push("/v0/inboxes/{inbox_id}/api-keys".into());
    templates.push("/v0/inboxes/{inbox_id}/api-keys/*".into());
    templates
        .iter()
        .map(|t| {
            t.split('/')
                .skip(1)
                .map(|s| match s {
                    "{inbox_id}" => INBOX.to_owned(),
                    "*" => "x1".to_owned(),
                    other => other.to_owned(),
                })
                .collect()
        })
        .collect()
}

/// Respellings of a literal: each byte escaped (upper-case hex), all escaped in lower-case
/// hex, the first letter upper case, the first letter fullwidth.
fn respellings(lit: &str) -> Vec<String> {
    let b = lit.as_bytes();
    let mut out: Vec<String> = (0..b.len())
        .map(|i| format!("{}%{:02X}{}", &lit[..i], b[i], &lit[i + 1..]))
        .collect();
    out.push(b.iter().map(|x| format!("%{x:02x}")).collect());
    out.push(format!("{}{}", lit[..1].to_ascii_uppercase(), &lit[1..]));
    let full = char::from_u32(0xFEE0 + u32::from(b[0]))
        .unwrap()
        .to_string();
    let full: String = full.bytes().map(|x| format!("%{x:02X}")).collect();
    out.push(format!("{full}{}", &lit[1..]));
    out
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn respelled_literals_are_refused_and_never_forwarded() {
    let up = Upstream::start();
    let g = agentmail(&up);
    let k = key(
        &g,
        r#"{"inbox_read":true,"inbox_update":true,"inbox_delete":true}"#,
    );
    let auth = format!("Bearer {k}");
    let mut conn = g.keep_alive();
    let mut tried = 0;
    for segs in paths() {
        for (i, seg) in segs.iter().enumerate() {
            if seg == INBOX || seg == "x1" {
                continue;
            }
            for (n, spelled) in respellings(seg).into_iter().enumerate() {
                let mut s = segs.clone();
                s[i] = spelled;
                let path = format!("/{}", s.join("/"));
                // Every method on the first spelling of each literal, GET on the others.
                let methods = if n == 0 { &METHODS[..] } else { &METHODS[..1] };
                for m in methods {
                    let r = conn.send(m, &path, &[("Authorization", &auth)]);
                    assert_eq!(r.status, 400, "{m} {path}: {}", r.text());
                    assert_eq!(r.json()["code"], "non_canonical_target", "{m} {path}");
                    assert_eq!(r.header("content-type"), Some("application/json"));
                    tried += 1;
                }
            }
        }
    }
    assert!(tried > 1000, "only {tried} requests");
    // Letters only NFKC or Unicode case folding make, and format suffixes.
    for rest in [
        "me%C5%BF%C5%BFages",
        "%E2%85%BFessages/m1",
        "api-key%C5%BF",
        "messages.json",
    ] {
        let path = format!("/v0/inboxes/{INBOX}/{rest}");
        let r = conn.send("GET", &path, &[("Authorization", &auth)]);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["code"], "non_canonical_target", "{path}");
    }
    let forwarded: Vec<String> = up
        .requests()
        .into_iter()
        .filter(|r| r.target != "/healthz")
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(forwarded, Vec::<String>::new());
    // The plain spellings are decided as before: the catch-all is the key's, messages are not.
    let inbox = format!("/v0/inboxes/{INBOX}");
    wait_until(
        "the upstream is healthy",
        std::time::Duration::from_secs(10),
        || g.call("GET", &inbox, &k).status == 200,
    );
    let r = g.call("GET", &format!("{inbox}/messages"), &k);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "insufficient_permission");
    let r = g.call("GET", &format!("{inbox}/api-keys"), &k);
    assert_eq!(r.status, 403, "{}", r.text());
}

fn method_overrides_are_refused_and_never_forwarded() {
    let up = Upstream::start();
    let g = agentmail(&up);
    let reader = key(&g, r#"{"message_read":true}"#);
    let auth = format!("Bearer {reader}");
    let msg = format!("/v0/inboxes/{INBOX}/messages/msg_1");
    wait_until(
        "the upstream is healthy",
        std::time::Duration::from_secs(10),
        || g.call("GET", &msg, &reader).status == 200,
    );
    let before = up.count();
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method-override", "PATCH"),
        ("X-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-HTTP-Method-Override", "GET"),
        ("X-HTTP-Method-Override", ""),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-Original-URL", "/v0/inboxes/sales@example.com/messages"),
    ] {
        let r = g.req(
            "GET",
            &msg,
            &[("Authorization", &auth), (name, value)],
            None,
        );
        assert_eq!(r.status, 400, "{name}: {value}");
        assert_eq!(r.json()["code"], "method_override", "{name}");
    }
    for q in [
        "_method=DELETE",
        "a=1&_METHOD=DELETE",
        "%5Fmethod=DELETE",
        "x;_method=PUT",
    ] {
        let r = g.req(
            "GET",
            &format!("{msg}?{q}"),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["code"], "method_override", "{q}");
        assert_eq!(r.json()["name"], "ValidationError", "{q}");
    }
    assert_eq!(up.count(), before, "no override reached the upstream");
    // Without an override the read is forwarded, as the GET it is.
    let r = g.req(
        "GET",
        &format!("{msg}?method=x"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    let last = up.requests().pop().unwrap();
    assert_eq!(last.method, "GET");
}

mod h1 {
    #[test]
    fn respelled_literals_are_refused_and_never_forwarded() {
        super::respelled_literals_are_refused_and_never_forwarded()
    }
    #[test]
    fn method_overrides_are_refused_and_never_forwarded() {
        super::method_overrides_are_refused_and_never_forwarded()
    }
}

mod h2 {
    use super::common::run_on_h2;
    #[test]
    fn respelled_literals_are_refused_and_never_forwarded() {
        run_on_h2(super::respelled_literals_are_refused_and_never_forwarded)
    }
    #[test]
    fn method_overrides_are_refused_and_never_forwarded() {
        run_on_h2(super::method_overrides_are_refused_and_never_forwarded)
    }
}
