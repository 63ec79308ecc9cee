//! The `forwarder` command: the agent daemon and the control CLI.

use std::process::ExitCode;

use clap::Parser as _;
use forwarder::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // A malformed argument is an error like any other: exit code 1.
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Command::Agent { config } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                // Plain text for journald and log files; colours only on a terminal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            match forwarder::agent::main(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", forwarder::agent::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match forwarder::config::load(config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            forwarder::cli::completions(*shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match forwarder::cli::man(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        _ => forwarder::cli::control(&cli),
    }
}
