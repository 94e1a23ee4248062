//! JSON shapes of the management API, field for field as `api-keys.md` gives them.

use serde::Serialize;

use crate::clock::rfc3339;
use crate::store::KeyRecord;

#[derive(Debug, Serialize)]
pub struct ApiKeyItem {
    pub api_key_id: String,
    pub created_at: String,
    pub inbox_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
}

impl From<KeyRecord> for ApiKeyItem {
    fn from(r: KeyRecord) -> ApiKeyItem {
        ApiKeyItem {
            api_key_id: r.api_key_id,
            created_at: rfc3339(r.created_at_us),
            inbox_id: r.inbox_id,
            name: r.name,
            pod_id: r.pod_id,
            prefix: r.prefix,
            used_at: r.used_at_us.map(rfc3339),
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

#[derive(Debug, Serialize)]
pub struct CreateApiKeyResponse {
    pub api_key: String,
    pub api_key_id: String,
    pub created_at: String,
    pub inbox_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,
    pub prefix: String,
}
