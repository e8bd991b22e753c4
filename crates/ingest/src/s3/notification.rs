//! S3 event notifications as they arrive on SQS: plain, or wrapped in an SNS envelope; the
//! `s3:TestEvent` S3 sends when a notification is configured; keys URL-encoded form-style.

use serde::Deserialize;

/// An object a notification announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    /// Decoded: `in%2Ff+1.json` is `in/f 1.json`.
    pub key: String,
    pub etag: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Notification {
    /// S3's check that the queue exists; nothing to do.
    Test,
    /// Objects created (other event kinds in the same message are ignored).
    Objects(Vec<ObjectRef>),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "Event")]
    event: Option<String>,
    #[serde(rename = "Records")]
    records: Option<Vec<Record>>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: Bucket,
    object: Object,
}

#[derive(Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Deserialize)]
struct Object {
    key: String,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    size: Option<u64>,
}

pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not an S3 notification: {e}"))?;
    // SNS fan-out wraps the S3 message as a JSON string.
    if envelope.kind.as_deref() == Some("Notification")
        && let Some(inner) = envelope.message
    {
        return parse(inner.as_bytes());
    }
    if envelope.event.as_deref() == Some("s3:TestEvent") {
        return Ok(Notification::Test);
    }
    let records = envelope
        .records
        .ok_or("an S3 notification without Records")?;
    let objects = records
        .into_iter()
        .filter(|r| r.event_name.starts_with("ObjectCreated:"))
        .map(|r| ObjectRef {
            bucket: r.s3.bucket.name,
            key: decode_key(&r.s3.object.key),
            etag: r.s3.object.etag.map(|e| e.trim_matches('"').to_owned()),
            size: r.s3.object.size,
        })
        .collect();
    Ok(Notification::Objects(objects))
}

/// S3 writes keys in notifications URL-encoded, with `+` for a space.
pub fn decode_key(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// mParticle's bucket verification files: written when the output is saved, never data.
pub fn is_verification_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with("mParticle_Bucket_Verification_") || name == "mparticle_validation.txt"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(decode_key("in%2Ff.json"), "in/f.json");
        assert_eq!(decode_key("my+file%2B1.txt"), "my file+1.txt");
        assert_eq!(decode_key("caf%C3%A9"), "café");
        assert_eq!(decode_key("100%"), "100%");
        assert_eq!(decode_key("%zz"), "%zz");
    }

    #[test]
    fn plain_sns_and_test_events() {
        let plain = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},
            "object":{"key":"exports%2FApp_1_2.txt","eTag":"\"abc\"","size":5}}},
            {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"x"}}}]}"#;
        let expected = Notification::Objects(vec![ObjectRef {
            bucket: "b".into(),
            key: "exports/App_1_2.txt".into(),
            etag: Some("abc".into()),
            size: Some(5),
        }]);
        assert_eq!(parse(plain).unwrap(), expected);
        let sns = serde_json::json!({"Type": "Notification", "Message": std::str::from_utf8(plain).unwrap()});
        assert_eq!(parse(sns.to_string().as_bytes()).unwrap(), expected);
        let test = br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(parse(test).unwrap(), Notification::Test);
        assert!(parse(b"{}").is_err());
        assert!(parse(b"nope").is_err());
    }

    #[test]
    fn verification_files() {
        assert!(is_verification_file(
            "mParticle_Bucket_Verification_20261129-120000.txt"
        ));
        assert!(is_verification_file("folder/mparticle_validation.txt"));
        assert!(!is_verification_file(
            "folder/App_20261129120000123456_12345.txt"
        ));
    }
}
