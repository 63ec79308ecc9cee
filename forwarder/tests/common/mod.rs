//! The shared topology (tests crate) bound to this package's `forwarder` binary.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test file uses a different part"
)]

pub mod bgp;

use std::path::Path;

pub use forwarder_tests::topology::{
    Agent, IDC_HOST, Topology, VPC_HOST, parse_ping, sh, tcp_transfer, wait_for,
};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_forwarder"))
}

pub fn cli(socket: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    forwarder_tests::topology::cli(bin(), socket, args)
}

pub fn cli_json(socket: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    forwarder_tests::topology::cli_json(bin(), socket, args)
}
