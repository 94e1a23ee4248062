//! Management API errors, mapped in exactly one place to `{"name", "code", "message"}` JSON.

pub use crate::answer::FieldError;
use crate::answer::{render_error, Answer};
use crate::auth::limiter::Blocked;
use crate::metrics::Rejection;
use crate::store::StoreError;

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
    #[error("too many failed authentications")]
    RateLimited(Blocked),
    #[error("the API key lacks {0}")]
    InsufficientPermission(&'static str),
    #[error("beyond the creating key: {field}")]
    ExceedsCreator {
        field: &'static str,
        message: String,
    },
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
            ApiError::RateLimited(_) => 429,
            ApiError::InsufficientPermission(_) | ApiError::ExceedsCreator { .. } => 403,
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
            ApiError::InsufficientPermission(p) => (
                "PermissionDeniedError",
                "insufficient_permission",
                format!("this call needs the permission {p:?}, which the API key does not hold")
                    .into(),
            ),
            ApiError::ExceedsCreator { message, .. } => (
                "PermissionDeniedError",
                "exceeds_creator",
                message.as_str().into(),
            ),
            ApiError::RateLimited(_) => (
                "RateLimitError",
                "too_many_failed_authentications",
                "too many failed authentications from this client; retry later".into(),
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
        let exceeds;
        let errors = match self {
            ApiError::Validation { errors, .. } => Some(errors.as_slice()),
            ApiError::ExceedsCreator { field, message } => {
                exceeds = [FieldError::new(&["body", field], message.clone())];
                Some(&exceeds[..])
            }
            _ => None,
        };
        render_error(name, code, &message, errors)
    }

    /// The answer the gateway writes for this error.
    pub fn answer(&self) -> Answer {
        let mut a = Answer::json(self.status(), self.body());
        match self {
            ApiError::MethodNotAllowed { allow } => {
                a.allow = Some(http::HeaderValue::from_static(allow))
            }
            ApiError::MissingAuthorization | ApiError::InvalidToken => a.www_authenticate = true,
            ApiError::RateLimited(b) => {
                a = a
                    .retry_after(b.retry_after_secs)
                    .because(Rejection::RateLimited)
            }
            // The rest of an oversized body is never read: close instead.
            ApiError::PayloadTooLarge { .. } => a.close = true,
            _ => {}
        }
        a
    }
}
