fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script is single-threaded; prost-build and tonic read PROTOC from env.
    unsafe { std::env::set_var("PROTOC", &protoc) };
    let proto_root = "../../proto";
    let mut config = prost_build::Config::new();
    // Ordered maps: encoded JSON is deterministic (stable files, diffs and tests).
    config.btree_map(["."]);
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
