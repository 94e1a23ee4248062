//! One meaning per request, decided on the library's one parser and one router (no sockets):
//! every spelling of every literal segment of the shipped route tables, and a property over a
//! grammar of targets: the decision for a raw target equals the decision for its RFC 3986
//! normalization (and for a lenient server's reading), or the raw target is refused.

use agentry_gateway::config::Config;
use agentry_gateway::request_target::{
    decode_segment, ApiPath, RequestTarget, Routed, Router, TargetError,
};
use proptest::prelude::*;

/// The shipped AgentMail route table and the quick-start one.
fn shipped(file: &str) -> Config {
    let text = std::fs::read_to_string(file).unwrap();
    Config::parse(&text, std::path::Path::new(file)).unwrap()
}

fn router_of(config: &Config) -> Router {
    Router::new(config.routes.iter().map(|r| &r.template))
}

/// A decision, comparable: where the target goes, and the decoded inbox and key id segments
/// it names. `None` when the target is refused.
type Decided = Option<(String, String, String)>;

fn decide(router: &Router, raw: &[u8]) -> Decided {
    let target = RequestTarget::parse(raw).ok()?;
    let routed = router.route(&target).ok()?;
    let dec = |s: &[u8]| String::from_utf8_lossy(&decode_segment(s)).into_owned();
    let api = |base: &str, p: ApiPath| match p {
        ApiPath::Keys { inbox } => (format!("{base} keys"), dec(inbox), String::new()),
        ApiPath::Key { inbox, id } => (format!("{base} key"), dec(inbox), dec(id)),
        ApiPath::Unknown => (format!("{base} unknown"), String::new(), String::new()),
    };
    Some(match routed {
        Routed::Human(p) => api("human", p),
        Routed::KeyApi(p) => api("key-api", p),
        Routed::Proxy { route, inbox } => (format!("route {route}"), dec(inbox), String::new()),
        Routed::NoRoute => ("no route".to_owned(), String::new(), String::new()),
    })
}

/// The shipped AgentMail table's router, built once for all cases.
fn agentmail_router() -> &'static Router {
    static R: std::sync::OnceLock<Router> = std::sync::OnceLock::new();
    R.get_or_init(|| router_of(&shipped("config/agentmail-inbox-api.toml")))
}

/// Every literal segment of the shipped tables and of the gateway's own API paths.
fn literals(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = ["human", "v0", "inboxes", "api-keys"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for r in &config.routes {
        for seg in r.template.as_str().split('/').skip(1) {
            if !seg.starts_with('{') && !seg.starts_with('*') && !out.iter().any(|s| s == seg) {
                out.push(seg.to_owned());
            }
        }
    }
    out
}

/// Spellings of a literal that mean it to some server, none byte for byte: each letter
/// escaped alone (both hex cases), all escaped, each letter in the other case, all upper
/// case, each letter fullwidth.
fn respellings(lit: &str) -> Vec<String> {
    let b = lit.as_bytes();
    let mut out = Vec::new();
    for i in 0..b.len() {
        let with = |rep: String| {
            let mut s = String::from(&lit[..i]);
            s.push_str(&rep);
            s.push_str(&lit[i + 1..]);
            s
        };
        out.push(with(format!("%{:02X}", b[i])));
        out.push(with(format!("%{:02x}", b[i])));
        if b[i].is_ascii_alphabetic() {
            out.push(with((b[i] as char).to_ascii_uppercase().to_string()));
        }
        let full = char::from_u32(0xFEE0 + u32::from(b[i])).unwrap();
        let mut buf = [0u8; 4];
        let enc: String = full
            .encode_utf8(&mut buf)
            .bytes()
            .map(|x| format!("%{x:02X}"))
            .collect();
        out.push(with(enc));
    }
    out.push(b.iter().map(|x| format!("%{x:02X}")).collect());
    out.push(lit.to_ascii_uppercase());
    out.retain(|s| s != lit);
    out
}

/// A concrete path under a template: `{inbox_id}` is `A`, `*` is `x1`.
fn concrete(template: &str) -> Vec<String> {
    template
        .split('/')
        .skip(1)
        .map(|s| match s {
            "{inbox_id}" => "A".to_owned(),
            "*" | "**" => "x1".to_owned(),
            other => other.to_owned(),
        })
        .collect()
}

/// The paths to try: every configured template and the own API's.
fn templates(config: &Config) -> Vec<String> {
    let mut t: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.template.as_str().to_owned())
        .collect();
    t.extend(
        [
            "/v0/inboxes/{inbox_id}/api-keys",
            "/v0/inboxes/{inbox_id}/api-keys/*",
            "/human/v0/inboxes/{inbox_id}/api-keys",
            "/human/v0/inboxes/{inbox_id}/api-keys/*",
        ]
        .map(str::to_owned),
    );
    t
}

#[test]
fn every_respelling_of_every_literal_segment_is_refused_as_non_canonical() {
    for file in ["config/agentmail-inbox-api.toml", "config/gateway.toml"] {
        let config = shipped(file);
        let router = router_of(&config);
        let mut tried = 0;
        for template in templates(&config) {
            let segs = concrete(&template);
            for (i, seg) in segs.iter().enumerate() {
                if seg == "A" || seg == "x1" {
                    continue;
                }
                for spelled in respellings(seg) {
                    let mut s = segs.clone();
                    s[i] = spelled;
                    let path = format!("/{}", s.join("/"));
                    let t = RequestTarget::parse(path.as_bytes());
                    let err = t.and_then(|t| router.route(&t).map(|_| ()));
                    assert_eq!(err, Err(TargetError::NonCanonical), "{file}: {path}");
                    tried += 1;
                }
            }
        }
        assert!(tried > 300, "{file}: only {tried} spellings tried");
    }
}

/// Spellings that only NFKC or Unicode case folding make a literal, and format suffixes:
/// non-canonical wherever a literal could stand (found by an attack review).
#[test]
fn unicode_lookalikes_and_format_suffixes_of_literals_are_non_canonical() {
    let router = router_of(&shipped("config/agentmail-inbox-api.toml"));
    for t in [
        "/v0/inboxes/A/me%C5%BF%C5%BFages",
        "/v0/inboxes/A/%E2%85%BFessages",
        "/v0/inboxes/A/%E2%85%BFessages/m1",
        "/v0/inboxes/A/me%C3%9Fages",
        "/v0/inboxes/A/api-key%C5%BF",
        "/v0/inboxes/A/api%EF%B9%A3keys",
        "/v0/inboxes/A/api-%E2%84%AAeys",
        "/v0/inboxes/A/messages.json",
        "/v0/inboxes/A/threads.json",
        "/v0/inboxes/A/api-keys.json",
        "/v0/inboxes/A/messages/send.json",
        "/v0/inboxes/A/%C3%A9",
    ] {
        let r = RequestTarget::parse(t.as_bytes()).and_then(|t| router.route(&t).map(|_| ()));
        assert_eq!(r, Err(TargetError::NonCanonical), "{t}");
    }
    // Non-ASCII where no literal stands (the inbox, a message id under `*`) is data.
    for t in [
        "/v0/inboxes/caf%C3%A9/messages",
        "/v0/inboxes/A/messages/m%C3%A9/raw",
    ] {
        let r = RequestTarget::parse(t.as_bytes()).and_then(|t| router.route(&t));
        assert!(matches!(r, Ok(Routed::Proxy { .. })), "{t}: {r:?}");
    }
}

#[test]
fn the_key_managed_api_has_one_detector_for_every_spelling() {
    let config = shipped("config/agentmail-inbox-api.toml");
    let router = router_of(&config);
    let plain = RequestTarget::parse(b"/v0/inboxes/A/api-keys/key_1").unwrap();
    assert_eq!(
        router.route(&plain),
        Ok(Routed::KeyApi(ApiPath::Key {
            inbox: b"A",
            id: b"key_1"
        }))
    );
    // Deeper paths in the subtree are the gateway's (404), never a configured route's.
    for deeper in [
        "/v0/inboxes/A/api-keys/k/rotate",
        "/v0/inboxes/A/api-keys/k/x/y",
    ] {
        let t = RequestTarget::parse(deeper.as_bytes()).unwrap();
        assert_eq!(
            router.route(&t),
            Ok(Routed::KeyApi(ApiPath::Unknown)),
            "{deeper}"
        );
    }
    // The inbox segment may be escaped (it is data), and is decoded once.
    let t = RequestTarget::parse(b"/v0/inboxes/a%40b/api-keys").unwrap();
    assert_eq!(
        router.route(&t),
        Ok(Routed::KeyApi(ApiPath::Keys { inbox: b"a%40b" }))
    );
}

#[test]
fn method_overrides_in_the_query_are_refused_in_every_spelling() {
    for q in [
        "_method=DELETE",
        "a=1&_method=DELETE",
        "a=1;_method=DELETE",
        "_METHOD=delete",
        "%5Fmethod=DELETE",
        "%5fmethod=DELETE",
        "_%6Dethod=DELETE",
        "_method",
        "x=y&_Method=PATCH&z",
        ".method=DELETE",
        "%2Emethod=DELETE",
        "+_method=DELETE",
        "%20_method=DELETE",
        "[method=DELETE",
        "_method[]=DELETE",
        "_method[0]=DELETE",
    ] {
        let raw = format!("/v0/inboxes/A/messages?{q}");
        assert_eq!(
            RequestTarget::parse(raw.as_bytes()),
            Err(TargetError::MethodOverride),
            "{q}"
        );
    }
    for q in [
        "method=GET",
        "x_method=1",
        "a=_method",
        "_methods=1",
        "page_token=a_b",
        "a[b]=1",
        "v=1.2",
    ] {
        let raw = format!("/v0/inboxes/A/messages?{q}");
        assert!(RequestTarget::parse(raw.as_bytes()).is_ok(), "{q}");
    }
}

// ---- the property ----

/// RFC 3986 §6.2.2: hex digits upper case, unreserved escapes decoded, dot segments removed
/// (§5.2.4). The query keeps its bytes (hex case aside).
fn rfc3986(raw: &str) -> String {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let mut out = String::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v as char);
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = out.split('/').skip(1).collect();
    for (k, s) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        match *s {
            "." | ".." => {
                if *s == ".." {
                    segs.pop();
                }
                if last {
                    segs.push("");
                }
            }
            other => segs.push(other),
        }
    }
    let mut n = format!("/{}", segs.join("/"));
    if let Some(q) = query {
        n.push('?');
        n.push_str(q);
    }
    n
}

/// A lenient server's reading of a path: every escape decoded, fullwidth folded to ASCII,
/// letters lower-cased; then written back with only bytes a path may hold raw.
fn lenient(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let bytes = decode_segment(seg.as_bytes());
            let read: Vec<u8> = match String::from_utf8(bytes.clone()) {
                Ok(s) => s
                    .chars()
                    .map(|c| match c as u32 {
                        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap(),
                        _ => c,
                    })
                    .collect::<String>()
                    .to_ascii_lowercase()
                    .into_bytes(),
                Err(_) => bytes,
            };
            read.iter()
                .map(|&b| {
                    if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One segment of the grammar: a literal from the tables or an inbox-like id, each byte
/// escaped (hex case at random), upper-cased or plain, maybe with a special escape, UTF-8,
/// a `;param`, or a dot segment instead.
fn segment(lits: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(lits),
        prop::collection::vec((0u8..8, any::<bool>()), 12),
        prop::sample::select(vec![
            "",
            "",
            "",
            "",
            "%2F",
            "%2f",
            "%2E",
            "%5C",
            "%25",
            "%C3%A9",
            "%EF%BD%8D",
            ";p=1",
            ".",
            "..",
        ]),
    )
        .prop_map(|(lit, choices, extra)| {
            if extra == "." || extra == ".." {
                return extra.to_owned();
            }
            let mut s = String::new();
            for (i, byte) in lit.bytes().enumerate() {
                match choices.get(i).copied().unwrap_or((7, false)) {
                    (0, true) => s.push_str(&format!("%{byte:02x}")),
                    (0, false) => s.push_str(&format!("%{byte:02X}")),
                    (1, _) => s.push((byte as char).to_ascii_uppercase()),
                    _ => s.push(byte as char),
                }
            }
            s.push_str(extra);
            s
        })
}

fn target_grammar(lits: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "/v0/inboxes/A",
            "/v0/inboxes/B",
            "/human/v0/inboxes/A",
            "/v0/inboxes/a%40b",
        ]),
        prop::collection::vec(segment(lits), 0..5),
        any::<bool>(),
        prop::sample::select(vec![
            "",
            "",
            "?limit=10",
            "?_method=DELETE",
            "?%5Fmethod=PUT",
            "?a=%6D",
        ]),
    )
        .prop_map(|(base, segs, trailing, query)| {
            let mut t = base.to_owned();
            for s in segs {
                t.push('/');
                t.push_str(&s);
            }
            if trailing {
                t.push('/');
            }
            t.push_str(query);
            t
        })
}

fn grammar_literals() -> Vec<String> {
    let mut l = literals(&shipped("config/agentmail-inbox-api.toml"));
    l.extend(["msg_1", "A", "B", "x"].map(str::to_owned));
    l
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Finding 1's class: an admitted target means what its normalization means.
    #[test]
    fn a_raw_target_decides_as_its_rfc3986_normalization_or_is_refused(
        raw in target_grammar(grammar_literals())
    ) {
        let router = agentmail_router();
        if let Some(d) = decide(router, raw.as_bytes()) {
            let normal = rfc3986(&raw);
            prop_assert_eq!(Some(d), decide(router, normal.as_bytes()), "raw {} normalized {}", raw, normal);
        }
    }

    /// The same for a lenient server that decodes every escape, folds fullwidth and ignores
    /// case: an admitted target reaches the route that server would pick.
    #[test]
    fn a_raw_target_decides_as_a_lenient_server_reads_it_or_is_refused(
        raw in target_grammar(grammar_literals())
    ) {
        let router = agentmail_router();
        if let Some(d) = decide(router, raw.as_bytes()) {
            let (path, query) = raw.split_once('?').unwrap_or((&raw, ""));
            let read = lenient(path);
            let read = if query.is_empty() { read } else { format!("{read}?{query}") };
            // The lenient reading of an admitted path is itself admitted and goes to the same
            // place; the inbox and key id segments are data (the lenient server lower-cases
            // them, the gateway compares them exactly), so only the place is compared.
            let theirs = decide(router, read.as_bytes()).map(|d| d.0);
            prop_assert_eq!(Some(d.0), theirs, "raw {} read as {}", raw, read);
        }
    }
}
