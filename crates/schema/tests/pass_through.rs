//! The pass-through form: a validated inbound batch carried as the sender's bytes beside the
//! ids routing needs, and read back in full where content matters.

use mpconnect_schema as schema;
use schema::v1::Batch;

const SENT: &str = r#"{"environment":"production", "source_request_id":"r-1",
  "user_identities":{"customer_id":"c1"},
  "events":[
    {"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other","source_message_id":"m-1"}},
    {"event_type":"screen_view","data":{"screen_name":"Home"}},
    {"event_type":"custom_event","data":{"event_name":"b","custom_event_type":"other","source_message_id":"m-2"}}]}"#;

fn sent() -> (Batch, bool) {
    schema::parse_batch_as_sent(SENT.as_bytes()).unwrap()
}

#[test]
fn carries_the_senders_bytes_and_the_ids() {
    let (batch, as_sent) = sent();
    assert!(as_sent);
    let through = schema::pass_through(&batch, SENT.as_bytes()).unwrap();
    assert!(schema::is_pass_through(&through));
    assert_eq!(through.inbound_json, SENT.as_bytes(), "byte for byte");
    assert_eq!(through.source_request_id.as_deref(), Some("r-1"));
    let ids: Vec<_> = through
        .events
        .iter()
        .map(|e| e.source_message_id.as_deref())
        .collect();
    assert_eq!(ids, [Some("m-1"), None, Some("m-2")]);
    assert!(
        through.user_identities.is_none(),
        "content stays in the bytes"
    );
}

#[test]
fn materialize_gives_the_full_batch() {
    let (batch, _) = sent();
    let mut through = schema::pass_through(&batch, SENT.as_bytes()).unwrap();
    schema::materialize(&mut through).unwrap();
    assert_eq!(through, batch);
    assert!(!schema::is_pass_through(&through));
    // A full batch is left as it is.
    let mut again = through.clone();
    schema::materialize(&mut again).unwrap();
    assert_eq!(again, through);
}

#[test]
fn materialize_keeps_only_the_events_still_listed() {
    let (batch, _) = sent();
    let mut through = schema::pass_through(&batch, SENT.as_bytes()).unwrap();
    // The transform dropped m-1 as a repeat.
    through
        .events
        .retain(|e| e.source_message_id.as_deref() != Some("m-1"));
    schema::materialize(&mut through).unwrap();
    let kept: Vec<_> = through
        .events
        .iter()
        .map(|e| e.source_message_id.as_deref())
        .collect();
    assert_eq!(kept, [None, Some("m-2")]);
    assert_eq!(through.events[1], batch.events[2]);
}

#[test]
fn a_batch_read_with_a_change_of_form_is_not_as_sent() {
    for changed in [
        r#"{"environment":"production","user_identities":{"customerid":"c1"},"events":[]}"#,
        r#"{"environment":"production","timestamp_unixtime_ms":"1700000000000","events":[]}"#,
    ] {
        let (_, as_sent) = schema::parse_batch_as_sent(changed.as_bytes()).unwrap();
        assert!(!as_sent, "{changed}");
    }
    // The flag is per read: the next canonical batch is as sent again.
    assert!(sent().1);
}

#[test]
fn outbound_only_members_are_not_passed_through() {
    let outbound = r#"{"environment":"production","message_id":"x","events":[]}"#;
    let (batch, _) = schema::parse_batch_as_sent(outbound.as_bytes()).unwrap();
    assert!(schema::pass_through(&batch, outbound.as_bytes()).is_none());
}

/// A body read in one pass gives each batch's own text and reading, as reading the texts one
/// by one does; anything that is not an array of batch objects (or one) reads as `None`.
#[test]
fn read_batches_finds_each_batch_and_its_text() {
    let plain = r#"{"environment":"production","events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other"}}]}"#;
    let changed =
        r#"{"environment":"production","user_identities":{"customerid":"c1"},"events":[]}"#;
    let body = format!(" [ {plain} ,\n{changed}\t,{plain}] \r\n");
    let read = schema::read_batches(body.as_bytes()).expect("an array of batches");
    assert_eq!(read.len(), 3);
    for (got, text) in read.iter().zip([plain, changed, plain]) {
        assert_eq!(got.json, text.as_bytes());
        let (batch, as_sent) = schema::parse_batch_as_sent(text.as_bytes()).unwrap();
        assert_eq!((&got.batch, got.as_sent), (&batch, as_sent));
    }
    assert!(read[0].as_sent && !read[1].as_sent && read[2].as_sent);

    let one = schema::read_batches(format!("\n{plain} ").as_bytes())
        .expect("one batch object")
        .into_iter()
        .map(|r| r.json.len())
        .collect::<Vec<_>>();
    assert_eq!(one, [plain.len()]);
    assert_eq!(schema::read_batches(b" [ ] ").map(|r| r.len()), Some(0));

    for not_batches in [
        format!("[{plain},]"),
        format!("[{plain} {plain}]"),
        format!("[{plain}] x"),
        format!("[{plain}, null]"),
        format!("[{plain}, {{\"events\": 3,]"),
        format!("[{plain}"),
        "\x0c[]".to_owned(),
        "\"a\"".to_owned(),
        String::new(),
    ] {
        assert!(
            schema::read_batches(not_batches.as_bytes()).is_none(),
            "{not_batches:?}"
        );
    }
}

/// The pass-through form's protobuf, written with the JSON copied straight in, is the form
/// itself (and the JSON field's number is the one `event.proto` gives it).
#[test]
fn encoded_pass_through_decodes_to_the_pass_through_form() {
    use prost::Message;
    let (batch, _) = sent();
    let bytes = schema::encode_pass_through(&batch, SENT.as_bytes()).unwrap();
    let through = schema::pass_through(&batch, SENT.as_bytes()).unwrap();
    assert_eq!(Batch::decode(bytes.as_slice()).unwrap(), through);
    assert_eq!(bytes.len(), through.encoded_len());
}

/// A batch's protobuf read with its events counted first is the batch; damaged bytes are
/// still refused.
#[test]
fn decode_batch_proto_reads_what_prost_reads() {
    use prost::Message;
    let (batch, _) = sent();
    let full = schema::decode_batch(SENT.as_bytes()).unwrap();
    for b in [
        batch.clone(),
        full,
        Batch::default(),
        schema::pass_through(&batch, SENT.as_bytes()).unwrap(),
    ] {
        let bytes = b.encode_to_vec();
        let read = schema::decode_batch_proto(&bytes).unwrap();
        assert_eq!(read, b);
        assert_eq!(
            read.events.capacity(),
            b.events.len(),
            "room for exactly its events"
        );
    }
    let bytes = batch.encode_to_vec();
    assert!(schema::decode_batch_proto(&bytes[..bytes.len() - 1]).is_err());
    assert!(schema::decode_batch_proto(&[0xff; 3]).is_err());
}
