//! BFD (RFC 5880/5881) beside the BGP sessions, with BIRD's BFD and FRR's bfdd as the
//! customer side: the sessions come Up on both sides, and when the partner's layer-2 network
//! silently stops carrying the VLAN (every link stays up), BFD — not the hold timer — takes
//! the BGP session down and the routes out; when the VLAN is carried again, both come back.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{
    Topology,
    bgp::{
        CLIENT1, CLOUD1, customer_router, established, lookup, neighbor, net, vif_config,
        write_config,
    },
    cli, wait_for,
};
use forwarder_tests::daemons::{Kind, PeerSpec, RouterDaemon};

fn bfd_state(t: &Topology) -> Option<String> {
    neighbor(t, 0)
        .ok()
        .and_then(|n| n["bfd"]["state"].as_str().map(str::to_owned))
}

fn bfd_takes_the_session_down_on_a_silent_failure(tag: &str, kind: Kind) -> Result<()> {
    let t = Topology::new(tag)?;
    let mut customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "bfd = true"))?;
    let agent = t.start_agent(common::bin())?;
    let router = customer_router(&t, &agent, kind, |p| p.bfd(), &[net("192.168.50.0/24")])?;
    ensure!(
        wait_for(Duration::from_secs(20), || established(&t, 0)
            && bfd_state(&t).as_deref() == Some("up")
            && router
                .bfd_state(CLOUD1)
                .is_ok_and(|s| s.as_deref() == Some("Up"))),
        "BFD never came Up: agent {:?}, {kind} {:?}\n{}",
        neighbor(&t, 0).map(|n| n["bfd"].clone()),
        router.bfd_state(CLOUD1),
        agent.log_text()
    );
    // Both sides end their Poll Sequences at 300 ms × 3.
    ensure!(
        wait_for(Duration::from_secs(10), || neighbor(&t, 0)
            .is_ok_and(
                |n| n["bfd"]["tx_interval_ms"] == 300 && n["bfd"]["detect_time_ms"] == 900
            )),
        "negotiated timers: {:?}",
        neighbor(&t, 0).map(|n| n["bfd"].clone())
    );
    let n = neighbor(&t, 0)?;
    println!("{kind}: BFD up, agent side {}", n["bfd"]);
    let text = cli(&t.socket(), &["bgp", "neighbors"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(
        text.contains("BFD") && text.contains(" up "),
        "bgp neighbors shows no BFD state:\n{text}"
    );
    ensure!(
        wait_for(Duration::from_secs(10), || lookup(&t, "192.168.50.10")
            .is_ok_and(|l| !l["next_hop_id"].is_null())),
        "the customer's prefix never reached the map"
    );
    let count_before = n["established_count"].clone();

    // The partner's network stops carrying VLAN 100; every link stays up.
    customer.cut(100)?;
    let cut_at = Instant::now();
    ensure!(
        wait_for(Duration::from_secs(20), || neighbor(&t, 0)
            .is_ok_and(|n| n["state"] != "Established")),
        "the session stayed up: {:?}",
        neighbor(&t, 0)
    );
    let down_after = cut_at.elapsed();
    let n = neighbor(&t, 0)?;
    println!("{kind}: session down {down_after:?} after the cut: {n}");
    let error = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("BFD Down") && error.contains("control detection time expired"),
        "the session went down, but not by BFD: {error}"
    );
    ensure!(
        n["bfd"]["last_down"] == "control detection time expired",
        "{}",
        n["bfd"]
    );
    ensure!(
        wait_for(Duration::from_secs(5), || lookup(&t, "192.168.50.10")
            .is_ok_and(|l| l["next_hop_id"].is_null())),
        "the customer's prefix stayed in the map: {:?}",
        lookup(&t, "192.168.50.10")
    );

    // Carried again: BFD and the session come back by themselves.
    customer.mend(100)?;
    ensure!(
        wait_for(Duration::from_secs(40), || established(&t, 0)
            && bfd_state(&t).as_deref() == Some("up")),
        "not back after the VLAN returned: {:?}\n{}",
        neighbor(&t, 0),
        agent.log_text()
    );
    let n = neighbor(&t, 0)?;
    ensure!(
        n["established_count"].as_u64() > count_before.as_u64()
            && n["bfd"]["up_count"].as_u64() >= Some(2),
        "{n}"
    );
    Ok(())
}

#[test]
fn bird_bfd_takes_the_session_down_on_a_silent_failure() -> Result<()> {
    bfd_takes_the_session_down_on_a_silent_failure("bfdbird", Kind::Bird)
}

#[test]
fn frr_bfd_takes_the_session_down_on_a_silent_failure() -> Result<()> {
    bfd_takes_the_session_down_on_a_silent_failure("bfdfrr", Kind::Frr)
}

/// A router that does not run BFD: the session is up all the same (BFD stays Down and
/// changes nothing), as RFC 5882 asks of a client whose BFD never came up.
#[test]
fn a_router_without_bfd_keeps_its_session() -> Result<()> {
    let t = Topology::new("bfdnone")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "bfd = true"))?;
    let agent = t.start_agent(common::bin())?;
    let _router = customer_router(&t, &agent, Kind::Bird, |p| p, &[net("192.168.50.0/24")])?;
    // Settled (a connection collision may replace the first session in its first second).
    ensure!(
        wait_for(Duration::from_secs(20), || neighbor(&t, 0)
            .is_ok_and(
                |n| n["state"] == "Established" && n["uptime_seconds"].as_u64() >= Some(2)
            )),
        "{:?}",
        neighbor(&t, 0)
    );
    let count = neighbor(&t, 0)?["established_count"].clone();
    // Several detection times later: still the same session, BFD still down.
    std::thread::sleep(Duration::from_secs(3));
    let n = neighbor(&t, 0)?;
    ensure!(
        n["state"] == "Established"
            && n["established_count"] == count
            && n["bfd"]["state"] == "down"
            && n["bfd"]["up_count"] == 0,
        "{n}"
    );
    Ok(())
}

/// The agent restarted with BFD on. On SIGTERM the agent hands every Up BFD session to the
/// data plane, which answers the router's BFD packets until the next agent takes them
/// over: the router sees neither BFD nor (graceful restart) BGP fail, and no ping is lost.
/// SIGKILL leaves no time for that: the router's BFD goes down after its detection time and
/// it drops our routes until the agent is back (measured; the README gives the figures).
/// Both come back by themselves.
fn restart_with_bfd(tag: &str, kind: Kind) -> Result<()> {
    let t = Topology::new(tag)?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "bfd = true"))?;
    let mut agent = t.start_agent(common::bin())?;
    let router = RouterDaemon::start_with(
        kind,
        &t.rtr,
        CLIENT1,
        &[PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512).bfd()],
        &[net("192.168.50.0/24")],
        forwarder_tests::daemons::GracefulRestart::On,
    )?;
    let converged = |t: &Topology| {
        wait_for(Duration::from_secs(30), || {
            established(t, 0)
                && bfd_state(t).as_deref() == Some("up")
                && neighbor(t, 0).is_ok_and(|n| n["stale_routes"] == 0)
                && lookup(t, "192.168.50.10").is_ok_and(|l| !l["next_hop_id"].is_null())
                && common::sh(&t.rtr, "ip route show 10.0.1.0/24")
                    .is_ok_and(|r| !r.trim().is_empty())
        })
    };
    ensure!(converged(&t), "not converged: {:?}", neighbor(&t, 0));
    let mut lost = Vec::new();
    for term in [true, false] {
        let ((sent, received), ()) = t.ping_during(80, || {
            if term {
                let status = agent.terminate()?;
                ensure!(status.success(), "SIGTERM: {status}");
            } else {
                agent.kill()?;
            }
            std::thread::sleep(Duration::from_millis(500));
            agent = t.start_agent(common::bin())?;
            Ok(())
        })?;
        let how = if term { "SIGTERM" } else { "SIGKILL" };
        println!("{kind} with BFD, agent {how} + restart: {received}/{sent} pings");
        lost.push((how, sent - received));
        ensure!(
            converged(&t),
            "not back after {how}: {:?}\n{:?}",
            neighbor(&t, 0),
            router.bfd_state(CLOUD1)
        );
        ensure!(
            router
                .bfd_state(CLOUD1)
                .is_ok_and(|s| s.as_deref() == Some("Up")),
            "{kind}'s BFD not Up again after {how}: {:?}",
            router.bfd_state(CLOUD1)
        );
        if term {
            // Between the two agents, the data plane answered the router's BFD (the
            // counters are pinned: they outlive the agent).
            let stats = common::cli_json(&t.socket(), &["stats"])?;
            ensure!(
                stats["passes"]["bfd_answered"].as_u64() > Some(0),
                "the data plane answered no BFD packet: {}",
                stats["passes"]
            );
        }
    }
    println!("{kind} with BFD: pings lost across agent restarts {lost:?}");
    ensure!(
        lost[0].1 == 0,
        "{kind} lost {} of 80 pings across SIGTERM with BFD",
        lost[0].1
    );
    Ok(())
}

#[test]
fn bird_bfd_comes_back_after_agent_restarts() -> Result<()> {
    restart_with_bfd("bfdrsbird", Kind::Bird)
}

#[test]
fn frr_bfd_comes_back_after_agent_restarts() -> Result<()> {
    restart_with_bfd("bfdrsfrr", Kind::Frr)
}
