//! Management request bodies: read lazily from a `BodySource`, parsed strictly (duplicate
//! members refused), validated field by field.

use async_trait::async_trait;
use bytes::Bytes;

use super::errors::{self, ApiError};
use super::{MAX_BODY_BYTES, MAX_NAME_CHARS};

/// Where a management request's body comes from: read lazily, only once the caller is
/// authenticated and the endpoint takes a body. The pingora glue reads the session; unit
/// tests hand in bytes.
#[async_trait]
pub trait BodySource: Send {
    /// The next chunk of the body; `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String>;
}

/// A body already in memory (tests, and requests without a body).
pub struct BytesBody(pub Option<Bytes>);

#[async_trait]
impl BodySource for BytesBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        Ok(self.0.take())
    }
}

/// Reads and validates the create body: JSON object with exactly one field, `name`.
pub(super) async fn read_create_body(
    headers: &http::HeaderMap,
    body_source: &mut dyn BodySource,
) -> Result<String, ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let mime = ct.split(|&b| b == b';').next().unwrap_or(b"");
    if !mime.trim_ascii().eq_ignore_ascii_case(b"application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body: Vec<u8> = Vec::new();
    loop {
        let chunk = body_source
            .next_chunk()
            .await
            .map_err(|e| ApiError::validation(&["body"], format!("could not read body: {e}")))?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    parse_create_body(&body)
}

/// Validates a create body; errors name the field.
pub fn parse_create_body(body: &[u8]) -> Result<String, ApiError> {
    let value = strict_json::parse(body)
        .map_err(|e| ApiError::validation(&["body"], format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::validation(
            &["body"],
            "body must be a JSON object",
        ));
    };
    let mut errors = Vec::new();
    for k in map.keys().filter(|k| k.as_str() != "name") {
        errors.push(errors::FieldError::new(
            &["body", k],
            format!("unknown field {k:?} (allowed: name)"),
        ));
    }
    let name = match map.get("name") {
        None => {
            errors.push(errors::FieldError::new(
                &["body", "name"],
                "name is required",
            ));
            None
        }
        Some(serde_json::Value::String(s)) => {
            let problem = if s.trim().is_empty() {
                Some("name must not be empty or only whitespace".to_owned())
            } else if s.chars().count() > MAX_NAME_CHARS {
                Some(format!("name must be at most {MAX_NAME_CHARS} characters"))
            } else if s.chars().any(char::is_control) {
                Some("name must not contain control characters".to_owned())
            } else {
                None
            };
            match problem {
                Some(p) => {
                    errors.push(errors::FieldError::new(&["body", "name"], p));
                    None
                }
                None => Some(s.clone()),
            }
        }
        Some(_) => {
            errors.push(errors::FieldError::new(
                &["body", "name"],
                "name must be a string",
            ));
            None
        }
    };
    match (name, errors.is_empty()) {
        (Some(n), true) => Ok(n),
        _ => Err(ApiError::Validation {
            message: errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            errors,
        }),
    }
}

/// JSON parsing that refuses duplicate object members (RFC 8259 leaves them undefined;
/// parsers disagree on which one wins, so a strict API refuses them).
mod strict_json {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    struct Strict(Value);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Strict;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
            Ok(Strict(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
            Ok(Strict(Value::from(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
            Ok(Strict(Value::String(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Strict, E> {
            Ok(Strict(Value::String(v)))
        }
        fn visit_unit<E>(self) -> Result<Strict, E> {
            Ok(Strict(Value::Null))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            let mut out = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(Strict(Value::Array(out)))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut out = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate member {k:?}"
                    )));
                }
                let Strict(v) = map.next_value()?;
                out.insert(k, v);
            }
            Ok(Strict(Value::Object(out)))
        }
    }

    /// Parses `bytes` as one JSON value; duplicate members anywhere are an error.
    pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
        serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (String, Vec<Vec<String>>) {
        match parse_create_body(body.as_bytes()).unwrap_err() {
            ApiError::Validation { message, errors } => {
                (message, errors.into_iter().map(|e| e.path).collect())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_body_validation() {
        assert_eq!(parse_create_body(br#"{"name":"ci"}"#).unwrap(), "ci");
        assert_eq!(err("{").1, [["body"]]);
        assert_eq!(err("[]").1, [["body"]]);
        assert_eq!(err("{}").1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":""}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":"  \t"}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":"a\u0001"}"#).1, [["body", "name"]]);
        assert_eq!(err(r#"{"name":5}"#).1, [["body", "name"]]);
        let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(257));
        assert_eq!(err(&long).1, [["body", "name"]]);
        let ok = format!(r#"{{"name":"{}"}}"#, "é".repeat(256));
        assert!(parse_create_body(ok.as_bytes()).is_ok());
        // Duplicate members are refused at any depth, whichever value comes last.
        for dup in [
            r#"{"name":5,"name":"ok"}"#,
            r#"{"name":"ok","name":"ok"}"#,
            r#"{"name":"ok","x":{"a":1,"a":2}}"#,
            r#"{"name":"ok","x":[{"a":1,"a":1}]}"#,
            r#"{"name":"ok","\u006eame":"ok"}"#,
        ] {
            let (msg, paths) = err(dup);
            assert_eq!(paths, [["body"]], "{dup}");
            assert!(msg.contains("duplicate member"), "{dup}: {msg}");
        }
        let (msg, paths) = err(r#"{"name":"a","expires_at":"2027"}"#);
        assert_eq!(paths, [["body", "expires_at"]]);
        assert!(msg.contains("expires_at"));
    }
}
