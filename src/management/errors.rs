//! Management API errors, mapped in exactly one place to `{"name", "code", "message"}` JSON.

use serde::Serialize;

use crate::store::StoreError;

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

/// Everything the management API can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation {
        message: String,
        errors: Vec<FieldError>,
    },
    #[error("missing Authorization header")]
    MissingAuthorization,
    #[error("invalid management token")]
    InvalidToken,
    #[error("not found")]
    NotFound(NotFound),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What was not found. Inboxes a principal may not see are `Inbox`, exactly like absent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    Route,
    Inbox,
    ApiKey,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(m) => ApiError::StoreUnavailable(m),
            StoreError::Conflict(m) => ApiError::Internal(m),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    name: &'a str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    pub fn validation(path: &[&str], message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Validation {
            errors: vec![FieldError::new(path, message.clone())],
            message,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::Validation { .. } => 400,
            ApiError::MissingAuthorization | ApiError::InvalidToken => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::Internal(_) => 500,
            ApiError::StoreUnavailable(_) => 503,
        }
    }

    /// The JSON body. Internal causes are logged here and never sent.
    pub fn body(&self) -> Vec<u8> {
        let (name, code, message): (&str, &str, std::borrow::Cow<'_, str>) = match self {
            ApiError::Validation { message, .. } => (
                "ValidationError",
                "validation_error",
                message.as_str().into(),
            ),
            ApiError::MissingAuthorization => (
                "AuthenticationError",
                "missing_authorization",
                "Authorization: Bearer <management token> is required".into(),
            ),
            ApiError::InvalidToken => (
                "AuthenticationError",
                "invalid_token",
                "the management token is not valid".into(),
            ),
            ApiError::NotFound(NotFound::Route) => (
                "NotFoundError",
                "route_not_found",
                "no such endpoint".into(),
            ),
            ApiError::NotFound(NotFound::Inbox) => {
                ("NotFoundError", "inbox_not_found", "inbox not found".into())
            }
            ApiError::NotFound(NotFound::ApiKey) => (
                "NotFoundError",
                "api_key_not_found",
                "api key not found".into(),
            ),
            ApiError::MethodNotAllowed { allow } => (
                "MethodNotAllowedError",
                "method_not_allowed",
                format!("method not allowed; allowed: {allow}").into(),
            ),
            ApiError::PayloadTooLarge { limit } => (
                "PayloadTooLargeError",
                "payload_too_large",
                format!("request body exceeds {limit} bytes").into(),
            ),
            ApiError::UnsupportedMediaType => (
                "UnsupportedMediaTypeError",
                "unsupported_media_type",
                "Content-Type must be application/json".into(),
            ),
            ApiError::StoreUnavailable(cause) => {
                log::error!("management request failed, store unavailable: {cause}");
                (
                    "ServiceUnavailableError",
                    "store_unavailable",
                    "the key store is unavailable; retry later".into(),
                )
            }
            ApiError::Internal(cause) => {
                log::error!("management request failed: {cause}");
                ("InternalError", "internal_error", "internal error".into())
            }
        };
        let errors = match self {
            ApiError::Validation { errors, .. } => Some(errors.as_slice()),
            _ => None,
        };
        serde_json::to_vec(&Body {
            name,
            code,
            message: &message,
            errors,
        })
        .unwrap_or_else(|_| b"{\"name\":\"InternalError\",\"code\":\"internal_error\",\"message\":\"internal error\"}".to_vec())
    }
}
