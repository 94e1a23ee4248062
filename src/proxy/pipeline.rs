//! The proxy's decision steps on a plain request head, not tied to pingora: framing and head
//! limits -> request line -> request target (canonical form, once) -> no credential in the URL
//! -> route (the one router) -> after the credential: scope -> permission. The `ProxyHttp`
//! impl builds a [`PlainHead`] and calls these; each step is unit-tested without sockets.

use http::{HeaderMap, Method, Version};

use crate::answer::{self, Answer, IntoAnswer};
use crate::auth::ApiKeyIdentity;
use crate::config::{Requirements, RouteConfig};
use crate::keys::KeyFormat;
use crate::metrics::Rejection;
use crate::permissions::PermissionSet;
use crate::request_head::line::check_request_line;
use crate::request_head::{self, HeaderLimits, Refusal};
use crate::request_target::{
    segment_equals, split_target, RequestTarget, Routed, Router, TargetError,
};

use super::answers::insufficient_permission;

/// A request head as plain data: everything the decision steps read.
#[derive(Debug, Clone, Copy)]
pub struct PlainHead<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// The request target as parsed (HTTP/1 request line, or HTTP/2 `:path`).
    pub target: &'a [u8],
    pub headers: &'a HeaderMap,
    /// HTTP/1 only: the head as received, and whether its request line held only bytes the
    /// parser takes as they are (see `header_deadline`).
    pub http1: Option<Http1Head<'a>>,
}

/// The raw side of an HTTP/1 head.
#[derive(Debug, Clone, Copy)]
pub struct Http1Head<'a> {
    pub raw: &'a [u8],
    pub line_plain: bool,
}

/// A refusal before the credential, and whether the target must not be logged (it held a key).
#[derive(Debug)]
pub struct Refused {
    pub answer: Answer,
    pub redact_target: bool,
}

impl From<Answer> for Refused {
    fn from(answer: Answer) -> Refused {
        Refused {
            answer,
            redact_target: false,
        }
    }
}

macro_rules! refused_from {
    ($($t:ty),+) => {$(
        impl From<$t> for Refused {
            fn from(failure: $t) -> Refused {
                Refused::from(failure.into_answer())
            }
        }
    )+};
}
refused_from!(Refusal, TargetError);

/// What the scope and permission steps read of an authenticated key.
#[derive(Debug, Clone, Copy)]
pub struct KeyScope<'a> {
    pub inbox_id: &'a [u8],
    pub permissions: PermissionSet,
}

impl<'a> From<&'a ApiKeyIdentity> for KeyScope<'a> {
    fn from(id: &'a ApiKeyIdentity) -> KeyScope<'a> {
        KeyScope {
            inbox_id: id.inbox.inbox_id.as_bytes(),
            permissions: id.permissions,
        }
    }
}

/// What the router made of a head: its target in canonical form, and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    pub target: RequestTarget<'a>,
    pub routed: Routed<'a>,
}

/// The steps, built once from config.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub router: Router,
    /// Configured routes in config order (the router's indexes).
    pub routes: Vec<RouteConfig>,
    pub key_format: KeyFormat,
    pub header_limits: HeaderLimits,
}

impl Pipeline {
    pub fn new(routes: Vec<RouteConfig>, key_format: KeyFormat, limits: HeaderLimits) -> Self {
        Pipeline {
            router: Router::new(routes.iter().map(|r| &r.template)),
            routes,
            key_format,
            header_limits: limits,
        }
    }

    /// Every step before the credential: the head's framing and limits, the request line as
    /// sent, the target (once, canonical), no key in the URL, and the route.
    pub fn route<'a>(&self, head: &PlainHead<'a>) -> Result<Routing<'a>, Refused> {
        let raw_head = head.http1.map(|h| h.raw);
        request_head::check(head.version, head.headers, raw_head, self.header_limits)?;
        if let Some(h1) = head.http1 {
            if !h1.line_plain {
                return Err(closing(TargetError::MalformedRequestLine));
            }
            check_request_line(h1.raw, head.method.as_str().as_bytes(), head.target)
                .map_err(closing)?;
        }
        let (path, query) = split_target(head.target).map_err(closing)?;
        // A key anywhere in the URL, however encoded, ends up in upstream and proxy logs:
        // refuse it (on every path) and never log the target.
        let in_url = if self.key_format.appears_in_url(path) {
            Some(&answer::CREDENTIAL_IN_PATH)
        } else if self.key_format.appears_in_url(query) {
            Some(&answer::CREDENTIAL_IN_QUERY)
        } else {
            None
        };
        if let Some(fixed) = in_url {
            return Err(Refused {
                answer: fixed.answer().because(Rejection::BadRequestTarget),
                redact_target: true,
            });
        }
        let target = RequestTarget::from_parts(path, query)?;
        let routed = self.router.route(&target)?;
        Ok(Routing { target, routed })
    }

    /// After the credential, for a configured route: the key's inbox must be the path's, and
    /// the key must hold the method's permission. Returns the route's upstream.
    pub fn authorize(
        &self,
        route: usize,
        inbox: &[u8],
        method: &Method,
        key: KeyScope<'_>,
    ) -> Result<usize, Answer> {
        if !segment_equals(inbox, key.inbox_id) {
            return Err(answer::FORBIDDEN_INBOX
                .answer()
                .because(Rejection::ForbiddenInbox));
        }
        let r = &self.routes[route];
        if let Some(require) = &r.require {
            check_permission(require, method, key.permissions)?;
        }
        Ok(r.upstream)
    }
}

/// A refused target that also closes the connection (the request line could not be trusted).
fn closing(e: TargetError) -> Refused {
    Refused::from(e.into_answer().closing())
}

/// A route that says what it needs: the method must be one it takes (405 with `Allow`), and
/// the key must hold that method's permission (403 naming the permission, never the key).
fn check_permission(
    require: &Requirements,
    method: &Method,
    held: PermissionSet,
) -> Result<(), Answer> {
    let Some(needed) = require.permission_for(method) else {
        let mut a = answer::METHOD_NOT_ALLOWED
            .answer()
            .because(Rejection::MethodNotAllowed);
        a.allow = Some(require.allow.clone());
        return Err(a);
    };
    if held.contains(needed) {
        return Ok(());
    }
    Err(insufficient_permission(require.name(needed)))
}

impl IntoAnswer for Refusal {
    fn into_answer(self) -> Answer {
        self.answer()
    }
}

impl IntoAnswer for TargetError {
    fn into_answer(self) -> Answer {
        let reason = match self {
            TargetError::NonCanonical => Rejection::NonCanonicalTarget,
            TargetError::MethodOverride => Rejection::MethodOverride,
            _ => Rejection::BadRequestTarget,
        };
        Answer::error(400, "ValidationError", self.code(), self.message()).because(reason)
    }
}

impl IntoAnswer for crate::auth::AuthFailure {
    fn into_answer(self) -> Answer {
        self.answer()
    }
}

crate::answer_from!(Refusal, TargetError, crate::auth::AuthFailure);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request_target::ApiPath;
    use http::HeaderValue;

    fn pipeline() -> (Pipeline, Config) {
        let file = "config/agentmail-inbox-api.toml";
        let text = std::fs::read_to_string(file).unwrap();
        let config = Config::parse(&text, std::path::Path::new(file)).unwrap();
        let limits = HeaderLimits {
            max_headers: 100,
            max_header_bytes: 32 * 1024,
        };
        let p = Pipeline::new(config.routes.clone(), KeyFormat::new("agk"), limits);
        (p, config)
    }

    fn head<'a>(method: &'a Method, target: &'a str, headers: &'a HeaderMap) -> PlainHead<'a> {
        PlainHead {
            method,
            version: Version::HTTP_11,
            target: target.as_bytes(),
            headers,
            http1: None,
        }
    }

    fn code(a: &Answer) -> String {
        let v: serde_json::Value = serde_json::from_slice(a.body.as_bytes()).unwrap();
        v["code"].as_str().unwrap().to_owned()
    }

    fn refused(p: &Pipeline, h: &PlainHead) -> (u16, String, bool) {
        let r = p.route(h).unwrap_err();
        (r.answer.status, code(&r.answer), r.answer.close)
    }

    fn index_of(c: &Config, template: &str) -> usize {
        c.routes
            .iter()
            .position(|r| r.template.as_str() == template)
            .unwrap()
    }

    #[test]
    fn a_plain_target_routes_to_its_most_specific_route() {
        let (p, c) = pipeline();
        let h = HeaderMap::new();
        let r = p
            .route(&head(&Method::GET, "/v0/inboxes/A/messages/m1", &h))
            .unwrap();
        assert_eq!(
            r.routed,
            Routed::Proxy {
                route: index_of(&c, "/v0/inboxes/{inbox_id}/messages/*"),
                inbox: b"A"
            }
        );
        assert_eq!(r.target.query(), b"");
    }

    #[test]
    fn an_escaped_letter_is_non_canonical_not_the_catch_all() {
        let (p, _) = pipeline();
        let h = HeaderMap::new();
        for t in [
            "/v0/inboxes/A/%6Dessages",
            "/v0/inboxes/A/%6dessages",
            "/v0/inboxes/A/Messages",
            "/v0/inboxes/A/%EF%BD%8Dessages",
            "/v0/inboxes/A/%61pi-keys",
            "/v0/inboxes/A/api%2Dkeys",
            "/v0/inboxes/A/api-key%73/key_x",
            "/v0/inboxes/A/API-KEYS",
            "/%68uman/v0/inboxes/A/api-keys",
            "/V0/inboxes/A",
        ] {
            assert_eq!(
                refused(&p, &head(&Method::GET, t, &h)),
                (400, "non_canonical_target".to_owned(), false),
                "{t}"
            );
        }
    }

    #[test]
    fn the_own_apis_are_told_apart_by_the_router() {
        let (p, _) = pipeline();
        let h = HeaderMap::new();
        let keys = p
            .route(&head(&Method::GET, "/v0/inboxes/A/api-keys", &h))
            .unwrap();
        assert_eq!(keys.routed, Routed::KeyApi(ApiPath::Keys { inbox: b"A" }));
        let human = p
            .route(&head(
                &Method::GET,
                "/human/v0/inboxes/A/api-keys/k1?limit=2",
                &h,
            ))
            .unwrap();
        assert_eq!(
            human.routed,
            Routed::Human(ApiPath::Key {
                inbox: b"A",
                id: b"k1"
            })
        );
        assert_eq!(human.target.query(), b"limit=2");
        let other = p.route(&head(&Method::GET, "/human/nope", &h)).unwrap();
        assert_eq!(other.routed, Routed::Human(ApiPath::Unknown));
        let none = p.route(&head(&Method::GET, "/elsewhere", &h)).unwrap();
        assert_eq!(none.routed, Routed::NoRoute);
    }

    #[test]
    fn method_overrides_are_refused_in_headers_and_query() {
        let (p, _) = pipeline();
        for name in [
            "x-http-method-override",
            "X-Method-Override",
            "X-HTTP-Method",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("DELETE"),
            );
            assert_eq!(
                refused(&p, &head(&Method::GET, "/v0/inboxes/A/messages", &h)),
                (400, "method_override".to_owned(), false),
                "{name}"
            );
        }
        let h = HeaderMap::new();
        assert_eq!(
            refused(
                &p,
                &head(&Method::GET, "/v0/inboxes/A/messages?_method=DELETE", &h)
            ),
            (400, "method_override".to_owned(), false)
        );
    }

    #[test]
    fn http1_request_lines_must_be_what_was_parsed() {
        let (p, _) = pipeline();
        let h = HeaderMap::new();
        let mut hd = head(&Method::GET, "/v0/inboxes/A/x", &h);
        hd.http1 = Some(Http1Head {
            raw: b"GET /v0/inboxes/A/x#/../../B/messages HTTP/1.1\r\n\r\n",
            line_plain: true,
        });
        assert_eq!(
            refused(&p, &hd),
            (400, "bad_request_target".to_owned(), true)
        );
        hd.http1 = Some(Http1Head {
            raw: b"GET /v0/inboxes/A/x HTTP/1.1\r\n\r\n",
            line_plain: false,
        });
        assert_eq!(
            refused(&p, &hd),
            (400, "bad_request_target".to_owned(), true)
        );
        hd.http1 = Some(Http1Head {
            raw: b"GET /v0/inboxes/A/x HTTP/1.1\r\n\r\n",
            line_plain: true,
        });
        assert!(p.route(&hd).is_ok());
    }

    #[test]
    fn ambiguous_framing_and_keys_in_urls_are_refused_first() {
        let (p, _) = pipeline();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            refused(&p, &head(&Method::POST, "/v0/inboxes/A/messages/send", &h)),
            (400, "ambiguous_framing".to_owned(), true)
        );
        let key = KeyFormat::new("agk").generate().plaintext;
        let h = HeaderMap::new();
        let t = format!("/v0/inboxes/A/messages?k={key}");
        let r = p.route(&head(&Method::GET, &t, &h)).unwrap_err();
        assert!(r.redact_target);
        assert_eq!(r.answer.status, 400);
    }

    #[test]
    fn scope_and_permission_after_the_credential() {
        let (p, c) = pipeline();
        let v = &c.permissions;
        let bit = |n: &str| 1u128 << v.lookup(n).unwrap().0;
        let reader = KeyScope {
            inbox_id: b"a@b",
            permissions: PermissionSet(bit("message_read")),
        };
        let messages = index_of(&c, "/v0/inboxes/{inbox_id}/messages");
        assert_eq!(p.authorize(messages, b"a%40b", &Method::GET, reader), Ok(0));
        let other = p
            .authorize(messages, b"b%40b", &Method::GET, reader)
            .unwrap_err();
        assert_eq!(
            (other.status, code(&other)),
            (403, "forbidden_inbox".to_owned())
        );
        let send = index_of(&c, "/v0/inboxes/{inbox_id}/messages/send");
        let denied = p
            .authorize(send, b"a@b", &Method::POST, reader)
            .unwrap_err();
        assert_eq!(
            (denied.status, code(&denied)),
            (403, "insufficient_permission".to_owned())
        );
        let wrong = p.authorize(send, b"a@b", &Method::GET, reader).unwrap_err();
        assert_eq!(wrong.status, 405);
        assert_eq!(wrong.allow, Some(HeaderValue::from_static("POST")));
    }

    #[test]
    fn refused_targets_answer_json() {
        let a = TargetError::ForbiddenEscape.into_answer();
        assert_eq!(a.status, 400);
        assert_eq!(a.reason, Some(Rejection::BadRequestTarget));
        let v: serde_json::Value = serde_json::from_slice(a.body.as_bytes()).unwrap();
        assert_eq!(v["name"], "ValidationError");
        assert_eq!(v["code"], "bad_request_target");
        assert_eq!(v["message"], TargetError::ForbiddenEscape.message());
        let n = TargetError::NonCanonical.into_answer();
        assert_eq!(n.reason, Some(Rejection::NonCanonicalTarget));
        assert_eq!(code(&n), "non_canonical_target");
    }
}
