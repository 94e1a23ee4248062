//! The one router: which API or configured route a request target belongs to, decided on its
//! canonical form. The gateway's own APIs come first and own their whole subtrees (never
//! proxied): `/human/**` (the management API, for management tokens) and
//! `/v0/inboxes/{inbox_id}/api-keys/**` (the key-managed API, for keys of the inbox). Then the
//! configured `[[routes]]`, most specific first.
//!
//! Every literal segment, the gateway's own and the configured ones, is compared the same way:
//! a segment that reads as the literal to a lenient server (escaped, other letter case,
//! fullwidth) but is not spelled as it is [`TargetError::NonCanonical`], never a fall-through
//! to a less specific route. Hand-written rather than a router crate: templates match their
//! whole subtree with most-specific-wins, and the loose-versus-exact answer per literal is what
//! closes the fall-through; `matchit` and its kin match exact bytes only.

use super::{loosely_equal, RequestTarget, RouteTemplate, TargetError};

/// A path under one of the gateway's own APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiPath<'a> {
    /// `…/inboxes/{inbox_id}/api-keys`, with the raw inbox segment.
    Keys { inbox: &'a [u8] },
    /// `…/inboxes/{inbox_id}/api-keys/{api_key_id}`, with both raw segments.
    Key { inbox: &'a [u8], id: &'a [u8] },
    /// Any other path in the API's subtree: 404, never proxied.
    Unknown,
}

/// What a request target is, by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed<'a> {
    /// `/human/**`: the management API.
    Human(ApiPath<'a>),
    /// `/v0/inboxes/{inbox_id}/api-keys/**`: the key-managed API.
    KeyApi(ApiPath<'a>),
    /// A configured route: its index (as given to [`Router::new`]) and the raw inbox segment.
    Proxy { route: usize, inbox: &'a [u8] },
    /// No route takes the path.
    NoRoute,
}

/// The gateway's own APIs and the configured routes, in one table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Configured route templates with their index, most specific first.
    routes: Vec<(RouteTemplate, usize)>,
}

impl Router {
    /// A router over the configured templates (indexes are positions in `templates`).
    pub fn new<'t>(templates: impl IntoIterator<Item = &'t RouteTemplate>) -> Router {
        let mut routes: Vec<(RouteTemplate, usize)> = templates
            .into_iter()
            .cloned()
            .enumerate()
            .map(|(i, t)| (t, i))
            .collect();
        routes.sort_by_key(|(t, _)| std::cmp::Reverse(t.specificity()));
        Router { routes }
    }

    /// Routes a parsed target; `Err` when its best match is not spelled canonically.
    pub fn route<'a>(&self, target: &RequestTarget<'a>) -> Result<Routed<'a>, TargetError> {
        if let Some(own) = own_api(target)? {
            return Ok(own);
        }
        for (template, index) in &self.routes {
            if let Some(m) = template.matches(target.segments()) {
                if m.loose {
                    return Err(TargetError::NonCanonical);
                }
                return Ok(Routed::Proxy {
                    route: *index,
                    inbox: m.inbox,
                });
            }
        }
        Ok(Routed::NoRoute)
    }

    /// Whether the gateway's own APIs take every path under a template (its wildcards read as
    /// `x`): such a route could never be reached, and config refuses it.
    pub fn claimed_by_own_api(template: &RouteTemplate) -> bool {
        let sample: String = template
            .as_str()
            .split('/')
            .map(|s| match s {
                "{inbox_id}" | "*" | "**" => "x",
                other => other,
            })
            .collect::<Vec<_>>()
            .join("/");
        RequestTarget::from_parts(sample.as_bytes(), b"")
            .ok()
            .is_some_and(|t| !matches!(own_api(&t), Ok(None)))
    }
}

/// A literal segment: `Some(loose)` when `seg` reads as `lit`, `None` when it does not.
fn literal(seg: Option<&[u8]>, lit: &[u8]) -> Option<bool> {
    let seg = seg?;
    if seg == lit {
        Some(false)
    } else {
        loosely_equal(seg, lit).then_some(true)
    }
}

/// The gateway's own APIs, asked before any configured route.
fn own_api<'a>(target: &RequestTarget<'a>) -> Result<Option<Routed<'a>>, TargetError> {
    let mut segs = target.segments();
    let (routed, loose) = if let Some(human) = literal(segs.clone().next(), b"human") {
        segs.next();
        let (path, rest) = human_path(&mut segs);
        (Routed::Human(path), human || rest)
    } else if let Some((inbox, loose)) = key_api_prefix(&mut segs) {
        (Routed::KeyApi(api_tail(inbox, &mut segs)), loose)
    } else {
        return Ok(None);
    };
    if loose {
        return Err(TargetError::NonCanonical);
    }
    Ok(Some(routed))
}

/// `v0/inboxes/{inbox_id}/api-keys` at the start of `segs`: the raw inbox segment and whether
/// a literal matched only loosely, when it is there.
fn key_api_prefix<'a>(segs: &mut impl Iterator<Item = &'a [u8]>) -> Option<(&'a [u8], bool)> {
    let v0 = literal(segs.next(), b"v0")?;
    let inboxes = literal(segs.next(), b"inboxes")?;
    let inbox = segs.next()?;
    let keys = literal(segs.next(), b"api-keys")?;
    Some((inbox, v0 || inboxes || keys))
}

/// A `/human` path after its first segment: `v0/inboxes/{inbox_id}/api-keys[/{id}]`, else
/// `Unknown`; and whether a literal matched only loosely.
fn human_path<'a>(segs: &mut impl Iterator<Item = &'a [u8]>) -> (ApiPath<'a>, bool) {
    match key_api_prefix(segs) {
        Some((inbox, loose)) => (api_tail(inbox, segs), loose),
        None => (ApiPath::Unknown, false),
    }
}

/// After `api-keys`: nothing (the collection), one segment (a key), or more (unknown).
fn api_tail<'a>(inbox: &'a [u8], rest: &mut impl Iterator<Item = &'a [u8]>) -> ApiPath<'a> {
    match (rest.next(), rest.next()) {
        (None, _) => ApiPath::Keys { inbox },
        (Some(id), None) => ApiPath::Key { inbox, id },
        _ => ApiPath::Unknown,
    }
}
