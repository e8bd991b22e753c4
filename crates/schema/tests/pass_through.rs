//! The pass-through form: a validated inbound batch carried as the sender's bytes beside the
//! ids routing needs, and read back in full where content matters.

use mpconnect_schema as schema;
use prost::bytes::Bytes;
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
    // Written field by field, the bytes are prost's own for the pass-through form: with and
    // without ids, an id long enough for a two-byte length, no events, many events.
    let long_id = "x".repeat(200);
    let shapes = [
        SENT.to_owned(),
        r#"{"environment":"production","events":[]}"#.to_owned(),
        format!(
            r#"{{"environment":"production","source_request_id":"{long_id}","events":[{{"event_type":"custom_event","data":{{"event_name":"a","custom_event_type":"other","source_message_id":"{long_id}"}}}},{{"event_type":"session_start","data":{{}}}}]}}"#
        ),
        String::from_utf8(schema::testing::bulk_request(7, false)).unwrap(),
    ];
    for shape in &shapes {
        for read in schema::skim_batches(shape.as_bytes()).unwrap() {
            let written = schema::encode_pass_through(&read.batch, read.json).unwrap();
            let through = schema::pass_through(&read.batch, read.json).unwrap();
            assert_eq!(written, through.encode_to_vec(), "{shape}");
            // Ingest sends the head and the JSON as two parts of one queue body.
            let mut parts = schema::pass_through_head(&read.batch, read.json.len()).unwrap();
            parts.extend_from_slice(read.json);
            assert_eq!(parts, written, "{shape}");
        }
    }
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
        let bytes = Bytes::from(b.encode_to_vec());
        let read = schema::decode_batch_proto(&bytes).unwrap();
        assert_eq!(read, b);
        assert_eq!(
            read.events.capacity(),
            b.events.len(),
            "room for exactly its events"
        );
        // The sender's JSON is a view of the message's buffer, not a copy.
        if !read.inbound_json.is_empty() {
            let buffer = bytes.as_ptr_range();
            assert!(buffer.contains(&read.inbound_json.as_ptr()));
        }
    }
    // Events after other fields (two batches' bytes one after the other merge into one, as
    // prost merges them).
    let mut two = batch.encode_to_vec();
    two.extend(
        schema::decode_batch(SENT.as_bytes())
            .unwrap()
            .encode_to_vec(),
    );
    let mut merged = Batch::decode(&batch.encode_to_vec()[..]).unwrap();
    merged.merge(&two[batch.encode_to_vec().len()..]).unwrap();
    assert_eq!(
        schema::decode_batch_proto(&Bytes::from(two)).unwrap(),
        merged
    );
    let bytes = Bytes::from(batch.encode_to_vec());
    assert!(schema::decode_batch_proto(&bytes.slice(..bytes.len() - 1)).is_err());
    assert!(schema::decode_batch_proto(&Bytes::from_static(&[0xff; 3])).is_err());
}

/// A skimmed read (only what validation, the ids and the pass-through check read is built) gives
/// what a full read gives wherever it matters: each batch's text, whether it is as sent, its
/// validation and its pass-through form; a batch that cannot pass through comes back read in
/// full.
#[test]
fn a_skimmed_read_agrees_with_a_full_read() {
    let attributed = r#"{"environment":"production","source_request_id":"r-9",
      "user_attributes":{"tier":"gold","tags":["a","b"]},"device_info":{"platform":"iOS"},
      "events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other",
        "source_message_id":"m-9","session_id":5,"custom_attributes":{"n":1.5,"s":"x\u00e9","o":{"k":[1,null]}},
        "custom_flags":{"f":"v"}}},
        {"event_type":"commerce_event","data":{"product_action":{"action":"purchase",
          "products":[{"id":"p","custom_attributes":{"a":"b"}}]}}}]}"#;
    let changed = r#"{"environment":"production","timestamp_unixtime_ms":"1700000000000",
      "events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other",
        "custom_attributes":{"k":"v"}}}]}"#;
    let outbound = r#"{"environment":"production","message_id":"x",
      "events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other",
        "custom_attributes":{"k":"v"}}}]}"#;
    let invalid = r#"{"environment":"staging","events":[{"event_type":"custom_event",
        "data":{"custom_attributes":{"k":"v"}}}]}"#;
    // A string of digits deep in a member the skim leaves out still changes the batch's form.
    let changed_deep = r#"{"environment":"production","events":[{"event_type":"breadcrumb",
      "data":{"label":"l","device_current_state":{"time_since_start_ms":"123"}}}]}"#;
    // Each event type's required members are kept for validation, whatever their form.
    let required = r#"{"environment":"production","events":[
      {"event_type":"breadcrumb","data":{"label":""}},
      {"event_type":"push_registration","data":{"register":null,"registration_token":7}},
      {"event_type":"application_state_transition","data":{}},
      {"event_type":"push_message","data":{"push_message_type":"received"}},
      {"event_type":"commerce_event","data":{"promotion_action":{"promotions":[]}}},
      {"event_type":"screen_view","data":{"screen_name":"s"}},
      {"event_type":"nope","data":{"event_name":"x"}}]}"#;
    let body =
        format!("[{SENT},{attributed},{changed},{outbound},{invalid},{changed_deep},{required}]");
    let full = schema::read_batches(body.as_bytes()).unwrap();
    let skimmed = schema::skim_batches(body.as_bytes()).unwrap();
    assert_eq!(skimmed.len(), 7);
    for (s, f) in skimmed.iter().zip(&full) {
        assert_eq!(s.json, f.json);
        assert_eq!(s.as_sent, f.as_sent);
        assert_eq!(schema::validate(&s.batch), schema::validate(&f.batch));
        assert_eq!(s.batch.events.len(), f.batch.events.len());
        assert_eq!(
            schema::encode_pass_through(&s.batch, s.json),
            schema::encode_pass_through(&f.batch, f.json),
        );
        if !s.as_sent || schema::encode_pass_through(&s.batch, s.json).is_none() {
            assert_eq!(
                s.batch,
                f.batch,
                "read in full: {}",
                std::str::from_utf8(s.json).unwrap()
            );
        }
    }
    assert!(!skimmed[2].as_sent);
    assert!(schema::validate(&skimmed[4].batch).is_err());
    assert!(!skimmed[5].as_sent);
    let errors = schema::validate(&skimmed[6].batch).unwrap_err();
    assert_eq!(errors.len(), 5, "{errors:?}");
    // Skimmed: what nothing reads again is not built.
    let sent = (&full[1].batch, &skimmed[1].batch);
    assert!(sent.0.device_info.is_some() && sent.1.device_info.is_none());
    assert!(sent.0.events[0].session_id.is_some() && sent.1.events[0].session_id.is_none());
    assert_eq!(
        sent.0.events[0].source_message_id,
        sent.1.events[0].source_message_id
    );
    // Skimmed: the maps are not built; the bytes that travel carry them.
    let attributes = |b: &Batch| {
        b.user_attributes.as_ref().map_or(0, |a| a.values.len())
            + b.events
                .iter()
                .map(|e| e.custom_attributes.as_ref().map_or(0, |a| a.values.len()))
                .sum::<usize>()
    };
    assert_eq!(attributes(&skimmed[1].batch), 0);
    assert_eq!(attributes(&full[1].batch), 5);
}

/// What a full read refuses inside an attribute map or any member a skimmed read leaves out, a
/// skimmed read refuses too: a number out of range, a key with a lone surrogate, bytes that are
/// not UTF-8, an element of a kind's list that is not what the kind takes.
#[test]
fn a_skimmed_read_refuses_what_a_full_read_refuses() {
    let with = |attributes: &[u8]| {
        let mut body = br#"[{"environment":"production","events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other","custom_attributes":"#.to_vec();
        body.extend_from_slice(attributes);
        body.extend_from_slice(b"}}]}]");
        body
    };
    for bad in [
        &br#"{"n":1e400}"#[..],
        br#"{"\ud800":1}"#,
        b"{\"s\":\"\xff\"}",
        br#"{"s":"\ud800"}"#,
        br#"{"a":[1,}"#,
    ] {
        let body = with(bad);
        assert!(schema::read_batches(&body).is_none(), "{bad:?}");
        assert!(schema::skim_batches(&body).is_none(), "{bad:?}");
    }
    let good = with(br#"{"n":1e300,"s":"\u00e9\ud83d\ude00","l":[{"x":null}]}"#);
    assert!(schema::read_batches(&good).is_some());
    assert!(schema::skim_batches(&good).is_some());

    // The same in members a skimmed read leaves out, and what their kinds refuse: a list of
    // strings with a number, a product list with a non-object, a consent that is not an object.
    let batch_with = |member: &[u8]| {
        let mut body = br#"[{"environment":"production","events":[{"event_type":"commerce_event","data":{"product_action":{"action":"view"}}}],"#.to_vec();
        body.extend_from_slice(member);
        body.extend_from_slice(b"}]");
        body
    };
    for bad in [
        &br#""device_info":{"brand":1e400}"#[..],
        br#""device_info":{"platform":"\ud800"}"#,
        b"\"application_info\":{\"os\":\"\xff\"}",
        br#""deleted_user_attributes":["a",1]"#,
        br#""consent_state":{"gdpr":{"p":1}}"#,
        br#""context":{"location":{"city_name":[1,}}"#,
    ] {
        let body = batch_with(bad);
        assert!(schema::read_batches(&body).is_none(), "{bad:?}");
        assert!(schema::skim_batches(&body).is_none(), "{bad:?}");
    }
    let event_with = |data: &[u8]| {
        let mut body =
            br#"[{"environment":"production","events":[{"event_type":"commerce_event","data":{"#
                .to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"}}]}]");
        body
    };
    for bad in [
        &br#""shopping_cart":{"products":[1]}"#[..],
        br#""product_impressions":[{"products":["p"]}]"#,
        br#""product_action":{"action":"add_to_cart","products":[null]}"#,
        br#""location":{"latitude":1e999}"#,
    ] {
        let body = event_with(bad);
        assert!(schema::read_batches(&body).is_none(), "{bad:?}");
        assert!(schema::skim_batches(&body).is_none(), "{bad:?}");
    }
    let good = batch_with(
        br#""device_info":{"brand":1e300,"platform":["x"]},"deleted_user_attributes":"a""#,
    );
    assert!(schema::read_batches(&good).is_some());
    assert!(schema::skim_batches(&good).is_some());
}
