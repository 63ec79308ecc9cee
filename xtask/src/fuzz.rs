//! `cargo xtask fuzz [--minutes N] [TARGET ...]`: runs the cargo-fuzz targets of `fuzz/`
//! (nightly, AddressSanitizer), each for N minutes of wall time on every CPU (libFuzzer's
//! fork mode), and reports the CPU minutes each got and what crashed. New interesting inputs
//! go to `target/fuzz-corpus/TARGET` (the committed seeds in `fuzz/corpus/TARGET` are read,
//! never written); crashes land in `fuzz/artifacts/TARGET/` and fail the run. Installs
//! cargo-fuzz if it is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{EBPF_TOOLCHAIN, checked};

pub const TARGETS: [&str; 4] = ["bgp_message", "bgp_session", "config", "control"];

/// CPU time of reaped children (and what they reaped) so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid starting value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz (a few minutes, once)");
    checked(
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "installing cargo-fuzz failed",
    )
}

fn crashes(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        ["crash-", "leak-", "timeout-", "oom-"]
                            .iter()
                            .any(|k| n.starts_with(k))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(minutes: f64, only: &[String]) -> Result<ExitCode> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t:?}; there are {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    ensure_cargo_fuzz()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let mut report = Vec::new();
    let mut failed = false;
    println!("==> building the fuzz targets (nightly, AddressSanitizer)");
    checked(
        Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["fuzz", "build", "--fuzz-dir", "fuzz"]),
        "building the fuzz targets failed",
    )?;
    let bin_dir = root.join("fuzz/target/x86_64-unknown-linux-gnu/release");
    for target in targets {
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = root.join("fuzz/corpus").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        let before = crashes(&artifacts).len();
        println!("==> fuzz {target}: {seconds} s on {cpus} CPU(s)");
        // Only the fuzzer runs from here: the CPU time it reaps is the fuzzing itself.
        let cpu_before = children_cpu();
        let started = Instant::now();
        let status = Command::new(bin_dir.join(target))
            .current_dir(&root)
            .arg(&scratch)
            .arg(&seeds)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-fork={cpus}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .status()
            .with_context(|| format!("running the {target} fuzzer"))?;
        let cpu = children_cpu().saturating_sub(cpu_before);
        let found = crashes(&artifacts);
        let new = found.len().saturating_sub(before);
        failed |= !status.success() || new > 0;
        report.push(format!(
            "{target}: {:.1} CPU-minutes in {:.1} min, {} corpus inputs, {} crash(es) found{}",
            cpu.as_secs_f64() / 60.0,
            started.elapsed().as_secs_f64() / 60.0,
            std::fs::read_dir(&scratch).map_or(0, |d| d.count()),
            new,
            if status.success() {
                ""
            } else {
                " (the fuzzer failed)"
            }
        ));
        for crash in found.iter().skip(before) {
            report.push(format!("  {}", crash.display()));
        }
    }
    println!("\nfuzz summary:");
    for line in &report {
        println!("  {line}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
