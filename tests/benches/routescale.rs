//! Route scale: 1,000,000 static routes in the config file (and 100,000 for comparison), the
//! `forwarder agent` binary under test started in a gateway namespace with its two ports.
//! Per round: seconds from spawning the agent until `forwarder status` counts every route
//! installed, the agent's RSS then, and the route maps' memory as the kernel reports it
//! (`memlock` of the pinned maps' fdinfo). Rounds alternate the two sizes; each starts from
//! nothing (new namespaces, no pins, no state) and ends with SIGKILL and the removal of it
//! all.
//!
//! Environment: `FORWARDER_BIN` (required), `FORWARDER_BENCH_SCALE_ROUNDS` (5). Prints a
//! Markdown section on stdout (BENCHMARKS.md), progress on stderr. Needs root.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use forwarder_tests::{
    NetNs,
    bench::{kill_agent, private_agent, route_maps_mib, rss_mib, spawn_agent},
    fixture::Fixture,
    median_min_max, require_root,
    topology::{TempDir, cli_json, sh},
    veth,
};

const SIZES: [u32; 2] = [100_000, 1_000_000];

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routescale bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One round's figures.
struct Round {
    seconds: f64,
    rss_mib: f64,
    map_mib: f64,
}

fn config(dir: &Path, pin_dir: &Path, tag: &str, routes: u32) -> String {
    // /32s from 11.0.0.0 up, toward the VPC attachment (always a usable next hop).
    let mut fixture = private_agent(Fixture::design("10.0.0.0/16"), dir, pin_dir, tag);
    for i in 0..routes {
        let prefix = format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000u32 + i));
        fixture = fixture.static_route("bgw-1", &prefix, "att-a");
    }
    fixture.toml()
}

fn round(bin: &Path, routes: u32, n: usize) -> Result<Round> {
    let gw = NetNs::new("scgw")?;
    let cust = NetNs::new("sccust")?;
    let vpc = NetNs::new("scvpc")?;
    veth(&gw, "hc1", &cust, "trunk0")?;
    veth(&gw, "ul0", &vpc, "eth0")?;
    sh(&gw, "ip addr add 172.31.0.1/24 dev ul0")?;
    sh(&vpc, "ip addr add 172.31.0.2/24 dev eth0")?;
    let dir = TempDir::new(&format!("scale{n}"))?;
    let tag = format!("sc{}x{n}", std::process::id());
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let config_path = dir.0.join("forwarder.toml");
    std::fs::write(&config_path, config(&dir.0, &pin_dir, &tag, routes))?;
    let started = Instant::now();
    let mut child = spawn_agent(bin, &gw, &config_path, Stdio::null())?;
    let socket = dir.0.join("sock");
    let want = u64::from(routes) + 1;
    let result = loop {
        let installed = cli_json(bin, &socket, &["status"])
            .ok()
            .and_then(|s| s["gateways"][0]["installed"].as_u64())
            .unwrap_or(0);
        if installed >= want {
            break Ok(Round {
                seconds: started.elapsed().as_secs_f64(),
                rss_mib: rss_mib(child.id()),
                map_mib: route_maps_mib(&pin_dir),
            });
        }
        if started.elapsed() > Duration::from_secs(300) {
            break Err(anyhow::anyhow!("{installed} of {want} routes after 300 s"));
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Its VIF-less run made no control namespaces; the pins go.
    kill_agent(&mut child, &tag, &[], &pin_dir);
    result
}

fn bench() -> Result<()> {
    require_root()?;
    let bin = PathBuf::from(std::env::var("FORWARDER_BIN").context("FORWARDER_BIN is not set")?);
    let rounds: usize = match std::env::var("FORWARDER_BENCH_SCALE_ROUNDS") {
        Ok(v) => v.parse().context("FORWARDER_BENCH_SCALE_ROUNDS")?,
        Err(_) => 5,
    };
    let mut results: Vec<Vec<Round>> = SIZES.iter().map(|_| Vec::new()).collect();
    let mut problems = Vec::new();
    for n in 0..rounds {
        for (i, size) in SIZES.iter().enumerate() {
            match round(&bin, *size, n) {
                Ok(r) => {
                    eprintln!(
                        "routescale bench: {size} routes, round {}: {:.2} s, RSS {:.0} MiB, map {:.0} MiB",
                        n + 1,
                        r.seconds,
                        r.rss_mib,
                        r.map_mib
                    );
                    results[i].push(r);
                }
                Err(e) => {
                    eprintln!("routescale bench: {size} routes, round {}: {e:#}", n + 1);
                    problems.push(format!("{size} routes, round {}: {e:#}", n + 1));
                }
            }
        }
    }
    let mut out = String::from("## Route scale: static routes from the config file\n\n");
    out.push_str("| routes | rounds | spawn → all in the map (s) | agent RSS then (MiB) | route maps memory (MiB, kernel's memlock: trie and /24 shortcuts) |\n|---:|---:|---:|---:|---:|\n");
    for (size, done) in SIZES.iter().zip(&results) {
        writeln!(
            out,
            "| {size} | {} of {rounds} | {} | {} | {} |",
            done.len(),
            median_min_max(done.iter().map(|r| r.seconds).collect(), 2),
            median_min_max(done.iter().map(|r| r.rss_mib).collect(), 0),
            median_min_max(done.iter().map(|r| r.map_mib).collect(), 0),
        )?;
    }
    out.push_str("\nMedian (min–max). Each round: `[[static_route]]` /32s from 11.0.0.0 toward the VPC attachment in the config file (1,000,000 routes: 83 MB of TOML), the agent spawned with `nsenter` into a new gateway namespace with its two ports and nothing pinned, `forwarder --json status` polled every 100 ms until every route is installed; RSS from `/proc/PID/status`; the maps' memory (the trie `ROUTES` and its /24 shortcuts `ROUTES24`, which /32s do not get: they split their /24s) from `bpftool map show pinned`. The two sizes alternate.\n");
    for p in problems {
        writeln!(out, "\n- Problem: {p}")?;
    }
    print!("{out}");
    Ok(())
}
