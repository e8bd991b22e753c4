//! Single-pass decoding helpers on top of serde's streaming `Deserializer`.
//!
//! Every known field is read straight into its typed slot. A value whose JSON type does not fit
//! the slot (a `null`, a number where a string was documented, ...) is not an error: it is kept
//! verbatim as JSON text in the object's `extra` map, so the encoder writes it back unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::write::Writer;
use crate::Dialect;
use crate::v1::{Attributes, NestedAttributes, StringList, Value, ValueList, value};

/// Unmodelled members of an object: key → raw JSON text.
pub type Extra = BTreeMap<String, String>;

/// A decoded slot: the typed value, or the raw JSON that did not fit it.
pub type Fit<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Keys, borrowed from the input when they hold no escapes.

pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The `visit_*` methods [`Skip`] and its variants share: every scalar but a string is taken
/// as itself, and an array's elements are skipped as [`Skip`] does (as a raw capture reads
/// them).
macro_rules! skip_others {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Skip)?.is_some() {}
            Ok(())
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Raw capture: re-emit any JSON value as compact text (for `extra` and `Value.json`).

/// Writes the value it deserializes as JSON text into the writer's buffer.
pub struct Capture<'w, 'b>(pub &'w mut Writer<'b>);

impl<'de> DeserializeSeed<'de> for Capture<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Capture<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.bool(v);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.i64(v);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.u64(v);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.f64(v);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.string(v);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.null();
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.null();
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.begin_array();
        while seq.next_element_seed(Capture(self.0))?.is_some() {}
        self.0.end_array();
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.begin_object();
        while let Some(key) = map.next_key::<Key>()? {
            self.0.key(&key.0);
            map.next_value_seed(Capture(self.0))?;
        }
        self.0.end_object();
        Ok(())
    }
}

pub fn capture_seq<'de, A: SeqAccess<'de>>(seq: A) -> Result<String, A::Error> {
    let mut buf = Vec::new();
    Capture(&mut Writer::new(&mut buf)).visit_seq(seq)?;
    Ok(into_string(buf))
}

pub fn capture_map<'de, A: MapAccess<'de>>(map: A) -> Result<String, A::Error> {
    let mut buf = Vec::new();
    Capture(&mut Writer::new(&mut buf)).visit_map(map)?;
    Ok(into_string(buf))
}

/// Reads the next map value as raw JSON text.
pub fn next_raw<'de, A: MapAccess<'de>>(map: &mut A) -> Result<String, A::Error> {
    let mut buf = Vec::new();
    map.next_value_seed(Capture(&mut Writer::new(&mut buf)))?;
    Ok(into_string(buf))
}

fn into_string(buf: Vec<u8>) -> String {
    // The writer only appends UTF-8 (escaped `&str`s and ASCII tokens).
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Scalars.

/// Any JSON value, with compound values already captured as text.
pub enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    Raw(String),
}

impl Scalar<'_> {
    /// The value as JSON text, for `extra`.
    pub fn into_raw(self) -> String {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        match self {
            Scalar::Null => w.null(),
            Scalar::Bool(b) => w.bool(b),
            Scalar::I64(v) => w.i64(v),
            Scalar::U64(v) => w.u64(v),
            Scalar::F64(v) => w.f64(v),
            Scalar::Str(s) => w.string(&s),
            Scalar::Raw(raw) => return raw,
        }
        into_string(buf)
    }
}

/// Reads any value as a [`Scalar`], borrowing text from the input where it can.
pub struct ScalarSeed;
impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

pub struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => Scalar::I64(v),
            Err(_) => Scalar::U64(v),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        capture_seq(seq).map(Scalar::Raw)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        capture_map(map).map(Scalar::Raw)
    }
}

// ---------------------------------------------------------------------------------------------
// Field kinds: how one slot decodes and encodes.

/// How one kind of field is read from and written to JSON.
pub trait Kind {
    type Out;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<Self::Out>, D::Error>;
    fn encode(value: &Self::Out, w: &mut Writer, dialect: Dialect);
    /// Reads a value and keeps nothing, refusing exactly what [`Kind::decode`] refuses and
    /// noting a changed form where it does (see [`super::skimming`]). Decoding and dropping
    /// does both by construction; the kinds most members have skip cheaper.
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Self::decode(d).map(drop)
    }
}

/// Skips the next map value as kind `K` ([`Kind::skip`]).
pub struct SkipSeed<K>(pub PhantomData<K>);

impl<'de, K: Kind> DeserializeSeed<'de> for SkipSeed<K> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        K::skip(d)
    }
}

/// The members a skimmed read keeps (by JSON name, in whichever message they appear): what
/// validation (an event type's required members, a commerce action's `action`, timestamps for
/// the historical endpoint), the pass-through ids and the outbound-only check read.
pub fn kept_when_skimming(key: &str) -> bool {
    matches!(
        key,
        "source_request_id"
            | "source_message_id"
            | "timestamp_unixtime_ms"
            | "message_id"
            | "message_type"
            | "unique_id"
            | "system_notifications"
            | "event_name"
            | "custom_event_type"
            | "product_action"
            | "promotion_action"
            | "action"
            | "register"
            | "registration_token"
            | "application_transition_type"
            | "push_message_type"
            | "label"
    )
}

/// The next value of a member the message does not model: kept as raw text in `extra`, or,
/// when skimming, checked and left out.
pub fn next_unmodelled<'de, A: MapAccess<'de>>(
    map: &mut A,
    key: Key<'de>,
    extra: &mut Extra,
) -> Result<(), A::Error> {
    if super::skims() {
        map.next_value_seed(Skip)
    } else {
        extra.insert(key.0.into_owned(), next_raw(map)?);
        Ok(())
    }
}

/// Decodes the next map value as kind `K`.
pub struct KindSeed<K>(PhantomData<K>);

impl<K> KindSeed<K> {
    pub fn new() -> Self {
        KindSeed(PhantomData)
    }
}

impl<K> Default for KindSeed<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'de, K: Kind> DeserializeSeed<'de> for KindSeed<K> {
    type Value = Fit<K::Out>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        K::decode(d)
    }
}

/// Text. Other JSON types stay raw (mParticle's schema allows any scalar where it says string).
pub struct Str;
impl Kind for Str {
    type Out = String;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<String>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Str(s) => Ok(s.into_owned()),
            other => Err(other.into_raw()),
        })
    }
    fn encode(value: &String, w: &mut Writer, _: Dialect) {
        w.string(value)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Skip.deserialize(d)
    }
}

/// A signed 64-bit id or timestamp: a number inbound, a string of digits outbound. Both are read.
pub struct Long;
impl Kind for Long {
    type Out = i64;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<i64>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::I64(v) => Ok(v),
            Scalar::Str(s) => match s.parse::<i64>() {
                Ok(v) if !s.starts_with('+') => {
                    super::note_normalised();
                    Ok(v)
                }
                _ => Err(Scalar::Str(s).into_raw()),
            },
            other => Err(other.into_raw()),
        })
    }
    fn encode(value: &i64, w: &mut Writer, dialect: Dialect) {
        match dialect {
            Dialect::Inbound => w.i64(*value),
            Dialect::Outbound => w.i64_as_string(*value),
        }
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        d.deserialize_any(SkipLong)
    }
}

/// [`Skip`] for a [`Long`]: a string of digits is read as the number, which changes its form.
struct SkipLong;
impl<'de> Visitor<'de> for SkipLong {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if !v.starts_with('+') && v.parse::<i64>().is_ok() {
            super::note_normalised();
        }
        Ok(())
    }
    skip_others!();
}

/// A small integer (sizes, counts): always a JSON number.
pub struct Int;
impl Kind for Int {
    type Out = i64;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<i64>, D::Error> {
        Long::decode(d)
    }
    fn encode(value: &i64, w: &mut Writer, _: Dialect) {
        w.i64(*value)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Long::skip(d)
    }
}

/// A JSON number kept as a double.
pub struct Num;
impl Kind for Num {
    type Out = f64;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<f64>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::F64(v) => Ok(v),
            Scalar::I64(v) => Ok(v as f64),
            Scalar::U64(v) => Ok(v as f64),
            other => Err(other.into_raw()),
        })
    }
    fn encode(value: &f64, w: &mut Writer, _: Dialect) {
        w.f64(*value)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Skip.deserialize(d)
    }
}

pub struct Bool;
impl Kind for Bool {
    type Out = bool;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<bool>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Bool(v) => Ok(v),
            other => Err(other.into_raw()),
        })
    }
    fn encode(value: &bool, w: &mut Writer, _: Dialect) {
        w.bool(*value)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Skip.deserialize(d)
    }
}

/// Any JSON value, typed where it is a scalar or a list (attribute values keep their type).
pub struct Any;
impl Kind for Any {
    type Out = Value;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<Value>, D::Error> {
        d.deserialize_any(ValueVisitor).map(Ok)
    }
    fn encode(value: &Value, w: &mut Writer, _: Dialect) {
        write_value(value, w)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Skip.deserialize(d)
    }
}

struct ValueSeed;
impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;
impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(kind(value::Kind::BoolValue(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(kind(value::Kind::IntValue(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(kind(match i64::try_from(v) {
            Ok(v) => value::Kind::IntValue(v),
            Err(_) => value::Kind::UintValue(v),
        }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(kind(value::Kind::DoubleValue(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(kind(value::Kind::StringValue(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(kind(value::Kind::StringValue(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value { kind: None })
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value { kind: None })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            values.push(v);
        }
        Ok(kind(value::Kind::ListValue(ValueList { values })))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        capture_map(map).map(|raw| kind(value::Kind::Json(raw)))
    }
}

fn kind(k: value::Kind) -> Value {
    Value { kind: Some(k) }
}

pub fn write_value(value: &Value, w: &mut Writer) {
    match &value.kind {
        None => w.null(),
        Some(value::Kind::BoolValue(v)) => w.bool(*v),
        Some(value::Kind::IntValue(v)) => w.i64(*v),
        Some(value::Kind::UintValue(v)) => w.u64(*v),
        Some(value::Kind::DoubleValue(v)) => w.f64(*v),
        Some(value::Kind::StringValue(v)) => w.string(v),
        Some(value::Kind::ListValue(list)) => {
            w.begin_array();
            for v in &list.values {
                write_value(v, w);
            }
            w.end_array();
        }
        Some(value::Kind::Json(raw)) => w.raw(raw),
    }
}

/// The `visit_*` methods of a visitor whose `Value` is `Fit<T>`, for the JSON types that do not
/// fit: they become raw text.
macro_rules! raw_scalars {
    () => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Err("null".to_owned()))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Err("null".to_owned()))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Err($crate::json::read::Scalar::Bool(v).into_raw()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Err($crate::json::read::Scalar::I64(v).into_raw()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Err($crate::json::read::Scalar::U64(v).into_raw()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Err($crate::json::read::Scalar::F64(v).into_raw()))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Err($crate::json::read::Scalar::Str(
                std::borrow::Cow::Borrowed(v),
            )
            .into_raw()))
        }
    };
}
pub(crate) use raw_scalars;

/// An object of attribute name → value.
pub struct Attrs;
impl Kind for Attrs {
    type Out = Attributes;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<Attributes>, D::Error> {
        d.deserialize_any(AttrsVisitor)
    }
    fn encode(value: &Attributes, w: &mut Writer, _: Dialect) {
        write_attrs(&value.values, w)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Skip.deserialize(d)
    }
}

fn write_attrs(values: &BTreeMap<String, Value>, w: &mut Writer) {
    w.begin_object();
    for (k, v) in values {
        w.key(k);
        write_value(v, w);
    }
    w.end_object();
}

struct AttrsVisitor;
impl<'de> Visitor<'de> for AttrsVisitor {
    type Value = Fit<Attributes>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = BTreeMap::new();
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value_seed(ValueSeed)?;
            values.insert(key.0.into_owned(), value);
        }
        Ok(Ok(Attributes { values }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        capture_seq(seq).map(Err)
    }
    raw_scalars!();
}

/// Reads any value and keeps nothing, refusing exactly what reading it into an attribute map
/// refuses (keys as [`Key`]s, and every scalar read as itself: a number out of range, a string
/// that is not UTF-8 or a lone surrogate), where `IgnoredAny` would pass some of those.
pub struct Skip;
impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // By name, so the quick reader (`scan`) can pass over the value in one tight pass;
        // any other deserializer hands it back to `visit_newtype_struct`.
        d.deserialize_newtype_struct(super::scan::SKIP, self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    skip_others!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<Key>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// An object of objects, each kept whole.
pub struct Nested;
impl Kind for Nested {
    type Out = NestedAttributes;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<NestedAttributes>, D::Error> {
        Ok(Attrs::decode(d)?.map(|a| NestedAttributes { values: a.values }))
    }
    fn encode(value: &NestedAttributes, w: &mut Writer, _: Dialect) {
        write_attrs(&value.values, w)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        Attrs::skip(d)
    }
}

/// A list of strings.
pub struct Strings;
impl Kind for Strings {
    type Out = StringList;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<StringList>, D::Error> {
        d.deserialize_any(StringsVisitor)
    }
    fn encode(value: &StringList, w: &mut Writer, _: Dialect) {
        w.begin_array();
        for v in &value.values {
            w.string(v);
        }
        w.end_array();
    }
}

struct StringsVisitor;
impl<'de> Visitor<'de> for StringsVisitor {
    type Value = Fit<StringList>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element::<String>()? {
            values.push(v);
        }
        Ok(Ok(StringList { values }))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        capture_map(map).map(Err)
    }
    raw_scalars!();
}

// ---------------------------------------------------------------------------------------------
// Messages.

/// The modelled fields of one JSON object, generated by `fields!`.
pub trait Fields: Default {
    /// The JSON names of the modelled fields.
    const NAMES: &'static [&'static str];
    /// Reads `key`'s value if it is a modelled field (a value that does not fit goes to `extra`).
    /// Returns false, with the value not consumed, for a key this message does not model.
    fn decode_field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        extra: &mut Extra,
    ) -> Result<bool, A::Error>;
    /// Skips `key`'s value as its kind ([`Kind::skip`]) if it is a modelled field. Returns
    /// false, with the value not consumed, for a key this message does not model.
    fn skip_field<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<bool, A::Error>;
    /// Writes the fields that are set as `"key":value` members.
    fn encode_fields(&self, w: &mut Writer, dialect: Dialect);
}

/// A message that keeps its own unmodelled members.
pub trait HasExtra {
    fn extra(&self) -> &Extra;
    fn extra_mut(&mut self) -> &mut Extra;
}

pub fn write_extra(extra: &Extra, w: &mut Writer) {
    for (k, raw) in extra {
        w.key(k);
        w.raw(raw);
    }
}

/// A nested object decoded into message `T`.
pub struct Msg<T>(PhantomData<T>);
impl<T: Fields + HasExtra> Kind for Msg<T> {
    type Out = T;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<T>, D::Error> {
        d.deserialize_any(MessageVisitor::<T>(PhantomData))
    }
    fn encode(value: &T, w: &mut Writer, dialect: Dialect) {
        write_message(value, w, dialect)
    }
    fn skip<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        d.deserialize_any(SkipMessage::<T>(PhantomData))
    }
}

/// [`Skip`] for a [`Msg`]: each member it models is skipped as its kind.
struct SkipMessage<T>(PhantomData<T>);
impl<'de, T: Fields> Visitor<'de> for SkipMessage<T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    skip_others!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            if !T::skip_field(&key.0, &mut map)? {
                map.next_value_seed(Skip)?;
            }
        }
        Ok(())
    }
}

pub fn write_message<T: Fields + HasExtra>(value: &T, w: &mut Writer, dialect: Dialect) {
    w.begin_object();
    value.encode_fields(w, dialect);
    write_extra(value.extra(), w);
    w.end_object();
}

pub struct MessageVisitor<T>(pub PhantomData<T>);
impl<'de, T: Fields + HasExtra> Visitor<'de> for MessageVisitor<T> {
    type Value = Fit<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut message = T::default();
        let mut extra = Extra::new();
        while let Some(key) = map.next_key::<Key>()? {
            if !message.decode_field(&key.0, &mut map, &mut extra)? {
                next_unmodelled(&mut map, key, &mut extra)?;
            }
        }
        *message.extra_mut() = extra;
        Ok(Ok(message))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        capture_seq(seq).map(Err)
    }
    raw_scalars!();
}

/// A list wrapper message (`Products`, `Promotions`, ...): presence tells absent from empty.
pub trait ListOf: Default {
    type Item: Fields + HasExtra;
    fn items(&self) -> &[Self::Item];
    fn from_items(items: Vec<Self::Item>) -> Self;
}

/// An array of objects. An element that is not an object is an error: nothing in mParticle's
/// format puts one there, and guessing would misplace data.
pub struct List<L>(PhantomData<L>);
impl<L: ListOf> Kind for List<L> {
    type Out = L;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Fit<L>, D::Error> {
        d.deserialize_any(ListVisitor::<L>(PhantomData))
    }
    fn encode(value: &L, w: &mut Writer, dialect: Dialect) {
        w.begin_array();
        for item in value.items() {
            write_message(item, w, dialect);
        }
        w.end_array();
    }
}

struct ListVisitor<L>(PhantomData<L>);
impl<'de, L: ListOf> Visitor<'de> for ListVisitor<L> {
    type Value = Fit<L>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(KindSeed::<Msg<L::Item>>::new())? {
            match item {
                Ok(item) => items.push(item),
                Err(raw) => {
                    return Err(de::Error::custom(format!(
                        "expected an object as list element {}, found {raw}",
                        items.len()
                    )));
                }
            }
        }
        Ok(Ok(L::from_items(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        capture_map(map).map(Err)
    }
    raw_scalars!();
}

/// Implements `Fields` (and `HasExtra` with `+extra`) for a generated message from its list of
/// `field: Kind`. The JSON name is the field name.
macro_rules! fields {
    ($ty:ty $(, +$extra:ident)? { $($field:ident : $kind:ty),* $(,)? }) => {
        impl $crate::json::read::Fields for $ty {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
            #[allow(unused_variables)]
            fn decode_field<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
                extra: &mut $crate::json::read::Extra,
            ) -> Result<bool, A::Error> {
                if $crate::json::skims() && !$crate::json::read::kept_when_skimming(key) {
                    return Self::skip_field(key, map);
                }
                match key {
                    $(stringify!($field) => {
                        // A repeated key: the last one wins, in the field or in `extra`.
                        match map.next_value_seed($crate::json::read::KindSeed::<$kind>::new())? {
                            Ok(v) => {
                                // `into`: a boxed field (`build.rs`) takes its value boxed.
                                self.$field = Some(v.into());
                                if !extra.is_empty() {
                                    extra.remove(key);
                                }
                            }
                            Err(raw) => {
                                self.$field = None;
                                extra.insert(key.to_owned(), raw);
                            }
                        }
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }
            #[allow(unused_variables)]
            fn skip_field<'de, A: serde::de::MapAccess<'de>>(
                key: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match key {
                    $(stringify!($field) => {
                        map.next_value_seed($crate::json::read::SkipSeed::<$kind>(std::marker::PhantomData))?;
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }
            #[allow(unused_variables)]
            fn encode_fields(&self, w: &mut $crate::json::write::Writer, dialect: $crate::Dialect) {
                $(if let Some(v) = &self.$field {
                    w.key(stringify!($field));
                    <$kind as $crate::json::read::Kind>::encode(v, w, dialect);
                })*
            }
        }
        $(
            impl $crate::json::read::HasExtra for $ty {
                fn extra(&self) -> &$crate::json::read::Extra {
                    &self.$extra
                }
                fn extra_mut(&mut self) -> &mut $crate::json::read::Extra {
                    &mut self.$extra
                }
            }
        )?
    };
}
pub(crate) use fields;

/// Implements `ListOf` for a wrapper message whose one field is `values`.
macro_rules! list_of {
    ($($wrapper:ty => $item:ty),* $(,)?) => {$(
        impl $crate::json::read::ListOf for $wrapper {
            type Item = $item;
            fn items(&self) -> &[$item] {
                &self.values
            }
            fn from_items(values: Vec<$item>) -> Self {
                Self { values }
            }
        }
    )*};
}
pub(crate) use list_of;
