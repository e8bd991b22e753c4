//! proptest strategies for canonical batches.
//!
//! `Mode::Lenient` explores everything the schema can hold (all 19 event types, unmodelled
//! `extra` members, odd strings and numbers); `Mode::Official` stays inside mParticle's official
//! JSON Schema, so the inbound encoding of what it makes must validate against that schema.

use std::collections::BTreeMap;

use mpconnect_schema::Dialect;
use mpconnect_schema::json::Fields;
use mpconnect_schema::v1::*;
use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Lenient,
    Official,
}

fn text(mode: Mode) -> BoxedStrategy<String> {
    match mode {
        // Any Unicode, control characters and quotes included: the writer must escape them.
        Mode::Lenient => any::<String>()
            .prop_map(|s| s.chars().take(24).collect())
            .boxed(),
        Mode::Official => "[a-zA-Z0-9 _.-]{0,16}".boxed(),
    }
}

fn opt_text(mode: Mode) -> BoxedStrategy<Option<String>> {
    of(text(mode)).boxed()
}

/// The official schema's `Uuid` has a pattern; lenient text covers everything else.
fn uuid_or_text(mode: Mode) -> BoxedStrategy<Option<String>> {
    match mode {
        Mode::Lenient => opt_text(mode),
        Mode::Official => {
            of("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").boxed()
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z$][a-zA-Z0-9 _-]{0,12}"
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite())
}

fn opt_num() -> impl Strategy<Value = Option<f64>> {
    of(finite())
}

fn opt_long() -> impl Strategy<Value = Option<i64>> {
    of(any::<i64>())
}

fn opt_bool() -> impl Strategy<Value = Option<bool>> {
    of(any::<bool>())
}

fn scalar_value(mode: Mode) -> BoxedStrategy<Value> {
    let kinds = prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(value::Kind::BoolValue(b))),
        any::<i64>().prop_map(|i| Some(value::Kind::IntValue(i))),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(|u| Some(value::Kind::UintValue(u))),
        finite().prop_map(|f| Some(value::Kind::DoubleValue(f))),
        text(mode).prop_map(|s| Some(value::Kind::StringValue(s))),
    ];
    kinds.prop_map(|kind| Value { kind }).boxed()
}

/// An attribute value: a scalar or a list of scalars (and, leniently, a raw JSON object).
fn attribute_value(mode: Mode) -> BoxedStrategy<Value> {
    let list = vec(text(mode), 0..3).prop_map(|items| Value {
        kind: Some(value::Kind::ListValue(ValueList {
            values: items
                .into_iter()
                .map(|s| Value {
                    kind: Some(value::Kind::StringValue(s)),
                })
                .collect(),
        })),
    });
    match mode {
        Mode::Lenient => prop_oneof![
            4 => scalar_value(mode),
            1 => list,
            1 => raw_json().prop_map(|j| Value { kind: Some(value::Kind::Json(format!("{{\"v\":{j}}}"))) }),
        ]
        .boxed(),
        Mode::Official => prop_oneof![4 => scalar_value(mode), 1 => list].boxed(),
    }
}

fn string_value(mode: Mode) -> BoxedStrategy<Value> {
    text(mode)
        .prop_map(|s| Value {
            kind: Some(value::Kind::StringValue(s)),
        })
        .boxed()
}

fn attributes(mode: Mode) -> BoxedStrategy<Option<Attributes>> {
    of(btree_map(name(), attribute_value(mode), 0..4).prop_map(|values| Attributes { values }))
        .boxed()
}

/// Attributes whose values are strings (where the official schema says so).
fn string_attributes(mode: Mode) -> BoxedStrategy<Option<Attributes>> {
    of(btree_map(name(), string_value(mode), 0..4).prop_map(|values| Attributes { values })).boxed()
}

/// Compact JSON text as the codec's capture writes it.
fn raw_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        any::<i32>().prop_map(|i| i.to_string()),
        "[a-z]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ("[a-z]{1,4}", any::<bool>()).prop_map(|(k, b)| format!("{{\"{k}\":[{b},null,1]}}")),
    ]
}

/// Unmodelled members: keys the message does not model.
fn extra(mode: Mode, taken: &'static [&'static str]) -> BoxedStrategy<BTreeMap<String, String>> {
    match mode {
        Mode::Official => Just(BTreeMap::new()).boxed(),
        Mode::Lenient => btree_map("x_[a-z]{1,6}", raw_json(), 0..2)
            .prop_filter("extra keys are not modelled names", move |m| {
                m.keys().all(|k| !taken.contains(&k.as_str()))
            })
            .boxed(),
    }
}

fn location(mode: Mode) -> BoxedStrategy<Option<Location>> {
    let s = move || opt_text(mode);
    let official = mode == Mode::Official;
    of((
        finite(),
        finite(),
        opt_num(),
        s(),
        s(),
        s(),
        s(),
        s(),
        s(),
        extra(mode, Location::NAMES),
    )
        .prop_map(
            move |(lat, lon, accuracy, cc, rc, city, postal, dma, source, extra)| {
                let mut l = Location {
                    latitude: Some(lat),
                    longitude: Some(lon),
                    accuracy,
                    country_code: cc,
                    region_code: rc,
                    city_name: city,
                    postal_code: postal,
                    dma_code: dma,
                    location_source: source,
                    extra,
                };
                if official {
                    // The official GeoLocation has only these three.
                    l = Location {
                        latitude: l.latitude,
                        longitude: l.longitude,
                        accuracy,
                        ..Default::default()
                    };
                }
                l
            },
        ))
    .boxed()
}

fn device_current_state(mode: Mode) -> BoxedStrategy<Option<DeviceCurrentState>> {
    let s = move || opt_text(mode);
    of((
        (
            opt_long(),
            opt_num(),
            s(),
            s(),
            opt_bool(),
            opt_long(),
            opt_long(),
            opt_long(),
        ),
        (
            s(),
            opt_num(),
            opt_bool(),
            opt_num(),
            opt_num(),
            opt_num(),
            opt_num(),
            s(),
            s(),
        ),
        extra(mode, DeviceCurrentState::NAMES),
    )
        .prop_map(
            |((a, b, c, d, e, f, g, h), (i, j, k, l, m, n, o, p, q), extra)| DeviceCurrentState {
                time_since_start_ms: a,
                battery_level: b,
                data_connection_type: c,
                data_connection_type_detail: d,
                gps_state: e,
                total_system_memory_usage_bytes: f,
                disk_space_free_bytes: g,
                external_disk_space_free_bytes: h,
                cpu: i,
                system_memory_available_bytes: j,
                system_memory_low: k,
                system_memory_threshold_bytes: l,
                application_memory_available_bytes: m,
                application_memory_max_bytes: n,
                application_memory_total_bytes: o,
                device_orientation: p,
                status_bar_orientation: q,
                extra,
            },
        ))
    .boxed()
}

fn product(mode: Mode) -> BoxedStrategy<Product> {
    let s = move || opt_text(mode);
    (
        (
            text(mode),
            text(mode),
            s(),
            s(),
            s(),
            opt_long(),
            opt_num(),
            opt_num(),
        ),
        (
            s(),
            opt_long(),
            opt_num(),
            string_attributes(mode),
            extra(mode, Product::NAMES),
        ),
    )
        .prop_map(
            |((id, name, brand, category, variant, position, price, quantity), rest)| {
                let (coupon_code, added, total, custom_attributes, extra) = rest;
                Product {
                    // The official schema types id and name as plain strings (no null).
                    id: Some(id),
                    name: Some(name),
                    brand,
                    category,
                    variant,
                    position,
                    price,
                    quantity,
                    coupon_code,
                    added_to_cart_time_ms: added,
                    total_product_amount: total,
                    custom_attributes,
                    extra,
                }
            },
        )
        .boxed()
}

fn products(mode: Mode) -> BoxedStrategy<Option<Products>> {
    of(vec(product(mode), 0..3).prop_map(|values| Products { values })).boxed()
}

const PRODUCT_ACTIONS: &[&str] = &[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wish_list",
];
// The official schema spells this list's wishlist value differently from the action's.
const COMMERCE_EVENT_TYPES: &[&str] = &[
    "purchase",
    "add_to_cart",
    "remove_from_wishlist",
    "click",
    "impression",
    "promotion_view",
];
const CUSTOM_EVENT_TYPES: &[&str] = &[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
];

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(values).prop_map(str::to_owned)
}

fn commerce(mode: Mode) -> BoxedStrategy<CommerceEvent> {
    let s = move || opt_text(mode);
    let product_action = (
        pick(PRODUCT_ACTIONS),
        (opt_long(), s(), s(), s(), text(mode), s()),
        (
            opt_num(),
            opt_num(),
            opt_num(),
            s(),
            products(mode),
            extra(mode, ProductAction::NAMES),
        ),
    )
        .prop_map(
            |(action, (step, options, list, source, tx, affiliation), rest)| {
                let (total, tax, shipping, coupon, products, extra) = rest;
                ProductAction {
                    action: Some(action),
                    checkout_step: step,
                    checkout_options: options,
                    product_action_list: list,
                    product_list_source: source,
                    transaction_id: Some(tx),
                    affiliation,
                    total_amount: total,
                    tax_amount: tax,
                    shipping_amount: shipping,
                    coupon_code: coupon,
                    products,
                    extra,
                }
            },
        );
    let promotion = (
        text(mode),
        text(mode),
        s(),
        s(),
        extra(mode, Promotion::NAMES),
    )
        .prop_map(|(id, name, creative, position, extra)| Promotion {
            id: Some(id),
            name: Some(name),
            creative,
            position,
            extra,
        });
    let promotion_action = (
        pick(&["view", "click"]),
        vec(promotion, 0..3),
        extra(mode, PromotionAction::NAMES),
    )
        .prop_map(|(action, promotions, extra)| PromotionAction {
            action: Some(action),
            promotions: Some(Promotions { values: promotions }),
            extra,
        });
    let impression = (
        text(mode),
        products(mode),
        extra(mode, ProductImpression::NAMES),
    )
        .prop_map(|(list, products, extra)| ProductImpression {
            product_impression_list: Some(list),
            products: Some(products.unwrap_or_default()),
            extra,
        });
    let cart = (products(mode), extra(mode, ShoppingCart::NAMES)).prop_map(|(products, extra)| {
        ShoppingCart {
            products: Some(products.unwrap_or_default()),
            extra,
        }
    });
    (
        prop_oneof![
            product_action.prop_map(|a| (Some(a), None, None)),
            promotion_action.prop_map(|a| (None, Some(a), None)),
            vec(impression, 0..2).prop_map(|i| (
                None,
                None,
                Some(ProductImpressions { values: i })
            )),
        ],
        (
            of(cart),
            s(),
            s(),
            opt_bool(),
            s(),
            of(pick(COMMERCE_EVENT_TYPES)),
            string_attributes(mode),
        ),
    )
        .prop_map(
            |((product_action, promotion_action, product_impressions), rest)| {
                let (shopping_cart, currency_code, screen_name, non_interactive, name, cet, flags) =
                    rest;
                CommerceEvent {
                    product_action,
                    promotion_action,
                    product_impressions,
                    shopping_cart,
                    currency_code,
                    screen_name,
                    is_non_interactive: non_interactive,
                    event_name: name,
                    custom_event_type: cet,
                    custom_flags: flags,
                }
            },
        )
        .boxed()
}

fn user_identity(mode: Mode) -> BoxedStrategy<UserIdentity> {
    (
        pick(&["customer_id", "email", "other", "other_id_2"]),
        text(mode),
        any::<i64>(),
        opt_bool(),
    )
        .prop_map(|(t, id, ts, created)| UserIdentity {
            identity_type: Some(t),
            identity: Some(id),
            timestamp_unixtime_ms: Some(ts),
            created_this_batch: created,
            extra: BTreeMap::new(),
        })
        .boxed()
}

/// Every event type, with the fields the official schema requires where `mode` is Official.
fn event_kind(mode: Mode) -> BoxedStrategy<event::Kind> {
    use event::Kind as K;
    let s = move || opt_text(mode);
    let t = move || text(mode).prop_map(Some);
    let official = mode == Mode::Official;
    let mut kinds: Vec<BoxedStrategy<K>> = vec![
        Just(K::SessionStart(SessionStart {})).boxed(),
        any::<i64>()
            .prop_map(|d| {
                K::SessionEnd(SessionEnd {
                    session_duration_ms: Some(d),
                })
            })
            .boxed(),
        (t(), s(), string_attributes(mode))
            .prop_map(|(n, a, f)| {
                K::ScreenView(ScreenView {
                    screen_name: n,
                    activity_type: a,
                    custom_flags: f,
                })
            })
            .boxed(),
        (t(), pick(CUSTOM_EVENT_TYPES), string_attributes(mode))
            .prop_map(|(n, c, f)| {
                K::CustomEvent(CustomEvent {
                    event_name: n,
                    custom_event_type: Some(c),
                    custom_flags: f,
                })
            })
            .boxed(),
        (
            (s(), s(), s(), s(), opt_bool()),
            (s(), s(), opt_long(), opt_long(), opt_long()),
        )
            .prop_map(
                |((class_name, severity, message, stack_trace, handled), rest)| {
                    let (topmost_context, pl, base, size, session_number) = rest;
                    K::CrashReport(Box::new(CrashReport {
                        class_name,
                        breadcrumbs: None,
                        severity,
                        message,
                        stack_trace,
                        exception_handled: handled,
                        topmost_context,
                        pl_crash_report_file_base64: pl,
                        ios_image_base_address: base,
                        ios_image_size: size,
                        session_number,
                    }))
                },
            )
            .boxed(),
        any::<bool>()
            .prop_map(|b| {
                K::OptOut(OptOut {
                    is_opted_out: Some(b),
                })
            })
            .boxed(),
        Just(K::FirstRun(FirstRun {})).boxed(),
        (any::<bool>(), text(mode))
            .prop_map(|(r, tok)| {
                K::PushRegistration(PushRegistration {
                    register: Some(r),
                    registration_token: Some(tok),
                })
            })
            .boxed(),
        (
            pick(&[
                "application_initialized",
                "application_exit",
                "application_background",
                "application_foreground",
            ]),
            (opt_bool(), opt_bool(), opt_bool(), s(), s()),
        )
            .prop_map(|(kind, (first, upgrade, closed, payload, referral))| {
                K::ApplicationStateTransition(ApplicationStateTransition {
                    application_transition_type: Some(kind),
                    is_first_run: first,
                    is_upgrade: upgrade,
                    successfully_closed: closed,
                    push_notification_payload: payload,
                    launch_referral: referral,
                })
            })
            .boxed(),
        (
            pick(&["sent", "received", "action"]),
            (t(), s(), s(), t()),
            of(pick(&["background", "foreground"])),
            s(),
        )
            .prop_map(
                |(kind, (token, message, network, payload), state, action)| {
                    K::PushMessage(Box::new(PushMessage {
                        push_message_type: Some(kind),
                        push_message_token: token,
                        message,
                        network,
                        push_notification_payload: payload,
                        application_state: state,
                        action_identifier: action,
                        push_message_behavior: None,
                    }))
                },
            )
            .boxed(),
        (
            (t(), t()),
            (opt_long(), opt_long(), opt_long(), any::<i64>()),
            s(),
        )
            .prop_map(
                |((verb, url), (elapsed, bytes_in, bytes_out, code), data)| {
                    K::NetworkPerformance(Box::new(NetworkPerformance {
                        http_verb: verb,
                        url,
                        time_elapsed: elapsed,
                        bytes_in,
                        bytes_out,
                        response_code: Some(code),
                        data,
                    }))
                },
            )
            .boxed(),
        (t(), opt_long())
            .prop_map(|(label, n)| {
                K::Breadcrumb(Breadcrumb {
                    label,
                    session_number: n,
                })
            })
            .boxed(),
        (
            any::<i64>(),
            any::<i64>(),
            pick(&["signup", "login", "logout", "update", "delete"]),
        )
            .prop_map(|(p, c, kind)| {
                K::Profile(Profile {
                    previous_mpid: Some(p),
                    current_mpid: Some(c),
                    profile_event_type: Some(kind),
                })
            })
            .boxed(),
        commerce(mode)
            .prop_map(|c| K::CommerceEvent(Box::new(c)))
            .boxed(),
        (
            text(mode),
            attribute_value(mode),
            attribute_value(mode),
            opt_bool(),
            opt_bool(),
        )
            .prop_map(|(n, new, old, deleted, is_new)| {
                K::UserAttributeChange(UserAttributeChange {
                    user_attribute_name: Some(n),
                    new: Some(new),
                    old: Some(old),
                    deleted,
                    is_new_attribute: is_new,
                })
            })
            .boxed(),
        (user_identity(mode), user_identity(mode))
            .prop_map(|(n, o)| {
                K::UserIdentityChange(Box::new(UserIdentityChange {
                    new: Some(n),
                    old: Some(o),
                }))
            })
            .boxed(),
        Just(K::Uninstall(Uninstall {})).boxed(),
    ];
    if !official {
        // Defined by mParticle's EventType enum, but absent from the official schema's oneOf.
        kinds.push(Just(K::PreAttribution(PreAttribution {})).boxed());
        kinds.push(
            (s(), s(), s(), s())
                .prop_map(|(a, b, c, d)| {
                    K::PushReaction(PushReaction {
                        push_message_token: a,
                        action_identifier: b,
                        action_name: c,
                        action_type: d,
                    })
                })
                .boxed(),
        );
        kinds.push(
            vec(raw_json(), 0..3)
                .prop_map(|crumbs| {
                    let values = crumbs
                        .into_iter()
                        .map(|j| Value {
                            kind: Some(value::Kind::Json(format!("{{\"raw\":{j}}}"))),
                        })
                        .collect();
                    K::CrashReport(Box::new(CrashReport {
                        breadcrumbs: Some(Value {
                            kind: Some(value::Kind::ListValue(ValueList { values })),
                        }),
                        ..Default::default()
                    }))
                })
                .boxed(),
        );
        kinds.push(
            scalar_value(mode)
                .prop_map(|behavior| {
                    K::PushMessage(Box::new(PushMessage {
                        push_message_type: Some("action".into()),
                        push_message_behavior: Some(behavior),
                        ..Default::default()
                    }))
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(kinds).boxed()
}

fn event(mode: Mode) -> BoxedStrategy<Event> {
    let official = mode == Mode::Official;
    (
        event_kind(mode),
        (
            opt_long(),
            opt_long(),
            uuid_or_text(mode),
            opt_long(),
            uuid_or_text(mode),
            opt_long(),
            opt_long(),
        ),
        (
            attributes(mode),
            location(mode),
            device_current_state(mode),
            opt_bool(),
            opt_num(),
        ),
        (
            opt_text(mode),
            opt_text(mode),
            opt_long(),
            opt_text(mode),
            opt_bool(),
            opt_text(mode),
        ),
        (
            opt_text(mode),
            opt_text(mode),
            extra(mode, &[]),
            extra(mode, &["event_type", "data"]),
        ),
    )
        .prop_map(move |(kind, ids, state, more, outbound)| {
            let (ts, event_id, smid, session_id, session_uuid, session_start, event_start) = ids;
            let (custom_attributes, location, device_current_state, goal, ltv) = state;
            let (ltv_name, connection, event_num, view_controller, main_thread, canonical) = more;
            let (message_id, message_type, mut data_extra, extra) = outbound;
            let taken: Vec<&str> = Event::NAMES
                .iter()
                .chain(mpconnect_schema::json::kind_field_names(&kind))
                .copied()
                .collect();
            data_extra.retain(|k, _| !taken.contains(&k.as_str()));
            let mut e = Event {
                timestamp_unixtime_ms: ts,
                event_id,
                source_message_id: smid,
                session_id,
                session_uuid,
                session_start_unixtime_ms: session_start,
                event_start_unixtime_ms: event_start,
                custom_attributes,
                location: location.map(Box::new),
                device_current_state: device_current_state.map(Box::new),
                is_goal_defined: goal,
                lifetime_value_change: ltv,
                lifetime_value_attribute_name: ltv_name,
                data_connection_type: connection,
                event_num,
                view_controller,
                is_main_thread: main_thread,
                canonical_name: canonical,
                event_system_notification_info: None,
                message_id,
                message_type,
                kind: Some(kind),
                data_extra,
                extra,
            };
            if official {
                e.message_id = None;
                e.message_type = None;
                if let Some(attrs) = &mut e.custom_attributes {
                    // EventData.custom_attributes values are `String`: scalars, not lists.
                    attrs
                        .values
                        .retain(|_, v| !matches!(v.kind, Some(value::Kind::ListValue(_))));
                }
                if matches!(e.kind, Some(event::Kind::SessionStart(_))) && e.session_id.is_none() {
                    e.session_id = Some(1);
                }
            }
            e
        })
        .boxed()
}

fn device_info(mode: Mode) -> BoxedStrategy<Option<DeviceInfo>> {
    let s = move || opt_text(mode);
    let official = mode == Mode::Official;
    of((
        (
            s(),
            s(),
            s(),
            of(pick(&["iOS", "Android", "web", "roku"])),
            s(),
            opt_long(),
            opt_long(),
        ),
        (
            s(),
            opt_long(),
            of(pick(&["authorized", "denied"])),
            opt_long(),
            opt_bool(),
            opt_bool(),
        ),
        (
            uuid_or_text(mode),
            s(),
            opt_bool(),
            extra(mode, DeviceInfo::NAMES),
        ),
    )
        .prop_map(move |(a, b, c)| {
            let (brand, product, device, platform, os_version, height, width) = a;
            let (locale_language, tz, att, att_ts, is_tablet, limit_ad_tracking) = b;
            let (ios_idfv, http_header_user_agent, is_dst, extra) = c;
            DeviceInfo {
                brand,
                product,
                device,
                platform,
                os_version,
                screen_height: height,
                screen_width: width,
                locale_language,
                timezone_offset: tz,
                att_authorization_status: att,
                att_timestamp_unixtime_ms: att_ts,
                is_tablet,
                limit_ad_tracking,
                ios_idfv,
                http_header_user_agent,
                is_dst,
                extra: if official { BTreeMap::new() } else { extra },
                ..Default::default()
            }
        }))
    .boxed()
}

fn consent(mode: Mode) -> BoxedStrategy<Consent> {
    (
        any::<bool>(),
        opt_text(mode),
        opt_long(),
        opt_text(mode),
        opt_text(mode),
        extra(mode, Consent::NAMES),
    )
        .prop_map(
            |(consented, document, ts, location, hardware_id, extra)| Consent {
                consented: Some(consented),
                document,
                timestamp_unixtime_ms: ts,
                location,
                hardware_id,
                regulation: None,
                extra,
            },
        )
        .boxed()
}

/// A batch, with `user_identities` in the shape `dialect` can carry.
pub fn batch(mode: Mode, dialect: Dialect) -> BoxedStrategy<Batch> {
    let official = mode == Mode::Official;
    let identities = match dialect {
        Dialect::Outbound => vec(user_identity(mode), 0..3).boxed(),
        // The inbound object form holds one identity per type, and only its value.
        Dialect::Inbound => btree_map(
            pick(&["customer_id", "email", "other", "other_id_2"]),
            text(mode),
            0..3,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(t, id)| UserIdentity {
                    identity_type: Some(t),
                    identity: Some(id),
                    ..Default::default()
                })
                .collect()
        })
        .boxed(),
    };
    let s = move || opt_text(mode);
    (
        (
            vec(event(mode), 0..4),
            s(),
            prop_oneof![Just(1), Just(2)],
            device_info(mode),
        ),
        (
            attributes(mode),
            of(vec(text(mode), 0..3)),
            of(identities),
            opt_long(),
            s(),
        ),
        (
            of(btree_map("[a-z]{1,5}", consent(mode), 0..2)),
            of(btree_map("[a-z]{1,5}", consent(mode), 0..2)),
            of((text(mode), of(any::<i64>()), location(mode))),
            of(btree_map("[0-9]{1,3}", raw_json(), 0..2)),
        ),
        (
            opt_long(),
            opt_long(),
            of((
                pick(&["native", "javascript", "partner", "server_to_server"]),
                s(),
                opt_bool(),
            )),
            of((text(mode), text(mode), text(mode))),
            s(),
            extra(mode, &[]),
        ),
    )
        .prop_map(move |(a, b, c, d)| {
            let (events, source_request_id, env, device_info) = a;
            let (user_attributes, deleted, identities, mpid, sdk_version) = b;
            let (gdpr, ccpa, plan, integration) = c;
            let (timestamp, batch_id, source, attribution, message_id, mut extra) = d;
            extra.retain(|k, _| {
                !Batch::NAMES.contains(&k.as_str())
                    && !["events", "environment", "user_identities"].contains(&k.as_str())
            });
            let mut b = Batch {
                events,
                source_request_id,
                environment: env,
                device_info: device_info.map(Box::new),
                user_attributes,
                deleted_user_attributes: deleted.map(|values| StringList { values }),
                user_identities: identities.map(|values| Box::new(UserIdentities { values })),
                mpid,
                sdk_version,
                // The official schema has `gdpr` as one consent, where mParticle's docs and SDKs
                // have an object of purposes: the documented shape is generated leniently only.
                consent_state: (!official)
                    .then(|| ConsentState {
                        gdpr: Some(ConsentPurposes {
                            values: gdpr.unwrap_or_default(),
                        }),
                        ccpa: if official {
                            None
                        } else {
                            ccpa.map(|values| ConsentPurposes { values })
                        },
                        extra: BTreeMap::new(),
                    })
                    .map(Box::new),
                context: plan
                    .map(|(plan_id, version, location)| BatchContext {
                        data_plan: Some(DataPlan {
                            plan_id: Some(plan_id),
                            plan_version: version,
                            extra: BTreeMap::new(),
                        }),
                        location: if official { None } else { location },
                        extra: BTreeMap::new(),
                    })
                    .map(Box::new),
                integration_attributes: integration.map(|m| NestedAttributes {
                    values: m
                        .into_iter()
                        .map(|(k, raw)| {
                            let json = format!("{{\"setting\":{raw}}}");
                            (
                                k,
                                Value {
                                    kind: Some(value::Kind::Json(json)),
                                },
                            )
                        })
                        .collect(),
                }),
                timestamp_unixtime_ms: timestamp,
                batch_id,
                source_info: source
                    .map(|(channel, partner, historical)| SourceInfo {
                        channel: Some(channel),
                        partner,
                        is_historical: historical,
                        ..Default::default()
                    })
                    .map(Box::new),
                attribution_info: attribution
                    .map(|(sp, publisher, campaign)| AttributionInfo {
                        service_provider: Some(sp),
                        publisher: Some(publisher),
                        campaign: Some(campaign),
                        extra: BTreeMap::new(),
                    })
                    .map(Box::new),
                message_id,
                extra,
                ..Default::default()
            };
            if official {
                // Outbound-only fields and integration settings that are not strings are not
                // part of the official inbound schema.
                b.message_id = None;
                b.integration_attributes = None;
            }
            b
        })
        .boxed()
}
