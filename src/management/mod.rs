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
        let q = ListQuery::parse(inbox_id, query)?;
        let mut rows = self
            .store
            .list_keys(inbox_id, q.after.as_ref(), q.limit + 1)
            .await?;
        let next_page_token = if rows.len() > q.limit {
            rows.truncate(q.limit);
            rows.last().map(|last| {
                cursor::encode(
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
    fn parse(inbox_id: &str, query: &[u8]) -> Result<ListQuery, ApiError> {
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
                    after = Some(cursor::decode(inbox_id, &v).ok_or_else(|| {
                        ApiError::validation(
                            &["query", "page_token"],
                            "page_token is not a token this endpoint issued for this inbox",
                        )
                    })?);
                }
                other => {
                    return Err(ApiError::validation(
                        &["query", other],
                        format!("unknown query parameter {other:?} (allowed: limit, page_token)"),
                    ))
                }
            }
        }
        Ok(ListQuery {
            limit: limit.unwrap_or(DEFAULT_PAGE_LIMIT),
            after,
        })
    }
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
    let value: serde_json::Value = serde_json::from_slice(body)
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
        let (msg, paths) = err(r#"{"name":"a","expires_at":"2027"}"#);
        assert_eq!(paths, [["body", "expires_at"]]);
        assert!(msg.contains("expires_at"));
    }

    #[test]
    fn query_parsing() {
        let q = ListQuery::parse("i", b"limit=5").unwrap();
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
                ListQuery::parse("i", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
