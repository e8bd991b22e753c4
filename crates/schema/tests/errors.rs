//! Every way a batch is refused, and the message a sender reads for it.

use mpconnect_schema::{
    DecodeError, ValidationError, decode_batch, decode_batches, parse_batch, validate_historical,
};

fn invalid(json: &str) -> Vec<ValidationError> {
    match decode_batch(json.as_bytes()) {
        Err(DecodeError::Invalid(errors)) => errors,
        other => panic!("expected validation errors for {json}, got {other:?}"),
    }
}

fn only(json: &str) -> (String, String) {
    let errors = invalid(json);
    assert_eq!(errors.len(), 1, "{errors:?}");
    (errors[0].path.clone(), errors[0].message.clone())
}

fn malformed(json: &str) -> String {
    match decode_batch(json.as_bytes()) {
        Err(e @ DecodeError::Json(_)) => e.to_string(),
        other => panic!("expected a JSON error for {json}, got {other:?}"),
    }
}

fn event(event_type: &str, data: &str) -> String {
    format!(
        r#"{{"environment":"production","events":[{{"event_type":"{event_type}","data":{data}}}]}}"#
    )
}

#[test]
fn environment_missing_null_or_empty() {
    for json in [
        r#"{"events":[]}"#,
        r#"{"environment":null}"#,
        r#"{"environment":""}"#,
    ] {
        assert_eq!(
            only(json),
            (
                "environment".into(),
                "Required batch field \"environment\" is missing or empty.".into()
            )
        );
    }
}

#[test]
fn environment_with_another_value() {
    for (json, shown) in [
        (r#"{"environment":"staging"}"#, "\"staging\""),
        (r#"{"environment":"unknown"}"#, "\"unknown\""),
        (r#"{"environment":1}"#, "1"),
    ] {
        let (path, message) = only(json);
        assert_eq!(path, "environment");
        assert_eq!(
            message,
            format!(
                "Batch field \"environment\" must be \"production\" or \"development\", got {shown}."
            )
        );
    }
}

#[test]
fn event_type_missing_or_empty() {
    for json in [
        r#"{"environment":"production","events":[{"data":{}}]}"#,
        r#"{"environment":"production","events":[{"event_type":"","data":{}}]}"#,
        r#"{"environment":"production","events":[{"event_type":null}]}"#,
    ] {
        assert_eq!(
            only(json),
            (
                "events[0].event_type".into(),
                "Required event field \"event_type\" is missing or empty.".into()
            )
        );
    }
}

#[test]
fn event_type_unknown() {
    let (path, message) = only(&event("media_event", "{}"));
    assert_eq!(path, "events[0].event_type");
    assert!(message.starts_with("Event field \"event_type\" has an unknown value \"media_event\"; expected one of: session_start, session_end,"), "{message}");
    assert!(message.ends_with("uninstall."), "{message}");
}

#[test]
fn custom_event_needs_name_and_type() {
    let errors = invalid(&event("custom_event", "{}"));
    let found: Vec<_> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "events[0].data.event_name",
                "Required event field \"event_name\" is missing or empty."
            ),
            (
                "events[0].data.custom_event_type",
                "Required event field \"custom_event_type\" is missing or empty."
            ),
        ]
    );
    // Empty text is missing too.
    let (path, _) = only(&event(
        "custom_event",
        r#"{"event_name":"","custom_event_type":"other"}"#,
    ));
    assert_eq!(path, "events[0].data.event_name");
    // Any other non-null JSON scalar counts as present (the schema's `String` allows it).
    assert!(
        decode_batch(
            event(
                "custom_event",
                r#"{"event_name":42,"custom_event_type":"other"}"#
            )
            .as_bytes()
        )
        .is_ok()
    );
}

#[test]
fn commerce_actions_need_their_action() {
    let (path, message) = only(&event(
        "commerce_event",
        r#"{"product_action":{"products":[]}}"#,
    ));
    assert_eq!(path, "events[0].data.product_action.action");
    assert_eq!(
        message,
        "Required event field \"product_action.action\" is missing or empty."
    );
    let (path, _) = only(&event(
        "commerce_event",
        r#"{"promotion_action":{"action":null}}"#,
    ));
    assert_eq!(path, "events[0].data.promotion_action.action");
}

#[test]
fn required_fields_of_other_types() {
    for (event_type, field) in [
        ("push_registration", "register"),
        (
            "application_state_transition",
            "application_transition_type",
        ),
        ("push_message", "push_message_type"),
        ("breadcrumb", "label"),
    ] {
        let data = if event_type == "push_registration" {
            r#"{"registration_token":"t"}"#
        } else {
            "{}"
        };
        let (path, message) = only(&event(event_type, data));
        assert_eq!(path, format!("events[0].data.{field}"));
        assert_eq!(
            message,
            format!("Required event field \"{field}\" is missing or empty.")
        );
    }
    let (path, _) = only(&event("push_registration", r#"{"register":true}"#));
    assert_eq!(path, "events[0].data.registration_token");
}

#[test]
fn every_problem_is_reported_with_its_index() {
    let json = r#"[{"environment":"production","events":[{"event_type":"custom_event","data":{"event_name":"a","custom_event_type":"other"}}]},
                   {"events":[{"event_type":"breadcrumb","data":{}},{"event_type":"x"}]}]"#;
    let Err(DecodeError::Invalid(errors)) = decode_batches(json.as_bytes()) else {
        panic!()
    };
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "[1].environment",
            "[1].events[0].data.label",
            "[1].events[1].event_type"
        ]
    );
    let all = DecodeError::Invalid(errors).to_string();
    assert!(
        all.contains(
            "Required event field \"label\" is missing or empty. (at [1].events[0].data.label)"
        ),
        "{all}"
    );
}

#[test]
fn malformed_json_says_where() {
    assert_eq!(
        malformed("{\"environment\":"),
        "Malformed JSON: EOF while parsing a value at line 1 column 15"
    );
    assert!(malformed("{\"events\":[}").contains("line 1 column 12"));
    assert!(malformed("").contains("EOF"));
    assert!(malformed("{} {}").contains("trailing characters"));
    assert!(
        malformed("[{\"environment\":\"production\"}]").contains("expected a batch object"),
        "one batch, not an array"
    );
}

#[test]
fn shapes_nothing_can_hold_are_refused_not_guessed() {
    let m = malformed(&event(
        "commerce_event",
        r#"{"product_action":{"action":"purchase","products":[1]}}"#,
    ));
    assert!(
        m.contains("expected an object as list element 0, found 1"),
        "{m}"
    );
    let m = malformed(r#"{"environment":"production","consent_state":{"gdpr":{"p":true}}}"#);
    assert!(
        m.contains("consent purpose \"p\" must be an object, found true"),
        "{m}"
    );
    let m = malformed(
        r#"{"environment":"production","user_identities":[{"identity_type":"email","identity":"a"},"x"]}"#,
    );
    assert!(
        m.contains("user_identities[1] must be an object, found \"x\""),
        "{m}"
    );
    let m = malformed(&event("session_start", "5"));
    assert!(m.contains("expected an event's data object"), "{m}");
    let m = malformed(r#"{"environment":"production","events":[1]}"#);
    assert!(m.contains("expected an event object"), "{m}");
}

#[test]
fn historical_rules() {
    let now = 1_700_000_000_000i64;
    let old = now - 73 * 3600 * 1000;
    let recent = now - 3600 * 1000;
    let body = format!(
        r#"{{"environment":"production","events":[
            {{"event_type":"session_start","data":{{"timestamp_unixtime_ms":{old}}}}},
            {{"event_type":"session_start","data":{{}}}},
            {{"event_type":"session_start","data":{{"timestamp_unixtime_ms":{recent}}}}}]}}"#
    );
    let batch = parse_batch(body.as_bytes()).unwrap();
    let errors = validate_historical(&batch, now).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].path, "events[1].data.timestamp_unixtime_ms");
    assert!(
        errors[0]
            .message
            .starts_with("Required event field \"timestamp_unixtime_ms\" is missing")
    );
    assert_eq!(errors[1].path, "events[2].data.timestamp_unixtime_ms");
    assert_eq!(
        errors[1].message,
        format!(
            "Event timestamp {recent} is less than 72 hours old; send recent data to /v2/bulkevents instead."
        )
    );
    let empty = parse_batch(br#"{"environment":"production","events":[]}"#).unwrap();
    let errors = validate_historical(&empty, now).unwrap_err();
    assert_eq!(
        errors[0].message,
        "Historical batches must contain at least one event."
    );
    let ok = parse_batch(format!(r#"{{"environment":"production","events":[{{"event_type":"uninstall","data":{{"timestamp_unixtime_ms":"{old}"}}}}]}}"#).as_bytes()).unwrap();
    assert_eq!(validate_historical(&ok, now), Ok(()));
}
