//! Route templates like `/v0/inboxes/{inbox_id}/messages/*`: which configured route a path
//! falls under, and its raw `{inbox_id}` segment.
//!
//! A template matches its path and everything below it, on segment boundaries. `*` is any one
//! segment; a trailing `**` says "and everything below" explicitly (the same match). When
//! several templates match, the most specific wins whatever their order: compared segment by
//! segment, a literal beats `{inbox_id}` or `*`, and a longer template beats its prefix.
//!
//! A literal matches a segment that reads as it to a lenient server ([`super::loosely_equal`]:
//! escaped, another letter case, fullwidth), and the match says whether every literal was
//! spelled byte for byte: the router refuses a best match that was not.

use super::{is_pchar_byte, loosely_equal};

/// A template's match of a path: its raw `{inbox_id}` segment, and whether some literal
/// segment matched only loosely (not byte for byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateMatch<'p> {
    pub inbox: &'p [u8],
    pub loose: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<[u8]>),
    Inbox,
    /// `*`: any one segment.
    Any,
}

impl Segment {
    /// How specific a segment is (higher wins).
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 2,
            Segment::Inbox | Segment::Any => 1,
        }
    }
}

/// A route path like `/v0/inboxes/{inbox_id}`: matches that path and everything below it on
/// segment boundaries. Exactly one `{inbox_id}` segment is required: every route is inbox-scoped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    text: String,
    segments: Vec<Segment>,
}

impl RouteTemplate {
    /// Parses a template; the error says what is wrong.
    pub fn parse(text: &str) -> Result<RouteTemplate, String> {
        if !text.starts_with('/') || text == "/" {
            return Err(format!(
                "{text:?} must be an absolute path with segments, e.g. \"/v0/inboxes/{{inbox_id}}\""
            ));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = text[1..].split('/').collect();
        for (i, seg) in parts.iter().copied().enumerate() {
            if seg == "{inbox_id}" {
                segments.push(Segment::Inbox);
                continue;
            }
            if seg == "*" {
                segments.push(Segment::Any);
                continue;
            }
            if seg == "**" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "{text:?}: \"**\" may only be the last segment (everything below)"
                    ));
                }
                continue;
            }
            if seg.contains('*') {
                return Err(format!(
                    "{text:?}: segment {seg:?} mixes '*' with text; use a whole segment \"*\" (one segment) or a final \"**\""
                ));
            }
            if seg.contains('{') || seg.contains('}') {
                return Err(format!(
                    "{text:?}: segment {seg:?} is not a literal; the only placeholder is a whole segment \"{{inbox_id}}\""
                ));
            }
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(format!("{text:?} has an empty, '.' or '..' segment"));
            }
            if seg.bytes().any(|b| !is_pchar_byte(b) || b == b'%') {
                return Err(format!(
                    "{text:?}: segment {seg:?} may hold only unescaped RFC 3986 path characters (no '%', ';', '\\')"
                ));
            }
            segments.push(Segment::Literal(seg.as_bytes().into()));
        }
        match segments.iter().filter(|s| **s == Segment::Inbox).count() {
            1 => Ok(RouteTemplate {
                text: text.to_owned(),
                segments,
            }),
            0 => Err(format!(
                "{text:?} has no \"{{inbox_id}}\" segment; every route must be scoped to an inbox"
            )),
            _ => Err(format!(
                "{text:?} has more than one \"{{inbox_id}}\" segment"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The specificity key: segment ranks in order (compared lexicographically, longer wins
    /// over its own prefix).
    pub fn specificity(&self) -> Vec<u8> {
        self.segments.iter().map(Segment::rank).collect()
    }

    /// Whether two templates match exactly the same paths (`{inbox_id}` and `*` both match any
    /// one segment; a trailing `**` changes nothing).
    pub fn same_paths_as(&self, other: &RouteTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Literal(_), _) | (_, Segment::Literal(_)) => false,
                    _ => true,
                })
    }

    /// Whether a path's segments (as sent) fall under this template, and how (see
    /// [`TemplateMatch`]).
    pub fn matches<'p>(
        &self,
        mut parts: impl Iterator<Item = &'p [u8]>,
    ) -> Option<TemplateMatch<'p>> {
        let mut inbox = None;
        let mut loose = false;
        for seg in &self.segments {
            let got = parts.next()?;
            match seg {
                Segment::Literal(lit) => {
                    if **lit != *got {
                        if !loosely_equal(got, lit) {
                            return None;
                        }
                        loose = true;
                    }
                }
                Segment::Inbox => inbox = Some(got),
                Segment::Any => {}
            }
        }
        Some(TemplateMatch {
            inbox: inbox?,
            loose,
        })
    }

    /// [`RouteTemplate::matches`] on a path (a test and fuzz convenience): the raw
    /// `{inbox_id}` segment of a match whose literals were all spelled byte for byte.
    pub fn match_path<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        let m = self.matches(path.get(1..)?.split(|&b| b == b'/'))?;
        (!m.loose).then_some(m.inbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> RouteTemplate {
        RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap()
    }

    #[test]
    fn template_matches_on_segment_boundaries() {
        let t = t();
        assert_eq!(t.match_path(b"/v0/inboxes/abc"), Some(&b"abc"[..]));
        assert_eq!(
            t.match_path(b"/v0/inboxes/abc/messages/1"),
            Some(&b"abc"[..])
        );
        assert_eq!(t.match_path(b"/v0/inboxes"), None);
        assert_eq!(t.match_path(b"/v0/inboxesX/abc"), None);
        assert_eq!(t.match_path(b"/V0/inboxes/abc"), None);
        assert_eq!(t.match_path(b"/"), None);
    }

    #[test]
    fn templates_are_validated() {
        assert!(RouteTemplate::parse("/v0/inboxes").is_err());
        assert!(RouteTemplate::parse("v0/{inbox_id}").is_err());
        assert!(RouteTemplate::parse("/a/{inbox_id}/{inbox_id}").is_err());
        assert!(RouteTemplate::parse("/a//{inbox_id}").is_err());
        assert!(RouteTemplate::parse("/a/x{inbox_id}").is_err());
        assert!(RouteTemplate::parse("/a%2f/{inbox_id}").is_err());
        assert!(RouteTemplate::parse("/{inbox_id}").is_ok());
        assert!(RouteTemplate::parse("/a/{inbox_id}/*/b/**").is_ok());
        assert!(RouteTemplate::parse("/a/{inbox_id}/**/b").is_err());
        assert!(RouteTemplate::parse("/a/{inbox_id}/x*").is_err());
    }

    #[test]
    fn stars_match_one_segment_and_specificity_orders_templates() {
        let star = RouteTemplate::parse("/v0/inboxes/{inbox_id}/messages/*/send").unwrap();
        assert_eq!(
            star.match_path(b"/v0/inboxes/X/messages/m1/send"),
            Some(&b"X"[..])
        );
        assert_eq!(
            star.match_path(b"/v0/inboxes/X/messages/m1/send/more"),
            Some(&b"X"[..])
        );
        assert_eq!(star.match_path(b"/v0/inboxes/X/messages/send"), None);
        let all = RouteTemplate::parse("/v0/inboxes/{inbox_id}/**").unwrap();
        let bare = RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap();
        assert!(all.same_paths_as(&bare));
        let msgs = RouteTemplate::parse("/v0/inboxes/{inbox_id}/messages").unwrap();
        let any = RouteTemplate::parse("/v0/inboxes/{inbox_id}/*").unwrap();
        assert!(!msgs.same_paths_as(&any));
        assert!(msgs.specificity() > any.specificity());
        assert!(any.specificity() > bare.specificity());
        assert!(star.specificity() > msgs.specificity());
        let swapped = RouteTemplate::parse("/v0/*/{inbox_id}").unwrap();
        let other = RouteTemplate::parse("/v0/{inbox_id}/*").unwrap();
        assert!(swapped.same_paths_as(&other));
    }
}
