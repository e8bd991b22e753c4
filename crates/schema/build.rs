fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let proto_root = "../../proto";
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Ordered maps: encoded JSON is deterministic (stable files, diffs and tests).
    config.btree_map(["."]);
    config.compile_protos(
        &[format!("{proto_root}/mpconnect/v1/event.proto")],
        &[proto_root],
    )?;
    println!("cargo:rerun-if-changed={proto_root}");
    Ok(())
}
