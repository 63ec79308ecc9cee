//! `cargo xtask bench`: runs the benchmarks and writes their tables into BENCHMARKS.md.
//! Speed is reported here, never asserted in tests: the machines are shared and noisy.

use std::{
    fmt::Write as _,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub fn run() -> Result<ExitCode> {
    if !crate::is_root() {
        bail!("cargo xtask bench must run as root: it loads XDP programs and creates namespaces");
    }
    crate::setup::run()?;
    let root = crate::workspace_root();
    let output = Command::new("cargo")
        .current_dir(&root)
        .args([
            "bench",
            "--package",
            "forwarder-tests",
            "--bench",
            "testrun",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("spawning cargo bench")?;
    if !output.status.success() {
        bail!("cargo bench failed ({})", output.status);
    }
    let table = String::from_utf8(output.stdout).context("bench output is not UTF-8")?;
    let mut doc = String::from("# Benchmarks\n\n");
    writeln!(
        doc,
        "Written by `cargo xtask bench`; rerun it to refresh. Machine: {}.\n",
        machine()
    )?;
    doc.push_str("## XDP fast paths (BPF_PROG_TEST_RUN)\n\n");
    doc.push_str(&table);
    std::fs::write(root.join("BENCHMARKS.md"), &doc).context("writing BENCHMARKS.md")?;
    print!("{doc}");
    Ok(ExitCode::SUCCESS)
}

fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.unwrap_or_default())
}
