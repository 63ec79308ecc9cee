//! The data plane's edges with the real agent and real hosts: path-MTU discovery through the
//! gateway (ICMP fragmentation needed from XDP, then a TCP transfer without MSS clamping),
//! jumbo frames through a VIF with `mtu = 9001`, a broadcast flood on one VIF while another
//! VIF's BGP session and traffic carry on, and `source_check` dropping spoofed sources.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use common::{
    Topology, VPC_HOST,
    bgp::{customer_router, established, lookup, neighbor, net, vif_config, write_config},
    cli_json, sh, wait_for,
};
use forwarder_tests::daemons::Kind;

/// `forwarder stats --json` for one VIF.
fn vif_stats(t: &Topology, vif: &str) -> Result<serde_json::Value> {
    let stats = cli_json(&t.socket(), &["stats", "--vif", vif])?;
    stats["vifs"]
        .as_array()
        .and_then(|a| a.first().cloned())
        .with_context(|| format!("no {vif} in {stats}"))
}

fn counter(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or_default()
}

/// A command in a namespace, with its output whatever its exit status (ping with losses
/// exits 1 and we want what it printed).
fn output_in(ns: &forwarder_tests::NetNs, command: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c", command])
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn path_mtu_discovery_works_through_the_gateway() -> Result<()> {
    let t = Topology::new("pmtu")?;
    let _customer = t.customer_router()?;
    t.write_fixture(&t.static_fixture())?;
    let agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;
    // The VPC's hosts think their path is 1500 bytes, as in a VPC: VXLAN device MTU 1500
    // (over an eth0 of 1550). The gateway's underlay is 1500: 1450 is left for customers.
    sh(
        &t.vpc,
        "ip link set eth0 mtu 1550 && ip link set vxlan0 mtu 1500",
    )?;
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(received == sent, "{received}/{sent} small pings");

    let out = output_in(&t.idc, "ping -n -c 2 -i 0.3 -W 1 -M do -s 1472 10.0.1.10")?;
    println!("{out}");
    ensure!(
        out.contains("From 169.254.10.1") && out.contains("Frag needed and DF set (mtu = 1450)"),
        "no fragmentation needed from the gateway's cloud address: {out}\n{}\n{}\n{}",
        cli_json(&t.socket(), &["stats"])?,
        sh(&t.gw, "ethtool -S hc1; ethtool -k hc1 | grep -i gro")?
            + &sh(
                &t.rtr,
                "ethtool -S trunk0; ethtool -k trunk0 | grep -i gro; tc -s filter show dev trunk0 ingress"
            )?,
        agent.log_text()
    );
    let route = sh(&t.idc, "ip route get 10.0.1.10")?;
    ensure!(
        route.contains("mtu 1450"),
        "the IDC host did not cache the path MTU: {route}"
    );
    // Now the host knows: a ping that fits 1450 goes through with DF.
    let out = output_in(&t.idc, "ping -n -c 3 -i 0.2 -W 1 -M do -s 1422 10.0.1.10")?;
    ensure!(
        out.contains("3 received"),
        "a 1450-byte ping with DF: {out}"
    );

    // TCP with the MSS both hosts offer (1460: no clamping anywhere): the first full-size
    // segments get ICMP back and the transfer goes on at 1450.
    sh(&t.idc, "ip route flush cache")?;
    let before = cli_json(&t.socket(), &["stats"])?["passes"]["icmp_frag_needed"].clone();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            t.vpc.name(),
            "timeout",
            "60",
            "iperf3",
            "-s",
            "-1",
            "-B",
            VPC_HOST,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let client = output_in(&t.idc, "iperf3 -c 10.0.1.10 -t 2 -J --connect-timeout 3000")?;
    // The server serves one client (-1); one that never got it is stopped here.
    server.kill()?;
    server.wait()?;
    let report: serde_json::Value =
        serde_json::from_str(&client).with_context(|| format!("iperf3 said: {client}"))?;
    let sent = counter(&report["end"]["sum_sent"]["bytes"]);
    let received = counter(&report["end"]["sum_received"]["bytes"]);
    let mss = counter(&report["start"]["tcp_mss_default"]);
    println!("iperf3: {sent} bytes sent, {received} received in 2 s, MSS at start {mss}");
    ensure!(
        report.get("error").is_none() && received >= 1 << 20,
        "the transfer did not go through: {sent} sent, {received} received\n{client}"
    );
    // And every byte, checked end to end.
    sh(&t.idc, "ip route flush cache")?;
    let (bytes, intact, seconds) = common::tcp_transfer(&t.vpc, VPC_HOST, &t.idc, 8 << 20)?;
    ensure!(
        bytes == 8 << 20 && intact,
        "TCP after PMTU discovery: {bytes} bytes, intact: {intact}, {seconds:.1} s"
    );
    let after = cli_json(&t.socket(), &["stats"])?["passes"]["icmp_frag_needed"].clone();
    ensure!(
        counter(&after) > counter(&before),
        "the transfer never needed ICMP ({before} → {after}): the test did not test PMTU"
    );
    Ok(())
}

#[test]
fn jumbo_frames_cross_a_vif_with_mtu_9001() -> Result<()> {
    let t = Topology::new("jumbo")?;
    let _customer = t.customer_router()?;
    // The operator's side: every link on the path big enough.
    sh(&t.idc, "ip link set eth0 mtu 9001")?;
    sh(
        &t.rtr,
        "for i in lan0 v100 v100p trunk0; do ip link set $i mtu 9001; done",
    )?;
    sh(
        &t.gw,
        "ip link set hc1 mtu 9001 && ip link set ul0 mtu 9100",
    )?;
    sh(
        &t.vpc,
        "ip link set eth0 mtu 9100 && ip link set vxlan0 mtu 9050",
    )?;
    t.write_fixture(&t.static_fixture_with(&[("mtu", "9001")]))?;
    let agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;
    let before = vif_stats(&t, "vif-100")?;
    let out = output_in(&t.idc, "ping -n -c 5 -i 0.2 -W 1 -M do -s 8972 10.0.1.10")?;
    println!("{out}");
    ensure!(
        out.contains("5 received"),
        "9000-byte pings with DF through a VIF of MTU 9001: {out}\n{}\n{}",
        t.diagnostics(),
        agent.log_text()
    );
    let after = vif_stats(&t, "vif-100")?;
    let rx = counter(&after["rx_bytes"]) - counter(&before["rx_bytes"]);
    ensure!(
        rx >= 5 * 9018,
        "the VIF counted {rx} bytes in: the jumbo frames were not counted whole"
    );

    // The connection port shrinks to 1500: the VIF's MTU follows it (a larger frame would
    // be lost on the way out), and a VPC host sending 9000 bytes learns 1500 through the
    // tunnel.
    sh(&t.gw, "ip link set hc1 mtu 1500")?;
    let from_vpc = |t: &Topology| {
        output_in(
            &t.vpc,
            "ping -n -c 2 -i 0.3 -W 1 -M do -s 8972 192.168.50.10",
        )
    };
    let mut out = String::new();
    ensure!(
        wait_for(Duration::from_secs(10), || {
            out = from_vpc(&t).unwrap_or_default();
            out.contains("Frag needed and DF set (mtu = 1500)")
        }),
        "the VPC host got no fragmentation needed with the port's MTU: {out}\n{}",
        agent.log_text()
    );
    Ok(())
}

#[test]
fn a_broadcast_flood_on_one_vif_leaves_another_vifs_bgp_and_traffic_alone() -> Result<()> {
    let t = Topology::new("flood")?;
    let _customer = t.customer_router_bgp()?;
    // vif-100: BGP with BIRD, carrying the pings. vif-200: a static VIF on the same port,
    // flooded with broadcasts by a customer gone wild.
    let vif_200 = r#"
[[vif]]
name = "vif-200"
connection = "hc-1"
vlan = 200
border_gateway = "bgw-1"
routing = "static"

  [[vif.peer]]
  client_address = "169.254.30.2"
  cloud_address = "169.254.30.1"
  prefix_len = 30
"#;
    write_config(&t, &format!("{}{vif_200}", vif_config(false, "")))?;
    let agent = t.start_agent(common::bin())?;
    let _bird = customer_router(&t, &agent, Kind::Bird, |p| p, &[net("192.168.50.0/24")])?;
    ensure!(
        wait_for(Duration::from_secs(20), || established(&t, 0)
            && lookup(&t, "192.168.50.10")
                .is_ok_and(|l| !l["next_hop_id"].is_null())
            && sh(&t.rtr, "ip route show 10.0.1.0/24")
                .is_ok_and(|r| !r.trim().is_empty())),
        "vif-100 never converged: {:?}",
        neighbor(&t, 0)
    );
    let sessions_before = neighbor(&t, 0)?["established_count"].clone();
    let limited_before = counter(&vif_stats(&t, "vif-200")?["control_limited"]);

    // Broadcast UDP on VLAN 200, written straight onto the trunk.
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
    frame.extend_from_slice(&[0x81, 0x00, 0x00, 200, 0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 169, 254, 30, 2, 255, 255, 255, 255,
    ];
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let check = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&[0x13, 0x88, 0, 9, 0, 26, 0, 0]);
    frame.extend_from_slice(&[0x5a; 18]);

    let flood_for = Duration::from_secs(6);
    let started = Instant::now();
    let ((sent, received), flooded) = t.ping_during(80, || {
        forwarder_tests::flood(&t.rtr, "trunk0", &frame, 100_000, flood_for)
    })?;
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .min(flood_for.as_secs_f64() + 1.0);
    let rate = flooded as f64 / flood_for.as_secs_f64();
    let limited = counter(&vif_stats(&t, "vif-200")?["control_limited"]) - limited_before;
    println!(
        "flood: {flooded} broadcasts in {flood_for:?} ({rate:.0}/s), {limited} over vif-200's limit; \
         vif-100: {received}/{sent} pings"
    );
    ensure!(
        sent == 80 && received == sent,
        "vif-100 lost {} of {sent} pings under vif-200's flood\n{}",
        sent - received,
        agent.log_text()
    );
    let n = neighbor(&t, 0)?;
    ensure!(
        n["state"] == "Established" && n["established_count"] == sessions_before,
        "vif-100's session did not stay up: {n}"
    );
    // At most rate × time per class and CPU passed (plus the bursts); the rest was dropped
    // at the port and counted on vif-200.
    let cpus = std::thread::available_parallelism()?.get() as f64;
    let allowed = (cpus * (1000.0 * seconds + 200.0)).ceil() as u64;
    ensure!(
        limited + allowed >= flooded,
        "only {limited} of {flooded} broadcasts were limited (at most {allowed} may pass)"
    );
    let drops = cli_json(&t.socket(), &["stats"])?["drops"]["control_rate_limited"].clone();
    ensure!(counter(&drops) >= limited, "drops: {drops}");
    Ok(())
}

#[test]
fn source_check_drops_spoofed_sources() -> Result<()> {
    let t = Topology::new("urpf")?;
    let _customer = t.customer_router()?;
    t.write_fixture(&t.static_fixture_with(&[("source_check", "\"strict\"")]))?;
    let _agent = t.start_agent(common::bin())?;
    t.wait_available(common::bin(), "vif-100")?;
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(
        received == sent,
        "{received}/{sent} pings from the routed prefix"
    );

    // A source the gateway does not route to this VIF.
    sh(&t.idc, "ip addr add 203.0.113.7/32 dev eth0")?;
    let out = output_in(&t.idc, "ping -n -c 5 -i 0.2 -W 1 -I 203.0.113.7 10.0.1.10")?;
    ensure!(out.contains("0 received"), "spoofed pings answered: {out}");
    let stats = vif_stats(&t, "vif-100")?;
    ensure!(
        counter(&stats["source_check_dropped"]) == 5,
        "vif-100: {stats}"
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(
        received == sent,
        "{received}/{sent} pings after the spoofed ones"
    );

    // Turned off by a reload: the same packets go to the VPC (which has no route back).
    t.write_fixture(&t.static_fixture())?;
    let reload = common::cli(&t.socket(), &["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    let encapsulated = |t: &Topology| -> Result<u64> {
        let stats = cli_json(&t.socket(), &["stats", "--attachment", "att-a"])?;
        Ok(counter(&stats["attachments"][0]["tx_packets"]))
    };
    let before = encapsulated(&t)?;
    output_in(&t.idc, "ping -n -c 5 -i 0.2 -W 1 -I 203.0.113.7 10.0.1.10")?;
    ensure!(
        encapsulated(&t)? - before == 5,
        "without source_check the spoofed pings should have been forwarded"
    );
    let stats = vif_stats(&t, "vif-100")?;
    ensure!(counter(&stats["source_check_dropped"]) == 5, "{stats}");
    Ok(())
}
