//! `cargo xtask setup`: brings a fresh Debian 12 machine to the point where forwarder builds,
//! tests and demos. Each step checks first and changes nothing when its piece is present, so a
//! second run is a few quick queries.

use std::{
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The toolchain aya-build uses for the eBPF crate (needs `-Z build-std=core`).
pub const EBPF_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: bpf-linker's LLVM, and the real peers and tools the tests and demo use.
const PACKAGES: &[&str] = &[
    // bpf-linker 0.13 against LLVM 22
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // network tools used by tests and the demo
    "iproute2",
    "ethtool",
    "iputils-ping",
    "tcpdump",
    "iperf3",
    "bpftool",
    "python3-scapy",
    // customer routers
    "bird2",
    "frr",
    "gobgpd",
    // the operators' own tools: Prometheus scraping the agent, systemd-analyze on the unit
    "prometheus",
    "systemd",
];

pub fn run() -> Result<ExitCode> {
    let started = Instant::now();
    ensure_rust_src()?;
    ensure_packages()?;
    ensure_bpf_linker()?;
    println!("setup: ready ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn ensure_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .context("running rustup: forwarder needs rustup with a `nightly` toolchain")?;
    if !installed.status.success() {
        println!("setup: installing the {EBPF_TOOLCHAIN} toolchain with rust-src");
        return checked(
            Command::new("rustup").args([
                "toolchain",
                "install",
                EBPF_TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            &format!(
                "the `{EBPF_TOOLCHAIN}` toolchain is missing and could not be installed; \
                 install it with `rustup toolchain install {EBPF_TOOLCHAIN} -c rust-src`"
            ),
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        println!("setup: rust-src for {EBPF_TOOLCHAIN}: present");
        return Ok(());
    }
    println!("setup: adding rust-src to {EBPF_TOOLCHAIN} (needed for -Z build-std=core)");
    checked(
        Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]),
        &format!(
            "could not add rust-src; run `rustup component add rust-src --toolchain {EBPF_TOOLCHAIN}`"
        ),
    )
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when some package is unknown; what it printed is still right.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query: setup supports Debian 12 (bookworm) and its derivatives")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !listing.lines().any(|l| l == format!("{pkg} installed")))
        .collect())
}

fn ensure_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages: {}; install them as root with `apt-get install {}` \
             (or run `sudo cargo xtask setup`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    checked(
        Command::new("apt-get").args(["update", "-q"]),
        "`apt-get update` failed: check this machine's apt sources",
    )?;
    checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
        &format!("`apt-get install {}` failed", missing.join(" ")),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(", "));
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output() {
        let version = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && version.contains(BPF_LINKER_VERSION) {
            println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
            return Ok(());
        }
        println!(
            "setup: found `{}`, want {BPF_LINKER_VERSION}",
            version.trim()
        );
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    checked(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--force"]),
        &format!(
            "building bpf-linker failed; it needs llvm-22-dev and libpolly-22-dev in \
             {LLVM_PREFIX} (Debian bookworm-security)"
        ),
    )?;
    let found = Command::new("bpf-linker").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Runs `cmd` with inherited output; a non-zero exit becomes an error that says `what`.
pub fn checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{what} ({status})");
    }
    Ok(())
}
