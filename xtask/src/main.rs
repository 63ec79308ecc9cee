//! Project tasks: `setup` (toolchain and packages), `test` (every check and test), `demo`.
//! Run them as `cargo xtask <task>` from anywhere in the workspace.

mod bench;
mod fuzz;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "forwarder project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build, test and demo forwarder (idempotent).
    Setup,
    /// Run setup, formatting and lint checks, and every test; needs root.
    Test,
    /// Show the gateway working in network namespaces; needs root.
    Demo,
    /// Run the benchmarks and write BENCHMARKS.md; needs root.
    Bench {
        /// Only this part (testrun, throughput, controlplane, failover, routescale,
        /// bgpscale): its section of BENCHMARKS.md is replaced, the others are kept.
        #[arg(long)]
        only: Option<bench::Part>,
        /// One round of each part with short trials: a smoke run of the benches.
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz the BGP message reader, a BGP session, the config loader and control requests
    /// (cargo-fuzz, nightly); crashes fail the run.
    Fuzz {
        /// Minutes of wall time per target (on every CPU).
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Only these targets (bgp_message, bgp_session, config, control).
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test => test::run(),
        Task::Demo => test::demo(),
        Task::Bench { only, quick } => bench::run(only, quick),
        Task::Fuzz { minutes, targets } => fuzz::run(minutes, &targets),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
