//! Who may call the management API: management tokens and the inbox directory.

use super::*;

impl Validator<'_> {
    pub(super) fn tokens(&self, m: FileManagement) -> Result<Vec<ManagementToken>, ConfigError> {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut out = Vec::with_capacity(m.tokens.len());
        for (i, t) in m.tokens.into_iter().enumerate() {
            let field = |f: &str| format!("management.tokens[{i}].{f}");
            if t.name.trim().is_empty() {
                return Err(self.err(field("name"), "must not be empty"));
            }
            if !names.insert(t.name.clone()) {
                return Err(self.err(
                    field("name"),
                    format!(
                        "{:?} is used by another token; names must be unique",
                        t.name
                    ),
                ));
            }
            let mut sha256 = [0u8; 32];
            if t.sha256.len() != 64 || hex::decode_to_slice(&t.sha256, &mut sha256).is_err() {
                return Err(self.err(
                    field("sha256"),
                    "must be 64 hex characters, the SHA-256 of the token (generate a token with `agentry-gateway new-token --name NAME`)",
                ));
            }
            if t.sha256.eq_ignore_ascii_case(QUICKSTART_TOKEN_SHA256) {
                log::warn!(
                    "management.tokens[{i}] ({:?}) is the public quick-start token; replace it (agentry-gateway new-token)",
                    t.name
                );
            }
            if !hashes.insert(sha256) {
                return Err(self.err(field("sha256"), "is the same as another token's"));
            }
            let scope = match (t.scope.as_deref(), t.pods, t.inboxes) {
                (Some("all"), None, None) => TokenScope::All,
                (Some(other), None, None) => {
                    return Err(self.err(
                        field("scope"),
                        format!("{other:?} is not a scope; write scope = \"all\", or pods = [...], or inboxes = [...]"),
                    ))
                }
                (None, Some(pods), None) => TokenScope::Pods(self.id_list(&field("pods"), pods)?),
                (None, None, Some(inboxes)) => {
                    TokenScope::Inboxes(self.id_list(&field("inboxes"), inboxes)?)
                }
                _ => {
                    return Err(self.err(
                        field("scope"),
                        "give exactly one of scope = \"all\", pods = [...], inboxes = [...]",
                    ))
                }
            };
            out.push(ManagementToken {
                name: t.name,
                sha256,
                scope,
            });
        }
        Ok(out)
    }

    pub(super) fn id_list(
        &self,
        field: &str,
        ids: Vec<String>,
    ) -> Result<HashSet<String>, ConfigError> {
        if ids.is_empty() {
            return Err(self.err(
                field,
                "must list at least one id (a token that reaches nothing is a mistake)",
            ));
        }
        if let Some(bad) = ids.iter().find(|s| s.is_empty()) {
            return Err(self.err(field, format!("{bad:?}: ids must not be empty")));
        }
        Ok(ids.into_iter().collect())
    }

    pub(super) fn directory(
        &self,
        d: FileInboxDirectory,
        tokens: &[ManagementToken],
    ) -> Result<InboxDirectory, ConfigError> {
        match d.source.as_str() {
            "none" => {
                if !d.inboxes.is_empty() {
                    return Err(self.err(
                        "inbox_directory.inboxes",
                        "must be empty when source = \"none\" (use source = \"static\" to list inboxes)",
                    ));
                }
                if let Some(t) = tokens.iter().find(|t| t.scope != TokenScope::All) {
                    return Err(self.err(
                        "inbox_directory.source",
                        format!(
                            "\"none\" requires every management token to have scope = \"all\", but token {:?} is scoped; use source = \"static\" and list the inboxes",
                            t.name
                        ),
                    ));
                }
                Ok(InboxDirectory::None)
            }
            "static" => {
                let mut map = BTreeMap::new();
                for (i, inbox) in d.inboxes.into_iter().enumerate() {
                    let field = format!("inbox_directory.inboxes[{i}].inbox_id");
                    if let Err(msg) = crate::request_target::inbox_id::validate(&inbox.inbox_id) {
                        return Err(self.err(field, msg));
                    }
                    if inbox.pod_id.as_deref() == Some("") {
                        return Err(self.err(
                            format!("inbox_directory.inboxes[{i}].pod_id"),
                            "must not be empty (omit it when the inbox has no pod)",
                        ));
                    }
                    if map.insert(inbox.inbox_id.clone(), inbox.pod_id).is_some() {
                        return Err(
                            self.err(field, format!("{:?} is listed twice", inbox.inbox_id))
                        );
                    }
                }
                Ok(InboxDirectory::Static(map))
            }
            other => Err(self.err(
                "inbox_directory.source",
                format!("{other:?} is not a source (supported: \"static\", \"none\")"),
            )),
        }
    }
}
