//! Route templates like `/v0/inboxes/{inbox_id}`: which configured route a path falls under,
//! by exact bytes, and its raw `{inbox_id}` segment.

use super::is_pchar_byte;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<[u8]>),
    Inbox,
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
        for seg in text[1..].split('/') {
            if seg == "{inbox_id}" {
                segments.push(Segment::Inbox);
                continue;
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

    /// If a validated path falls under this template, returns its raw `{inbox_id}` segment.
    pub fn match_path<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        let mut parts = path.get(1..)?.split(|&b| b == b'/');
        let mut inbox = None;
        for seg in &self.segments {
            let got = parts.next()?;
            match seg {
                Segment::Literal(lit) => {
                    if **lit != *got {
                        return None;
                    }
                }
                Segment::Inbox => inbox = Some(got),
            }
        }
        inbox
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
    }
}
