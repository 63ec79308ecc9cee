//! Failover benchmark: one customer with two connections, the IDC behind both routers, and
//! a probe stream each way between VPC and IDC, 1,000 probes per second. BIRD on hc-1
//! (vif-100) marks its routes `64512:7300` (high preference), FRR on hc-2 (vif-200) sends
//! them plain, so vif-100 is the preferred path. Each round breaks the preferred path one
//! way, waits until the streams flow again (over vif-200), repairs it, and waits until the
//! gateway is back on vif-100 and the streams flow; it records what each stream lost in
//! both phases.
//!
//! Failures (on the preferred path, the BIRD side):
//! - link down: the customer router's trunk port down (the gateway's port loses carrier);
//! - NOTIFICATION: BIRD disables the session (Cease);
//! - blackhole, BFD: the partner's network stops carrying VLAN 100, links up (BFD on both
//!   VIFs and both routers, 300 ms × 3);
//! - blackhole, hold timer: the same without BFD; the hold time is 9 s.
//!
//! Figures: outage = probes lost × 1 ms, one stream per direction (each also echoed, to see
//! when it flows again). VPC → IDC is the gateway's part (its route moves); IDC → VPC is
//! the customer routers' (BIRD's kernel route to the VPC goes, and its floating route via
//! the FRR router takes over). "gateway moved": from the failure to `forwarder lookup`
//! naming vif-200 (polled every 20 ms).
//!
//! Topology: DESIGN §6's with a second connection (hc2 ↔ rtr2) and the IDC bridged to both
//! routers (`Topology::idc_behind_both`).
//!
//! Environment: `FORWARDER_BIN` (required), `FORWARDER_BENCH_FAILOVER_ROUNDS` (10). Prints a
//! Markdown section on stdout (BENCHMARKS.md), progress on stderr. Needs root.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use forwarder_tests::{
    CustomerRouter, NetNs,
    daemons::{Kind, PathAttrs, PeerSpec, RouterDaemon},
    fixture::Vif,
    median_min_max,
    probe::{Losses, Probe},
    require_root,
    topology::{Topology, cli_json, sh, wait_for},
};
use ipnet::Ipv4Net;

const CLOUD_A: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);
const CLOUD_B: Ipv4Addr = Ipv4Addr::new(169, 254, 30, 1);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(169, 254, 30, 2);
const VPC: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const IDC: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const RATE: u32 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    LinkDown,
    Notification,
    BlackholeBfd,
    BlackholeHold,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Self::LinkDown => "link down (customer port)",
            Self::Notification => "NOTIFICATION (Cease) from the customer",
            Self::BlackholeBfd => "silent blackhole, links up, with BFD",
            Self::BlackholeHold => "silent blackhole, links up, without BFD (hold 9 s)",
        }
    }
}

/// One round's figures: losses (VPC → IDC, IDC → VPC) while failing and recovering.
#[derive(Clone, Copy, Debug)]
struct Round {
    fail: (Losses, Losses),
    recover: (Losses, Losses),
    moved: Option<Duration>,
}

/// A stream each way, each echoed back (the echo only tells that the stream flows).
struct Probes {
    out: Probe,
    back: Probe,
}

impl Probes {
    fn next(&self) -> (u64, u64) {
        (self.out.next_seq(), self.back.next_seq())
    }

    /// Waits until both streams have flowed for `count` probes in a row, all sent after
    /// `since`, up to `timeout`; returns where each settled range ends.
    fn until_flowing(
        &self,
        since: (u64, u64),
        count: u64,
        timeout: Duration,
    ) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let end = (
                self.out.settled(Duration::from_millis(200)),
                self.back.settled(Duration::from_millis(200)),
            );
            if end.0 >= since.0 + count
                && end.1 >= since.1 + count
                && self.out.all_back(end.0, count)
                && self.back.all_back(end.1, count)
            {
                return Ok(end);
            }
            if Instant::now() > deadline {
                bail!("the probe streams did not flow within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn losses(&self, from: (u64, u64), to: (u64, u64)) -> (Losses, Losses) {
        (
            self.out.losses(from.0, to.0),
            self.back.losses(from.1, to.1),
        )
    }
}

struct Setup<'t> {
    t: &'t Topology,
    bin: PathBuf,
    bfd: bool,
    customer: CustomerRouter<'t>,
    bird: RouterDaemon<'t>,
    // Kept running for the setup's life.
    _frr: RouterDaemon<'t>,
    _frr_customer: CustomerRouter<'t>,
    _agent: forwarder_tests::topology::Agent,
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    require_root()?;
    let bin = PathBuf::from(std::env::var("FORWARDER_BIN").context("FORWARDER_BIN is not set")?);
    let rounds: usize = match std::env::var("FORWARDER_BENCH_FAILOVER_ROUNDS") {
        Ok(v) => v.parse().context("FORWARDER_BENCH_FAILOVER_ROUNDS")?,
        Err(_) => 10,
    };
    let mut results: Vec<(Failure, Vec<Round>, Vec<String>)> = Vec::new();
    for (bfd, failures) in [
        (
            true,
            &[
                Failure::LinkDown,
                Failure::Notification,
                Failure::BlackholeBfd,
            ][..],
        ),
        (false, &[Failure::BlackholeHold][..]),
    ] {
        let t = Topology::new("failover")?;
        let rtr2 = t.second_connection()?;
        let mut setup = Setup::start(&t, &rtr2, &bin, bfd)?;
        let probes = Probes {
            out: Probe::start(&t.vpc, VPC, &t.idc, IDC, RATE, 7_400)?,
            back: Probe::start(&t.idc, IDC, &t.vpc, VPC, RATE, 7_401)?,
        };
        for &failure in failures {
            let mut done = Vec::new();
            let mut problems = Vec::new();
            for i in 0..rounds {
                match setup.round(&probes, failure) {
                    Ok(r) => {
                        eprintln!(
                            "failover bench: {} round {}: lost {} / {} (VPC → IDC / IDC → VPC), on recovery {} / {}, gateway moved {:?}",
                            failure.name(),
                            i + 1,
                            r.fail.0.forward,
                            r.fail.1.forward,
                            r.recover.0.forward,
                            r.recover.1.forward,
                            r.moved
                        );
                        done.push(r);
                    }
                    Err(e) => {
                        eprintln!("failover bench: {} round {}: {e:#}", failure.name(), i + 1);
                        problems.push(format!("round {}: {e:#}", i + 1));
                        setup.repair(failure);
                    }
                }
            }
            results.push((failure, done, problems));
        }
    }
    print!("{}", report(&results, rounds)?);
    Ok(())
}

impl<'t> Setup<'t> {
    fn start(t: &'t Topology, rtr2: &'t NetNs, bin: &Path, bfd: bool) -> Result<Self> {
        let customer = t.customer_router_bgp()?;
        let frr_customer = CustomerRouter::new(rtr2, "trunk0", &[(200, "169.254.30.2/30")])?;
        t.idc_behind_both(rtr2)?;
        let with_bfd = |v: Vif| if bfd { v.set("bfd", "true") } else { v };
        let fixture = t
            .fixture()
            .agent("bgp_hold_time", "9")
            .agent("bgp_connect_retry", "1")
            .connection("hc-2", "hc2")
            .vif(with_bfd(
                Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
                    .peer("169.254.10.2", "169.254.10.1"),
            ))
            .vif(with_bfd(
                Vif::bgp("vif-200", "hc-2", 200, "bgw-1", 65001)
                    .peer("169.254.30.2", "169.254.30.1"),
            ));
        t.write_fixture(&fixture)?;
        let agent = t.start_agent(bin)?;
        let idc: Ipv4Net = "192.168.50.0/24".parse()?;
        let peer = |local, cloud| {
            let p = PeerSpec::new(local, cloud, 65001, 64512);
            if bfd { p.bfd() } else { p }
        };
        let bird = RouterDaemon::start(
            Kind::Bird,
            &t.rtr,
            CLIENT_A,
            &[peer(CLIENT_A, CLOUD_A)],
            &[idc],
        )?;
        let frr = RouterDaemon::start(
            Kind::Frr,
            rtr2,
            CLIENT_B,
            &[peer(CLIENT_B, CLOUD_B)],
            &[idc],
        )?;
        bird.wait_established(CLOUD_A, Duration::from_secs(60))?;
        frr.wait_established(CLOUD_B, Duration::from_secs(60))?;
        bird.set_path(
            idc,
            PathAttrs {
                communities: vec![(64512, 7300)],
                ..PathAttrs::default()
            },
        )?;
        let setup = Self {
            t,
            bin: bin.to_owned(),
            bfd,
            customer,
            bird,
            _frr: frr,
            _frr_customer: frr_customer,
            _agent: agent,
        };
        if !wait_for(Duration::from_secs(60), || {
            setup.via().starts_with("vif vif-100 ")
        }) {
            bail!("the gateway never chose vif-100: {:?}", setup.via());
        }
        Ok(setup)
    }

    /// Both VIFs' BFD sessions Up at the fast rate (300 ms × 3 = 900 ms detection) as the
    /// agent sees them, and BIRD's Up too.
    fn bfd_ready(&self) -> bool {
        let Ok(n) = cli_json(&self.bin, &self.t.socket(), &["bgp", "neighbors"]) else {
            return false;
        };
        n.as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|s| s["bfd"]["state"] == "up" && s["bfd"]["detect_time_ms"] == 900)
        }) && self
            .bird
            .bfd_state(CLOUD_A)
            .is_ok_and(|s| s.is_some_and(|s| s.eq_ignore_ascii_case("up")))
    }

    /// Drop counters of the gateway, by reason.
    fn drops(&self) -> std::collections::BTreeMap<String, u64> {
        cli_json(&self.bin, &self.t.socket(), &["stats"])
            .ok()
            .and_then(|s| {
                s["drops"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    fn drops_since(&self, before: &std::collections::BTreeMap<String, u64>) -> String {
        let now = self.drops();
        let moved: Vec<String> = now
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
                (d > 0).then(|| format!("{k} {d}"))
            })
            .collect();
        if moved.is_empty() {
            "none".into()
        } else {
            moved.join(", ")
        }
    }

    fn via(&self) -> String {
        cli_json(
            &self.bin,
            &self.t.socket(),
            &["lookup", "--gateway", "bgw-1", "192.168.50.10"],
        )
        .ok()
        .and_then(|l| l["next_hop"].as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    fn fail(&mut self, failure: Failure) -> Result<()> {
        match failure {
            Failure::LinkDown => {
                sh(&self.t.rtr, "ip link set trunk0 down")?;
            }
            Failure::Notification => self.bird.shutdown_peer(CLOUD_A)?,
            Failure::BlackholeBfd | Failure::BlackholeHold => self.customer.cut(100)?,
        }
        Ok(())
    }

    fn repair(&mut self, failure: Failure) {
        let result = match failure {
            Failure::LinkDown => sh(&self.t.rtr, "ip link set trunk0 up").map(|_| ()),
            Failure::Notification => self.bird.enable_peer(CLOUD_A),
            Failure::BlackholeBfd | Failure::BlackholeHold => self.customer.mend(100),
        };
        if let Err(e) = result {
            eprintln!("failover bench: repairing after {}: {e:#}", failure.name());
        }
    }

    fn round(&mut self, probes: &Probes, failure: Failure) -> Result<Round> {
        // Start on the preferred path with the stream flowing.
        if !wait_for(Duration::from_secs(90), || {
            self.via().starts_with("vif vif-100 ")
        }) {
            bail!("not back on vif-100: {:?}", self.via());
        }
        if self.bfd && !wait_for(Duration::from_secs(60), || self.bfd_ready()) {
            bail!("BFD not Up at 300 ms × 3 on both VIFs and at BIRD");
        }
        probes.until_flowing((0, 0), 2_000, Duration::from_secs(60))?;
        let drops = self.drops();
        let from = probes.next();
        let started = Instant::now();
        self.fail(failure)?;
        let mut moved = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.via().starts_with("vif vif-200 ") {
                moved = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let to = probes.until_flowing(from, 1_000, Duration::from_secs(60))?;
        let fail = probes.losses(from, to);
        eprintln!(
            "failover bench: gateway drops while failing: {}",
            self.drops_since(&drops)
        );
        // Repair; back on vif-100, the stream flowing for 3 s.
        let drops = self.drops();
        let from = probes.next();
        self.repair(failure);
        if !wait_for(Duration::from_secs(90), || {
            self.via().starts_with("vif vif-100 ")
        }) {
            bail!("not back on vif-100 after the repair: {:?}", self.via());
        }
        let back = probes.next();
        let to = probes.until_flowing(back, 3_000, Duration::from_secs(60))?;
        let recover = probes.losses(from, to);
        eprintln!(
            "failover bench: gateway drops while recovering: {}",
            self.drops_since(&drops)
        );
        Ok(Round {
            fail,
            recover,
            moved,
        })
    }
}

fn report(results: &[(Failure, Vec<Round>, Vec<String>)], rounds: usize) -> Result<String> {
    let ms = 1_000.0 / f64::from(RATE);
    let mut out = String::from("## Failover: two connections, one customer\n\n");
    out.push_str(
        "| failure of the preferred path (vif-100, BIRD) | rounds | outage VPC → IDC, ms | outage IDC → VPC, ms | gateway moved, ms | lost on recovery VPC → IDC / IDC → VPC (max) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (failure, done, _) in results {
        let fwd: Vec<f64> = done.iter().map(|r| r.fail.0.forward as f64 * ms).collect();
        let back: Vec<f64> = done.iter().map(|r| r.fail.1.forward as f64 * ms).collect();
        let moved: Vec<f64> = done
            .iter()
            .filter_map(|r| r.moved.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        let rec_fwd = done.iter().map(|r| r.recover.0.forward).max().unwrap_or(0);
        let rec_back = done.iter().map(|r| r.recover.1.forward).max().unwrap_or(0);
        writeln!(
            out,
            "| {} | {} of {rounds} | {} | {} | {} | {rec_fwd} / {rec_back} |",
            failure.name(),
            done.len(),
            median_min_max(fwd, 0),
            median_min_max(back, 0),
            median_min_max(moved, 0),
        )?;
    }
    out.push_str(
        "\nMedian (min–max) over the rounds. Probes: two UDP streams of 1,000 per second, VPC (10.0.1.10) → IDC (192.168.50.10) and IDC → VPC, each echoed back (the echo only tells that a stream flows again); outage = probes of that direction lost × 1 ms. VPC → IDC is the gateway's part: its route to the IDC prefix moves from vif-100 to vif-200 (the same moment its lookup changes, \"gateway moved\"). IDC → VPC is the customer routers': BIRD's own route to the VPC has to go (by its BFD, its hold timer, the NOTIFICATION or the link) before its floating route through the FRR router carries the IDC's traffic.\n\n",
    );
    out.push_str(
        "Each round starts on vif-100 with 2 s of both streams flowing, breaks the path, waits until 1 s of both has flowed again (counting the window from the failure), repairs it, and counts the window from the repair until the gateway is back on vif-100 and 3 s more have flowed. BFD: 300 ms × 3 on both VIFs and both routers (BIRD 2.0.12 `bfd on`, FRR 8.4 bfdd); hold time 9 s (`[agent] bgp_hold_time = 9`), connect retry 1 s. The four failures: `ip link set trunk0 down` on the BIRD router; `birdc disable`; the customer router's VLAN shim stops carrying VLAN 100 (`CustomerRouter::cut`), links up, with BFD and then without.\n",
    );
    for (failure, _, problems) in results {
        for p in problems {
            writeln!(out, "\n- Problem, {}: {p}", failure.name())?;
        }
    }
    Ok(out)
}
