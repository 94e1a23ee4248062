//! JSON shapes of the management API, field for field as `api-keys.md` gives them.

use serde::Serialize;

use crate::clock::rfc3339;
use crate::store::KeyRecord;

/// `created_by`: the key that created this one.
#[derive(Debug, Serialize)]
pub struct Creator {
    pub api_key_id: String,
}

/// The stored `permissions` object, as JSON (omitted when the key has the default set).
fn permissions_json(stored: &Option<String>) -> Option<serde_json::Value> {
    stored.as_deref().and_then(|s| serde_json::from_str(s).ok())
}

#[derive(Debug, Serialize)]
pub struct ApiKeyItem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub api_key_id: String,
    pub created_at: String,
    pub inbox_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Creator>,
}

impl From<KeyRecord> for ApiKeyItem {
    fn from(r: KeyRecord) -> ApiKeyItem {
        ApiKeyItem {
            kind: "bearer",
            api_key_id: r.api_key_id,
            created_at: rfc3339(r.created_at_us),
            inbox_id: r.inbox_id,
            name: r.name,
            pod_id: r.pod_id,
            prefix: r.prefix,
            used_at: r.used_at_us.map(rfc3339),
            permissions: permissions_json(&r.permissions),
            expires_at: r.expires_at_us.map(rfc3339),
            updated_at: rfc3339(r.updated_at_us),
            created_by: r.created_by.map(|api_key_id| Creator { api_key_id }),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ListApiKeysResponse {
    pub api_keys: Vec<ApiKeyItem>,
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The 201 of a create: the key's fields, and the plaintext key this once.
#[derive(Debug, Serialize)]
pub struct CreateApiKeyResponse {
    pub api_key: String,
    #[serde(flatten)]
    pub key: ApiKeyItem,
}

impl CreateApiKeyResponse {
    pub fn new(api_key: String, r: KeyRecord) -> CreateApiKeyResponse {
        CreateApiKeyResponse {
            api_key,
            key: ApiKeyItem::from(r),
        }
    }
}
