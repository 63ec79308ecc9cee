//! The `forwarder` command: the agent daemon and the control CLI.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Border gateway for hosted and dedicated direct connections"
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
