//! mParticle's documented limits (reference/mparticle/NOTES.md §2) and the truncation it applies
//! to server-to-server data, so that what we send is what mParticle would keep.

use crate::v1::{Attributes, Batch, Value, event, value};

/// Batches in one `/v2/bulkevents` request.
pub const MAX_BATCHES_PER_REQUEST: usize = 100;
/// Bytes of one request body, whatever the endpoint.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Bytes of one encoded batch.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// mParticle's default rate limit.
pub const DEFAULT_BATCHES_PER_SECOND: u32 = 270;
/// Characters of an event name (longer ones are truncated for S2S data).
pub const MAX_EVENT_NAME_CHARS: usize = 256;
/// Characters of an event or user attribute name.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;
/// Characters of an event or user attribute value.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 4096;
/// Unique attributes on one event.
pub const MAX_ATTRIBUTES_PER_EVENT: usize = 100;
/// User attributes in one batch.
pub const MAX_USER_ATTRIBUTES: usize = 100;
/// Entries of one user attribute list.
pub const MAX_USER_ATTRIBUTE_LIST_ENTRIES: usize = 1000;
/// Characters of one user attribute list entry.
pub const MAX_USER_ATTRIBUTE_LIST_ENTRY_CHARS: usize = 512;

/// What [`truncate_to_limits`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Truncations {
    pub event_names: usize,
    pub attribute_names: usize,
    pub attribute_values: usize,
}

impl Truncations {
    pub fn total(&self) -> usize {
        self.event_names + self.attribute_names + self.attribute_values
    }
}

/// Applies mParticle's S2S truncation: event names and attribute names over 256 characters,
/// attribute values over 4096, user attribute list entries over 512. Counts are left alone
/// (mParticle drops, not truncates, past them; that is for the sender to decide).
pub fn truncate_to_limits(batch: &mut Batch) -> Truncations {
    let mut t = Truncations::default();
    if let Some(attrs) = &mut batch.user_attributes {
        truncate_attributes(attrs, MAX_USER_ATTRIBUTE_LIST_ENTRY_CHARS, &mut t);
    }
    for event in &mut batch.events {
        if let Some(attrs) = &mut event.custom_attributes {
            truncate_attributes(attrs, MAX_ATTRIBUTE_VALUE_CHARS, &mut t);
        }
        let name = match &mut event.kind {
            Some(event::Kind::CustomEvent(e)) => e.event_name.as_mut(),
            Some(event::Kind::CommerceEvent(e)) => e.event_name.as_mut(),
            Some(event::Kind::ScreenView(e)) => e.screen_name.as_mut(),
            _ => None,
        };
        if let Some(name) = name
            && truncate_chars(name, MAX_EVENT_NAME_CHARS)
        {
            t.event_names += 1;
        }
    }
    t
}

fn truncate_attributes(attrs: &mut Attributes, list_entry_chars: usize, t: &mut Truncations) {
    if attrs
        .values
        .keys()
        .any(|k| k.chars().count() > MAX_ATTRIBUTE_NAME_CHARS)
    {
        let values = std::mem::take(&mut attrs.values);
        for (mut name, value) in values {
            if truncate_chars(&mut name, MAX_ATTRIBUTE_NAME_CHARS) {
                t.attribute_names += 1;
            }
            // Two names equal after truncation: the first (in name order) is kept, as a map can.
            attrs.values.entry(name).or_insert(value);
        }
    }
    for value in attrs.values.values_mut() {
        truncate_value(value, MAX_ATTRIBUTE_VALUE_CHARS, list_entry_chars, t);
    }
}

fn truncate_value(value: &mut Value, max: usize, list_entry_chars: usize, t: &mut Truncations) {
    match &mut value.kind {
        Some(value::Kind::StringValue(s)) => {
            t.attribute_values += usize::from(truncate_chars(s, max))
        }
        Some(value::Kind::ListValue(list)) => {
            for v in &mut list.values {
                truncate_value(v, list_entry_chars, list_entry_chars, t);
            }
        }
        _ => {}
    }
}

/// Cuts `s` to at most `max` characters (not bytes: mParticle counts characters).
pub fn truncate_chars(s: &mut String, max: usize) -> bool {
    match s.char_indices().nth(max) {
        Some((byte_index, _)) => {
            s.truncate(byte_index);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CustomEvent, Event};

    fn text(n: usize, c: char) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    #[test]
    fn truncates_names_and_values_by_characters() {
        let long_name = text(300, 'é');
        let mut attrs = Attributes::default();
        attrs.values.insert(
            long_name.clone(),
            Value {
                kind: Some(value::Kind::StringValue(text(5000, '🎉'))),
            },
        );
        attrs.values.insert(
            "short".into(),
            Value {
                kind: Some(value::Kind::IntValue(7)),
            },
        );
        let mut batch = Batch {
            events: vec![Event {
                custom_attributes: Some(attrs.clone()),
                kind: Some(event::Kind::CustomEvent(CustomEvent {
                    event_name: Some(text(257, 'a')),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            user_attributes: Some(Attributes {
                values: [(
                    "list".to_owned(),
                    Value {
                        kind: Some(value::Kind::ListValue(crate::v1::ValueList {
                            values: vec![Value {
                                kind: Some(value::Kind::StringValue(text(600, 'x'))),
                            }],
                        })),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };
        let t = truncate_to_limits(&mut batch);
        assert_eq!(
            t,
            Truncations {
                event_names: 1,
                attribute_names: 1,
                attribute_values: 2
            }
        );

        let event = &batch.events[0];
        let Some(event::Kind::CustomEvent(e)) = &event.kind else {
            panic!("kind changed")
        };
        assert_eq!(
            e.event_name.as_deref().map(|n| n.chars().count()),
            Some(256)
        );
        let attrs = event.custom_attributes.as_ref().unwrap();
        let (name, value) = attrs
            .values
            .iter()
            .find(|(k, _)| k.starts_with('é'))
            .unwrap();
        assert_eq!(name.chars().count(), 256);
        let Some(value::Kind::StringValue(v)) = &value.kind else {
            panic!()
        };
        assert_eq!(v.chars().count(), 4096);
        assert!(attrs.values.contains_key("short"));

        let list = &batch.user_attributes.as_ref().unwrap().values["list"];
        let Some(value::Kind::ListValue(list)) = &list.kind else {
            panic!()
        };
        let Some(value::Kind::StringValue(entry)) = &list.values[0].kind else {
            panic!()
        };
        assert_eq!(entry.len(), 512);

        // Within the limits, a second pass changes nothing.
        assert_eq!(truncate_to_limits(&mut batch).total(), 0);
    }
}
