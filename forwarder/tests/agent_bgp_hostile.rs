//! A customer router that misbehaves, scripted byte by byte from the router namespace
//! (`forwarder_tests::speaker`): a flood of rejected prefixes, a peer that stops reading and
//! asks for the table again and again, hold time 0, covering martians. The agent stays
//! within its memory bounds and keeps the session rules.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use common::{
    Topology,
    bgp::{CLIENT1, CLOUD1, neighbor, net, vif_config, write_config},
    cli_json, wait_for,
};
use forwarder_tests::speaker::{self, Scripted};
use ipnet::Ipv4Net;

const ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

/// The agent's resident memory, KiB.
fn rss_kib(agent: &common::Agent) -> Result<u64> {
    let pid = agent.child.as_ref().context("agent not running")?.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

fn last_error(t: &Topology) -> String {
    neighbor(t, 0)
        .map(|n| n["last_error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// 1M /32s, all rejected (longer than max_prefix_len): with max_prefixes = 100 the session
/// is closed with Cease 6/1 at the 101st, and the agent grows by less than 10 MiB.
#[test]
fn a_million_rejected_prefixes_hit_max_prefixes_at_101() -> Result<()> {
    let t = Topology::new("hostmax")?;
    let _customer = t.customer_router_bgp()?;
    write_config(
        &t,
        &vif_config(false, "max_prefixes = 100\nmax_prefix_len = 24"),
    )?;
    let agent = t.start_agent(common::bin())?;
    let mut peer = Scripted::connect(&t.rtr, CLIENT1, CLOUD1, 65001)?;
    peer.establish(90, ID)?;
    ensure!(
        wait_for(Duration::from_secs(10), || neighbor(&t, 0)
            .is_ok_and(|n| n["state"] == "Established")),
        "{:?}",
        neighbor(&t, 0)
    );
    let before = rss_kib(&agent)?;
    let hosts: Vec<Ipv4Net> = (0..1_000_000u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i), 32).expect("prefix"))
        .collect();
    let sent = peer.announce(&hosts);
    ensure!(
        wait_for(Duration::from_secs(10), || last_error(&t).contains("6/1")),
        "no Cease 6/1 after {sent} UPDATEs: {:?}\n{}",
        neighbor(&t, 0),
        agent.log_text()
    );
    let error = last_error(&t);
    println!("after {sent} UPDATEs sent: {error}");
    ensure!(error.contains("prefix 101 refused"), "{error}");
    let after = rss_kib(&agent)?;
    println!(
        "agent RSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    ensure!(
        after.saturating_sub(before) < 10 * 1024,
        "agent grew by {} KiB",
        after - before
    );
    Ok(())
}

/// A peer that never reads and sends 10,000 ROUTE-REFRESH against a 50,000-prefix export:
/// the requests are coalesced, the session is closed by the send hold timer within the hold
/// time (9 s here), and the agent grows by less than 16 MiB.
#[test]
fn a_peer_that_stops_reading_is_closed_and_refreshes_do_not_pile_up() -> Result<()> {
    let t = Topology::new("hostrr")?;
    let _customer = t.customer_router_bgp()?;
    let mut statics = String::new();
    for i in 0..50_000u32 {
        let prefix = Ipv4Net::new(Ipv4Addr::from(0x6400_0000 + (i << 8)), 24).expect("prefix");
        statics.push_str(&format!(
            "[[static_route]]\nborder_gateway = \"bgw-1\"\nprefix = \"{prefix}\"\nvia = \"att-a\"\n"
        ));
    }
    write_config(&t, &format!("{}{statics}", vif_config(false, "")))?;
    let agent = t.start_agent(common::bin())?;
    let mut peer = Scripted::connect(&t.rtr, CLIENT1, CLOUD1, 65001)?;
    peer.establish(9, ID)?;
    ensure!(
        wait_for(Duration::from_secs(10), || neighbor(&t, 0)
            .is_ok_and(
                |n| n["state"] == "Established" && n["prefixes_advertised"].as_u64() > Some(50_000)
            )),
        "{:?}",
        neighbor(&t, 0)
    );
    let before = rss_kib(&agent)?;
    let started = std::time::Instant::now();
    // Never read again; write 10,000 requests (a keepalive every 100, so our hold timer is
    // not what ends it).
    let mut sent = 0;
    for i in 0..10_000 {
        if peer.send(&speaker::route_refresh()).is_err() {
            break;
        }
        if i % 100 == 0 && peer.send(&speaker::keepalive()).is_err() {
            break;
        }
        sent += 1;
    }
    let peak = rss_kib(&agent)?;
    ensure!(
        wait_for(Duration::from_secs(15), || neighbor(&t, 0)
            .is_ok_and(|n| n["state"] != "Established")),
        "a peer that reads nothing is still Established: {:?}",
        neighbor(&t, 0)
    );
    let closed_after = started.elapsed();
    let n = neighbor(&t, 0)?;
    let after = rss_kib(&agent)?;
    println!(
        "{sent} ROUTE-REFRESH sent; closed after {closed_after:?}: {}; refreshes {} coalesced {}; \
         RSS {before} -> peak {peak} -> {after} KiB",
        n["last_error"], n["refreshes"], n["refreshes_coalesced"]
    );
    // Usually the send hold timer. But the writes above end in well under a second, so the
    // peer falls silent too, and its kernel can take a few bytes now and then although the
    // program reads nothing (one CI run, with the peer still sending keepalives, stayed
    // Established 15 s after the writes): each byte taken restarts the send hold timer, as
    // RFC 9687 says, and then our hold timer ends the session at the same 9 s. Either way it
    // is closed in time.
    let error = last_error(&t);
    ensure!(
        error.contains("send hold timer")
            || error.contains("send queue")
            || error.contains("hold timer expired"),
        "{n}"
    );
    ensure!(
        closed_after < Duration::from_secs(9 + 3),
        "{closed_after:?}"
    );
    ensure!(
        peak.max(after).saturating_sub(before) < 16 * 1024,
        "agent grew by {} KiB",
        peak.max(after) - before
    );
    Ok(())
}

/// Hold time 0 (no keepalives: a dead peer is never noticed) is refused with OPEN error
/// 2/6 unless the VIF allows it.
#[test]
fn hold_time_zero_is_refused_unless_allowed() -> Result<()> {
    let t = Topology::new("hosthold")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, ""))?;
    let mut agent = t.start_agent(common::bin())?;
    let mut peer = Scripted::connect(&t.rtr, CLIENT1, CLOUD1, 65001)?;
    peer.send(&speaker::open(65001, 0, ID))?;
    ensure!(
        peer.notification()? == Some((2, 6)),
        "hold time 0 not refused with 2/6"
    );
    ensure!(
        wait_for(Duration::from_secs(5), || last_error(&t)
            .contains("hold time 0")),
        "{:?}",
        neighbor(&t, 0)
    );

    agent.kill()?;
    write_config(&t, &vif_config(false, "allow_hold_time_zero = true"))?;
    let _agent = t.start_agent(common::bin())?;
    let mut peer = Scripted::connect(&t.rtr, CLIENT1, CLOUD1, 65001)?;
    peer.establish(0, ID)?;
    ensure!(
        wait_for(Duration::from_secs(10), || {
            neighbor(&t, 0).is_ok_and(|n| n["state"] == "Established" && n["hold_time"] == 0)
        }),
        "{:?}",
        neighbor(&t, 0)
    );
    Ok(())
}

/// Prefixes that cover a martian range are martians too; each is listed with its reason,
/// and none reaches the map.
#[test]
fn covering_martians_are_rejected_and_listed() -> Result<()> {
    let t = Topology::new("hostmart")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "max_prefix_len = 28"))?;
    let _agent = t.start_agent(common::bin())?;
    let mut peer = Scripted::connect(&t.rtr, CLIENT1, CLOUD1, 65001)?;
    peer.establish(90, ID)?;
    let offered = [
        ("128.0.0.0/1", "martian (overlaps 169.254.0.0/16)"),
        ("0.0.0.0/5", "martian (overlaps 0.0.0.0/8)"),
        ("224.0.0.0/3", "martian (overlaps 224.0.0.0/4)"),
        // 127.0.0.0/7 as a network.
        ("126.0.0.0/7", "martian (overlaps 127.0.0.0/8)"),
        ("192.168.50.16/29", "longer than max_prefix_len /28"),
        ("192.168.50.0/24", ""),
    ];
    let prefixes: Vec<Ipv4Net> = offered.iter().map(|(p, _)| net(p)).collect();
    ensure!(peer.announce(&prefixes) == 1, "UPDATE not sent");
    let received = || {
        cli_json(
            &t.socket(),
            &["bgp", "routes", "--vif", "vif-100", "--received"],
        )
    };
    ensure!(
        wait_for(Duration::from_secs(10), || received().is_ok_and(|r| r
            .as_array()
            .is_some_and(|a| a.len() == offered.len()))),
        "{:?}",
        received()
    );
    let listing = received()?;
    println!("{listing}");
    for (prefix, reason) in offered {
        let row = listing
            .as_array()
            .and_then(|a| a.iter().find(|r| r["prefix"] == prefix))
            .with_context(|| format!("{prefix} not listed"))?;
        if reason.is_empty() {
            ensure!(row["accepted"] == true, "{row}");
        } else {
            ensure!(row["accepted"] == false && row["reason"] == reason, "{row}");
        }
    }
    for addr in ["200.1.1.1", "1.2.3.4", "240.0.0.1"] {
        let l = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", addr])?;
        ensure!(l["next_hop_id"].is_null(), "{addr} routed: {l}");
    }
    Ok(())
}
