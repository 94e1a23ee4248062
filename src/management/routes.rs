//! Management endpoints: what a path of the gateway's own API (as the one router reads it)
//! and a method call for.

use http::Method;

use super::errors::{ApiError, NotFound};
use crate::metrics::ManagementRoute;
use crate::request_target::{inbox_id, ApiPath, RequestTarget, Routed, Router, TargetError};

/// A recognised management endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ListApiKeys {
        inbox_id: String,
    },
    CreateApiKey {
        inbox_id: String,
    },
    DeleteApiKey {
        inbox_id: String,
        api_key_id: String,
    },
    UpdateApiKey {
        inbox_id: String,
        api_key_id: String,
    },
}

impl Endpoint {
    pub fn metric_route(&self) -> ManagementRoute {
        match self {
            Endpoint::ListApiKeys { .. } => ManagementRoute::ListApiKeys,
            Endpoint::CreateApiKey { .. } => ManagementRoute::CreateApiKey,
            Endpoint::DeleteApiKey { .. } => ManagementRoute::DeleteApiKey,
            Endpoint::UpdateApiKey { .. } => ManagementRoute::UpdateApiKey,
        }
    }

    pub fn inbox_id(&self) -> &str {
        match self {
            Endpoint::ListApiKeys { inbox_id }
            | Endpoint::CreateApiKey { inbox_id }
            | Endpoint::DeleteApiKey { inbox_id, .. }
            | Endpoint::UpdateApiKey { inbox_id, .. } => inbox_id,
        }
    }
}

fn inbox_error(message: impl Into<String>) -> ApiError {
    ApiError::validation(&["path", "inbox_id"], message)
}

/// Decodes and validates the `{inbox_id}` segment.
fn inbox_id(raw: &[u8]) -> Result<String, ApiError> {
    inbox_id::decode_segment(raw).map_err(inbox_error)
}

/// Which API a management path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// `/human/v0/inboxes/...`, for management tokens.
    Human,
    /// `/v0/inboxes/...`, for API keys of the inbox.
    Key,
}

/// Maps method and raw target (path + query) to an endpoint, or the error to answer.
pub fn route(method: &Method, path: &[u8], query: &[u8]) -> Result<Endpoint, ApiError> {
    route_under(Base::Human, method, path, query)
}

/// [`route`] for either base: the target read by the one parser and the one router (the
/// proxy's), then the endpoint from the router's answer and the method.
pub fn route_under(
    base: Base,
    method: &Method,
    path: &[u8],
    query: &[u8],
) -> Result<Endpoint, ApiError> {
    let target = RequestTarget::from_parts(path, query).map_err(target_error)?;
    let api_path = match (
        base,
        Router::default().route(&target).map_err(target_error)?,
    ) {
        (Base::Human, Routed::Human(p)) | (Base::Key, Routed::KeyApi(p)) => p,
        _ => return Err(ApiError::NotFound(NotFound::Route)),
    };
    endpoint(method, api_path)
}

/// A refused target, as the management API words it.
fn target_error(e: TargetError) -> ApiError {
    let field = match e {
        TargetError::MethodOverride => "query",
        _ => "path",
    };
    ApiError::validation(&[field], e.message())
}

/// The endpoint for a method on a path of the gateway's own API.
pub fn endpoint(method: &Method, path: ApiPath<'_>) -> Result<Endpoint, ApiError> {
    match path {
        ApiPath::Keys { inbox } => {
            let inbox_id = inbox_id(inbox)?;
            match *method {
                Method::GET => Ok(Endpoint::ListApiKeys { inbox_id }),
                Method::POST => Ok(Endpoint::CreateApiKey { inbox_id }),
                _ => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
            }
        }
        ApiPath::Key { inbox, id } => {
            let inbox_id = inbox_id(inbox)?;
            let api_key_id = String::from_utf8(crate::request_target::decode_segment(id))
                .map_err(|_| ApiError::NotFound(NotFound::ApiKey))?;
            match *method {
                Method::DELETE => Ok(Endpoint::DeleteApiKey {
                    inbox_id,
                    api_key_id,
                }),
                Method::PATCH => Ok(Endpoint::UpdateApiKey {
                    inbox_id,
                    api_key_id,
                }),
                _ => Err(ApiError::MethodNotAllowed {
                    allow: "DELETE, PATCH",
                }),
            }
        }
        ApiPath::Unknown => Err(ApiError::NotFound(NotFound::Route)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> Result<Endpoint, ApiError> {
        route(&m, p.as_bytes(), b"")
    }

    #[test]
    fn routes_resolve() {
        assert_eq!(
            r(Method::GET, "/human/v0/inboxes/a%40b/api-keys").unwrap(),
            Endpoint::ListApiKeys {
                inbox_id: "a@b".into()
            }
        );
        assert_eq!(
            r(Method::DELETE, "/human/v0/inboxes/x/api-keys/key_1").unwrap(),
            Endpoint::DeleteApiKey {
                inbox_id: "x".into(),
                api_key_id: "key_1".into()
            }
        );
    }

    #[test]
    fn bad_inbox_ids_are_validation_errors() {
        let long = format!("/human/v0/inboxes/{}/api-keys", "a".repeat(255));
        for p in [
            "/human/v0/inboxes//api-keys",
            "/human/v0/inboxes/a%2Fb/api-keys",
            "/human/v0/inboxes/a%0Ab/api-keys",
            "/human/v0/inboxes/%FF/api-keys",
            "/human/v0/inboxes/%zz/api-keys",
            "/human/v0/inboxes/../api-keys",
            long.as_str(),
        ] {
            let e = r(Method::GET, p).unwrap_err();
            assert_eq!(e.status(), 400, "{p}");
        }
        let ok = format!("/human/v0/inboxes/{}/api-keys", "%C3%A9".repeat(254));
        assert!(r(Method::GET, &ok).is_ok());
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(r(Method::GET, "/human/v0/nope").unwrap_err().status(), 404);
        assert_eq!(
            r(Method::GET, "/human/v0/inboxes/x/api-keys/k/more")
                .unwrap_err()
                .status(),
            404
        );
        // An empty segment is refused by the target's one parser, like every path.
        assert_eq!(
            r(Method::GET, "/human/v0/inboxes/x/api-keys/")
                .unwrap_err()
                .status(),
            400
        );
        assert!(matches!(
            r(Method::PUT, "/human/v0/inboxes/x/api-keys"),
            Err(ApiError::MethodNotAllowed { allow: "GET, POST" })
        ));
        assert!(matches!(
            r(Method::GET, "/human/v0/inboxes/x/api-keys/k"),
            Err(ApiError::MethodNotAllowed {
                allow: "DELETE, PATCH"
            })
        ));
    }
}
