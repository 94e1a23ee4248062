//! Request-target validation and route templates: which inbox a path belongs to, by exact bytes.
//!
//! Pingora does no path normalization, and neither do we: a path is admitted only if no
//! RFC 3986 normalization or common server decoding could make it mean another path. Admitted
//! paths are forwarded byte for byte; the `{inbox_id}` segment is percent-decoded once and
//! compared exactly with the key's inbox.

/// Why a request target is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Not origin-form (`/path?query`): absolute-form, authority-form or `*`.
    NotOriginForm,
    /// Empty, `.` or `..` segment.
    DotOrEmptySegment,
    /// A byte outside the RFC 3986 `pchar` set, a `;` parameter, or a backslash.
    ForbiddenCharacter,
    /// A malformed `%` escape, or one that decodes to `/`, `\`, `.`, `%`, `;` or a control byte.
    ForbiddenEscape,
}

impl TargetError {
    pub fn message(self) -> &'static str {
        match self {
            TargetError::NotOriginForm => "request target must be an absolute path (origin-form)",
            TargetError::DotOrEmptySegment => "path must not contain empty, '.' or '..' segments",
            TargetError::ForbiddenCharacter => "path contains a character that is not allowed",
            TargetError::ForbiddenEscape => "path contains a percent-escape that is not allowed",
        }
    }
}

fn is_pchar_byte(b: u8) -> bool {
    // RFC 3986 pchar minus ';' (matrix parameters are refused) plus '%' (checked separately).
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'%'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a raw request target into path and query, refusing anything but origin-form.
pub fn split_target(raw: &[u8]) -> Result<(&[u8], &[u8]), TargetError> {
    if raw.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    match raw.iter().position(|&b| b == b'?') {
        Some(i) => Ok((&raw[..i], &raw[i + 1..])),
        None => Ok((raw, &[])),
    }
}

/// Checks a query string: only visible ASCII, no `#`.
pub fn validate_query(query: &[u8]) -> Result<(), TargetError> {
    if query.iter().all(|&b| b > b' ' && b < 0x7f && b != b'#') {
        Ok(())
    } else {
        Err(TargetError::ForbiddenCharacter)
    }
}

/// Checks every segment of an origin-form path (see the module doc for the rules).
pub fn validate_path(path: &[u8]) -> Result<(), TargetError> {
    if path.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    if path == b"/" {
        return Ok(());
    }
    for seg in path[1..].split(|&b| b == b'/') {
        if seg.is_empty() || seg == b"." || seg == b".." {
            return Err(TargetError::DotOrEmptySegment);
        }
        let mut i = 0;
        while i < seg.len() {
            let b = seg[i];
            if !is_pchar_byte(b) {
                return Err(TargetError::ForbiddenCharacter);
            }
            if b == b'%' {
                let (Some(h), Some(l)) = (
                    seg.get(i + 1).copied().and_then(hex_val),
                    seg.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(TargetError::ForbiddenEscape);
                };
                let d = h << 4 | l;
                if matches!(d, b'/' | b'\\' | b'.' | b'%' | b';') || d < 0x20 || d == 0x7f {
                    return Err(TargetError::ForbiddenEscape);
                }
                i += 3;
            } else {
                i += 1;
            }
        }
    }
    Ok(())
}

/// Percent-decodes a validated segment once.
pub fn decode_segment(seg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seg.len());
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'%' && i + 2 < seg.len() {
            if let (Some(h), Some(l)) = (hex_val(seg[i + 1]), hex_val(seg[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(seg[i]);
        i += 1;
    }
    out
}

/// Whether a validated segment, percent-decoded once, equals `expected` exactly. No allocation.
pub fn segment_equals(seg: &[u8], expected: &[u8]) -> bool {
    let mut i = 0;
    let mut j = 0;
    while i < seg.len() {
        let b = if seg[i] == b'%' {
            match (
                seg.get(i + 1).copied().and_then(hex_val),
                seg.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(h), Some(l)) => {
                    i += 3;
                    h << 4 | l
                }
                _ => return false,
            }
        } else {
            i += 1;
            seg[i - 1]
        };
        if expected.get(j) != Some(&b) {
            return false;
        }
        j += 1;
    }
    j == expected.len()
}

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

    #[test]
    fn hostile_paths_are_refused() {
        use TargetError::*;
        let cases: &[(&[u8], TargetError)] = &[
            (b"/v0/inboxes/X/../Y", DotOrEmptySegment),
            (b"/v0/inboxes/X/./Y", DotOrEmptySegment),
            (b"/v0/inboxes/X/%2e%2e/Y", ForbiddenEscape),
            (b"/v0/inboxes/X%2F..%2FY", ForbiddenEscape),
            (b"/v0/inboxes/X%2f..%2fY", ForbiddenEscape),
            (b"/v0/inboxes/%252e%252e/Y", ForbiddenEscape),
            (b"//inboxes/Y", DotOrEmptySegment),
            (b"/v0/inboxes//Y", DotOrEmptySegment),
            (b"/v0/inboxes/Y/", DotOrEmptySegment),
            (b"/v0/inboxes/Y;a=1", ForbiddenCharacter),
            (b"/v0/inboxes/X;/../Y", ForbiddenCharacter),
            (b"/v0/inboxes/X\\..\\Y", ForbiddenCharacter),
            (b"/v0/inboxes/X%5c..%5cY", ForbiddenEscape),
            (b"/v0/inboxes/X%00", ForbiddenEscape),
            (b"/v0/inboxes/X%0a", ForbiddenEscape),
            (b"/v0/inboxes/X%3bY", ForbiddenEscape),
            (b"/v0/inboxes/X%zz", ForbiddenEscape),
            (b"/v0/inboxes/X%2", ForbiddenEscape),
            (b"/v0/inboxes/X Y", ForbiddenCharacter),
            (b"/v0/inboxes/X\x7f", ForbiddenCharacter),
            (b"/v0/inboxes/\xc3\xa9", ForbiddenCharacter),
            (b"/v0/inboxes/X#f", ForbiddenCharacter),
        ];
        for (p, want) in cases {
            assert_eq!(
                validate_path(p),
                Err(*want),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(split_target(b"http://h/v0"), Err(NotOriginForm));
        assert_eq!(split_target(b"h:80"), Err(NotOriginForm));
        assert_eq!(split_target(b"*"), Err(NotOriginForm));
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            &b"/v0/inboxes/support@example.com"[..],
            b"/v0/inboxes/a%40b/messages",
            b"/v0/inboxes/X./m",
            b"/",
        ] {
            assert_eq!(validate_path(p), Ok(()), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn inbox_segment_is_decoded_once_and_compared_exactly() {
        assert!(segment_equals(b"a%40b", b"a@b"));
        assert!(segment_equals(b"a@b", b"a@b"));
        assert!(!segment_equals(b"a%40b", b"a%40b"));
        assert!(!segment_equals(b"A@b", b"a@b"));
        assert!(!segment_equals(b"a@b.", b"a@b"));
        assert!(!segment_equals(b"a@", b"a@b"));
        assert_eq!(decode_segment(b"a%40b%20"), b"a@b ");
    }
}
