//! IPv6 end to end (issue: IPv6 dual stack): a VIF with an IPv4 and an IPv6 interconnect pair,
//! a kernel VXLAN VPC carrying IPv6, static IPv6 routes from the config and the CLI, real
//! kernels on every side.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{Topology, VPC_HOST, cli, cli_json, wait_for};
use forwarder_tests::{
    fixture::Vif,
    topology::{CLIENT6, CLOUD6, IDC6_HOST, IDC6_PREFIX, VPC6_CIDR, VPC6_HOST},
};

/// DESIGN's static VIF with an IPv6 pair beside its IPv4 one, the VPC's IPv6 CIDR
/// propagated, the IDC's IPv6 prefix routed to the VIF.
fn dual_stack(t: &Topology) -> forwarder_tests::fixture::Fixture {
    t.fixture()
        .propagate("att-a", VPC6_CIDR)
        .vif(
            Vif::static_routed("vif-100", "hc-1", 100, "bgw-1")
                .peer("169.254.10.2", "169.254.10.1")
                .peer(CLIENT6, CLOUD6),
        )
        .static_route("bgw-1", "192.168.50.0/24", "vif-100")
        .static_route("bgw-1", IDC6_PREFIX, "vif-100")
}

#[test]
fn a_dual_stack_vif_carries_ping6_and_tcp_over_ipv6_beside_ipv4() -> Result<()> {
    let t = Topology::new("v6")?;
    let _customer = t.customer_router()?;
    t.ipv6()?;
    t.write_fixture(&dual_stack(&t))?;
    let agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;

    // The route toward the IDC needs the client router's MAC from Neighbor Discovery.
    let installed = || {
        cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", IDC6_HOST])
            .is_ok_and(|v| v["next_hop_id"].is_u64())
    };
    ensure!(
        wait_for(Duration::from_secs(15), installed),
        "the IPv6 route toward the IDC never reached the map: {}\n{}",
        cli(&t.socket(), &["route", "list", "--gateway", "bgw-1"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
        agent.log_text()
    );
    let lookup = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", VPC6_HOST])?;
    println!("lookup {VPC6_HOST}: {lookup}");
    ensure!(
        lookup["next_hop"].to_string().contains("att-a"),
        "the VPC's IPv6 CIDR is not toward att-a: {lookup}"
    );

    let (sent, received) = t.ping(VPC6_HOST, 5, "0.2")?;
    println!("ping -6 idc -> vpc: {received}/{sent}");
    ensure!(
        received == sent,
        "ping -6 lost {} of {sent}",
        sent - received
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    println!("ping idc -> vpc (IPv4 beside it): {received}/{sent}");
    ensure!(received == sent, "IPv4 lost {} of {sent}", sent - received);

    // TCP over IPv6 through the XDP path, both ways; full-size segments do not fit the
    // underlay once encapsulated, so this also needs Packet Too Big to reach the sender.
    let (bytes, intact, seconds) = common::tcp_transfer(&t.vpc, VPC6_HOST, &t.idc, 8 << 20)?;
    println!("tcp6 idc -> vpc: {bytes} bytes in {seconds:.2} s, sha256 match: {intact}");
    ensure!(
        bytes == 8 << 20 && intact,
        "TCP over IPv6 idc -> vpc: {bytes} bytes, intact {intact}"
    );
    let (bytes, intact, _) = common::tcp_transfer(&t.idc, IDC6_HOST, &t.vpc, 4 << 20)?;
    ensure!(
        bytes == 4 << 20 && intact,
        "TCP over IPv6 vpc -> idc: {bytes} bytes, intact {intact}"
    );

    // 1500-byte packets do not fit the 1500-byte underlay once encapsulated: the sender gets
    // a Packet Too Big (from the cloud address) and its kernel takes the 1450 it says.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            t.idc.name(),
            "ping",
            "-6",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
        ])
        .args(["-W", "1", "-s", "1452", "-M", "do", VPC6_HOST])
        .output()?;
    let said = String::from_utf8_lossy(&ping.stdout);
    println!("{said}");
    ensure!(
        said.contains(&format!("From {CLOUD6}")) && said.contains("mtu=1450"),
        "no Packet Too Big from the cloud address: {said}"
    );
    let stats = cli_json(&t.socket(), &["stats"])?;
    let route = common::sh(&t.idc, &format!("ip -6 route get {VPC6_HOST}"))?;
    println!(
        "passes: {}
idc: {route}\ndrops: {}",
        stats["passes"], stats["drops"]
    );
    ensure!(
        stats["passes"]["icmp6_too_big"].as_u64() > Some(0) && route.contains("mtu 1450"),
        "the IDC host did not learn the path MTU from a Packet Too Big: {route} {}",
        stats["passes"]
    );

    // A route added by the CLI, refused where the VIF has no IPv6 pair to send it to.
    let added = cli(
        &t.socket(),
        &[
            "route",
            "add",
            "--gateway",
            "bgw-1",
            "2001:db8:51::/48",
            "--via",
            "vif-100",
        ],
    )?;
    ensure!(
        added.status.success(),
        "route add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let lookup = cli_json(
        &t.socket(),
        &["lookup", "--gateway", "bgw-1", "2001:db8:51::1"],
    )?;
    ensure!(
        lookup["next_hop_id"].is_u64(),
        "route add not in the map: {lookup}"
    );
    let overlap = cli(
        &t.socket(),
        &[
            "route",
            "add",
            "--gateway",
            "bgw-1",
            "2001:db8:a:5::/64",
            "--via",
            "vif-100",
        ],
    )?;
    let why = String::from_utf8_lossy(&overlap.stderr);
    ensure!(
        !overlap.status.success() && why.contains("overlaps VPC CIDR 2001:db8:a::/48"),
        "an IPv6 route into the VPC's CIDR was not refused: {why}"
    );
    let deleted = cli(
        &t.socket(),
        &["route", "del", "--gateway", "bgw-1", "2001:db8:51::/48"],
    )?;
    ensure!(
        deleted.status.success(),
        "route del: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let lookup = cli_json(
        &t.socket(),
        &["lookup", "--gateway", "bgw-1", "2001:db8:51::1"],
    )?;
    ensure!(
        lookup["next_hop_id"].is_null(),
        "route del left it in the map: {lookup}"
    );

    let status = cli_json(&t.socket(), &["status"])?;
    println!("maps: {}", status["maps"]);
    ensure!(
        status["maps"]["routes6"]["used"].as_u64() == Some(2),
        "two IPv6 routes in ROUTES6 (the VPC's CIDR and the IDC's prefix): {}",
        status["maps"]
    );
    Ok(())
}
