//! Control-plane benchmark: one connection with many static VIFs (1,000 by default), the
//! `forwarder agent` binary under test against a baseline binary, in alternating rounds
//! (new, baseline, new, baseline, ...) so that machine noise hits both alike. Each round starts
//! from nothing (fresh namespaces, no pins, no VIF control namespaces) and measures:
//!
//! 1. start → all available: from spawning `forwarder agent` until `forwarder --json vif list`
//!    shows every VIF `available` (capped);
//! 2. idle CPU of the agent and its children (`/proc/PID/stat` utime+stime+cutime+cstime) over
//!    an idle period right after that, in % of one core;
//! 3. RSS (`VmRSS`) at the end of the idle period;
//! 4. event → map latency, read from the pinned maps with a tight poll loop:
//!    - link: the customer side of the trunk set down / up alternately; until the chosen VIF's
//!      `VIF_TABLE` entry changes state (and until every VIF's entry has);
//!    - neighbour: the client router's MAC in the chosen VIF's control namespace replaced
//!      (alternating two MACs); until a `NEXT_HOPS` entry of that VIF carries the new MAC.
//!
//! Topology (namespaces named per process, deleted on drop, also on panic or Ctrl-C):
//!
//! ```text
//!  cust: trunk0 [XDP ARP responder] ══veth══ hc1  gw: forwarder agent + XDP
//!                                            ul0 172.31.0.1 ══veth══ eth0 172.31.0.2  vpc
//!                                                                    vxlan0 (VNI 1001)
//!  VIF k: namespace PREFIX-vif-k, vif0 10.100.x.y/30 (cloud .1, client .2), VLAN k
//! ```
//!
//! The responder answers the ARP requests that each VIF's control plane sends for its client
//! address (tagged by the agent's XDP), so each static VIF resolves its client router and
//! becomes available.
//!
//! Environment: `FORWARDER_BIN` (required), `FORWARDER_BASELINE_BIN` (optional: without it only
//! the new binary is measured), `FORWARDER_BENCH_ROUNDS` (5), `FORWARDER_BENCH_VIFS` (1000),
//! `FORWARDER_BENCH_EVENTS` (20 per kind), `FORWARDER_BENCH_IDLE_SECS` (30),
//! `FORWARDER_BENCH_EVENT_TIMEOUT_SECS` (10), `FORWARDER_BENCH_KERNEL_NEIGH_GC` (`1`: leave the
//! kernel's neighbour GC thresholds alone, see [`NeighGc`]). Prints a Markdown section on
//! stdout (what `cargo xtask bench` puts into BENCHMARKS.md), progress on stderr.
//! Needs root.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{Array, Map, MapData};
use forwarder_common::{MAP_NEXT_HOPS, MAP_VIF_TABLE, NextHop, Vif, next_hop_kind, vif_state};
use forwarder_tests::{
    NetNs,
    arp::ArpResponder,
    require_root, run,
    topology::{self, Agent, TempDir, VXLAN_MAC, sh},
    veth,
};

/// Give up waiting for all VIFs to become available after this long.
const START_CAP: Duration = Duration::from_secs(600);
/// An event whose map change does not show within this long counts as a timeout (default).
const EVENT_TIMEOUT_SECS: u64 = 10;
/// After an event, the agent must settle (every VIF available again, or none) within this long.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Map poll period during an event.
const POLL: Duration = Duration::from_micros(200);
/// CLI poll period while waiting for VIF states.
const CLI_POLL: Duration = Duration::from_millis(250);
/// A CLI call without an answer within this long counts as no answer.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// The interface inside each VIF's control namespace (`control_interface` of `vif show` is the
/// host end).
const CONTROL_IF: &str = "vif0";
/// The two client router MACs the neighbour events alternate between.
const NEIGH_MACS: [[u8; 6]; 2] = [[2, 0xdd, 0, 0, 0, 1], [2, 0xdd, 0, 0, 0, 2]];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short steps so that Ctrl-C stops the bench promptly (and cleans up).
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

struct Settings {
    binaries: Vec<(&'static str, PathBuf)>,
    rounds: usize,
    vifs: u16,
    events: usize,
    idle: Duration,
    event_timeout: Duration,
    /// Leave the kernel's neighbour GC thresholds as they are (see [`NeighGc`]).
    kernel_neigh_gc: bool,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let new = std::env::var_os("FORWARDER_BIN")
            .map(PathBuf::from)
            .context("FORWARDER_BIN must name the forwarder binary to measure")?;
        let mut binaries = vec![("new", new)];
        if let Some(baseline) = std::env::var_os("FORWARDER_BASELINE_BIN") {
            binaries.push(("baseline", PathBuf::from(baseline)));
        }
        for (label, path) in &binaries {
            ensure!(
                path.is_file(),
                "{label} binary {} not found",
                path.display()
            );
        }
        let settings = Self {
            binaries,
            rounds: env_number("FORWARDER_BENCH_ROUNDS", 5)?,
            vifs: env_number("FORWARDER_BENCH_VIFS", 1000)?,
            events: env_number("FORWARDER_BENCH_EVENTS", 20)?,
            idle: Duration::from_secs(env_number("FORWARDER_BENCH_IDLE_SECS", 30)?),
            event_timeout: Duration::from_secs(env_number(
                "FORWARDER_BENCH_EVENT_TIMEOUT_SECS",
                EVENT_TIMEOUT_SECS,
            )?),
            kernel_neigh_gc: std::env::var("FORWARDER_BENCH_KERNEL_NEIGH_GC")
                .is_ok_and(|v| v == "1"),
        };
        ensure!(settings.rounds >= 1, "FORWARDER_BENCH_ROUNDS must be >= 1");
        ensure!(
            (1..=4094).contains(&settings.vifs),
            "FORWARDER_BENCH_VIFS must be 1..=4094 (one VLAN each)"
        );
        Ok(settings)
    }
}

/// Latencies of one kind of event in one round.
#[derive(Default, Debug)]
struct Events {
    ms: Vec<f64>,
    timeouts: usize,
}

impl Events {
    fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.ms, p)
    }
}

#[derive(Default, Debug)]
struct RoundResult {
    /// None: not all available within START_CAP.
    start_s: Option<f64>,
    idle_cpu_pct: Option<f64>,
    rss_mib: Option<f64>,
    link: Events,
    /// From the kernel's link notification for the port (read in the same poll loop) to the
    /// chosen VIF's map change.
    link_kernel: Events,
    link_all: Events,
    neigh: Events,
    /// What went wrong, if anything (the round's figures may be partial).
    problems: Vec<String>,
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    require_root()?;
    let settings = Settings::from_env()?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // Timer slack of 1 µs: the 200 µs map poll should sleep 200 µs, not 250.
    // SAFETY: PR_SET_TIMERSLACK takes one integer and only changes this thread's timers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let _neigh_gc = if settings.kernel_neigh_gc {
        None
    } else {
        Some(NeighGc::raise()?)
    };
    eprintln!(
        "controlplane bench: {} VIFs, {} round(s) per binary, {} events per kind, {} s idle",
        settings.vifs,
        settings.rounds,
        settings.events,
        settings.idle.as_secs()
    );
    let mut results: BTreeMap<&str, Vec<RoundResult>> = BTreeMap::new();
    for round in 0..settings.rounds {
        for (index, (label, binary)) in settings.binaries.iter().enumerate() {
            check_stop()?;
            eprintln!(
                "== round {}/{} {label} ({})",
                round + 1,
                settings.rounds,
                binary.display()
            );
            let tag = format!("{round}{index}");
            let dir = TempDir::new(&format!("bench-{tag}"))?;
            let measured = measure_round(&settings, binary, label, &tag, &dir.0);
            keep_log(&dir.0, &format!("round{}-{label}", round + 1));
            let result = match measured {
                Ok(r) => r,
                Err(e) => {
                    check_stop()?;
                    eprintln!("   round failed: {e:#}");
                    RoundResult {
                        problems: vec![format!("round failed: {e:#}")],
                        ..RoundResult::default()
                    }
                }
            };
            eprintln!("   {}", summary_line(&result));
            results.entry(label).or_default().push(result);
        }
    }
    print!("{}", report(&settings, &results)?);
    Ok(())
}

fn summary_line(r: &RoundResult) -> String {
    let ms = |e: &Events, p| e.percentile(p).map_or("-".into(), |v| format!("{v:.1}"));
    format!(
        "start {} s, idle CPU {} %, RSS {} MiB, link p50/p99 {}/{} ms (from the kernel's \
         notification {}/{}, all VIFs {}/{}), \
         neighbour p50/p99 {}/{} ms, timeouts link {} all {} neigh {}{}",
        r.start_s
            .map_or(format!("> {}", START_CAP.as_secs()), |s| format!("{s:.2}")),
        r.idle_cpu_pct.map_or("-".into(), |v| format!("{v:.1}")),
        r.rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
        ms(&r.link, 50.0),
        ms(&r.link, 99.0),
        ms(&r.link_kernel, 50.0),
        ms(&r.link_kernel, 99.0),
        ms(&r.link_all, 50.0),
        ms(&r.link_all, 99.0),
        ms(&r.neigh, 50.0),
        ms(&r.neigh, 99.0),
        r.link.timeouts,
        r.link_all.timeouts,
        r.neigh.timeouts,
        if r.problems.is_empty() {
            String::new()
        } else {
            format!("; problems: {}", r.problems.join("; "))
        }
    )
}

/// The kernel's IPv4 neighbour table thresholds, raised for the bench and restored on drop.
///
/// The table is one for all network namespaces, and `managed` entries are not exempt from its
/// garbage collection: with the defaults (128 / 512 / 1024) and a thousand VIF control
/// namespaces, entries that fail to resolve (a link down for a few seconds) are deleted by the
/// periodic GC, and a burst of new entries anywhere on the host makes the forced GC delete
/// entries that were not updated in the last 5 s. An agent that does not recreate them leaves
/// the VIF unavailable for good (seen with 29ae350). `FORWARDER_BENCH_KERNEL_NEIGH_GC=1`
/// keeps the kernel's values to see how an agent copes.
struct NeighGc {
    /// (path, value before), in the order they were raised.
    saved: Vec<(String, String)>,
}

impl NeighGc {
    /// gc_thresh3 first, so that thresh1 <= thresh2 <= thresh3 holds at every step.
    const RAISED: [(&'static str, u64); 3] = [
        ("gc_thresh3", 32_768),
        ("gc_thresh2", 16_384),
        ("gc_thresh1", 8_192),
    ];

    fn raise() -> Result<Self> {
        let mut guard = Self { saved: Vec::new() };
        for (name, value) in Self::RAISED {
            let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
            let before = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .to_owned();
            if before.parse::<u64>().is_ok_and(|b| b >= value) {
                continue;
            }
            std::fs::write(&path, value.to_string()).with_context(|| format!("writing {path}"))?;
            guard.saved.push((path, before));
        }
        if !guard.saved.is_empty() {
            eprintln!(
                "controlplane bench: neighbour GC thresholds raised to 8192/16384/32768 for the run"
            );
        }
        Ok(guard)
    }
}

impl Drop for NeighGc {
    fn drop(&mut self) {
        for (path, before) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(path, before) {
                eprintln!("warning: restoring {path} to {before}: {e}");
            }
        }
    }
}

// --- one round -------------------------------------------------------------------------------

/// What an agent leaves behind by design (pinned maps and links, VIF control namespaces),
/// removed on drop.
struct Leftovers {
    pin_dir: PathBuf,
    netns_prefix: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.pin_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!("warning: removing {}: {e}", self.pin_dir.display());
        }
        let names: Vec<String> = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|n| n.starts_with(&self.netns_prefix))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            return;
        }
        // One `ip` for all of them; -force goes on past a failed line.
        let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        let result = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(batch.as_bytes())?;
                }
                child.wait()
            });
        if let Err(e) = result {
            eprintln!(
                "warning: removing {} VIF namespaces {}*: {e}",
                names.len(),
                self.netns_prefix
            );
        }
    }
}

/// The /30 of VIF `k` (1-based) in 10.100.0.0/16: (cloud = .1, client = .2).
fn vif_pair(k: u16) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 100, 0, 0)) + 4 * (u32::from(k) - 1);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn config_text(dir: &Path, pin_dir: &Path, netns_prefix: &str, vifs: u16) -> String {
    let mut text = format!(
        r#"[agent]
state_dir = "{state}"
control_socket = "{socket}"
pin_dir = "{pin}"
netns_prefix = "{netns_prefix}"

[underlay]
interface = "ul0"
local_vtep = "172.31.0.1"

[[connection]]
name = "hc-1"
kind = "hosted"
interface = "hc1"

[[border_gateway]]
name = "bgw-1"

[[vpc_attachment]]
name = "att-a"
border_gateway = "bgw-1"
vni = 1001
remote_vtep = "172.31.0.2"
router_mac = "{VXLAN_MAC}"
propagate = ["10.0.1.0/24"]
"#,
        state = dir.join("state").display(),
        socket = dir.join("forwarder.sock").display(),
        pin = pin_dir.display(),
    );
    for k in 1..=vifs {
        let (cloud, client) = vif_pair(k);
        text.push_str(&format!(
            r#"
[[vif]]
name = "vif-{k}"
connection = "hc-1"
vlan = {k}
border_gateway = "bgw-1"
routing = "static"

  [[vif.peer]]
  client_address = "{client}"
  cloud_address = "{cloud}"
  prefix_len = 30
"#
        ));
    }
    text
}

/// The agent's CPU time so far, own and waited-for children, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: the first
    // one here is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0u64;
    for field in 14..=17 {
        let text = fields
            .get(field - 3)
            .with_context(|| format!("/proc/{pid}/stat has no field {field}"))?;
        // cutime and cstime are signed in the kernel's format; they are never negative here.
        sum += text.parse::<i64>()?.max(0) as u64;
    }
    Ok(sum)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// `forwarder --socket SOCKET --json ARGS`, parsed. `Ok(None)` when the CLI fails (no agent
/// yet) or gets no answer within CLI_TIMEOUT (a busy agent may take long); Ctrl-C stops it.
fn cli_json(binary: &Path, socket: &Path, args: &[&str]) -> Result<Option<serde_json::Value>> {
    let mut child = Command::new(binary)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    // Read while it runs: a thousand VIFs are more than a pipe holds.
    let mut stdout = child.stdout.take().context("CLI stdout")?;
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).map(|_| bytes)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if STOP.load(Ordering::SeqCst) || started.elapsed() > CLI_TIMEOUT {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let bytes = reader
        .join()
        .map_err(|_| anyhow::anyhow!("CLI reader panicked"))??;
    check_stop()?;
    Ok(match status {
        Some(status) if status.success() => serde_json::from_slice(&bytes).ok(),
        _ => None,
    })
}

/// (VIFs listed, VIFs `available`) according to `forwarder --json vif list`; None while the
/// agent does not answer.
fn vif_counts(binary: &Path, socket: &Path) -> Result<Option<(usize, usize)>> {
    let Some(list) = cli_json(binary, socket, &["vif", "list"])? else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Ok(None);
    };
    let available = list
        .iter()
        .filter(|v| v["state"].as_str() == Some("available"))
        .count();
    Ok(Some((list.len(), available)))
}

fn agent_alive(agent: &mut Agent) -> Result<()> {
    if let Some(child) = agent.child.as_mut()
        && let Some(status) = child.try_wait()?
    {
        let log = agent.log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "agent exited with {status}; last lines of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Waits until `done(listed, available)` holds for the CLI's view of the VIFs.
fn wait_vifs(
    agent: &mut Agent,
    binary: &Path,
    socket: &Path,
    timeout: Duration,
    what: &str,
    done: impl Fn(usize, usize) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        agent_alive(agent)?;
        if let Some((listed, available)) = vif_counts(binary, socket)?
            && done(listed, available)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", timeout.as_secs());
        }
        std::thread::sleep(CLI_POLL);
    }
}

/// Copies the round's agent log to `<target>/tmp/controlplane/NAME.log` (the previous run's
/// logs are replaced round by round).
fn keep_log(dir: &Path, name: &str) {
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("controlplane");
    let to = logs.join(format!("{name}.log"));
    let result =
        std::fs::create_dir_all(&logs).and_then(|()| std::fs::copy(dir.join("agent.log"), &to));
    match result {
        Ok(_) => eprintln!("   agent log: {}", to.display()),
        Err(e) => eprintln!("   agent log not kept: {e}"),
    }
}

/// One round of one binary; `dir` holds its config, socket, state and log.
fn measure_round(
    settings: &Settings,
    binary: &Path,
    label: &str,
    tag: &str,
    dir: &Path,
) -> Result<RoundResult> {
    let n = usize::from(settings.vifs);
    let unique = format!("fwb{}x{tag}", std::process::id());
    // Dropped after the namespaces and the agent (locals drop in reverse order).
    let leftovers = Leftovers {
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/{unique}")),
        netns_prefix: format!("{unique}-"),
    };
    let gw = NetNs::new("bgw")?;
    let cust = NetNs::new("bcust")?;
    let vpc = NetNs::new("bvpc")?;
    veth(&cust, "trunk0", &gw, "hc1")?;
    veth(&gw, "ul0", &vpc, "eth0")?;
    sh(&gw, "ip addr add 172.31.0.1/24 dev ul0")?;
    topology::add_vpc(&vpc, "172.31.0.2", "172.31.0.1", 1001, VXLAN_MAC)?;
    // XDP on both ends of the trunk sees the 802.1Q tags inline; GRO on trunk0 as well, in case
    // a redirect lands there (its XDP program already makes it accept them).
    cust.exec(&[
        "ethtool", "-K", "trunk0", "rxvlan", "off", "txvlan", "off", "gro", "on",
    ])?;
    gw.exec(&["ethtool", "-K", "hc1", "rxvlan", "off", "txvlan", "off"])?;
    let responder = ArpResponder::attach(&cust, "trunk0")?;

    let config = dir.join("forwarder.toml");
    std::fs::write(
        &config,
        config_text(
            dir,
            &leftovers.pin_dir,
            &leftovers.netns_prefix,
            settings.vifs,
        ),
    )?;
    let socket = dir.join("forwarder.sock");
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;

    let mut result = RoundResult::default();

    // 1. start → all available.
    let started = Instant::now();
    // nsenter --net, not `ip netns exec` (which would give the agent a mount namespace of its
    // own, hiding the VIF namespaces it creates from everyone else).
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", gw.name()))
        .arg(binary)
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawning the agent")?;
    let pid = child.id();
    let mut agent = Agent {
        child: Some(child),
        log: log_path,
    };
    let mut last_progress = Instant::now();
    loop {
        check_stop()?;
        agent_alive(&mut agent)?;
        let counts = vif_counts(binary, &socket)?;
        if let Some((listed, available)) = counts
            && listed == n
            && available == n
        {
            result.start_s = Some(started.elapsed().as_secs_f64());
            break;
        }
        if started.elapsed() > START_CAP {
            result
                .problems
                .push(format!("not all available after {} s", START_CAP.as_secs()));
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            let elapsed = started.elapsed().as_secs_f64();
            match counts {
                Some((listed, available)) => {
                    eprintln!("   {label} {elapsed:.0} s: {available} of {listed} VIFs available")
                }
                None => eprintln!("   {label} {elapsed:.0} s: no answer from the agent yet"),
            }
        }
        std::thread::sleep(CLI_POLL);
    }
    eprintln!(
        "   {label} start: {}",
        result.start_s.map_or_else(
            || format!("> {} s", START_CAP.as_secs()),
            |s| format!("{s:.2} s")
        )
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "forwarder",
        "pid {pid} is {comm:?}, not the agent (nsenter should have exec'd it)"
    );

    // 2. and 3. idle CPU and RSS.
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    sleep(settings.idle)?;
    let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
    result.idle_cpu_pct = Some((c1 - c0) as f64 / ticks_per_s / (t1 - t0).as_secs_f64() * 100.0);
    result.rss_mib = Some(rss_mib(pid)?);
    eprintln!(
        "   {label} idle: {:.1} % CPU, {:.1} MiB RSS",
        result.idle_cpu_pct.unwrap_or_default(),
        result.rss_mib.unwrap_or_default()
    );
    if result.start_s.is_none() {
        return Ok(result);
    }

    // 4. events. A failure here keeps the figures so far.
    let setup = RoundSetup {
        settings,
        binary,
        label,
        socket: &socket,
        pin_dir: &leftovers.pin_dir,
        cust: &cust,
        gw: &gw,
    };
    if let Err(e) = events_phase(&setup, &mut agent, &mut result) {
        check_stop()?;
        result.problems.push(format!("{e:#}"));
    }
    let arp = responder.counters()?;
    eprintln!(
        "   ARP responder: {} replied, {} passed, {} not answered",
        arp.replied, arp.passed, arp.not_answered
    );
    if let Err(e) = agent_alive(&mut agent) {
        result.problems.push(format!("{e:#}"));
    }
    Ok(result)
}

/// What the event phase needs of a round.
struct RoundSetup<'a> {
    settings: &'a Settings,
    binary: &'a Path,
    label: &'a str,
    socket: &'a Path,
    pin_dir: &'a Path,
    cust: &'a NetNs,
    gw: &'a NetNs,
}

/// Link events, then neighbour events, into `result`.
fn events_phase(setup: &RoundSetup<'_>, agent: &mut Agent, result: &mut RoundResult) -> Result<()> {
    let RoundSetup {
        settings,
        binary,
        label,
        socket,
        pin_dir,
        cust,
        gw,
    } = *setup;
    let n = usize::from(settings.vifs);
    let chosen_name = format!("vif-{}", settings.vifs);
    let show = cli_json(binary, socket, &["vif", "show", &chosen_name])?
        .with_context(|| format!("no answer to `vif show {chosen_name}`"))?;
    let chosen = u32::try_from(show["id"].as_u64().context("vif show: no id")?)?;
    let control_netns = show["control_netns"]
        .as_str()
        .context("vif show: no control_netns")?
        .to_owned();
    let client = show["peers"][0]["client_address"]
        .as_str()
        .context("vif show: no peers[0].client_address")?
        .to_owned();
    let maps = pin_dir.join("maps");
    let vif_table: Array<MapData, Vif> = Array::try_from(Map::from_map_data(
        MapData::from_pin(maps.join(MAP_VIF_TABLE))
            .with_context(|| format!("opening {}", maps.join(MAP_VIF_TABLE).display()))?,
    )?)?;
    let next_hops: Array<MapData, NextHop> = Array::try_from(Map::from_map_data(
        MapData::from_pin(maps.join(MAP_NEXT_HOPS))
            .with_context(|| format!("opening {}", maps.join(MAP_NEXT_HOPS).display()))?,
    )?)?;
    let mut all_ids = Vec::with_capacity(n);
    for id in 0..vif_table.len() {
        if vif_table.get(&id, 0)?.state == vif_state::AVAILABLE {
            all_ids.push(id);
        }
    }
    if all_ids.len() != n {
        result.problems.push(format!(
            "{} VIF_TABLE entries available, {n} VIFs configured",
            all_ids.len()
        ));
    }
    ensure!(
        all_ids.contains(&chosen),
        "{chosen_name} (id {chosen}) is not available in VIF_TABLE"
    );
    let mut rng = Rng::seeded();
    let port = LinkWatch::open(gw, "hc1")?;
    let ctx = EventCtx {
        binary,
        socket,
        cust,
        port: &port,
        vif_table: &vif_table,
        next_hops: &next_hops,
        chosen,
        label,
        n,
        timeout: settings.event_timeout,
    };

    if let Err(e) = link_events(&ctx, agent, &all_ids, settings.events, &mut rng, result) {
        check_stop()?;
        result.problems.push(format!("link events stopped: {e:#}"));
    }
    // Every VIF available again before the neighbour events (after a failed link series too).
    wait_vifs(
        agent,
        binary,
        socket,
        SETTLE_TIMEOUT,
        "all available before the neighbour events",
        |l, a| l == n && a == n,
    )?;
    let neighbour = Neighbour {
        netns: &control_netns,
        ifname: CONTROL_IF,
        client: &client,
    };
    neigh_events(&ctx, &neighbour, settings.events, &mut rng, result)
        .context("neighbour events stopped")
}

struct EventCtx<'a> {
    binary: &'a Path,
    socket: &'a Path,
    cust: &'a NetNs,
    /// The kernel's link notifications for the agent's port.
    port: &'a LinkWatch,
    vif_table: &'a Array<MapData, Vif>,
    next_hops: &'a Array<MapData, NextHop>,
    chosen: u32,
    label: &'a str,
    n: usize,
    /// An event not seen in the map within this long is a timeout.
    timeout: Duration,
}

/// Link events: trunk0 (customer side) down, up, down, ... Latency to the chosen VIF's state
/// change in VIF_TABLE, and to the last of all VIFs' changes.
fn link_events(
    ctx: &EventCtx<'_>,
    agent: &mut Agent,
    all_ids: &[u32],
    events: usize,
    rng: &mut Rng,
    result: &mut RoundResult,
) -> Result<()> {
    let n = ctx.n;
    for i in 0..events {
        let down = i % 2 == 0;
        // A random phase against any periodic work in the agent.
        sleep(Duration::from_millis(rng.below(1000)))?;
        // Every VIF's state, once the chosen one is where the event starts from (available
        // before a down). A VIF may change on its own meanwhile (its client's neighbour entry
        // failing after the previous flap): the others that are not where the chosen one is
        // are left out of this event's "every VIF".
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let (before, chosen_before) = loop {
            let before: Vec<u32> = all_ids
                .iter()
                .map(|id| ctx.vif_table.get(id, 0).map(|v| v.state))
                .collect::<Result<_, _>>()?;
            let chosen_before = ctx.vif_table.get(&ctx.chosen, 0)?.state;
            if (chosen_before == vif_state::AVAILABLE) == down {
                break (before, chosen_before);
            }
            ensure!(
                Instant::now() < deadline,
                "VIF {} not {} before link event {}",
                ctx.chosen,
                if down { "available" } else { "unavailable" },
                i + 1
            );
            sleep(Duration::from_millis(50))?;
        };
        let same_side = |state: u32| (state == vif_state::AVAILABLE) == down;
        // Others still to change: (index into all_ids).
        let mut pending: Vec<usize> = (0..all_ids.len())
            .filter(|&j| all_ids[j] != ctx.chosen && same_side(before[j]))
            .collect();
        let left_out = all_ids.len() - 1 - pending.len();
        ctx.port.discard()?;
        ctx.cust.exec(&[
            "ip",
            "link",
            "set",
            "trunk0",
            if down { "down" } else { "up" },
        ])?;
        let t0 = Instant::now();
        let wall = utc_now();
        let mut chosen_at = None;
        let mut all_at = None;
        let mut kernel_at = None;
        let mut cursor = 0usize;
        while t0.elapsed() < ctx.timeout && (chosen_at.is_none() || all_at.is_none()) {
            // The socket first: a notification and a map change seen in the same pass are in
            // that order.
            if kernel_at.is_none() && ctx.port.carrier_seen(!down)? {
                kernel_at = Some(t0.elapsed());
            }
            if chosen_at.is_none() && ctx.vif_table.get(&ctx.chosen, 0)?.state != chosen_before {
                chosen_at = Some(t0.elapsed());
            }
            // A slice of the others per iteration keeps the chosen VIF's resolution at POLL.
            for _ in 0..32 {
                if pending.is_empty() {
                    break;
                }
                cursor %= pending.len();
                let j = pending[cursor];
                if ctx.vif_table.get(&all_ids[j], 0)?.state != before[j] {
                    pending.swap_remove(cursor);
                } else {
                    cursor += 1;
                }
            }
            if all_at.is_none() && pending.is_empty() && chosen_at.is_some() {
                all_at = Some(t0.elapsed());
            }
            std::thread::sleep(POLL);
        }
        if kernel_at.is_none() && ctx.port.carrier_seen(!down)? {
            kernel_at = Some(t0.elapsed());
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        match ms(chosen_at) {
            Some(v) => result.link.ms.push(v),
            None => result.link.timeouts += 1,
        }
        // From the kernel's notification: what the agent adds to the kernel's own delay.
        let from_kernel = match (kernel_at, chosen_at) {
            (Some(k), Some(c)) => Some(c.saturating_sub(k)),
            _ => None,
        };
        match (ms(from_kernel), chosen_at, kernel_at) {
            (Some(v), _, _) => result.link_kernel.ms.push(v),
            (None, None, _) => result.link_kernel.timeouts += 1,
            (None, Some(_), None) => result.problems.push(format!(
                "link {} #{}: the port's notification was not read (the map changed)",
                if down { "down" } else { "up" },
                i + 1
            )),
            (None, Some(_), Some(_)) => unreachable!("from_kernel is Some"),
        }
        match ms(all_at) {
            Some(v) => result.link_all.ms.push(v),
            None => result.link_all.timeouts += 1,
        }
        eprintln!(
            "   {} link {} #{} at {wall}: kernel notification {}, chosen {}, all {}",
            ctx.label,
            if down { "down" } else { "up" },
            i + 1,
            ms(kernel_at).map_or("not seen".into(), |v| format!("{v:.1} ms")),
            ms(chosen_at).map_or("timeout".into(), |v| format!("{v:.1} ms")),
            ms(all_at).map_or_else(
                || format!("timeout ({} not changed)", pending.len()),
                |v| format!("{v:.1} ms")
            ),
        );
        if left_out > 0 {
            eprintln!(
                "     ({left_out} VIF(s) had changed state on their own before the event: left out)"
            );
        }
        // Settle: every VIF unavailable after a down, available again after an up.
        if down {
            wait_vifs(
                agent,
                ctx.binary,
                ctx.socket,
                SETTLE_TIMEOUT,
                "no VIF available after link down",
                |_, a| a == 0,
            )?;
        } else {
            wait_vifs(
                agent,
                ctx.binary,
                ctx.socket,
                SETTLE_TIMEOUT,
                "all VIFs available after link up",
                |l, a| l == n && a == n,
            )?;
        }
        // And the map agrees, so that the next event starts from settled entries.
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut settled = true;
            for id in all_ids {
                let available = ctx.vif_table.get(id, 0)?.state == vif_state::AVAILABLE;
                if available == down {
                    settled = false;
                    break;
                }
            }
            if settled {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "VIF_TABLE not settled {} s after link {}",
                SETTLE_TIMEOUT.as_secs(),
                if down { "down" } else { "up" }
            );
            sleep(Duration::from_millis(50))?;
        }
    }
    // Leave the link up whatever happened.
    if events % 2 == 1 {
        ctx.cust.exec(&["ip", "link", "set", "trunk0", "up"])?;
    }
    Ok(())
}

/// The kernel's RTM_NEWLINK notifications for one interface, from a netlink socket opened
/// inside its namespace (non-blocking; read in the events' poll loop).
struct LinkWatch {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl LinkWatch {
    fn open(ns: &NetNs, ifname: &str) -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(ifname)?;
        ns.enter(|| {
            // SAFETY: plain socket calls on a descriptor this function owns; the address and
            // option values outlive the calls.
            unsafe {
                let raw = libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::NETLINK_ROUTE,
                );
                if raw < 0 {
                    return Err(std::io::Error::last_os_error()).context("netlink socket");
                }
                let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
                // The VIF veths in this namespace may change with the port: room for them all.
                let size: libc::c_int = 8 << 20;
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                let mut addr: libc::sockaddr_nl = std::mem::zeroed();
                addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                addr.nl_groups = libc::RTMGRP_LINK as u32;
                if libc::bind(
                    raw,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error()).context("netlink bind");
                }
                let index = libc::if_nametoindex(name.as_ptr());
                ensure!(index != 0, "no interface {ifname} in {}", ns.name());
                Ok(Self {
                    fd,
                    ifindex: i32::try_from(index)?,
                })
            }
        })
    }

    /// Reads everything queued; true when a notification for the interface with carrier
    /// (lower up) == `up` was among it.
    fn carrier_seen(&self, up: bool) -> Result<bool> {
        use std::os::fd::AsRawFd as _;
        const HEADER: usize = 16; // struct nlmsghdr
        let mut buf = vec![0u8; 64 << 10];
        let mut seen = false;
        loop {
            // SAFETY: the buffer is valid for its length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(seen),
                    // Overrun: notifications lost; the next ones still count.
                    Some(libc::ENOBUFS) => continue,
                    _ => return Err(e).context("reading link notifications"),
                }
            }
            let data = &buf[..usize::try_from(got)?];
            let word =
                |o: usize| u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
            let mut at = 0;
            while at + HEADER <= data.len() {
                let len = word(at) as usize;
                let kind = u16::from_ne_bytes([data[at + 4], data[at + 5]]);
                if len < HEADER || at + len > data.len() {
                    break;
                }
                // struct ifinfomsg after the header: family, pad, type, index, flags, change.
                if kind == libc::RTM_NEWLINK && len >= HEADER + 16 {
                    let index = word(at + HEADER + 4) as i32;
                    let lower_up = word(at + HEADER + 8) & libc::IFF_LOWER_UP as u32 != 0;
                    seen |= index == self.ifindex && lower_up == up;
                }
                at += (len + 3) & !3;
            }
        }
    }

    /// Throws away what is queued (the notifications of earlier events).
    fn discard(&self) -> Result<()> {
        self.carrier_seen(true).map(drop)
    }
}

struct Neighbour<'a> {
    netns: &'a str,
    ifname: &'a str,
    client: &'a str,
}

/// The NEXT_HOPS entries of kind VIF toward one VIF: found by a scan of the whole map at the
/// start and, while a MAC is looked for in vain, by rescans of its used part (an agent may put a
/// new MAC into another entry).
struct NextHopWatch<'a> {
    map: &'a Array<MapData, NextHop>,
    vif: u32,
    ids: Vec<u32>,
    rescan_limit: u32,
}

impl<'a> NextHopWatch<'a> {
    /// How often a rescan runs while a MAC is not found (it reads a few thousand entries).
    const RESCAN: Duration = Duration::from_millis(100);

    fn new(map: &'a Array<MapData, NextHop>, vif: u32) -> Result<Self> {
        let mut ids = Vec::new();
        let mut high = 0;
        for id in 0..map.len() {
            let nh = map.get(&id, 0)?;
            if nh.kind != next_hop_kind::NONE {
                high = id + 1;
            }
            if nh.kind == next_hop_kind::VIF && nh.target == vif {
                ids.push(id);
            }
        }
        ensure!(
            !ids.is_empty(),
            "no NEXT_HOPS entry of kind VIF toward VIF {vif}"
        );
        Ok(Self {
            map,
            vif,
            ids,
            rescan_limit: high.saturating_add(1024),
        })
    }

    fn is_ours(&self, nh: &NextHop) -> bool {
        nh.kind == next_hop_kind::VIF && nh.target == self.vif
    }

    /// The MACs the VIF's entries hold now.
    fn macs(&self) -> Result<Vec<[u8; 6]>> {
        let mut macs = Vec::new();
        for id in &self.ids {
            let nh = self.map.get(id, 0)?;
            if self.is_ours(&nh) {
                macs.push(nh.mac);
            }
        }
        Ok(macs)
    }

    fn holds(&self, mac: [u8; 6]) -> Result<bool> {
        for id in &self.ids {
            let nh = self.map.get(id, 0)?;
            if self.is_ours(&nh) && nh.mac == mac {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Scans the used part of the map, remembering new entries of the VIF.
    fn rescan(&mut self, mac: [u8; 6]) -> Result<bool> {
        let mut found = false;
        for id in 0..self.rescan_limit.min(self.map.len()) {
            let nh = self.map.get(&id, 0)?;
            if self.is_ours(&nh) {
                if !self.ids.contains(&id) {
                    self.ids.push(id);
                }
                found |= nh.mac == mac;
            }
        }
        Ok(found)
    }

    /// Polls until an entry of the VIF holds `mac`: the time since `t0`, or None after
    /// `timeout`.
    fn wait(&mut self, mac: [u8; 6], t0: Instant, timeout: Duration) -> Result<Option<Duration>> {
        let mut next_rescan = Self::RESCAN;
        loop {
            if self.holds(mac)? {
                return Ok(Some(t0.elapsed()));
            }
            if t0.elapsed() >= next_rescan {
                next_rescan = t0.elapsed() + Self::RESCAN;
                if self.rescan(mac)? {
                    return Ok(Some(t0.elapsed()));
                }
            }
            if t0.elapsed() >= timeout {
                return Ok(None);
            }
            check_stop()?;
            std::thread::sleep(POLL);
        }
    }
}

/// `HH:MM:SS.ffffff` UTC, to match events with the agent's log lines.
fn utc_now() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let secs = (micros / 1_000_000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros % 1_000_000
    )
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Neighbour events: the chosen VIF's client router MAC replaced in its control namespace,
/// alternating two MACs. Latency to a NEXT_HOPS entry of that VIF with the new MAC. Before each
/// event the map must show the previous MAC, or a late write of it would pass for the answer to
/// the event after.
fn neigh_events(
    ctx: &EventCtx<'_>,
    neighbour: &Neighbour<'_>,
    events: usize,
    rng: &mut Rng,
    result: &mut RoundResult,
) -> Result<()> {
    let mut watch = NextHopWatch::new(ctx.next_hops, ctx.chosen)?;
    let mut current = *watch
        .macs()?
        .first()
        .context("the chosen VIF's next hop vanished")?;
    for i in 0..events {
        let mac = NEIGH_MACS[i % 2];
        ensure!(
            mac != current,
            "neighbour event {} would not change the MAC",
            i + 1
        );
        sleep(Duration::from_millis(rng.below(1000)))?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while ctx.vif_table.get(&ctx.chosen, 0)?.state != vif_state::AVAILABLE {
            ensure!(
                Instant::now() < deadline,
                "VIF {} not available before neighbour event {}",
                ctx.chosen,
                i + 1
            );
            sleep(Duration::from_millis(50))?;
        }
        if watch
            .wait(current, Instant::now(), SETTLE_TIMEOUT)?
            .is_none()
        {
            bail!(
                "NEXT_HOPS did not show {} within {} s (before neighbour event {})",
                mac_text(current),
                SETTLE_TIMEOUT.as_secs(),
                i + 1
            );
        }
        run(
            "ip",
            &[
                "-n",
                neighbour.netns,
                "neigh",
                "replace",
                neighbour.client,
                "lladdr",
                &mac_text(mac),
                "dev",
                neighbour.ifname,
                "nud",
                "reachable",
            ],
        )?;
        let t0 = Instant::now();
        let wall = utc_now();
        let seen = watch.wait(mac, t0, ctx.timeout)?;
        current = mac;
        let ms = seen.map(|d| d.as_secs_f64() * 1000.0);
        match ms {
            Some(v) => result.neigh.ms.push(v),
            None => result.neigh.timeouts += 1,
        }
        eprintln!(
            "   {} neighbour #{} ({}) at {wall}: {}",
            ctx.label,
            i + 1,
            mac_text(mac),
            ms.map_or("timeout".into(), |v| format!("{v:.1} ms"))
        );
    }
    Ok(())
}

/// xorshift64*: random delays without a dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

// --- statistics and report -------------------------------------------------------------------

/// Nearest-rank percentile of unsorted samples.
fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// (median, min, max) of per-round values; infinity stands for "not reached".
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let len = sorted.len();
    let median = if len % 2 == 1 {
        sorted[len / 2]
    } else {
        let (a, b) = (sorted[len / 2 - 1], sorted[len / 2]);
        if a.is_infinite() || b.is_infinite() {
            b
        } else {
            (a + b) / 2.0
        }
    };
    Some((median, sorted[0], sorted[len - 1]))
}

/// `decimals` decimals, one more below 1 (sub-millisecond latencies).
fn number(v: f64, decimals: usize) -> String {
    if v.is_infinite() {
        format!("> {}", START_CAP.as_secs())
    } else if v != 0.0 && v.abs() < 1.0 {
        let decimals = decimals + 1;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn cell(s: Option<(f64, f64, f64)>, decimals: usize) -> String {
    match s {
        None => "n/a".into(),
        Some((median, min, max)) => format!(
            "{} ({}–{})",
            number(median, decimals),
            number(min, decimals),
            number(max, decimals)
        ),
    }
}

struct Figure {
    name: &'static str,
    decimals: usize,
    value: fn(&RoundResult) -> Option<f64>,
    /// For a latency: the events it is taken from (a cell without values then says whether
    /// they all timed out).
    events: Option<fn(&RoundResult) -> &Events>,
}

fn figures() -> Vec<Figure> {
    vec![
        Figure {
            name: "start → all VIFs available (s)",
            decimals: 2,
            // A round that never got there counts as infinitely slow; a failed round as absent.
            value: |r| match (r.start_s, r.idle_cpu_pct) {
                (Some(s), _) => Some(s),
                (None, Some(_)) => Some(f64::INFINITY),
                (None, None) => None,
            },
            events: None,
        },
        Figure {
            name: "idle CPU, own + children (% of one core)",
            decimals: 1,
            value: |r| r.idle_cpu_pct,
            events: None,
        },
        Figure {
            name: "RSS at the end of idle (MiB)",
            decimals: 1,
            value: |r| r.rss_mib,
            events: None,
        },
        Figure {
            name: "link event → chosen VIF's VIF_TABLE state, p50 (ms)",
            decimals: 1,
            value: |r| r.link.percentile(50.0),
            events: Some(|r| &r.link),
        },
        Figure {
            name: "link event → chosen VIF's VIF_TABLE state, p99 (ms)",
            decimals: 1,
            value: |r| r.link.percentile(99.0),
            events: Some(|r| &r.link),
        },
        Figure {
            name: "kernel's port notification → chosen VIF's VIF_TABLE state, p50 (ms)",
            decimals: 1,
            value: |r| r.link_kernel.percentile(50.0),
            events: Some(|r| &r.link_kernel),
        },
        Figure {
            name: "kernel's port notification → chosen VIF's VIF_TABLE state, p99 (ms)",
            decimals: 1,
            value: |r| r.link_kernel.percentile(99.0),
            events: Some(|r| &r.link_kernel),
        },
        Figure {
            name: "link event → every VIF's VIF_TABLE state, p50 (ms)",
            decimals: 1,
            value: |r| r.link_all.percentile(50.0),
            events: Some(|r| &r.link_all),
        },
        Figure {
            name: "link event → every VIF's VIF_TABLE state, p99 (ms)",
            decimals: 1,
            value: |r| r.link_all.percentile(99.0),
            events: Some(|r| &r.link_all),
        },
        Figure {
            name: "neighbour event → NEXT_HOPS MAC, p50 (ms)",
            decimals: 1,
            value: |r| r.neigh.percentile(50.0),
            events: Some(|r| &r.neigh),
        },
        Figure {
            name: "neighbour event → NEXT_HOPS MAC, p99 (ms)",
            decimals: 1,
            value: |r| r.neigh.percentile(99.0),
            events: Some(|r| &r.neigh),
        },
    ]
}

fn report(settings: &Settings, results: &BTreeMap<&str, Vec<RoundResult>>) -> Result<String> {
    let n = settings.vifs;
    let empty = Vec::new();
    let new = results.get("new").unwrap_or(&empty);
    let baseline = results.get("baseline");
    let mut out = String::new();
    writeln!(
        out,
        "## Control plane: {} static VIFs on one connection\n",
        thousands(n)
    )?;
    writeln!(
        out,
        "| figure | new: median (min–max) | baseline: median (min–max) | ratio new / baseline |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let timeout_s = settings.event_timeout.as_secs();
    for figure in figures() {
        let values = |rounds: &[RoundResult]| -> Vec<f64> {
            rounds.iter().filter_map(|r| (figure.value)(r)).collect()
        };
        // No value from any round although events timed out: they all did.
        let all_timed_out = |rounds: &[RoundResult]| -> bool {
            figure
                .events
                .is_some_and(|events| rounds.iter().map(|r| events(r).timeouts).sum::<usize>() > 0)
                && values(rounds).is_empty()
        };
        // With some events timed out, the percentiles are over the others: say so.
        let show = |rounds: &[RoundResult], s: Option<(f64, f64, f64)>| -> String {
            if all_timed_out(rounds) {
                return format!("all timed out (> {timeout_s} s)");
            }
            let text = cell(s, figure.decimals);
            let (timed_out, all) = figure.events.map_or((0, 0), |events| {
                rounds.iter().fold((0, 0), |(t, a), r| {
                    let e = events(r);
                    (t + e.timeouts, a + e.timeouts + e.ms.len())
                })
            });
            if timed_out > 0 {
                format!("{text}; {timed_out} of {all} timed out")
            } else {
                text
            }
        };
        let new_spread = spread(&values(new));
        let base_spread = baseline.and_then(|b| spread(&values(b)));
        let ratio = match (new_spread, base_spread) {
            (Some((a, _, _)), Some((b, _, _))) if a.is_finite() && b.is_finite() && b > 0.0 => {
                ratio_text(a / b)
            }
            (Some((a, _, _)), Some((b, _, _))) if a.is_finite() && b.is_infinite() => {
                upper_bound(a / START_CAP.as_secs_f64())
            }
            // Every baseline event timed out: the ratio is below new / timeout.
            (Some((a, _, _)), None) if baseline.is_some_and(|b| all_timed_out(b)) => {
                upper_bound(a / (settings.event_timeout.as_secs_f64() * 1000.0))
            }
            _ => "—".into(),
        };
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            figure.name,
            show(new, new_spread),
            baseline.map_or_else(|| "not measured".into(), |b| show(b, base_spread)),
            ratio
        )?;
    }
    // Timeouts, summed over rounds: chosen VIF / every VIF / neighbour, of events run.
    let timeouts = |rounds: &[RoundResult]| -> String {
        let sum = |f: fn(&RoundResult) -> &Events| -> (usize, usize) {
            rounds.iter().fold((0, 0), |(t, all), r| {
                let e = f(r);
                (t + e.timeouts, all + e.timeouts + e.ms.len())
            })
        };
        let (a, an) = sum(|r| &r.link);
        let (b, bn) = sum(|r| &r.link_all);
        let (c, cn) = sum(|r| &r.neigh);
        format!("{a} of {an} / {b} of {bn} / {c} of {cn}")
    };
    writeln!(
        out,
        "| events timed out (> {timeout_s} s), all rounds: link chosen VIF / link every VIF / \
         neighbour | {} | {} | — |",
        timeouts(new),
        baseline.map_or_else(|| "not measured".into(), |b| timeouts(b)),
    )?;
    writeln!(out)?;
    let labels: Vec<&str> = settings.binaries.iter().map(|(l, _)| *l).collect();
    let lines = [
        format!(
            "Rounds: {} per binary, alternating {}. Each starts from nothing (new namespaces, \
             no pinned maps, no VIF control namespaces) and ends with SIGKILL and the removal of \
             all of it.",
            settings.rounds,
            labels.join(", ")
        ),
        format!(
            "Setup: {} static VIFs (VLAN 1–{n}, one /30 each) on one veth connection; an XDP ARP \
             responder on the customer side of the trunk answers for every client address with \
             `02:cc:00:00:HI:LO` (HI:LO = the VLAN).",
            thousands(n)
        ),
        format!(
            "Start: from spawning the agent until `forwarder --json vif list` shows every VIF \
             available (polled every {} ms, capped at {} s). Idle: the {} s right after that; \
             utime+stime+cutime+cstime of the agent; RSS at the end.",
            CLI_POLL.as_millis(),
            START_CAP.as_secs(),
            settings.idle.as_secs()
        ),
        format!(
            "Events: {} per kind per round, each after a random 0–1 s pause; the chosen VIF is \
             `vif-{n}`; the pinned maps are read every {} µs from when the `ip` command \
             returns, so a few hundredths of a ms mean that the first read found the change. An \
             event not in the map within {timeout_s} s is a timeout, left out of the \
             percentiles. Percentiles are nearest-rank over one round's events; the table gives \
             the median, min and max of the rounds' values.",
            settings.events,
            POLL.as_micros()
        ),
        "Link: `ip link set trunk0 down|up` on the customer side, alternately, until the \
         chosen VIF's VIF_TABLE state changes; every VIF: until all of theirs have (read 32 per \
         poll). Before the next event every VIF has settled per `vif list` and VIF_TABLE; a VIF \
         that changes on its own in between (its client entry failed during the flap) is left \
         out of that event's every-VIF time. Link down has a floor of 0–1 s that no agent can \
         beat: the kernel reports the port's carrier loss through linkwatch, which sends such \
         (non-urgent) changes host-wide at most once a second, and the previous event here \
         came less than a second earlier; up is reported at once. So the bench also reads the kernel's \
         RTM_NEWLINK notifications for the port (`hc1`, a netlink socket in the gateway \
         namespace, read in the same poll loop before the map) and reports the time from the \
         first one with the new carrier state to the chosen VIF's change: what the agent \
         itself adds. An event whose notification was not read is left out of that figure and \
         listed under problems."
            .to_owned(),
        "Neighbour: `ip -n CONTROL_NETNS neigh replace CLIENT lladdr 02:dd:00:00:00:0{1,2} dev \
         vif0 nud reachable`, alternately, until a NEXT_HOPS entry of kind VIF toward the chosen \
         VIF holds that MAC; before each event the map must show the previous one."
            .to_owned(),
        if settings.kernel_neigh_gc {
            "Kernel: the neighbour GC thresholds were left as they were.".to_owned()
        } else {
            "Kernel: `net.ipv4.neigh.default.gc_thresh1/2/3` were raised to 8192/16384/32768 for \
             the run. With the defaults (128/512/1024) the kernel's neighbour GC deletes the \
             VIFs' `managed` client entries (one table for all namespaces; managed entries are \
             not exempt), and a VIF whose entry is gone stays unavailable unless the agent \
             recreates it."
                .to_owned()
        },
    ];
    for line in lines {
        writeln!(out, "- {line}")?;
    }
    for (label, path) in &settings.binaries {
        writeln!(out, "- Binary {label}: `{}`", path.display())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| round | binary | start (s) | idle CPU (%) | RSS (MiB) | link p50 / p99 (ms) | \
         from the kernel's notification p50 / p99 (ms) | all VIFs p50 / p99 (ms) | \
         neighbour p50 / p99 (ms) | timeouts link / all / neighbour |"
    )?;
    writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut problems = Vec::new();
    for round in 0..settings.rounds {
        for label in &labels {
            let Some(r) = results.get(label).and_then(|rs| rs.get(round)) else {
                continue;
            };
            let pair = |e: &Events| match (e.percentile(50.0), e.percentile(99.0)) {
                (Some(a), Some(b)) => format!("{} / {}", number(a, 1), number(b, 1)),
                _ => "—".into(),
            };
            writeln!(
                out,
                "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                round + 1,
                r.start_s.map_or_else(
                    || format!("> {}", START_CAP.as_secs()),
                    |s| format!("{s:.2}")
                ),
                r.idle_cpu_pct.map_or("—".into(), |v| format!("{v:.1}")),
                r.rss_mib.map_or("—".into(), |v| format!("{v:.1}")),
                pair(&r.link),
                pair(&r.link_kernel),
                pair(&r.link_all),
                pair(&r.neigh),
                r.link.timeouts,
                r.link_all.timeouts,
                r.neigh.timeouts,
            )?;
            for p in &r.problems {
                problems.push(format!("round {} {label}: {p}", round + 1));
            }
        }
    }
    if !problems.is_empty() {
        writeln!(out, "\nProblems seen:\n")?;
        for p in problems {
            writeln!(out, "- {}", p.replace('\n', " "))?;
        }
    }
    Ok(out)
}

/// An upper bound on a ratio.
fn upper_bound(r: f64) -> String {
    let text = ratio_text(r);
    if text.starts_with('<') {
        text
    } else {
        format!("< {text}")
    }
}

/// Two significant digits below 1 (0.0042), two decimals above, `< 0.001` below that.
fn ratio_text(r: f64) -> String {
    if r == 0.0 || r >= 1.0 {
        format!("{r:.2}")
    } else if r < 0.001 {
        "< 0.001".into()
    } else {
        let decimals = (1.0 - r.log10().floor()).max(2.0) as usize;
        format!("{r:.decimals$}")
    }
}

fn thousands(n: u16) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}
