//! The agent end to end with static routing (issue: control agent): real kernels on every
//! side, the `forwarder` binary as an operator runs it, the CLI as an operator uses it.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::{IDC_HOST, Topology, VPC_HOST, cli, cli_json, sh, wait_for};

const VIF: &str = r#"
[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "static"

  [[vif.peer]]
  client_address = "169.254.10.2"
  cloud_address = "169.254.10.1"
  prefix_len = 30
"#;

const IDC_ROUTE: &str = r#"
[[static_route]]
border_gateway = "bgw-1"
prefix = "192.168.50.0/24"
via = "vif-100"
"#;

fn vif_state(t: &Topology) -> String {
    cli_json(&t.socket(), &["vif", "show", "vif-100"])
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn wait_available(t: &Topology) -> Result<()> {
    ensure!(
        wait_for(Duration::from_secs(15), || vif_state(t) == "available"),
        "vif-100 never became available: {}",
        cli(&t.socket(), &["vif", "show", "vif-100"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    );
    Ok(())
}

fn ping_ok(t: &Topology) -> Result<(u32, u32)> {
    t.ping(VPC_HOST, 5, "0.2")
}

#[test]
fn static_routing_carries_ping_and_tcp_and_follows_route_changes() -> Result<()> {
    let t = Topology::new("static")?;
    let _customer = t.customer_router()?;
    t.write_config(&format!("{VIF}{IDC_ROUTE}"))?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t)?;

    let (sent, received) = ping_ok(&t)?;
    println!("ping idc -> vpc: {received}/{sent}");
    ensure!(
        received == sent,
        "ping lost {} of {sent}: {}",
        sent - received,
        agent.log_text()
    );

    // TCP through the XDP path: 8 MiB from the IDC host to the VPC host, checked by SHA-256.
    let (received, intact, seconds) = common::tcp_transfer(&t.vpc, VPC_HOST, &t.idc, 8 << 20)?;
    println!("tcp idc -> vpc: {received} bytes in {seconds:.2} s, sha256 match: {intact}");
    ensure!(
        received == 8 << 20 && intact,
        "TCP transfer: {received} bytes, intact {intact}"
    );

    let stats = cli_json(&t.socket(), &["stats"])?;
    let vif = &stats["vifs"][0];
    let att = &stats["attachments"][0];
    println!("stats: vif {vif} attachment {att}");
    ensure!(
        // 8 MiB in segments of at most 1500 bytes, and at least the 5 echo replies back.
        vif["rx_packets"].as_u64() >= Some(5000) && vif["tx_packets"].as_u64() >= Some(5),
        "vif counters did not move: {stats}"
    );
    ensure!(
        att["tx_packets"].as_u64() >= Some(5000) && att["rx_packets"].as_u64() >= Some(5),
        "attachment counters did not move: {stats}"
    );

    let routes = cli_json(&t.socket(), &["route", "list", "--gateway", "bgw-1"])?;
    let find = |prefix: &str| {
        routes
            .as_array()
            .and_then(|a| a.iter().find(|r| r["prefix"] == prefix).cloned())
    };
    let idc = find("192.168.50.0/24").expect("IDC route listed");
    let vpc = find("10.0.1.0/24").expect("VPC route listed");
    ensure!(
        idc["source"] == "static" && idc["installed"] == true && idc["next_hop"] == "vif vif-100",
        "{idc}"
    );
    ensure!(
        vpc["source"] == "propagated"
            && vpc["installed"] == true
            && vpc["next_hop"] == "attachment att-a",
        "{vpc}"
    );
    let lookup = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", IDC_HOST])?;
    ensure!(lookup["next_hop"] == "vif vif-100", "lookup: {lookup}");

    // Reload without the config route: the traffic stops, nothing else changes.
    t.write_config(VIF)?;
    let out = cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(
        received == 0,
        "traffic still flows without a route to the IDC prefix"
    );

    // The same route from the CLI restores it; deleting it stops it; adding it back restores.
    for (args, expect) in [
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "192.168.50.0/24",
                "--via",
                "vif-100",
            ],
            true,
        ),
        (
            vec!["route", "del", "--gateway", "bgw-1", "192.168.50.0/24"],
            false,
        ),
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "192.168.50.0/24",
                "--via",
                "vif-100",
            ],
            true,
        ),
    ] {
        let out = cli(&t.socket(), &args)?;
        ensure!(
            out.status.success(),
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
        println!("after `forwarder {}`: {received}/{sent}", args.join(" "));
        ensure!(
            (received == sent) == expect,
            "after {}: {received}/{sent}",
            args.join(" ")
        );
    }
    let drops = cli_json(&t.socket(), &["stats"])?["drops"].clone();
    println!("drops: {drops}");
    Ok(())
}

#[test]
fn the_agent_can_be_killed_and_restarted_without_losing_a_ping() -> Result<()> {
    let t = Topology::new("restart")?;
    let _customer = t.customer_router()?;
    t.write_config(VIF)?;
    let mut agent = t.start_agent(common::bin())?;
    wait_available(&t)?;
    route(&t, "add", "192.168.50.0/24", Some("vif-100"))?;
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(sent == received, "no traffic before the restart");

    // 10 pings a second for 8 s; the agent is SIGKILLed after 1 s and restarted after 2 s.
    let idc = t.idc.name().to_owned();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &idc, "ping", "-n", "-q", "-c", "80", "-i", "0.1", "-W", "1",
                VPC_HOST,
            ])
            .output()
    });
    std::thread::sleep(Duration::from_secs(1));
    agent.kill()?;
    std::thread::sleep(Duration::from_secs(1));
    drop(agent);
    let agent = t.start_agent(common::bin())?;
    let out = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
    let (sent, received) = common::parse_ping(&String::from_utf8_lossy(&out.stdout))?;
    println!("ping during kill -9 and restart: {received}/{sent} received");
    ensure!(
        sent == 80 && received == sent,
        "lost {} of {sent} pings across the restart; drops {}\n{}\n{}",
        sent - received,
        cli_json(&t.socket(), &["stats"])?["drops"],
        t.diagnostics(),
        agent.log_text()
    );

    let routes = cli_json(&t.socket(), &["route", "list"])?;
    let cli_route = routes.as_array().and_then(|a| {
        a.iter()
            .find(|r| r["prefix"] == "192.168.50.0/24" && r["cli"] == true)
            .cloned()
    });
    ensure!(
        cli_route.is_some_and(|r| r["installed"] == true),
        "CLI route missing after restart: {routes}"
    );

    // SIGTERM: a clean exit that removes the socket and leaves forwarding running.
    let mut agent = agent;
    let status = agent.terminate()?;
    ensure!(status.success(), "agent exit on SIGTERM: {status}");
    ensure!(!t.socket().exists(), "control socket left behind");
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    println!("ping with the agent stopped: {received}/{sent}");
    ensure!(received == sent, "forwarding stopped with the agent");
    Ok(())
}

#[test]
fn cli_errors_are_clear_and_exit_1() -> Result<()> {
    let t = Topology::new("clierr")?;
    let _customer = t.customer_router()?;
    // No agent yet.
    let out = cli(&t.socket(), &["status"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("cannot reach the forwarder agent"),
        "no agent: {err}"
    );

    t.write_config(&format!("{VIF}{IDC_ROUTE}"))?;
    let _agent = t.start_agent(common::bin())?;
    for (args, needle) in [
        (vec!["vif", "show", "vif-999"], "no VIF named \"vif-999\""),
        (
            vec!["stats", "--vif", "vif-999"],
            "no VIF named \"vif-999\"",
        ),
        (
            vec!["route", "list", "--gateway", "bgw-9"],
            "no border gateway named \"bgw-9\"",
        ),
        (
            vec!["lookup", "--gateway", "bgw-9", "10.0.1.1"],
            "no border gateway named \"bgw-9\"",
        ),
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "192.168.60.0/33",
                "--via",
                "vif-100",
            ],
            "invalid value '192.168.60.0/33'",
        ),
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "192.168.60.0/24",
                "--via",
                "vif-999",
            ],
            "no VIF or attachment named \"vif-999\"",
        ),
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "10.0.1.0/25",
                "--via",
                "vif-100",
            ],
            "overlaps VPC CIDR 10.0.1.0/24",
        ),
        (
            vec![
                "route",
                "add",
                "--gateway",
                "bgw-1",
                "192.168.60.1/24",
                "--via",
                "vif-100",
            ],
            "host bits set",
        ),
        (
            vec!["route", "del", "--gateway", "bgw-1", "192.168.50.0/24"],
            "comes from the config file",
        ),
        (
            vec!["lookup", "--gateway", "bgw-1", "10.0.1.300"],
            "invalid value '10.0.1.300'",
        ),
    ] {
        let out = cli(&t.socket(), &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "forwarder {} -> exit {:?}: {}",
            args.join(" "),
            out.status.code(),
            err.trim()
        );
        ensure!(
            out.status.code() == Some(1),
            "forwarder {}: exit {:?}",
            args.join(" "),
            out.status.code()
        );
        ensure!(
            err.contains(needle),
            "forwarder {}: {err:?} does not say {needle:?}",
            args.join(" ")
        );
    }

    // A bad config is refused by reload and changes nothing.
    std::fs::write(
        t.config_path(),
        std::fs::read_to_string(t.config_path())?.replace("vlan = 100", "vlan = 4095"),
    )?;
    let out = cli(&t.socket(), &["reload"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("vlan"),
        "reload of a bad config: {err}"
    );
    let vifs = cli_json(&t.socket(), &["vif", "list"])?;
    ensure!(
        vifs[0]["vlan"] == 100,
        "bad reload changed the running VIF: {vifs}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forwarder"))
        .args(["check", "--config"])
        .arg(t.config_path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("forwarder.toml") && err.contains("vlan"),
        "check: {err}"
    );
    Ok(())
}

#[test]
fn link_down_makes_the_vif_unavailable_and_reload_removes_a_vif() -> Result<()> {
    let t = Topology::new("linkdown")?;
    let _customer = t.customer_router()?;
    t.write_config(&format!("{VIF}{IDC_ROUTE}"))?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t)?;

    // The customer's side of the hosted connection goes down: the VIF follows within the
    // agent's one-second check, its routes leave the data plane, and come back with the link.
    sh(&t.rtr, "ip link set trunk0 down")?;
    ensure!(
        wait_for(Duration::from_secs(5), || vif_state(&t) == "unavailable"),
        "VIF still {} with the link down",
        vif_state(&t)
    );
    let routes = cli_json(&t.socket(), &["route", "list"])?;
    let idc = routes
        .as_array()
        .and_then(|a| a.iter().find(|r| r["prefix"] == "192.168.50.0/24").cloned())
        .context("IDC route listed")?;
    println!("with the link down: {idc}");
    ensure!(
        idc["installed"] == false && idc["reason"] == "vif vif-100 is unavailable",
        "{idc}"
    );
    ensure!(
        cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", IDC_HOST])?["next_hop_id"]
            .is_null(),
        "the data plane still routes toward a VIF whose link is down"
    );
    sh(&t.rtr, "ip link set trunk0 up")?;
    wait_available(&t)?;
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(
        received == sent,
        "traffic did not come back with the link: {received}/{sent}"
    );

    // Someone deletes the VIF's control namespace (`ip netns del`): the agent sees the name
    // go (inotify on /run/netns) and points it at the namespace it still holds, so nothing
    // inside is disturbed.
    let detail = cli_json(&t.socket(), &["vif", "show", "vif-100"])?;
    let netns = detail["control_netns"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let host_if = detail["control_interface"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let exists = |name: &str| {
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name))
            })
    };
    let out = std::process::Command::new("ip")
        .args(["netns", "del", &netns])
        .output()?;
    ensure!(out.status.success(), "ip netns del: {out:?}");
    ensure!(
        wait_for(Duration::from_secs(5), || exists(&netns)
            && agent
                .log_text()
                .contains("control namespace name was removed: restored")),
        "the agent did not restore {netns}:\n{}",
        agent.log_text()
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(
        received == sent,
        "traffic after the namespace name was restored: {received}/{sent}"
    );
    println!("control namespace deleted by hand: restored, traffic flows");

    // Someone deletes the control veth (both ends go): the agent rebuilds the pair, puts XDP
    // on the new host end, ARP resolves the client again, traffic resumes.
    sh(&t.gw, &format!("ip link del {host_if}"))?;
    ensure!(
        wait_for(Duration::from_secs(10), || agent
            .log_text()
            .contains("control plane was recreated")
            && vif_state(&t) == "available"),
        "the agent did not rebuild the control veth:\n{}",
        agent.log_text()
    );
    ensure!(
        wait_for(Duration::from_secs(5), || {
            t.ping(VPC_HOST, 1, "0.2")
                .is_ok_and(|(sent, received)| sent == received)
        }),
        "traffic did not resume after the control veth was rebuilt:\n{}",
        agent.log_text()
    );
    println!("control veth deleted by hand: rebuilt, traffic resumed");

    // The VPC moves to another VNI: a reload that changes only the attachment's VNI keeps it
    // working (its slot is rewritten, not emptied with the old key).
    t.set_vpc_vni(1003)?;
    let moved = std::fs::read_to_string(t.config_path())?.replace("vni = 1001", "vni = 1003");
    std::fs::write(t.config_path(), moved)?;
    let out = cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    println!("after the VNI change: {received}/{sent}");
    ensure!(
        received == sent,
        "traffic lost after the attachment's VNI changed: {received}/{sent}\n{}",
        agent.log_text()
    );

    // A reload without the VIF (and its route): deleted, its namespace gone.
    let netns = cli_json(&t.socket(), &["vif", "show", "vif-100"])?["control_netns"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    t.write_config("")?;
    let out = cli(&t.socket(), &["reload"])?;
    ensure!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        cli_json(&t.socket(), &["vif", "list"])?
            .as_array()
            .is_some_and(Vec::is_empty),
        "VIF still listed"
    );
    let namespaces = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()?
            .stdout,
    )
    .into_owned();
    ensure!(
        !namespaces.contains(&netns),
        "control namespace {netns} left behind"
    );
    let (_, received) = t.ping(VPC_HOST, 2, "0.2")?;
    ensure!(received == 0, "traffic still flows through a deleted VIF");
    println!(
        "agent log tail: {}",
        agent
            .log_text()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(())
}

/// The attachment's underlay next hop as `status` reports it (from the data plane's map).
fn underlay(t: &Topology) -> serde_json::Value {
    cli_json(&t.socket(), &["status"])
        .map(|s| s["attachments"][0].clone())
        .unwrap_or_default()
}

fn wait_underlay(t: &Topology, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    ensure!(
        wait_for(Duration::from_secs(10), || ok(&underlay(t))),
        "{what}: {}",
        underlay(t)
    );
    let (sent, received) = ping_ok(t)?;
    ensure!(
        received == sent,
        "{what}: ping lost {} of {sent}",
        sent - received
    );
    Ok(())
}

/// Encapsulation uses the next hop the agent resolved from the kernel, and follows it: the
/// VTEP's MAC changes, the route to it moves to another next hop, becomes ECMP (then XDP asks
/// the FIB per packet) and goes back; traffic flows at every step.
#[test]
fn encapsulation_follows_the_resolved_underlay_next_hop() -> Result<()> {
    let t = Topology::new("underlay")?;
    let _customer = t.customer_router()?;
    t.write_config(&format!("{VIF}{IDC_ROUTE}"))?;
    let _agent = t.start_agent(common::bin())?;
    wait_available(&t)?;
    let vpc_mac = sh(&t.vpc, "cat /sys/class/net/eth0/address")?
        .trim()
        .to_owned();
    wait_underlay(&t, "resolved to the VTEP itself", |u| {
        u["underlay"] == "resolved"
            && u["next_hop"] == "172.31.0.2"
            && u["next_hop_mac"] == vpc_mac.as_str()
            && u["mtu"] == 1500
    })?;

    // The VTEP's MAC changes (a replaced router): the neighbour event carries it to the map.
    let new_mac = "02:00:00:00:77:01";
    sh(&t.vpc, &format!("ip link set eth0 address {new_mac}"))?;
    sh(
        &t.gw,
        &format!("ip neigh replace 172.31.0.2 lladdr {new_mac} dev ul0 nud reachable"),
    )?;
    wait_underlay(&t, "a changed MAC", |u| u["next_hop_mac"] == new_mac)?;

    // The route to the VTEP moves to a router (here another address of the VPC's host).
    sh(
        &t.vpc,
        "ip addr add 172.31.0.3/24 dev eth0 && ip addr add 172.31.0.4/24 dev eth0",
    )?;
    sh(
        &t.gw,
        &format!(
            "ip neigh replace 172.31.0.3 lladdr {new_mac} dev ul0 nud permanent \
             && ip neigh replace 172.31.0.4 lladdr {new_mac} dev ul0 nud permanent \
             && ip route add 172.31.0.2/32 via 172.31.0.3 dev ul0"
        ),
    )?;
    wait_underlay(&t, "a moved route", |u| {
        u["underlay"] == "resolved" && u["next_hop"] == "172.31.0.3"
    })?;

    // Two next hops (ECMP): nothing to cache, the FIB is asked per packet.
    sh(
        &t.gw,
        "ip route replace 172.31.0.2/32 nexthop via 172.31.0.3 dev ul0 nexthop via 172.31.0.4 dev ul0",
    )?;
    wait_underlay(&t, "an ECMP route", |u| {
        u["underlay"] == "fib" && u["fib_reason"].as_str().is_some_and(|r| r.contains("ECMP"))
    })?;

    // Back to the connected route.
    sh(&t.gw, "ip route del 172.31.0.2/32")?;
    wait_underlay(&t, "the route removed", |u| {
        u["underlay"] == "resolved" && u["next_hop"] == "172.31.0.2"
    })?;
    let text = cli(&t.socket(), &["status"])?;
    println!("{}", String::from_utf8_lossy(&text.stdout));
    Ok(())
}

/// The agent's pinned `ROUTES24` map, the /24 shortcuts.
fn routes24_map(
    t: &Topology,
) -> Result<aya::maps::HashMap<aya::maps::MapData, forwarder_common::RouteKey, u32>> {
    let data = aya::maps::MapData::from_pin(t.pin_dir().join("maps/ROUTES24"))?;
    Ok(aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?)
}

/// The /24 shortcuts (`ROUTES24`) in the pinned maps of 198.51.0.0/16 and 203.0.113.0/24
/// (the test's; the VPC's propagated route has its own): (first address of the /24, next hop).
fn shortcuts(t: &Topology) -> Result<std::collections::BTreeMap<std::net::Ipv4Addr, u32>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in routes24_map(t)?.iter() {
        let (key, nh) = entry?;
        if key.addr[..2] == [198, 51] || key.addr[..3] == [203, 0, 113] {
            out.insert(std::net::Ipv4Addr::from(key.addr), nh);
        }
    }
    Ok(out)
}

/// The next-hop id and name the data plane answers for `addr` in bgw-1.
fn answer(t: &Topology, addr: &str) -> Result<(u32, String)> {
    let a = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", addr])?;
    Ok((
        a["next_hop_id"].as_u64().context("no route")? as u32,
        a["next_hop"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn route(t: &Topology, verb: &str, prefix: &str, via: Option<&str>) -> Result<()> {
    let mut args = vec!["route", verb, "--gateway", "bgw-1", prefix];
    if let Some(via) = via {
        args.extend(["--via", via]);
    }
    let out = cli(&t.socket(), &args)?;
    ensure!(
        out.status.success(),
        "route {verb} {prefix}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The agent keeps the /24 shortcuts in step with the routes (added, removed, split by a
/// longer prefix) and puts right, at start, shortcuts a killed agent left wrong.
#[test]
fn the_24_shortcuts_follow_route_changes_and_a_restart() -> Result<()> {
    use std::net::Ipv4Addr;
    let t = Topology::new("short24")?;
    let _customer = t.customer_router()?;
    t.write_config(VIF)?;
    let mut agent = t.start_agent(common::bin())?;
    wait_available(&t)?;
    route(&t, "add", "198.51.96.0/21", Some("att-a"))?;
    route(&t, "add", "198.51.98.0/24", Some("vif-100"))?;
    route(&t, "add", "198.51.100.128/25", Some("vif-100"))?;
    let (att, att_name) = answer(&t, "198.51.97.1")?;
    let (vif, vif_name) = answer(&t, "198.51.98.1")?;
    ensure!(
        att_name.contains("att-a") && vif_name.contains("vif-100"),
        "{att_name} / {vif_name}"
    );
    ensure!(
        answer(&t, "198.51.100.1")?.0 == att,
        "the /21 around the /25"
    );
    ensure!(answer(&t, "198.51.100.200")?.0 == vif, "the /25");
    let net = |c: u8| Ipv4Addr::new(198, 51, c, 0);
    // Eight /24s of the /21 less the one the /25 splits; the /24 route's own shortcut.
    let mut want: std::collections::BTreeMap<Ipv4Addr, u32> = (96..104)
        .filter(|c| *c != 100)
        .map(|c| (net(c), att))
        .collect();
    want.insert(net(98), vif);
    // New shortcuts go in once the agent is idle.
    let settles = |want: &std::collections::BTreeMap<Ipv4Addr, u32>| {
        wait_for(Duration::from_secs(5), || {
            shortcuts(&t).is_ok_and(|s| s == *want)
        })
    };
    ensure!(settles(&want), "shortcuts {:?}", shortcuts(&t)?);

    route(&t, "del", "198.51.98.0/24", None)?;
    route(&t, "del", "198.51.100.128/25", None)?;
    ensure!(
        answer(&t, "198.51.98.1")?.0 == att,
        "the /21 after the /24 went"
    );
    ensure!(
        answer(&t, "198.51.100.200")?.0 == att,
        "the /21 after the /25 went"
    );
    let want: std::collections::BTreeMap<Ipv4Addr, u32> =
        (96..104).map(|c| (net(c), att)).collect();
    ensure!(settles(&want), "shortcuts {:?}", shortcuts(&t)?);

    // Killed; a shortcut left wrong (as by a kill between a route's removal and its
    // shortcut's) and one with no route at all. The next agent puts both right.
    agent.kill()?;
    drop(agent);
    {
        let mut map = routes24_map(&t)?;
        let gw = u32::from_be_bytes(map.keys().next().context("a shortcut")??.gateway_be);
        map.insert(
            forwarder_common::RouteKey::slash24(gw, [198, 51, 97, 0]),
            vif,
            0,
        )?;
        map.insert(
            forwarder_common::RouteKey::slash24(gw, [203, 0, 113, 0]),
            vif,
            0,
        )?;
    }
    let agent = t.start_agent(common::bin())?;
    wait_available(&t)?;
    ensure!(
        settles(&want),
        "shortcuts after the restart {:?}\n{}",
        shortcuts(&t)?,
        agent.log_text()
    );
    ensure!(
        answer(&t, "198.51.97.1")?.0 == att,
        "the /21 after the restart"
    );
    ensure!(answer(&t, "203.0.113.1").is_err(), "no route, no answer");
    // `status` counts them all (the VPC's propagated /24 has one too).
    let in_map = routes24_map(&t)?.keys().count() as u64;
    let status = cli_json(&t.socket(), &["status"])?;
    ensure!(
        status["maps"]["routes24"]["used"].as_u64() == Some(in_map)
            && status["maps"]["routes24"]["capacity"].as_u64()
                == Some(2 * u64::from(forwarder_common::MAX_ROUTES)),
        "status {} against {in_map} in the map",
        status["maps"]
    );

    route(&t, "del", "198.51.96.0/21", None)?;
    ensure!(
        shortcuts(&t)?.is_empty(),
        "shortcuts left {:?}",
        shortcuts(&t)?
    );
    Ok(())
}

/// Random route changes through the CLI, among overlapping prefixes of /20 to /26: after
/// each, the data plane answers as a longest-prefix match over what is installed (a stale
/// shortcut would answer for a route that is gone or beaten), and once the agent is idle
/// the shortcut map holds exactly what the routes call for.
#[test]
fn random_route_changes_keep_the_24_shortcuts_exact() -> Result<()> {
    use std::net::Ipv4Addr;

    use ipnet::Ipv4Net;
    let t = Topology::new("rand24")?;
    let _customer = t.customer_router()?;
    t.write_config(VIF)?;
    let _agent = t.start_agent(common::bin())?;
    wait_available(&t)?;
    let seed = std::env::var("FORWARDER_TEST_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x24_5eed ^ u64::from(std::process::id()));
    println!("seed {seed:#x}");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // 24 prefixes inside 198.51.96.0/20, /20 to /26: they overlap often.
    let pool: Vec<Ipv4Net> = (0..24)
        .map(|_| {
            let len = 20 + (next() % 7) as u8;
            let addr = u32::from(Ipv4Addr::new(198, 51, 96, 0)) + (next() % (1 << 12)) as u32;
            Ipv4Net::new(Ipv4Addr::from(addr), len)
                .expect("prefix")
                .trunc()
        })
        .collect();
    let vias = ["att-a", "vif-100"];
    // Each next hop's id, from a route of its own outside the test's range.
    let mut ids: std::collections::HashMap<&str, u32> = Default::default();
    for (via, net) in vias.iter().zip(["192.0.2.0/24", "192.0.3.0/24"]) {
        route(&t, "add", net, Some(via))?;
        ids.insert(*via, answer(&t, &net.replace("0/24", "1"))?.0);
    }
    let mut model: std::collections::BTreeMap<Ipv4Net, &str> = Default::default();
    for step in 0..60 {
        let prefix = pool[(next() % pool.len() as u64) as usize];
        if let Some(old) = model.get(&prefix).copied() {
            // Gone, or moved to the other next hop.
            route(&t, "del", &prefix.to_string(), None)?;
            model.remove(&prefix);
            if next() % 2 == 0 {
                let via = if old == vias[0] { vias[1] } else { vias[0] };
                route(&t, "add", &prefix.to_string(), Some(via))?;
                model.insert(prefix, via);
            }
        } else {
            let via = vias[(next() % 2) as usize];
            route(&t, "add", &prefix.to_string(), Some(via))?;
            model.insert(prefix, via);
        }
        for _ in 0..8 {
            let addr = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 51, 96, 0)) + (next() % (1 << 12)) as u32,
            );
            let want = model
                .iter()
                .filter(|(p, _)| p.contains(&addr))
                .max_by_key(|(p, _)| p.prefix_len())
                .map(|(_, via)| ids[via]);
            let got = cli_json(
                &t.socket(),
                &["lookup", "--gateway", "bgw-1", &addr.to_string()],
            )?;
            ensure!(
                got["next_hop_id"].as_u64().map(|id| id as u32) == want,
                "step {step}: {addr} answered {got}, the routes say {want:?}: {model:?}"
            );
        }
    }
    // Once idle: the shortcuts the routes call for, and no other.
    let routes: Vec<(u32, Ipv4Net, u32)> = model.iter().map(|(p, via)| (0, *p, ids[via])).collect();
    let want: std::collections::BTreeMap<Ipv4Addr, u32> = forwarder::routes24::build(&routes)
        .into_iter()
        .map(|(_, net, nh)| (Ipv4Addr::from(net), nh))
        .collect();
    ensure!(
        wait_for(Duration::from_secs(5), || shortcuts(&t)
            .is_ok_and(|s| s == want)),
        "shortcuts {:?}, the routes {model:?} call for {want:?}",
        shortcuts(&t)?
    );
    println!("{} routes, {} shortcuts", model.len(), want.len());
    Ok(())
}
