//! Field tables: which JSON member goes to which proto field, and how it is read and written.
//! `Long` fields are mParticle's int64s (strings in the outbound dialect); `Int` are small counts.

use super::read::{
    Any, Attrs, Bool, Int, List, Long, Msg, Nested, Num, Str, Strings, fields, list_of,
};
use crate::v1::*;

fields!(Batch, +extra {
    source_request_id: Str,
    schema_version: Int,
    device_info: Msg<DeviceInfo>,
    application_info: Msg<ApplicationInfo>,
    user_attributes: Attrs,
    deleted_user_attributes: Strings,
    partner_identities: Attrs,
    partner_identity: Str,
    integration_attributes: Nested,
    consent_state: Msg<ConsentState>,
    context: Msg<BatchContext>,
    ip: Str,
    mpid: Long,
    mp_deviceid: Str,
    source_info: Msg<SourceInfo>,
    attribution_info: Msg<AttributionInfo>,
    timestamp_unixtime_ms: Long,
    batch_id: Long,
    api_key: Str,
    api_keys: Strings,
    sdk_version: Str,
    job_id: Long,
    origin_mpid: Long,
    message_type: Str,
    message_id: Str,
    unique_id: Str,
    system_notifications: Any,
});

fields!(UserIdentity, +extra {
    identity_type: Str,
    identity: Str,
    timestamp_unixtime_ms: Long,
    created_this_batch: Bool,
});

fields!(DeviceInfo, +extra {
    brand: Str,
    product: Str,
    device: Str,
    android_uuid: Str,
    device_manufacturer: Str,
    platform: Str,
    os_version: Str,
    device_model: Str,
    screen_height: Int,
    screen_width: Int,
    screen_dpi: Int,
    device_country: Str,
    locale_language: Str,
    locale_country: Str,
    network_country: Str,
    network_carrier: Str,
    network_code: Str,
    network_mobile_country_code: Str,
    timezone_offset: Int,
    build_identifier: Str,
    http_header_user_agent: Str,
    ios_advertising_id: Str,
    att_authorization_status: Str,
    att_timestamp_unixtime_ms: Long,
    push_token: Str,
    cpu_architecture: Str,
    is_tablet: Bool,
    push_notification_sound_enabled: Bool,
    push_notification_vibrate_enabled: Bool,
    radio_access_technology: Str,
    supports_telephony: Bool,
    has_nfc: Bool,
    bluetooth_enabled: Bool,
    bluetooth_version: Str,
    ios_idfv: Str,
    android_advertising_id: Str,
    build_version_release: Str,
    limit_ad_tracking: Bool,
    amp_id: Str,
    is_dst: Bool,
    roku_advertising_id: Str,
    roku_publisher_id: Str,
    microsoft_advertising_id: Str,
    microsoft_publisher_id: Str,
    fire_advertising_id: Str,
});

fields!(ApplicationInfo, +extra {
    application_name: Str,
    application_version: Str,
    application_build_number: Str,
    install_referrer: Str,
    package: Str,
    os: Str,
    apple_search_ads_attributes: Nested,
});

fields!(ConsentState, +extra {
    gdpr: super::batch::Purposes,
    ccpa: super::batch::Purposes,
});

fields!(Consent, +extra {
    consented: Bool,
    document: Str,
    timestamp_unixtime_ms: Long,
    location: Str,
    hardware_id: Str,
    regulation: Str,
});

fields!(BatchContext, +extra {
    data_plan: Msg<DataPlan>,
    location: Msg<Location>,
});

fields!(DataPlan, +extra {
    plan_id: Str,
    plan_version: Int,
});

fields!(SourceInfo, +extra {
    channel: Str,
    partner: Str,
    replay_request_id: Str,
    replay_job_id: Str,
    is_historical: Bool,
});

fields!(AttributionInfo, +extra {
    service_provider: Str,
    publisher: Str,
    campaign: Str,
});

fields!(Location, +extra {
    latitude: Num,
    longitude: Num,
    accuracy: Num,
    country_code: Str,
    region_code: Str,
    city_name: Str,
    postal_code: Str,
    dma_code: Str,
    location_source: Str,
});

fields!(DeviceCurrentState, +extra {
    time_since_start_ms: Long,
    battery_level: Num,
    data_connection_type: Str,
    data_connection_type_detail: Str,
    gps_state: Bool,
    total_system_memory_usage_bytes: Long,
    disk_space_free_bytes: Long,
    external_disk_space_free_bytes: Long,
    cpu: Str,
    system_memory_available_bytes: Num,
    system_memory_low: Bool,
    system_memory_threshold_bytes: Num,
    application_memory_available_bytes: Num,
    application_memory_max_bytes: Num,
    application_memory_total_bytes: Num,
    device_orientation: Str,
    status_bar_orientation: Str,
});

// The common `data` members of every event; a misfit goes to `data_extra`.
fields!(Event {
    timestamp_unixtime_ms: Long,
    event_id: Long,
    source_message_id: Str,
    session_id: Long,
    session_uuid: Str,
    session_start_unixtime_ms: Long,
    event_start_unixtime_ms: Long,
    custom_attributes: Attrs,
    location: Msg<Location>,
    device_current_state: Msg<DeviceCurrentState>,
    is_goal_defined: Bool,
    lifetime_value_change: Num,
    lifetime_value_attribute_name: Str,
    data_connection_type: Str,
    event_num: Long,
    view_controller: Str,
    is_main_thread: Bool,
    canonical_name: Str,
    event_system_notification_info: Any,
    message_id: Str,
    message_type: Str,
});

// Per-type `data` members. They have no `extra` of their own: the event's `data_extra` holds
// what they do not model.
fields!(SessionStart {});
fields!(FirstRun {});
fields!(PreAttribution {});
fields!(Uninstall {});

fields!(SessionEnd {
    session_duration_ms: Long,
});

fields!(ScreenView {
    screen_name: Str,
    activity_type: Str,
    custom_flags: Attrs,
});

fields!(CustomEvent {
    event_name: Str,
    custom_event_type: Str,
    custom_flags: Attrs,
});

fields!(CrashReport {
    class_name: Str,
    breadcrumbs: Any,
    severity: Str,
    message: Str,
    stack_trace: Str,
    exception_handled: Bool,
    topmost_context: Str,
    pl_crash_report_file_base64: Str,
    ios_image_base_address: Long,
    ios_image_size: Long,
    session_number: Int,
});

fields!(OptOut { is_opted_out: Bool });

fields!(PushRegistration {
    register: Bool,
    registration_token: Str,
});

fields!(ApplicationStateTransition {
    application_transition_type: Str,
    is_first_run: Bool,
    is_upgrade: Bool,
    successfully_closed: Bool,
    push_notification_payload: Str,
    launch_referral: Str,
});

fields!(PushMessage {
    push_message_type: Str,
    push_message_token: Str,
    message: Str,
    network: Str,
    push_notification_payload: Str,
    application_state: Str,
    action_identifier: Str,
    push_message_behavior: Any,
});

fields!(NetworkPerformance {
    http_verb: Str,
    url: Str,
    time_elapsed: Long,
    bytes_in: Long,
    bytes_out: Long,
    response_code: Int,
    data: Str,
});

fields!(Breadcrumb {
    label: Str,
    session_number: Int,
});

fields!(Profile {
    previous_mpid: Long,
    current_mpid: Long,
    profile_event_type: Str,
});

fields!(PushReaction {
    push_message_token: Str,
    action_identifier: Str,
    action_name: Str,
    action_type: Str,
});

fields!(CommerceEvent {
    product_action: Msg<ProductAction>,
    promotion_action: Msg<PromotionAction>,
    product_impressions: List<ProductImpressions>,
    shopping_cart: Msg<ShoppingCart>,
    currency_code: Str,
    screen_name: Str,
    is_non_interactive: Bool,
    event_name: Str,
    custom_event_type: Str,
    custom_flags: Attrs,
});

fields!(ProductAction, +extra {
    action: Str,
    checkout_step: Int,
    checkout_options: Str,
    product_action_list: Str,
    product_list_source: Str,
    transaction_id: Str,
    affiliation: Str,
    total_amount: Num,
    tax_amount: Num,
    shipping_amount: Num,
    coupon_code: Str,
    products: List<Products>,
});

fields!(Product, +extra {
    id: Str,
    name: Str,
    brand: Str,
    category: Str,
    variant: Str,
    position: Int,
    price: Num,
    quantity: Num,
    coupon_code: Str,
    added_to_cart_time_ms: Long,
    total_product_amount: Num,
    custom_attributes: Attrs,
});

fields!(PromotionAction, +extra {
    action: Str,
    promotions: List<Promotions>,
});

fields!(Promotion, +extra {
    id: Str,
    name: Str,
    creative: Str,
    position: Str,
});

fields!(ProductImpression, +extra {
    product_impression_list: Str,
    products: List<Products>,
});

fields!(ShoppingCart, +extra {
    products: List<Products>,
});

fields!(UserAttributeChange {
    user_attribute_name: Str,
    new: Any,
    old: Any,
    deleted: Bool,
    is_new_attribute: Bool,
});

fields!(UserIdentityChange {
    new: Msg<UserIdentity>,
    old: Msg<UserIdentity>,
});

list_of! {
    Products => Product,
    Promotions => Promotion,
    ProductImpressions => ProductImpression,
}
