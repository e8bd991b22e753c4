//! Message attributes: string keys to string values, kept as one buffer.
//!
//! Every message carries its envelope as attributes (about six), built at ingest, written with
//! the body, read back at each receive and read into the envelope. As a `BTreeMap<String,
//! String>` that was a tree node and two strings an attribute, each allocated and freed again
//! at every hop (~3.5% of the pipeline's CPU at full speed). Kept here as the embedded queue
//! writes them, one buffer serves the whole map: one allocation to build it or read it back.

use std::fmt;

/// String keys to string values in key order, each key once (as a `BTreeMap`), in one buffer:
/// each key and then its value as its length (u32, little endian) and its UTF-8 bytes, the
/// entries sorted by key. Equal maps have equal buffers.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attributes {
    encoded: Vec<u8>,
}

/// Where one entry sits in the buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where its key's length starts.
    start: usize,
    key: (usize, usize),
    value: (usize, usize),
}

impl Entry {
    fn end(&self) -> usize {
        self.value.1
    }
}

/// Longest text an attribute holds: what a u32 length says (SQS takes 256 KB a message).
const MAX_TEXT: usize = u32::MAX as usize;

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The map `encoded` holds ([`Attributes::encoded`]'s form), if it is one: lengths that
    /// fit, UTF-8 texts, keys in order and each once. One copy, no other allocation.
    pub fn from_encoded(encoded: &[u8]) -> Option<Self> {
        let mut previous: Option<&str> = None;
        each_entry(encoded, |key, _| {
            if previous.is_some_and(|p| p >= key) {
                return None;
            }
            previous = Some(key);
            Some(())
        })?;
        Some(Attributes {
            encoded: encoded.to_vec(),
        })
    }

    /// The entries `encoded` holds in [`Attributes::encoded`]'s form but in any order (a key
    /// given twice keeps its last value), if every length fits and every text is UTF-8: what
    /// a writer other than this type may leave. Entries in order take one copy.
    pub fn from_entries(encoded: &[u8]) -> Option<Self> {
        Self::from_encoded(encoded).or_else(|| {
            let mut attributes = Attributes::with_capacity(encoded.len());
            each_entry(encoded, |key, value| {
                attributes.insert(key, value);
                Some(())
            })?;
            Some(attributes)
        })
    }

    /// The map in its one buffer, as [`Attributes::from_encoded`] reads it.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    pub fn len(&self) -> usize {
        self.entries().count()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|e| self.text(e.value))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// An empty map with room for `bytes` of keys and values (and 8 bytes an entry).
    pub fn with_capacity(bytes: usize) -> Self {
        Attributes {
            encoded: Vec::with_capacity(bytes),
        }
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Option<String> {
        let (key, value) = (cut(key.as_ref()), cut(value.as_ref()));
        match self.find(key) {
            Ok(e) => {
                let old = self.text(e.value).to_owned();
                self.encoded.drain(e.value.0 - 4..e.value.1);
                self.put_at(e.value.0 - 4, &[value]);
                Some(old)
            }
            Err(at) => {
                self.put_at(at, &[key, value]);
                None
            }
        }
    }

    /// Writes `texts`, each with its length, at `at`: appended, then turned into place (no
    /// buffer but the map's own).
    fn put_at(&mut self, at: usize, texts: &[&str]) {
        let before = self.encoded.len();
        for text in texts {
            push_text(&mut self.encoded, text);
        }
        if at < before {
            let added = self.encoded.len() - before;
            self.encoded[at..].rotate_right(added);
        }
    }

    /// Takes `key` out; its value, if it had one.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let e = self.find(key).ok()?;
        let value = self.text(e.value).to_owned();
        self.encoded.drain(e.start..e.end());
        Some(value)
    }

    pub fn clear(&mut self) {
        self.encoded.clear();
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries()
            .map(|e| (self.text(e.key), self.text(e.value)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let start = at;
            let (key, after_key) = span_at(&self.encoded, start)?;
            let (value, end) = span_at(&self.encoded, after_key)?;
            at = end;
            Some(Entry { start, key, value })
        })
    }

    /// The entry of `key`, or where it would go to keep the keys in order.
    fn find(&self, key: &str) -> Result<Entry, usize> {
        for e in self.entries() {
            match self.bytes(e.key).cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Ok(e),
                std::cmp::Ordering::Greater => return Err(e.start),
            }
        }
        Err(self.encoded.len())
    }

    fn bytes(&self, (start, end): (usize, usize)) -> &[u8] {
        self.encoded.get(start..end).unwrap_or_default()
    }

    /// A text of the buffer: UTF-8, as every way in checks.
    fn text(&self, span: (usize, usize)) -> &str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }
}

/// `text` within what a u32 length says, cut at a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The span of the length-prefixed text at `at`, and where the next one starts.
fn span_at(encoded: &[u8], at: usize) -> Option<((usize, usize), usize)> {
    let len = encoded.get(at..at.checked_add(4)?)?;
    let len = usize::try_from(u32::from_le_bytes(len.try_into().ok()?)).ok()?;
    let start = at + 4;
    let end = start.checked_add(len)?;
    (end <= encoded.len()).then_some(((start, end), end))
}

/// Hands `visit` each entry's key and value in the order written; `None` at a length that does
/// not fit, a text that is not UTF-8, or where `visit` says `None`.
fn each_entry<'a>(
    encoded: &'a [u8],
    mut visit: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    let text = |(start, end): (usize, usize)| std::str::from_utf8(&encoded[start..end]).ok();
    let mut at = 0;
    while at < encoded.len() {
        let (key, after_key) = span_at(encoded, at)?;
        let (value, end) = span_at(encoded, after_key)?;
        visit(text(key)?, text(value)?)?;
        at = end;
    }
    Some(())
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for Attributes {
    type Output = str;

    /// The value of `key`; panics if there is none, as a map's index does.
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no attribute {key:?}"),
        }
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl IntoIterator for Attributes {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Attributes {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (k, v) in entries {
            self.insert(k, v);
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut attributes = Attributes::new();
        attributes.extend(entries);
        attributes
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Attributes {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl serde::Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The same operations on a `BTreeMap` and on `Attributes`, compared after each.
    #[test]
    fn behaves_as_a_sorted_map_of_strings() {
        let mut reference: BTreeMap<String, String> = BTreeMap::new();
        let mut attributes = Attributes::new();
        let keys = [
            "mp-source",
            "content-type",
            "a",
            "",
            "traceparent",
            "mp-route",
            "é",
        ];
        let mut seed = 7u64;
        for step in 0..400 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = keys[(seed >> 33) as usize % keys.len()];
            let value = "v".repeat((seed >> 40) as usize % 70) + &step.to_string();
            if (seed >> 20).is_multiple_of(4) {
                assert_eq!(attributes.remove(key), reference.remove(key));
            } else {
                assert_eq!(
                    attributes.insert(key, &value),
                    reference.insert(key.to_owned(), value)
                );
            }
            let want: Vec<(&str, &str)> = reference
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(attributes.iter().collect::<Vec<_>>(), want);
            assert_eq!(attributes.len(), reference.len());
            for key in keys {
                assert_eq!(attributes.get(key), reference.get(key).map(String::as_str));
            }
            assert_eq!(
                Attributes::from_encoded(attributes.encoded()).as_ref(),
                Some(&attributes)
            );
        }
    }

    #[test]
    fn equal_maps_are_equal_whatever_the_order_they_were_built_in() {
        let one = Attributes::from([("b", "2"), ("a", "1"), ("c", "3")]);
        let other = Attributes::from([("c", "3"), ("a", "1"), ("b", "2")]);
        assert_eq!(one, other);
        assert_ne!(one, Attributes::from([("a", "1"), ("b", "2")]));
        assert_eq!(format!("{one:?}"), r#"{"a": "1", "b": "2", "c": "3"}"#);
    }

    #[test]
    fn a_buffer_that_is_not_a_map_in_order_does_not_read() {
        let good = Attributes::from([("a", "1"), ("b", "2")]);
        let encoded = good.encoded();
        assert!(Attributes::from_encoded(&encoded[..encoded.len() - 1]).is_none());
        // Keys out of order, and a key twice.
        let mut swapped = encoded[encoded.len() / 2..].to_vec();
        swapped.extend_from_slice(&encoded[..encoded.len() / 2]);
        assert!(Attributes::from_encoded(&swapped).is_none());
        let mut twice = encoded[..encoded.len() / 2].to_vec();
        twice.extend_from_slice(&encoded[..encoded.len() / 2]);
        assert!(Attributes::from_encoded(&twice).is_none());
        // Read entry by entry, the same buffers give the map they describe.
        assert_eq!(Attributes::from_entries(&swapped).as_ref(), Some(&good));
        assert_eq!(
            Attributes::from_entries(&twice),
            Some(Attributes::from([("a", "1")]))
        );
        assert!(Attributes::from_entries(&encoded[..encoded.len() - 1]).is_none());
        // A text that is not UTF-8.
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.push(b'k');
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.push(0xff);
        assert!(Attributes::from_encoded(&bad).is_none());
        assert!(Attributes::from_entries(&bad).is_none());
        assert_eq!(Attributes::from_encoded(&[]), Some(Attributes::new()));
    }

    #[test]
    fn reads_and_writes_json_as_a_map() {
        let attributes = Attributes::from([("b", "2"), ("a", "\"1\"")]);
        let json = serde_json::to_string(&attributes).unwrap();
        assert_eq!(json, r#"{"a":"\"1\"","b":"2"}"#);
        assert_eq!(
            serde_json::from_str::<Attributes>(&json).unwrap(),
            attributes
        );
    }
}
