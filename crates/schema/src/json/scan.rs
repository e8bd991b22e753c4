//! A JSON reader for ingest's read of the Events API's bodies, quicker than `serde_json` on
//! them: strings are scanned sixteen bytes at a time, the text is known to be UTF-8 (checked
//! once for the whole body), numbers take a short path when they are plain integers, and a
//! value the skimmed read leaves out ([`super::read::Skip`]: custom attributes, most of an
//! event's bytes) is checked in one tight pass instead of part by part through visitors.
//!
//! It has no say in what is refused. On anything it does not take as `serde_json` would (any
//! error, a lone surrogate, a number out of range, a raw value, nesting past [`MAX_DEPTH`]) it
//! stops, and the caller reads the batch again with `serde_json`, whose answer stands. Where it
//! takes a value it hands the visitor exactly what `serde_json::Deserializer::from_str` would:
//! the same `visit_*` calls with the same values, and passes over exactly what `Skip` takes
//! (the tests compare the two on every kind of value; `testing::check_skim_agrees`, run by the
//! fuzz target and the mutation tests, compares whole batches).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Nesting past this stops the reader (`serde_json` refuses past 128).
const MAX_DEPTH: usize = 100;

/// The name [`super::read::Skip`] asks for a value by: this reader then checks the value in
/// one tight pass ([`Scanner::skip_value`]) instead of handing each part to a visitor;
/// `serde_json` reads it as any newtype, visiting every part.
pub(crate) const SKIP: &str = "$mpconnect::skip";

/// Digits before the point (or the end) that no number can have and be out of `f64`'s range.
const SAFE_INTEGER_DIGITS: usize = 308;

/// The reader stopped: the value is one it does not take, or not JSON. `serde_json` decides
/// which.
#[derive(Debug)]
pub struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the quick reader stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

pub struct Scanner<'de> {
    text: &'de str,
    at: usize,
    depth: usize,
    /// A string with escapes, unescaped (borrowed by the visitor it is handed to).
    scratch: String,
}

/// Where a number's text lies in the input.
struct NumberText {
    start: usize,
    end: usize,
    /// Digits before any point.
    integer_digits: usize,
    /// No exponent.
    plain: bool,
}

/// A string just read: borrowed from the input, or unescaped into the scratch buffer.
enum Text<'de> {
    Borrowed(&'de str),
    Scratch,
}

impl<'de> Scanner<'de> {
    pub fn new(text: &'de str) -> Self {
        Scanner {
            text,
            at: 0,
            depth: 0,
            scratch: String::new(),
        }
    }

    /// Where the next value would start: the end of the last one read.
    pub fn offset(&self) -> usize {
        self.at
    }

    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Result<u8, Stop> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Ok(b);
            }
            self.at += 1;
        }
        Err(Stop)
    }

    /// Consumes `expected` as the next byte that is not whitespace.
    fn expect(&mut self, expected: u8) -> Result<(), Stop> {
        if self.peek()? == expected {
            self.at += 1;
            Ok(())
        } else {
            Err(Stop)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        let end = self.at + word.len();
        if self.bytes().get(self.at..end) == Some(word) {
            self.at = end;
            Ok(())
        } else {
            Err(Stop)
        }
    }

    /// Reads a string whose opening quote has been consumed.
    fn string(&mut self) -> Result<Text<'de>, Stop> {
        let (text, bytes) = (self.text, self.bytes());
        let start = self.at;
        let mut at = string_stop(bytes, start);
        match bytes.get(at) {
            Some(b'"') => {
                self.at = at + 1;
                // Both ends are ASCII, so both are character boundaries.
                text.get(start..at).map(Text::Borrowed).ok_or(Stop)
            }
            Some(b'\\') => {
                self.scratch.clear();
                self.scratch.push_str(text.get(start..at).ok_or(Stop)?);
                loop {
                    at = self.unescape(at)?;
                    let stop = string_stop(bytes, at);
                    self.scratch.push_str(text.get(at..stop).ok_or(Stop)?);
                    at = stop;
                    match bytes.get(at) {
                        Some(b'"') => {
                            self.at = at + 1;
                            return Ok(Text::Scratch);
                        }
                        Some(b'\\') => {}
                        // A control character, or the end of the input.
                        _ => return Err(Stop),
                    }
                }
            }
            _ => Err(Stop),
        }
    }

    /// Appends the escape at `at` (its backslash) to the scratch buffer; returns where the
    /// string goes on.
    fn unescape(&mut self, at: usize) -> Result<usize, Stop> {
        let (c, end) = escape(self.bytes(), at)?;
        self.scratch.push(c);
        Ok(end)
    }

    /// Reads a number as `serde_json` does: an integer that fits as `u64` (or, negative,
    /// `i64`), anything else as the nearest `f64` (`float_roundtrip`), `-0` as `-0.0`.
    fn number<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Stop> {
        let number = self.number_text()?;
        self.at = number.end;
        let bytes = self.bytes();
        let negative = bytes.get(number.start) == Some(&b'-');
        let digits_start = number.start + usize::from(negative);
        if number.plain
            && number.end == digits_start + number.integer_digits
            && let Some(magnitude) = bytes.get(digits_start..number.end).and_then(integer)
        {
            if !negative {
                return visitor.visit_u64(magnitude);
            }
            let value = (magnitude as i64).wrapping_neg();
            // Below `i64::MIN`, or `-0`: a float, as `serde_json` reads it.
            return if value >= 0 {
                visitor.visit_f64(-(magnitude as f64))
            } else {
                visitor.visit_i64(value)
            };
        }
        visitor.visit_f64(self.float(&number)?)
    }

    /// Passes over the next value, taking exactly what reading it with [`super::read::Skip`]
    /// takes (stopping where unsure): JSON whose strings, keys included, read as text and
    /// whose numbers are within `f64`'s range.
    fn skip_value(&mut self) -> Result<(), Stop> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.skip_string()
            }
            b'{' => self.skip_parts(b'}'),
            b'[' => self.skip_parts(b']'),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => Err(Stop),
        }
    }

    /// [`Scanner::skip_value`] for an object's members (`close` a brace) or an array's
    /// elements, from its opening.
    fn skip_parts(&mut self, close: u8) -> Result<(), Stop> {
        self.in_parts(close, |mut parts| {
            while parts.more(close)? {
                let scanner = &mut *parts.scanner;
                if close == b'}' {
                    scanner.expect(b'"')?;
                    scanner.skip_string()?;
                    scanner.expect(b':')?;
                }
                scanner.skip_value()?;
            }
            Ok(())
        })
    }

    /// [`Scanner::skip_value`] for a string whose opening quote has been consumed.
    fn skip_string(&mut self) -> Result<(), Stop> {
        let bytes = self.bytes();
        let mut at = string_stop(bytes, self.at);
        loop {
            match bytes.get(at) {
                Some(b'"') => {
                    self.at = at + 1;
                    return Ok(());
                }
                Some(b'\\') => at = string_stop(bytes, escape(bytes, at)?.1),
                _ => return Err(Stop),
            }
        }
    }

    /// [`Scanner::skip_value`] for a number: its form checked; its value worked out only
    /// where it could be out of range.
    fn skip_number(&mut self) -> Result<(), Stop> {
        let number = self.number_text()?;
        if !number.plain || number.integer_digits > SAFE_INTEGER_DIGITS {
            self.float(&number)?;
        }
        self.at = number.end;
        Ok(())
    }

    /// The extent of the number at the reader. Stops on what is not a JSON number as
    /// `serde_json` reads one.
    fn number_text(&self) -> Result<NumberText, Stop> {
        let bytes = self.bytes();
        let start = self.at;
        let mut at = start + usize::from(bytes.get(start) == Some(&b'-'));
        let digits_start = at;
        match bytes.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => at = digits_end(bytes, at + 1),
            _ => return Err(Stop),
        }
        let integer_digits = at - digits_start;
        if bytes.get(at) == Some(&b'.') {
            let end = digits_end(bytes, at + 1);
            if end == at + 1 {
                return Err(Stop);
            }
            at = end;
        }
        let mut plain = true;
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            let end = digits_end(bytes, at);
            if end == at {
                return Err(Stop);
            }
            at = end;
            plain = false;
        }
        // `serde_json` refuses a leading zero before more digits ("01").
        if matches!(bytes.get(at), Some(b'0'..=b'9')) {
            return Err(Stop);
        }
        Ok(NumberText {
            start,
            end: at,
            integer_digits,
            plain,
        })
    }

    /// The number's nearest `f64`; stops where that is out of range (`serde_json` refuses it).
    fn float(&self, number: &NumberText) -> Result<f64, Stop> {
        let text = self.text.get(number.start..number.end).ok_or(Stop)?;
        let value: f64 = text.parse().map_err(|_| Stop)?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Stop)
        }
    }

    fn enter(&mut self) -> Result<(), Stop> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Stop);
        }
        self.at += 1;
        Ok(())
    }
}

/// Where the run of digits from `at` ends: sixteen bytes at a time (ids and timestamps run to
/// 13-19 digits; a byte at a time was an eighth of the read).
fn digits_end(bytes: &[u8], at: usize) -> usize {
    first_marked(bytes, at, non_digits_in, |b| !b.is_ascii_digit())
}

/// The first byte at or after `at` that `marks` (the input's length if none): sixteen bytes at
/// a time by `marks_in` (a bit for each byte it marks), then the last few one at a time.
fn first_marked(
    bytes: &[u8],
    mut at: usize,
    marks_in: impl Fn(&[u8; 16]) -> u32,
    marks: impl Fn(u8) -> bool,
) -> usize {
    while let Some(chunk) = bytes
        .get(at..at + 16)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        let mask = marks_in(chunk);
        if mask != 0 {
            return at + mask.trailing_zeros() as usize;
        }
        at += 16;
    }
    while let Some(&b) = bytes.get(at) {
        if marks(b) {
            return at;
        }
        at += 1;
    }
    at
}

/// A bit for each byte of `chunk` that is not an ASCII digit.
#[cfg(target_arch = "x86_64")]
fn non_digits_in(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_set1_epi8,
        _mm_sub_epi8,
    };
    // SAFETY: as in `stops_in`: SSE2 is part of every x86_64 target, and the load reads
    // `chunk`'s sixteen bytes.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        // A digit is at most 9 above '0' (unsigned: below '0' wraps round to above 9).
        let above_zero = _mm_sub_epi8(bytes, _mm_set1_epi8(b'0' as i8));
        let nine = _mm_set1_epi8(9);
        let digit = _mm_cmpeq_epi8(_mm_max_epu8(above_zero, nine), nine);
        !(_mm_movemask_epi8(digit) as u32) & 0xffff
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn non_digits_in(chunk: &[u8; 16]) -> u32 {
    non_digits_in_plainly(chunk)
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn non_digits_in_plainly(chunk: &[u8; 16]) -> u32 {
    chunk.iter().enumerate().fold(0, |mask, (i, &b)| {
        mask | (u32::from(!b.is_ascii_digit()) << i)
    })
}

/// ASCII digits as a `u64`, or `None` past `u64::MAX`.
fn integer(digits: &[u8]) -> Option<u64> {
    if digits.len() < 20 {
        // Nineteen digits never overflow.
        return Some(
            digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        );
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The character the escape at `at` (its backslash) stands for, and where it ends, if
/// `serde_json` reads it as text: a surrogate only as half of a pair.
fn escape(bytes: &[u8], at: usize) -> Result<(char, usize), Stop> {
    let c = match bytes.get(at + 1).ok_or(Stop)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\x08',
        b'f' => '\x0c',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let (code, end) = match hex4(bytes, at + 2)? {
                high @ 0xD800..=0xDBFF => {
                    if bytes.get(at + 6..at + 8) != Some(b"\\u") {
                        return Err(Stop);
                    }
                    match hex4(bytes, at + 8)? {
                        low @ 0xDC00..=0xDFFF => {
                            (0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), at + 12)
                        }
                        _ => return Err(Stop),
                    }
                }
                0xDC00..=0xDFFF => return Err(Stop),
                code => (code, at + 6),
            };
            return Ok((char::from_u32(code).ok_or(Stop)?, end));
        }
        _ => return Err(Stop),
    };
    Ok((c, at + 2))
}

fn hex4(bytes: &[u8], at: usize) -> Result<u32, Stop> {
    let digits = bytes.get(at..at + 4).ok_or(Stop)?;
    digits.iter().try_fold(0u32, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(Stop),
        };
        Ok(n << 4 | u32::from(v))
    })
}

/// Whether a string's byte ends its plain run: a quote, a backslash or a control character.
fn stops(b: u8) -> bool {
    (b == b'"') | (b == b'\\') | (b < 0x20)
}

/// The first quote, backslash or control character at or after `at` (the input's length if
/// none), sixteen bytes at a time (`serde_json` tests eight).
fn string_stop(bytes: &[u8], at: usize) -> usize {
    first_marked(bytes, at, stops_in, stops)
}

/// A bit for each byte of `chunk` that [`stops`], in three compares and a mask (the compiler
/// does not make these of the plain loop below).
#[cfg(target_arch = "x86_64")]
fn stops_in(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 target, and the load reads `chunk`'s sixteen bytes
    // (unaligned loads are allowed).
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 exactly when the larger of the byte and 0x1f is 0x1f (unsigned).
        let ceiling = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(bytes, ceiling), ceiling);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn stops_in(chunk: &[u8; 16]) -> u32 {
    stops_in_plainly(chunk)
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn stops_in_plainly(chunk: &[u8; 16]) -> u32 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |mask, (i, &b)| mask | (u32::from(stops(b)) << i))
}

/// `Deserializer` methods that read a value only when it starts with the byte given.
macro_rules! only_starting_with {
    ($($method:ident => $first:literal),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            self.only($first, visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for &mut Scanner<'de> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                match self.string()? {
                    Text::Borrowed(s) => visitor.visit_borrowed_str(s),
                    Text::Scratch => visitor.visit_str(&self.scratch),
                }
            }
            b'{' => self.in_parts(b'}', |parts| visitor.visit_map(parts)),
            b'[' => self.in_parts(b']', |parts| visitor.visit_seq(parts)),
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'-' | b'0'..=b'9' => self.number(visitor),
            _ => Err(Stop),
        }
    }

    // Where `serde_json` would refuse a JSON type outright, so does this, rather than hand the
    // visitor something `serde_json` never would.
    only_starting_with! {
        deserialize_str => b'"',
        deserialize_string => b'"',
        deserialize_char => b'"',
        deserialize_identifier => b'"',
        deserialize_map => b'{',
        deserialize_seq => b'[',
        deserialize_unit => b'n',
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if name == SKIP {
            self.skip_value()?;
            return visitor.visit_unit();
        }
        // `serde_json`'s raw values are its own affair.
        if name.starts_with("$serde_json") {
            return Err(Stop);
        }
        visitor.visit_newtype_struct(self)
    }

    /// Read in full: `serde_json` passes some values unread that it refuses elsewhere, and
    /// the visitors here must refuse those as they would be refused read.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.peek()? {
            b't' | b'f' => self.deserialize_any(visitor),
            _ => Err(Stop),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64
    }
}

impl<'de> Scanner<'de> {
    /// Hands an object's members or an array's elements to `visit`, then checks that it read
    /// them all up to `close`.
    fn in_parts<T>(
        &mut self,
        close: u8,
        visit: impl FnOnce(Parts<'_, 'de>) -> Result<T, Stop>,
    ) -> Result<T, Stop> {
        self.enter()?;
        let value = visit(Parts {
            scanner: &mut *self,
            first: true,
        })?;
        self.depth -= 1;
        self.expect(close)?;
        Ok(value)
    }

    /// [`Deserializer::deserialize_any`] for a value that starts with `first`; anything else
    /// stops the reader.
    fn only<V: Visitor<'de>>(&mut self, first: u8, visitor: V) -> Result<V::Value, Stop> {
        if self.peek()? == first {
            self.deserialize_any(visitor)
        } else {
            Err(Stop)
        }
    }
}

/// The members of an object or the elements of an array, read one by one.
struct Parts<'s, 'de> {
    scanner: &'s mut Scanner<'de>,
    first: bool,
}

impl Parts<'_, '_> {
    /// Whether another part follows before `close` (its comma consumed).
    fn more(&mut self, close: u8) -> Result<bool, Stop> {
        let s = &mut *self.scanner;
        let next = s.peek()?;
        if next == close {
            return Ok(false);
        }
        if !self.first {
            if next != b',' {
                return Err(Stop);
            }
            s.at += 1;
        }
        self.first = false;
        Ok(true)
    }
}

impl<'de> MapAccess<'de> for Parts<'_, 'de> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        if !self.more(b'}')? {
            return Ok(None);
        }
        // A key is a string: read as any string value is, whatever the seed asks for.
        let s = &mut *self.scanner;
        if s.peek()? != b'"' {
            return Err(Stop);
        }
        seed.deserialize(s).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        self.scanner.expect(b':')?;
        seed.deserialize(&mut *self.scanner)
    }
}

impl<'de> SeqAccess<'de> for Parts<'_, 'de> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        if !self.more(b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.scanner).map(Some)
    }
}

#[cfg(test)]
mod tests;
