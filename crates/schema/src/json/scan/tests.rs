//! The quick reader against `serde_json`: on every input, the same `visit_*` calls with the
//! same values, or a stop; never a value `serde_json` refuses.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{
    Scanner, digits_end, non_digits_in, non_digits_in_plainly, stops_in, stops_in_plainly,
};
use crate::json::read::Skip;

/// Writes down every call a deserializer makes to its visitors.
struct Record<'t>(&'t mut Vec<String>);

impl<'de> DeserializeSeed<'de> for Record<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Record<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(format!("bool {v}"));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(format!("i64 {v}"));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(format!("u64 {v}"));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // The bits: `-0.0` and `0.0` differ there.
        self.0.push(format!("f64 {v:?} {:x}", v.to_bits()));
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.0.push(format!("borrowed {v:?}"));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(format!("copied {v:?}"));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push("null".into());
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push("[".into());
        while seq.next_element_seed(Record(self.0))?.is_some() {}
        self.0.push("]".into());
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push("{".into());
        while map.next_key_seed(RecordKey(self.0))?.is_some() {
            map.next_value_seed(Record(self.0))?;
        }
        self.0.push("}".into());
        Ok(())
    }
}

/// Keys are read with `deserialize_str`, as the schema's `Key` reads them.
struct RecordKey<'t>(&'t mut Vec<String>);

impl<'de> DeserializeSeed<'de> for RecordKey<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(Record(self.0))
    }
}

fn by_serde_json(text: &str) -> Option<Vec<String>> {
    let mut calls = Vec::new();
    let mut d = serde_json::Deserializer::from_str(text);
    Record(&mut calls).deserialize(&mut d).ok()?;
    d.end().ok()?;
    Some(calls)
}

fn by_scanner(text: &str) -> Option<Vec<String>> {
    let mut calls = Vec::new();
    let mut s = Scanner::new(text);
    Record(&mut calls).deserialize(&mut s).ok()?;
    let rest = text.get(s.offset()..)?;
    rest.bytes()
        .all(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r'))
        .then_some(calls)
}

/// Whether reading `text` as [`Skip`] takes it, with serde_json and with the quick reader
/// (which then passes over it in one pass, not through the visitor).
fn skips(text: &str) -> (bool, bool) {
    let mut d = serde_json::Deserializer::from_str(text);
    let by_serde_json = Skip.deserialize(&mut d).is_ok() && d.end().is_ok();
    let mut s = Scanner::new(text);
    let by_scanner = Skip.deserialize(&mut s).is_ok()
        && text.get(s.offset()..).is_some_and(|rest| {
            rest.bytes()
                .all(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r'))
        });
    (by_serde_json, by_scanner)
}

/// Compares the two readers on `text`; true when the quick one took it.
fn agree(text: &str) -> bool {
    let (skipped, skipped_quickly) = skips(text);
    assert!(
        skipped || !skipped_quickly,
        "passed over what serde_json refuses: {text:?}"
    );
    match (by_serde_json(text), by_scanner(text)) {
        (Some(expected), Some(read)) => {
            assert_eq!(read, expected, "{text:?}");
            assert!(skipped_quickly, "read but not passed over: {text:?}");
            true
        }
        (None, Some(read)) => panic!("took what serde_json refuses: {text:?} as {read:?}"),
        (_, None) => false,
    }
}

fn takes(text: &str) {
    assert!(agree(text), "stopped on {text:?}");
}

fn refuses(text: &str) {
    assert!(by_serde_json(text).is_none(), "serde_json takes {text:?}");
    assert!(by_scanner(text).is_none(), "took {text:?}");
}

#[test]
fn numbers_read_as_serde_json_reads_them() {
    for n in [
        "0",
        "-0",
        "7",
        "-7",
        "1.5",
        "-0.0",
        "0.1",
        "1e5",
        "1E5",
        "1e+5",
        "1e-5",
        "-1.25e-7",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        "123456789012345678901234567890",
        "-9223372036854775808",
        "-9223372036854775809",
        "-18446744073709551615",
        "-18446744073709551616",
        "1e308",
        "1.7976931348623157e308",
        "2.2250738585072011e-308",
        "4.9e-324",
        "2e-324",
        "1e-400",
        "-1e-400",
        "0e99999999999999999999",
        "0.000000000000000000000000000001",
        "3.141592653589793238462643383279",
        "9007199254740993",
        "9007199254740993.0",
        "1.0000000000000002",
    ] {
        takes(n);
        takes(&format!("[{n}, {n}]"));
    }
    for bad in [
        "01", "-", "1.", ".5", "+1", "1e", "1e+", "-01", "0x10", "1.e5", "--1",
    ] {
        refuses(bad);
        refuses(&format!("[{bad}]"));
    }
    // Out of range: serde_json refuses; the quick reader must not take it.
    for far in ["1e400", "-1e400", "1e99999999999999999999"] {
        assert!(!agree(far));
    }
}

#[test]
fn strings_read_as_serde_json_reads_them() {
    for s in [
        r#""""#,
        r#""plain""#,
        r#""sixteen bytes ok""#,
        r#""a string a good deal longer than sixteen bytes, then one more""#,
        r#""ends with an escape\n""#,
        r#""\"quoted\" and \\ and \/ and \b\f\n\r\t""#,
        r#""caf\u00e9 and \u00E9""#,
        r#""a pair: \ud83d\ude00, and \uD83D\uDE00""#,
        r#""\u0000 is a character""#,
        "\"caf\u{e9} \u{1f600} unescaped\"",
        r#""0123456789abcde\"0123456789abcdef\\0123456789""#,
    ] {
        takes(s);
        takes(&format!("{{{s}: {s}}}"));
    }
    // A quote or backslash at every offset of a sixteen-byte chunk.
    for at in 0..40 {
        let mut s = "x".repeat(40);
        s.replace_range(at..at + 1, "\\\"");
        takes(&format!("\"{s}\""));
    }
    for bad in [
        "\"unterminated",
        "\"a control \u{1} character\"",
        "\"a tab \t inside\"",
        r#""\x""#,
        r#""\u12""#,
        r#""\u12g4""#,
    ] {
        refuses(bad);
    }
    // Lone surrogates: serde_json refuses them read as text; the quick reader stops.
    for lone in [
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800\u0041""#,
        r#""\ud800x""#,
    ] {
        assert!(!agree(lone));
    }
}

#[test]
fn structure_reads_as_serde_json_reads_it() {
    for text in [
        "{}",
        "[]",
        " { } ",
        "\n[\t1 ,\r2 ]\n",
        r#"{"a":{"b":[true,false,null,{"c":[]}]},"d":"e"}"#,
        r#"{ "k" : "v" , "k" : 1 }"#,
        r#"{"esc\"aped key": 1, "key": 2}"#,
    ] {
        takes(text);
    }
    for bad in [
        "{",
        "[1,]",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{1:2}"#,
        "[1 2]",
        "tru",
        "nul",
        "[true false]",
        r#"{"a":1}}"#,
        "",
    ] {
        refuses(bad);
    }
    let deep = format!("{}{}", "[".repeat(120), "]".repeat(120));
    assert!(!agree(&deep), "nesting past the bound stops the reader");
    let nested = format!("{}{}", "[".repeat(90), "]".repeat(90));
    takes(&nested);
}

/// A small deterministic source of choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

fn space(rng: &mut Rng, out: &mut String) {
    if rng.below(4) == 0 {
        out.push_str(rng.pick(&[" ", "\n", "\t", "\r\n  "]));
    }
}

fn number(rng: &mut Rng, out: &mut String) {
    match rng.below(6) {
        0 => out.push_str(&(rng.next() >> rng.below(64)).to_string()),
        1 => out.push_str(&(-((rng.next() >> rng.below(64)) as i64)).to_string()),
        2 => out.push_str(&format!("{:?}", f64::from_bits(rng.next()))),
        3 => out.push_str(&format!("{:e}", f64::from_bits(rng.next()))),
        _ => {
            // Digits of any length, with a fraction and an exponent or not.
            if rng.below(2) == 0 {
                out.push('-');
            }
            let len = 1 + rng.below(30);
            for i in 0..len {
                let d = if i == 0 && len > 1 {
                    1 + rng.below(9)
                } else {
                    rng.below(10)
                };
                out.push(char::from(b'0' + d as u8));
            }
            if rng.below(2) == 0 {
                out.push('.');
                for _ in 0..1 + rng.below(20) {
                    out.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            if rng.below(3) == 0 {
                out.push_str(rng.pick(&["e", "E", "e+", "e-", "E-"]));
                out.push_str(&rng.below(400).to_string());
            }
        }
    }
}

fn string(rng: &mut Rng, out: &mut String) {
    out.push('"');
    for _ in 0..rng.below(40) {
        out.push_str(rng.pick(&[
            "a",
            "b",
            "z",
            " ",
            "value",
            "0123456789",
            "\u{e9}",
            "\u{1f600}",
            "\\\"",
            "\\\\",
            "\\/",
            "\\n",
            "\\t",
            "\\u00e9",
            "\\u0041",
            "\\ud83d\\ude00",
            "\\uDBFF\\uDFFF",
            "\u{7f}",
        ]));
    }
    // Now and then something that is refused, or that the quick reader leaves to serde_json.
    if rng.below(20) == 0 {
        out.push_str(rng.pick(&["\\ud800", "\u{1}", "\\x", "\\udc00\\ud800"]));
    }
    out.push('"');
}

fn value(rng: &mut Rng, depth: u32, out: &mut String) {
    space(rng, out);
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => number(rng, out),
        1 => string(rng, out),
        2 => out.push_str(rng.pick(&["true", "false", "null"])),
        3 | 4 => number(rng, out),
        5 => {
            out.push('[');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, depth + 1, out);
            }
            space(rng, out);
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push(',');
                }
                space(rng, out);
                string(rng, out);
                space(rng, out);
                out.push(':');
                value(rng, depth + 1, out);
            }
            space(rng, out);
            out.push('}');
        }
    }
    space(rng, out);
}

#[test]
fn random_documents_read_as_serde_json_reads_them() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut taken, mut valid) = (0, 0);
    for _ in 0..20_000 {
        let mut text = String::new();
        value(&mut rng, 0, &mut text);
        valid += usize::from(by_serde_json(&text).is_some());
        taken += usize::from(agree(&text));
        // The same text damaged: one byte removed.
        if !text.is_empty() {
            let mut cut = text.clone();
            let at = rng.below(text.len() as u64) as usize;
            if cut.is_char_boundary(at) && cut.is_char_boundary(at + 1) {
                cut.remove(at);
                agree(&cut);
            }
        }
    }
    // Most documents are valid, and the quick reader takes nearly all of those (it stops only
    // on lone surrogates and numbers out of range).
    assert!(valid > 5_000, "{valid} valid documents");
    assert!(taken * 10 > valid * 9, "took {taken} of {valid}");
}

/// The bodies ingest reads most are read quickly, not left to serde_json: the official sample
/// and the benchmark's bulk requests, skimmed and in full, each batch as serde_json reads it.
#[test]
fn the_quick_reader_takes_the_sample_and_the_bench_bodies() {
    let sample =
        include_str!("../../../../../reference/mparticle/mparticle.inbound.eventsapi.sample.json");
    let bulk = crate::testing::bulk_request(7, false);
    let bulk = std::str::from_utf8(&bulk).unwrap();
    let mut batches = vec![sample];
    let whole: Vec<&serde_json::value::RawValue> = serde_json::from_str(bulk).unwrap();
    batches.extend(whole.iter().map(|raw| raw.get()));
    for batch in batches {
        for skim in [false, true] {
            let (read, normalised, len) = crate::read_quickly(batch, batch.as_bytes(), skim)
                .unwrap_or_else(|| panic!("stopped on {batch}"));
            assert_eq!(len, batch.trim_end().len());
            if !skim {
                let expected = crate::parse_batch_as_sent(batch.as_bytes()).unwrap();
                assert_eq!((read, !normalised), expected);
            }
        }
    }
}

/// `vector` marks the bytes `plain` marks: every byte value at every place among `filler`s,
/// and random chunks.
fn marks_as_plainly(vector: fn(&[u8; 16]) -> u32, plain: fn(&[u8; 16]) -> u32, filler: u8) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for value in 0..=255u8 {
        for at in 0..16 {
            let mut chunk = [filler; 16];
            chunk[at] = value;
            assert_eq!(vector(&chunk), plain(&chunk), "{value:#x} at {at}");
        }
    }
    for _ in 0..10_000 {
        let chunk: [u8; 16] = std::array::from_fn(|_| rng.next() as u8);
        assert_eq!(vector(&chunk), plain(&chunk), "{chunk:?}");
    }
}

/// The vector test of sixteen bytes marks the bytes the plain one marks.
#[test]
fn the_vector_test_marks_what_the_plain_test_marks() {
    marks_as_plainly(stops_in, stops_in_plainly, b'a');
}

/// The vector test for digits marks what the plain one marks, and a run of digits ends where
/// a byte at a time ends it, across chunks.
#[test]
fn the_vector_digit_test_marks_what_the_plain_test_marks() {
    marks_as_plainly(non_digits_in, non_digits_in_plainly, b'7');
    for len in 0..40 {
        for tail in [b",".as_slice(), b"}", b"e5", b".0", b""] {
            let mut text = b"-".to_vec();
            text.extend(std::iter::repeat_n(b'3', len));
            text.extend_from_slice(tail);
            let plain = 1 + text[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            assert_eq!(
                digits_end(&text, 1),
                plain,
                "{}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}
