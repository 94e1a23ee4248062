//! The `/human/v0` key-management API, answered by the gateway from its own store.

pub mod body;
pub mod errors;
pub mod principal;
mod query;
pub mod routes;
#[cfg(test)]
mod tests;
pub mod types;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::answer::Answer;
use crate::auth::limiter::FailureLimiter;
use crate::auth::usage::UsageRecorder;
use crate::auth::ApiKeyIdentity;
use crate::auth::Verifier;
use crate::clock::MonotonicClock;
use crate::keys::{random_id, KeyFormat};
use crate::metrics::ManagementRoute;
use crate::permissions::{PermissionSet, Permissions, Vocabulary};
use crate::store::cursor::PageTokenKey;
use crate::store::{cursor, Cursor, KeyEvents, KeyRecord, KeyUpdate, NewKey, Store};
use body::{read_key_body, BodyKind, BodyRules, KeyFields};
pub use body::{BodySource, BytesBody};
use errors::{ApiError, NotFound};
use principal::Principals;
use query::ListQuery;
use routes::{Base, Endpoint};
use types::{ApiKeyItem, CreateApiKeyResponse, ListApiKeysResponse};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_PAGE_LIMIT: usize = 100;
pub const MAX_PAGE_LIMIT: usize = 1000;
pub const MAX_NAME_CHARS: usize = 256;

/// A management request as plain data: what the handlers need, without the connection.
#[derive(Debug, Clone)]
pub struct PlainRequest {
    pub method: Method,
    /// The raw path, query split off.
    pub path: Vec<u8>,
    /// The raw query, without `?`.
    pub query: Vec<u8>,
    pub headers: HeaderMap,
    /// The client, for the failed-auth limiter.
    pub client: Option<IpAddr>,
}

/// Who is calling: a management token (with its grant's pod), or an API key of the inbox.
enum Actor<'a> {
    Token { pod_id: Option<String> },
    Key(&'a ApiKeyIdentity),
}

/// A key creates only keys within itself: permissions a subset of its own (omitted: exactly
/// its own), expiry no later than its own (omitted: its own).
fn attenuate(
    vocabulary: &Vocabulary,
    parent: &ApiKeyIdentity,
    fields: &mut KeyFields,
) -> Result<(), ApiError> {
    match &fields.permissions {
        Some(p) => within_creator(vocabulary, parent, p)?,
        None if parent.permissions != vocabulary.default_set() => {
            fields.permissions = Some(Permissions::exactly(vocabulary, parent.permissions));
        }
        None => {}
    }
    if parent.expires_at_us != i64::MAX {
        match fields.expires_at_us {
            None => fields.expires_at_us = Some(parent.expires_at_us),
            Some(t) if t > parent.expires_at_us => {
                return Err(ApiError::ExceedsCreator {
                    field: "expires_at",
                    message: format!(
                        "expires_at may be no later than the creating key's own ({})",
                        crate::clock::rfc3339(parent.expires_at_us)
                    ),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A permissions object a key may give: nothing it does not hold itself.
fn within_creator(
    vocabulary: &Vocabulary,
    parent: &ApiKeyIdentity,
    requested: &Permissions,
) -> Result<(), ApiError> {
    let wanted = vocabulary.set_of(Some(requested));
    if wanted.is_subset_of(parent.permissions) {
        return Ok(());
    }
    let extra = PermissionSet(wanted.0 & !parent.permissions.0);
    Err(ApiError::ExceedsCreator {
        field: "permissions",
        message: format!(
            "permissions may not exceed the creating key's own; it does not hold {}",
            vocabulary.names_of(extra).join(", ")
        ),
    })
}

/// A PATCH's `permissions` replace the target's whole set: a key may set them only on a key
/// that expires no later than itself, so no permission it holds outlives it.
fn outlived_by(parent: &ApiKeyIdentity, target: &KeyRecord) -> Result<(), ApiError> {
    if parent.expires_at_us == i64::MAX {
        return Ok(());
    }
    let target_end = match target.expires_at_us {
        Some(t) if t <= parent.expires_at_us => return Ok(()),
        Some(t) => format!("expires at {}", crate::clock::rfc3339(t)),
        None => "never expires".to_owned(),
    };
    Err(ApiError::ExceedsCreator {
        field: "expires_at",
        message: format!(
            "permissions may be set only on a key that expires no later than the granting key ({}); {} {target_end}",
            crate::clock::rfc3339(parent.expires_at_us),
            target.api_key_id
        ),
    })
}

/// A management response: the answer to write, and the route for metrics.
#[derive(Debug)]
pub struct ManagementAnswer {
    pub route: ManagementRoute,
    pub answer: Answer,
}

pub struct Management {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<Verifier>,
    pub usage: Arc<UsageRecorder>,
    /// Swapped whole by a config reload (tokens, inbox directory).
    pub principals: std::sync::Arc<arc_swap::ArcSwap<Principals>>,
    pub key_format: KeyFormat,
    pub clock: MonotonicClock,
    /// Signs and checks page tokens (HMAC under the store's secret).
    pub page_tokens: PageTokenKey,
    /// Shared with the verifier: failed tokens count like failed keys.
    pub limiter: Arc<FailureLimiter>,
    /// The permission names keys may hold.
    pub vocabulary: Arc<Vocabulary>,
    /// `keys.max_lifetime_days`, when set.
    pub max_lifetime: Option<std::time::Duration>,
}

impl Management {
    /// Answers one management request; the body is read only if the endpoint takes one and
    /// the caller is authenticated.
    pub async fn handle(&self, req: &PlainRequest, body: &mut dyn BodySource) -> ManagementAnswer {
        let mut route = ManagementRoute::Other;
        let answer = match self.dispatch(req, body, &mut route).await {
            Ok(a) => a,
            Err(e) => e.answer(),
        };
        ManagementAnswer { route, answer }
    }

    async fn dispatch(
        &self,
        req: &PlainRequest,
        body: &mut dyn BodySource,
        route: &mut ManagementRoute,
    ) -> Result<Answer, ApiError> {
        let principals = self.principals.load();
        let principal = match principals.authenticate(&req.headers) {
            Ok(p) => p,
            // A wrong token counts towards the client's limit; no token at all costs nothing
            // and a valid token is never refused.
            Err(ApiError::InvalidToken) => {
                return Err(match self.limiter.fail(req.client) {
                    Ok(()) => ApiError::InvalidToken,
                    Err(b) => ApiError::RateLimited(b),
                })
            }
            Err(e) => return Err(e),
        };
        let endpoint = routes::route(&req.method, &req.path, &req.query)?;
        *route = endpoint.metric_route();
        let grant = principals.grant(principal, endpoint.inbox_id())?;
        self.execute(
            endpoint,
            req,
            body,
            Actor::Token {
                pod_id: grant.pod_id,
            },
        )
        .await
    }

    /// Answers a call of the key-managed API (`/v0/inboxes/{inbox_id}/api-keys`) made with an
    /// API key already authenticated by the verifier: only the key's own inbox, only with the
    /// method's `api_key_*` permission, and never creating or granting more than it holds.
    pub async fn handle_by_key(
        &self,
        req: &PlainRequest,
        body: &mut dyn BodySource,
        key: &ApiKeyIdentity,
    ) -> ManagementAnswer {
        let mut route = ManagementRoute::Other;
        let answer = match self.dispatch_by_key(req, body, key, &mut route).await {
            Ok(a) => a,
            Err(e) => e.answer(),
        };
        ManagementAnswer { route, answer }
    }

    async fn dispatch_by_key(
        &self,
        req: &PlainRequest,
        body: &mut dyn BodySource,
        key: &ApiKeyIdentity,
        route: &mut ManagementRoute,
    ) -> Result<Answer, ApiError> {
        let endpoint = routes::route_under(Base::Key, &req.method, &req.path, &req.query)?;
        *route = endpoint.metric_route();
        // Another inbox: exactly the 404 of an absent one.
        if key.inbox.inbox_id.as_bytes() != endpoint.inbox_id().as_bytes() {
            return Err(ApiError::NotFound(NotFound::Inbox));
        }
        let needed = match endpoint {
            Endpoint::ListApiKeys { .. } => "api_key_read",
            Endpoint::CreateApiKey { .. } => "api_key_create",
            Endpoint::UpdateApiKey { .. } => "api_key_update",
            Endpoint::DeleteApiKey { .. } => "api_key_delete",
        };
        let holds = self
            .vocabulary
            .lookup(needed)
            .is_some_and(|p| key.permissions.contains(p));
        if !holds {
            return Err(ApiError::InsufficientPermission(needed));
        }
        self.execute(endpoint, req, body, Actor::Key(key)).await
    }

    /// Runs an endpoint for an authorised caller.
    async fn execute(
        &self,
        endpoint: Endpoint,
        req: &PlainRequest,
        body: &mut dyn BodySource,
        actor: Actor<'_>,
    ) -> Result<Answer, ApiError> {
        match endpoint {
            Endpoint::ListApiKeys { inbox_id } => {
                let body = self.list(&inbox_id, &req.query).await?;
                Ok(Answer::json(200, body))
            }
            Endpoint::CreateApiKey { inbox_id } => {
                let mut fields =
                    read_key_body(&req.headers, body, BodyKind::Create, self.rules()).await?;
                let (pod_id, created_by) = match actor {
                    Actor::Token { pod_id } => (pod_id, None),
                    Actor::Key(parent) => {
                        attenuate(&self.vocabulary, parent, &mut fields)?;
                        (
                            parent
                                .inbox
                                .pod_id
                                .as_ref()
                                .and_then(|p| p.to_str().ok())
                                .map(str::to_owned),
                            Some(parent.api_key_id_str().to_owned()),
                        )
                    }
                };
                self.bound_lifetime(&mut fields);
                let body = self.create(inbox_id, pod_id, fields, created_by).await?;
                Ok(Answer::json(201, body))
            }
            Endpoint::UpdateApiKey {
                inbox_id,
                api_key_id,
            } => {
                let fields =
                    read_key_body(&req.headers, body, BodyKind::Update, self.rules()).await?;
                if let (Actor::Key(parent), Some(p)) = (&actor, &fields.permissions) {
                    within_creator(&self.vocabulary, parent, p)?;
                    // Expiry is immutable: read before the update, it cannot change under it.
                    match self.store.get_key(&inbox_id, &api_key_id).await? {
                        Some(target) => outlived_by(parent, &target)?,
                        None => return Err(ApiError::NotFound(NotFound::ApiKey)),
                    }
                }
                let body = self.update(&inbox_id, &api_key_id, fields).await?;
                Ok(Answer::json(200, body))
            }
            Endpoint::DeleteApiKey {
                inbox_id,
                api_key_id,
            } => {
                self.delete(&inbox_id, &api_key_id).await?;
                Ok(Answer::empty(204))
            }
        }
    }

    async fn list(&self, inbox_id: &str, query: &[u8]) -> Result<Vec<u8>, ApiError> {
        let q = ListQuery::parse(&self.page_tokens, inbox_id, query)?;
        let mut rows = self
            .store
            .list_keys(inbox_id, q.after.as_ref(), q.limit + 1)
            .await?;
        let next_page_token = if rows.len() > q.limit {
            rows.truncate(q.limit);
            rows.last().map(|last| {
                cursor::encode(
                    &self.page_tokens,
                    inbox_id,
                    &Cursor {
                        created_at_us: last.created_at_us,
                        api_key_id: last.api_key_id.clone(),
                    },
                )
            })
        } else {
            None
        };
        self.usage.overlay(&mut rows);
        let api_keys: Vec<ApiKeyItem> = rows.into_iter().map(ApiKeyItem::from).collect();
        let resp = ListApiKeysResponse {
            count: api_keys.len(),
            api_keys,
            next_page_token,
        };
        serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// `keys.max_lifetime_days` is a maximum: a key created without `expires_at` (or
    /// inheriting a later one from its creating key) expires that long from now.
    fn bound_lifetime(&self, fields: &mut KeyFields) {
        if let Some(max) = self.max_lifetime {
            let max_us = i64::try_from(max.as_micros()).unwrap_or(i64::MAX);
            let bound = crate::clock::now_us().saturating_add(max_us);
            fields.expires_at_us = Some(fields.expires_at_us.map_or(bound, |t| t.min(bound)));
        }
    }

    /// What request bodies are checked against, now.
    fn rules(&self) -> BodyRules<'_> {
        BodyRules {
            vocabulary: &self.vocabulary,
            now_us: crate::clock::now_us(),
            max_lifetime: self.max_lifetime,
        }
    }

    async fn create(
        &self,
        inbox_id: String,
        pod_id: Option<String>,
        fields: KeyFields,
        created_by: Option<String>,
    ) -> Result<Vec<u8>, ApiError> {
        let material = self.key_format.generate();
        let created_at_us = self.clock.next_us();
        let record = KeyRecord {
            api_key_id: random_id("key"),
            inbox_id,
            pod_id,
            name: fields.name.unwrap_or_default(),
            prefix: material.display_prefix,
            created_at_us,
            used_at_us: None,
            permissions: fields.permissions.as_ref().map(Permissions::to_json),
            expires_at_us: fields.expires_at_us,
            updated_at_us: created_at_us,
            created_by,
        };
        self.store
            .create_key(NewKey {
                record: record.clone(),
                hash: material.hash,
            })
            .await?;
        self.verifier.forget_negative(&material.hash).await;
        let resp = CreateApiKeyResponse::new(material.plaintext, record);
        serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn update(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        fields: KeyFields,
    ) -> Result<Vec<u8>, ApiError> {
        let update = KeyUpdate {
            name: fields.name,
            permissions: fields.permissions.as_ref().map(Permissions::to_json),
            updated_at_us: self.clock.next_us(),
        };
        let Some((mut record, changed)) =
            self.store.update_key(inbox_id, api_key_id, update).await?
        else {
            return Err(ApiError::NotFound(NotFound::ApiKey));
        };
        // This instance refuses every older copy before the 200 (others learn the version
        // through the store's change log).
        self.verifier
            .key_changed(&changed.hash, changed.version)
            .await;
        let mut one = [record];
        self.usage.overlay(&mut one);
        [record] = one;
        serde_json::to_vec(&ApiKeyItem::from(record)).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn delete(&self, inbox_id: &str, api_key_id: &str) -> Result<(), ApiError> {
        match self.store.delete_key(inbox_id, api_key_id).await? {
            Some(changed) => {
                // A tombstone before the 204 leaves: the next request with this key is refused.
                self.verifier
                    .key_changed(&changed.hash, changed.version)
                    .await;
                Ok(())
            }
            None => Err(ApiError::NotFound(NotFound::ApiKey)),
        }
    }
}
