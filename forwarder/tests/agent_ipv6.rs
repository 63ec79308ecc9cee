//! IPv6 end to end (issue: IPv6 dual stack): a VIF with an IPv4 and an IPv6 interconnect pair,
//! a kernel VXLAN VPC carrying IPv6, static IPv6 routes from the config and the CLI, IPv6
//! BGP sessions with BIRD and FRR, real kernels on every side.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use common::{Topology, VPC_HOST, cli, cli_json, wait_for};
use forwarder_tests::{
    daemons::{Kind, PeerSpec, RouterDaemon},
    fixture::Vif,
    topology::{CLIENT6, CLOUD6, IDC6_HOST, IDC6_PREFIX, VPC6_CIDR, VPC6_HOST},
};
use ipnet::Ipv6Net;

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
    t.ipv6(true)?;
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

/// DESIGN's BGP VIF with an IPv4 and an IPv6 session (client ASN 65001), the VPC's IPv6
/// CIDR propagated, short BGP timers, TCP MD5 with `password`.
fn dual_stack_bgp(t: &Topology, password: Option<&str>) -> forwarder_tests::fixture::Fixture {
    let vif = Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
        .peer("169.254.10.2", "169.254.10.1")
        .peer(CLIENT6, CLOUD6);
    let vif = match password {
        Some(p) => vif.set("bgp_password", &format!("\"{p}\"")),
        None => vif,
    };
    t.fixture()
        .agent("bgp_hold_time", "9")
        .agent("bgp_connect_retry", "1")
        .propagate("att-a", VPC6_CIDR)
        .vif(vif)
}

fn in_map(t: &Topology, addr: &str) -> bool {
    cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", addr])
        .is_ok_and(|v| v["next_hop_id"].is_u64())
}

fn session_up(t: &Topology, peer: usize) -> bool {
    cli_json(&t.socket(), &["bgp", "neighbors"]).is_ok_and(|all| {
        all.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["peer"] == peer && n["state"] == "Established")
        })
    })
}

/// An IPv6 session (MP-BGP IPv6 unicast) beside an IPv4 one with a real router, both with
/// TCP MD5 when `password` is given: routes both ways, withdrawals reaching the map, traffic,
/// and each family going on while the other's session is down.
fn ipv6_bgp_with(kind: Kind, password: Option<&str>) -> Result<()> {
    let t = Topology::new(&format!("b6{}", kind.to_string().to_lowercase()))?;
    let _customer = t.customer_router()?;
    t.ipv6(false)?;
    t.write_fixture(&dual_stack_bgp(&t, password))?;
    let agent = t.start_agent(common::bin())?;
    let (cloud4, client4): (Ipv4Addr, Ipv4Addr) =
        ("169.254.10.1".parse()?, "169.254.10.2".parse()?);
    let (cloud6, client6): (Ipv6Addr, Ipv6Addr) = (CLOUD6.parse()?, CLIENT6.parse()?);
    let idc6: Ipv6Net = IDC6_PREFIX.parse()?;
    let router = RouterDaemon::start(
        kind,
        &t.rtr,
        client4,
        &[
            PeerSpec::new(client4, cloud4, 65001, 64512),
            PeerSpec::new(client6, cloud6, 65001, 64512),
        ]
        .map(|p| match password {
            Some(key) => p.with_password(key),
            None => p,
        }),
        &["192.168.50.0/24".parse()?],
    )?;
    router.announce6(&[idc6])?;
    for cloud in [IpAddr::from(cloud4), IpAddr::from(cloud6)] {
        router
            .wait_established(cloud, Duration::from_secs(30))
            .with_context(|| agent.log_text())?;
    }

    // Both ways: the router's IPv6 prefix in ROUTES6, our IPv6 VPC CIDR at the router (and
    // in its kernel table), each family on its own session.
    ensure!(
        wait_for(Duration::from_secs(15), || in_map(&t, IDC6_HOST)),
        "{kind}'s IPv6 prefix never reached the map: {}",
        agent.log_text()
    );
    router.wait_received6(cloud6, &[VPC6_CIDR.parse()?], Duration::from_secs(15))?;
    router.wait_received(cloud4, &["10.0.1.0/24".parse()?], Duration::from_secs(15))?;
    ensure!(
        router.received_prefixes(cloud6)?.is_empty()
            && router.received_prefixes6(cloud4)?.is_empty(),
        "a session carried the other family"
    );
    ensure!(
        wait_for(Duration::from_secs(10), || common::sh(
            &t.rtr,
            &format!("ip -6 route show {VPC6_CIDR}")
        )
        .is_ok_and(|r| !r.trim().is_empty())),
        "{kind} did not install {VPC6_CIDR}"
    );
    let neighbors = cli_json(&t.socket(), &["bgp", "neighbors"])?;
    println!("neighbors: {neighbors}");
    let (sent, received) = t.ping(VPC6_HOST, 5, "0.2")?;
    println!("{kind}: ping -6 over BGP routes {received}/{sent}");
    ensure!(
        received == sent,
        "ping -6 lost {} of {sent}",
        sent - received
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(
        received == sent,
        "IPv4 beside it lost {} of {sent}",
        sent - received
    );

    // A withdrawal reaches the map, and the prefix comes back with the announcement.
    router.withdraw6(&[idc6])?;
    ensure!(
        wait_for(Duration::from_secs(15), || !in_map(&t, IDC6_HOST)),
        "the withdrawn IPv6 prefix stayed in the map"
    );
    router.announce6(&[idc6])?;
    ensure!(
        wait_for(Duration::from_secs(15), || in_map(&t, IDC6_HOST)),
        "the announced IPv6 prefix did not come back"
    );

    // Each family keeps working while the other's session is down.
    router.shutdown_peer(cloud4)?;
    ensure!(
        wait_for(Duration::from_secs(15), || !session_up(&t, 0)
            && !in_map(&t, "192.168.50.10")),
        "the IPv4 session and its route did not go"
    );
    ensure!(
        session_up(&t, 1),
        "the IPv6 session went down with the IPv4 one"
    );
    let (sent, received) = t.ping(VPC6_HOST, 5, "0.2")?;
    ensure!(
        received == sent && in_map(&t, IDC6_HOST),
        "IPv6 without the IPv4 session: {received}/{sent}"
    );
    router.enable_peer(cloud4)?;
    router.wait_established(cloud4, Duration::from_secs(30))?;
    ensure!(
        wait_for(Duration::from_secs(15), || in_map(&t, "192.168.50.10")),
        "the IPv4 route did not come back"
    );
    router.shutdown_peer(cloud6)?;
    ensure!(
        wait_for(Duration::from_secs(15), || !session_up(&t, 1)
            && !in_map(&t, IDC6_HOST)),
        "the IPv6 session and its route did not go"
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(
        received == sent && session_up(&t, 0),
        "IPv4 without the IPv6 session: {received}/{sent}"
    );
    router.enable_peer(cloud6)?;
    router.wait_established(cloud6, Duration::from_secs(30))?;
    ensure!(
        wait_for(Duration::from_secs(15), || in_map(&t, IDC6_HOST)),
        "the IPv6 route did not come back"
    );
    Ok(())
}

#[test]
fn bird_exchanges_ipv6_routes_over_an_ipv6_session_with_md5() -> Result<()> {
    ipv6_bgp_with(Kind::Bird, Some("s3cret"))
}

#[test]
fn frr_exchanges_ipv6_routes_over_an_ipv6_session() -> Result<()> {
    ipv6_bgp_with(Kind::Frr, None)
}

/// Graceful restart over the IPv6 session: the agent killed, then stopped, and started again
/// while the IDC host pings the VPC over IPv6 at 10/s (BIRD at its default, a helper): the
/// IPv6 routes are read back from ROUTES6 and kept, no ping is lost.
#[test]
fn ipv6_routes_survive_agent_restarts_without_loss() -> Result<()> {
    let t = Topology::new("b6gr")?;
    let _customer = t.customer_router()?;
    t.ipv6(false)?;
    t.write_fixture(&dual_stack_bgp(&t, None))?;
    let mut agent = t.start_agent(common::bin())?;
    let (cloud4, client4): (Ipv4Addr, Ipv4Addr) =
        ("169.254.10.1".parse()?, "169.254.10.2".parse()?);
    let (cloud6, client6): (Ipv6Addr, Ipv6Addr) = (CLOUD6.parse()?, CLIENT6.parse()?);
    let router = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        client4,
        &[
            PeerSpec::new(client4, cloud4, 65001, 64512),
            PeerSpec::new(client6, cloud6, 65001, 64512),
        ],
        &["192.168.50.0/24".parse()?],
    )?;
    router.announce6(&[IDC6_PREFIX.parse()?])?;
    let converged = |agent: &common::Agent, when: &str| -> Result<()> {
        for cloud in [IpAddr::from(cloud4), IpAddr::from(cloud6)] {
            router
                .wait_established(cloud, Duration::from_secs(30))
                .with_context(|| format!("{when}: {}", agent.log_text()))?;
        }
        ensure!(
            wait_for(Duration::from_secs(20), || session_up(&t, 1)
                && in_map(&t, IDC6_HOST)
                && common::sh(&t.rtr, &format!("ip -6 route show {VPC6_CIDR}"))
                    .is_ok_and(|r| !r.trim().is_empty())),
            "{when}: not converged over IPv6\n{}",
            agent.log_text()
        );
        Ok(())
    };
    converged(&agent, "at start")?;
    for kill in [true, false] {
        let ((sent, received), ()) = t.ping_to_during(VPC6_HOST, 80, || {
            if kill {
                agent.kill()?;
            } else {
                let status = agent.terminate()?;
                ensure!(status.success(), "SIGTERM: the agent exited with {status}");
            }
            std::thread::sleep(Duration::from_millis(500));
            agent = t.start_agent(common::bin())?;
            Ok(())
        })?;
        let how = if kill { "SIGKILL" } else { "SIGTERM" };
        println!("agent {how} + restart: {received}/{sent} IPv6 pings");
        ensure!(
            sent == 80 && received == sent,
            "lost {} of {sent} IPv6 pings across {how}\n{}",
            sent - received,
            agent.log_text()
        );
        converged(&agent, how)?;
    }
    Ok(())
}
