//! The customer router's 802.1Q sub-interfaces emulated by the VLAN shim
//! (`forwarder_tests::CustomerRouter`, TC programs of `forwarder-test-ebpf`), first on their
//! own, then with real kernel stacks on every side of our gateway:
//!
//! ```text
//!  idc: eth0 192.168.50.10 ── rtr: lan0 192.168.50.1 (forwarding)
//!                             rtr: v100 169.254.10.2 ── v100p [shim]
//!                             rtr: trunk0 ══ 802.1Q ══ gw: trunk [xdp_customer]
//!                                                      gw: ul0 [xdp_underlay] ── vpc: eth0
//!                                                             vpc: vxlan0 VNI 1001, 10.0.1.10
//! ```
//!
//! Needs root, `ping`, `ethtool`, `ss` and `iperf3`.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use etherparse::{PacketBuilder, VlanId};
use forwarder::dataplane::{
    self, AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, PortRole, VifSpec,
};
use forwarder_common::{drop_reason, vif_state};
use forwarder_test_ebpf::{MAP_SUBIFS, MAP_VLANS, PROG_EGRESS, PROG_INGRESS, SubIf, TrunkVlan};
use forwarder_tests::{
    CustomerRouter, NetNs,
    customer::{SHIM_OBJECT, format_mac, interface_mac, shim_counters},
    send_frames, veth,
};

/// The gateway's MAC on VIF 1: the customer router's static neighbour for 169.254.10.1.
const VIF1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
/// The VPC's kernel VXLAN device: the attachment's router MAC.
const VPC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];

const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const VPC_VTEP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const VPC_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

/// Runs a whitespace-separated command inside `ns`; fails on a non-zero exit.
fn sh(ns: &NetNs, command: &str) -> Result<String> {
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = ns.exec(&args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside `ns` and returns its output whatever its exit status.
fn sh_any(ns: &NetNs, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {}", ns.name()))
}

fn rx_packets(ns: &NetNs, ifname: &str) -> Result<u64> {
    sh(
        ns,
        &format!("cat /sys/class/net/{ifname}/statistics/rx_packets"),
    )?
    .trim()
    .parse()
    .context("rx_packets")
}

/// Polls `check` every 50 ms for up to `timeout`; returns its last answer.
fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Result<(bool, T)>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, value) = check()?;
        if done || Instant::now() > deadline {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An ICMP echo request tagged with `vlan` (or untagged), as the gateway would put it on the
/// trunk toward the router.
fn echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    dst: [u8; 4],
    seq: u16,
) -> Result<Vec<u8>> {
    let src = [dst[0], dst[1], dst[2], dst[3] - 1];
    let payload = [0x5a; 32];
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let mut frame = Vec::new();
    match vlan {
        Some(vid) => eth
            .single_vlan(VlanId::try_new(vid)?)
            .ipv4(src, dst, 64)
            .icmpv4_echo_request(0x5348, seq)
            .write(&mut frame, &payload),
        None => eth
            .ipv4(src, dst, 64)
            .icmpv4_echo_request(0x5348, seq)
            .write(&mut frame, &payload),
    }?;
    Ok(frame)
}

/// Frames leaving a sub-interface reach the far end of the trunk with their VLAN's tag inline
/// (XDP `vlan_count` reads 0x8100 at offset 12); tagged frames arriving on the trunk reach
/// their sub-interface untagged (the router's kernel answers them, on the same VLAN); an
/// unknown VLAN and an untagged frame are dropped. Dropping the router detaches the shim.
#[test]
fn sub_interfaces_tag_inline_and_untag_on_the_trunk() -> Result<()> {
    let rtr = NetNs::new("rtr")?;
    let far = NetNs::new("far")?;
    veth(&far, "far0", &rtr, "trunk0")?;
    sh(&far, "ethtool -K far0 rxvlan off")?;
    let router = CustomerRouter::new(
        &rtr,
        "trunk0",
        &[(100, "169.254.10.2/30"), (200, "169.254.20.2/30")],
    )?;
    let far_mac = interface_mac(&far, "far0")?;
    for s in router.sub_interfaces() {
        println!(
            "sub-interface {} (shim {}) vlan {} {} mac {}",
            s.name,
            s.shim,
            s.vlan,
            s.address,
            format_mac(s.mac)
        );
    }
    // The router's peers on each VLAN are far0's MAC; no ARP is needed (nor answered).
    for (peer, dev) in [("169.254.10.1", "v100"), ("169.254.20.1", "v200")] {
        sh(
            &rtr,
            &format!(
                "ip neigh replace {peer} lladdr {} dev {dev} nud permanent",
                format_mac(far_mac)
            ),
        )?;
    }

    let mut ebpf = dataplane::load()?;
    let program: &mut Xdp = ebpf
        .program_mut("vlan_count")
        .context("vlan_count in the forwarder object")?
        .try_into()?;
    program.load()?;
    far.enter(|| {
        program.attach("far0", XdpMode::Driver)?;
        Ok(())
    })?;

    // 1. The router's own kernel sends: echo requests nobody answers.
    for (count, dev, peer) in [("3", "v100", "169.254.10.1"), ("2", "v200", "169.254.20.1")] {
        let out = sh_any(
            &rtr,
            &["ping", "-c", count, "-i", "0.2", "-W", "1", "-I", dev, peer],
        )?;
        println!(
            "ping -I {dev}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    // 14 Ethernet + 4 tag + 20 IPv4 + 8 ICMP + 56 data: the tag is inline, not in metadata.
    const PING_FRAME: u64 = 102;
    let counted = |vlan| dataplane::vlan_counter(&ebpf, vlan);
    let seen = wait_for(Duration::from_secs(5), || {
        let seen = [counted(Some(100))?, counted(Some(200))?];
        Ok((seen[0].packets >= 3 && seen[1].packets >= 2, seen))
    })?;
    println!(
        "far0 after the router's pings: vlan 100 {:?}, vlan 200 {:?}",
        seen[0], seen[1]
    );
    assert_eq!(
        (seen[0].packets, seen[0].bytes),
        (3, 3 * PING_FRAME),
        "frames out of v100 at far0's XDP"
    );
    assert_eq!(
        (seen[1].packets, seen[1].bytes),
        (2, 2 * PING_FRAME),
        "frames out of v200 at far0's XDP"
    );
    assert_eq!(counted(None)?.packets, 0, "untagged frames at far0's XDP");

    // 2. Frames from the trunk: four echo requests on VLAN 100, two on VLAN 200, one on VLAN
    // 300 (no sub-interface), one untagged.
    let (v100, v200) = (router.sub_interface(100)?, router.sub_interface(200)?);
    let mut frames = Vec::new();
    for seq in 0..4 {
        frames.push(echo_request(
            far_mac,
            v100.mac,
            Some(100),
            [169, 254, 10, 2],
            seq,
        )?);
    }
    for seq in 0..2 {
        frames.push(echo_request(
            far_mac,
            v200.mac,
            Some(200),
            [169, 254, 20, 2],
            seq,
        )?);
    }
    frames.push(echo_request(
        far_mac,
        v100.mac,
        Some(300),
        [169, 254, 10, 2],
        9,
    )?);
    frames.push(echo_request(
        far_mac,
        v100.mac,
        None,
        [169, 254, 10, 2],
        10,
    )?);
    let request_len = frames[0].len() as u64;
    send_frames(&far, "far0", &frames)?;

    // Echo replies are as long as the requests; they come back tagged on their own VLAN.
    let seen = wait_for(Duration::from_secs(5), || {
        let seen = [counted(Some(100))?, counted(Some(200))?];
        Ok((seen[0].packets >= 3 + 4 && seen[1].packets >= 2 + 2, seen))
    })?;
    let shim = router.counters()?;
    println!(
        "far0 after the trunk's requests: vlan 100 {:?}, vlan 200 {:?}",
        seen[0], seen[1]
    );
    println!("shim: {shim:?}");
    assert_eq!(
        (seen[0].packets, seen[0].bytes),
        (3 + 4, 3 * PING_FRAME + 4 * request_len),
        "echo replies on VLAN 100"
    );
    assert_eq!(
        (seen[1].packets, seen[1].bytes),
        (2 + 2, 2 * PING_FRAME + 2 * request_len),
        "echo replies on VLAN 200"
    );
    assert_eq!(counted(Some(300))?.packets, 0, "nothing on VLAN 300");
    assert_eq!(counted(None)?.packets, 0, "nothing untagged");
    assert_eq!(rx_packets(&rtr, "v100")?, 4, "frames delivered into v100");
    assert_eq!(rx_packets(&rtr, "v200")?, 2, "frames delivered into v200");
    assert_eq!(
        shim,
        forwarder_tests::ShimCounters {
            to_trunk: 3 + 2 + 4 + 2,
            from_trunk: 4 + 2,
            unknown_vlan: 1,
            not_tagged: 1,
            ..Default::default()
        },
        "shim counters"
    );

    // 3. Dropping the router detaches the shim and removes the pairs; the trunk stays.
    let tcx_ingress = |ifname: &'static str| {
        rtr.enter(move || {
            let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)?;
            Ok(programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>())
        })
    };
    let before = tcx_ingress("trunk0")?;
    assert!(
        before.len() == 1 && before[0].starts_with("vlan_shim"),
        "TC ingress of trunk0 while the router lives: {before:?}"
    );
    drop(router);
    assert_eq!(
        tcx_ingress("trunk0")?,
        Vec::<String>::new(),
        "TC ingress of trunk0 after drop"
    );
    for gone in ["v100", "v100p", "v200", "v200p"] {
        assert!(
            rtr.exec(&["ip", "link", "show", gone]).is_err(),
            "{gone} outlived the router"
        );
    }
    Ok(())
}

/// An IPv4/UDP frame with `tags` (TPID, TCI), outermost first, after the MAC addresses.
fn tagged_frame(tags: &[(u16, u16)]) -> Result<Vec<u8>> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 168, 50, 10], [10, 0, 1, 10], 64)
        .udp(40000, 9)
        .write(&mut frame, &[0xab; 18])?;
    for (i, (tpid, tci)) in tags.iter().enumerate() {
        let at = 12 + 4 * i;
        frame.splice(
            at..at,
            tpid.to_be_bytes().into_iter().chain(tci.to_be_bytes()),
        );
    }
    Ok(frame)
}

/// Every branch of both shim programs through BPF_PROG_TEST_RUN, frames byte for byte. The
/// kernel runs a TC program there on the loopback device (ifindex 1, playing trunk and shim
/// end), leaves a tag inline (no `skb_vlan_untag` as on the receive path: this is what
/// exercises the inline branch) and only records a redirect.
#[test]
fn shim_programs_under_prog_test_run() -> Result<()> {
    forwarder_tests::require_root()?;
    const LO: u32 = 1;
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    let mut ebpf = Ebpf::load(SHIM_OBJECT)?;
    let mut vlans: aya::maps::HashMap<_, TrunkVlan, u32> =
        aya::maps::HashMap::try_from(ebpf.map_mut(MAP_VLANS).context(MAP_VLANS)?)?;
    vlans.insert(
        TrunkVlan {
            trunk_ifindex: LO,
            vlan: 100,
        },
        42,
        0,
    )?;
    for name in [PROG_INGRESS, PROG_EGRESS] {
        let program: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }
    let run = |ebpf: &Ebpf, name: &str, frame: &[u8]| -> Result<(u32, Vec<u8>)> {
        let program: &SchedClassifier = ebpf.program(name).context("program")?.try_into()?;
        let mut out = vec![0u8; frame.len() + 64];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    };

    // (case, tags, delivered: redirected with exactly the untagged frame left; else dropped)
    type Tags = &'static [(u16, u16)];
    let cases: [(&str, Tags, bool); 6] = [
        ("vlan 100", &[(0x8100, 100)], true),
        ("vlan 100, priority 5", &[(0x8100, 0xa064)], true),
        ("vlan 300", &[(0x8100, 300)], false),
        ("untagged", &[], false),
        ("service tag 0x88a8", &[(0x88a8, 100)], false),
        ("QinQ 100/7", &[(0x8100, 100), (0x8100, 7)], false),
    ];
    let untagged = tagged_frame(&[])?;
    for (what, tags, delivered) in cases {
        let (ret, out) = run(&ebpf, PROG_INGRESS, &tagged_frame(tags)?)?;
        if delivered {
            assert_eq!(ret, TC_ACT_REDIRECT, "{PROG_INGRESS}, {what}");
            assert_eq!(
                out, untagged,
                "{PROG_INGRESS}, {what}: the frame after the pop"
            );
        } else {
            assert_eq!(ret, TC_ACT_SHOT, "{PROG_INGRESS}, {what}");
        }
    }
    // The shim end is not configured yet, then it is.
    let (ret, _) = run(&ebpf, PROG_EGRESS, &untagged)?;
    assert_eq!(ret, TC_ACT_SHOT, "{PROG_EGRESS} on an unknown port");
    let mut subifs: aya::maps::HashMap<_, u32, SubIf> =
        aya::maps::HashMap::try_from(ebpf.map_mut(MAP_SUBIFS).context(MAP_SUBIFS)?)?;
    subifs.insert(
        LO,
        SubIf {
            vlan: 100,
            trunk_ifindex: 43,
        },
        0,
    )?;
    let (ret, out) = run(&ebpf, PROG_EGRESS, &untagged)?;
    assert_eq!(ret, TC_ACT_REDIRECT, "{PROG_EGRESS} on a sub-interface");
    assert_eq!(
        out, untagged,
        "the pushed tag lives in skb metadata, not in the data"
    );

    let counters = shim_counters(&ebpf)?;
    println!("shim: {counters:?}");
    assert_eq!(
        counters,
        forwarder_tests::ShimCounters {
            to_trunk: 1,
            from_trunk: 2,
            unknown_subif: 1,
            not_tagged: 2,
            unknown_vlan: 1,
            stacked_tags: 1,
            helper_failed: 0,
        }
    );
    Ok(())
}

/// A VPC host: `eth0` on the underlay, and the kernel's VXLAN device toward our VTEP holding
/// 10.0.1.10/24, with a route back to the IDC prefix. TX checksum offload off on both (either
/// one is enough; with both on, TCP from the VPC arrives with bad checksums): XDP decapsulates
/// and redirects the frame, and a checksum left to offload is never filled in.
fn setup_vpc(vpc: &NetNs) -> Result<()> {
    forwarder_tests::topology::add_vpc(
        vpc,
        &VPC_VTEP.to_string(),
        &LOCAL_VTEP.to_string(),
        1001,
        &format_mac(VPC_MAC),
    )
}

/// Loads the data plane in `gw`, attaches it to `trunk` and `ul0`, and waits until the VPC's
/// VTEP is resolved (bpf_fib_lookup needs its MAC).
fn start_gateway(gw: &NetNs) -> Result<Dataplane> {
    sh(gw, &format!("ip addr add {LOCAL_VTEP}/24 dev ul0"))?;
    let dp = gw.enter(|| {
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dataplane::prepare_port("trunk", PortRole::Connection)?;
        dataplane::prepare_port("ul0", PortRole::Underlay)?;
        dp.attach("trunk", PortRole::Connection, XdpMode::Driver)?;
        dp.attach("ul0", PortRole::Underlay, XdpMode::Driver)?;
        dataplane::track_vtep(VPC_VTEP)?;
        Ok(dp)
    })?;
    let neigh = wait_for(Duration::from_secs(5), || {
        let neigh = sh(gw, &format!("ip neigh show {VPC_VTEP} dev ul0"))?;
        Ok((neigh.contains("lladdr"), neigh))
    })?;
    ensure!(
        neigh.contains("lladdr"),
        "VTEP {VPC_VTEP} never resolved: {neigh:?}"
    );
    Ok(dp)
}

/// Kills the child (ours, by its handle) if it is still running when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None))
            && let Err(e) = self.0.kill()
        {
            eprintln!("warning: killing child {}: {e}", self.0.id());
        }
        if let Err(e) = self.0.wait() {
            eprintln!("warning: reaping child {}: {e}", self.0.id());
        }
    }
}

/// What one iperf3 run moved, as its receiver counted it.
struct Transfer {
    direction: &'static str,
    received: f64,
}

/// Runs iperf3 for 2 s between the IDC host (client) and a one-off server on the VPC host;
/// `reverse`: the VPC host sends. Prints the size and rate.
fn iperf3(idc: &NetNs, vpc: &NetNs, reverse: bool) -> Result<Transfer> {
    let direction = if reverse {
        "vpc → idc"
    } else {
        "idc → vpc"
    };
    let vpc_host = VPC_HOST.to_string();
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            vpc.name(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            &vpc_host,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s in the VPC")?;
    let _server = Reap(server);
    let listening = wait_for(Duration::from_secs(5), || {
        let ss = sh_any(vpc, &["ss", "-Hltn", "sport", "=", ":5201"])?;
        Ok((!ss.stdout.is_empty(), !ss.stdout.is_empty()))
    })?;
    ensure!(listening, "iperf3 server in the VPC never listened on 5201");
    let mut args = vec!["timeout", "20", "iperf3", "-c", &vpc_host, "-t", "2", "-J"];
    if reverse {
        args.push("-R");
    }
    let client = sh_any(idc, &args)?;
    let json = String::from_utf8_lossy(&client.stdout);
    let failed = |why: String| {
        anyhow::anyhow!(
            "iperf3 {direction}: {why} ({}): {json}{}",
            client.status,
            String::from_utf8_lossy(&client.stderr)
        )
    };
    let received =
        json_number(&json, "sum_received", "bytes").map_err(|e| failed(format!("{e:#}")))?;
    let rate = json_number(&json, "sum_received", "bits_per_second")
        .map_err(|e| failed(format!("{e:#}")))?;
    let retransmits = json_number(&json, "sum_sent", "retransmits")
        .map_or_else(|_| "?".to_owned(), |r| r.to_string());
    println!(
        "tcp {direction}: {:.1} MiB received in 2 s, {:.0} Mbit/s, {retransmits} retransmits",
        received / 1_048_576.0,
        rate / 1e6,
    );
    if !client.status.success() {
        return Err(failed("client failed".to_owned()));
    }
    Ok(Transfer {
        direction,
        received,
    })
}

/// The number after `"field":` in the JSON object that follows `"object"` in `json`.
fn json_number(json: &str, object: &str, field: &str) -> Result<f64> {
    let start = json
        .find(&format!("\"{object}\""))
        .with_context(|| format!("no {object} in the iperf3 output"))?;
    let rest = &json[start..];
    let at = rest
        .find(&format!("\"{field}\":"))
        .with_context(|| format!("no {object}.{field} in the iperf3 output"))?;
    let number: String = rest[at + field.len() + 3..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    number
        .parse()
        .with_context(|| format!("{object}.{field} = {number:?}"))
}

/// The DESIGN §6 topology with real stacks everywhere: the IDC host pings the VPC host and
/// TCP runs both ways, through the customer router (forwarding, VLAN 100 on the shim), our XDP
/// gateway (VIF 1 → attachment 1, VXLAN VNI 1001) and the VPC's kernel VXLAN device.
#[test]
fn idc_host_reaches_the_vpc_through_a_customer_router_on_vlan_100() -> Result<()> {
    let idc = NetNs::new("idc")?;
    let rtr = NetNs::new("rtr")?;
    let gw = NetNs::new("gw")?;
    let vpc = NetNs::new("vpc")?;
    veth(&idc, "eth0", &rtr, "lan0")?;
    veth(&rtr, "trunk0", &gw, "trunk")?;
    veth(&gw, "ul0", &vpc, "eth0")?;

    sh(&idc, "ip addr add 192.168.50.10/24 dev eth0")?;
    sh(&idc, "ip route add default via 192.168.50.1")?;

    sh(&rtr, "sysctl -qw net.ipv4.ip_forward=1")?;
    sh(&rtr, "ip addr add 192.168.50.1/24 dev lan0")?;
    let router = CustomerRouter::new(&rtr, "trunk0", &[(100, "169.254.10.2/30")])?;
    let v100 = router.sub_interface(100)?;
    // Until the agent runs the VIF's control plane, nothing answers ARP for 169.254.10.1.
    sh(
        &rtr,
        &format!(
            "ip neigh replace 169.254.10.1 lladdr {} dev v100 nud permanent",
            format_mac(VIF1_MAC)
        ),
    )?;
    sh(&rtr, "ip route add 10.0.1.0/24 via 169.254.10.1 dev v100")?;

    setup_vpc(&vpc)?;
    let mut dp = start_gateway(&gw)?;
    let trunk = gw.ifindex("trunk")?;
    let ul0 = gw.ifindex("ul0")?;
    dp.upsert_vif(&VifSpec {
        id: 1,
        port_ifindex: trunk,
        vlan: 100,
        gateway_id: 1,
        state: vif_state::AVAILABLE,
        control_ifindex: 0,
        cloud_addrs: [Some(Ipv4Addr::new(169, 254, 10, 1)), None],
        addrs6: Default::default(),
        mac: VIF1_MAC,
        policy: Default::default(),
    })?;
    dp.upsert_attachment(&AttachmentSpec {
        id: 1,
        gateway_id: 1,
        vni: 1001,
        local_vtep: LOCAL_VTEP,
        remote_vtep: VPC_VTEP,
        underlay_ifindex: ul0,
        router_mac: VPC_MAC,
    })?;
    dp.set_next_hop(1, &NextHopSpec::Attachment(1))?;
    dp.set_next_hop(
        2,
        &NextHopSpec::Vif {
            vif: 1,
            mac: v100.mac,
        },
    )?;
    dp.upsert_routes(&[
        (1, "10.0.1.0/24".parse::<ipnet::Ipv4Net>()?, 1),
        (1, "192.168.50.0/24".parse::<ipnet::Ipv4Net>()?, 2),
    ])?;

    let report = |dp: &Dataplane| -> Result<[u64; drop_reason::COUNT as usize]> {
        let drops = dp.drops()?;
        println!("gateway {}", dp.counter_summary()?);
        println!("vif 1: {:?}", dp.vif_counters(1)?);
        println!("attachment 1: {:?}", dp.attachment_counters(1)?);
        println!("shim: {:?}", router.counters()?);
        Ok(drops)
    };

    // ICMP.
    let ping = sh_any(
        &idc,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            &VPC_HOST.to_string(),
        ],
    )?;
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    for line in ping_out
        .lines()
        .filter(|l| l.contains("transmitted") || l.contains("rtt"))
    {
        println!("ping: {line}");
    }
    if !ping_out.contains("5 packets transmitted, 5 received") {
        report(&dp)?;
        bail!("idc → {VPC_HOST}: not 5 of 5 echo replies:\n{ping_out}");
    }

    // TCP both ways: 2 s of iperf3 each, the IDC host sending, then the VPC host.
    let mut transfers = Vec::new();
    for reverse in [false, true] {
        match iperf3(&idc, &vpc, reverse) {
            Ok(t) => transfers.push(t),
            Err(e) => {
                report(&dp)?;
                return Err(e);
            }
        }
    }

    let drops = report(&dp)?;
    for t in &transfers {
        assert!(
            t.received >= 1_048_576.0,
            "TCP {} moved only {} bytes in 2 s",
            t.direction,
            t.received
        );
    }
    let vif1 = dp.vif_counters(1)?;
    let att1 = dp.attachment_counters(1)?;
    assert!(
        vif1.rx_packets >= 5 && vif1.tx_packets >= 5,
        "VIF 1 carried the pings and the transfer both ways: {vif1:?}"
    );
    assert!(
        att1.rx_packets >= 5 && att1.tx_packets >= 5,
        "attachment 1 carried the pings and the transfer both ways: {att1:?}"
    );
    assert!(
        att1.tx_bytes >= 1_048_576 && att1.rx_bytes >= 1_048_576,
        "the transfers went through the tunnel: {att1:?}"
    );
    assert_eq!(drops.iter().sum::<u64>(), 0, "gateway drops");
    assert_eq!(router.counters()?.drops(), 0, "shim drops");
    Ok(())
}
