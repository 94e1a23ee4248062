//! How the proxy path turns what went wrong into an [`Answer`]: refused targets, and upstream
//! failures classified from pingora's error (a pure function, tested without sockets).

use http::header;
use pingora::http::RequestHeader;
use pingora::{ErrorSource, ErrorType};

use crate::answer::{self, Answer, Fixed};
use crate::metrics::{Rejection, UpstreamError};

/// The error type of "no healthy upstream address".
pub(super) const NO_HEALTHY_BACKEND: ErrorType = ErrorType::Custom("no_healthy_backend");

/// 403 for a key without the permission a call needs; the message names the permission.
pub(super) fn insufficient_permission(permission: &str) -> Answer {
    let mut a = Answer::error(
        403,
        "PermissionDeniedError",
        "insufficient_permission",
        &format!("this call needs the permission {permission:?}, which the API key does not hold"),
    );
    a.reason = Some(Rejection::InsufficientPermission);
    a
}

/// Whether the request carries a body we would otherwise leave unread.
pub(super) fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// What a failed proxy attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    /// The answer for the client; `None` when the client itself went away.
    pub answer: Option<&'static Fixed>,
    /// The upstream's share of the blame, when it has one (for `upstream_errors_total`).
    pub upstream: Option<UpstreamError>,
}

/// Classifies a pingora error from the proxy phase.
pub(super) fn classify(etype: &ErrorType, source: &ErrorSource) -> Failure {
    use ErrorType::*;
    let (answer, reason): (Option<&'static Fixed>, UpstreamError) = match etype {
        t if *t == NO_HEALTHY_BACKEND => (
            Some(&answer::NO_HEALTHY_UPSTREAM),
            UpstreamError::NoHealthyBackend,
        ),
        ConnectTimedout | ReadTimedout | WriteTimedout => {
            (Some(&answer::UPSTREAM_TIMEOUT), UpstreamError::Timeout)
        }
        ConnectRefused => (Some(&answer::UPSTREAM_ERROR), UpstreamError::Refused),
        // The upstream's certificate did not verify, or the handshake failed.
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError
            if *source == ErrorSource::Upstream =>
        {
            (Some(&answer::UPSTREAM_ERROR), UpstreamError::Tls)
        }
        ConnectionClosed | ReadError | WriteError if *source == ErrorSource::Upstream => {
            (Some(&answer::UPSTREAM_ERROR), UpstreamError::Reset)
        }
        _ => match source {
            ErrorSource::Upstream => (Some(&answer::UPSTREAM_ERROR), UpstreamError::Other),
            ErrorSource::Downstream => match etype {
                // The client went away: nobody to answer.
                WriteError | ReadError | ConnectionClosed => (None, UpstreamError::Other),
                _ => (Some(&answer::BAD_REQUEST), UpstreamError::Other),
            },
            _ => (Some(&answer::INTERNAL), UpstreamError::Other),
        },
    };
    let blames_upstream = *source == ErrorSource::Upstream || *etype == NO_HEALTHY_BACKEND;
    Failure {
        answer,
        upstream: blames_upstream.then_some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_are_classified() {
        let up = ErrorSource::Upstream;
        let down = ErrorSource::Downstream;
        let cases: &[(ErrorType, &ErrorSource, Option<u16>, Option<UpstreamError>)] = &[
            (
                NO_HEALTHY_BACKEND,
                &ErrorSource::Internal,
                Some(503),
                Some(UpstreamError::NoHealthyBackend),
            ),
            (
                ErrorType::ConnectTimedout,
                &up,
                Some(504),
                Some(UpstreamError::Timeout),
            ),
            (
                ErrorType::ReadTimedout,
                &up,
                Some(504),
                Some(UpstreamError::Timeout),
            ),
            (
                ErrorType::WriteTimedout,
                &up,
                Some(504),
                Some(UpstreamError::Timeout),
            ),
            (
                ErrorType::ConnectRefused,
                &up,
                Some(502),
                Some(UpstreamError::Refused),
            ),
            (
                ErrorType::TLSHandshakeFailure,
                &up,
                Some(502),
                Some(UpstreamError::Tls),
            ),
            (
                ErrorType::InvalidCert,
                &up,
                Some(502),
                Some(UpstreamError::Tls),
            ),
            (
                ErrorType::ConnectionClosed,
                &up,
                Some(502),
                Some(UpstreamError::Reset),
            ),
            (
                ErrorType::ReadError,
                &up,
                Some(502),
                Some(UpstreamError::Reset),
            ),
            (
                ErrorType::InvalidHTTPHeader,
                &up,
                Some(502),
                Some(UpstreamError::Other),
            ),
            (ErrorType::ReadError, &down, None, None),
            (ErrorType::ConnectionClosed, &down, None, None),
            (ErrorType::ReadTimedout, &down, Some(504), None),
            (ErrorType::InvalidHTTPHeader, &down, Some(400), None),
            (
                ErrorType::InternalError,
                &ErrorSource::Internal,
                Some(500),
                None,
            ),
        ];
        for (etype, source, status, reason) in cases {
            let f = classify(etype, source);
            assert_eq!(
                f.answer.map(|a| a.status),
                *status,
                "{etype:?} from {source:?}"
            );
            assert_eq!(f.upstream, *reason, "{etype:?} from {source:?}");
        }
    }
}
