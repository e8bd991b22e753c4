//! A minimal JSON writer: appends to a byte buffer, no intermediate tree.

/// Appends JSON tokens to a buffer. Commas are placed from the last byte written, so callers
/// only say what comes next.
pub struct Writer<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    /// A comma unless this is the first member of an object or array, or a value after a key.
    #[inline]
    fn separator(&mut self) {
        if let Some(&last) = self.buf.last()
            && !matches!(last, b'{' | b'[' | b':' | b'\n')
        {
            self.buf.push(b',');
        }
    }

    #[inline]
    pub fn key(&mut self, key: &str) {
        self.separator();
        self.escaped(key);
        self.buf.push(b':');
    }

    #[inline]
    pub fn begin_object(&mut self) {
        self.separator();
        self.buf.push(b'{');
    }

    #[inline]
    pub fn end_object(&mut self) {
        self.buf.push(b'}');
    }

    #[inline]
    pub fn begin_array(&mut self) {
        self.separator();
        self.buf.push(b'[');
    }

    #[inline]
    pub fn end_array(&mut self) {
        self.buf.push(b']');
    }

    #[inline]
    pub fn string(&mut self, value: &str) {
        self.separator();
        self.escaped(value);
    }

    #[inline]
    pub fn i64(&mut self, value: i64) {
        self.separator();
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// An int64 in mParticle's outbound style: a JSON string of digits.
    #[inline]
    pub fn i64_as_string(&mut self, value: i64) {
        self.separator();
        self.buf.push(b'"');
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self.buf.push(b'"');
    }

    #[inline]
    pub fn u64(&mut self, value: u64) {
        self.separator();
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// JSON has no NaN or infinity; they become `null` rather than invalid output.
    #[inline]
    pub fn f64(&mut self, value: f64) {
        self.separator();
        if value.is_finite() {
            self.buf
                .extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }

    #[inline]
    pub fn bool(&mut self, value: bool) {
        self.separator();
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline]
    pub fn null(&mut self) {
        self.separator();
        self.buf.extend_from_slice(b"null");
    }

    /// Already-valid JSON text (kept verbatim from the input).
    #[inline]
    pub fn raw(&mut self, json: &str) {
        self.separator();
        self.buf.extend_from_slice(json.as_bytes());
    }

    fn escaped(&mut self, value: &str) {
        let bytes = value.as_bytes();
        self.buf.reserve(bytes.len() + 2);
        self.buf.push(b'"');
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => b"",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[start..i]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.buf.extend_from_slice(b"\\u00");
                self.buf.push(HEX[(b >> 4) as usize]);
                self.buf.push(HEX[(b & 0xf) as usize]);
            } else {
                self.buf.extend_from_slice(escape);
            }
            start = i + 1;
        }
        self.buf.extend_from_slice(&bytes[start..]);
        self.buf.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_through_serde_json() {
        let nasty = "quote\" back\\ nl\n tab\t bell\u{7} nul\u{0} é 🎉 \u{1f}";
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.begin_object();
        w.key(nasty);
        w.string(nasty);
        w.key("n");
        w.f64(f64::NAN);
        w.key("l");
        w.i64_as_string(-42);
        w.end_object();
        let parsed: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(parsed[nasty], nasty);
        assert!(parsed["n"].is_null());
        assert_eq!(parsed["l"], "-42");
    }

    #[test]
    fn commas_between_members_and_elements() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.begin_array();
        w.begin_object();
        w.key("a");
        w.i64(1);
        w.key("b");
        w.begin_array();
        w.bool(true);
        w.null();
        w.end_array();
        w.end_object();
        w.u64(u64::MAX);
        w.end_array();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"[{"a":1,"b":[true,null]},18446744073709551615]"#
        );
    }
}
