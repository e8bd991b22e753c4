fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script is single-threaded; prost-build and tonic read PROTOC from env.
    unsafe { std::env::set_var("PROTOC", &protoc) };
    let proto_root = "../../proto";
    let mut config = prost_build::Config::new();
    // Ordered maps: encoded JSON is deterministic (stable files, diffs and tests).
    config.btree_map(["."]);
    // The largest optional parts go behind a pointer: an `Event` was 1.5 KB, most of it empty
    // room for a commerce event, a device state and a location, zeroed, moved and dropped for
    // every event (a pass-through event carries only its id).
    for boxed in [
        ".mpconnect.v1.Batch.device_info",
        ".mpconnect.v1.Batch.application_info",
        ".mpconnect.v1.Batch.user_identities",
        ".mpconnect.v1.Batch.consent_state",
        ".mpconnect.v1.Batch.context",
        ".mpconnect.v1.Batch.source_info",
        ".mpconnect.v1.Batch.attribution_info",
        ".mpconnect.v1.Event.device_current_state",
        ".mpconnect.v1.Event.location",
        ".mpconnect.v1.Event.kind.commerce_event",
        ".mpconnect.v1.Event.kind.crash_report",
        ".mpconnect.v1.Event.kind.push_message",
        ".mpconnect.v1.Event.kind.user_identity_change",
        ".mpconnect.v1.Event.kind.network_performance",
    ] {
        config.boxed(boxed);
    }
    // The sender's JSON a pass-through batch carries is decoded as a view of the queue
    // message's buffer, not copied out of it.
    config.bytes([".mpconnect.v1.Batch.inbound_json"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            format!("{proto_root}/mpconnect/v1/event.proto"),
            format!("{proto_root}/mpconnect/v1/delivery.proto"),
        ],
        &[proto_root.to_owned()],
    )?;
    println!("cargo:rerun-if-changed={proto_root}");
    Ok(())
}
