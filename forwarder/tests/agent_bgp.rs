//! The agent's BGP speaker against real customer routers from Debian packages (BIRD 2, FRR,
//! GoBGP) over the emulated VLAN 100 of the hosted connection, with the kernel VXLAN VPC
//! behind the gateway.

mod common;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use common::{
    Topology, VPC_HOST,
    bgp::{
        CLIENT1, CLIENT2, CLOUD1, CLOUD2, customer_router, established, lookup, neighbor, net,
        vif_config, write_config,
    },
    cli_json, wait_for,
};
use forwarder_tests::daemons::{Kind, PeerSpec, RouterDaemon};
use ipnet::Ipv4Net;

#[test]
fn bird_exchanges_routes_and_traffic_flows() -> Result<()> {
    let t = Topology::new("bird")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, ""))?;
    let agent = t.start_agent(common::bin())?;
    let bird = customer_router(
        &t,
        &agent,
        Kind::Bird,
        |p| p,
        &[net("192.168.50.0/24"), net("192.168.51.0/24")],
    )?;
    ensure!(
        wait_for(Duration::from_secs(10), || established(&t, 0)),
        "agent side not Established: {:?}",
        neighbor(&t, 0)
    );

    // BIRD's prefixes are in the table and in the data plane's map.
    ensure!(
        wait_for(Duration::from_secs(10), || lookup(&t, "192.168.51.1")
            .is_ok_and(|l| !l["next_hop_id"].is_null())),
        "192.168.51.0/24 never reached the map: {}",
        agent.log_text()
    );
    let routes = cli_json(&t.socket(), &["route", "list"])?;
    let idc = routes
        .as_array()
        .and_then(|a| a.iter().find(|r| r["prefix"] == "192.168.50.0/24").cloned())
        .context("IDC route")?;
    ensure!(idc["source"] == "bgp" && idc["installed"] == true, "{idc}");
    // BIRD learned our VPC CIDR (and put it in its kernel table), so the IDC host reaches it.
    bird.wait_received(CLOUD1, &[net("10.0.1.0/24")], Duration::from_secs(10))?;
    ensure!(
        wait_for(Duration::from_secs(10), || common::sh(
            &t.rtr,
            "ip route show 10.0.1.0/24"
        )
        .is_ok_and(|r| r.contains("bird"))),
        "BIRD did not install 10.0.1.0/24"
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    println!("ping idc -> vpc over BGP routes: {received}/{sent}");
    ensure!(received == sent, "ping lost {}", sent - received);
    let n = neighbor(&t, 0)?;
    println!("neighbor: {n}");
    ensure!(
        n["prefixes_received"] == 2 && n["prefixes_accepted"] == 2 && n["prefixes_advertised"] == 1,
        "{n}"
    );

    // Withdrawn in BIRD → gone from the map.
    bird.withdraw(&[net("192.168.51.0/24")])?;
    ensure!(
        wait_for(Duration::from_secs(10), || lookup(&t, "192.168.51.1")
            .is_ok_and(|l| l["next_hop_id"].is_null())),
        "withdrawn prefix still in the map"
    );
    Ok(())
}

#[test]
fn import_filter_and_max_prefixes() -> Result<()> {
    let t = Topology::new("bgpfilter")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "max_prefixes = 4"))?;
    let agent = t.start_agent(common::bin())?;
    // An overlap with the VPC CIDR, a default route, a martian and one good prefix.
    let bird = customer_router(
        &t,
        &agent,
        Kind::Bird,
        |p| p,
        &[
            net("10.0.1.128/25"),
            net("0.0.0.0/0"),
            net("169.254.99.0/24"),
            net("192.168.50.0/24"),
        ],
    )?;
    let received = |t: &Topology| {
        cli_json(
            &t.socket(),
            &["bgp", "routes", "--vif", "vif-100", "--received"],
        )
    };
    ensure!(
        wait_for(Duration::from_secs(10), || received(&t)
            .is_ok_and(|r| r.as_array().is_some_and(|a| a.len() == 4))),
        "not all 4 prefixes listed: {:?}",
        received(&t)
    );
    let listing = received(&t)?;
    println!("received: {listing}");
    let verdict = |p: &str| {
        listing
            .as_array()
            .and_then(|a| a.iter().find(|r| r["prefix"] == p))
            .map(|r| r["verdict"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    ensure!(
        verdict("10.0.1.128/25").contains("overlaps VPC CIDR 10.0.1.0/24"),
        "{listing}"
    );
    ensure!(verdict("0.0.0.0/0").contains("default route"), "{listing}");
    ensure!(verdict("169.254.99.0/24").contains("martian"), "{listing}");
    ensure!(verdict("192.168.50.0/24") == "accepted", "{listing}");
    ensure!(
        lookup(&t, "10.0.1.200")?["next_hop"] == "attachment att-a",
        "the VPC CIDR must stay with the attachment"
    );

    // Over the limit: Cease / maximum number of prefixes, seen by BIRD; the session stays
    // down for the idle time, then comes back.
    bird.announce(&[
        net("192.168.52.0/24"),
        net("192.168.53.0/24"),
        net("192.168.54.0/24"),
        net("192.168.55.0/24"),
    ])?;
    ensure!(
        wait_for(Duration::from_secs(15), || bird
            .last_error(CLOUD1)
            .is_ok_and(|e| e
                .to_lowercase()
                .contains("maximum number of prefixes"))),
        "BIRD did not see the Cease: {:?} / agent: {:?}",
        bird.last_error(CLOUD1),
        neighbor(&t, 0)
    );
    let n = neighbor(&t, 0)?;
    println!(
        "after max-prefix: BIRD says {:?}; agent says {n}",
        bird.last_error(CLOUD1)?
    );
    ensure!(n["state"] != "Established", "{n}");
    ensure!(
        n["last_error"].as_str().is_some_and(|e| e.contains("6/1")),
        "{n}"
    );
    Ok(())
}

#[test]
fn md5_right_key_up_wrong_key_never() -> Result<()> {
    let t = Topology::new("md5")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(true, "bgp_password = \"s3cret\""))?;
    let agent = t.start_agent(common::bin())?;
    let bird = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        CLIENT1,
        &[
            PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512).with_password("s3cret"),
            PeerSpec::new(CLIENT2, CLOUD2, 65001, 64512).with_password("wrong"),
        ],
        &[net("192.168.50.0/24")],
    )?;
    bird.wait_established(CLOUD1, Duration::from_secs(20))
        .with_context(|| agent.log_text())?;
    std::thread::sleep(Duration::from_secs(8));
    let state = bird.session_state(CLOUD2)?;
    println!(
        "right key: Established; wrong key after 8 s: {state}; agent: {:?}",
        neighbor(&t, 1)?["state"]
    );
    ensure!(
        !state.eq_ignore_ascii_case("established") && !established(&t, 1),
        "a wrong MD5 key established"
    );
    Ok(())
}

#[test]
fn frr_and_gobgp_interoperate() -> Result<()> {
    for kind in [Kind::Frr, Kind::Gobgp] {
        let t = Topology::new(&format!("{kind}").to_lowercase())?;
        let _customer = t.customer_router_bgp()?;
        write_config(&t, &vif_config(false, ""))?;
        let agent = t.start_agent(common::bin())?;
        let daemon = customer_router(&t, &agent, kind, |p| p, &[net("192.168.50.0/24")])?;
        daemon.wait_received(CLOUD1, &[net("10.0.1.0/24")], Duration::from_secs(15))?;
        ensure!(
            wait_for(Duration::from_secs(10), || lookup(&t, "192.168.50.10")
                .is_ok_and(|l| !l["next_hop_id"].is_null())),
            "{kind}'s prefix never reached the map"
        );
        println!("{kind}: Established, learned 10.0.1.0/24, its 192.168.50.0/24 is in the map");
    }
    Ok(())
}

#[test]
fn losing_one_of_two_sessions_keeps_traffic_flowing() -> Result<()> {
    let t = Topology::new("bgpha")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(true, ""))?;
    let agent = t.start_agent(common::bin())?;
    let bird = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        CLIENT1,
        &[
            PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512),
            PeerSpec::new(CLIENT2, CLOUD2, 65001, 64512),
        ],
        &[net("192.168.50.0/24")],
    )?;
    bird.wait_established(CLOUD1, Duration::from_secs(20))
        .with_context(|| agent.log_text())?;
    bird.wait_established(CLOUD2, Duration::from_secs(20))
        .with_context(|| agent.log_text())?;
    ensure!(
        wait_for(Duration::from_secs(10), || established(&t, 0)
            && established(&t, 1)),
        "agent sessions"
    );
    ensure!(
        wait_for(Duration::from_secs(10), || lookup(&t, "192.168.50.10")
            .is_ok_and(|l| l["next_hop"]
                .as_str()
                .is_some_and(|n| n.contains("0+1")))),
        "prefix not via both sessions: {:?}",
        lookup(&t, "192.168.50.10")
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(sent == received, "no traffic before the failover");

    // 20 pings a second for 6 s; session 1 is shut down in BIRD after 2 s.
    let idc = t.idc.name().to_owned();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &idc, "ping", "-n", "-q", "-c", "120", "-i", "0.05", "-W", "1",
                VPC_HOST,
            ])
            .output()
    });
    std::thread::sleep(Duration::from_secs(2));
    let shut = Instant::now();
    bird.shutdown_peer(CLOUD1)?;
    ensure!(
        wait_for(Duration::from_secs(5), || !established(&t, 0)),
        "session 0 still up"
    );
    println!(
        "agent saw session 0 down {:?} after the shutdown",
        shut.elapsed()
    );
    let out = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
    let (sent, received) = common::parse_ping(&String::from_utf8_lossy(&out.stdout))?;
    println!(
        "20/s ping while one of two sessions is shut down: {received}/{sent}, {} lost",
        sent - received
    );
    ensure!(
        received + 2 >= sent,
        "traffic did not continue over the remaining session: {received}/{sent}"
    );
    ensure!(
        cli_json(&t.socket(), &["vif", "show", "vif-100"])?["state"] == "available",
        "VIF must stay available"
    );
    Ok(())
}

#[test]
fn a_hundred_thousand_prefixes_reach_the_map() -> Result<()> {
    let t = Topology::new("bgp100k")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "max_prefixes = 200000"))?;
    let agent = t.start_agent(common::bin())?;
    // 100,000 /32s in 11.0.0.0/8 … plus the IDC prefix.
    let mut prefixes: Vec<Ipv4Net> = (0..100_000u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i), 32).expect("prefix"))
        .collect();
    prefixes.push(net("192.168.50.0/24"));
    let bird = customer_router(&t, &agent, Kind::Bird, |p| p, &[])?;
    let started = Instant::now();
    bird.announce(&prefixes)?;
    let installed = |t: &Topology| -> u64 {
        cli_json(&t.socket(), &["status"])
            .ok()
            .and_then(|s| s["gateways"][0]["installed"].as_u64())
            .unwrap_or(0)
    };
    ensure!(
        wait_for(Duration::from_secs(120), || installed(&t) >= 100_002),
        "only {} routes installed after 120 s",
        installed(&t)
    );
    let took = started.elapsed();
    println!(
        "100,001 prefixes announced by BIRD: all in the map {:.1} s after the announcement",
        took.as_secs_f64()
    );
    let answer = lookup(&t, "11.1.134.159")?;
    ensure!(
        answer["next_hop"]
            .as_str()
            .is_some_and(|n| n.starts_with("vif vif-100")),
        "a /32 of the 100k: {answer}"
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(sent == received, "traffic with 100k routes");
    Ok(())
}

#[test]
fn a_full_route_map_keeps_static_routes_and_other_gateways_going() -> Result<()> {
    use forwarder_tests::fixture::Vif;
    let t = Topology::new("fullmap")?;
    let _customer = t.customer_router_bgp()?;
    // 16 routes fit: two propagated VPC CIDRs, then what the customer's BGP brings.
    t.write_fixture(
        &t.fixture()
            .agent("route_capacity", "16")
            .agent("bgp_hold_time", "9")
            .agent("bgp_connect_retry", "1")
            .gateway("bgw-2")
            .attachment("att-b", "bgw-2", 1002, "172.31.0.3", &["10.2.0.0/16"])
            .vif(
                Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
                    .peer(&CLIENT1.to_string(), &CLOUD1.to_string()),
            ),
    )?;
    let agent = t.start_agent(common::bin())?;
    let prefixes: Vec<Ipv4Net> = (0..30u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0xc0a8_0000 + (i << 8)), 24).expect("prefix"))
        .collect();
    let bird = customer_router(&t, &agent, Kind::Bird, |p| p, &prefixes)?;
    let gateway = |name: &str| -> serde_json::Value {
        cli_json(&t.socket(), &["status"])
            .ok()
            .and_then(|s| {
                s["gateways"]
                    .as_array()
                    .and_then(|g| g.iter().find(|g| g["name"] == name).cloned())
            })
            .unwrap_or_default()
    };
    ensure!(
        wait_for(Duration::from_secs(15), || gateway("bgw-1")["selected"]
            == 31),
        "BIRD's routes not selected: {}",
        gateway("bgw-1")
    );
    let full = gateway("bgw-1");
    println!("bgw-1 with a full map: {full}");
    ensure!(
        full["installed"] == 15 && full["not_installed"] == 16 && full["route_map_full"] == true,
        "{full}"
    );
    let status = cli_json(&t.socket(), &["status"])?;
    ensure!(
        status["maps"]["routes"] == serde_json::json!({"used": 16, "capacity": 16}),
        "{}",
        status["maps"]
    );
    let not_installed = cli_json(&t.socket(), &["route", "list", "--gateway", "bgw-1"])?
        .as_array()
        .and_then(|a| a.iter().find(|r| r["installed"] == false).cloned())
        .context("a route not installed")?;
    ensure!(
        not_installed["reason"] == "the route map is full",
        "{not_installed}"
    );

    // Another gateway's static route goes in at once: a BGP route makes room for it.
    let out = common::cli(
        &t.socket(),
        &[
            "route",
            "add",
            "--gateway",
            "bgw-2",
            "10.3.0.0/16",
            "--via",
            "att-b",
        ],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-2", "10.3.0.1"])?;
    ensure!(found["next_hop"] == "attachment att-b", "{found}");
    ensure!(gateway("bgw-2")["installed"] == 2, "{}", gateway("bgw-2"));
    ensure!(gateway("bgw-1")["installed"] == 14, "{}", gateway("bgw-1"));

    // Room comes back: the BGP routes waiting for it are installed.
    let out = common::cli(
        &t.socket(),
        &["route", "del", "--gateway", "bgw-2", "10.3.0.0/16"],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bird.withdraw(&prefixes[..20])?;
    ensure!(
        wait_for(Duration::from_secs(10), || {
            let g = gateway("bgw-1");
            g["installed"] == 11 && g["not_installed"] == 0 && g["route_map_full"] == false
        }),
        "after the withdrawals: {}",
        gateway("bgw-1")
    );
    println!("bgw-1 after the withdrawals: {}", gateway("bgw-1"));
    Ok(())
}

#[test]
fn a_vif_moved_to_another_gateway_advertises_that_gateways_routes_and_a_removed_vif_leaves_nothing()
-> Result<()> {
    use forwarder_tests::fixture::Vif;
    let t = Topology::new("bgpmove")?;
    let _customer = t.customer_router_bgp()?;
    let base = || {
        t.fixture()
            .agent("bgp_hold_time", "9")
            .agent("bgp_connect_retry", "1")
            .gateway("bgw-2")
            .attachment("att-b", "bgw-2", 1002, "172.31.0.3", &["10.2.0.0/16"])
    };
    let bgp_vif = |gateway: &str| {
        Vif::bgp("vif-100", "hc-1", 100, gateway, 65001)
            .peer(&CLIENT1.to_string(), &CLOUD1.to_string())
    };
    t.write_fixture(&base().vif(bgp_vif("bgw-1")))?;
    let agent = t.start_agent(common::bin())?;
    let bird = customer_router(&t, &agent, Kind::Bird, |p| p, &[net("192.168.50.0/24")])?;
    bird.wait_received(CLOUD1, &[net("10.0.1.0/24")], Duration::from_secs(10))?;

    // The VIF moves to bgw-2: its session starts over and BIRD hears bgw-2's routes only.
    t.write_fixture(&base().vif(bgp_vif("bgw-2")))?;
    let out = common::cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bird.wait_received(CLOUD1, &[net("10.2.0.0/16")], Duration::from_secs(20))
        .with_context(|| agent.log_text())?;
    ensure!(
        wait_for(Duration::from_secs(10), || cli_json(
            &t.socket(),
            &["lookup", "--gateway", "bgw-2", "192.168.50.1"]
        )
        .is_ok_and(|l| l["next_hop"]
            .as_str()
            .is_some_and(|n| n.starts_with("vif vif-100")))),
        "the customer's route is not in bgw-2"
    );
    ensure!(
        lookup(&t, "192.168.50.1")?["next_hop_id"].is_null(),
        "the customer's route stayed in bgw-1"
    );
    let id = cli_json(&t.socket(), &["vif", "show", "vif-100"])?["id"].clone();

    // Removed while holding routes: nothing of it is left for the next VIF that gets its id.
    t.write_fixture(&base())?;
    let out = common::cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.write_fixture(&base().vif(
        Vif::static_routed("vif-300", "hc-1", 300, "bgw-2").peer("169.254.30.2", "169.254.30.1"),
    ))?;
    let out = common::cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = cli_json(&t.socket(), &["vif", "show", "vif-300"])?;
    println!("vif-100 had id {id}; vif-300 has {}", new["id"]);
    ensure!(
        new["id"] == id,
        "the test expects the id to be given again: {new}"
    );
    let routes = cli_json(&t.socket(), &["route", "list", "--gateway", "bgw-2"])?;
    ensure!(
        !routes.to_string().contains("192.168.50.0/24"),
        "vif-300 inherited vif-100's BGP route: {routes}"
    );
    Ok(())
}

/// GTSM (RFC 5082): with `ttl_security = true` the session comes up with a router that also
/// sends TTL 255 (BIRD `ttl security on`), and never with one that sends TTL 1.
#[test]
fn ttl_security_takes_only_a_router_that_sends_ttl_255() -> Result<()> {
    let t = Topology::new("bgpgtsm")?;
    let _customer = t.customer_router_bgp()?;
    write_config(&t, &vif_config(false, "ttl_security = true"))?;
    let agent = t.start_agent(common::bin())?;
    let bird = customer_router(
        &t,
        &agent,
        Kind::Bird,
        |p| p.ttl_security(),
        &[net("192.168.50.0/24")],
    )?;
    ensure!(
        wait_for(Duration::from_secs(10), || established(&t, 0)),
        "{:?}",
        neighbor(&t, 0)
    );
    drop(bird);
    ensure!(
        wait_for(Duration::from_secs(15), || !established(&t, 0)),
        "session still up without BIRD"
    );
    let bird = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        CLIENT1,
        &[PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512)],
        &[net("192.168.50.0/24")],
    )?;
    ensure!(
        !wait_for(Duration::from_secs(8), || established(&t, 0)),
        "Established with a router sending TTL 1: {:?}",
        neighbor(&t, 0)
    );
    // Its segments (TTL 1) are dropped: the session never gets past OpenSent.
    println!(
        "without TTL 255 from BIRD: agent {} / BIRD {:?}",
        neighbor(&t, 0)?["state"],
        bird.session_state(CLOUD1)
    );
    Ok(())
}
