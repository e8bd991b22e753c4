fn main() -> anyhow::Result<()> {
    println!("mpconnect {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
