//! Header rewrites straight on the `http` map, where pingora's own setters cost allocations.
//!
//! pingora 0.9's `insert_header` turns every name into a `HeaderName` by copying it (custom
//! names such as `x-agentry-inbox-id` are not interned by `http`), then clones that name into
//! its case-preserving map: two allocations per header, and the case map grows beside the
//! value map. pingora offers no mutable access to the map, but its headers convert to and from
//! `http`'s `Parts` by moving them. These functions take the parts out, let the caller edit the
//! map with prebuilt `HeaderName`s (free to clone), and put them back.
//!
//! What changes for the peer: header names go out in one spelling whatever the client sent
//! (pingora title-cases a dozen common names such as `Host` and `Content-Type`, the rest go
//! lower-case, as from any HTTP/2 hop); names are case-insensitive in HTTP. What does not:
//! the request target (an absolute-form or non-UTF-8 target is restored byte for byte) and a
//! custom reason phrase.

use http::{request, response, Request, Response};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Runs `edit` on the request's `http` parts and puts them back, target unchanged.
pub fn edit_request<R>(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut request::Parts) -> R,
) -> Result<R> {
    // Origin-form targets round-trip through the URI; anything else is kept aside (rare).
    let target_from_uri = req
        .uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path())
        && req.raw_path_is_utf8();
    let kept_target = (!target_from_uri).then(|| req.raw_path().to_vec());
    let mut parts: request::Parts =
        std::mem::replace(req, Request::new(()).into_parts().0.into()).into();
    let out = edit(&mut parts);
    *req = parts.into();
    if let Some(target) = kept_target {
        req.set_raw_path(&target)?;
    }
    Ok(out)
}

/// Runs `edit` on the response's `http` parts and puts them back, reason phrase unchanged.
pub fn edit_response<R>(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut response::Parts) -> R,
) -> Result<R> {
    let custom_reason = match resp.get_reason_phrase() {
        r if r == resp.status.canonical_reason() => None,
        r => r.map(str::to_owned),
    };
    let mut parts: response::Parts =
        std::mem::replace(resp, Response::new(()).into_parts().0.into()).into();
    let out = edit(&mut parts);
    *resp = parts.into();
    if custom_reason.is_some() {
        resp.set_reason_phrase(custom_reason.as_deref())?;
    }
    Ok(out)
}

/// A response of the gateway's own, with room for `headers` headers, built without pingora's
/// case map (its names are all ours, canonical already).
pub fn own_response(status: u16, headers: usize) -> Result<response::Parts> {
    let mut parts = Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(status).map_err(|_| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "invalid status for a gateway answer",
        )
    })?;
    parts.headers.reserve(headers);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use http::HeaderValue;

    const X_ADDED: HeaderName = HeaderName::from_static("x-added");

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    fn request(target: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        req.insert_header("X-Client-Case", "1").unwrap();
        req.insert_header("content-type", "text/plain").unwrap();
        req
    }

    #[test]
    fn request_edits_land_and_names_go_out_in_canonical_case() {
        let mut req = request(b"/v0/inboxes/a%40b/m?x=1");
        edit_request(&mut req, |p| {
            p.headers.insert(X_ADDED, HeaderValue::from_static("v"));
        })
        .unwrap();
        assert_eq!(req.raw_path(), b"/v0/inboxes/a%40b/m?x=1");
        assert_eq!(req.method, "GET");
        assert_eq!(
            wire(&req),
            "x-client-case: 1\r\nContent-Type: text/plain\r\nx-added: v\r\n"
        );
    }

    #[test]
    fn targets_that_do_not_round_trip_through_the_uri_are_kept_byte_for_byte() {
        for target in [
            &b"http://example.com/v0/inboxes/x"[..],
            b"/caf\xc3\xa9/\xff\xfe?q=\x80",
            b"*",
            b"/a//b/../c?",
            b"?only=query",
        ] {
            let mut req = request(target);
            let before = req.raw_path().to_vec();
            let utf8 = req.raw_path_is_utf8();
            edit_request(&mut req, |_| ()).unwrap();
            assert_eq!(req.raw_path(), &before[..], "{target:?}");
            assert_eq!(req.raw_path_is_utf8(), utf8, "{target:?}");
        }
    }

    #[test]
    fn responses_keep_status_and_a_custom_reason_phrase() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.set_reason_phrase(Some("Fine Enough")).unwrap();
        resp.insert_header("Server", "up").unwrap();
        edit_response(&mut resp, |p| {
            p.headers.insert(X_ADDED, HeaderValue::from_static("v"));
        })
        .unwrap();
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Enough"));
        assert_eq!(resp.headers["x-added"], "v");
        assert_eq!(resp.headers["server"], "up");

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut ok, |_| ()).unwrap();
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn own_responses_refuse_an_impossible_status() {
        assert_eq!(own_response(401, 3).unwrap().status, 401);
        assert!(own_response(1000, 3).is_err());
    }
}
