//! Management principals: who a bearer token is, and which inboxes it may manage.

use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::errors::{ApiError, NotFound};
use crate::auth::verifier::{bearer_credential, AuthFailure};
use crate::config::{InboxDirectory, ManagementToken, TokenScope};
use crate::keys::hash_secret;

/// An authenticated management caller.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub token: &'a ManagementToken,
}

/// The configured management tokens and the inbox directory.
pub struct Principals {
    tokens: Vec<ManagementToken>,
    directory: InboxDirectory,
}

/// An inbox a principal may manage, with its pod from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxGrant {
    pub pod_id: Option<String>,
}

impl Principals {
    pub fn new(tokens: Vec<ManagementToken>, directory: InboxDirectory) -> Principals {
        Principals { tokens, directory }
    }

    /// Authenticates `Authorization: Bearer <token>`. Every configured hash is compared, in
    /// constant time, whatever matches: timing says nothing about which token is close.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal<'_>, ApiError> {
        let token = bearer_credential(headers).map_err(|e| match e {
            AuthFailure::Missing => ApiError::MissingAuthorization,
            _ => ApiError::InvalidToken,
        })?;
        let hash = hash_secret(token);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.tokens.iter().enumerate() {
            let eq = t.sha256.ct_eq(&hash);
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            Ok(Principal {
                token: &self.tokens[index as usize],
            })
        } else {
            Err(ApiError::InvalidToken)
        }
    }

    /// What `principal` may do with `inbox_id`: a grant, or 404 exactly as for an absent inbox.
    pub fn grant(&self, principal: Principal<'_>, inbox_id: &str) -> Result<InboxGrant, ApiError> {
        let pod_id = match &self.directory {
            InboxDirectory::None => None,
            InboxDirectory::Static(map) => match map.get(inbox_id) {
                Some(pod) => pod.clone(),
                None => return Err(ApiError::NotFound(NotFound::Inbox)),
            },
        };
        let allowed = match &principal.token.scope {
            TokenScope::All => true,
            TokenScope::Pods(pods) => pod_id.as_ref().is_some_and(|p| pods.contains(p)),
            TokenScope::Inboxes(inboxes) => inboxes.contains(inbox_id),
        };
        if allowed {
            Ok(InboxGrant { pod_id })
        } else {
            Err(ApiError::NotFound(NotFound::Inbox))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn token(name: &str, secret: &str, scope: TokenScope) -> ManagementToken {
        ManagementToken {
            name: name.into(),
            sha256: hash_secret(secret.as_bytes()),
            scope,
        }
    }

    fn principals() -> Principals {
        let mut dir = BTreeMap::new();
        dir.insert("a@x".to_owned(), Some("pod_a".to_owned()));
        dir.insert("b@x".to_owned(), Some("pod_b".to_owned()));
        dir.insert("c@x".to_owned(), None);
        Principals::new(
            vec![
                token("all", "t-all", TokenScope::All),
                token("pod", "t-pod", TokenScope::Pods(["pod_a".into()].into())),
                token(
                    "inbox",
                    "t-inbox",
                    TokenScope::Inboxes(["b@x".into()].into()),
                ),
            ],
            InboxDirectory::Static(dir),
        )
    }

    fn auth<'a>(p: &'a Principals, bearer: &str) -> Result<Principal<'a>, ApiError> {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", bearer.parse().unwrap());
        p.authenticate(&h)
    }

    #[test]
    fn tokens_authenticate_by_hash() {
        let p = principals();
        assert_eq!(auth(&p, "Bearer t-pod").unwrap().token.name, "pod");
        assert_eq!(auth(&p, "bearer t-all").unwrap().token.name, "all");
        assert!(matches!(
            auth(&p, "Bearer nope"),
            Err(ApiError::InvalidToken)
        ));
        assert!(matches!(
            p.authenticate(&http::HeaderMap::new()),
            Err(ApiError::MissingAuthorization)
        ));
    }

    #[test]
    fn scopes() {
        let p = principals();
        let all = auth(&p, "Bearer t-all").unwrap();
        let pod = auth(&p, "Bearer t-pod").unwrap();
        let inbox = auth(&p, "Bearer t-inbox").unwrap();
        assert_eq!(
            p.grant(all, "a@x").unwrap(),
            InboxGrant {
                pod_id: Some("pod_a".into())
            }
        );
        assert_eq!(p.grant(all, "c@x").unwrap(), InboxGrant { pod_id: None });
        assert!(p.grant(all, "zzz").is_err());
        assert!(p.grant(pod, "a@x").is_ok());
        assert!(p.grant(pod, "b@x").is_err());
        assert!(p.grant(pod, "c@x").is_err());
        assert!(p.grant(inbox, "b@x").is_ok());
        assert!(p.grant(inbox, "a@x").is_err());
    }
}
