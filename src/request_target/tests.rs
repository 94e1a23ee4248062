//! The target rules, by example and by property.

use super::*;

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

#[test]
fn escapes_must_be_utf8_and_no_lookalikes() {
    use TargetError::*;
    for (p, want) in [
        // Overlong forms of '.', '/', '\' and of 'A'.
        (&b"/v0/inboxes/X/%C0%AE%C0%AE/Y"[..], ForbiddenUnicode),
        (b"/v0/inboxes/X/%c0%ae", ForbiddenUnicode),
        (b"/v0/inboxes/X%C0%AF..", ForbiddenUnicode),
        (b"/v0/inboxes/X%C1%9C", ForbiddenUnicode),
        (b"/v0/inboxes/X%E0%80%AE", ForbiddenUnicode),
        (b"/v0/inboxes/X%F0%80%80%AE", ForbiddenUnicode),
        (b"/v0/inboxes/X%C1%81", ForbiddenUnicode),
        // Not UTF-8 at all: lone continuation, truncated, surrogate, beyond U+10FFFF.
        (b"/v0/inboxes/X%80", ForbiddenUnicode),
        (b"/v0/inboxes/X%C3", ForbiddenUnicode),
        (b"/v0/inboxes/X%C3Y", ForbiddenUnicode),
        (b"/v0/inboxes/X%E2%80", ForbiddenUnicode),
        (b"/v0/inboxes/X%ED%A0%80", ForbiddenUnicode),
        (b"/v0/inboxes/X%F4%90%80%80", ForbiddenUnicode),
        (b"/v0/inboxes/X%FF", ForbiddenUnicode),
        (b"/v0/inboxes/X%C3%2E", ForbiddenUnicode),
        // NFKC look-alikes: fullwidth . / \, one- and two-dot leaders, ellipsis, small stop.
        (b"/v0/inboxes/X/%EF%BC%8E%EF%BC%8E/Y", ForbiddenUnicode),
        (b"/v0/inboxes/X%EF%BC%8FY", ForbiddenUnicode),
        (b"/v0/inboxes/X%EF%BC%BCY", ForbiddenUnicode),
        (b"/v0/inboxes/X/%E2%80%A4%E2%80%A4", ForbiddenUnicode),
        (b"/v0/inboxes/X/%E2%80%A5", ForbiddenUnicode),
        (b"/v0/inboxes/X/%e2%80%a6", ForbiddenUnicode),
        (b"/v0/inboxes/X/%EF%B9%92", ForbiddenUnicode),
        (b"/v0/inboxes/X%EF%B9%A8Y", ForbiddenUnicode),
        (b"/v0/inboxes/X%E2%88%95Y", ForbiddenUnicode),
        (b"/v0/inboxes/X%E2%81%84Y", ForbiddenUnicode),
    ] {
        assert_eq!(
            validate_path(p),
            Err(want),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    for p in [
        &b"/v0/inboxes/caf%C3%A9"[..],
        b"/v0/inboxes/%E6%97%A5%E6%9C%AC",
        b"/v0/inboxes/%F0%9F%93%AC/m",
        b"/v0/inboxes/%EF%BD%81",
    ] {
        assert_eq!(validate_path(p), Ok(()), "{}", String::from_utf8_lossy(p));
    }
}

/// The segment-by-segment check that `validate_path` shortcuts for plain paths.
fn reference(path: &[u8]) -> Result<(), TargetError> {
    match path {
        b"/" => Ok(()),
        _ => segment_by_segment(&path[1..]),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 8192, ..Default::default() })]
    #[test]
    fn the_plain_shortcut_agrees_with_segment_by_segment(
        bytes in proptest::collection::vec(
            proptest::sample::select(&b"/..//.a%2e%2Fz9@-~!$&'()*+,;=: \x00\x7f\xc3#?"[..]),
            0..24,
        )
    ) {
        let mut path = vec![b'/'];
        path.extend_from_slice(&bytes);
        proptest::prop_assert_eq!(validate_path(&path), reference(&path), "{:?}", String::from_utf8_lossy(&path));
    }
}

#[test]
fn plain_paths_with_empty_or_dot_segments_are_refused_wherever_they_are() {
    for p in [
        &b"//"[..],
        b"/.",
        b"/..",
        b"/a/",
        b"/a//b",
        b"/./a",
        b"/../a",
        b"/a/.",
        b"/a/..",
        b"/a/./b",
        b"/a/../b",
        b"/a/b/",
    ] {
        assert_eq!(
            validate_path(p),
            Err(TargetError::DotOrEmptySegment),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    for p in [&b"/.a"[..], b"/a.", b"/...", b"/a/.b/..c/d..", b"/a/b"] {
        assert_eq!(validate_path(p), Ok(()), "{}", String::from_utf8_lossy(p));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 4096, ..Default::default() })]
    /// The kept segment bounds (and the search past them) give exactly the path's split.
    #[test]
    fn segments_are_the_paths_split(
        segs in proptest::collection::vec("[a-z0-9@~-]{1,6}", 1..30)
    ) {
        let path = format!("/{}", segs.join("/"));
        if let Ok(t) = RequestTarget::from_parts(path.as_bytes(), b"") {
            let got: Vec<&[u8]> = t.segments().collect();
            let want: Vec<&[u8]> = path.as_bytes()[1..].split(|&b| b == b'/').collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn the_root_path_has_one_empty_segment() {
    let t = RequestTarget::from_parts(b"/", b"").unwrap();
    assert_eq!(t.segments().collect::<Vec<_>>(), vec![&b""[..]]);
    let t = RequestTarget::from_parts(b"/a", b"").unwrap();
    assert_eq!(t.segments().collect::<Vec<_>>(), vec![&b"a"[..]]);
}
