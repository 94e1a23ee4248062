//! The fixed JSON answers of the proxy path (refusals and upstream failures).

use bytes::Bytes;

use crate::auth::AuthFailure;
use http::header;
use pingora::http::RequestHeader;

/// A JSON error of the proxy path: status and body, fixed per reason.
pub(super) struct ProxyError {
    pub status: u16,
    pub body: &'static str,
    pub www_authenticate: bool,
}

pub(super) const ERR_MISSING_AUTH: ProxyError = ProxyError {
    status: 401,
    body: r#"{"name":"AuthenticationError","code":"missing_authorization","message":"Authorization: Bearer <api key> is required"}"#,
    www_authenticate: true,
};
pub(super) const ERR_INVALID_KEY: ProxyError = ProxyError {
    status: 401,
    body: r#"{"name":"AuthenticationError","code":"invalid_api_key","message":"the API key is not valid"}"#,
    www_authenticate: true,
};
pub(super) const ERR_FORBIDDEN: ProxyError = ProxyError {
    status: 403,
    body: r#"{"name":"PermissionDeniedError","code":"forbidden_inbox","message":"the API key may not access this inbox"}"#,
    www_authenticate: false,
};
pub(super) const ERR_NO_ROUTE: ProxyError = ProxyError {
    status: 404,
    body: r#"{"name":"NotFoundError","code":"route_not_found","message":"no route matches this path"}"#,
    www_authenticate: false,
};
pub(super) const ERR_AUTH_UNAVAILABLE: ProxyError = ProxyError {
    status: 503,
    body: r#"{"name":"ServiceUnavailableError","code":"auth_unavailable","message":"the key store is unavailable; retry later"}"#,
    www_authenticate: false,
};
pub(super) const ERR_NO_BACKEND: ProxyError = ProxyError {
    status: 503,
    body: r#"{"name":"ServiceUnavailableError","code":"no_healthy_upstream","message":"no healthy upstream address"}"#,
    www_authenticate: false,
};
pub(super) const ERR_BAD_GATEWAY: ProxyError = ProxyError {
    status: 502,
    body: r#"{"name":"BadGatewayError","code":"upstream_error","message":"the upstream failed to answer"}"#,
    www_authenticate: false,
};
pub(super) const ERR_GATEWAY_TIMEOUT: ProxyError = ProxyError {
    status: 504,
    body: r#"{"name":"GatewayTimeoutError","code":"upstream_timeout","message":"the upstream did not answer in time"}"#,
    www_authenticate: false,
};
pub(super) const ERR_BAD_REQUEST: ProxyError = ProxyError {
    status: 400,
    body: r#"{"name":"BadRequestError","code":"bad_request","message":"the request could not be processed"}"#,
    www_authenticate: false,
};
pub(super) const ERR_RATE_LIMITED: ProxyError = ProxyError {
    status: 429,
    body: r#"{"name":"RateLimitError","code":"too_many_failed_authentications","message":"too many failed authentications from this client; retry later"}"#,
    www_authenticate: false,
};
pub(super) const ERR_KEY_IN_QUERY: ProxyError = ProxyError {
    status: 400,
    body: r#"{"name":"ValidationError","code":"credential_in_query","message":"API keys are not accepted in the query string; send Authorization: Bearer <key>"}"#,
    www_authenticate: false,
};
pub(super) const ERR_KEY_IN_PATH: ProxyError = ProxyError {
    status: 400,
    body: r#"{"name":"ValidationError","code":"credential_in_path","message":"API keys are not accepted in the path; send Authorization: Bearer <key>"}"#,
    www_authenticate: false,
};
pub(super) const ERR_INTERNAL: ProxyError = ProxyError {
    status: 500,
    body: r#"{"name":"InternalError","code":"internal_error","message":"internal error"}"#,
    www_authenticate: false,
};

pub(super) fn error_json(name: &str, code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "name": name, "code": code, "message": message });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

pub(super) fn target_error_body(e: crate::target::TargetError) -> Bytes {
    error_json("ValidationError", "bad_request_target", e.message())
}

/// Whether the request carries a body we would otherwise leave unread.
pub(super) fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The answer to an authentication failure: every kind of bad key answers identically.
pub(super) fn auth_answer(f: AuthFailure) -> &'static ProxyError {
    match f {
        AuthFailure::Missing => &ERR_MISSING_AUTH,
        AuthFailure::StoreUnavailable => &ERR_AUTH_UNAVAILABLE,
        AuthFailure::Duplicate
        | AuthFailure::Malformed
        | AuthFailure::Checksum
        | AuthFailure::Unknown => &ERR_INVALID_KEY,
    }
}
