pub fn run(_s: u64) -> anyhow::Result<()> {
    Ok(())
}
