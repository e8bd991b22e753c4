//! The batch and event objects, whose shape is not a plain field table: `event_type` picks the
//! `data` message, `environment` is an enum, and `user_identities` differs between dialects.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::read::{
    Extra, Fields, Fit, Key, Kind, KindSeed, Msg, Scalar, ScalarSeed, capture_map, capture_seq,
    next_unmodelled, raw_scalars, write_extra, write_message,
};
use super::write::Writer;
use crate::Dialect;
use crate::v1::{
    Batch, Consent, ConsentPurposes, Environment, Event, UserIdentities, UserIdentity, event,
};

/// Declares every event type once: its JSON `event_type`, its `event::Kind` variant and message.
macro_rules! event_types {
    ($($name:literal => $variant:ident($message:ident)),* $(,)?) => {
        /// Every `event_type` value mParticle defines, in the order of its spec.
        pub const EVENT_TYPES: &[&str] = &[$($name),*];

        /// An empty `data` message for a known `event_type`.
        pub fn kind_for(event_type: &str) -> Option<event::Kind> {
            match event_type {
                $($name => Some(event::Kind::$variant(Default::default())),)*
                _ => None,
            }
        }

        /// The JSON `event_type` of a kind.
        pub fn event_type_name(kind: &event::Kind) -> &'static str {
            match kind {
                $(event::Kind::$variant(_) => $name,)*
            }
        }

        fn decode_kind_field<'de, A: MapAccess<'de>>(
            kind: &mut event::Kind,
            key: &str,
            map: &mut A,
            extra: &mut Extra,
        ) -> Result<bool, A::Error> {
            match kind {
                $(event::Kind::$variant(m) => m.decode_field(key, map, extra),)*
            }
        }

        fn encode_kind_fields(kind: &event::Kind, w: &mut Writer, dialect: Dialect) {
            match kind {
                $(event::Kind::$variant(m) => m.encode_fields(w, dialect),)*
            }
        }

        /// The JSON names of the `data` members specific to an event type.
        pub fn kind_field_names(kind: &event::Kind) -> &'static [&'static str] {
            match kind {
                $(event::Kind::$variant(_) => <crate::v1::$message as Fields>::NAMES,)*
            }
        }
    };
}

event_types! {
    "session_start" => SessionStart(SessionStart),
    "session_end" => SessionEnd(SessionEnd),
    "screen_view" => ScreenView(ScreenView),
    "custom_event" => CustomEvent(CustomEvent),
    "crash_report" => CrashReport(CrashReport),
    "opt_out" => OptOut(OptOut),
    "first_run" => FirstRun(FirstRun),
    "pre_attribution" => PreAttribution(PreAttribution),
    "push_registration" => PushRegistration(PushRegistration),
    "application_state_transition" => ApplicationStateTransition(ApplicationStateTransition),
    "push_message" => PushMessage(PushMessage),
    "network_performance" => NetworkPerformance(NetworkPerformance),
    "breadcrumb" => Breadcrumb(Breadcrumb),
    "profile" => Profile(Profile),
    "push_reaction" => PushReaction(PushReaction),
    "commerce_event" => CommerceEvent(CommerceEvent),
    "user_attribute_change" => UserAttributeChange(UserAttributeChange),
    "user_identity_change" => UserIdentityChange(UserIdentityChange),
    "uninstall" => Uninstall(Uninstall),
}

// ---------------------------------------------------------------------------------------------
// Consent purposes: an object of purpose name → consent.

pub struct Purposes;
impl Kind for Purposes {
    type Out = ConsentPurposes;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<ConsentPurposes>, D::Error> {
        d.deserialize_any(PurposesVisitor)
    }
    fn encode(value: &ConsentPurposes, w: &mut Writer, dialect: Dialect) {
        w.begin_object();
        for (purpose, consent) in &value.values {
            w.key(purpose);
            write_message(consent, w, dialect);
        }
        w.end_object();
    }
}

struct PurposesVisitor;
impl<'de> Visitor<'de> for PurposesVisitor {
    type Value = Fit<ConsentPurposes>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of consent purposes")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = BTreeMap::new();
        while let Some(key) = map.next_key::<Key>()? {
            match map.next_value_seed(KindSeed::<Msg<Consent>>::new())? {
                Ok(consent) => {
                    values.insert(key.0.into_owned(), consent);
                }
                Err(raw) => {
                    return Err(de::Error::custom(format!(
                        "consent purpose \"{}\" must be an object, found {raw}",
                        key.0
                    )));
                }
            }
        }
        Ok(Ok(ConsentPurposes { values }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        capture_seq(seq).map(Err)
    }
    raw_scalars!();
}

// ---------------------------------------------------------------------------------------------
// User identities: `{"email": "a@b.c"}` inbound, `[{"identity_type": "email", ...}]` outbound.

/// The Python SDK writes `customerid`; mParticle's name is `customer_id`.
fn identity_type_name(name: &str) -> &str {
    if name == "customerid" {
        super::note_normalised();
        "customer_id"
    } else {
        name
    }
}

pub struct Identities;
impl Kind for Identities {
    type Out = UserIdentities;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<UserIdentities>, D::Error> {
        d.deserialize_any(IdentitiesVisitor)
    }
    fn encode(value: &UserIdentities, w: &mut Writer, dialect: Dialect) {
        match dialect {
            Dialect::Inbound => {
                w.begin_object();
                for identity in &value.values {
                    // The inbound object form cannot carry an identity without a type.
                    let Some(identity_type) = &identity.identity_type else {
                        continue;
                    };
                    w.key(identity_type);
                    match (&identity.identity, identity.extra.get("identity")) {
                        (Some(id), _) => w.string(id),
                        (None, Some(raw)) => w.raw(raw),
                        (None, None) => w.null(),
                    }
                }
                w.end_object();
            }
            Dialect::Outbound => {
                w.begin_array();
                for identity in &value.values {
                    write_message(identity, w, dialect);
                }
                w.end_array();
            }
        }
    }
}

struct IdentitiesVisitor;
impl<'de> Visitor<'de> for IdentitiesVisitor {
    type Value = Fit<UserIdentities>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("user identities (an object or an array)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            let mut identity = UserIdentity {
                identity_type: Some(identity_type_name(&key.0).to_owned()),
                ..Default::default()
            };
            match map.next_value_seed(KindSeed::<super::read::Str>::new())? {
                Ok(id) => identity.identity = Some(id),
                // null or a non-string: kept as sent.
                Err(raw) => {
                    identity.extra.insert("identity".to_owned(), raw);
                }
            }
            values.push(identity);
        }
        Ok(Ok(UserIdentities { values }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        while let Some(item) = seq.next_element_seed(KindSeed::<Msg<UserIdentity>>::new())? {
            match item {
                Ok(mut identity) => {
                    if let Some(t) = &identity.identity_type
                        && t == "customerid"
                    {
                        super::note_normalised();
                        identity.identity_type = Some("customer_id".to_owned());
                    }
                    values.push(identity)
                }
                Err(raw) => {
                    return Err(de::Error::custom(format!(
                        "user_identities[{}] must be an object, found {raw}",
                        values.len()
                    )));
                }
            }
        }
        Ok(Ok(UserIdentities { values }))
    }
    raw_scalars!();
}

// ---------------------------------------------------------------------------------------------
// Events.

/// An event, with the whole body it is read from when its type may be looked ahead for, read
/// into its place in the list: an `Event` is 544 bytes, and returned by value it was copied
/// through each of the reader's layers and then into the list.
struct EventSeed<'i, 'e> {
    input: Option<&'i [u8]>,
    into: &'e mut Event,
}
impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(EventVisitor {
            input: self.input,
            event: self.into,
        })
    }
}

/// Why a read whose look-ahead guessed an event's type wrong gives up: the caller reads the
/// batches again without looking ahead.
const MISGUESSED: &str = "an event's type was looked ahead for and guessed wrong";

/// How far past an event's `data` key its `event_type` is looked for: a typical event is about
/// a kilobyte; past this, `data` is kept and decoded once the type is known.
const LOOK_AHEAD: usize = 16 * 1024;

/// The type an event whose `data` comes before its `event_type` will turn out to have: the
/// first `"event_type": "<name>"` after the `data` key (`key`, borrowed from `input`). Only a
/// guess: the text found may be inside `data`, or in a later event; the caller checks it
/// against the type it then reads.
fn guess_kind(input: &[u8], key: &str) -> Option<event::Kind> {
    let start = (key.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    let rest = input.get(start..)?;
    let rest = &rest[..rest.len().min(LOOK_AHEAD)];
    const TYPE_KEY: &[u8] = b"\"event_type\"";
    // Built once: `memmem::find` builds its searcher on every call, as costly as the search.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(TYPE_KEY));
    let at = FINDER.find(rest)? + TYPE_KEY.len();
    let mut rest = rest.get(at..)?;
    let skip_space = |r: &mut &[u8]| {
        while let [b' ' | b'\t' | b'\n' | b'\r', tail @ ..] = *r {
            *r = tail;
        }
    };
    skip_space(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_space(&mut rest);
    rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    kind_for(std::str::from_utf8(&rest[..end]).ok()?)
}

/// Reads an event into `event`, which starts empty.
struct EventVisitor<'i, 'e> {
    input: Option<&'i [u8]>,
    event: &'e mut Event,
}
impl<'de> Visitor<'de> for EventVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let event = self.event;
        let mut extra = Extra::new();
        let mut data_extra = Extra::new();
        // `data` often comes before `event_type` (the Python SDK and mParticle's own sample
        // write it first). When the body is at hand, the type is looked ahead for and `data`
        // decoded at once; a wrong guess gives up the whole read (the caller reads again
        // without looking ahead). Otherwise `data`'s bytes are kept and decoded once the type
        // is known, which scans them twice.
        let mut pending_data: Option<&'de RawValue> = None;
        let mut type_seen = false;
        let mut guessed = false;
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                "event_type" => {
                    type_seen = true;
                    let value = map.next_value_seed(ScalarSeed)?;
                    let kind = match &value {
                        Scalar::Str(name) => kind_for(name),
                        _ => None,
                    };
                    if guessed {
                        // `data` was decoded as the guessed type: only that type will do.
                        let same = match (&kind, &event.kind) {
                            (Some(read), Some(guess)) => {
                                std::mem::discriminant(read) == std::mem::discriminant(guess)
                            }
                            _ => false,
                        };
                        if !same {
                            return Err(de::Error::custom(MISGUESSED));
                        }
                        extra.remove("event_type");
                        continue;
                    }
                    event.kind = kind;
                    if event.kind.is_none() {
                        // Missing or unknown: validation reports it with the value sent.
                        extra.insert("event_type".to_owned(), value.into_raw());
                    } else {
                        extra.remove("event_type");
                    }
                }
                // A second `data` after a guessed one: the guess cannot be undone.
                "data" if guessed => return Err(de::Error::custom(MISGUESSED)),
                "data" if type_seen => {
                    map.next_value_seed(DataSeed {
                        event: &mut *event,
                        extra: &mut data_extra,
                    })?;
                }
                "data" => {
                    let guess = match (self.input, &key.0) {
                        (Some(input), Cow::Borrowed(key)) if pending_data.is_none() => {
                            guess_kind(input, key)
                        }
                        _ => None,
                    };
                    if guess.is_some() {
                        event.kind = guess;
                        guessed = true;
                        map.next_value_seed(DataSeed {
                            event: &mut *event,
                            extra: &mut data_extra,
                        })?;
                    } else {
                        pending_data = Some(map.next_value()?);
                    }
                }
                _ => next_unmodelled(&mut map, key, &mut extra)?,
            }
        }
        if guessed && !type_seen {
            return Err(de::Error::custom(MISGUESSED));
        }
        if let Some(raw) = pending_data {
            let mut d = serde_json::Deserializer::from_str(raw.get());
            DataSeed {
                event: &mut *event,
                extra: &mut data_extra,
            }
            .deserialize(&mut d)
            .map_err(de::Error::custom)?;
        }
        event.extra = extra;
        event.data_extra = data_extra;
        Ok(())
    }
}

/// Decodes an event's `data` object into its common fields and its type's message.
struct DataSeed<'a> {
    event: &'a mut Event,
    extra: &'a mut Extra,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event's data object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let DataSeed { event, extra } = self;
        let mut kind = event.kind.take();
        while let Some(key) = map.next_key::<Key>()? {
            if event.decode_field(&key.0, &mut map, extra)? {
                continue;
            }
            if let Some(kind) = &mut kind
                && decode_kind_field(kind, &key.0, &mut map, extra)?
            {
                continue;
            }
            next_unmodelled(&mut map, key, extra)?;
        }
        event.kind = kind;
        Ok(())
    }
    // The Python SDK's and others' "no data" is `{}`; a `null` means the same.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

fn write_event(event: &Event, w: &mut Writer, dialect: Dialect) {
    w.begin_object();
    if let Some(kind) = &event.kind {
        w.key("event_type");
        w.string(event_type_name(kind));
    }
    w.key("data");
    w.begin_object();
    event.encode_fields(w, dialect);
    if let Some(kind) = &event.kind {
        encode_kind_fields(kind, w, dialect);
    }
    write_extra(&event.data_extra, w);
    w.end_object();
    write_extra(&event.extra, w);
    w.end_object();
}

struct EventsVisitor<'i>(Option<&'i [u8]>);
impl<'de> Visitor<'de> for EventsVisitor<'_> {
    type Value = Fit<Vec<Event>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // An `Event` is ~1.5 KB: growing the list a doubling at a time copied ~22 KB for a
        // batch of ten.
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(crate::EVENTS_GUESS));
        loop {
            events.push(Event::default());
            let Some(into) = events.last_mut() else {
                break;
            };
            let seed = EventSeed {
                input: self.0,
                into,
            };
            if seq.next_element_seed(seed)?.is_none() {
                events.pop();
                break;
            }
        }
        Ok(Ok(events))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        capture_map(map).map(Err)
    }
    raw_scalars!();
}

// ---------------------------------------------------------------------------------------------
// The batch.

pub fn environment_from_name(name: &str) -> Option<Environment> {
    match name {
        "production" => Some(Environment::Production),
        "development" => Some(Environment::Development),
        _ => None,
    }
}

pub fn environment_name(environment: Environment) -> Option<&'static str> {
    match environment {
        Environment::Production => Some("production"),
        Environment::Development => Some("development"),
        Environment::Unspecified => None,
    }
}

/// A batch; with the whole body it is read from, its events' types are looked ahead for
/// (see `EventVisitor`).
pub struct BatchSeed<'i>(pub Option<&'i [u8]>);
impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Batch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_map(BatchVisitor(self.0))
    }
}

struct BatchVisitor<'i>(Option<&'i [u8]>);
impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Batch;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
        let mut batch = Batch::default();
        let mut extra = Extra::new();
        while let Some(key) = map.next_key::<Key>()? {
            match &*key.0 {
                // A repeated key: the last one wins, in the field or in `extra`.
                "events" => match map.next_value_seed(EventsSeed(self.0))? {
                    Ok(events) => {
                        batch.events = events;
                        extra.remove("events");
                    }
                    Err(raw) => {
                        batch.events.clear();
                        extra.insert("events".to_owned(), raw);
                    }
                },
                "environment" => {
                    let value = map.next_value_seed(ScalarSeed)?;
                    let environment = match &value {
                        Scalar::Str(name) => environment_from_name(name),
                        _ => None,
                    };
                    match environment {
                        Some(environment) => {
                            batch.set_environment(environment);
                            extra.remove("environment");
                        }
                        None => {
                            batch.set_environment(Environment::Unspecified);
                            extra.insert("environment".to_owned(), value.into_raw());
                        }
                    }
                }
                "user_identities" => match map.next_value_seed(KindSeed::<Identities>::new())? {
                    Ok(identities) => {
                        batch.user_identities = Some(Box::new(identities));
                        extra.remove("user_identities");
                    }
                    Err(raw) => {
                        batch.user_identities = None;
                        extra.insert("user_identities".to_owned(), raw);
                    }
                },
                name => {
                    if !batch.decode_field(name, &mut map, &mut extra)? {
                        next_unmodelled(&mut map, key, &mut extra)?;
                    }
                }
            }
        }
        batch.extra = extra;
        Ok(batch)
    }
}

struct EventsSeed<'i>(Option<&'i [u8]>);
impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = Fit<Vec<Event>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(EventsVisitor(self.0))
    }
}

/// Appends one batch as JSON of the given dialect.
pub fn write_batch(batch: &Batch, w: &mut Writer, dialect: Dialect) {
    w.begin_object();
    w.key("events");
    w.begin_array();
    for event in &batch.events {
        write_event(event, w, dialect);
    }
    w.end_array();
    if let Some(name) = environment_name(batch.environment()) {
        w.key("environment");
        w.string(name);
    }
    if let Some(identities) = &batch.user_identities {
        w.key("user_identities");
        Identities::encode(identities, w, dialect);
    }
    batch.encode_fields(w, dialect);
    write_extra(&batch.extra, w);
    w.end_object();
}

/// A top-level JSON body: one batch object, or an array of them.
pub struct BatchesSeed;
impl<'de> DeserializeSeed<'de> for BatchesSeed {
    type Value = Vec<Batch>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Batch>, D::Error> {
        d.deserialize_any(BatchesVisitor)
    }
}

struct BatchesVisitor;
impl<'de> Visitor<'de> for BatchesVisitor {
    type Value = Vec<Batch>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object or an array of batch objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Batch>, A::Error> {
        let mut batches = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(batch) = seq.next_element_seed(BatchSeed(None))? {
            batches.push(batch);
        }
        Ok(batches)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Batch>, A::Error> {
        BatchVisitor(None).visit_map(map).map(|batch| vec![batch])
    }
}
