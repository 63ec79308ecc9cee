//! End to end with real kernels on both sides: a customer namespace sends 802.1Q-tagged ICMP
//! echo requests (scapy), our XDP on the gateway encapsulates them into VXLAN, the Linux
//! kernel's own VXLAN device in a VPC namespace decapsulates and answers, and the answer comes
//! back through our XDP tagged with the customer's VLAN. Maps are programmed through
//! `forwarder::dataplane` directly (no agent).
//!
//! ```text
//!  cust: cust0 ══ 802.1Q ══ gw: trunk [xdp_customer]
//!                           gw: ul0 172.31.0.1 [xdp_underlay] ── vpc: eth0 172.31.0.2
//!                                                                vpc: vxlan0 VNI 1001, 10.0.1.10
//! ```
//!
//! Needs root and `/usr/bin/python3` with scapy (Debian: python3-scapy).

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::XdpMode;
use etherparse::{LinkHeader, NetHeaders, PacketHeaders, TransportHeader, VlanHeader};
use forwarder::dataplane::{
    self, AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, PortRole, VifSpec,
};
use forwarder_common::{drop_reason, vif_state};
use forwarder_tests::{NetNs, veth};

/// The customer router's MAC (cust0).
const CUST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc0, 0x01];
/// The gateway's MAC on each VIF: what the customer sends to, and the source of replies.
const VIF1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const VIF2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];
/// MACs of the VPC-side kernel VXLAN devices: the attachments' router MACs.
const VPC_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const VPC_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];

const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const CUSTOMER_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const VPC_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

const PYTHON: &str = "/usr/bin/python3";

/// Sends `count` tagged ICMP echo requests out of an interface and prints every ICMP echo reply
/// with the same identifier that comes back, on any VLAN, as `REPLY <frame hex>`. Exits 1 when
/// nothing came back. The sniffer runs before the first request leaves and keeps listening a
/// little after the expected replies are in, so a reply on a wrong VLAN would be seen too.
const PING_SCRIPT: &str = r#"
import sys, threading, time
from scapy.all import AsyncSniffer, Dot1Q, Ether, ICMP, IP, Raw, conf, sendp
conf.verb = 0
iface, smac, dmac, vlan, src, dst, ident, count, timeout = sys.argv[1:]
vlan, ident, count, timeout = int(vlan), int(ident), int(count), float(timeout)
replies = []
def keep(p):
    if ICMP in p and p[ICMP].type == 0 and p[ICMP].id == ident:
        replies.append(bytes(p))
started = threading.Event()
sniffer = AsyncSniffer(iface=iface, prn=keep, store=False, started_callback=started.set)
sniffer.start()
if not started.wait(10):
    sys.exit("sniffer did not start")
for seq in range(count):
    frame = (Ether(src=smac, dst=dmac) / Dot1Q(vlan=vlan)
             / IP(src=src, dst=dst, ttl=64) / ICMP(type=8, id=ident, seq=seq)
             / Raw(b"forwarder-dataplane-ns"))
    sendp(frame, iface=iface, verbose=False)
    time.sleep(0.1)
deadline = time.time() + timeout
while time.time() < deadline and len(replies) < count:
    time.sleep(0.05)
time.sleep(0.5)
sniffer.stop()
print("SENT", count)
for r in replies:
    print("REPLY", r.hex())
sys.exit(0 if replies else 1)
"#;

/// An echo reply as the customer received it.
#[derive(Debug)]
struct Reply {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// `None`: untagged.
    vlan: Option<u16>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    ip_checksum_ok: bool,
    icmp_echo_reply: bool,
    id: u16,
    seq: u16,
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn parse_reply(hex: &str) -> Result<Reply> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).context("odd hex")?, 16).context("hex"))
        .collect::<Result<Vec<u8>>>()?;
    let headers = PacketHeaders::from_ethernet_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("unparsable reply {hex}: {e}"))?;
    let Some(LinkHeader::Ethernet2(eth)) = headers.link else {
        bail!("no Ethernet header in {hex}");
    };
    let vlan = match headers.vlan {
        None => None,
        Some(VlanHeader::Single(tag)) => Some(tag.vlan_id.value()),
        Some(VlanHeader::Double(_)) => bail!("double-tagged reply {hex}"),
    };
    let Some(NetHeaders::Ipv4(ip, _)) = headers.net else {
        bail!("no IPv4 header in {hex}");
    };
    let Some(TransportHeader::Icmpv4(icmp)) = headers.transport else {
        bail!("no ICMP header in {hex}");
    };
    let (icmp_echo_reply, id, seq) = match icmp.icmp_type {
        etherparse::Icmpv4Type::EchoReply(echo) => (true, echo.id, echo.seq),
        _ => (false, 0, 0),
    };
    Ok(Reply {
        dst_mac: eth.destination,
        src_mac: eth.source,
        vlan,
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        ttl: ip.time_to_live,
        ip_checksum_ok: ip.header_checksum == ip.calc_header_checksum(),
        icmp_echo_reply,
        id,
        seq,
    })
}

/// Pings the VPC host from the customer namespace on `vlan` (three requests) and returns the
/// echo replies that came back to cust0, on any VLAN.
fn ping_from_customer(cust: &NetNs, vif_mac: [u8; 6], vlan: u16, ident: u16) -> Result<Vec<Reply>> {
    let args = [
        "netns".to_owned(),
        "exec".to_owned(),
        cust.name().to_owned(),
        PYTHON.to_owned(),
        "-c".to_owned(),
        PING_SCRIPT.to_owned(),
        "cust0".to_owned(),
        mac(CUST_MAC),
        mac(vif_mac),
        vlan.to_string(),
        CUSTOMER_HOST.to_string(),
        VPC_HOST.to_string(),
        ident.to_string(),
        "3".to_owned(),
        "3".to_owned(),
    ];
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running scapy in the customer namespace")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "no echo reply on cust0 (vlan {vlan}, {}): stdout: {stdout} stderr: {stderr}",
            out.status
        );
    }
    let replies = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("REPLY "))
        .map(parse_reply)
        .collect::<Result<Vec<_>>>()?;
    for r in &replies {
        println!(
            "reply on cust0: vlan {:?} {} -> {} ttl {} icmp echo-reply {} id {:#06x} seq {} \
             mac {} -> {} ip checksum ok {}",
            r.vlan,
            r.src,
            r.dst,
            r.ttl,
            r.icmp_echo_reply,
            r.id,
            r.seq,
            mac(r.src_mac),
            mac(r.dst_mac),
            r.ip_checksum_ok
        );
    }
    Ok(replies)
}

/// Runs a whitespace-separated command inside `ns`.
fn sh(ns: &NetNs, command: &str) -> Result<String> {
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = ns.exec(&args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The customer end of the trunk: a fixed MAC, GRO on (a veth only accepts XDP redirects when
/// its receiving side has GRO or XDP), tags inline.
fn setup_customer(gw: &NetNs, cust: &NetNs) -> Result<()> {
    veth(gw, "trunk", cust, "cust0")?;
    sh(
        cust,
        &format!("ip link set cust0 address {}", mac(CUST_MAC)),
    )?;
    sh(cust, "ethtool -K cust0 gro on rxvlan off")?;
    Ok(())
}

/// A VPC host: `eth0` (already one end of a veth) on the underlay, and the kernel's VXLAN
/// device toward our VTEP holding 10.0.1.10/24, with a route back to the customer prefix.
/// `default_ttl` tells the VPCs apart in the replies.
fn setup_vpc(vpc: &NetNs, underlay: Ipv4Addr, vni: u32, vxlan_mac: [u8; 6], ttl: u8) -> Result<()> {
    forwarder_tests::topology::add_vpc(
        vpc,
        &underlay.to_string(),
        &LOCAL_VTEP.to_string(),
        vni,
        &mac(vxlan_mac),
    )?;
    sh(vpc, &format!("sysctl -qw net.ipv4.ip_default_ttl={ttl}"))?;
    Ok(())
}

/// Loads the data plane in the gateway namespace and attaches it to `trunk` and `ul0`, then
/// keeps the remote VTEPs' neighbour entries resolved and waits until they are.
fn start_gateway(gw: &NetNs, vteps: &[Ipv4Addr]) -> Result<Dataplane> {
    sh(gw, &format!("ip addr add {LOCAL_VTEP}/24 dev ul0"))?;
    let dp = gw.enter(|| {
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        dataplane::prepare_port("trunk", PortRole::Connection)?;
        dataplane::prepare_port("ul0", PortRole::Underlay)?;
        dp.attach("trunk", PortRole::Connection, XdpMode::Driver)?;
        dp.attach("ul0", PortRole::Underlay, XdpMode::Driver)?;
        for vtep in vteps {
            dataplane::track_vtep(*vtep)?;
        }
        Ok(dp)
    })?;
    for port in ["trunk", "ul0"] {
        let link = sh(gw, &format!("ip -d link show {port}"))?;
        ensure!(
            link.contains("xdp "),
            "{port} should run native XDP: {link}"
        );
    }
    // The managed neighbour entry resolves on its own; bpf_fib_lookup needs its MAC.
    for vtep in vteps {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let neigh = sh(gw, &format!("ip neigh show {vtep} dev ul0"))?;
            if neigh.contains("lladdr") {
                println!("gw neighbour: {}", neigh.trim());
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "managed neighbour {vtep} never resolved: {neigh:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(dp)
}

fn vif(
    id: u32,
    port_ifindex: u32,
    vlan: u16,
    gateway_id: u32,
    cloud: Ipv4Addr,
    mac: [u8; 6],
) -> VifSpec {
    VifSpec {
        id,
        port_ifindex,
        vlan,
        gateway_id,
        state: vif_state::AVAILABLE,
        control_ifindex: 0,
        cloud_addrs: [Some(cloud), None],
        addrs6: Default::default(),
        mac,
        policy: Default::default(),
    }
}

fn attachment(
    id: u32,
    gateway_id: u32,
    vni: u32,
    remote_vtep: Ipv4Addr,
    underlay_ifindex: u32,
    router_mac: [u8; 6],
) -> AttachmentSpec {
    AttachmentSpec {
        id,
        gateway_id,
        vni,
        local_vtep: LOCAL_VTEP,
        remote_vtep,
        underlay_ifindex,
        router_mac,
    }
}

/// Prints the drop and pass counters (non-zero ones, by name) and per-object traffic counters.
fn report(
    dp: &Dataplane,
    vifs: &[u32],
    attachments: &[u32],
) -> Result<[u64; drop_reason::COUNT as usize]> {
    let drops = dp.drops()?;
    println!("{}", dp.counter_summary()?);
    for id in vifs {
        println!("vif {id}: {:?}", dp.vif_counters(*id)?);
    }
    for id in attachments {
        println!("attachment {id}: {:?}", dp.attachment_counters(*id)?);
    }
    Ok(drops)
}

/// Interface statistics of the VPC side, printed when something went wrong.
fn vpc_diagnostics(vpcs: &[&NetNs]) {
    for vpc in vpcs {
        match sh(vpc, "ip -s link show") {
            Ok(s) => println!("{}:\n{s}", vpc.name()),
            Err(e) => println!("{}: {e:#}", vpc.name()),
        }
    }
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

/// Checks every reply the customer got: tagged with `vlan`, from the VPC host to the customer
/// host, gateway MAC → customer MAC, TTL one below the answering VPC's, valid checksum.
fn check_replies(replies: &[Reply], vlan: u16, vif_mac: [u8; 6], ident: u16, vpc_ttl: u8) {
    assert!(
        !replies.is_empty(),
        "no echo reply came back on vlan {vlan}"
    );
    for r in replies {
        assert_eq!(r.vlan, Some(vlan), "reply VLAN: {r:?}");
        assert!(r.icmp_echo_reply, "not an echo reply: {r:?}");
        assert_eq!(r.id, ident, "echo identifier: {r:?}");
        assert_eq!(r.src, VPC_HOST, "reply source: {r:?}");
        assert_eq!(r.dst, CUSTOMER_HOST, "reply destination: {r:?}");
        assert_eq!(mac(r.src_mac), mac(vif_mac), "reply source MAC: {r:?}");
        assert_eq!(
            mac(r.dst_mac),
            mac(CUST_MAC),
            "reply destination MAC: {r:?}"
        );
        assert_eq!(
            r.ttl,
            vpc_ttl - 1,
            "the gateway decrements the VPC's TTL once: {r:?}"
        );
        assert!(
            r.ip_checksum_ok,
            "IPv4 header checksum after TTL decrement: {r:?}"
        );
    }
}

#[test]
fn customer_ping_is_answered_by_the_vpc_kernel_through_vxlan() -> Result<()> {
    let gw = NetNs::new("gw")?;
    let cust = NetNs::new("cust")?;
    let vpc = NetNs::new("vpc")?;
    setup_customer(&gw, &cust)?;
    veth(&gw, "ul0", &vpc, "eth0")?;
    let vpc_vtep = Ipv4Addr::new(172, 31, 0, 2);
    setup_vpc(&vpc, vpc_vtep, 1001, VPC_A_MAC, 64)?;

    let mut dp = start_gateway(&gw, &[vpc_vtep])?;
    let trunk = gw.ifindex("trunk")?;
    let ul0 = gw.ifindex("ul0")?;
    dp.upsert_vif(&vif(
        1,
        trunk,
        100,
        1,
        Ipv4Addr::new(169, 254, 10, 1),
        VIF1_MAC,
    ))?;
    dp.upsert_attachment(&attachment(1, 1, 1001, vpc_vtep, ul0, VPC_A_MAC))?;
    dp.set_next_hop(1, &NextHopSpec::Attachment(1))?;
    dp.set_next_hop(
        2,
        &NextHopSpec::Vif {
            vif: 1,
            mac: CUST_MAC,
        },
    )?;
    dp.upsert_route(1, "10.0.1.0/24".parse::<ipnet::Ipv4Net>()?, 1)?;
    dp.upsert_route(1, "192.168.50.0/24".parse::<ipnet::Ipv4Net>()?, 2)?;

    let replies = ping_from_customer(&cust, VIF1_MAC, 100, 0x0100);
    let drops = report(&dp, &[1], &[1])?;
    if replies.is_err() {
        vpc_diagnostics(&[&vpc]);
    }
    let replies = replies?;
    println!("{} echo replies to 3 requests", replies.len());
    check_replies(&replies, 100, VIF1_MAC, 0x0100, 64);

    let vif1 = dp.vif_counters(1)?;
    let att1 = dp.attachment_counters(1)?;
    assert!(
        vif1.rx_packets >= 1,
        "VIF 1 counted no frame from the customer: {vif1:?}"
    );
    assert!(
        vif1.tx_packets >= 1,
        "VIF 1 counted no frame toward the customer: {vif1:?}"
    );
    assert!(
        att1.tx_packets >= 1,
        "attachment 1 encapsulated nothing: {att1:?}"
    );
    assert!(
        att1.rx_packets >= 1,
        "attachment 1 decapsulated nothing: {att1:?}"
    );
    assert!(
        att1.tx_packets <= vif1.rx_packets && vif1.tx_packets <= att1.rx_packets,
        "every encapsulated frame came from the VIF and every tagged one from the tunnel: \
         {vif1:?} {att1:?}"
    );
    assert_eq!(
        drops.iter().sum::<u64>(),
        0,
        "nothing should be dropped in this exchange"
    );
    Ok(())
}

/// The same customer prefix and the same VPC address in two border gateways: a VIF only ever
/// reaches its own gateway's VPC, and only its own gateway's VPC answers it.
///
/// ```text
///  cust0 ══ trunk (VLAN 100 → VIF 1 → gateway 1, VLAN 200 → VIF 2 → gateway 2)
///  gw ul0 ── ul: br0 ─┬─ vpc-a eth0 172.31.0.2, vxlan0 VNI 1001, 10.0.1.10, default TTL 64
///                     └─ vpc-b eth0 172.31.0.3, vxlan0 VNI 1002, 10.0.1.10, default TTL 32
/// ```
#[test]
fn same_prefixes_in_two_gateways_stay_isolated() -> Result<()> {
    let gw = NetNs::new("gw")?;
    let cust = NetNs::new("cust")?;
    let ul = NetNs::new("ul")?;
    let vpc_a = NetNs::new("vpca")?;
    let vpc_b = NetNs::new("vpcb")?;
    setup_customer(&gw, &cust)?;
    veth(&gw, "ul0", &ul, "to-gw")?;
    veth(&ul, "to-a", &vpc_a, "eth0")?;
    veth(&ul, "to-b", &vpc_b, "eth0")?;
    sh(&ul, "ip link add br0 type bridge")?;
    for port in ["to-gw", "to-a", "to-b"] {
        sh(&ul, &format!("ip link set {port} master br0"))?;
    }
    sh(&ul, "ip link set br0 up")?;
    // Our XDP redirects encapsulated frames into ul0; its peer must accept them.
    sh(&ul, "ethtool -K to-gw gro on")?;
    let (vtep_a, vtep_b) = (Ipv4Addr::new(172, 31, 0, 2), Ipv4Addr::new(172, 31, 0, 3));
    setup_vpc(&vpc_a, vtep_a, 1001, VPC_A_MAC, 64)?;
    setup_vpc(&vpc_b, vtep_b, 1002, VPC_B_MAC, 32)?;

    let mut dp = start_gateway(&gw, &[vtep_a, vtep_b])?;
    let trunk = gw.ifindex("trunk")?;
    let ul0 = gw.ifindex("ul0")?;
    dp.upsert_vif(&vif(
        1,
        trunk,
        100,
        1,
        Ipv4Addr::new(169, 254, 10, 1),
        VIF1_MAC,
    ))?;
    dp.upsert_vif(&vif(
        2,
        trunk,
        200,
        2,
        Ipv4Addr::new(169, 254, 20, 1),
        VIF2_MAC,
    ))?;
    dp.upsert_attachment(&attachment(1, 1, 1001, vtep_a, ul0, VPC_A_MAC))?;
    dp.upsert_attachment(&attachment(2, 2, 1002, vtep_b, ul0, VPC_B_MAC))?;
    dp.set_next_hop(1, &NextHopSpec::Attachment(1))?;
    dp.set_next_hop(
        2,
        &NextHopSpec::Vif {
            vif: 1,
            mac: CUST_MAC,
        },
    )?;
    dp.set_next_hop(3, &NextHopSpec::Attachment(2))?;
    dp.set_next_hop(
        4,
        &NextHopSpec::Vif {
            vif: 2,
            mac: CUST_MAC,
        },
    )?;
    dp.upsert_routes(&[
        (1, "10.0.1.0/24".parse::<ipnet::Ipv4Net>()?, 1),
        (1, "192.168.50.0/24".parse::<ipnet::Ipv4Net>()?, 2),
        (2, "10.0.1.0/24".parse::<ipnet::Ipv4Net>()?, 3),
        (2, "192.168.50.0/24".parse::<ipnet::Ipv4Net>()?, 4),
    ])?;
    assert_eq!(dp.lookup(1, VPC_HOST)?, Some(1));
    assert_eq!(dp.lookup(2, VPC_HOST)?, Some(3));

    // VLAN 200 first, while VPC A has seen nothing at all.
    let a_before = rx_packets(&vpc_a, "vxlan0")?;
    let replies = ping_from_customer(&cust, VIF2_MAC, 200, 0x0200);
    report(&dp, &[1, 2], &[1, 2])?;
    if replies.is_err() {
        vpc_diagnostics(&[&vpc_a, &vpc_b]);
    }
    let replies = replies?;
    println!("vlan 200: {} echo replies to 3 requests", replies.len());
    // TTL 31 = VPC B's 32 − 1: VPC B answered; every reply is on VLAN 200 with VIF 2's MAC.
    check_replies(&replies, 200, VIF2_MAC, 0x0200, 32);
    assert_eq!(
        rx_packets(&vpc_a, "vxlan0")?,
        a_before,
        "VPC A's VXLAN device received something while only VLAN 200 was pinging"
    );
    let (att1, att2) = (dp.attachment_counters(1)?, dp.attachment_counters(2)?);
    assert_eq!(
        (att1.tx_packets, att1.rx_packets),
        (0, 0),
        "attachment 1: {att1:?}"
    );
    assert!(
        att2.tx_packets >= 1 && att2.rx_packets >= 1,
        "attachment 2: {att2:?}"
    );
    let vif1 = dp.vif_counters(1)?;
    assert_eq!(
        (vif1.rx_packets, vif1.tx_packets),
        (0, 0),
        "VIF 1: {vif1:?}"
    );

    // Then VLAN 100: answered by VPC A only, on VLAN 100.
    let b_before = rx_packets(&vpc_b, "vxlan0")?;
    let replies = ping_from_customer(&cust, VIF1_MAC, 100, 0x0100);
    let drops = report(&dp, &[1, 2], &[1, 2])?;
    if replies.is_err() {
        vpc_diagnostics(&[&vpc_a, &vpc_b]);
    }
    let replies = replies?;
    println!("vlan 100: {} echo replies to 3 requests", replies.len());
    check_replies(&replies, 100, VIF1_MAC, 0x0100, 64);
    assert_eq!(
        rx_packets(&vpc_b, "vxlan0")?,
        b_before,
        "VPC B's VXLAN device received something while only VLAN 100 was pinging"
    );
    let att2_after = dp.attachment_counters(2)?;
    assert_eq!(
        att2_after, att2,
        "attachment 2 moved during the VLAN 100 pings"
    );
    assert_eq!(
        drops.iter().sum::<u64>(),
        0,
        "nothing should be dropped in this exchange"
    );
    Ok(())
}
