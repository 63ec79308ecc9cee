//! `cargo xtask bench`: runs the benchmarks and writes their tables into BENCHMARKS.md.
//! Speed is reported here, never asserted in tests: the machines are shared and noisy.
//!
//! Six parts: the XDP fast paths through BPF_PROG_TEST_RUN (`tests/benches/testrun.rs`);
//! zero-loss throughput and CPU per packet against a kernel-parts reference gateway
//! (`tests/benches/throughput.rs`); the control plane with many static VIFs
//! (`tests/benches/controlplane.rs`), which runs the agent built from the working tree against
//! a baseline agent built from [`BASELINE_REV`]; failover between two connections
//! (`tests/benches/failover.rs`); route scale from the config file
//! (`tests/benches/routescale.rs`); BGP ingest against a BIRD receiver
//! (`tests/benches/bgpscale.rs`). `--only PART` runs one and replaces its section of
//! BENCHMARKS.md, keeping the others; `--quick` runs each part once, with short trials (a
//! smoke run: its figures are not for BENCHMARKS.md's committed copy).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The agent before the owner-loop/netlink reshape.
const BASELINE_REV: &str = "29ae350";

/// Environment variables of the control-plane bench that change what it measures; shown with
/// the command line in BENCHMARKS.md when set.
const BENCH_KNOBS: [&str; 6] = [
    "FORWARDER_BENCH_ROUNDS",
    "FORWARDER_BENCH_VIFS",
    "FORWARDER_BENCH_EVENTS",
    "FORWARDER_BENCH_IDLE_SECS",
    "FORWARDER_BENCH_EVENT_TIMEOUT_SECS",
    "FORWARDER_BENCH_KERNEL_NEIGH_GC",
];

/// The parts of the benchmark, in BENCHMARKS.md's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Testrun,
    Throughput,
    Controlplane,
    Failover,
    Routescale,
    Bgpscale,
}

impl Part {
    /// The start of the part's heading in BENCHMARKS.md.
    fn heading(self) -> &'static str {
        match self {
            Self::Testrun => "## XDP fast paths",
            Self::Throughput => "## Throughput",
            Self::Controlplane => "## Control plane",
            Self::Failover => "## Failover",
            Self::Routescale => "## Route scale",
            Self::Bgpscale => "## BGP ingest",
        }
    }
}

pub fn run(only: Option<Part>, quick: bool) -> Result<ExitCode> {
    if !crate::is_root() {
        bail!("cargo xtask bench must run as root: it loads XDP programs and creates namespaces");
    }
    crate::setup::run()?;
    let root = crate::workspace_root();
    let target = target_dir(&root);
    let parts = match only {
        Some(p) => vec![p],
        None => vec![
            Part::Testrun,
            Part::Throughput,
            Part::Controlplane,
            Part::Failover,
            Part::Routescale,
            Part::Bgpscale,
        ],
    };
    if quick {
        // Read by every bench: one round, short trials.
        // SAFETY: xtask is single-threaded here; nothing reads the environment concurrently.
        unsafe { std::env::set_var("FORWARDER_BENCH_QUICK", "1") };
        for knob in [
            "FORWARDER_BENCH_ROUNDS",
            "FORWARDER_BENCH_FAILOVER_ROUNDS",
            "FORWARDER_BENCH_SCALE_ROUNDS",
        ] {
            if std::env::var_os(knob).is_none() {
                // SAFETY: as above.
                unsafe { std::env::set_var(knob, "1") };
            }
        }
    }
    let path = root.join("BENCHMARKS.md");
    // Each part's section replaces its old one as soon as the part is done, so a run stopped
    // or failed half-way keeps what it measured (and the file stays whole). A full run
    // rewrites the header too.
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut doc = match (only, old.find("\n## ")) {
        (Some(_), _) if !old.is_empty() => old,
        (_, sections) => {
            let mut doc = String::from("# Benchmarks\n\n");
            writeln!(
                doc,
                "Written by `cargo xtask bench` (`--only PART` refreshes one section); rerun it \
                 to refresh. Machine: {}.",
                machine()
            )?;
            if let Some(at) = sections {
                doc.push_str(&old[at..]);
            } else {
                doc.push('\n');
            }
            doc
        }
    };
    let mut all_ok = true;
    for part in parts {
        let (section, ok) = match part {
            Part::Testrun => {
                let table = cargo_bench(&root, "testrun", &[])?;
                (
                    format!(
                        "{}\n\n{table}\nThe working tree at {}. Machine: {}. Date: {}. Command, from \
                         the workspace root:\n\n```\ncargo bench -p forwarder-tests --bench \
                         testrun\n```\n",
                        "## XDP fast paths (BPF_PROG_TEST_RUN)",
                        revision(&root),
                        machine(),
                        today()
                    ),
                    true,
                )
            }
            Part::Controlplane => control_plane(&root, &target)?,
            Part::Failover => agent_bench(
                &root,
                &target,
                "failover",
                "FORWARDER_BENCH_FAILOVER_ROUNDS",
                "## Failover: two connections, one customer",
            )?,
            Part::Routescale => agent_bench(
                &root,
                &target,
                "routescale",
                "FORWARDER_BENCH_SCALE_ROUNDS",
                "## Route scale: static routes from the config file",
            )?,
            Part::Throughput => agent_bench(
                &root,
                &target,
                "throughput",
                "FORWARDER_BENCH_THROUGHPUT_ROUNDS",
                "## Throughput: forwarder against the kernel's own parts",
            )?,
            Part::Bgpscale => agent_bench(
                &root,
                &target,
                "bgpscale",
                "FORWARDER_BENCH_BGP_ROUNDS",
                "## BGP ingest: one BIRD sender, the agent against a BIRD receiver",
            )?,
        };
        all_ok &= ok;
        doc = match section.strip_prefix(KEEP) {
            Some(why) => keep_section(&doc, part.heading(), why),
            None => replace_section(&doc, part.heading(), &section),
        };
        std::fs::write(&path, &doc).context("writing BENCHMARKS.md")?;
    }
    print!("{doc}");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `doc` with the section whose heading starts with `heading` kept, and a line saying it was
/// not measured again today, and why.
fn keep_section(doc: &str, heading: &str, why: &str) -> String {
    let Some(start) = doc.find(heading) else {
        return doc.to_owned();
    };
    let end = doc[start + 3..]
        .find("\n## ")
        .map_or(doc.len(), |i| start + 3 + i + 1);
    let section = doc[start..end].trim_end();
    // An earlier note of this kind goes: only the newest says what happened.
    let section = section
        .split("\n\n> Not measured again on ")
        .next()
        .unwrap_or(section);
    let note = format!(
        "{section}\n\n> Not measured again on {} ({}): {why}. The figures above are from the date \
         they give.\n",
        today(),
        machine()
    );
    let rest = &doc[end..];
    let sep = if rest.is_empty() { "" } else { "\n" };
    format!("{}{note}{sep}{rest}", &doc[..start])
}

/// `doc` with the section whose heading starts with `heading` (up to the next `## `)
/// replaced by `section`, or `section` appended.
fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    let start = doc
        .match_indices("\n## ")
        .map(|(i, _)| i + 1)
        .find(|i| doc[*i..].starts_with(heading));
    match start {
        Some(start) => {
            let end = doc[start + 3..]
                .find("\n## ")
                .map_or(doc.len(), |i| start + 3 + i + 1);
            let rest = &doc[end..];
            let sep = if rest.is_empty() { "\n" } else { "\n\n" };
            format!("{}{section}{sep}{rest}", &doc[..start])
        }
        None => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

/// `cargo build --release -p forwarder`: the agent under test.
fn build_agent(root: &Path) -> Result<()> {
    println!("==> building the agent under test (release)");
    checked(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "-p", "forwarder"]),
        "cargo build --release -p forwarder",
    )
}

/// Builds the agent and runs `bench` (of the tests crate) against it, with the rounds knob
/// `rounds_knob` passed on when set; its section (`heading` if it failed) and whether it ran.
fn agent_bench(
    root: &Path,
    target: &Path,
    bench: &str,
    rounds_knob: &str,
    heading: &str,
) -> Result<(String, bool)> {
    build_agent(root)?;
    let bin = target.join("release/forwarder");
    let mut line = vec!["FORWARDER_BIN=target/release/forwarder".to_owned()];
    for knob in [rounds_knob, "FORWARDER_BENCH_QUICK"] {
        if let Ok(value) = std::env::var(knob) {
            line.push(format!("{knob}={value}"));
        }
    }
    line.push(format!("cargo bench -p forwarder-tests --bench {bench}"));
    let (mut section, ok) = match cargo_bench(root, bench, &[("FORWARDER_BIN", bin)]) {
        Ok(text) => (text, true),
        Err(e) if e.is::<Unsupported>() => {
            // This machine cannot run it: the figures already there stay, marked as such.
            println!("==> {bench}: {e}; BENCHMARKS.md keeps the section it has");
            return Ok((KEEP.to_owned() + &format!("{e}"), true));
        }
        Err(e) => (
            format!(
                "{heading}\n\nThe bench failed: {}.\n",
                format!("{e:#}").replace('\n', " ")
            ),
            false,
        ),
    };
    writeln!(
        section,
        "\nThe working tree at {}. Machine: {}. Date: {}. Commands, from the workspace root:\n\n\
         ```\ncargo build --release -p forwarder\n{}\n```",
        revision(root),
        machine(),
        today(),
        line.join(" ")
    )?;
    Ok((section, ok))
}

/// Builds both agents, runs the control-plane bench and returns its BENCHMARKS.md section
/// (with the commands that produced it) and whether it ran.
fn control_plane(root: &Path, target: &Path) -> Result<(String, bool)> {
    let shown = |p: &Path| {
        p.strip_prefix(root)
            .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
    };
    let mut commands = Vec::new();
    let mut notes = Vec::new();

    build_agent(root)?;
    commands.push("cargo build --release -p forwarder".to_owned());
    let new_bin = target.join("release/forwarder");

    let baseline_src = target.join("bench-baseline-src");
    let baseline_target = target.join("bench-baseline");
    let baseline_bin = baseline_target.join("release/forwarder");
    commands.push(format!(
        "git worktree add --detach {} {BASELINE_REV}",
        shown(&baseline_src)
    ));
    commands.push(format!(
        "(cd {} && CARGO_TARGET_DIR={} cargo build --release -p forwarder)",
        shown(&baseline_src),
        shown(&baseline_target)
    ));
    let baseline = match build_baseline(root, &baseline_src, &baseline_target) {
        Ok(()) => Some(baseline_bin),
        Err(e) => {
            eprintln!("warning: the baseline ({BASELINE_REV}) could not be built: {e:#}");
            notes.push(format!(
                "The baseline ({BASELINE_REV}) could not be built, so only the new binary was \
                 measured: {}.",
                format!("{e:#}").replace('\n', " ")
            ));
            None
        }
    };

    let mut env = vec![("FORWARDER_BIN", new_bin.clone())];
    if let Some(bin) = &baseline {
        env.push(("FORWARDER_BASELINE_BIN", bin.clone()));
    }
    let mut line: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", shown(v)))
        .collect();
    for knob in BENCH_KNOBS {
        if let Ok(value) = std::env::var(knob) {
            line.push(format!("{knob}={value}"));
        }
    }
    line.push("cargo bench -p forwarder-tests --bench controlplane".to_owned());
    commands.push(line.join(" "));

    let (mut section, ok) = match cargo_bench(root, "controlplane", &env) {
        Ok(text) => (text, true),
        Err(e) => (
            format!(
                "## Control plane: static VIFs on one connection\n\nThe bench failed: {}.\n",
                format!("{e:#}").replace('\n', " ")
            ),
            false,
        ),
    };
    writeln!(
        section,
        "\nNew: the working tree at {}; baseline: {BASELINE_REV} (the agent before the \
         owner-loop/netlink reshape). Machine: {}. Date: {}.",
        revision(root),
        machine(),
        today()
    )?;
    for note in notes {
        writeln!(section, "\n{note}")?;
    }
    section.push_str("\nCommands, from the workspace root:\n\n```\n");
    for c in commands {
        section.push_str(&c);
        section.push('\n');
    }
    section.push_str("```\n");
    Ok((section, ok))
}

/// `git worktree add` of [`BASELINE_REV`] (reused when it is already there) and a release build
/// of the agent in it, with a target directory of its own.
fn build_baseline(root: &Path, src: &Path, target: &Path) -> Result<()> {
    let want = git(root, &["rev-parse", &format!("{BASELINE_REV}^{{commit}}")])?;
    if src.exists() {
        let have = git(src, &["rev-parse", "HEAD"])
            .with_context(|| format!("{} exists but is not a git worktree", src.display()))?;
        if have != want {
            bail!(
                "{} holds {have}, not {BASELINE_REV}; remove it (`git worktree remove --force {}`) \
                 and rerun",
                src.display(),
                src.display()
            );
        }
        println!("==> baseline worktree {} (reused)", src.display());
    } else {
        // A worktree whose directory was deleted is still registered until pruned.
        git(root, &["worktree", "prune"])?;
        let path = src.to_str().context("non-UTF-8 target directory")?;
        git(root, &["worktree", "add", "--detach", path, BASELINE_REV])?;
        println!("==> baseline worktree {} at {BASELINE_REV}", src.display());
    }
    println!("==> building the baseline agent ({BASELINE_REV}, release)");
    checked(
        Command::new("cargo")
            .current_dir(src)
            .env("CARGO_TARGET_DIR", target)
            .args(["build", "--release", "-p", "forwarder"]),
        "cargo build --release -p forwarder (baseline)",
    )
}

/// Runs one bench of the tests crate; its stdout (a Markdown table or section) is returned,
/// its stderr (progress) goes to ours.
/// A bench that says this machine cannot run it (exit code 3), rather than failing.
#[derive(Debug)]
struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A section that starts with this is not new: the old one stays, with the rest as the reason.
const KEEP: &str = "\u{0}keep:";

fn cargo_bench(root: &Path, bench: &str, env: &[(&str, PathBuf)]) -> Result<String> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["bench", "--package", "forwarder-tests", "--bench", bench])
        .stderr(Stdio::inherit());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd
        .output()
        .with_context(|| format!("spawning cargo bench --bench {bench}"))?;
    if output.status.code() == Some(3) {
        let why = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        return Err(Unsupported(why).into());
    }
    if !output.status.success() {
        bail!("cargo bench --bench {bench} failed ({})", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("{bench} output is not UTF-8"))
}

fn checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `git -C dir ARGS`, trimmed stdout; fails with git's stderr.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("spawning git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Cargo's target directory for this workspace: `CARGO_TARGET_DIR`, or `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `abc1234`, or `abc1234 with uncommitted changes`.
fn revision(root: &Path) -> String {
    let head = git(root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|_| "?".into());
    // --no-optional-locks: a status that refreshes the index would write it. BENCHMARKS.md
    // itself does not count: a run of one part after another has just rewritten it.
    let dirty = git(
        root,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)BENCHMARKS.md",
        ],
    )
    .is_ok_and(|s| !s.is_empty());
    if dirty {
        format!("{head} with uncommitted changes")
    } else {
        head
    }
}

/// Today's date (UTC), as `date -u +%F` prints it.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let doc =
            "# B\n\nintro\n\n## XDP fast paths (x)\n\nold a\n\n## Control plane: y\n\nold b\n";
        let new = replace_section(doc, "## XDP fast paths", "## XDP fast paths (x)\n\nnew a\n");
        assert_eq!(
            new,
            "# B\n\nintro\n\n## XDP fast paths (x)\n\nnew a\n\n## Control plane: y\n\nold b\n"
        );
        let new = replace_section(doc, "## Control plane", "## Control plane: z\n\nnew b");
        assert_eq!(
            new,
            "# B\n\nintro\n\n## XDP fast paths (x)\n\nold a\n\n## Control plane: z\n\nnew b\n"
        );
        let new = replace_section(doc, "## Failover", "## Failover: f\n\nc\n");
        assert!(new.ends_with("old b\n\n## Failover: f\n\nc\n"), "{new}");
    }
}
