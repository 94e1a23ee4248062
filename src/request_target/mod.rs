//! The request target, parsed once into its one meaning: [`RequestTarget::parse`] admits a
//! target only in canonical form, and [`router::Router`] decides on that form which API or
//! route it belongs to. Nothing else in the crate compares path bytes.
//!
//! Pingora does no path normalization, and neither do we: a path is admitted only if no
//! RFC 3986 normalization or common server decoding (percent-decoding, overlong UTF-8, NFKC)
//! could make it mean another path. The rules, one per kind of escape:
//! - an escape of an unreserved character (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) is the
//!   character itself to any normalizer, so a target holding one is not canonical: 400
//!   `non_canonical_target` (refused, not rewritten, so what is forwarded is what was checked);
//! - escapes of `/`, `\`, `%`, `;`, `.` and control bytes, malformed escapes, non-UTF-8 and
//!   look-alikes of `.`, `/`, `\`: 400 `bad_request_target`;
//! - other escapes (reserved characters, UTF-8) stay as sent; hex case does not matter.
//!
//! Admitted paths are forwarded byte for byte; the `{inbox_id}` segment is percent-decoded once
//! and compared exactly with the key's inbox.

pub mod inbox_id;
pub mod lookalike;
pub mod router;
pub mod template;

pub use router::{ApiPath, Routed, Router};
pub use template::RouteTemplate;

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
    /// Percent-escapes that are not valid UTF-8 (overlong forms included), or that decode to
    /// a character a lenient upstream could read as `.`, `/` or `\`.
    ForbiddenUnicode,
    /// The request line is not `METHOD SP target SP version` with the target as parsed
    /// (a space or `#` in the target, extra spaces).
    MalformedRequestLine,
    /// An escape of an unreserved character, or a route's literal segment spelled other than
    /// the route spells it (escaped, another letter case, fullwidth): a normalizing upstream
    /// would read another path than the one checked.
    NonCanonical,
    /// A `_method` query parameter: an upstream that honours it would run another method than
    /// the one the gateway checked.
    MethodOverride,
}

impl TargetError {
    pub fn message(self) -> &'static str {
        match self {
            TargetError::NotOriginForm => "request target must be an absolute path (origin-form)",
            TargetError::DotOrEmptySegment => "path must not contain empty, '.' or '..' segments",
            TargetError::ForbiddenCharacter => "path contains a character that is not allowed",
            TargetError::ForbiddenEscape => "path contains a percent-escape that is not allowed",
            TargetError::ForbiddenUnicode => {
                "path contains percent-escapes that are not valid UTF-8 or decode to a look-alike of '.', '/' or '\\'"
            }
            TargetError::MalformedRequestLine => {
                "request line must be METHOD, one space, the target (no spaces or '#'), one space, the HTTP version"
            }
            TargetError::NonCanonical => {
                "request target is not in canonical form: send unreserved characters (A-Z a-z 0-9 - . _ ~) unescaped and spell each path segment exactly as the API does"
            }
            TargetError::MethodOverride => {
                "method overrides are not accepted (_method query parameter): send the request with its real method"
            }
        }
    }

    /// The error's `code` in the JSON body (and the metric reason's label).
    pub fn code(self) -> &'static str {
        match self {
            TargetError::NonCanonical => "non_canonical_target",
            TargetError::MethodOverride => "method_override",
            _ => "bad_request_target",
        }
    }
}

/// A request target admitted in canonical form: its path and query, each checked. Built only
/// by [`RequestTarget::parse`] (or [`RequestTarget::from_parts`]), so holding one means the
/// rules in the module doc held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTarget<'a> {
    path: &'a [u8],
    query: &'a [u8],
    /// Where each of the first [`KEPT_SEGMENTS`] segments ends in `path`, found once so that
    /// the router's probes and templates do not split the path again each.
    ends: [u32; KEPT_SEGMENTS],
    kept: u8,
}

/// Segment bounds a [`RequestTarget`] keeps; segments past them are found on demand.
const KEPT_SEGMENTS: usize = 12;

impl<'a> RequestTarget<'a> {
    /// Parses a raw request target once: origin-form, every path segment by the rules in the
    /// module doc, the query's bytes, and no `_method` override in the query.
    pub fn parse(raw: &'a [u8]) -> Result<RequestTarget<'a>, TargetError> {
        let (path, query) = split_target(raw)?;
        RequestTarget::from_parts(path, query)
    }

    /// [`RequestTarget::parse`] for a target already split at its `?`.
    pub fn from_parts(path: &'a [u8], query: &'a [u8]) -> Result<RequestTarget<'a>, TargetError> {
        validate_path(path)?;
        validate_query(query)?;
        let mut ends = [0u32; KEPT_SEGMENTS];
        let mut kept = 0;
        let slashes = memchr::memchr_iter(b'/', &path[1..]).map(|i| i + 1);
        for end in slashes.chain(std::iter::once(path.len())) {
            if kept == KEPT_SEGMENTS {
                break;
            }
            ends[kept] = end as u32;
            kept += 1;
        }
        Ok(RequestTarget {
            path,
            query,
            ends,
            kept: kept as u8,
        })
    }

    /// The path, query split off.
    pub fn path(&self) -> &'a [u8] {
        self.path
    }

    /// The query without its `?` (empty when there is none).
    pub fn query(&self) -> &'a [u8] {
        self.query
    }

    /// The path's segments as sent (the leading `/` dropped; `/` alone has one empty segment),
    /// from the bounds found at parse time.
    pub fn segments(&self) -> Segments<'_, 'a> {
        Segments {
            target: self,
            next: 0,
            start: 1,
        }
    }
}

/// The segments of a [`RequestTarget`]: its kept bounds first, then (for a path longer than
/// they cover) one search for `/` per further segment.
#[derive(Debug, Clone)]
pub struct Segments<'t, 'a> {
    target: &'t RequestTarget<'a>,
    next: usize,
    start: usize,
}

impl<'a> Iterator for Segments<'_, 'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let path = self.target.path;
        if self.start > path.len() {
            return None;
        }
        let end = if self.next < usize::from(self.target.kept) {
            self.target.ends[self.next] as usize
        } else {
            memchr::memchr(b'/', &path[self.start..]).map_or(path.len(), |i| self.start + i)
        };
        self.next += 1;
        let seg = &path[self.start..end];
        self.start = end + 1;
        Some(seg)
    }
}

/// RFC 3986 `pchar` minus `;` (matrix parameters are refused) plus `%` (checked separately).
#[inline]
pub(crate) fn is_pchar_byte(b: u8) -> bool {
    PCHAR[usize::from(b)]
}

/// [`pchar_rule`] as a table: it is asked once per path byte on every request.
static PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = pchar_rule(b as u8);
        b += 1;
    }
    t
};

const fn pchar_rule(b: u8) -> bool {
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

/// RFC 3986 §2.3 unreserved characters: escaped or not, the same character.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XX` escape at `seg[i]` stands for.
fn escape_at(seg: &[u8], i: usize) -> Option<u8> {
    if seg.get(i) != Some(&b'%') {
        return None;
    }
    Some(hex_val(*seg.get(i + 1)?)? << 4 | hex_val(*seg.get(i + 2)?)?)
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

/// Checks a query string: only visible ASCII, no `#`, and no `_method` parameter (by any
/// spelling: escaped, in any letter case, after `&` or `;`; see [`reads_as_method`]). The bytes
/// in one branch-free pass; then only the first byte of each parameter (memchr finds them), and
/// a parameter whose name starts with `_`, `%`, `.`, `[` or `+` is read again.
pub fn validate_query(query: &[u8]) -> Result<(), TargetError> {
    let visible = query
        .iter()
        .fold(true, |ok, &b| ok & (b > b' ') & (b < 0x7f) & (b != b'#'));
    if !visible {
        return Err(TargetError::ForbiddenCharacter);
    }
    let mut start = 0;
    loop {
        let rest = &query[start..];
        if rest
            .first()
            .is_some_and(|b| matches!(b, b'_' | b'%' | b'.' | b'[' | b'+'))
        {
            let end = memchr::memchr3(b'&', b';', b'=', rest).unwrap_or(rest.len());
            if reads_as_method(&rest[..end]) {
                return Err(TargetError::MethodOverride);
            }
        }
        match memchr::memchr2(b'&', b';', rest) {
            Some(i) => start += i + 1,
            None => return Ok(()),
        }
    }
}

/// Whether a raw parameter name reads `_method`: decoded, `+` as space, leading spaces dropped,
/// any case, an array suffix (`_method[]`, qs and PHP) cut, and `.`, space or `[` read as `_`
/// (PHP's name mangling: `.method`, `[method`). Compared as it is decoded, without allocating:
/// it runs on every query holding `_`, `.`, `[` or `%`.
fn reads_as_method(name: &[u8]) -> bool {
    const WANT: &[u8; 7] = b"_method";
    let (mut i, mut matched, mut started) = (0, 0, false);
    while i < name.len() {
        let (b, used) = match escape_at(name, i) {
            Some(d) => (d, 3),
            None if name[i] == b'+' => (b' ', 1),
            None => (name[i], 1),
        };
        i += used;
        if !started && b == b' ' {
            continue;
        }
        if started && b == b'[' {
            break;
        }
        started = true;
        let c = match b {
            b'.' | b' ' | b'[' => b'_',
            other => other.to_ascii_lowercase(),
        };
        if WANT.get(matched) != Some(&c) {
            return false;
        }
        matched += 1;
    }
    matched == WANT.len()
}

/// The character at `seg[i]` as a lenient server would read it, and how many bytes it took:
/// an escape decoded, and an escaped fullwidth ASCII form (U+FF01..U+FF5E, which NFKC maps to
/// ASCII) as its ASCII character. `None` for a malformed escape.
fn normalized_at(seg: &[u8], i: usize) -> Option<(u8, usize)> {
    if seg[i] != b'%' {
        return Some((seg[i], 1));
    }
    let d = escape_at(seg, i)?;
    if d == 0xEF {
        if let (Some(b2), Some(b3)) = (escape_at(seg, i + 3), escape_at(seg, i + 6)) {
            let cp = 0xF000 | u32::from(b2 & 0x3F) << 6 | u32::from(b3 & 0x3F);
            if (0xFF01..=0xFF5E).contains(&cp) && b2 & 0xC0 == 0x80 && b3 & 0xC0 == 0x80 {
                return Some(((cp - 0xFEE0) as u8, 9));
            }
        }
    }
    Some((d, 3))
}

/// Whether a raw segment may read as the plain ASCII `literal` to some lenient server: after
/// percent-decoding, folding fullwidth forms and ignoring ASCII letter case; with a format
/// suffix (`messages.json`, which Rails and older Spring route as `messages`); or when it holds
/// any non-ASCII character at all (NFKC and Unicode case folding map hundreds of them onto
/// ASCII letters, `-`, `@` and `:`, e.g. `ſ`, `ⅿ`, `K`, `﹣`). The router calls a literal
/// matched this way, but not byte for byte, non-canonical. Hand-written rather than
/// `percent-encoding`: it runs on every routed segment and must not allocate.
pub fn loosely_equal(seg: &[u8], literal: &[u8]) -> bool {
    if memchr::memchr(b'%', seg).is_none() {
        return seg.len() >= literal.len()
            && seg[..literal.len()].eq_ignore_ascii_case(literal)
            && (seg.len() == literal.len() || seg[literal.len()] == b'.');
    }
    let (mut i, mut j) = (0, 0);
    let mut equal = true;
    while i < seg.len() {
        let Some((b, used)) = normalized_at(seg, i) else {
            return false;
        };
        if b >= 0x80 {
            return true;
        }
        if equal {
            match literal.get(j) {
                Some(l) if l.eq_ignore_ascii_case(&b) => {}
                None if b == b'.' => equal = false,
                _ => return false,
            }
        }
        i += used;
        j += 1;
    }
    j >= literal.len()
}

/// Checks every segment of an origin-form path (see the module doc for the rules).
pub fn validate_path(path: &[u8]) -> Result<(), TargetError> {
    if path.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    if path == b"/" {
        return Ok(());
    }
    let rest = &path[1..];
    // The common case, plain pchars and slashes only, in one branch-free pass over the whole
    // path; then only the segments' lengths and dots are left to look at.
    if rest
        .iter()
        .fold(true, |ok, &b| ok & PLAIN_OR_SLASH[usize::from(b)])
    {
        return plain_segments(rest);
    }
    segment_by_segment(rest)
}

/// Every segment of `rest` (a path without its leading slash) through [`validate_segment`].
fn segment_by_segment(rest: &[u8]) -> Result<(), TargetError> {
    for seg in rest.split(|&b| b == b'/') {
        validate_segment(seg)?;
    }
    Ok(())
}

/// The segments of `rest`, whose bytes are all plain pchars or slashes: none may be empty,
/// `.` or `..`.
fn plain_segments(rest: &[u8]) -> Result<(), TargetError> {
    // A plain split: for a handful of short segments memchr's per-call set-up costs more.
    if rest.split(|&b| b == b'/').any(dot_or_empty) {
        return Err(TargetError::DotOrEmptySegment);
    }
    Ok(())
}

/// A segment that names no resource of its own: empty, `.` or `..`.
fn dot_or_empty(seg: &[u8]) -> bool {
    matches!(seg, b"" | b"." | b"..")
}

/// Bytes a segment takes as they are (pchars other than `%`), and the slash between segments.
static PLAIN_OR_SLASH: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (pchar_rule(b as u8) && b != b'%' as usize) || b == b'/' as usize;
        b += 1;
    }
    t
};

fn validate_segment(seg: &[u8]) -> Result<(), TargetError> {
    if dot_or_empty(seg) {
        return Err(TargetError::DotOrEmptySegment);
    }
    // The common case, a segment of plain pchars, in one branch-free pass.
    if seg
        .iter()
        .fold(true, |ok, &b| ok & is_pchar_byte(b) & (b != b'%'))
    {
        return Ok(());
    }
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if !is_pchar_byte(b) {
            return Err(TargetError::ForbiddenCharacter);
        }
        if b != b'%' {
            i += 1;
            continue;
        }
        let d = escape_at(seg, i).ok_or(TargetError::ForbiddenEscape)?;
        if d < 0x80 {
            if matches!(d, b'/' | b'\\' | b'.' | b'%' | b';') || d < 0x20 || d == 0x7f {
                return Err(TargetError::ForbiddenEscape);
            }
            if is_unreserved(d) {
                return Err(TargetError::NonCanonical);
            }
            i += 3;
            continue;
        }
        // A non-ASCII byte can only come from escapes (raw ones are not pchar): the escapes
        // of one character must together be valid UTF-8 (no overlong forms, no surrogates).
        let len = match d {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(TargetError::ForbiddenUnicode),
        };
        let mut buf = [d, 0, 0, 0];
        for (k, slot) in buf.iter_mut().enumerate().take(len).skip(1) {
            *slot = escape_at(seg, i + 3 * k).ok_or(TargetError::ForbiddenUnicode)?;
        }
        let c = std::str::from_utf8(&buf[..len])
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or(TargetError::ForbiddenUnicode)?;
        if lookalike::is_dot_slash_lookalike(c) {
            return Err(TargetError::ForbiddenUnicode);
        }
        i += 3 * len;
    }
    Ok(())
}

/// Percent-decodes a validated segment once.
pub fn decode_segment(seg: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(seg).collect()
}

/// Whether a validated segment, percent-decoded once, equals `expected` exactly. Hand-written
/// instead of `percent-encoding`: it runs on every proxied request and must not allocate.
pub fn segment_equals(seg: &[u8], expected: &[u8]) -> bool {
    let mut i = 0;
    let mut j = 0;
    while i < seg.len() {
        let b = if seg[i] == b'%' {
            match escape_at(seg, i) {
                Some(d) => {
                    i += 3;
                    d
                }
                None => return false,
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

#[cfg(test)]
mod tests;
