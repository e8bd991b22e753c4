//! A connection's rules: declarative, validated at start-up, applied in place to a batch.

use std::collections::BTreeMap;

use schema::v1::{Batch, Environment, Event, UserIdentity, event};
use sha2::Digest;

/// Read from a connection's `[connections.rules]` as they are: unknown keys are reported by
/// whoever reads the file, and [`Rules::validate`] names every wrong value.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Rules {
    /// Only these event types (empty: all).
    pub allow_event_types: Vec<String>,
    pub deny_event_types: Vec<String>,
    /// Only events with these names (empty: all). Names are a custom event's or commerce
    /// event's `event_name` and a screen view's `screen_name`; events without one pass.
    pub allow_event_names: Vec<String>,
    pub deny_event_names: Vec<String>,
    /// Event custom attributes: old name → new name.
    pub rename_attributes: BTreeMap<String, String>,
    pub drop_attributes: Vec<String>,
    /// User attributes: old name → new name.
    pub rename_user_attributes: BTreeMap<String, String>,
    pub drop_user_attributes: Vec<String>,
    /// Replace every user identity by the SHA-256 (hex) of its normalised value: trimmed, and
    /// lower-cased for e-mail addresses.
    pub hash_identities: bool,
    /// Set or override the batch's environment (`production` or `development`; another name
    /// reads as unspecified, which `validate` refuses).
    #[serde(deserialize_with = "environment_by_name")]
    pub set_environment: Option<Environment>,
}

fn environment_by_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Environment>, D::Error> {
    let name: Option<String> = serde::Deserialize::deserialize(d)?;
    Ok(name
        .map(|name| schema::json::environment_from_name(&name).unwrap_or(Environment::Unspecified)))
}

/// What applying the rules did to one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub events_in: usize,
    pub events_filtered: usize,
}

impl Rules {
    /// Every problem at once, each naming the rule.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (field, types) in [
            ("allow_event_types", &self.allow_event_types),
            ("deny_event_types", &self.deny_event_types),
        ] {
            for t in types {
                if !schema::json::EVENT_TYPES.contains(&t.as_str()) {
                    problems.push(format!(
                        "{field}: {t:?} is not an mParticle event type (one of: {})",
                        schema::json::EVENT_TYPES.join(", ")
                    ));
                }
            }
        }
        for t in &self.allow_event_types {
            if self.deny_event_types.contains(t) {
                problems.push(format!("event type {t:?} is both allowed and denied"));
            }
        }
        for n in &self.allow_event_names {
            if self.deny_event_names.contains(n) {
                problems.push(format!("event name {n:?} is both allowed and denied"));
            }
        }
        for (field, renames, drops) in [
            (
                "rename_attributes",
                &self.rename_attributes,
                &self.drop_attributes,
            ),
            (
                "rename_user_attributes",
                &self.rename_user_attributes,
                &self.drop_user_attributes,
            ),
        ] {
            for (from, to) in renames {
                if from.is_empty() || to.is_empty() {
                    problems.push(format!(
                        "{field}: names must not be empty ({from:?} → {to:?})"
                    ));
                }
                if drops.contains(from) || drops.contains(to) {
                    problems.push(format!(
                        "{field}: {from:?} → {to:?} also appears in the matching drop list"
                    ));
                }
            }
        }
        if self.set_environment == Some(Environment::Unspecified) {
            problems.push("set_environment must be production or development".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// No rule set: the connection passes batches on as they are.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    /// Applies the rules in place.
    pub fn apply(&self, batch: &mut Batch) -> Applied {
        let events_in = batch.events.len();
        batch.events.retain(|e| self.keeps(e));
        for event in &mut batch.events {
            if let Some(attrs) = &mut event.custom_attributes {
                rename_and_drop(
                    &mut attrs.values,
                    &self.rename_attributes,
                    &self.drop_attributes,
                );
            }
        }
        if let Some(attrs) = &mut batch.user_attributes {
            rename_and_drop(
                &mut attrs.values,
                &self.rename_user_attributes,
                &self.drop_user_attributes,
            );
        }
        if let Some(environment) = self.set_environment {
            batch.set_environment(environment);
            batch.extra.remove("environment");
        }
        if self.hash_identities {
            if let Some(ids) = &mut batch.user_identities {
                ids.values.iter_mut().for_each(hash_identity);
            }
            for event in &mut batch.events {
                if let Some(event::Kind::UserIdentityChange(change)) = &mut event.kind {
                    change
                        .new
                        .iter_mut()
                        .chain(change.old.iter_mut())
                        .for_each(hash_identity);
                }
            }
        }
        Applied {
            events_in,
            events_filtered: events_in - batch.events.len(),
        }
    }

    fn keeps(&self, event: &Event) -> bool {
        let Some(kind) = &event.kind else { return true };
        let event_type = schema::json::event_type_name(kind);
        if !self.allow_event_types.is_empty()
            && !self.allow_event_types.iter().any(|t| t == event_type)
        {
            return false;
        }
        if self.deny_event_types.iter().any(|t| t == event_type) {
            return false;
        }
        let Some(name) = event_name(kind) else {
            return true;
        };
        if !self.allow_event_names.is_empty() && !self.allow_event_names.iter().any(|n| n == name) {
            return false;
        }
        !self.deny_event_names.iter().any(|n| n == name)
    }
}

pub fn event_name(kind: &event::Kind) -> Option<&str> {
    match kind {
        event::Kind::CustomEvent(e) => e.event_name.as_deref(),
        event::Kind::CommerceEvent(e) => e.event_name.as_deref(),
        event::Kind::ScreenView(e) => e.screen_name.as_deref(),
        _ => None,
    }
}

fn rename_and_drop<V>(
    values: &mut BTreeMap<String, V>,
    renames: &BTreeMap<String, String>,
    drops: &[String],
) {
    for name in drops {
        values.remove(name);
    }
    for (from, to) in renames {
        if let Some(v) = values.remove(from) {
            values.insert(to.clone(), v);
        }
    }
}

/// SHA-256 hex of the trimmed value, lower-cased for e-mail (the form ad platforms match on).
pub fn hash_value(identity_type: &str, value: &str) -> String {
    let trimmed = value.trim();
    let normalised = if identity_type == "email" || identity_type.ends_with("_email") {
        trimmed.to_lowercase()
    } else {
        trimmed.to_owned()
    };
    sha2::Sha256::digest(normalised.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_identity(identity: &mut UserIdentity) {
    let kind = identity.identity_type.clone().unwrap_or_default();
    if let Some(value) = &mut identity.identity {
        *value = hash_value(&kind, value);
    }
    // A non-string value kept verbatim would leak in clear.
    identity.extra.remove("identity");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        schema::decode_batch(
            br#"{"environment":"development",
                 "user_identities":{"email":"  Ada@Example.COM ","customer_id":"c-1"},
                 "user_attributes":{"tier":"gold","secret":"x","old":"y"},
                 "events":[
                   {"event_type":"custom_event","data":{"event_name":"Play","custom_event_type":"media","custom_attributes":{"a":1,"b":2,"drop":3}}},
                   {"event_type":"custom_event","data":{"event_name":"Pause","custom_event_type":"media"}},
                   {"event_type":"screen_view","data":{"screen_name":"Home"}},
                   {"event_type":"session_start","data":{}},
                   {"event_type":"user_identity_change","data":{"new":{"identity_type":"email","identity":"B@x.io","timestamp_unixtime_ms":1}}}]}"#,
        )
        .unwrap()
    }

    fn types(b: &Batch) -> Vec<&'static str> {
        b.events
            .iter()
            .map(|e| schema::json::event_type_name(e.kind.as_ref().unwrap()))
            .collect()
    }

    #[test]
    fn event_type_and_name_filters() {
        let mut b = batch();
        let applied = Rules {
            deny_event_types: vec!["session_start".into()],
            ..Rules::default()
        }
        .apply(&mut b);
        assert_eq!(
            applied,
            Applied {
                events_in: 5,
                events_filtered: 1
            }
        );
        let mut b = batch();
        Rules {
            allow_event_types: vec!["custom_event".into(), "screen_view".into()],
            ..Rules::default()
        }
        .apply(&mut b);
        assert_eq!(types(&b), ["custom_event", "custom_event", "screen_view"]);
        let mut b = batch();
        Rules {
            allow_event_names: vec!["Play".into(), "Home".into()],
            ..Rules::default()
        }
        .apply(&mut b);
        assert_eq!(
            types(&b),
            [
                "custom_event",
                "screen_view",
                "session_start",
                "user_identity_change"
            ],
            "nameless events pass"
        );
        let mut b = batch();
        Rules {
            deny_event_names: vec!["Pause".into()],
            ..Rules::default()
        }
        .apply(&mut b);
        assert_eq!(b.events.len(), 4);
    }

    #[test]
    fn renames_drops_environment_and_hashing() {
        let mut b = batch();
        Rules {
            rename_attributes: [("a".to_owned(), "alpha".to_owned())].into(),
            drop_attributes: vec!["drop".into()],
            rename_user_attributes: [("old".to_owned(), "new".to_owned())].into(),
            drop_user_attributes: vec!["secret".into()],
            hash_identities: true,
            set_environment: Some(Environment::Production),
            ..Rules::default()
        }
        .apply(&mut b);
        let attrs: Vec<_> = b.events[0]
            .custom_attributes
            .as_ref()
            .unwrap()
            .values
            .keys()
            .cloned()
            .collect();
        assert_eq!(attrs, ["alpha", "b"]);
        let user: Vec<_> = b
            .user_attributes
            .as_ref()
            .unwrap()
            .values
            .keys()
            .cloned()
            .collect();
        assert_eq!(user, ["new", "tier"]);
        assert_eq!(b.environment(), Environment::Production);
        let ids = &b.user_identities.as_ref().unwrap().values;
        let email = ids
            .iter()
            .find(|i| i.identity_type.as_deref() == Some("email"))
            .unwrap();
        assert_eq!(
            email.identity.as_deref(),
            Some(hash_value("email", "ada@example.com").as_str())
        );
        assert_eq!(
            hash_value("email", " ADA@example.com"),
            hash_value("email", "ada@example.com")
        );
        // Checked against Python's hashlib.
        assert_eq!(
            hash_value("email", "ada@example.com"),
            "b5fc85e55755f9e0d030a10ab4429b6b2944855f9a0d60077fe832becbc41d72"
        );
        let Some(event::Kind::UserIdentityChange(change)) = &b.events[4].kind else {
            panic!()
        };
        assert_eq!(
            change.new.as_ref().unwrap().identity.as_deref(),
            Some(hash_value("email", "b@x.io").as_str())
        );
        let json = String::from_utf8(schema::encode_batch(&b, schema::Dialect::Inbound)).unwrap();
        assert!(
            !json.to_lowercase().contains("ada@example.com") && !json.contains("c-1"),
            "{json}"
        );
    }

    #[test]
    fn validation_names_every_problem() {
        let rules = Rules {
            allow_event_types: vec!["custom_event".into(), "custom".into()],
            deny_event_types: vec!["custom_event".into()],
            rename_attributes: [("a".to_owned(), "".to_owned())].into(),
            drop_user_attributes: vec!["x".into()],
            rename_user_attributes: [("x".to_owned(), "y".to_owned())].into(),
            ..Rules::default()
        };
        let problems = rules.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("allow_event_types: \"custom\" is not an mParticle event type")
        );
        assert!(Rules::default().validate().is_ok());
    }
}
