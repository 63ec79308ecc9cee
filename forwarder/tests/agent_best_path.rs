//! One customer, two connections: BIRD on hc-1 (vif-100) and FRR on hc-2 (vif-200) both
//! announce the IDC prefix, and the gateway picks the path the way the README documents:
//! local preference from `LOCAL_ASN:7100/7200/7300`, then AS_PATH length (prepends), then
//! MED; a NO_EXPORT route is used but not advertised to the other VIF; `bgp routes` says
//! which path won and why; equal paths share the traffic flow by flow, as the shared hash
//! says.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::{Topology, bgp::net, cli_json, wait_for};
use forwarder_tests::{
    CustomerRouter,
    daemons::{Kind, PathAttrs, PeerSpec, RouterDaemon},
    fixture::Vif,
    topology::Agent,
};
use std::net::Ipv4Addr;

const CLOUD_A: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);
const CLOUD_B: Ipv4Addr = Ipv4Addr::new(169, 254, 30, 1);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(169, 254, 30, 2);

fn via(t: &Topology) -> String {
    cli_json(
        &t.socket(),
        &["lookup", "--gateway", "bgw-1", "192.168.50.10"],
    )
    .ok()
    .and_then(|l| l["next_hop"].as_str().map(str::to_owned))
    .unwrap_or_default()
}

fn wait_via(t: &Topology, vif: &str, when: &str) -> Result<()> {
    ensure!(
        wait_for(Duration::from_secs(20), || via(t)
            .starts_with(&format!("vif {vif} "))),
        "{when}: 192.168.50.0/24 should go via {vif}, goes via {:?}\n{}",
        via(t),
        cli_json(&t.socket(), &["bgp", "routes", "--vif", "vif-100"]).unwrap_or_default()
    );
    Ok(())
}

fn pref(value: u16) -> PathAttrs {
    PathAttrs {
        communities: vec![(64512, value)],
        ..PathAttrs::default()
    }
}

#[test]
fn communities_prepends_and_med_choose_between_two_connections() -> Result<()> {
    let t = Topology::new("best")?;
    let rtr2 = t.second_connection()?;
    let _a = t.customer_router_bgp()?;
    let _b = CustomerRouter::new(&rtr2, "trunk0", &[(200, "169.254.30.2/30")])?;
    // vif-100 on hc-1, vif-200 on hc-2 (with `vif_200` adjusting it).
    let two_connections = |vif_200: fn(Vif) -> Vif| {
        t.fixture()
            .agent("bgp_hold_time", "9")
            .agent("bgp_connect_retry", "1")
            .connection("hc-2", "hc2")
            .vif(
                Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
                    .peer("169.254.10.2", "169.254.10.1"),
            )
            .vif(vif_200(
                Vif::bgp("vif-200", "hc-2", 200, "bgw-1", 65001)
                    .peer("169.254.30.2", "169.254.30.1"),
            ))
    };
    t.write_fixture(&two_connections(|v| v))?;
    let mut agent = t.start_agent(common::bin())?;
    let (idc, other) = (net("192.168.50.0/24"), net("192.168.51.0/24"));
    let bird = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        CLIENT_A,
        &[PeerSpec::new(CLIENT_A, CLOUD_A, 65001, 64512)],
        &[idc, other],
    )?;
    let frr = RouterDaemon::start(
        Kind::Frr,
        &rtr2,
        CLIENT_B,
        &[PeerSpec::new(CLIENT_B, CLOUD_B, 65001, 64512)],
        &[idc],
    )?;
    bird.wait_established(CLOUD_A, Duration::from_secs(30))
        .with_context(|| agent.log_text())?;
    frr.wait_established(CLOUD_B, Duration::from_secs(30))
        .with_context(|| agent.log_text())?;
    ensure!(
        wait_for(Duration::from_secs(20), || {
            let routes = cli_json(&t.socket(), &["bgp", "routes", "--vif", "vif-200"]);
            routes.is_ok_and(|r| {
                r.as_array()
                    .is_some_and(|a| a.iter().any(|x| x["prefix"] == "192.168.50.0/24"))
            }) && !via(&t).is_empty()
        }),
        "both paths never arrived"
    );

    // vif-200's router asks for low preference: vif-100 carries the prefix; then high:
    // vif-200 does.
    frr.set_path(idc, pref(7100))?;
    wait_via(&t, "vif-100", "FRR sends 64512:7100")?;
    frr.set_path(idc, pref(7300))?;
    wait_via(&t, "vif-200", "FRR sends 64512:7300")?;
    // Both high; FRR prepends twice: the shorter AS_PATH (vif-100) wins.
    bird.set_path(idc, pref(7300))?;
    frr.set_path(
        idc,
        PathAttrs {
            prepend: 2,
            ..pref(7300)
        },
    )?;
    wait_via(&t, "vif-100", "FRR prepends")?;
    // Same preference and length, the same neighbour AS: the lower MED (vif-200) wins.
    bird.set_path(
        idc,
        PathAttrs {
            med: Some(50),
            ..pref(7300)
        },
    )?;
    frr.set_path(
        idc,
        PathAttrs {
            med: Some(10),
            ..pref(7300)
        },
    )?;
    wait_via(&t, "vif-200", "MED 10 against 50")?;
    // `bgp routes` says why vif-100's path lost.
    let routes = cli_json(&t.socket(), &["bgp", "routes", "--vif", "vif-100"])?;
    let mine = routes
        .as_array()
        .and_then(|a| a.iter().find(|r| r["prefix"] == "192.168.50.0/24").cloned())
        .context("vif-100's path")?;
    ensure!(
        mine["best"] == false
            && mine["local_pref"] == 300
            && mine["med"] == 50
            && mine["why"]
                .as_str()
                .is_some_and(|w| w.contains("vif-200") && w.contains("lower MED")),
        "{mine}"
    );
    let text = common::cli(&t.socket(), &["bgp", "routes", "--vif", "vif-200"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    println!("forwarder bgp routes --vif vif-200:\n{text}");
    ensure!(
        text.contains("WHY") && text.contains("lower MED"),
        "bgp routes (text):\n{text}"
    );

    // A route the customer marks NO_EXPORT is used but not advertised to its other VIF.
    let advertised = |t: &Topology| -> Vec<String> {
        cli_json(
            &t.socket(),
            &["bgp", "routes", "--vif", "vif-200", "--advertised"],
        )
        .ok()
        .and_then(|r| {
            r.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x["prefix"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
    };
    ensure!(
        wait_for(Duration::from_secs(10), || advertised(&t)
            .contains(&"192.168.51.0/24".to_owned())),
        "vif-100's 192.168.51.0/24 should be advertised to vif-200 first: {:?}",
        advertised(&t)
    );
    bird.set_path(
        other,
        PathAttrs {
            no_export: true,
            ..PathAttrs::default()
        },
    )?;
    ensure!(
        wait_for(Duration::from_secs(10), || !advertised(&t)
            .contains(&"192.168.51.0/24".to_owned())),
        "a NO_EXPORT route was advertised to the other VIF: {:?}",
        advertised(&t)
    );
    let lookup = cli_json(
        &t.socket(),
        &["lookup", "--gateway", "bgw-1", "192.168.51.1"],
    )?;
    ensure!(
        lookup["next_hop"]
            .as_str()
            .is_some_and(|n| n.contains("vif-100")),
        "the NO_EXPORT route is still used: {lookup}"
    );

    // The other way round: vif-200 prepends twice, so FRR sees our VPC CIDR at three hops
    // (a reload; the VIF's sessions start again) while BIRD still sees one.
    let vpc = net("10.0.1.0/24");
    ensure!(
        wait_for(Duration::from_secs(10), || frr
            .as_path(vpc)
            .is_ok_and(|p| p == Some(vec![64512]))),
        "FRR's path to the VPC before the prepend: {:?}",
        frr.as_path(vpc)
    );
    t.write_fixture(&two_connections(|v| v.set("as_path_prepend", "2")))?;
    let reload = common::cli(&t.socket(), &["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    ensure!(
        wait_for(Duration::from_secs(30), || frr
            .as_path(vpc)
            .is_ok_and(|p| p == Some(vec![64512, 64512, 64512]))),
        "FRR's path to the VPC after as_path_prepend = 2: {:?}",
        frr.as_path(vpc)
    );
    ensure!(
        bird.as_path(vpc)? == Some(vec![64512]),
        "BIRD's path changed too: {:?}",
        bird.as_path(vpc)
    );

    multipath_splits_flows_as_the_hash_says(&t, &bird, &frr)?;
    multipath_survives_an_agent_restart(&t, &mut agent)
}

/// Both routers send the IDC prefix with equal attributes: one group over both VIFs
/// (`route list` shows it), and each flow from the VPC leaves on the VIF that
/// `group_member(flow_hash(..))` picks among the members `lookup` reads from the map.
fn multipath_splits_flows_as_the_hash_says(
    t: &Topology,
    bird: &RouterDaemon<'_>,
    frr: &RouterDaemon<'_>,
) -> Result<()> {
    let idc = net("192.168.50.0/24");
    bird.set_path(idc, PathAttrs::default())?;
    frr.set_path(idc, PathAttrs::default())?;
    let lookup = || {
        cli_json(
            &t.socket(),
            &["lookup", "--gateway", "bgw-1", "192.168.50.10"],
        )
    };
    ensure!(
        wait_for(Duration::from_secs(30), || lookup().is_ok_and(|l| {
            l["members"].as_array().is_some_and(|m| m.len() == 2)
        })),
        "equal paths never became one group: {:?}",
        lookup()
    );
    let members: Vec<String> = lookup()?["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| {
            let n = m["next_hop"].as_str().unwrap_or_default();
            if n.contains("vif-100") {
                "vif-100"
            } else {
                "vif-200"
            }
            .to_owned()
        })
        .collect();
    ensure!(
        members.contains(&"vif-100".to_owned()) && members.contains(&"vif-200".to_owned()),
        "members: {members:?}"
    );
    let routes = cli_json(&t.socket(), &["route", "list", "--gateway", "bgw-1"])?;
    let shared: Vec<&serde_json::Value> = routes
        .as_array()
        .context("routes")?
        .iter()
        .filter(|r| r["prefix"] == "192.168.50.0/24" && r["source"] == "bgp")
        .collect();
    ensure!(
        shared.len() == 2
            && shared.iter().all(|r| r["installed"] == true
                && r["multipath"] == serde_json::json!(["vif-100", "vif-200"])),
        "route list: {shared:?}"
    );
    let text = common::cli(&t.socket(), &["route", "list"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    println!("forwarder route list:\n{text}");
    ensure!(
        text.contains("vif-100+vif-200"),
        "route list (text):\n{text}"
    );

    let tx = |vif: &str| -> u64 {
        cli_json(&t.socket(), &["stats", "--vif", vif])
            .ok()
            .and_then(|s| s["vifs"][0]["tx_packets"].as_u64())
            .unwrap_or(0)
    };
    const FLOW_PACKETS: u64 = 20;
    let (src, dst) = (Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(192, 168, 50, 10));
    let mut taken = std::collections::BTreeMap::new();
    for sport in 40_000..40_032u16 {
        let hash = forwarder_common::flow_hash(src.into(), dst.into(), 17, sport, 9);
        let expected = &members[forwarder_common::group_member(hash, members.len() as u16)];
        let before = (tx("vif-100"), tx("vif-200"));
        // 20 packets per flow: the VIFs' tx counters also count the sessions' own packets
        // (a keepalive or BFD packet now and then), never 20 in a moment.
        t.vpc.enter(|| -> Result<()> {
            let socket = std::net::UdpSocket::bind((src, sport))?;
            for _ in 0..FLOW_PACKETS {
                socket.send_to(b"flow", (dst, 9))?;
            }
            Ok(())
        })?;
        let mut after = before;
        wait_for(Duration::from_secs(3), || {
            after = (tx("vif-100"), tx("vif-200"));
            after.0 - before.0 >= FLOW_PACKETS || after.1 - before.1 >= FLOW_PACKETS
        });
        let went = match (after.0 - before.0, after.1 - before.1) {
            (a, b) if a >= FLOW_PACKETS && b < FLOW_PACKETS / 4 => "vif-100",
            (a, b) if b >= FLOW_PACKETS && a < FLOW_PACKETS / 4 => "vif-200",
            moved => anyhow::bail!(
                "flow from port {sport}: {FLOW_PACKETS} packets moved the tx counters by {moved:?}"
            ),
        };
        ensure!(
            went == expected,
            "flow from port {sport} left on {went}; the hash says {expected}"
        );
        *taken.entry(went).or_insert(0) += 1;
    }
    println!("32 flows: {taken:?}");
    ensure!(taken.len() == 2, "every flow took one VIF: {taken:?}");
    Ok(())
}

/// SIGTERM and a new agent: the multipath route is read back from the pinned maps as the
/// stale routes of both VIFs' sessions (the log counts both prefixes), and the same group,
/// in the same slot, carries it when the sessions are back.
fn multipath_survives_an_agent_restart(t: &Topology, agent: &mut Agent) -> Result<()> {
    let lookup = || {
        cli_json(
            &t.socket(),
            &["lookup", "--gateway", "bgw-1", "192.168.50.10"],
        )
    };
    // Both sessions settled first: FRR closes a session that comes back within a second or
    // two of the previous one (the reload above restarted vif-200's), and then refuses
    // connections for a growing idle time, a flap the restart would otherwise run into.
    let settled = || {
        cli_json(&t.socket(), &["bgp", "neighbors"]).is_ok_and(|n| {
            n.as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter().all(|s| {
                        s["state"] == "Established" && s["uptime_seconds"].as_u64() >= Some(5)
                    })
            })
        })
    };
    ensure!(
        wait_for(Duration::from_secs(30), settled),
        "sessions not settled before the restart: {:?}",
        cli_json(&t.socket(), &["bgp", "neighbors"])
    );
    let before = lookup()?;
    let status = agent.terminate()?;
    ensure!(status.success(), "SIGTERM: the agent exited with {status}");
    *agent = t.start_agent(common::bin())?;
    let log = agent.log_text();
    ensure!(
        log.lines()
            .any(|l| l.contains("kept from the pinned maps") && l.contains("routes=2")),
        "the restarted agent should keep 192.168.50.0/24 (multipath) and 192.168.51.0/24:\n{log}"
    );
    ensure!(
        wait_for(Duration::from_secs(60), || lookup()
            .is_ok_and(|l| l["next_hop_id"] == before["next_hop_id"]
                && l["members"].as_array().is_some_and(|m| m.len() == 2))),
        "after the restart: {:?}, before: {before}\nneighbors: {:?}\nvif-200 routes: {:?}\nvifs: {:?}\n{}",
        lookup(),
        cli_json(&t.socket(), &["bgp", "neighbors"]),
        cli_json(&t.socket(), &["bgp", "routes", "--vif", "vif-200"]),
        cli_json(&t.socket(), &["vif", "list"]),
        agent.log_text()
    );
    Ok(())
}
