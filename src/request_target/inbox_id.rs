//! The inbox-id rules, shared by the management API (path segments) and config (the inbox
//! directory): what an inbox id may hold, and how its path segment decodes.

pub const MAX_INBOX_ID_CHARS: usize = 254;

/// Checks an inbox id: 1 to 254 characters, no `/`, no control characters, not `.` or `..`.
pub fn validate(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("inbox_id must not be empty".into());
    }
    if id.chars().count() > MAX_INBOX_ID_CHARS {
        return Err(format!(
            "inbox_id must be at most {MAX_INBOX_ID_CHARS} characters"
        ));
    }
    if id.contains('/') {
        return Err("inbox_id must not contain '/'".into());
    }
    if id.chars().any(char::is_control) {
        return Err("inbox_id must not contain control characters".into());
    }
    if id == "." || id == ".." {
        return Err("inbox_id must not be '.' or '..'".into());
    }
    Ok(())
}

/// Decodes a raw `{inbox_id}` path segment once and validates the result.
pub fn decode_segment(raw: &[u8]) -> Result<String, String> {
    if raw.iter().any(|&b| b <= b' ' || b == 0x7f || b == b'\\') {
        return Err("inbox_id contains characters that are not allowed".into());
    }
    let malformed = raw.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err("inbox_id has a malformed percent-escape".into());
    }
    let decoded = percent_encoding::percent_decode(raw)
        .decode_utf8()
        .map_err(|_| "inbox_id must be valid UTF-8".to_owned())?
        .into_owned();
    validate(&decoded)?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_once_and_are_checked() {
        assert_eq!(decode_segment(b"a%40b").unwrap(), "a@b");
        assert_eq!(decode_segment(b"a%2540b").unwrap(), "a%40b");
        for bad in [
            &b""[..],
            b"a%2Fb",
            b"a%2",
            b"a%zz",
            b"%2e",
            b"%2E%2E",
            b"a%00",
            b"a b",
            b"%C0%AE",
            b"a\\b",
        ] {
            assert!(
                decode_segment(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_segment(&b"a".repeat(255)).is_err());
        assert!(decode_segment(&b"a".repeat(254)).is_ok());
    }
}
