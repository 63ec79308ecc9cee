//! `cargo xtask test`: setup, then every check and every test, every run. Ends with one line
//! `N passed, N failed` (lint steps count as one check each, tests one each) and a non-zero
//! exit on any failure.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{self, EBPF_TOOLCHAIN};

const ROOT_NEEDED: &str = "must run as root: the tests load XDP programs and BPF maps \
     (CAP_BPF, CAP_NET_ADMIN), create network namespaces and veth pairs (CAP_SYS_ADMIN) and \
     start BIRD/FRR/GoBGP inside them; setup installs Debian packages. Run `sudo cargo xtask \
     test` (CI runs it as root)";

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
    /// What each failed test printed (its panic or `Error:` last), repeated at the end so
    /// that the tail of a CI log says why, not only which.
    failure_output: Vec<(String, Vec<String>)>,
}

/// Lines of a failed test's output repeated in the summary (its last ones: the error).
const FAILURE_TAIL: usize = 60;
/// Failed tests whose output the summary repeats.
const FAILURE_OUTPUTS: usize = 3;

/// Picks the failed tests' sections out of libtest's output: `---- name stdout ----` up to
/// the next section, `failures:`/`successes:` or the `test result:` line. With
/// `--show-output` passing tests have sections too; only those named `... FAILED` before
/// are kept.
#[derive(Default)]
struct FailureSections {
    current: Option<(String, Vec<String>)>,
}

impl FailureSections {
    /// Feeds one line; returns a finished section of a failed test.
    fn line(&mut self, line: &str, failed: &[String]) -> Option<(String, Vec<String>)> {
        let header = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"));
        let ends = header.is_some()
            || line == "failures:"
            || line == "successes:"
            || line.starts_with("test result: ");
        if !ends {
            if let Some((_, lines)) = &mut self.current {
                lines.push(line.to_owned());
            }
            return None;
        }
        let done = self.current.take();
        if let Some(name) = header
            && failed.iter().any(|f| f == name)
        {
            self.current = Some((name.to_owned(), Vec::new()));
        }
        done
    }
}

impl Tally {
    fn check(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_owned());
        }
    }
}

pub fn run() -> Result<ExitCode> {
    if !crate::is_root() {
        bail!("cargo xtask test {ROOT_NEEDED}");
    }
    let started = Instant::now();
    setup::run()?;
    let root = crate::workspace_root();
    let mut tally = Tally::default();

    step(
        &mut tally,
        "cargo fmt --check",
        cargo(&root, &["fmt", "--all", "--", "--check"]),
    );
    step(
        &mut tally,
        "clippy (workspace)",
        cargo(
            &root,
            &[
                "clippy",
                "--workspace",
                "--exclude",
                "forwarder-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    );
    for package in ["forwarder-ebpf", "forwarder-test-ebpf"] {
        let name = format!("clippy ({package}, bpfel-unknown-none)");
        step(&mut tally, &name, ebpf_clippy(&root, package));
    }

    cargo_test(&mut tally, &root)?;

    println!();
    println!("xtask test: {:.0} s", started.elapsed().as_secs_f64());
    for (name, lines) in tally.failure_output.iter().take(FAILURE_OUTPUTS) {
        let skip = lines.len().saturating_sub(FAILURE_TAIL);
        println!(
            "---- {name}: the last {} lines it printed ----",
            lines.len() - skip
        );
        for line in &lines[skip..] {
            println!("{line}");
        }
    }
    for failure in &tally.failures {
        println!("FAILED: {failure}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Clippy for an eBPF crate on its own target, as aya-build compiles it.
fn ebpf_clippy(root: &std::path::Path, package: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root).args([
        "run",
        EBPF_TOOLCHAIN,
        "cargo",
        "clippy",
        "--package",
        package,
    ]);
    cmd.args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ]);
    cmd.args(["--", "-D", "warnings"]);
    cmd
}

fn cargo(root: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(args);
    cmd
}

fn step(tally: &mut Tally, name: &str, mut cmd: Command) {
    println!("==> {name}");
    let ok = cmd.status().is_ok_and(|s| s.success());
    println!("==> {name}: {}", if ok { "ok" } else { "FAILED" });
    tally.check(name, ok);
}

/// Runs every test of the workspace (unit, BPF_PROG_TEST_RUN, namespace integration), echoing
/// libtest's output and adding up its `test result:` lines.
fn cargo_test(tally: &mut Tally, root: &std::path::Path) -> Result<()> {
    println!("==> cargo test (unit, BPF_PROG_TEST_RUN, namespace integration)");
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--",
            "--show-output",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut counted = 0u64;
    let mut sections = FailureSections::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(section) = sections.line(&line, &tally.failures) {
            tally.failure_output.push(section);
        }
        if let Some(rest) = line.strip_prefix("test ") {
            // `test name ... FAILED` lines name the failures for the summary.
            if let Some(name) = rest.strip_suffix(" ... FAILED") {
                tally.failures.push(name.to_owned());
            }
        }
        if let Some((passed, failed)) = parse_result(&line) {
            tally.passed += passed;
            tally.failed += failed;
            counted += passed + failed;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && tally.failed == 0 {
        // A build failure runs no test at all: count it, so it cannot read as success.
        tally.check("cargo test (build)", false);
    }
    if counted == 0 {
        tally.check("cargo test ran no test", false);
    }
    Ok(())
}

/// `test result: ok. 3 passed; 0 failed; 0 ignored; ...` → (3, 0)
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut passed = None;
    let mut failed = None;
    for part in counts.split("; ") {
        let mut words = part.split_whitespace();
        let n = words.next()?.parse::<u64>().ok();
        match words.next() {
            Some("passed") => passed = n,
            Some("failed") => failed = n,
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// The gateway in network namespaces: customer router on VLAN 100, the agent and its XDP
/// data plane, a kernel-VXLAN VPC; status, routes, ping, TCP, counters.
pub fn demo() -> Result<ExitCode> {
    if !crate::is_root() {
        bail!("cargo xtask demo {ROOT_NEEDED}");
    }
    setup::run()?;
    let root = crate::workspace_root();
    let built = Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--package",
            "forwarder",
            "--package",
            "forwarder-tests",
            "--bins",
        ])
        .status()
        .context("spawning cargo build")?;
    if !built.success() {
        bail!("building forwarder failed");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let ok = Command::new(target.join("debug").join("demo"))
        .arg(target.join("debug").join("forwarder"))
        .status()
        .context("running the demo")?
        .success();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::{FailureSections, parse_result};

    #[test]
    fn keeps_only_the_failed_tests_output() {
        let out = "test a ... ok\ntest b ... FAILED\n\nsuccesses:\n\n---- a stdout ----\n\
                   a says hi\n\nsuccesses:\n    a\n\nfailures:\n\n---- b stdout ----\n\
                   b went on\nError: b broke\n\nfailures:\n    b\n\n\
                   test result: FAILED. 1 passed; 1 failed; 0 ignored";
        let failed = vec!["b".to_owned()];
        let mut sections = FailureSections::default();
        let found: Vec<_> = out
            .lines()
            .filter_map(|l| sections.line(l, &failed))
            .collect();
        assert_eq!(
            found,
            vec![(
                "b".to_owned(),
                vec![
                    "b went on".to_owned(),
                    "Error: b broke".to_owned(),
                    String::new()
                ]
            )]
        );
    }

    #[test]
    fn parses_libtest_summary_lines() {
        assert_eq!(
            parse_result(
                "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((3, 0))
        );
        assert_eq!(
            parse_result(
                "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some((1, 2))
        );
        assert_eq!(parse_result("running 3 tests"), None);
    }
}
