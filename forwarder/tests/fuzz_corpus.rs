//! Every input of the fuzz corpora (`fuzz/corpus/TARGET/`: the committed seeds and whatever
//! `cargo xtask fuzz` found worth keeping) replayed through the fuzz entry points, so a
//! crash fixed once stays fixed without nightly or sanitizers.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};

fn replay(target: &str, run: fn(&[u8])) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let data = std::fs::read(&path)?;
        let outcome = std::panic::catch_unwind(|| run(&data));
        ensure!(outcome.is_ok(), "{target}: {} panics", path.display());
        inputs += 1;
    }
    ensure!(inputs > 0, "{target}: empty corpus in {}", dir.display());
    println!("{target}: {inputs} inputs replayed");
    Ok(())
}

#[test]
fn bgp_message_corpus() -> Result<()> {
    replay("bgp_message", forwarder::fuzz::bgp_message)
}

#[test]
fn bgp_session_corpus() -> Result<()> {
    replay("bgp_session", forwarder::fuzz::bgp_session)
}

#[test]
fn config_corpus() -> Result<()> {
    replay("config", forwarder::fuzz::config)
}

#[test]
fn control_corpus() -> Result<()> {
    replay("control", forwarder::fuzz::control)
}
