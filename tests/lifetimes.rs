//! Expiry as a bound on rights (issue #24, findings 3 and 4): a key grants permissions by PATCH
//! only to keys that expire no later than itself, and `keys.max_lifetime_days` is a maximum
//! for every new key, `expires_at` given or not. On both stores and over HTTP/2.

mod common;

use common::*;
use serde_json::{json, Value};

const SUPPORT: &str = "support@example.com";
const PARENT_EXPIRY: &str = "2031-06-01T00:00:00Z";

fn keys_path() -> String {
    format!("/human/v0/inboxes/{SUPPORT}/api-keys")
}

/// A key-managed call: `/v0/inboxes/{SUPPORT}/api-keys[/{id}]` with an API key.
fn by_key(g: &Gateway, method: &str, rest: &str, key: &str, body: Option<&str>) -> Resp {
    // A key is a bearer credential like a token: the same request as a management call.
    g.mgmt(
        method,
        &format!("/v0/inboxes/{SUPPORT}/api-keys{rest}"),
        key,
        body,
    )
}

/// Creates a key with the management token; returns the whole response body.
fn by_token(g: &Gateway, body: &str) -> Value {
    let r = g.mgmt("POST", &keys_path(), ADMIN_TOKEN, Some(body));
    assert_eq!(r.status, 201, "{body}: {}", r.text());
    r.json()
}

fn permissions_of(g: &Gateway, id: &str) -> Value {
    let r = g.mgmt(
        "GET",
        &format!("{}?limit=1000", keys_path()),
        ADMIN_TOKEN,
        None,
    );
    let listed = r.json();
    listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == id)
        .unwrap()["permissions"]
        .clone()
}

fn expiring_key_grants_only_to_keys_that_expire_no_later() {
    let g = Gateway::start("");
    let perms =
        r#"{"api_key_create":true,"api_key_update":true,"message_read":true,"message_send":true}"#;
    let p = by_token(
        &g,
        &format!(r#"{{"name":"P","permissions":{perms},"expires_at":"{PARENT_EXPIRY}"}}"#),
    );
    let pkey = p["api_key"].as_str().unwrap().to_owned();
    let grant = r#"{"permissions":{"message_read":true,"message_send":true}}"#;
    let reader = r#""permissions":{"message_read":true}"#;
    // A key that never expires, made by a key that never expires.
    let q = by_token(&g, &format!(r#"{{"name":"Q","permissions":{perms}}}"#));
    let qkey = q["api_key"].as_str().unwrap().to_owned();
    let r = by_key(
        &g,
        "POST",
        "",
        &qkey,
        Some(&format!(r#"{{"name":"Q-child",{reader}}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json().get("expires_at").is_none());
    let q_child = r.json()["api_key_id"].as_str().unwrap().to_owned();
    // P's own child inherits P's expiry.
    let r = by_key(
        &g,
        "POST",
        "",
        &pkey,
        Some(&format!(r#"{{"name":"P-child",{reader}}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["expires_at"], PARENT_EXPIRY);
    let p_child = r.json()["api_key_id"].as_str().unwrap().to_owned();

    let sibling = |expiry: Option<&str>| -> String {
        let body = match expiry {
            Some(e) => format!(r#"{{"name":"S",{reader},"expires_at":"{e}"}}"#),
            None => format!(r#"{{"name":"S",{reader}}}"#),
        };
        by_token(&g, &body)["api_key_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let refused = [
        ("absent (never expires)", sibling(None)),
        ("far future", sibling(Some("2099-01-01T00:00:00Z"))),
        ("one second later", sibling(Some("2031-06-01T00:00:01Z"))),
        (
            "one second later, another offset",
            sibling(Some("2031-06-01T05:30:01+05:30")),
        ),
        ("made by a key that never expires", q_child.clone()),
    ];
    for (what, id) in &refused {
        let r = by_key(&g, "PATCH", &format!("/{id}"), &pkey, Some(grant));
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["name"], "PermissionDeniedError", "{what}");
        assert_eq!(v["code"], "exceeds_creator", "{what}");
        assert_eq!(
            v["errors"][0]["path"],
            json!(["body", "expires_at"]),
            "{what}"
        );
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(PARENT_EXPIRY), "{what}: {message}");
        assert_eq!(
            permissions_of(&g, id),
            json!({"message_read": true}),
            "{what}"
        );
        // Renaming grants nothing: allowed.
        let r = by_key(
            &g,
            "PATCH",
            &format!("/{id}"),
            &pkey,
            Some(r#"{"name":"n"}"#),
        );
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    let allowed = [
        ("equal instant", sibling(Some(PARENT_EXPIRY))),
        (
            "equal instant, another offset",
            sibling(Some("2031-06-01T02:00:00+02:00")),
        ),
        (
            "equal instant, a negative offset",
            sibling(Some("2031-05-31T19:00:00-05:00")),
        ),
        ("earlier", sibling(Some("2031-05-31T23:59:59Z"))),
        ("made by the granting key", p_child),
    ];
    for (what, id) in &allowed {
        let r = by_key(&g, "PATCH", &format!("/{id}"), &pkey, Some(grant));
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            r.json()["permissions"],
            json!({"message_read": true, "message_send": true}),
            "{what}"
        );
    }
    // A key that never expires may grant (within itself) to any key; so may a token.
    let r = by_key(
        &g,
        "PATCH",
        &format!("/{}", refused[0].1),
        &qkey,
        Some(grant),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.mgmt(
        "PATCH",
        &format!("{}/{}", keys_path(), refused[1].1),
        ADMIN_TOKEN,
        Some(grant),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // An unknown target is the 404 it always was.
    let r = by_key(&g, "PATCH", "/key_nope", &pkey, Some(grant));
    assert_eq!(r.status, 404, "{}", r.text());
    // `null` is not a way to say "never": refused at creation.
    let r = g.mgmt(
        "POST",
        &keys_path(),
        ADMIN_TOKEN,
        Some(r#"{"name":"S","expires_at":null}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["path"], json!(["body", "expires_at"]));
}

/// The bound from the time of the call: `created` (µs) + `days` days, as the API writes it.
fn rfc3339_secs(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(us / 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

const DAY_US: i64 = 86_400_000_000;

/// Whether `expires_at` (as written by the API) is `days` after a moment in `[before, after]`.
fn is_bound(expires_at: &Value, before: i64, after: i64, days: i64) -> bool {
    let Some(s) = expires_at.as_str() else {
        return false;
    };
    let lo = rfc3339_secs(before + days * DAY_US);
    let hi = rfc3339_secs(after + days * DAY_US);
    lo.as_str() <= s && s <= hi.as_str()
}

fn max_lifetime_days_bounds_every_new_key() {
    let g = Gateway::start("[keys]\nmax_lifetime_days = 1\n");
    let all = r#""permissions":{"api_key_create":true,"message_read":true}"#;
    // A token, expires_at absent: now + 1 day.
    let before = now_us();
    let t = by_token(&g, &format!(r#"{{"name":"t",{all}}}"#));
    let after = now_us();
    assert!(is_bound(&t["expires_at"], before, after, 1), "{t}");
    // Beyond the bound: 400, however written.
    for e in [
        rfc3339_secs(now_us() + 3 * DAY_US),
        "2099-01-01T00:00:00Z".to_owned(),
    ] {
        let r = g.mgmt(
            "POST",
            &keys_path(),
            ADMIN_TOKEN,
            Some(&format!(r#"{{"name":"x","expires_at":"{e}"}}"#)),
        );
        assert_eq!(r.status, 400, "{e}: {}", r.text());
        assert_eq!(r.json()["errors"][0]["path"], json!(["body", "expires_at"]));
    }
    // Within it, in another offset: kept as given.
    let within = time::OffsetDateTime::now_utc() + time::Duration::hours(12);
    let within = within
        .replace_nanosecond(0)
        .unwrap()
        .to_offset(time::macros::offset!(+09:00));
    let given = within
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let k = by_token(&g, &format!(r#"{{"name":"x","expires_at":"{given}"}}"#));
    let utc = within
        .to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(k["expires_at"], utc.as_str());

    // A key made by a key: absent means the creator's expiry (earlier than now + 1 day here).
    let tkey = t["api_key"].as_str().unwrap().to_owned();
    let r = by_key(&g, "POST", "", &tkey, Some(r#"{"name":"kid"}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["expires_at"], t["expires_at"]);
    // A key that never expires (made before the bound was configured) still makes only
    // bounded keys.
    let legacy = by_token(&g, &format!(r#"{{"name":"legacy",{all}}}"#));
    let legacy_id = legacy["api_key_id"].as_str().unwrap().to_owned();
    let lkey = legacy["api_key"].as_str().unwrap().to_owned();
    let sql = "UPDATE api_keys SET expires_at_us = NULL WHERE api_key_id = ";
    match &g.pg {
        Some(db) => {
            let sql = format!("{sql}'{legacy_id}'");
            db.with(move |c| c.execute(&sql, &[]).unwrap());
        }
        None => {
            let c = rusqlite::Connection::open(g.db_path()).unwrap();
            c.execute(&format!("{sql}?1"), [&legacy_id]).unwrap();
        }
    }
    let listed = g.mgmt("GET", &keys_path(), ADMIN_TOKEN, None).json();
    let row = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == legacy_id.as_str())
        .unwrap()
        .clone();
    assert!(row.get("expires_at").is_none(), "{row}");
    let before = now_us();
    let r = by_key(&g, "POST", "", &lkey, Some(r#"{"name":"kid"}"#));
    let after = now_us();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        is_bound(&r.json()["expires_at"], before, after, 1),
        "{}",
        r.text()
    );
}

on_every_store!(
    expiring_key_grants_only_to_keys_that_expire_no_later,
    max_lifetime_days_bounds_every_new_key,
);
