//! Management request bodies: read lazily from a `BodySource`, parsed strictly (duplicate
//! members refused), validated field by field.

use async_trait::async_trait;
use bytes::Bytes;

use super::errors::{self, ApiError};
use super::{MAX_BODY_BYTES, MAX_NAME_CHARS};
use crate::permissions::{Permissions, Vocabulary};

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

/// Reads a JSON body (content type, size) and validates it as `kind`.
pub(super) async fn read_key_body(
    headers: &http::HeaderMap,
    body_source: &mut dyn BodySource,
    kind: BodyKind,
    rules: BodyRules<'_>,
) -> Result<KeyFields, ApiError> {
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
    parse_key_body(&body, kind, rules)
}

/// What a create or update body may set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyFields {
    pub name: Option<String>,
    pub permissions: Option<Permissions>,
    /// Microseconds since the epoch.
    pub expires_at_us: Option<i64>,
}

/// What a body is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules<'a> {
    pub vocabulary: &'a Vocabulary,
    /// Now, in µs since the epoch (expiry must be later).
    pub now_us: i64,
    /// `keys.max_lifetime_days`, when set.
    pub max_lifetime: Option<std::time::Duration>,
}

/// Which body: a create (`name` required; `permissions`, `expires_at`) or an update
/// (`name` and/or `permissions`; expiry is immutable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Create,
    Update,
}

impl BodyKind {
    fn allowed(self) -> &'static [&'static str] {
        match self {
            BodyKind::Create => &["name", "permissions", "expires_at"],
            BodyKind::Update => &["name", "permissions"],
        }
    }
}

fn check_name(s: &str) -> Option<String> {
    if s.trim().is_empty() {
        Some("name must not be empty or only whitespace".to_owned())
    } else if s.chars().count() > MAX_NAME_CHARS {
        Some(format!("name must be at most {MAX_NAME_CHARS} characters"))
    } else if s.chars().any(char::is_control) {
        Some("name must not contain control characters".to_owned())
    } else {
        None
    }
}

/// Validates a create or update body; every error names its field.
pub fn parse_key_body(
    body: &[u8],
    kind: BodyKind,
    rules: BodyRules<'_>,
) -> Result<KeyFields, ApiError> {
    let value = strict_json::parse(body)
        .map_err(|e| ApiError::validation(&["body"], format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::validation(
            &["body"],
            "body must be a JSON object",
        ));
    };
    let allowed = kind.allowed();
    let mut errors = Vec::new();
    for k in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
        let why = if k == "expires_at" {
            "expires_at is immutable once the key exists".to_owned()
        } else {
            format!("unknown field {k:?} (allowed: {})", allowed.join(", "))
        };
        errors.push(errors::FieldError::new(&["body", k], why));
    }
    let mut fields = KeyFields::default();
    match map.get("name") {
        None if kind == BodyKind::Create => errors.push(errors::FieldError::new(
            &["body", "name"],
            "name is required",
        )),
        None => {}
        Some(serde_json::Value::String(s)) => match check_name(s) {
            Some(p) => errors.push(errors::FieldError::new(&["body", "name"], p)),
            None => fields.name = Some(s.clone()),
        },
        Some(_) => errors.push(errors::FieldError::new(
            &["body", "name"],
            "name must be a string",
        )),
    }
    match map.get("permissions") {
        None => {}
        Some(serde_json::Value::Object(obj)) => match rules.vocabulary.parse(obj) {
            Ok(p) => fields.permissions = Some(p),
            Err(bad) => {
                for (name, message) in bad {
                    errors.push(errors::FieldError::new(
                        &["body", "permissions", &name],
                        message,
                    ));
                }
            }
        },
        Some(_) => errors.push(errors::FieldError::new(
            &["body", "permissions"],
            "permissions must be an object of permission names to true or false",
        )),
    }
    if kind == BodyKind::Create {
        match map.get("expires_at") {
            None => {}
            Some(serde_json::Value::String(s)) => match expiry(s, rules) {
                Ok(us) => fields.expires_at_us = Some(us),
                Err(m) => errors.push(errors::FieldError::new(&["body", "expires_at"], m)),
            },
            Some(_) => errors.push(errors::FieldError::new(
                &["body", "expires_at"],
                "expires_at must be an RFC 3339 date-time string, e.g. 2027-01-01T00:00:00Z",
            )),
        }
    }
    if kind == BodyKind::Update
        && errors.is_empty()
        && fields.name.is_none()
        && fields.permissions.is_none()
    {
        errors.push(errors::FieldError::new(
            &["body"],
            "nothing to update: give name and/or permissions",
        ));
    }
    if errors.is_empty() {
        Ok(fields)
    } else {
        Err(ApiError::Validation {
            message: errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            errors,
        })
    }
}

/// Parses and checks an `expires_at`: RFC 3339, in the future, within the lifetime bound.
fn expiry(s: &str, rules: BodyRules<'_>) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            "expires_at must be an RFC 3339 date-time, e.g. 2027-01-01T00:00:00Z".to_owned()
        })?;
    let us = i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| "expires_at is out of range".to_owned())?;
    if us <= rules.now_us {
        return Err("expires_at must be in the future".into());
    }
    if let Some(max) = rules.max_lifetime {
        if us - rules.now_us > max.as_micros() as i64 {
            return Err(format!(
                "expires_at must be at most {} days ahead (keys.max_lifetime_days)",
                max.as_secs() / 86_400
            ));
        }
    }
    Ok(us)
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

    const NOW: i64 = 1_800_000_000_000_000;

    fn rules(v: &Vocabulary) -> BodyRules<'_> {
        BodyRules {
            vocabulary: v,
            now_us: NOW,
            max_lifetime: Some(std::time::Duration::from_secs(30 * 86_400)),
        }
    }

    fn parse_create_body(body: &[u8]) -> Result<String, ApiError> {
        let v = Vocabulary::default();
        parse_key_body(body, BodyKind::Create, rules(&v)).map(|f| f.name.unwrap())
    }

    fn err_of(body: &str, kind: BodyKind) -> (String, Vec<Vec<String>>) {
        let v = Vocabulary::default();
        match parse_key_body(body.as_bytes(), kind, rules(&v)).unwrap_err() {
            ApiError::Validation { message, errors } => {
                (message, errors.into_iter().map(|e| e.path).collect())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permissions_and_expiry_are_validated() {
        let v = Vocabulary::default();
        let ok = parse_key_body(
            br#"{"name":"n","permissions":{"message_read":true,"message_send":false},"expires_at":"2027-02-01T00:00:00Z"}"#,
            BodyKind::Create,
            rules(&v),
        )
        .unwrap();
        assert_eq!(ok.permissions.unwrap().0.len(), 2);
        assert_eq!(ok.expires_at_us, Some(1_801_440_000_000_000));
        let c = BodyKind::Create;
        assert_eq!(
            err_of(r#"{"name":"n","permissions":{"nope":true}}"#, c).1,
            [["body", "permissions", "nope"]]
        );
        assert_eq!(
            err_of(r#"{"name":"n","permissions":{"message_read":1}}"#, c).1,
            [["body", "permissions", "message_read"]]
        );
        assert_eq!(
            err_of(r#"{"name":"n","permissions":["message_read"]}"#, c).1,
            [["body", "permissions"]]
        );
        for bad in [
            "2020-01-01T00:00:00Z",
            "2027-02-01",
            "tomorrow",
            "2099-01-01T00:00:00Z",
        ] {
            let body = format!(r#"{{"name":"n","expires_at":"{bad}"}}"#);
            assert_eq!(err_of(&body, c).1, [["body", "expires_at"]], "{bad}");
        }
        assert_eq!(
            err_of(r#"{"name":"n","expires_at":5}"#, c).1,
            [["body", "expires_at"]]
        );
        let u = BodyKind::Update;
        assert_eq!(
            err_of(r#"{"expires_at":"2027-02-01T00:00:00Z"}"#, u).1,
            [["body", "expires_at"]]
        );
        assert_eq!(err_of(r#"{}"#, u).1, [["body"]]);
        assert_eq!(
            err_of(r#"{"type":"bearer","name":"x"}"#, u).1,
            [["body", "type"]]
        );
        let renamed = parse_key_body(br#"{"name":"x"}"#, u, rules(&v)).unwrap();
        assert_eq!(renamed.name.as_deref(), Some("x"));
        assert!(renamed.permissions.is_none());
    }

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
