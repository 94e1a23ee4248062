//! The request line as the client sent it. Pingora rewrites some malformed lines before it
//! parses them, so the gateway reads the line twice from the bytes that arrived, here only:
//! [`scan_line`] over the connection's raw reads (fed by `header_deadline`'s stream, the one
//! place that sees them) and [`check_request_line`] over the head pingora kept; the decision
//! steps refuse a line either finds wrong.

use crate::request_target::TargetError;

/// The request line of the head being read, as the client sent it: pingora rewrites some
/// malformed lines before parsing (it percent-encodes spaces, controls, `"<>` and non-ASCII
/// bytes in the target, and drops a `#` fragment), so only the raw bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLine {
    /// Not started (empty lines before it are skipped).
    Before,
    /// Reading it: spaces seen, and whether a byte pingora would rewrite was seen.
    Reading { spaces: u8, bad: bool },
    /// Ended: whether it was `METHOD SP target SP version` with only plain bytes.
    Done { ok: bool },
}

/// Advances the request-line check over `bytes`: the line's bytes are counted and classified
/// a slice at a time (memchr finds its end), not through a state change per byte.
pub fn scan_line(state: RequestLine, bytes: &[u8]) -> RequestLine {
    let (spaces, bad, rest) = match state {
        RequestLine::Done { .. } => return state,
        // The line's first byte (the method's) must be plain: a space there is refused too.
        RequestLine::Before => match bytes.iter().position(|&b| b != b'\r' && b != b'\n') {
            Some(start) => (0u8, !plain_line_byte(bytes[start]), &bytes[start + 1..]),
            None => return state,
        },
        RequestLine::Reading { spaces, bad } => (spaces, bad, bytes),
    };
    let (line, ended) = match memchr::memchr(b'\n', rest) {
        Some(end) => (&rest[..end], true),
        None => (rest, false),
    };
    // Branch-free folds: the compiler runs them many bytes at a time.
    let more_spaces = line.iter().fold(0usize, |n, &b| n + usize::from(b == b' '));
    let spaces = spaces.saturating_add(u8::try_from(more_spaces).unwrap_or(u8::MAX));
    // A CR is fine only right before the LF; the parser refuses any other.
    let bad = bad
        || line
            .iter()
            .fold(false, |bad, &b| bad | !(LINE_BYTE[usize::from(b)]));
    if ended {
        RequestLine::Done {
            ok: !bad && spaces == 2,
        }
    } else {
        RequestLine::Reading { spaces, bad }
    }
}

/// [`plain_line_byte`], plus the space and CR a request line also holds, as a table.
static LINE_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = plain_line_byte(b as u8) || b == b' ' as usize || b == b'\r' as usize;
        b += 1;
    }
    t
};

/// Bytes of a request line (besides its two spaces) that pingora takes as they are.
pub(crate) const fn plain_line_byte(b: u8) -> bool {
    b >= 0x21 && b < 0x7f && !matches!(b, b'#' | b'"' | b'<' | b'>')
}

/// Checks the request line as the client sent it (pingora's raw head, leading empty lines
/// skipped) against what was parsed from it: pingora quietly drops a `#` fragment and takes
/// some targets with spaces, so the gateway would decide on bytes the client did not send.
/// Anything but `METHOD SP target SP HTTP/1.x` with exactly the parsed target is refused.
pub fn check_request_line(
    raw_head: &[u8],
    method: &[u8],
    target: &[u8],
) -> Result<(), TargetError> {
    let start = raw_head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(raw_head.len());
    let head = &raw_head[start..];
    let end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let rest = line
        .strip_prefix(method)
        .and_then(|r| r.strip_prefix(b" "))
        .and_then(|r| r.strip_prefix(target))
        .ok_or(TargetError::MalformedRequestLine)?;
    if rest == b" HTTP/1.1" || rest == b" HTTP/1.0" {
        Ok(())
    } else {
        Err(TargetError::MalformedRequestLine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The request-line check one byte at a time: the definition `scan_line` must match.
    fn reference_line(mut state: RequestLine, bytes: &[u8]) -> RequestLine {
        for &b in bytes {
            state = match state {
                RequestLine::Done { .. } => return state,
                RequestLine::Before if b == b'\r' || b == b'\n' => RequestLine::Before,
                RequestLine::Before => RequestLine::Reading {
                    spaces: 0,
                    bad: !plain_line_byte(b),
                },
                RequestLine::Reading { spaces, bad } => match b {
                    b'\n' => RequestLine::Done {
                        ok: !bad && spaces == 2,
                    },
                    b' ' => RequestLine::Reading {
                        spaces: spaces.saturating_add(1),
                        bad,
                    },
                    b'\r' => RequestLine::Reading { spaces, bad },
                    _ => RequestLine::Reading {
                        spaces,
                        bad: bad || !plain_line_byte(b),
                    },
                },
            };
        }
        state
    }

    fn line_after(chunks: &[&[u8]]) -> RequestLine {
        chunks
            .iter()
            .fold(RequestLine::Before, |l, c| scan_line(l, c))
    }

    #[test]
    fn request_lines_pingora_would_rewrite_are_seen() {
        for ok in [
            &b"GET /a?b=c HTTP/1.1\r\n"[..],
            b"\r\n\r\nPOST /x HTTP/1.0\n",
            b"GET /a|{}^`\\ HTTP/1.1\r\n",
        ] {
            assert_eq!(line_after(&[ok]), RequestLine::Done { ok: true }, "{ok:?}");
            let bytes: Vec<&[u8]> = ok.chunks(1).collect();
            assert_eq!(line_after(&bytes), RequestLine::Done { ok: true });
        }
        for bad in [
            &b"GET /a#f HTTP/1.1\r\n"[..],
            b"GET /a b HTTP/1.1\r\n",
            b"GET /a  HTTP/1.1\r\n",
            b"GET  /a HTTP/1.1\r\n",
            b"GET /a\tHTTP/1.1\r\n",
            b"GET /a\x00 HTTP/1.1\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n",
            b"GET /a\x7f HTTP/1.1\r\n",
            b"GET /<a> HTTP/1.1\r\n",
            b"GET /\"a HTTP/1.1\r\n",
            b"GET /a HTTP/1.1 \r\n",
            b"GET /a\n",
        ] {
            assert_eq!(
                line_after(&[bad]),
                RequestLine::Done { ok: false },
                "{bad:?}"
            );
        }
        assert_eq!(
            line_after(&[b"GET /a HTTP/1.1"]),
            RequestLine::Reading {
                spaces: 2,
                bad: false
            }
        );
    }

    #[test]
    fn the_request_line_must_be_what_was_parsed() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", b"/a?b=c"),
            (b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET /a HTTP/1.0\n\n", b"/a"),
        ];
        for (raw, target) in ok {
            assert_eq!(check_request_line(raw, b"GET", target), Ok(()));
        }
        let bad: &[(&[u8], &[u8])] = &[
            (b"GET /a#frag HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET /a b HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET /a b HTTP/1.1\r\n\r\n", b"/ab"),
            (b"GET /a?x=b c HTTP/1.1\r\n\r\n", b"/a?x=b"),
            (b"GET /a  HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET  /a HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET\t/a HTTP/1.1\r\n\r\n", b"/a"),
            (b"GET /a HTTP/1.1 \r\n\r\n", b"/a"),
            (b"GET /a HTTP/2.0\r\n\r\n", b"/a"),
            (b"", b"/a"),
        ];
        for (raw, target) in bad {
            assert_eq!(
                check_request_line(raw, b"GET", target),
                Err(TargetError::MalformedRequestLine),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// `scan_line` fed in pieces agrees with its byte-at-a-time definition after each.
        #[test]
        fn request_line_same_as_byte_at_a_time(
            bytes in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b' '), Just(b'#'), Just(0u8),
                Just(0x7f), Just(0xc3), Just(b'\t'), Just(b'/'), any::<u8>()
            ], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            let (mut fast, mut slow) = (RequestLine::Before, RequestLine::Before);
            let mut at = 0;
            for end in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                fast = scan_line(fast, &bytes[at..end]);
                slow = reference_line(slow, &bytes[at..end]);
                prop_assert_eq!(fast, slow);
                at = end;
            }
        }

    }
}
