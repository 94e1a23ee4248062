//! The `/human/v0` key-management API, answered by the gateway from its own store.

pub mod errors;
pub mod principal;
pub mod routes;
pub mod types;

use std::sync::Arc;

use bytes::Bytes;
use pingora::proxy::Session;

use crate::auth::usage::UsageRecorder;
use crate::auth::Verifier;
use crate::clock::MonotonicClock;
use crate::keys::{random_id, KeyFormat};
use crate::metrics::ManagementRoute;
use crate::store::cursor::PageTokenKey;
use crate::store::{cursor, Cursor, KeyRecord, NewKey, Store};
use errors::{ApiError, NotFound};
use principal::Principals;
use routes::Endpoint;
use types::{ApiKeyItem, CreateApiKeyResponse, ListApiKeysResponse};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_PAGE_LIMIT: usize = 100;
pub const MAX_PAGE_LIMIT: usize = 1000;
pub const MAX_NAME_CHARS: usize = 256;

/// A finished management answer, written by the proxy.
pub struct ApiResponse {
    pub status: u16,
    /// `None` for 204.
    pub body: Option<Vec<u8>>,
    pub allow: Option<&'static str>,
    pub www_authenticate: bool,
    /// The connection must close after this answer (an unread body is left behind).
    pub close: bool,
    pub route: ManagementRoute,
}

impl ApiResponse {
    fn json(status: u16, body: Vec<u8>, route: ManagementRoute) -> ApiResponse {
        ApiResponse {
            status,
            body: Some(body),
            allow: None,
            www_authenticate: false,
            close: false,
            route,
        }
    }

    fn error(e: &ApiError, route: ManagementRoute) -> ApiResponse {
        ApiResponse {
            status: e.status(),
            body: Some(e.body()),
            allow: match e {
                ApiError::MethodNotAllowed { allow } => Some(allow),
                _ => None,
            },
            www_authenticate: matches!(e, ApiError::MissingAuthorization | ApiError::InvalidToken),
            close: matches!(e, ApiError::PayloadTooLarge { .. }),
            route,
        }
    }
}

pub struct Management {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<Verifier>,
    pub usage: Arc<UsageRecorder>,
    pub principals: Principals,
    pub key_format: KeyFormat,
    pub clock: MonotonicClock,
    /// Signs and checks page tokens (HMAC under the store's secret).
    pub page_tokens: cursor::PageTokenKey,
}

impl Management {
    /// Answers one management request.
    pub async fn handle(&self, session: &mut Session, path: &[u8], query: &[u8]) -> ApiResponse {
        let mut route = ManagementRoute::Other;
        match self.dispatch(session, path, query, &mut route).await {
            Ok(r) => r,
            Err(e) => ApiResponse::error(&e, route),
        }
    }

    async fn dispatch(
        &self,
        session: &mut Session,
        path: &[u8],
        query: &[u8],
        route: &mut ManagementRoute,
    ) -> Result<ApiResponse, ApiError> {
        let req = session.req_header();
        let principal = self.principals.authenticate(&req.headers)?;
        let endpoint = routes::route(&req.method, path, query)?;
        *route = endpoint.metric_route();
        let grant = self.principals.grant(principal, endpoint.inbox_id())?;
        match endpoint {
            Endpoint::ListApiKeys { inbox_id } => {
                let body = self.list(&inbox_id, query).await?;
                Ok(ApiResponse::json(200, body, *route))
            }
            Endpoint::CreateApiKey { inbox_id } => {
                let name = read_create_body(session).await?;
                let body = self.create(inbox_id, grant.pod_id, name).await?;
                Ok(ApiResponse::json(201, body, *route))
            }
            Endpoint::DeleteApiKey {
                inbox_id,
                api_key_id,
            } => {
                self.delete(&inbox_id, &api_key_id).await?;
                Ok(ApiResponse {
                    status: 204,
                    body: None,
                    allow: None,
                    www_authenticate: false,
                    close: false,
                    route: *route,
                })
            }
        }
    }

    async fn list(&self, inbox_id: &str, query: &[u8]) -> Result<Vec<u8>, ApiError> {
        let q = ListQuery::parse(&self.page_tokens, inbox_id, query)?;
        let mut rows = self
            .store
            .list_keys(inbox_id, q.after.as_ref(), q.limit + 1)
            .await?;
        let next_page_token = if rows.len() > q.limit {
            rows.truncate(q.limit);
            rows.last().map(|last| {
                cursor::encode(
                    &self.page_tokens,
                    inbox_id,
                    &Cursor {
                        created_at_us: last.created_at_us,
                        api_key_id: last.api_key_id.clone(),
                    },
                )
            })
        } else {
            None
        };
        self.usage.overlay(&mut rows);
        let api_keys: Vec<ApiKeyItem> = rows.into_iter().map(ApiKeyItem::from).collect();
        let resp = ListApiKeysResponse {
            count: api_keys.len(),
            api_keys,
            next_page_token,
        };
        serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn create(
        &self,
        inbox_id: String,
        pod_id: Option<String>,
        name: String,
    ) -> Result<Vec<u8>, ApiError> {
        let material = self.key_format.generate();
        let record = KeyRecord {
            api_key_id: random_id("key"),
            inbox_id,
            pod_id,
            name,
            prefix: material.display_prefix,
            created_at_us: self.clock.next_us(),
            used_at_us: None,
        };
        self.store
            .create_key(NewKey {
                record: record.clone(),
                hash: material.hash,
            })
            .await?;
        self.verifier.forget_negative(&material.hash).await;
        let resp = CreateApiKeyResponse {
            api_key: material.plaintext,
            api_key_id: record.api_key_id,
            created_at: crate::clock::rfc3339(record.created_at_us),
            inbox_id: record.inbox_id,
            name: record.name,
            pod_id: record.pod_id,
            prefix: record.prefix,
        };
        serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn delete(&self, inbox_id: &str, api_key_id: &str) -> Result<(), ApiError> {
        match self.store.delete_key(inbox_id, api_key_id).await? {
            Some(hash) => {
                // Evicted before the 204 leaves: the next request with this key is refused.
                self.verifier.revoke(&hash).await;
                Ok(())
            }
            None => Err(ApiError::NotFound(NotFound::ApiKey)),
        }
    }
}

struct ListQuery {
    limit: usize,
    after: Option<Cursor>,
}

impl ListQuery {
    fn parse(tokens: &PageTokenKey, inbox_id: &str, query: &[u8]) -> Result<ListQuery, ApiError> {
        let mut limit: Option<usize> = None;
        let mut after: Option<Cursor> = None;
        let mut seen_token = false;
        for (k, v) in form_urlencoded(query) {
            match k.as_str() {
                "limit" => {
                    if limit.is_some() {
                        return Err(ApiError::validation(
                            &["query", "limit"],
                            "limit may be given only once",
                        ));
                    }
                    let n = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::validation(
                                &["query", "limit"],
                                format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}"),
                            )
                        })?;
                    limit = Some(n);
                }
                "page_token" => {
                    if seen_token {
                        return Err(ApiError::validation(
                            &["query", "page_token"],
                            "page_token may be given only once",
                        ));
                    }
                    seen_token = true;
                    after = Some(cursor::decode(tokens, inbox_id, &v).ok_or_else(|| {
                        ApiError::validation(
                            &["query", "page_token"],
                            "page_token is not a token this endpoint issued for this inbox",
                        )
                    })?);
                }
                other => {
                    // Echo at most a short, printable prefix of an unknown name: clients do
                    // put secrets in URLs, and an error body must not hand one back.
                    let shown = echo_safe(other);
                    return Err(ApiError::validation(
                        &["query", &shown],
                        format!("unknown query parameter {shown:?} (allowed: limit, page_token)"),
                    ));
                }
            }
        }
        Ok(ListQuery {
            limit: limit.unwrap_or(DEFAULT_PAGE_LIMIT),
            after,
        })
    }
}

/// Longest unknown query-parameter name echoed back in an error, in characters.
const MAX_ECHOED_NAME_CHARS: usize = 24;

/// A short, printable prefix of client text that is safe to echo in an error body.
fn echo_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_ECHOED_NAME_CHARS)
        .collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as in HTML forms).
fn form_urlencoded(query: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| {
        let plus: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&plus)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&pair[..i]), decode(&pair[i + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Reads and validates the create body: JSON object with exactly one field, `name`.
async fn read_create_body(session: &mut Session) -> Result<String, ApiError> {
    let req = session.req_header();
    let ct = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let mime = ct.split(|&b| b == b';').next().unwrap_or(b"");
    if !mime.trim_ascii().eq_ignore_ascii_case(b"application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body: Vec<u8> = Vec::new();
    loop {
        let chunk: Option<Bytes> = session.read_request_body().await.map_err(|e| {
            ApiError::validation(&["body"], format!("could not read body: {:?}", e.etype()))
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    parse_create_body(&body)
}

/// Validates a create body; errors name the field.
pub fn parse_create_body(body: &[u8]) -> Result<String, ApiError> {
    let value = strict_json::parse(body)
        .map_err(|e| ApiError::validation(&["body"], format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::validation(
            &["body"],
            "body must be a JSON object",
        ));
    };
    let mut errors = Vec::new();
    for k in map.keys().filter(|k| k.as_str() != "name") {
        errors.push(errors::FieldError::new(
            &["body", k],
            format!("unknown field {k:?} (allowed: name)"),
        ));
    }
    let name = match map.get("name") {
        None => {
            errors.push(errors::FieldError::new(
                &["body", "name"],
                "name is required",
            ));
            None
        }
        Some(serde_json::Value::String(s)) => {
            let problem = if s.trim().is_empty() {
                Some("name must not be empty or only whitespace".to_owned())
            } else if s.chars().count() > MAX_NAME_CHARS {
                Some(format!("name must be at most {MAX_NAME_CHARS} characters"))
            } else if s.chars().any(char::is_control) {
                Some("name must not contain control characters".to_owned())
            } else {
                None
            };
            match problem {
                Some(p) => {
                    errors.push(errors::FieldError::new(&["body", "name"], p));
                    None
                }
                None => Some(s.clone()),
            }
        }
        Some(_) => {
            errors.push(errors::FieldError::new(
                &["body", "name"],
                "name must be a string",
            ));
            None
        }
    };
    match (name, errors.is_empty()) {
        (Some(n), true) => Ok(n),
        _ => Err(ApiError::Validation {
            message: errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            errors,
        }),
    }
}

/// JSON parsing that refuses duplicate object members (RFC 8259 leaves them undefined;
/// parsers disagree on which one wins, so a strict API refuses them).
mod strict_json {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    struct Strict(Value);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Strict;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
            Ok(Strict(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
            Ok(Strict(Value::String(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Strict, E> {
            Ok(Strict(Value::String(v)))
        }
        fn visit_unit<E>(self) -> Result<Strict, E> {
            Ok(Strict(Value::Null))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            let mut out = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(Strict(Value::Array(out)))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut out = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate member {k:?}"
                    )));
                }
                let Strict(v) = map.next_value()?;
                out.insert(k, v);
            }
            Ok(Strict(Value::Object(out)))
        }
    }

    /// Parses `bytes` as one JSON value; duplicate members anywhere are an error.
    pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
        serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (String, Vec<Vec<String>>) {
        match parse_create_body(body.as_bytes()).unwrap_err() {
            ApiError::Validation { message, errors } => {
                (message, errors.into_iter().map(|e| e.path).collect())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_body_validation() {
        assert_eq!(parse_create_body(br#"{"name":"ci"}"#).unwrap(), "ci");
        assert_eq!(err("{").1, [["body"]]);
        assert_eq!(err("[]").1, [["body"]]);
        assert_eq!(err("{}").1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":""}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":"  \t"}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":"a\u0001"}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":5}"#).1, [["body", "name"]]);
        let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(257));
        assert_eq!(err(&long).1, [["body", "name"]]);
        let ok = format!(r#"{{"name":"{}"}}"#, "é".repeat(256));
        assert!(parse_create_body(ok.as_bytes()).is_ok());
        // Duplicate members are refused at any depth, whichever value comes last.
        for dup in [
            r#"{"name":5,"name":"ok"}"#,
            r#"{"name":"ok","name":"ok"}"#,
            r#"{"name":"ok","x":{"a":1,"a":2}}"#,
            r#"{"name":"ok","x":[{"a":1,"a":1}]}"#,
            r#"{"name":"ok","\u006eame":"ok"}"#,
        ] {
            let (msg, paths) = err(dup);
            assert_eq!(paths, [["body"]], "{dup}");
            assert!(msg.contains("duplicate member"), "{dup}: {msg}");
        }
        let (msg, paths) = err(r#"{"name":"a","expires_at":"2027"}"#);
        assert_eq!(paths, [["body", "expires_at"]]);
        assert!(msg.contains("expires_at"));
    }

    fn test_tokens() -> PageTokenKey {
        PageTokenKey::new(&[1u8; 32])
    }

    #[test]
    fn unknown_query_names_are_echoed_short() {
        assert_eq!(echo_safe("foo"), "foo");
        let long = format!("agk_{}", "A".repeat(49));
        let shown = echo_safe(&long);
        assert_eq!(shown, format!("agk_{}…", "A".repeat(20)));
        assert_eq!(echo_safe("a\u{0}b\u{7f}c"), "abc…");
        match ListQuery::parse(&test_tokens(), "i", long.as_bytes()) {
            Err(ApiError::Validation { message, errors }) => {
                assert!(!message.contains(&long));
                assert_eq!(errors[0].path, ["query".to_owned(), shown.clone()]);
                assert!(message.contains(&shown), "{message}");
            }
            _ => panic!("an unknown parameter must be a validation error"),
        }
    }

    #[test]
    fn query_parsing() {
        let q = ListQuery::parse(&test_tokens(), "i", b"limit=5").unwrap();
        assert_eq!(q.limit, 5);
        for bad in [
            &b"limit=0"[..],
            b"limit=-1",
            b"limit=1001",
            b"limit=abc",
            b"limit=99999999999999999999999",
            b"limit=1&limit=2",
            b"page_token=abc",
            b"page_token=",
            b"foo=1",
        ] {
            assert!(
                ListQuery::parse(&test_tokens(), "i", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
