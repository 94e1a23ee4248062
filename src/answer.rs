//! One answer type for every response the gateway writes itself: refusals, errors, upstream
//! failures and management responses. One renderer makes every JSON error body
//! (`{"name", "code", "message"[, "errors"]}`); the fixed ones are pre-rendered constants, and a
//! unit test holds each of them to the renderer's output byte for byte.

use serde::Serialize;

use crate::metrics::Rejection;

/// A response body the gateway writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (204).
    Empty,
    /// A pre-rendered JSON body.
    Static(&'static str),
    /// A JSON body rendered for this request.
    Owned(Vec<u8>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => b"",
            Body::Static(s) => s.as_bytes(),
            Body::Owned(v) => v,
        }
    }
}

/// Everything about a response the gateway writes itself. Every answer is JSON (or empty)
/// and carries `Cache-Control: no-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Body,
    /// `WWW-Authenticate: Bearer`.
    pub www_authenticate: bool,
    /// `Allow` (405).
    pub allow: Option<http::HeaderValue>,
    /// `Retry-After`, in seconds (429).
    pub retry_after: Option<u64>,
    /// Close the connection after this answer (ambiguous framing, an unread body).
    pub close: bool,
    /// Why a request was refused, for `auth_rejections_total`; `None` for answers that are not
    /// refusals (management responses, upstream failures).
    pub reason: Option<Rejection>,
}

impl Answer {
    /// A JSON answer with a body rendered for this request.
    pub fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            body: Body::Owned(body),
            www_authenticate: false,
            allow: None,
            retry_after: None,
            close: false,
            reason: None,
        }
    }

    /// An answer without a body (204).
    pub fn empty(status: u16) -> Answer {
        Answer {
            body: Body::Empty,
            ..Answer::json(status, Vec::new())
        }
    }

    /// An error answer rendered now (for errors whose message depends on the request).
    pub fn error(status: u16, name: &str, code: &str, message: &str) -> Answer {
        Answer::json(status, render_error(name, code, message, None))
    }

    /// This answer counted as a refusal for `reason`.
    pub fn because(mut self, reason: Rejection) -> Answer {
        self.reason = Some(reason);
        self
    }

    /// This answer with `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Answer {
        self.retry_after = Some(secs);
        self
    }

    /// This answer, closing the connection after it.
    pub fn closing(mut self) -> Answer {
        self.close = true;
        self
    }
}

/// A failure that knows its answer: the one conversion from each failure type to an
/// [`Answer`] (and, through `From`, what `?` uses in the proxy's decision steps).
pub trait IntoAnswer {
    fn into_answer(self) -> Answer;
}

/// `From<T> for Answer` for failure types with an [`IntoAnswer`] impl.
#[macro_export]
macro_rules! answer_from {
    ($($t:ty),+ $(,)?) => {$(
        impl From<$t> for $crate::answer::Answer {
            fn from(failure: $t) -> $crate::answer::Answer {
                $crate::answer::IntoAnswer::into_answer(failure)
            }
        }
    )+};
}

/// A fixed error answer: its parts, and its body pre-rendered (checked against the renderer).
#[derive(Debug, PartialEq, Eq)]
pub struct Fixed {
    pub status: u16,
    pub name: &'static str,
    pub code: &'static str,
    pub message: &'static str,
    /// Exactly `render_error(name, code, message, None)`.
    pub body: &'static str,
    pub www_authenticate: bool,
    pub close: bool,
}

impl Fixed {
    pub fn answer(&'static self) -> Answer {
        Answer {
            status: self.status,
            body: Body::Static(self.body),
            www_authenticate: self.www_authenticate,
            allow: None,
            retry_after: None,
            close: self.close,
            reason: None,
        }
    }
}

/// One problem with one input, for `ValidationError.errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: Vec<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &[&str], message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    name: &'a str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

/// The JSON error body: `{"name", "code", "message"}`, plus `errors` for validation errors.
pub fn render_error(
    name: &str,
    code: &str,
    message: &str,
    errors: Option<&[FieldError]>,
) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        name,
        code,
        message,
        errors,
    })
    .unwrap_or_else(|_| INTERNAL.body.as_bytes().to_vec())
}

macro_rules! fixed {
    ($id:ident, $status:expr, $name:literal, $code:literal, $message:literal $(, $flag:ident)*) => {
        pub const $id: Fixed = Fixed {
            status: $status,
            name: $name,
            code: $code,
            message: $message,
            body: concat!(
                r#"{"name":""#, $name, r#"","code":""#, $code, r#"","message":""#, $message, r#""}"#
            ),
            www_authenticate: fixed!(@flag www_authenticate $($flag)*),
            close: fixed!(@flag close $($flag)*),
        };
    };
    (@flag $want:ident) => { false };
    (@flag www_authenticate www_authenticate $($rest:ident)*) => { true };
    (@flag close close $($rest:ident)*) => { true };
    (@flag $want:ident $other:ident $($rest:ident)*) => { fixed!(@flag $want $($rest)*) };
}

fixed!(
    MISSING_AUTHORIZATION,
    401,
    "AuthenticationError",
    "missing_authorization",
    "Authorization: Bearer <api key> is required",
    www_authenticate
);
fixed!(
    INVALID_API_KEY,
    401,
    "AuthenticationError",
    "invalid_api_key",
    "the API key is not valid",
    www_authenticate
);
fixed!(
    FORBIDDEN_INBOX,
    403,
    "PermissionDeniedError",
    "forbidden_inbox",
    "the API key may not access this inbox"
);
fixed!(
    ROUTE_NOT_FOUND,
    404,
    "NotFoundError",
    "route_not_found",
    "no route matches this path"
);
fixed!(
    AUTH_UNAVAILABLE,
    503,
    "ServiceUnavailableError",
    "auth_unavailable",
    "the key store is unavailable; retry later"
);
fixed!(
    NO_HEALTHY_UPSTREAM,
    503,
    "ServiceUnavailableError",
    "no_healthy_upstream",
    "no healthy upstream address"
);
fixed!(
    UPSTREAM_ERROR,
    502,
    "BadGatewayError",
    "upstream_error",
    "the upstream failed to answer"
);
fixed!(
    UPSTREAM_TIMEOUT,
    504,
    "GatewayTimeoutError",
    "upstream_timeout",
    "the upstream did not answer in time"
);
fixed!(
    BAD_REQUEST,
    400,
    "BadRequestError",
    "bad_request",
    "the request could not be processed"
);
fixed!(
    TOO_MANY_FAILED_AUTHENTICATIONS,
    429,
    "RateLimitError",
    "too_many_failed_authentications",
    "too many failed authentications from this client; retry later"
);
fixed!(
    CREDENTIAL_IN_QUERY,
    400,
    "ValidationError",
    "credential_in_query",
    "API keys are not accepted in the query string; send Authorization: Bearer <key>"
);
fixed!(
    CREDENTIAL_IN_PATH,
    400,
    "ValidationError",
    "credential_in_path",
    "API keys are not accepted in the path; send Authorization: Bearer <key>"
);
fixed!(
    AMBIGUOUS_FRAMING,
    400,
    "BadRequestError",
    "ambiguous_framing",
    "the request's framing headers are ambiguous",
    close
);
fixed!(
    UPGRADE_NOT_SUPPORTED,
    400,
    "BadRequestError",
    "upgrade_not_supported",
    "protocol upgrades are not supported",
    close
);
fixed!(
    METHOD_OVERRIDE,
    400,
    "BadRequestError",
    "method_override",
    "method and URL overrides (X-HTTP-Method-Override, X-Method-Override, X-HTTP-Method, X-Original-Method, X-Original-URL, X-Rewrite-URL, _method) are not accepted: send the request with its real method and path"
);
fixed!(
    HEADERS_TOO_LARGE,
    431,
    "RequestHeaderFieldsTooLargeError",
    "request_header_fields_too_large",
    "too many or too large request headers",
    close
);
fixed!(
    METHOD_NOT_ALLOWED,
    405,
    "MethodNotAllowedError",
    "method_not_allowed",
    "this route does not take this method; see Allow"
);
fixed!(
    OPERATIONS_ONLY_GET,
    405,
    "MethodNotAllowedError",
    "method_not_allowed",
    "only GET"
);
fixed!(
    OPERATIONS_NOT_FOUND,
    404,
    "NotFoundError",
    "route_not_found",
    "try /metrics, /healthz or /readyz"
);
fixed!(
    INTERNAL,
    500,
    "InternalError",
    "internal_error",
    "internal error"
);

/// Every fixed answer, for the renderer check.
pub const ALL_FIXED: &[&Fixed] = &[
    &MISSING_AUTHORIZATION,
    &INVALID_API_KEY,
    &FORBIDDEN_INBOX,
    &ROUTE_NOT_FOUND,
    &AUTH_UNAVAILABLE,
    &NO_HEALTHY_UPSTREAM,
    &UPSTREAM_ERROR,
    &UPSTREAM_TIMEOUT,
    &BAD_REQUEST,
    &TOO_MANY_FAILED_AUTHENTICATIONS,
    &CREDENTIAL_IN_QUERY,
    &CREDENTIAL_IN_PATH,
    &AMBIGUOUS_FRAMING,
    &UPGRADE_NOT_SUPPORTED,
    &METHOD_OVERRIDE,
    &HEADERS_TOO_LARGE,
    &METHOD_NOT_ALLOWED,
    &OPERATIONS_ONLY_GET,
    &OPERATIONS_NOT_FOUND,
    &INTERNAL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_body_is_what_the_renderer_makes() {
        for f in ALL_FIXED {
            let rendered = render_error(f.name, f.code, f.message, None);
            assert_eq!(f.body.as_bytes(), rendered.as_slice(), "{}", f.code);
            let v: serde_json::Value = serde_json::from_str(f.body).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 3, "{}", f.code);
            assert_eq!(v["name"], f.name);
            assert_eq!(v["code"], f.code);
            assert_eq!(v["message"], f.message);
            assert!(f.name.ends_with("Error"), "{}", f.name);
            let a = f.answer();
            assert_eq!(a.status, f.status);
            assert_eq!(a.www_authenticate, f.status == 401, "{}", f.code);
        }
        let closing: Vec<&str> = ALL_FIXED
            .iter()
            .filter(|f| f.close)
            .map(|f| f.code)
            .collect();
        assert_eq!(
            closing,
            [
                "ambiguous_framing",
                "upgrade_not_supported",
                "request_header_fields_too_large"
            ]
        );
    }

    #[test]
    fn validation_errors_carry_their_fields() {
        let body = render_error(
            "ValidationError",
            "validation_error",
            "name is required",
            Some(&[FieldError::new(&["body", "name"], "name is required")]),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["path"], serde_json::json!(["body", "name"]));
        let a = Answer::error(418, "TeapotError", "teapot", "short and stout")
            .because(Rejection::NoRoute)
            .retry_after(3)
            .closing();
        assert_eq!(a.reason, Some(Rejection::NoRoute));
        assert_eq!(a.retry_after, Some(3));
        assert!(a.close);
        assert_eq!(
            a.body.as_bytes(),
            br#"{"name":"TeapotError","code":"teapot","message":"short and stout"}"#
        );
    }
}
