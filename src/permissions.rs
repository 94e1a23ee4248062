//! The permission vocabulary and permission sets of API keys.
//!
//! A key's `permissions` object maps permission names to booleans. Omitted, the key holds every
//! permission except the opt-in ones; present, exactly the names set to `true`. The names and the
//! opt-in set come from config (`[permissions]`), defaulting to the public AgentMail API's list.
//! In memory a set is a bit mask over the vocabulary (at most 128 names): checking one on a
//! request is a single AND.

use std::collections::BTreeMap;

/// The default vocabulary: the AgentMail API's permission names (Python SDK 2.x,
/// `api_keys/types/api_key_permissions.py`).
pub const DEFAULT_NAMES: &[&str] = &[
    "inbox_read",
    "inbox_create",
    "inbox_update",
    "inbox_delete",
    "message_read",
    "message_reply",
    "message_send",
    "message_update",
    "message_delete",
    "agent_armor_release",
    "label_spam_read",
    "label_blocked_read",
    "label_unauthenticated_read",
    "label_trash_read",
    "draft_read",
    "draft_create",
    "draft_update",
    "draft_delete",
    "draft_send",
    "webhook_read",
    "webhook_create",
    "webhook_update",
    "webhook_delete",
    "domain_read",
    "domain_create",
    "domain_update",
    "domain_delete",
    "list_entry_read",
    "list_entry_create",
    "list_entry_delete",
    "metrics_read",
    "api_key_read",
    "api_key_create",
    "api_key_update",
    "api_key_delete",
    "app_connect",
    "app_share_owner",
    "account_update",
    "pod_read",
    "pod_create",
    "pod_update",
    "pod_delete",
    "calendar_read",
    "calendar_update",
    "calendar_event_read",
    "calendar_event_create",
    "calendar_event_update",
    "calendar_event_delete",
    "file_read",
    "file_create",
    "file_update",
    "file_delete",
];

/// Never held by omission.
pub const DEFAULT_OPT_IN: &[&str] = &["agent_armor_release", "app_connect"];

/// Most names a vocabulary may hold (the width of a set).
pub const MAX_NAMES: usize = 128;

/// A set of permissions, as bits over a vocabulary. Packed (alignment 1): a `u128` would
/// align every cached identity holding one to 16 bytes and pad it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C, packed)]
pub struct PermissionSet(pub u128);

impl PermissionSet {
    pub fn contains(self, p: Permission) -> bool {
        self.0 & (1u128 << p.0) != 0
    }

    /// Whether every permission of `self` is also in `other`.
    pub fn is_subset_of(self, other: PermissionSet) -> bool {
        self.0 & !other.0 == 0
    }
}

/// One permission: its index in the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission(pub u8);

/// The names a deployment knows, and which of them are opt-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    names: Vec<String>,
    opt_in: PermissionSet,
}

impl Default for Vocabulary {
    fn default() -> Vocabulary {
        Vocabulary::new(
            DEFAULT_NAMES.iter().map(|s| s.to_string()).collect(),
            DEFAULT_OPT_IN,
        )
        .expect("the default vocabulary is valid")
    }
}

impl Vocabulary {
    /// A vocabulary; the error says what is wrong (for config errors).
    pub fn new<S: AsRef<str>>(names: Vec<String>, opt_in: &[S]) -> Result<Vocabulary, String> {
        if names.is_empty() || names.len() > MAX_NAMES {
            return Err(format!("must list 1 to {MAX_NAMES} permission names"));
        }
        for (i, n) in names.iter().enumerate() {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "{n:?} is not a permission name (1-64 of a-z, 0-9 and _)"
                ));
            }
            if names[..i].contains(n) {
                return Err(format!("{n:?} is listed twice"));
            }
        }
        let mut v = Vocabulary {
            names,
            opt_in: PermissionSet(0),
        };
        for o in opt_in {
            let p = v
                .lookup(o.as_ref())
                .ok_or_else(|| format!("opt-in {:?} is not one of the names", o.as_ref()))?;
            v.opt_in.0 |= 1u128 << p.0;
        }
        Ok(v)
    }

    pub fn lookup(&self, name: &str) -> Option<Permission> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| Permission(i as u8))
    }

    pub fn name(&self, p: Permission) -> &str {
        &self.names[p.0 as usize]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn all(&self) -> PermissionSet {
        PermissionSet(if self.names.len() == 128 {
            u128::MAX
        } else {
            (1u128 << self.names.len()) - 1
        })
    }

    /// What a key without a `permissions` object holds: everything but the opt-in names.
    pub fn default_set(&self) -> PermissionSet {
        PermissionSet(self.all().0 & !self.opt_in.0)
    }

    /// The set a stored `permissions` object grants (`None`: the default set). Names this
    /// vocabulary does not know grant nothing.
    pub fn set_of(&self, stored: Option<&Permissions>) -> PermissionSet {
        match stored {
            None => self.default_set(),
            Some(p) => PermissionSet(
                p.0.iter()
                    .filter(|(_, held)| **held)
                    .filter_map(|(n, _)| self.lookup(n))
                    .fold(0, |acc, p| acc | 1u128 << p.0),
            ),
        }
    }

    /// The names of a set, in vocabulary order.
    pub fn names_of(&self, set: PermissionSet) -> Vec<&str> {
        (0..self.names.len())
            .filter(|&i| set.0 & (1u128 << i) != 0)
            .map(|i| self.names[i].as_str())
            .collect()
    }

    /// Validates a `permissions` object from a request: every name known, every value a
    /// boolean. Errors are `(name, message)` per bad member.
    pub fn parse(
        &self,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Permissions, Vec<(String, String)>> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, value) in object {
            match (self.lookup(name), value) {
                (None, _) => errors.push((name.clone(), format!("unknown permission {name:?}"))),
                (Some(_), serde_json::Value::Bool(b)) => {
                    out.insert(name.clone(), *b);
                }
                (Some(_), _) => errors.push((
                    name.clone(),
                    format!("permission {name:?} must be true or false"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Permissions(out))
        } else {
            Err(errors)
        }
    }
}

/// A key's `permissions` object as given and stored: name → held.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions(pub BTreeMap<String, bool>);

impl Permissions {
    /// The stored form: a JSON object, names sorted.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    pub fn from_json(text: &str) -> Option<Permissions> {
        serde_json::from_str(text).ok().map(Permissions)
    }

    /// The permissions of exactly `set`, as an object of the names set to `true`.
    pub fn exactly(vocabulary: &Vocabulary, set: PermissionSet) -> Permissions {
        Permissions(
            vocabulary
                .names_of(set)
                .into_iter()
                .map(|n| (n.to_owned(), true))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_means_all_but_opt_in_and_present_means_exactly() {
        let v = Vocabulary::default();
        let d = v.default_set();
        let read = v.lookup("message_read").unwrap();
        let armor = v.lookup("agent_armor_release").unwrap();
        let app = v.lookup("app_connect").unwrap();
        assert!(d.contains(read));
        assert!(!d.contains(armor) && !d.contains(app));
        assert_eq!(v.names_of(d).len(), DEFAULT_NAMES.len() - 2);
        let p = Permissions(
            [
                ("message_read".to_owned(), true),
                ("message_send".to_owned(), false),
            ]
            .into(),
        );
        let s = v.set_of(Some(&p));
        assert_eq!(v.names_of(s), ["message_read"]);
        assert!(s.is_subset_of(d));
        assert!(!d.is_subset_of(s));
        let opt = Permissions([("app_connect".to_owned(), true)].into());
        assert!(!v.set_of(Some(&opt)).is_subset_of(d));
        assert_eq!(Permissions::from_json(&p.to_json()), Some(p));
    }

    #[test]
    fn requests_name_their_bad_members() {
        let v = Vocabulary::default();
        let obj: serde_json::Value =
            serde_json::json!({"message_read": true, "nope": true, "message_send": 1});
        let errs = v.parse(obj.as_object().unwrap()).unwrap_err();
        let names: Vec<&str> = errs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_send", "nope"]);
    }

    #[test]
    fn vocabularies_are_validated() {
        assert!(Vocabulary::new(vec![], &[] as &[&str]).is_err());
        assert!(Vocabulary::new(vec!["a".into(), "a".into()], &[] as &[&str]).is_err());
        assert!(Vocabulary::new(vec!["A".into()], &[] as &[&str]).is_err());
        assert!(Vocabulary::new(vec!["a".into()], &["b"]).is_err());
        let many: Vec<String> = (0..128).map(|i| format!("p{i}")).collect();
        let v = Vocabulary::new(many.clone(), &[] as &[&str]).unwrap();
        assert_eq!({ v.default_set().0 }, u128::MAX);
        let mut too_many = many;
        too_many.push("x".into());
        assert!(Vocabulary::new(too_many, &[] as &[&str]).is_err());
    }
}
