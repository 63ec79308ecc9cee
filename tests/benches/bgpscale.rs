//! BGP ingest side by side: one BIRD sender announces 100,000 and 1,000,000 IPv4 prefixes to
//! the `forwarder agent` binary under test and to a BIRD receiver, in alternation. Reported:
//! seconds from the sender's session being Established until the last prefix is in the agent's route
//! map (`forwarder status`: installed) or in the BIRD receiver's table (`Routes: N imported`),
//! their ratio within a round, and the agent's RSS and route maps' memory then.
//!
//! The sender (`bird` in its own namespace) loads its prefixes as static routes first, with
//! both BGP sessions disabled; a round then starts a fresh receiver, enables the sender's
//! session to it (`birdc enable`), starts the clock when the sender shows it Established
//! (polled every 20 ms), and polls the receiver every 50 ms. Prefixes: /24s from
//! 11.0.0.0 up. The agent has DESIGN's BGP VIF (VLAN 100 through the customer router's VLAN
//! shim, client AS 65001, `max_prefixes` raised to 2,000,000); the BIRD receiver is a plain
//! `protocol bgp` with `import all` and no kernel protocol (the agent's "table" is its map, BIRD's
//! its RIB). Both receivers start from nothing each round.
//!
//! Environment: `FORWARDER_BIN` (required), `FORWARDER_BENCH_BGP_ROUNDS` (5;
//! `FORWARDER_BENCH_QUICK`: 1). Prints a Markdown section on stdout (BENCHMARKS.md), progress
//! on stderr. Needs root and BIRD (`cargo xtask setup` installs it).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use forwarder_tests::{
    NetNs,
    bench::{kill_agent, private_agent, route_maps_mib, rss_mib, spawn_agent},
    customer::CustomerRouter,
    fixture::{Fixture, Vif},
    median_min_max, require_root,
    topology::{TempDir, cli_json, sh, wait_for},
    veth,
};

const SIZES: [u32; 2] = [100_000, 1_000_000];
const POLL: Duration = Duration::from_millis(50);
const INGEST_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bgpscale bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A `bird` process in a namespace, with its config and control socket in `dir`.
struct Bird {
    child: Child,
    ns: String,
    ctl: PathBuf,
    log: PathBuf,
}

impl Bird {
    fn start(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let conf = dir.join(format!("{name}.conf"));
        let ctl = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&conf, config)?;
        let out = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&ctl)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning bird")?;
        let mut bird = Self {
            child,
            ns: ns.name().to_owned(),
            ctl,
            log,
        };
        let started = Instant::now();
        while bird.birdc(&["show", "status"]).is_err() {
            if let Some(status) = bird.child.try_wait()? {
                bail!("bird ({name}) exited with {status}: {}", bird.log_text());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "bird ({name}) did not answer within 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(bird)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "birdc", "-s"])
            .arg(&self.ctl)
            .args(args)
            .output()
            .context("spawning birdc")?;
        ensure!(
            out.status.success(),
            "birdc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            !text.contains("Unable to connect"),
            "birdc {}: {text}",
            args.join(" ")
        );
        Ok(text)
    }

    /// Enables `protocol` and waits until it is Established: the moment a round's clock starts
    /// (BIRD waits its `start delay time`, 5 s, before it connects; not the receiver's time).
    fn enable(&self, protocol: &str) -> Result<Instant> {
        self.birdc(&["enable", protocol])?;
        let started = Instant::now();
        loop {
            let text = self.birdc(&["show", "protocols", protocol])?;
            if text.contains("Established") {
                return Ok(Instant::now());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{protocol} not Established 60 s after enable: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Routes: N imported` of `protocol`, or 0.
    fn imported(&self, protocol: &str) -> Result<u64> {
        let text = self.birdc(&["show", "protocols", "all", protocol])?;
        Ok(text
            .lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("Routes:")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0))
    }

    /// Routes in the master table (`show route count`).
    fn routes(&self) -> Result<u64> {
        let text = self.birdc(&["show", "route", "count"])?;
        text.lines()
            .find_map(|l| {
                l.contains(" of ")
                    .then(|| l.split_whitespace().next()?.parse().ok())?
            })
            .with_context(|| format!("no count in {text:?}"))
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn sender_config(routes: u32) -> String {
    let mut c = String::from(
        "router id 10.9.0.1;\nprotocol device {}\nprotocol static originated {\n  ipv4;\n",
    );
    for i in 0..routes {
        let net = std::net::Ipv4Addr::from(0x0b00_0000u32 + (i << 8));
        writeln!(c, "  route {net}/24 blackhole;").expect("String");
    }
    c.push_str("}\n");
    c.push_str(
        "protocol bgp to_agent {\n  local 169.254.10.2 as 65001;\n  neighbor 169.254.10.1 as 64512;\n  ipv4 { import none; export all; };\n  disabled;\n}\n\
         protocol bgp to_bird {\n  local 10.9.0.1 as 65001;\n  neighbor 10.9.0.2 as 64600;\n  ipv4 { import none; export all; };\n  disabled;\n}\n",
    );
    c
}

const RECEIVER_CONFIG: &str = "router id 10.9.0.2;\nprotocol device {}\nprotocol bgp from_sender {\n  local 10.9.0.2 as 64600;\n  neighbor 10.9.0.1 as 65001;\n  ipv4 { import all; export none; };\n}\n";

/// One receiver's figures in one round.
struct Ingest {
    seconds: f64,
    /// Until the first prefix was in.
    first: f64,
    rss_mib: f64,
    map_mib: f64,
}

struct Topology {
    rtr: NetNs,
    gw: NetNs,
    _vpc: NetNs,
    rcv: NetNs,
}

fn topology() -> Result<Topology> {
    let rtr = NetNs::new("bsrtr")?;
    let gw = NetNs::new("bsgw")?;
    let vpc = NetNs::new("bsvpc")?;
    let rcv = NetNs::new("bsrcv")?;
    veth(&rtr, "trunk0", &gw, "hc1")?;
    veth(&gw, "ul0", &vpc, "eth0")?;
    veth(&rtr, "br0", &rcv, "eth0")?;
    sh(&gw, "ip addr add 172.31.0.1/24 dev ul0")?;
    sh(&vpc, "ip addr add 172.31.0.2/24 dev eth0")?;
    sh(&rtr, "ip addr add 10.9.0.1/30 dev br0")?;
    sh(&rcv, "ip addr add 10.9.0.2/30 dev eth0")?;
    Ok(Topology {
        rtr,
        gw,
        _vpc: vpc,
        rcv,
    })
}

/// A fresh agent (new state, pins and control namespace), the sender's session to it enabled:
/// seconds until `routes` prefixes (and the VPC CIDR) are installed.
fn agent_round(
    bin: &Path,
    topo: &Topology,
    sender: &Bird,
    routes: u32,
    n: usize,
) -> Result<Ingest> {
    let dir = TempDir::new(&format!("bgpscale{n}"))?;
    let tag = format!("bs{}x{n}", std::process::id());
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let socket = dir.0.join("sock");
    let fixture = private_agent(Fixture::design("10.0.1.0/24"), &dir.0, &pin_dir, &tag).vif(
        Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
            .peer("169.254.10.2", "169.254.10.1")
            .set("max_prefixes", "2000000"),
    );
    let config = dir.0.join("forwarder.toml");
    std::fs::write(&config, fixture.toml())?;
    let log = std::fs::File::create(dir.0.join("agent.log"))?;
    let mut child = spawn_agent(bin, &topo.gw, &config, log.into())?;
    let result = (|| {
        // A BGP VIF is available once its session is up; before that the agent must know the
        // client router's MAC (the VIF's control plane resolved it through the shim).
        let resolved = wait_for(Duration::from_secs(30), || {
            cli_json(bin, &socket, &["vif", "show", "vif-100"])
                .is_ok_and(|v| v["peers"][0]["client_mac"].is_string())
        });
        ensure!(resolved, "vif-100 never resolved the client router's MAC");
        let installed = || {
            cli_json(bin, &socket, &["status"])
                .ok()
                .and_then(|s| s["gateways"][0]["installed"].as_u64())
                .unwrap_or(0)
        };
        let want = u64::from(routes) + 1;
        let started = sender.enable("to_agent")?;
        let mut first = None;
        loop {
            let have = installed();
            if have > 1 && first.is_none() {
                first = Some(started.elapsed().as_secs_f64());
            }
            if have >= want {
                return Ok(Ingest {
                    seconds: started.elapsed().as_secs_f64(),
                    first: first.unwrap_or_default(),
                    rss_mib: rss_mib(child.id()),
                    map_mib: route_maps_mib(&pin_dir),
                });
            }
            ensure!(
                started.elapsed() < INGEST_TIMEOUT,
                "{have} of {want} routes installed after {INGEST_TIMEOUT:?}"
            );
            if let Some(status) = child.try_wait()? {
                bail!("the agent exited with {status}");
            }
            std::thread::sleep(POLL);
        }
    })();
    sender.birdc(&["disable", "to_agent"]).ok();
    kill_agent(&mut child, &tag, &["vif-100"], &pin_dir);
    result.map_err(|e| {
        e.context(format!(
            "agent log:\n{}",
            std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default()
        ))
    })
}

/// A fresh BIRD receiver, the sender's session to it enabled: seconds until it has imported
/// `routes` prefixes.
fn bird_round(topo: &Topology, sender: &Bird, routes: u32, n: usize) -> Result<Ingest> {
    let dir = TempDir::new(&format!("bgpscale-bird{n}"))?;
    let receiver = Bird::start(&topo.rcv, &dir.0, "receiver", RECEIVER_CONFIG)?;
    let started = sender.enable("to_bird")?;
    let mut first = None;
    let result = loop {
        let have = receiver.imported("from_sender")?;
        if have > 0 && first.is_none() {
            first = Some(started.elapsed().as_secs_f64());
        }
        if have >= u64::from(routes) {
            break Ok(Ingest {
                seconds: started.elapsed().as_secs_f64(),
                first: first.unwrap_or_default(),
                rss_mib: rss_mib(receiver.child.id()),
                map_mib: 0.0,
            });
        }
        if started.elapsed() > INGEST_TIMEOUT {
            break Err(anyhow::anyhow!(
                "{have} of {routes} imported after {INGEST_TIMEOUT:?}: {}",
                receiver.log_text()
            ));
        }
        std::thread::sleep(POLL);
    };
    sender.birdc(&["disable", "to_bird"]).ok();
    result
}

fn bench() -> Result<()> {
    require_root()?;
    let bin = PathBuf::from(std::env::var("FORWARDER_BIN").context("FORWARDER_BIN is not set")?);
    let rounds: usize = match std::env::var("FORWARDER_BENCH_BGP_ROUNDS") {
        Ok(v) => v.parse().context("FORWARDER_BENCH_BGP_ROUNDS")?,
        Err(_) if std::env::var_os("FORWARDER_BENCH_QUICK").is_some() => 1,
        Err(_) => 5,
    };
    let topo = topology()?;
    let _shim = CustomerRouter::new(&topo.rtr, "trunk0", &[(100, "169.254.10.2/30")])?;
    // [size][0 agent, 1 BIRD]
    let mut results: Vec<[Vec<Ingest>; 2]> =
        SIZES.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    let mut ratios: Vec<Vec<f64>> = SIZES.iter().map(|_| Vec::new()).collect();
    let mut problems = Vec::new();
    let mut load_seconds: Vec<Vec<f64>> = SIZES.iter().map(|_| Vec::new()).collect();
    for (s, size) in SIZES.iter().enumerate() {
        let dir = TempDir::new(&format!("bgpscale-sender{size}"))?;
        let loading = Instant::now();
        let sender = Bird::start(&topo.rtr, &dir.0, "sender", &sender_config(*size))?;
        let loaded = wait_for(INGEST_TIMEOUT, || {
            sender.routes().is_ok_and(|n| n >= u64::from(*size))
        });
        ensure!(
            loaded,
            "the sender never loaded its {size} routes: {}",
            sender.log_text()
        );
        load_seconds[s].push(loading.elapsed().as_secs_f64());
        for n in 0..rounds {
            let order: [usize; 2] = if n % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut round: [Option<f64>; 2] = [None, None];
            for who in order {
                let outcome = if who == 0 {
                    agent_round(&bin, &topo, &sender, *size, n)
                } else {
                    bird_round(&topo, &sender, *size, n)
                };
                let name = ["agent", "BIRD"][who];
                match outcome {
                    Ok(r) => {
                        eprintln!(
                            "bgpscale bench: {size} prefixes, round {}, {name}: {:.2} s (first after {:.2} s), RSS {:.0} MiB, map {:.0} MiB",
                            n + 1,
                            r.seconds,
                            r.first,
                            r.rss_mib,
                            r.map_mib
                        );
                        round[who] = Some(r.seconds);
                        results[s][who].push(r);
                    }
                    Err(e) => {
                        eprintln!(
                            "bgpscale bench: {size} prefixes, round {}, {name}: {e:#}",
                            n + 1
                        );
                        problems.push(format!("{size} prefixes, round {}, {name}: {e:#}", n + 1));
                    }
                }
                // Let the sender settle (its session down, withdrawals done) before the next.
                std::thread::sleep(Duration::from_secs(1));
            }
            if let [Some(agent), Some(bird)] = round {
                ratios[s].push(agent / bird);
            }
        }
    }
    let mut out =
        String::from("## BGP ingest: one BIRD sender, the agent against a BIRD receiver\n\n");
    out.push_str("| prefixes | rounds (agent / BIRD) | agent: Established → all in the map (s) | BIRD receiver: Established → all imported (s) | agent / BIRD | first prefix in, agent / BIRD (s) | agent RSS then (MiB) | route maps memory (MiB, trie and /24 shortcuts) | BIRD receiver RSS then (MiB) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (s, size) in SIZES.iter().enumerate() {
        let [agent, bird] = &results[s];
        writeln!(
            out,
            "| {size} | {} / {} of {rounds} | {} | {} | {} | {} / {} | {} | {} | {} |",
            agent.len(),
            bird.len(),
            median_min_max(agent.iter().map(|r| r.seconds).collect(), 2),
            median_min_max(bird.iter().map(|r| r.seconds).collect(), 2),
            median_min_max(ratios[s].clone(), 2),
            median_min_max(agent.iter().map(|r| r.first).collect(), 2),
            median_min_max(bird.iter().map(|r| r.first).collect(), 2),
            median_min_max(agent.iter().map(|r| r.rss_mib).collect(), 0),
            median_min_max(agent.iter().map(|r| r.map_mib).collect(), 0),
            median_min_max(bird.iter().map(|r| r.rss_mib).collect(), 0),
        )?;
    }
    writeln!(
        out,
        "\nMedian (min–max); the ratio is taken within a round. The sender (BIRD {}) held the prefixes as static routes (/24s from 11.0.0.0; loading them took {} s for 100k and {} s for 1M, not counted), both its sessions disabled; each round starts a fresh receiver, runs `birdc enable` on the sender's session to it, starts the clock when the sender shows that session Established (polled every 20 ms; BIRD waits its 5 s `start delay time` before connecting) and polls the receiver every 50 ms: the agent's `forwarder --json status` (installed, in the route map; the route maps' memory then counts the trie and the /24 shortcuts written by that time) or the BIRD receiver's `birdc show protocols all` (`Routes: N imported`). Which receiver goes first alternates. BGP timers are both daemons' defaults. The agent: DESIGN's BGP VIF through the customer router's VLAN shim (`max_prefixes = 2000000`), started with `nsenter` with nothing pinned; the BIRD receiver: `import all`, no kernel protocol.",
        bird_version(),
        median_min_max(load_seconds[0].clone(), 1),
        median_min_max(load_seconds[1].clone(), 1),
    )?;
    for p in problems {
        writeln!(out, "\n- Problem: {}", p.replace('\n', " "))?;
    }
    print!("{out}");
    Ok(())
}

fn bird_version() -> String {
    Command::new("bird")
        .arg("--version")
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.split_whitespace().last().unwrap_or("?").to_owned()
        })
        .unwrap_or_else(|_| "?".into())
}
