//! Management routing: `/human/v0/inboxes/{inbox_id}/api-keys[/{api_key_id}]` from raw path bytes.

use http::Method;

use super::errors::{ApiError, NotFound};
use crate::metrics::ManagementRoute;
use crate::target::{inbox_id, validate_query, TargetError};

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

/// Whether a raw path (query already split off) belongs to the management API.
pub fn is_management_path(path: &[u8]) -> bool {
    path == b"/human" || path.starts_with(b"/human/")
}

fn inbox_error(message: impl Into<String>) -> ApiError {
    ApiError::validation(&["path", "inbox_id"], message)
}

/// Decodes and validates the `{inbox_id}` segment.
fn inbox_id(raw: &[u8]) -> Result<String, ApiError> {
    inbox_id::decode_segment(raw).map_err(inbox_error)
}

/// Whether a raw path is the key-managed API (`/v0/inboxes/{inbox_id}/api-keys[/{id}]`):
/// answered by the gateway for an API key of that inbox, never proxied.
pub fn is_key_management_path(path: &[u8]) -> bool {
    // Asked of every proxied path: most fail at the prefix, before any splitting.
    let Some(rest) = path.strip_prefix(b"/v0/inboxes/") else {
        return false;
    };
    // `{inbox_id}/api-keys` or `{inbox_id}/api-keys/{id}`, nothing more.
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return false;
    };
    match rest[slash + 1..].strip_prefix(b"api-keys") {
        Some([]) => true,
        Some([b'/', id @ ..]) => !id.contains(&b'/'),
        _ => false,
    }
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

/// [`route`] for either base.
pub fn route_under(
    base: Base,
    method: &Method,
    path: &[u8],
    query: &[u8],
) -> Result<Endpoint, ApiError> {
    validate_query(query)
        .map_err(|e: TargetError| ApiError::validation(&["query"], e.message()))?;
    let prefix: &[&[u8]] = match base {
        Base::Human => &[b"", b"human", b"v0", b"inboxes"],
        Base::Key => &[b"", b"v0", b"inboxes"],
    };
    let segs: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    if !segs.starts_with(prefix) {
        return Err(ApiError::NotFound(NotFound::Route));
    }
    match &segs[prefix.len()..] {
        [inbox, b"api-keys"] => {
            let inbox_id = inbox_id(inbox)?;
            match *method {
                Method::GET => Ok(Endpoint::ListApiKeys { inbox_id }),
                Method::POST => Ok(Endpoint::CreateApiKey { inbox_id }),
                _ => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
            }
        }
        [inbox, b"api-keys", key] if !key.is_empty() => {
            let inbox_id = inbox_id(inbox)?;
            let api_key_id = String::from_utf8(crate::target::decode_segment(key))
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
        _ => Err(ApiError::NotFound(NotFound::Route)),
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
        let ok = format!("/human/v0/inboxes/{}/api-keys", "é".repeat(254));
        assert!(r(Method::GET, &ok).is_ok());
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(r(Method::GET, "/human/v0/nope").unwrap_err().status(), 404);
        assert_eq!(
            r(Method::GET, "/human/v0/inboxes/x/api-keys/")
                .unwrap_err()
                .status(),
            404
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

    /// The definition `is_key_management_path` shortcuts: split into segments.
    fn key_management_by_segments(path: &[u8]) -> bool {
        let Some(rest) = path.strip_prefix(b"/v0/inboxes/") else {
            return false;
        };
        let mut segs = rest.split(|&b| b == b'/');
        let _inbox = segs.next();
        segs.next() == Some(b"api-keys") && segs.nth(1).is_none()
    }

    #[test]
    fn key_management_paths_are_told_apart() {
        for yes in [
            &b"/v0/inboxes/a@b.c/api-keys"[..],
            b"/v0/inboxes/a@b.c/api-keys/key_1",
            b"/v0/inboxes//api-keys",
            b"/v0/inboxes/a/api-keys/",
        ] {
            assert!(
                is_key_management_path(yes),
                "{}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [
            &b"/v0/inboxes/a@b.c/messages"[..],
            b"/v0/inboxes/a@b.c/api-keys/key_1/x",
            b"/v0/inboxes/a@b.c/api-keysx",
            b"/v0/inboxes/a@b.c/api-key",
            b"/v0/inboxes/api-keys",
            b"/v0/inboxes/a@b.c",
            b"/v0/inboxes/",
            b"/human/v0/inboxes/a/api-keys",
            b"/v0/inboxes/a/b/api-keys",
        ] {
            assert!(
                !is_key_management_path(no),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    const PARTS: &[&[u8]] = &[b"/", b"api-keys", b"a", b"api-key", b"s", b""];

    proptest::proptest! {
        #[test]
        fn key_management_shortcut_agrees_with_segments(
            tail in proptest::collection::vec(
                proptest::sample::select(PARTS),
                0..6,
            )
        ) {
            let mut path = b"/v0/inboxes/".to_vec();
            for part in tail {
                path.extend_from_slice(part);
            }
            proptest::prop_assert_eq!(
                is_key_management_path(&path),
                key_management_by_segments(&path),
                "{}",
                String::from_utf8_lossy(&path)
            );
        }
    }
}
