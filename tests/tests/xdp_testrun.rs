//! Every branch of the XDP programs through BPF_PROG_TEST_RUN: frames built with etherparse,
//! outputs compared byte for byte with frames built the same way, drop counters read back.
//!
//! The programs run inside a namespace that has the ports (ifindexes for the VIF keys and the
//! TX map) and an underlay with a neighbour for the VTEP, because `bpf_fib_lookup` consults
//! the namespace of the device the test run pretends the frame arrived on.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, SingleVlanHeader, UdpHeader,
    VlanId, VlanPcp,
};
use forwarder::dataplane::{
    AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, PortRole, VifSpec,
};
use forwarder_common::{
    UnderlayHop, VifAddrs6, VifPolicy, drop_reason, flow_hash, flow_hash6, group_member,
    pass_reason, vif_flags, vif_state, vxlan_source_port,
};
use forwarder_tests::{NetNs, veth};
use ipnet::{Ipv4Net, Ipv6Net};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT1: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
const CLIENT2: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const CLIENT3: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x03];
const VIF_MAC: [[u8; 6]; 7] = [
    [0; 6],
    [0x02, 0xf0, 0, 0, 0, 0x01],
    [0x02, 0xf0, 0, 0, 0, 0x02],
    [0x02, 0xf0, 0, 0, 0, 0x03],
    [0x02, 0xf0, 0, 0, 0, 0x04],
    [0x02, 0xf0, 0, 0, 0, 0x05],
    [0x02, 0xf0, 0, 0, 0, 0x06],
];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
/// The underlay next hop's MAC, a permanent neighbour of 172.31.0.2 in the test namespace.
const VTEP_MAC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 0x02];
const ECMP_MACS: [[u8; 6]; 4] = [
    [0x02, 0xec, 0, 0, 0, 1],
    [0x02, 0xec, 0, 0, 0, 2],
    [0x02, 0xec, 0, 0, 0, 3],
    [0x02, 0xec, 0, 0, 0, 4],
];
const LOCAL_VTEP: [u8; 4] = [172, 31, 0, 1];
const REMOTE_VTEP: [u8; 4] = [172, 31, 0, 2];
const CLOUD_ADDR: [u8; 4] = [169, 254, 10, 1];
const VIF2_MTU: u16 = 1000;
/// VIF 1's IPv6 pair.
const CLOUD6: [u8; 16] = v6(0x2001_0db8_00ff_0000, 1);
const CLIENT6: [u8; 16] = v6(0x2001_0db8_00ff_0000, 2);
/// VIF 6 (IPv6 only, MTU 1300) has its own pair.
const CLOUD6_VIF6: [u8; 16] = v6(0x2001_0db8_00fd_0000, 1);
const VIF6_MTU: u16 = 1300;
/// The underlay path of attachment 8 (172.31.8.2) has an MTU of 1400.
const PATH8_MTU: u16 = 1400;

/// An IPv6 address from its upper and lower 64 bits.
const fn v6(hi: u64, lo: u64) -> [u8; 16] {
    ((hi as u128) << 64 | lo as u128).to_be_bytes()
}

/// A loaded data plane with two border gateways, five VIFs and six attachments, and the
/// namespace its programs run in.
struct Fixture {
    gw: NetNs,
    _cust: NetNs,
    _vpc: NetNs,
    _ctl: NetNs,
    dp: Dataplane,
    trunk: u32,
    ul0: u32,
    ctl: u32,
    ul0_mac: [u8; 6],
}

/// (gateway, prefix, next hop) — the route table the fixture installs; the random-frame test
/// uses it as the model of what the data plane must answer.
const ROUTES: &[(u32, &str, u32)] = &[
    (1, "10.0.0.0/16", 1),
    (1, "10.0.128.0/17", 8),
    (1, "10.0.128.7/32", 9),
    (1, "192.168.50.0/24", 3),
    (1, "192.168.60.0/24", 4),
    (1, "10.3.0.0/16", 6),
    (1, "10.4.0.0/16", 7),
    (1, "10.6.0.0/16", 10),
    (1, "10.7.0.0/16", 30),
    (1, "192.168.70.0/24", 20),
    (1, "192.168.80.0/24", 11),
    (1, "192.168.90.0/24", 12),
    // A /21 in /24 shortcuts, a /24 inside it, a /25 that splits another /24 of it (no
    // shortcut there), and a /16 around them that only the trie holds.
    (1, "10.5.8.0/21", 1),
    (1, "10.5.10.0/24", 8),
    (1, "10.5.12.0/25", 9),
    (1, "10.5.0.0/16", 7),
    (2, "10.0.0.0/16", 2),
    (2, "192.168.50.0/24", 5),
];

/// The IPv6 routes, the same way.
const ROUTES6: &[(u32, &str, u32)] = &[
    (1, "2001:db8:a::/48", 1),
    (1, "2001:db8:a:8000::/49", 8),
    (1, "2001:db8:50::/48", 3),
    (1, "2001:db8:60::/48", 4),
    (1, "2001:db8:61::/48", 40),
    (1, "2001:db8:b::/48", 41),
    (1, "2001:db8:70::/48", 20),
    (2, "2001:db8:a::/48", 2),
    (2, "2001:db8:50::/48", 5),
];

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let gw = NetNs::new("trgw")?;
        let cust = NetNs::new("trcust")?;
        let vpc = NetNs::new("trvpc")?;
        let ctl = NetNs::new("trctl")?;
        veth(&gw, "trunk", &cust, "cust0")?;
        veth(&gw, "ul0", &vpc, "eth0")?;
        veth(&gw, "ctl1", &ctl, "cp0")?;
        gw.exec(&["ip", "addr", "add", "172.31.0.1/24", "dev", "ul0"])?;
        let vtep_mac = mac_str(VTEP_MAC);
        for (addr, mac) in [
            ("172.31.0.2", vtep_mac.as_str()),
            ("172.31.9.2", vtep_mac.as_str()),
            ("172.31.8.2", vtep_mac.as_str()),
        ] {
            gw.exec(&[
                "ip",
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                "ul0",
                "nud",
                "permanent",
            ])?;
        }
        // A path with a small MTU, for the MTU drop.
        gw.exec(&[
            "ip",
            "route",
            "add",
            "172.31.9.0/24",
            "dev",
            "ul0",
            "mtu",
            "lock",
            "600",
        ])?;
        gw.exec(&[
            "ip",
            "route",
            "add",
            "172.31.8.0/24",
            "dev",
            "ul0",
            "mtu",
            "lock",
            &PATH8_MTU.to_string(),
        ])?;
        // `ip netns exec` mounts the namespace's own /sys; a setns'd thread would see ours.
        let mac = gw.exec(&["cat", "/sys/class/net/ul0/address"])?;
        let ul0_mac = parse_mac(String::from_utf8_lossy(&mac.stdout).trim());
        let (dp, trunk, ul0, ctl_if) = gw.enter(|| {
            forwarder::dataplane::prepare_port("ul0", PortRole::Underlay)?;
            let mut dp = Dataplane::load(&LoadOptions::default())?;
            let trunk = forwarder::dataplane::if_index("trunk")?;
            let ul0 = forwarder::dataplane::if_index("ul0")?;
            let ctl = forwarder::dataplane::if_index("ctl1")?;
            for port in [trunk, ul0, ctl] {
                dp.add_tx_port(port)?;
            }
            Ok((dp, trunk, ul0, ctl))
        })?;
        let mut f = Self {
            gw,
            _cust: cust,
            _vpc: vpc,
            _ctl: ctl,
            dp,
            trunk,
            ul0,
            ctl: ctl_if,
            ul0_mac,
        };
        f.program()?;
        Ok(f)
    }

    fn program(&mut self) -> anyhow::Result<()> {
        let vif =
            |id: u32, vlan: u16, gateway_id: u32, state: u32, control: u32, port: u32| VifSpec {
                id,
                port_ifindex: port,
                vlan,
                gateway_id,
                state,
                control_ifindex: control,
                cloud_addrs: [Some(Ipv4Addr::from(CLOUD_ADDR)), None],
                addrs6: VifAddrs6::default(),
                mac: VIF_MAC[id as usize],
                policy: Default::default(),
            };
        let (trunk, ctl) = (self.trunk, self.ctl);
        self.dp.upsert_vif(&VifSpec {
            addrs6: VifAddrs6 {
                cloud: [CLOUD6, [0; 16]],
                client: [CLIENT6, [0; 16]],
            },
            ..vif(1, 100, 1, vif_state::AVAILABLE, ctl, trunk)
        })?;
        // VIF 6: IPv6 only, MTU 1300, on the trunk.
        self.dp.upsert_vif(&VifSpec {
            cloud_addrs: [None, None],
            addrs6: VifAddrs6 {
                cloud: [CLOUD6_VIF6, [0; 16]],
                client: [v6(0x2001_0db8_00fd_0000, 2), [0; 16]],
            },
            policy: VifPolicy {
                mtu: VIF6_MTU,
                ..VifPolicy::default()
            },
            ..vif(6, 600, 1, vif_state::AVAILABLE, 0, trunk)
        })?;
        // VIF 2 has a smaller MTU than the links: too-big packets toward it.
        self.dp.upsert_vif(&VifSpec {
            policy: VifPolicy {
                mtu: VIF2_MTU,
                ..VifPolicy::default()
            },
            ..vif(2, 200, 1, vif_state::AVAILABLE, 0, trunk)
        })?;
        self.dp
            .upsert_vif(&vif(3, 300, 2, vif_state::AVAILABLE, 0, trunk))?;
        self.dp
            .upsert_vif(&vif(4, 400, 1, vif_state::CONFIGURING, 0, trunk))?;
        // VIF 5 lives on a port that is not in the TX map.
        self.dp
            .upsert_vif(&vif(5, 500, 1, vif_state::AVAILABLE, 0, 999))?;

        let att = |id: u32, gateway_id: u32, vni: u32, remote: [u8; 4]| AttachmentSpec {
            id,
            gateway_id,
            vni,
            local_vtep: Ipv4Addr::from(LOCAL_VTEP),
            remote_vtep: Ipv4Addr::from(remote),
            underlay_ifindex: self.ul0,
            router_mac: ROUTER_MAC,
        };
        self.dp.upsert_attachment(&att(1, 1, 1001, REMOTE_VTEP))?;
        self.dp.upsert_attachment(&att(2, 2, 1002, REMOTE_VTEP))?;
        self.dp
            .upsert_attachment(&att(3, 1, 1003, [172, 31, 0, 3]))?; // no neighbour
        self.dp
            .upsert_attachment(&att(4, 1, 1004, [172, 31, 9, 2]))?; // MTU 600 path
        self.dp.upsert_attachment(&att(5, 1, 1005, REMOTE_VTEP))?;
        self.dp.upsert_attachment(&att(6, 1, 1006, REMOTE_VTEP))?;
        self.dp
            .upsert_attachment(&att(7, 1, 1007, [198, 18, 0, 1]))?; // no underlay route
        self.dp
            .upsert_attachment(&att(8, 1, 1008, [172, 31, 8, 2]))?; // MTU 1400 path

        use NextHopSpec::{Attachment, Group, Vif};
        self.dp.set_next_hop(1, &Attachment(1))?;
        self.dp.set_next_hop(2, &Attachment(2))?;
        self.dp.set_next_hop(
            3,
            &Vif {
                vif: 1,
                mac: CLIENT1,
            },
        )?;
        self.dp.set_next_hop(
            4,
            &Vif {
                vif: 2,
                mac: CLIENT2,
            },
        )?;
        self.dp.set_next_hop(
            5,
            &Vif {
                vif: 3,
                mac: CLIENT3,
            },
        )?;
        self.dp.set_next_hop(6, &Attachment(3))?;
        self.dp.set_next_hop(7, &Attachment(4))?;
        self.dp.set_next_hop(8, &Attachment(5))?;
        self.dp.set_next_hop(9, &Attachment(6))?;
        self.dp.set_next_hop(10, &Attachment(7))?;
        self.dp.set_next_hop(
            11,
            &Vif {
                vif: 4,
                mac: CLIENT1,
            },
        )?;
        self.dp.set_next_hop(
            12,
            &Vif {
                vif: 5,
                mac: CLIENT1,
            },
        )?;
        for (i, mac) in ECMP_MACS.iter().enumerate() {
            self.dp
                .set_next_hop(21 + i as u32, &Vif { vif: 1, mac: *mac })?;
        }
        self.dp.set_next_hop(20, &Group(vec![21, 22, 23, 24]))?;
        self.dp.set_next_hop(
            40,
            &Vif {
                vif: 6,
                mac: CLIENT1,
            },
        )?;
        self.dp.set_next_hop(41, &Attachment(8))?;
        // Next hop 30 stays empty: a route to it is a bad next hop.
        let routes: Vec<_> = ROUTES
            .iter()
            .map(|(gw, prefix, nh)| (*gw, prefix.parse::<Ipv4Net>().expect("prefix"), *nh))
            .collect();
        self.dp.upsert_routes(&routes)?;
        // The /24 shortcuts, as the agent writes them.
        self.dp
            .write_routes24(&forwarder::routes24::build(&routes), &[])?;
        let routes6: Vec<_> = ROUTES6
            .iter()
            .map(|(gw, prefix, nh)| (*gw, prefix.parse::<Ipv6Net>().expect("prefix"), *nh))
            .collect();
        self.dp.upsert_routes(&routes6)?;
        Ok(())
    }

    /// Runs `program` on `frame` as if it arrived on `ifindex`; returns the action and the
    /// frame as the program left it.
    fn run(&mut self, program: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self
            .dp
            .ebpf_mut()
            .program_mut(program)
            .expect("program")
            .try_into()
            .expect("xdp");
        let ctx = xdp_md(frame.len(), ifindex);
        // Room for a jumbo frame and the head room it may grow by.
        let mut out = vec![0u8; 16384];
        let prog = &*prog;
        let (action, len) = self
            .gw
            .enter(|| {
                let result = prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })?;
                Ok((result.return_value, result.data_size_out as usize))
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(len);
        (action, out)
    }

    fn customer(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let trunk = self.trunk;
        self.run("xdp_customer", trunk, frame)
    }

    fn underlay(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let ul0 = self.ul0;
        self.run("xdp_underlay", ul0, frame)
    }

    fn drops(&self) -> [u64; drop_reason::COUNT as usize] {
        self.dp.drops().expect("drops")
    }

    /// Runs `f`, then asserts that exactly one drop was counted, under `reason`.
    fn expect_drop(&mut self, reason: u32, f: impl FnOnce(&mut Self) -> (u32, Vec<u8>)) {
        let before = self.drops();
        let (action, _) = f(self);
        let after = self.drops();
        let name = drop_reason::NAMES[reason as usize];
        assert_eq!(action, XDP_DROP, "expected a {name} drop");
        for (i, (a, b)) in after.iter().zip(before.iter()).enumerate() {
            let want = u64::from(i as u32 == reason);
            assert_eq!(
                a - b,
                want,
                "counter {} after a {name} drop",
                drop_reason::NAMES[i]
            );
        }
    }
}

/// `struct xdp_md` for ctx_in: the frame starts at 0, arrives on `ifindex`, queue 0.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(s.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("mac");
    }
    mac
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An IPv4 UDP packet (no link layer) with a checksum, as a host would send it.
fn ipv4_udp(
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::new();
    PacketBuilder::ipv4(src, dst, ttl)
        .udp(sport, dport)
        .write(&mut packet, payload)
        .expect("ipv4");
    packet
}

fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: EtherType(ether_type),
    }
    .to_bytes()
    .to_vec()
}

fn tagged(dst: [u8; 6], src: [u8; 6], vlan: u16, ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut frame = eth(dst, src, 0x8100);
    frame.extend_from_slice(
        &SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(vlan).expect("vlan"),
            ether_type: EtherType(ether_type),
        }
        .to_bytes(),
    );
    frame.extend_from_slice(l3);
    frame
}

/// The same IPv4 packet one hop later: TTL − 1, checksum recomputed from scratch.
fn forwarded(packet: &[u8]) -> Vec<u8> {
    let (mut header, rest) = Ipv4Header::from_slice(packet).expect("ipv4 header");
    header.time_to_live -= 1;
    header.header_checksum = header.calc_header_checksum();
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(rest);
    out
}

/// The frame the gateway must send toward a VTEP for `inner` (an IPv4 packet, already
/// forwarded), built independently of the data plane.
fn vxlan_frame(
    f: &Fixture,
    vni: u32,
    remote: [u8; 4],
    inner_src_mac: [u8; 6],
    inner: &[u8],
    hash: u32,
) -> Vec<u8> {
    let mut vxlan_payload = vec![0x08, 0, 0, 0];
    vxlan_payload.extend_from_slice(&(vni << 8).to_be_bytes());
    vxlan_payload.extend(eth(ROUTER_MAC, inner_src_mac, ether_type_of(inner)));
    vxlan_payload.extend_from_slice(inner);
    let udp_len = (8 + vxlan_payload.len()) as u16;
    let mut ip = Ipv4Header::new(udp_len, 64, IpNumber::UDP, LOCAL_VTEP, remote).expect("outer");
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader {
        source_port: vxlan_source_port(hash),
        destination_port: 4789,
        length: udp_len,
        checksum: 0,
    };
    let mut frame = eth(VTEP_MAC, f.ul0_mac, 0x0800);
    frame.extend_from_slice(&ip.to_bytes());
    frame.extend_from_slice(&udp.to_bytes());
    frame.extend(vxlan_payload);
    frame
}

/// The ethertype of an IP packet by its version.
fn ether_type_of(packet: &[u8]) -> u16 {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    }
}

/// A VXLAN frame as a VPC's VTEP sends it toward the gateway.
fn from_vpc(vni: u32, remote: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend(eth(
        [0x02, 0xf0, 0, 0, 0, 0xee],
        ROUTER_MAC,
        ether_type_of(inner),
    ));
    payload.extend_from_slice(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(VTEP_MAC, [0x02, 0xaa, 0, 0, 0, 1])
        .ipv4(remote, LOCAL_VTEP, 64)
        .udp(51234, 4789)
        .write(&mut frame, &payload)
        .expect("vxlan");
    frame
}

fn hash_of(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> u32 {
    flow_hash(
        u32::from_be_bytes(src),
        u32::from_be_bytes(dst),
        17,
        sport,
        dport,
    )
}

const IDC_HOST: [u8; 4] = [192, 168, 50, 10];
const VPC_HOST: [u8; 4] = [10, 0, 1, 10];

#[test]
fn encapsulates_customer_traffic_toward_the_attachment() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let payload = b"hello vpc".repeat(10);
    let packet = ipv4_udp(IDC_HOST, VPC_HOST, 64, 40000, 5001, &payload);
    let frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet);
    let vif_before = f.dp.vif_counters(1)?;
    let att_before = f.dp.attachment_counters(1)?;

    let (action, out) = f.customer(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let hash = hash_of(IDC_HOST, VPC_HOST, 40000, 5001);
    let expected = vxlan_frame(&f, 1001, REMOTE_VTEP, VIF_MAC[1], &forwarded(&packet), hash);
    assert_eq!(out, expected, "encapsulated frame, byte for byte");

    // Checked field by field too, so a failure says which one.
    let sliced = etherparse::SlicedPacket::from_ethernet(&out)?;
    let Some(etherparse::NetSlice::Ipv4(outer)) = &sliced.net else {
        panic!("outer IPv4")
    };
    let h = outer.header();
    assert_eq!(
        (h.source(), h.destination(), h.ttl(), h.dont_fragment()),
        (LOCAL_VTEP, REMOTE_VTEP, 64, true)
    );
    assert_eq!(
        h.header_checksum(),
        h.to_header().calc_header_checksum(),
        "outer checksum"
    );
    let Some(etherparse::TransportSlice::Udp(udp)) = &sliced.transport else {
        panic!("UDP")
    };
    assert_eq!(udp.destination_port(), 4789);
    assert!(
        udp.source_port() >= 49152,
        "source port {} in 49152..=65535",
        udp.source_port()
    );
    assert_eq!(udp.checksum(), 0);
    let vxlan = udp.payload();
    assert_eq!(
        &vxlan[..8],
        &[0x08, 0, 0, 0, 0, 0x03, 0xe9, 0],
        "VXLAN header, VNI 1001"
    );
    let (inner_ip, _) = Ipv4Header::from_slice(&vxlan[8 + 14..])?;
    assert_eq!(inner_ip.time_to_live, 63);
    assert_eq!(
        inner_ip.header_checksum,
        inner_ip.calc_header_checksum(),
        "inner checksum"
    );

    // Same flow, same source port; another flow is hashed on its own.
    let (_, again) = f.customer(&frame);
    assert_eq!(again, out);
    let other = ipv4_udp(IDC_HOST, VPC_HOST, 64, 40001, 5001, &payload);
    let (_, out2) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &other));
    let sport2 = u16::from_be_bytes([out2[34], out2[35]]);
    assert_eq!(
        sport2,
        vxlan_source_port(hash_of(IDC_HOST, VPC_HOST, 40001, 5001))
    );

    let vif_after = f.dp.vif_counters(1)?;
    let att_after = f.dp.attachment_counters(1)?;
    assert_eq!(vif_after.rx_packets - vif_before.rx_packets, 3);
    assert_eq!(
        vif_after.rx_bytes - vif_before.rx_bytes,
        2 * frame.len() as u64 + frame.len() as u64
    );
    assert_eq!(att_after.tx_packets - att_before.tx_packets, 3);
    assert_eq!(
        att_after.tx_bytes - att_before.tx_bytes,
        3 * out.len() as u64
    );
    Ok(())
}

#[test]
fn decapsulates_vpc_traffic_and_tags_it_for_the_vif() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(VPC_HOST, IDC_HOST, 64, 5001, 40000, b"hello idc");
    let frame = from_vpc(1001, REMOTE_VTEP, &packet);
    let (action, out) = f.underlay(&frame);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[1], 100, 0x0800, &forwarded(&packet))
    );
    assert_eq!(f.dp.attachment_counters(1)?.rx_packets, 1);
    assert_eq!(f.dp.attachment_counters(1)?.rx_bytes, frame.len() as u64);
    assert_eq!(f.dp.vif_counters(1)?.tx_packets, 1);
    assert_eq!(f.dp.vif_counters(1)?.tx_bytes, out.len() as u64);
    Ok(())
}

#[test]
fn hairpins_between_vifs_of_one_gateway() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(IDC_HOST, [192, 168, 60, 5], 64, 1, 2, b"to the other vif");
    let mut frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet);
    frame[14] |= 0xa0; // PCP 5 must survive the re-tag
    let (action, out) = f.customer(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let mut expected = tagged(CLIENT2, VIF_MAC[2], 200, 0x0800, &forwarded(&packet));
    expected[14] |= 0xa0;
    assert_eq!(out, expected);
    assert_eq!(f.dp.vif_counters(2)?.tx_packets, 1);
    Ok(())
}

#[test]
fn longest_prefix_wins_among_overlapping_routes() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    for (dst, vni) in [
        ([10, 0, 1, 10], 1001),
        ([10, 0, 200, 1], 1005),
        ([10, 0, 128, 7], 1006),
        ([10, 0, 128, 8], 1005),
    ] {
        let packet = ipv4_udp(IDC_HOST, dst, 64, 7, 7, b"lpm");
        let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet));
        assert_eq!(action, XDP_REDIRECT, "{dst:?}");
        let got = u32::from_be_bytes([0, out[46], out[47], out[48]]);
        assert_eq!(got, vni, "VNI for {dst:?}");
    }
    // The control-plane view agrees with the data plane.
    assert_eq!(f.dp.lookup(1, Ipv4Addr::new(10, 0, 128, 7))?, Some(9));
    assert_eq!(f.dp.lookup(1, Ipv4Addr::new(10, 0, 128, 8))?, Some(8));
    assert_eq!(f.dp.lookup(1, Ipv4Addr::new(10, 0, 1, 1))?, Some(1));
    assert_eq!(f.dp.lookup(1, Ipv4Addr::new(10, 99, 0, 1))?, None);
    Ok(())
}

/// The /24 shortcuts answer before the trie, and answer as the trie does: a /24 inside a
/// /21, the /21 around it, a /24 that a /25 splits (the trie's), a /16 (the trie's).
#[test]
fn the_24_shortcuts_answer_as_the_trie_does() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let vni_to = |f: &mut Fixture, dst: [u8; 4]| {
        let packet = ipv4_udp(IDC_HOST, dst, 64, 7, 7, b"24");
        let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet));
        assert_eq!(action, XDP_REDIRECT, "{dst:?}");
        u32::from_be_bytes([0, out[46], out[47], out[48]])
    };
    let cases = [
        ([10, 5, 10, 200], 1005, Some(8)), // the /24
        ([10, 5, 9, 1], 1001, Some(1)),    // the /21
        ([10, 5, 15, 255], 1001, Some(1)), // the /21's last /24
        ([10, 5, 12, 5], 1006, None),      // the /25: its /24 has no shortcut
        ([10, 5, 12, 200], 1001, None),    // the /21, through the trie
        ([10, 5, 16, 1], 1004, None),      // the /16, trie only
    ];
    let shortcuts: std::collections::HashMap<(u32, u32), u32> =
        f.dp.routes24()?
            .into_iter()
            .map(|(g, n, nh)| ((g, n), nh))
            .collect();
    for (dst, vni, shortcut) in cases {
        assert_eq!(vni_to(&mut f, dst), vni, "VNI for {dst:?}");
        let net = u32::from_be_bytes([dst[0], dst[1], dst[2], 0]);
        assert_eq!(
            shortcuts.get(&(1, net)).copied(),
            shortcut,
            "shortcut of {dst:?}"
        );
        assert_eq!(
            f.dp.lookup(1, Ipv4Addr::from(dst))?,
            model_lookup(1, dst),
            "lookup of {dst:?}"
        );
    }
    // The programs look at the shortcut first: one that names another next hop is followed
    // (the agent never writes one that disagrees with the trie; this shows it is used).
    f.dp.write_routes24(&[(1, u32::from_be_bytes([10, 5, 9, 0]), 8)], &[])?;
    assert_eq!(vni_to(&mut f, [10, 5, 9, 1]), 1005);
    // Removed, the trie answers again; removing one that is not there is no error.
    let gone = [(1, u32::from_be_bytes([10, 5, 9, 0])), (1, 7)];
    f.dp.write_routes24(&[], &gone)?;
    assert_eq!(vni_to(&mut f, [10, 5, 9, 1]), 1001);
    assert_eq!(f.dp.routes24()?.len(), shortcuts.len() - 1);
    Ok(())
}

/// Routes go into the maps in batches (`BPF_MAP_UPDATE_BATCH`, both families in one call);
/// a batch that meets a full map writes what fits, in order, and says so.
#[test]
fn route_batches_write_in_order_and_stop_at_a_full_map() -> anyhow::Result<()> {
    use forwarder::dataplane::{Error, ROUTE_BATCH};
    use ipnet::IpNet;
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: None,
        max_routes: Some(3000),
    })?;
    // More than one batch of IPv4 /32s, IPv6 /64s between them, and a prefix written twice
    // (the later next hop stays).
    let v4 = |i: u32| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i), 32).expect("v4"));
    let v6 = |i: u16| {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0), 64).expect("v6"))
    };
    let mut routes: Vec<(u32, IpNet, u32)> = (0..ROUTE_BATCH as u32 + 100)
        .map(|i| (1, v4(i), 1 + i % 7))
        .collect();
    routes.extend((0..10).map(|i| (1, v6(i), 3)));
    routes.extend((0..10).map(|i| (2, v4(i), 4)));
    routes.push((1, v4(5), 9));
    let (written, result) = dp.upsert_route_batch(&routes);
    result?;
    assert_eq!(written, routes.len());
    assert_eq!(
        dp.lookup(1, Ipv4Addr::from(0x0b00_0000 + ROUTE_BATCH as u32 + 50))?,
        Some(1 + (ROUTE_BATCH as u32 + 50) % 7)
    );
    assert_eq!(
        dp.lookup(1, Ipv4Addr::from(0x0b00_0005))?,
        Some(9),
        "the later write of a prefix stays"
    );
    assert_eq!(
        dp.lookup(2, Ipv4Addr::from(0x0b00_0003))?,
        Some(4),
        "gateways apart"
    );
    assert_eq!(
        dp.lookup(1, Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1))?,
        Some(3)
    );
    assert_eq!(dp.lookup(1, Ipv4Addr::from(0x0b00_0000 + 5000))?, None);

    // The IPv4 map holds 3000: 1134 routes are in (1124 of gateway 1, 10 of gateway 2); of
    // 2000 more, 1866 fit.
    let more: Vec<(u32, IpNet, u32)> = (0..2000).map(|i| (3, v4(i), 2)).collect();
    let (written, result) = dp.upsert_route_batch(&more);
    let room = 3000 - (ROUTE_BATCH + 100) - 10;
    assert_eq!(written, room, "what fits is written");
    assert!(matches!(result, Err(Error::RouteMapFull)), "{result:?}");
    assert_eq!(
        dp.lookup(3, Ipv4Addr::from(0x0b00_0000 + room as u32 - 1))?,
        Some(2)
    );
    assert_eq!(
        dp.lookup(3, Ipv4Addr::from(0x0b00_0000 + room as u32))?,
        None,
        "nothing after the first failure"
    );
    Ok(())
}

#[test]
fn the_same_prefix_in_two_gateways_stays_apart() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(IDC_HOST, VPC_HOST, 64, 9, 9, b"isolation");
    let (_, from_gw1) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet));
    let (_, from_gw2) = f.customer(&tagged(VIF_MAC[3], CLIENT3, 300, 0x0800, &packet));
    let h = hash_of(IDC_HOST, VPC_HOST, 9, 9);
    assert_eq!(
        from_gw1,
        vxlan_frame(&f, 1001, REMOTE_VTEP, VIF_MAC[1], &forwarded(&packet), h)
    );
    assert_eq!(
        from_gw2,
        vxlan_frame(&f, 1002, REMOTE_VTEP, VIF_MAC[3], &forwarded(&packet), h)
    );
    // And back: VNI 1002 reaches only gateway 2's VIF.
    let reply = ipv4_udp(VPC_HOST, IDC_HOST, 64, 9, 9, b"back");
    let (_, out) = f.underlay(&from_vpc(1002, REMOTE_VTEP, &reply));
    assert_eq!(
        out,
        tagged(CLIENT3, VIF_MAC[3], 300, 0x0800, &forwarded(&reply))
    );
    let (_, out) = f.underlay(&from_vpc(1001, REMOTE_VTEP, &reply));
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[1], 100, 0x0800, &forwarded(&reply))
    );
    Ok(())
}

#[test]
fn control_frames_go_to_the_vif_control_plane_untagged() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let arp = {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&CLIENT1);
        a.extend_from_slice(&[169, 254, 10, 2]);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&CLOUD_ADDR);
        a
    };
    let mut bgp = Vec::new();
    PacketBuilder::ipv4([169, 254, 10, 2], CLOUD_ADDR, 1)
        .tcp(41000, 179, 1, 65535)
        .syn()
        .write(&mut bgp, &[])?;
    let passes_before = f.dp.passes()?;
    for (ether_type, dst, l3) in [(0x0806, [0xff; 6], &arp), (0x0800, VIF_MAC[1], &bgp)] {
        let (action, out) = f.customer(&tagged(dst, CLIENT1, 100, ether_type, l3));
        assert_eq!(action, XDP_REDIRECT);
        let mut expected = eth(dst, CLIENT1, ether_type);
        expected.extend_from_slice(l3);
        assert_eq!(
            out, expected,
            "tag removed, nothing else touched (TTL 1 BGP is fine)"
        );
    }
    // What the control plane answers leaves tagged on the VIF's port.
    let mut reply = eth(CLIENT1, VIF_MAC[1], 0x0806);
    reply.extend_from_slice(&arp);
    let ctl = f.ctl;
    let (action, out) = f.run("xdp_control", ctl, &reply);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, tagged(CLIENT1, VIF_MAC[1], 100, 0x0806, &arp));
    let passes = f.dp.passes()?;
    assert_eq!(
        passes[pass_reason::CONTROL_IN as usize] - passes_before[pass_reason::CONTROL_IN as usize],
        2
    );
    assert_eq!(
        passes[pass_reason::CONTROL_OUT as usize]
            - passes_before[pass_reason::CONTROL_OUT as usize],
        1
    );
    Ok(())
}

#[test]
fn host_traffic_on_the_underlay_passes_to_the_stack() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let mut arp = eth([0xff; 6], VTEP_MAC, 0x0806);
    arp.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0x5e, 0, 0, 0, 2, 172, 31, 0, 2, 0, 0, 0, 0, 0, 0, 172, 31, 0, 1,
    ]);
    let mut ssh = Vec::new();
    PacketBuilder::ethernet2(VTEP_MAC, f.ul0_mac)
        .ipv4(REMOTE_VTEP, LOCAL_VTEP, 64)
        .tcp(50000, 22, 1, 1000)
        .write(&mut ssh, b"")?;
    let mut dns = Vec::new();
    PacketBuilder::ethernet2(VTEP_MAC, f.ul0_mac)
        .ipv4(REMOTE_VTEP, LOCAL_VTEP, 64)
        .udp(50000, 53)
        .write(&mut dns, b"q")?;
    for frame in [&arp, &ssh, &dns] {
        let (action, out) = f.underlay(frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(&out, frame);
    }
    assert_eq!(f.dp.passes()?[pass_reason::HOST as usize], 3);
    Ok(())
}

#[test]
fn every_drop_reason_is_counted() -> anyhow::Result<()> {
    use drop_reason::*;
    let mut f = Fixture::new()?;
    let udp =
        |dst: [u8; 4], ttl: u8, len: usize| ipv4_udp(IDC_HOST, dst, ttl, 1, 2, &vec![0u8; len]);
    let from_vif =
        |vlan: u16, vif: usize, packet: &[u8]| tagged(VIF_MAC[vif], CLIENT1, vlan, 0x0800, packet);

    let mut untagged = eth(VIF_MAC[1], CLIENT1, 0x0800);
    untagged.extend(udp(VPC_HOST, 64, 10));
    f.expect_drop(NOT_TAGGED, |f| f.customer(&untagged));
    let mut qinq = from_vif(100, 1, &udp(VPC_HOST, 64, 10));
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    f.expect_drop(SERVICE_TAG, |f| f.customer(&qinq));
    f.expect_drop(UNKNOWN_VLAN, |f| {
        f.customer(&from_vif(999, 1, &udp(VPC_HOST, 64, 10)))
    });
    f.expect_drop(VIF_DOWN, |f| {
        f.customer(&from_vif(400, 4, &udp(VPC_HOST, 64, 10)))
    });
    f.expect_drop(VIF_DOWN, |f| {
        f.underlay(&from_vpc(
            1001,
            REMOTE_VTEP,
            &ipv4_udp(VPC_HOST, [192, 168, 80, 1], 64, 1, 2, b"x"),
        ))
    });
    f.expect_drop(NO_ROUTE, |f| {
        f.customer(&from_vif(100, 1, &udp([10, 99, 0, 1], 64, 10)))
    });
    // VPC to VPC through the gateway is not offered.
    f.expect_drop(NO_ROUTE, |f| {
        f.underlay(&from_vpc(
            1001,
            REMOTE_VTEP,
            &ipv4_udp(VPC_HOST, [10, 0, 2, 2], 64, 1, 2, b"x"),
        ))
    });
    f.expect_drop(TTL, |f| {
        f.customer(&from_vif(100, 1, &udp(VPC_HOST, 1, 10)))
    });
    f.expect_drop(TTL, |f| {
        f.underlay(&from_vpc(
            1001,
            REMOTE_VTEP,
            &ipv4_udp(VPC_HOST, IDC_HOST, 1, 1, 2, b"x"),
        ))
    });
    // Too big without DF: the data plane does not fragment.
    f.expect_drop(MTU, |f| {
        f.customer(&from_vif(100, 1, &without_df(&udp([10, 4, 0, 1], 64, 600))))
    });
    // The same path takes a packet that fits once encapsulated (528 + 50 ≤ 600).
    let (action, _) = f.customer(&from_vif(100, 1, &udp([10, 4, 0, 1], 64, 500)));
    assert_eq!(action, XDP_REDIRECT, "a packet that fits the path MTU");
    let mut bad_version = udp(VPC_HOST, 64, 10);
    bad_version[0] = 0x65;
    f.expect_drop(MALFORMED, |f| f.customer(&from_vif(100, 1, &bad_version)));
    let mut long_claim = udp(VPC_HOST, 64, 10);
    long_claim[2..4].copy_from_slice(&1000u16.to_be_bytes());
    f.expect_drop(MALFORMED, |f| f.customer(&from_vif(100, 1, &long_claim)));
    f.expect_drop(BAD_VXLAN, |f| {
        f.underlay(&from_vpc(4242, REMOTE_VTEP, &udp(IDC_HOST, 64, 10)))
    });
    f.expect_drop(BAD_VXLAN, |f| {
        f.underlay(&from_vpc(1001, [172, 31, 0, 99], &udp(IDC_HOST, 64, 10)))
    });
    f.expect_drop(NO_NEIGHBOUR, |f| {
        f.customer(&from_vif(100, 1, &udp([10, 3, 0, 1], 64, 10)))
    });
    let not_ip = tagged(VIF_MAC[1], CLIENT1, 100, 0x88b5, &[0x60; 40]);
    f.expect_drop(NOT_IPV4, |f| f.customer(&not_ip));
    let link_local_source = ipv6_udp(v6(0xfe80_0000_0000_0000, 9), VPC6, 64, 1, 2, b"x");
    f.expect_drop(IPV6_SCOPE, |f| {
        f.customer(&tagged(
            VIF_MAC[1],
            CLIENT1,
            100,
            0x86dd,
            &link_local_source,
        ))
    });
    let arp_vif2 = tagged([0xff; 6], CLIENT2, 200, 0x0806, &[0; 28]);
    f.expect_drop(NO_CONTROL_PLANE, |f| f.customer(&arp_vif2));
    f.expect_drop(BAD_NEXT_HOP, |f| {
        f.customer(&from_vif(100, 1, &udp([10, 7, 0, 1], 64, 10)))
    });
    f.expect_drop(NO_TX_PORT, |f| {
        f.customer(&from_vif(100, 1, &udp([192, 168, 90, 1], 64, 10)))
    });
    f.expect_drop(UNDERLAY_UNREACHABLE, |f| {
        f.customer(&from_vif(100, 1, &udp([10, 6, 0, 1], 64, 10)))
    });
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            flags: vif_flags::SOURCE_CHECK,
            control_interval_ns: 1_000_000_000,
            control_burst_ns: 1_000_000_000,
            ..VifPolicy::default()
        },
    )?;
    f.expect_drop(SOURCE_CHECK, |f| {
        f.customer(&from_vif(
            100,
            1,
            &ipv4_udp([10, 99, 0, 1], VPC_HOST, 64, 1, 2, b"spoofed"),
        ))
    });
    pin_to_one_cpu();
    let arp = tagged([0xff; 6], CLIENT1, 100, 0x0806, &[0; 28]);
    f.customer(&arp);
    f.expect_drop(CONTROL_LIMITED, |f| f.customer(&arp));

    let drops = f.drops();
    for (i, name) in drop_reason::NAMES.iter().enumerate() {
        assert!(drops[i] > 0, "drop reason {name} never exercised");
    }
    Ok(())
}

#[test]
fn ecmp_spreads_flows_and_keeps_each_flow_on_one_member() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let mut per_member = [0u32; 4];
    for sport in 0..2000u16 {
        let packet = ipv4_udp(VPC_HOST, [192, 168, 70, 9], 64, 10000 + sport, 80, b"ecmp");
        let frame = from_vpc(1001, REMOTE_VTEP, &packet);
        let (action, out) = f.underlay(&frame);
        assert_eq!(action, XDP_REDIRECT);
        let member = ECMP_MACS
            .iter()
            .position(|m| out[..6] == *m)
            .expect("a group member's MAC");
        let predicted = group_member(hash_of(VPC_HOST, [192, 168, 70, 9], 10000 + sport, 80), 4);
        assert_eq!(member, predicted, "member chosen by the shared flow hash");
        if sport % 100 == 0 {
            let (_, again) = f.underlay(&frame);
            assert_eq!(again[..6], out[..6], "one flow, one member");
        }
        per_member[member] += 1;
    }
    println!("flows per member: {per_member:?}");
    assert!(
        per_member.iter().all(|&n| (350..650).contains(&n)),
        "spread {per_member:?}"
    );

    // Failover: one write of the group moves the flows of a lost member, and only those.
    f.dp.set_next_hop(20, &NextHopSpec::Group(vec![21, 22, 23]))?;
    for sport in 0..200u16 {
        let packet = ipv4_udp(VPC_HOST, [192, 168, 70, 9], 64, 10000 + sport, 80, b"ecmp");
        let (_, out) = f.underlay(&from_vpc(1001, REMOTE_VTEP, &packet));
        assert_ne!(out[..6], ECMP_MACS[3], "removed member still used");
    }
    Ok(())
}

/// Every truncation of a valid frame, IPv4 or IPv6, is dropped (never aborted, never
/// forwarded).
#[test]
fn truncated_frames_are_dropped_never_aborted() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let customer = tagged(
        VIF_MAC[1],
        CLIENT1,
        100,
        0x0800,
        &ipv4_udp(IDC_HOST, VPC_HOST, 64, 1, 2, b"payload!"),
    );
    let vpc = from_vpc(
        1001,
        REMOTE_VTEP,
        &ipv4_udp(VPC_HOST, IDC_HOST, 64, 2, 1, b"payload!"),
    );
    every_truncation_drops(&mut f, &customer, &vpc);
    // And IPv6.
    let customer = tagged(
        VIF_MAC[1],
        CLIENT1,
        100,
        0x86dd,
        &ipv6_udp(IDC6, VPC6, 64, 1, 2, b"payload!"),
    );
    let vpc = from_vpc(
        1001,
        REMOTE_VTEP,
        &ipv6_udp(VPC6, IDC6, 64, 2, 1, b"payload!"),
    );
    every_truncation_drops(&mut f, &customer, &vpc);
    Ok(())
}

/// Both frames forward whole, and every truncation of them is dropped: never aborted, never
/// forwarded (an underlay frame cut before the UDP port is not VXLAN yet: it is the host's).
fn every_truncation_drops(f: &mut Fixture, customer: &[u8], vpc: &[u8]) {
    for (name, frame) in [("customer", customer), ("underlay", vpc)] {
        let run = |f: &mut Fixture, frame: &[u8]| {
            if name == "customer" {
                f.customer(frame)
            } else {
                f.underlay(frame)
            }
        };
        assert_eq!(run(f, frame).0, XDP_REDIRECT, "{name} frame whole");
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        for len in 14..frame.len() {
            let (action, _) = run(f, &frame[..len]);
            let ok = action == XDP_DROP || (name == "underlay" && len < 38 && action == XDP_PASS);
            assert!(ok, "{name} frame cut to {len} bytes: action {action}");
        }
    }
}

/// A longest-prefix match over [`ROUTES`], the model the random test checks against.
fn model_lookup(gateway: u32, dst: [u8; 4]) -> Option<u32> {
    let addr = Ipv4Addr::from(dst);
    ROUTES
        .iter()
        .filter(|(gw, _, _)| *gw == gateway)
        .map(|(_, p, nh)| (p.parse::<Ipv4Net>().expect("prefix"), *nh))
        .filter(|(p, _)| p.contains(&addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, nh)| nh)
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 100k random frames, half of them with a valid prefix so they reach deep into the programs:
/// never XDP_ABORTED, and whatever is forwarded goes where the route table says.
#[test]
fn random_frames_never_abort_or_leak() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // A new seed each run (printed); FORWARDER_TEST_SEED replays one, FORWARDER_RANDOM_FRAMES
    // runs longer.
    let seed = std::env::var("FORWARDER_TEST_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5eed_f00d_u64 ^ u64::from(std::process::id()));
    let frames: u32 = std::env::var("FORWARDER_RANDOM_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    println!("seed {seed:#x}");
    let mut rng = XorShift(seed);
    let (mut forwarded_frames, mut forwarded6, mut dropped) = (0u32, 0u32, 0u32);
    let vni_of = |nh: u32| -> Option<u32> {
        Some(match nh {
            1 => 1001,
            2 => 1002,
            8 => 1005,
            9 => 1006,
            7 => 1004,
            41 => 1008,
            _ => return None,
        })
    };
    for i in 0..frames {
        let len = 14 + (rng.next() % 200) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let underlay = i % 2 == 1;
        if i % 4 < 2 {
            // A plausible start: the right ethertypes and VLANs / a VXLAN header.
            let v6_dst = |rng: &mut XorShift| {
                let third = [
                    0x000a,
                    0x0050,
                    0x0060,
                    0x0061,
                    0x0070,
                    0x000b,
                    rng.next() as u16,
                ][(rng.next() % 7) as usize];
                v6(
                    0x2001_0db8_0000_0000 | u64::from(third) << 16,
                    rng.next() % 4,
                )
            };
            let valid = if i % 3 == 0 {
                // IPv6, into every part of the IPv6 path.
                let dst = v6_dst(&mut rng);
                if underlay {
                    let vni = [1001, 1002, 4242][(rng.next() % 3) as usize];
                    from_vpc(vni, REMOTE_VTEP, &ipv6_udp(VPC6, dst, 2, 1, 2, &[0; 8]))
                } else {
                    let vlan = [100, 300, 400, 600, 999][(rng.next() % 5) as usize];
                    let dst = if rng.next().is_multiple_of(8) {
                        CLOUD6
                    } else {
                        dst
                    };
                    tagged(
                        VIF_MAC[1],
                        CLIENT1,
                        vlan,
                        0x86dd,
                        &ipv6_udp(IDC6, dst, 2, 1, 2, &[0; 8]),
                    )
                }
            } else if underlay {
                let vni = [1001, 1002, 4242][(rng.next() % 3) as usize];
                let third = [50, 60, 70, 80, 90, rng.next() as u8][(rng.next() % 6) as usize];
                let dst = [192, 168, third, rng.next() as u8];
                from_vpc(
                    vni,
                    REMOTE_VTEP,
                    &ipv4_udp(VPC_HOST, dst, 2, rng.next() as u16, 2, &[0; 8]),
                )
            } else {
                let vlan = [100, 200, 300, 400, 999][(rng.next() % 5) as usize];
                let dst = match rng.next() % 4 {
                    0 => [10, 0, rng.next() as u8, 7],
                    1 => [10, (rng.next() % 8) as u8, rng.next() as u8, 7],
                    2 => [192, 168, 60, rng.next() as u8],
                    _ => [192, 168, 50, rng.next() as u8],
                };
                tagged(
                    VIF_MAC[1],
                    CLIENT1,
                    vlan,
                    0x0800,
                    &ipv4_udp(IDC_HOST, dst, 2, 1, 2, &[0; 8]),
                )
            };
            // Flip a few bytes anywhere (headers included), sometimes cut the tail.
            frame = valid;
            for _ in 0..(rng.next() % 4) {
                let at = (rng.next() as usize) % frame.len();
                frame[at] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(4) {
                frame.truncate(14 + (rng.next() as usize) % (frame.len() - 13));
            }
        }
        let input = frame.clone();
        let (action, out) = if underlay {
            f.underlay(&frame)
        } else {
            f.customer(&frame)
        };
        assert_ne!(action, XDP_ABORTED, "frame {i} aborted: {input:02x?}");
        match action {
            XDP_DROP => dropped += 1,
            XDP_PASS => {}
            XDP_REDIRECT => {
                forwarded_frames += 1;
                let at = if underlay { 62 } else { 16 };
                forwarded6 += u32::from(input.get(at..at + 2) == Some(&[0x86, 0xdd][..]));
                check_redirect(underlay, &input, &out, vni_of);
            }
            other => panic!("frame {i}: unexpected action {other}"),
        }
    }
    println!(
        "{frames} random frames: {forwarded_frames} forwarded ({forwarded6} IPv6), {dropped} dropped, none aborted"
    );
    assert!(
        frames < 1000 || forwarded6 > 0,
        "no IPv6 frame reached the IPv6 path"
    );
    Ok(())
}

/// A forwarded random frame must have gone where the model says.
fn check_redirect(underlay: bool, input: &[u8], out: &[u8], vni_of: impl Fn(u32) -> Option<u32>) {
    if underlay {
        // Decapsulated: VNI → gateway, inner destination → VIF next hop.
        let vni = u32::from_be_bytes([0, input[46], input[47], input[48]]);
        let gateway = match vni {
            1002 => 2,
            1001 | 1003..=1007 => 1,
            _ => panic!("forwarded unknown VNI {vni}"),
        };
        let inner_type = u16::from_be_bytes([input[62], input[63]]);
        let nh = if inner_type == 0x86dd {
            let dst: [u8; 16] = input[88..104].try_into().expect("dst");
            model_lookup6(gateway, dst).expect("IPv6 forwarded without a route")
        } else {
            let dst = [input[80], input[81], input[82], input[83]];
            model_lookup(gateway, dst).expect("forwarded without a route")
        };
        assert_eq!(
            u16::from_be_bytes([out[16], out[17]]),
            inner_type,
            "the inner ethertype survives"
        );
        let (vlan, mac) = match nh {
            40 => (600, CLIENT1),
            3 => (100, CLIENT1),
            4 => (200, CLIENT2),
            5 => (300, CLIENT3),
            21..=24 => (100, ECMP_MACS[(nh - 21) as usize]),
            20 => (100, [out[0], out[1], out[2], out[3], out[4], out[5]]),
            other => panic!("decapsulated toward next hop {other}"),
        };
        assert_eq!(
            u16::from_be_bytes([out[14], out[15]]) & 0xfff,
            vlan,
            "VLAN for next hop {nh}"
        );
        if nh == 20 {
            assert!(ECMP_MACS.contains(&mac));
        } else {
            assert_eq!(out[..6], mac);
        }
        return;
    }
    let vlan = u16::from_be_bytes([input[14], input[15]]) & 0xfff;
    let ether_type = u16::from_be_bytes([input[16], input[17]]);
    let gateway = match vlan {
        100 | 200 | 400 | 500 | 600 => 1,
        300 => 2,
        _ => panic!("forwarded from VLAN {vlan}"),
    };
    let v6 = ether_type == 0x86dd;
    let control = ether_type == 0x0806
        || input[0] & 1 == 1
        || (ether_type == 0x0800 && input[34..38] == CLOUD_ADDR)
        || (v6 && (input[42..58] == CLOUD6 || (input[42] == 0xfe && input[43] & 0xc0 == 0x80)));
    if control {
        assert_eq!(vlan, 100, "only VIF 1 has a control plane");
        assert_eq!(out.len(), input.len() - 4, "control frames leave untagged");
        return;
    }
    let (nh, dst) = if v6 {
        let dst: [u8; 16] = input[42..58].try_into().expect("dst");
        let nh = model_lookup6(gateway, dst).expect("IPv6 forwarded without a route");
        (nh, format!("{}", Ipv6Addr::from(dst)))
    } else {
        let dst = [input[34], input[35], input[36], input[37]];
        let nh = model_lookup(gateway, dst).expect("forwarded without a route");
        (nh, format!("{}", Ipv4Addr::from(dst)))
    };
    if let Some(vni) = vni_of(nh) {
        assert_eq!(
            u32::from_be_bytes([0, out[46], out[47], out[48]]),
            vni,
            "VNI for {dst} in gateway {gateway}"
        );
    } else {
        let want = match nh {
            // Next hop 20 is VIF 1's ECMP group: back out of the VIF it came from.
            3 | 20..=24 => 100,
            4 => 200,
            5 => 300,
            40 => 600,
            other => panic!("hairpin toward next hop {other}"),
        };
        assert_eq!(u16::from_be_bytes([out[14], out[15]]) & 0xfff, want);
    }
}

/// Keeps this test's thread (and the threads it starts) on CPU 0, so that per-CPU token
/// buckets are the same bucket from one test run to the next.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity(0, ..) act
    // on the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// `packet` with DF cleared (and its checksum fixed).
fn without_df(packet: &[u8]) -> Vec<u8> {
    let (mut header, rest) = Ipv4Header::from_slice(packet).expect("ipv4 header");
    header.dont_fragment = false;
    header.header_checksum = header.calc_header_checksum();
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(rest);
    out
}

/// The ICMP fragmentation-needed packet a router sends for `original`, built independently
/// of the data plane: from `from`, TOS 0xc0, TTL 64, quoting the original header and 8 bytes.
fn frag_needed(from: [u8; 4], original: &[u8], mtu: u16) -> Vec<u8> {
    use etherparse::{Icmpv4Header, Icmpv4Type, Ipv4Dscp, icmpv4::DestUnreachableHeader};
    let (orig, _) = Ipv4Header::from_slice(original).expect("original header");
    let quote = &original[..orig.header_len() + 8];
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu,
        }),
        quote,
    );
    let mut ip = Ipv4Header::new(
        (icmp.header_len() + quote.len()) as u16,
        64,
        IpNumber::ICMP,
        from,
        orig.source,
    )
    .expect("icmp header");
    ip.dont_fragment = false;
    ip.dscp = Ipv4Dscp::try_new(0x30).expect("dscp");
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend(icmp.to_bytes());
    out.extend_from_slice(quote);
    out
}

/// The fragmentation-needed frame VIF 1's client router must get for `original`.
fn icmp_to_client1(original: &[u8], mtu: u16) -> Vec<u8> {
    tagged(
        CLIENT1,
        VIF_MAC[1],
        100,
        0x0800,
        &frag_needed(CLOUD_ADDR, original, mtu),
    )
}

/// Every counter the data plane keeps about one exchange, to compare before and after.
#[derive(Debug, PartialEq)]
struct Snapshot {
    drops: Vec<u64>,
    passes: Vec<u64>,
    vifs: Vec<(u64, u64, u64, u64, u64, u64, u64)>,
    attachments: Vec<(u64, u64, u64, u64)>,
}

impl Fixture {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            drops: self.drops().to_vec(),
            passes: self.dp.passes().expect("passes").to_vec(),
            vifs: (1..=5)
                .map(|id| {
                    let c = self.dp.vif_counters(id).expect("vif counters");
                    let d = self.dp.vif_drops(id).expect("vif drops");
                    (
                        c.rx_packets,
                        c.rx_bytes,
                        c.tx_packets,
                        c.tx_bytes,
                        d.control_limited,
                        d.source_check,
                        d.too_big,
                    )
                })
                .collect(),
            attachments: (1..=7)
                .map(|id| {
                    let c = self
                        .dp
                        .attachment_counters(id)
                        .expect("attachment counters");
                    (c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes)
                })
                .collect(),
        }
    }
}

#[test]
fn too_big_for_the_underlay_is_answered_with_icmp_to_the_customer() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // 628 bytes of IPv4 (DF set) + 50 of VXLAN > the 600-byte path of attachment 4.
    let packet = ipv4_udp(IDC_HOST, [10, 4, 0, 1], 64, 40000, 5001, &[7u8; 600]);
    let mut frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet);
    frame[14] |= 0x60; // the priority bits come back as they went
    let before = f.snapshot();
    let (action, out) = f.customer(&frame);
    assert_eq!(action, XDP_REDIRECT, "sent back out of the connection port");
    let mut expected = tagged(
        CLIENT1,
        VIF_MAC[1],
        100,
        0x0800,
        &frag_needed(CLOUD_ADDR, &packet, 600 - 50),
    );
    expected[14] |= 0x60;
    assert_eq!(out, expected, "ICMP fragmentation needed, byte for byte");
    // What a host checks: both checksums valid.
    let sliced = etherparse::SlicedPacket::from_ethernet(&out)?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("IPv4")
    };
    assert_eq!(
        ip.header().header_checksum(),
        ip.header().to_header().calc_header_checksum()
    );
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
        panic!("ICMP")
    };
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );

    let after = f.snapshot();
    let mut want = before;
    want.passes[pass_reason::ICMP_FRAG_NEEDED as usize] += 1;
    want.vifs[0].0 += 1;
    want.vifs[0].1 += frame.len() as u64;
    want.vifs[0].2 += 1;
    want.vifs[0].3 += out.len() as u64;
    want.vifs[0].6 += 1;
    assert_eq!(after, want, "counters: one ICMP sent, nothing else");

    // An ICMP error is never answered with one; without DF the packet is dropped.
    let mut error = Vec::new();
    PacketBuilder::ipv4(IDC_HOST, [10, 4, 0, 1], 64)
        .icmpv4_raw(3, 1, [0; 4])
        .write(&mut error, &[0u8; 600])?;
    f.expect_drop(drop_reason::MTU, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &error))
    });
    f.expect_drop(drop_reason::MTU, |f| {
        f.customer(&tagged(
            VIF_MAC[1],
            CLIENT1,
            100,
            0x0800,
            &without_df(&packet),
        ))
    });
    // Nor a packet from "this network" or to a group address (RFC 1812 §4.3.2.7).
    let from_zero = ipv4_udp([0, 1, 2, 3], [10, 4, 0, 1], 64, 1, 2, &[7u8; 600]);
    f.expect_drop(drop_reason::MTU, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &from_zero))
    });
    f.dp.upsert_route(1, "224.0.0.0/4".parse::<Ipv4Net>()?, 7)?;
    let to_group = ipv4_udp(IDC_HOST, [239, 1, 2, 3], 64, 1, 2, &[7u8; 600]);
    f.expect_drop(drop_reason::MTU, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &to_group))
    });
    Ok(())
}

#[test]
fn too_big_for_the_vif_is_answered_with_icmp_through_the_tunnel() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // 1128 bytes toward VIF 2, whose MTU is 1000.
    let packet = ipv4_udp(VPC_HOST, [192, 168, 60, 5], 64, 5001, 40000, &[9u8; 1100]);
    let frame = from_vpc(1001, REMOTE_VTEP, &packet);
    let before = f.snapshot();
    let (action, out) = f.underlay(&frame);
    assert_eq!(action, XDP_REDIRECT, "sent back out of the underlay port");

    // Back to where it came from: outer and inner MACs and addresses swapped, the VNI and
    // the UDP source port kept.
    let icmp = frag_needed(CLOUD_ADDR, &packet, VIF2_MTU);
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&(1001u32 << 8).to_be_bytes());
    vxlan.extend(eth(ROUTER_MAC, [0x02, 0xf0, 0, 0, 0, 0xee], 0x0800));
    vxlan.extend_from_slice(&icmp);
    let mut outer = Ipv4Header::new(
        (8 + vxlan.len()) as u16,
        64,
        IpNumber::UDP,
        LOCAL_VTEP,
        REMOTE_VTEP,
    )?;
    outer.dont_fragment = true;
    outer.header_checksum = outer.calc_header_checksum();
    let mut expected = eth(VTEP_MAC, [0x02, 0xaa, 0, 0, 0, 1], 0x0800);
    expected.extend_from_slice(&outer.to_bytes());
    expected.extend_from_slice(
        &UdpHeader {
            source_port: 51234,
            destination_port: 4789,
            length: (8 + vxlan.len()) as u16,
            checksum: 0,
        }
        .to_bytes(),
    );
    expected.extend(vxlan);
    assert_eq!(out, expected, "ICMP in VXLAN, byte for byte");

    let after = f.snapshot();
    let mut want = before;
    want.passes[pass_reason::ICMP_FRAG_NEEDED as usize] += 1;
    want.attachments[0].0 += 1;
    want.attachments[0].1 += frame.len() as u64;
    want.attachments[0].2 += 1;
    want.attachments[0].3 += out.len() as u64;
    want.vifs[1].6 += 1;
    assert_eq!(
        after, want,
        "counters: one ICMP sent, nothing toward the VIF"
    );

    // A packet that fits the VIF goes through.
    let fits = ipv4_udp(VPC_HOST, [192, 168, 60, 5], 64, 5001, 40000, &[9u8; 972]);
    let (action, _) = f.underlay(&from_vpc(1001, REMOTE_VTEP, &fits));
    assert_eq!(action, XDP_REDIRECT, "1000 bytes fit an MTU of 1000");
    Ok(())
}

#[test]
fn too_big_for_the_other_vif_is_answered_on_the_first() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(IDC_HOST, [192, 168, 60, 5], 64, 1, 2, &[3u8; 1100]);
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, icmp_to_client1(&packet, VIF2_MTU));
    Ok(())
}

#[test]
fn icmp_errors_are_rate_limited() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(IDC_HOST, [10, 4, 0, 1], 64, 1, 2, &[7u8; 600]);
    let frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet);
    let before = f.snapshot();
    let started = std::time::Instant::now();
    let (mut sent, mut dropped) = (0u64, 0u64);
    for _ in 0..2000 {
        match f.customer(&frame).0 {
            XDP_REDIRECT => sent += 1,
            XDP_DROP => dropped += 1,
            other => panic!("action {other}"),
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // Per CPU: a burst of 50, then one per millisecond.
    let cpus = std::thread::available_parallelism()?.get() as u64;
    let allowed = cpus * (forwarder_common::ICMP_BURST + elapsed_ms + 1);
    println!("{sent} ICMP sent, {dropped} dropped in {elapsed_ms} ms (at most {allowed})");
    assert!(sent <= allowed, "{sent} ICMP errors in {elapsed_ms} ms");
    assert!(sent >= forwarder_common::ICMP_BURST, "the burst was sent");
    let after = f.snapshot();
    assert_eq!(
        after.drops[drop_reason::MTU as usize] - before.drops[drop_reason::MTU as usize],
        dropped
    );
    assert_eq!(
        after.passes[pass_reason::ICMP_FRAG_NEEDED as usize]
            - before.passes[pass_reason::ICMP_FRAG_NEEDED as usize],
        sent
    );
    assert_eq!(
        after.vifs[0].6 - before.vifs[0].6,
        2000,
        "too_big counts both"
    );
    Ok(())
}

#[test]
fn source_check_drops_what_is_not_routed_back_to_the_vif() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            flags: vif_flags::SOURCE_CHECK,
            ..VifPolicy::default()
        },
    )?;
    let from = |src: [u8; 4]| {
        tagged(
            VIF_MAC[1],
            CLIENT1,
            100,
            0x0800,
            &ipv4_udp(src, VPC_HOST, 64, 1, 2, b"who am i"),
        )
    };
    // Routed to VIF 1 directly, and through a group whose members are on VIF 1; the client
    // router's own interconnect address (its ICMP errors) passes too.
    assert_eq!(f.customer(&from(IDC_HOST)).0, XDP_REDIRECT);
    assert_eq!(f.customer(&from([169, 254, 10, 2])).0, XDP_REDIRECT);
    assert_eq!(f.customer(&from([192, 168, 70, 9])).0, XDP_REDIRECT);
    // Routed to VIF 2, routed to an attachment, and not routed at all.
    for spoofed in [[192, 168, 60, 5], [10, 0, 1, 1], [203, 0, 113, 1]] {
        f.expect_drop(drop_reason::SOURCE_CHECK, |f| f.customer(&from(spoofed)));
    }
    assert_eq!(f.dp.vif_drops(1)?.source_check, 3);
    // Without the check, VIF 2 forwards anything.
    let other = ipv4_udp([203, 0, 113, 1], VPC_HOST, 64, 1, 2, b"x");
    let (action, _) = f.customer(&tagged(VIF_MAC[2], CLIENT2, 200, 0x0800, &other));
    assert_eq!(action, XDP_REDIRECT);
    Ok(())
}

#[test]
fn the_control_path_is_rate_limited_per_vif_and_class() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    pin_to_one_cpu();
    // One frame per second per class, a burst of three.
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            control_interval_ns: 1_000_000_000,
            control_burst_ns: 3_000_000_000,
            ..VifPolicy::default()
        },
    )?;
    let arp = tagged([0xff; 6], CLIENT1, 100, 0x0806, &[0; 28]);
    let mut bgp_packet = Vec::new();
    PacketBuilder::ipv4([169, 254, 10, 2], CLOUD_ADDR, 1)
        .tcp(40000, 179, 1, 1000)
        .write(&mut bgp_packet, b"keepalive")?;
    let bgp = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &bgp_packet);
    let broadcast = tagged(
        [0xff; 6],
        CLIENT1,
        100,
        0x0800,
        &ipv4_udp([169, 254, 10, 2], [255, 255, 255, 255], 64, 1, 2, b"flood"),
    );
    for _ in 0..3 {
        assert_eq!(f.customer(&broadcast).0, XDP_REDIRECT);
    }
    // The flood's class is empty; ARP and BGP are not.
    f.expect_drop(drop_reason::CONTROL_LIMITED, |f| f.customer(&broadcast));
    for _ in 0..3 {
        assert_eq!(f.customer(&arp).0, XDP_REDIRECT, "ARP under a flood");
        assert_eq!(f.customer(&bgp).0, XDP_REDIRECT, "BGP under a flood");
    }
    f.expect_drop(drop_reason::CONTROL_LIMITED, |f| f.customer(&arp));
    f.expect_drop(drop_reason::CONTROL_LIMITED, |f| f.customer(&bgp));
    assert_eq!(f.dp.vif_drops(1)?.control_limited, 3);
    assert_eq!(f.dp.vif_drops(2)?.control_limited, 0);

    // TCP to port 179 from anyone but the client router is not BGP: it cannot use up the
    // BGP bucket (here the other bucket is empty already).
    let mut syn = Vec::new();
    PacketBuilder::ipv4([203, 0, 113, 9], CLOUD_ADDR, 64)
        .tcp(40001, 179, 1, 1000)
        .syn()
        .write(&mut syn, &[])?;
    f.expect_drop(drop_reason::CONTROL_LIMITED, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &syn))
    });

    // A reload to a faster, shallower limit applies at once: the clock the old, deeper
    // bucket left ahead does not hold frames back.
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            control_interval_ns: 1_000_000,
            control_burst_ns: 1_000_000,
            ..VifPolicy::default()
        },
    )?;
    // At most one interval (1 ms) to wait, not the old bucket's 3 s.
    f.customer(&broadcast);
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        f.customer(&broadcast).0,
        XDP_REDIRECT,
        "the new limit applies"
    );
    Ok(())
}

#[test]
fn nothing_is_counted_as_sent_when_the_redirect_fails() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // VIF 5's port is not in the TX map.
    let packet = ipv4_udp(IDC_HOST, [192, 168, 90, 1], 64, 1, 2, b"nowhere");
    f.expect_drop(drop_reason::NO_TX_PORT, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet))
    });
    f.expect_drop(drop_reason::NO_TX_PORT, |f| {
        f.underlay(&from_vpc(
            1001,
            REMOTE_VTEP,
            &ipv4_udp(VPC_HOST, [192, 168, 90, 1], 64, 1, 2, b"nowhere"),
        ))
    });
    let c = f.dp.vif_counters(5)?;
    assert_eq!((c.tx_packets, c.tx_bytes), (0, 0), "VIF 5 sent nothing");
    Ok(())
}

/// The policy for what a forwarder usually leaves alone: IPv4 options are carried,
/// fragments flow (all of a datagram on one path: they hash without ports), and header
/// checksums are not verified (a bad one stays bad after the TTL update, as in the kernel).
#[test]
fn options_fragments_and_bad_checksums_are_forwarded() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // Options: a record-route-sized NOP padding (4 bytes: IHL 6).
    let mut with_options = Vec::new();
    let mut h = Ipv4Header::new(8 + 10, 64, IpNumber::UDP, IDC_HOST, VPC_HOST)?;
    h.options = [1u8, 1, 1, 0][..].try_into().expect("options");
    h.header_checksum = h.calc_header_checksum();
    with_options.extend_from_slice(&h.to_bytes());
    with_options.extend_from_slice(
        &UdpHeader {
            source_port: 1,
            destination_port: 2,
            length: 18,
            checksum: 0,
        }
        .to_bytes(),
    );
    with_options.extend_from_slice(b"options!!!");
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &with_options));
    assert_eq!(action, XDP_REDIRECT, "IPv4 options are forwarded");
    assert_eq!(
        &out[out.len() - with_options.len()..],
        &forwarded(&with_options)[..]
    );

    // The first and a later fragment of one datagram: same outer source port.
    let whole = ipv4_udp(IDC_HOST, VPC_HOST, 64, 1234, 5678, &[5u8; 64]);
    let (mut first, rest) = Ipv4Header::from_slice(&whole)?;
    first.dont_fragment = false;
    first.more_fragments = true;
    first.total_len = 20 + 32;
    first.header_checksum = first.calc_header_checksum();
    let mut frag1 = first.to_bytes().to_vec();
    frag1.extend_from_slice(&rest[..32]);
    let mut later = first.clone();
    later.more_fragments = false;
    later.fragment_offset = etherparse::IpFragOffset::try_new(4)?;
    later.total_len = 20 + 40;
    later.header_checksum = later.calc_header_checksum();
    let mut frag2 = later.to_bytes().to_vec();
    frag2.extend_from_slice(&rest[32..]);
    let (a1, o1) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &frag1));
    let (a2, o2) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &frag2));
    assert_eq!((a1, a2), (XDP_REDIRECT, XDP_REDIRECT), "fragments flow");
    assert_eq!(o1[34..36], o2[34..36], "one datagram, one path");

    // A bad header checksum: forwarded, TTL − 1, the checksum updated incrementally.
    let mut bad = ipv4_udp(IDC_HOST, VPC_HOST, 64, 1, 2, b"bad sum");
    bad[10] ^= 0x55;
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &bad));
    assert_eq!(action, XDP_REDIRECT, "checksums are not verified");
    let inner = &out[out.len() - bad.len()..];
    assert_eq!(inner[8], 63);
    let sum = u32::from(u16::from_be_bytes([bad[10], bad[11]])) + 0x0100;
    let sum = (sum + u32::from(sum >= 0xffff)) as u16;
    assert_eq!(u16::from_be_bytes([inner[10], inner[11]]), sum);
    Ok(())
}

#[test]
fn jumbo_frames_pass_as_multi_buffer() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            mtu: 9001,
            ..VifPolicy::default()
        },
    )?;
    // 9000 bytes VPC → IDC through a VIF with MTU 9001: decapsulated whole.
    let packet = ipv4_udp(VPC_HOST, IDC_HOST, 64, 5001, 40000, &[4u8; 8972]);
    let frame = from_vpc(1001, REMOTE_VTEP, &packet);
    let (action, out) = f.underlay(&frame);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[1], 100, 0x0800, &forwarded(&packet))
    );
    assert_eq!(f.dp.vif_counters(1)?.tx_bytes, out.len() as u64);
    // 9000 bytes IDC → VPC over the 1500-byte underlay: ICMP with 1450, cut from a
    // multi-buffer frame.
    let big = ipv4_udp(IDC_HOST, VPC_HOST, 64, 40000, 5001, &[4u8; 8972]);
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &big));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, icmp_to_client1(&big, 1450));
    Ok(())
}

#[test]
fn bfd_handed_to_the_data_plane_is_answered_in_place() -> anyhow::Result<()> {
    use forwarder_common::{BfdAnswer, BfdKey};
    let mut f = Fixture::new()?;
    const CLIENT_ADDR: [u8; 4] = [169, 254, 10, 2];
    let control = |state: u8, poll: bool, my: u32, your: u32| -> Vec<u8> {
        let mut b = vec![0x20, state << 6 | if poll { 0x20 } else { 0 }, 3, 24];
        for v in [my, your, 300_000, 300_000, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    };
    let from_client = |payload: &[u8], ttl: u8| -> Vec<u8> {
        let mut packet = Vec::new();
        PacketBuilder::ipv4(CLIENT_ADDR, CLOUD_ADDR, ttl)
            .udp(49200, 3784)
            .write(&mut packet, payload)
            .expect("bfd packet");
        tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet)
    };
    // The agent runs its own BFD: packets go to the control plane, untagged.
    let frame = from_client(&control(3, false, 77, 9), 255);
    let (action, out) = f.customer(&frame);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out.len(), frame.len() - 4, "to the control plane, untagged");

    // Handed over: the data plane answers, Up, with a Final for the Poll.
    f.dp.set_bfd_answer(
        BfdKey {
            vif: 1,
            client: CLIENT_ADDR,
        },
        BfdAnswer {
            my_disc: 9,
            your_disc: 77,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            detect_mult: 3,
            _pad: 0,
            source_port: 49400,
            remote_min_rx: 300_000,
            remote_desired_tx: 300_000,
        },
    )?;
    let passes_before = f.dp.passes()?;
    let (action, out) = f.customer(&from_client(&control(3, true, 77, 9), 255));
    assert_eq!(action, XDP_REDIRECT, "sent back out of the connection port");
    let mut answer = vec![0x20, 0xd0, 3, 24];
    for v in [9u32, 77, 300_000, 300_000, 0] {
        answer.extend_from_slice(&v.to_be_bytes());
    }
    let mut ip = Ipv4Header::new(32, 255, IpNumber::UDP, CLOUD_ADDR, CLIENT_ADDR)?;
    ip.dont_fragment = false;
    ip.dscp = etherparse::Ipv4Dscp::try_new(0x30)?;
    ip.header_checksum = ip.calc_header_checksum();
    let mut l3 = ip.to_bytes().to_vec();
    l3.extend_from_slice(
        &UdpHeader {
            source_port: 49400,
            destination_port: 3784,
            length: 32,
            checksum: 0,
        }
        .to_bytes(),
    );
    l3.extend_from_slice(&answer);
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[1], 100, 0x0800, &l3),
        "our Up packet, byte for byte"
    );
    let passes = f.dp.passes()?;
    assert_eq!(
        passes[pass_reason::BFD_ANSWERED as usize]
            - passes_before[pass_reason::BFD_ANSWERED as usize],
        1
    );

    // Not answered, left to the control plane: a peer that is not Up, a packet naming
    // another discriminator, one that came from further away than the link (TTL < 255).
    for frame in [
        from_client(&control(1, false, 77, 9), 255),
        from_client(&control(3, false, 77, 10), 255),
        from_client(&control(3, false, 77, 9), 254),
    ] {
        let (action, out) = f.customer(&frame);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out.len(), frame.len() - 4, "to the control plane");
    }
    assert_eq!(
        f.dp.passes()?[pass_reason::BFD_ANSWERED as usize],
        passes[pass_reason::BFD_ANSWERED as usize]
    );
    Ok(())
}

#[test]
fn encapsulation_takes_the_resolved_underlay_hop_and_the_fib_without_one() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv4_udp(IDC_HOST, VPC_HOST, 64, 40000, 5001, &[9u8; 100]);
    let frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &packet);
    let hash = hash_of(IDC_HOST, VPC_HOST, 40000, 5001);
    let by_fib = vxlan_frame(&f, 1001, REMOTE_VTEP, VIF_MAC[1], &forwarded(&packet), hash);
    assert_eq!(f.customer(&frame), (XDP_REDIRECT, by_fib.clone()));

    // The agent's entry (MACs the FIB would not give) is what the frame carries.
    let (smac, dmac) = ([0x02, 0x5a, 0, 0, 0, 1], [0x02, 0xda, 0, 0, 0, 1]);
    let hop = UnderlayHop {
        valid: 1,
        ifindex: f.ul0,
        mtu: 1500,
        smac,
        dmac,
    };
    f.dp.set_underlay(1, hop)?;
    let mut expected = by_fib.clone();
    expected[..6].copy_from_slice(&dmac);
    expected[6..12].copy_from_slice(&smac);
    assert_eq!(f.customer(&frame), (XDP_REDIRECT, expected));

    // Attachment 3's VTEP has no neighbour: the FIB says no_neighbour, a resolved hop goes.
    let to_3 = ipv4_udp(IDC_HOST, [10, 3, 0, 1], 64, 40000, 5001, &[9u8; 100]);
    let frame_3 = tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &to_3);
    f.expect_drop(drop_reason::NO_NEIGHBOUR, |f| f.customer(&frame_3));
    f.dp.set_underlay(3, hop)?;
    let (action, out) = f.customer(&frame_3);
    assert_eq!(
        (action, &out[..12]),
        (XDP_REDIRECT, &[dmac, smac].concat()[..])
    );

    // The entry's MTU is the underlay's: 150 + 28 + 50 > 200 is answered as too big.
    f.dp.set_underlay(1, UnderlayHop { mtu: 200, ..hop })?;
    let big = ipv4_udp(IDC_HOST, VPC_HOST, 64, 40000, 5001, &[9u8; 150]);
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x0800, &big));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        tagged(
            CLIENT1,
            VIF_MAC[1],
            100,
            0x0800,
            &frag_needed(CLOUD_ADDR, &big, 200 - 50)
        ),
        "ICMP fragmentation needed for the entry's MTU"
    );

    // An invalid entry (ECMP, MAC unknown) sends the FIB's way again.
    f.dp.set_underlay(1, UnderlayHop::default())?;
    assert_eq!(f.customer(&frame), (XDP_REDIRECT, by_fib));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// IPv6.

const IDC6: [u8; 16] = v6(0x2001_0db8_0050_0000, 0x10);
const VPC6: [u8; 16] = v6(0x2001_0db8_000a_0001, 0x10);

/// An IPv6 UDP packet (no link layer) with its checksum, flow label 0.
fn ipv6_udp(
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::new();
    PacketBuilder::ipv6(src, dst, hop_limit)
        .udp(sport, dport)
        .write(&mut packet, payload)
        .expect("ipv6");
    packet
}

/// The same IPv6 packet one hop later: hop limit − 1 (no checksum in IPv6's header).
fn forwarded6(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    out[7] -= 1;
    out
}

fn hash6_of(src: [u8; 16], dst: [u8; 16], label: u32, sport: u16, dport: u16) -> u32 {
    flow_hash6(src, dst, label, 17, sport, dport)
}

/// A longest-prefix match over [`ROUTES6`].
fn model_lookup6(gateway: u32, dst: [u8; 16]) -> Option<u32> {
    let addr = Ipv6Addr::from(dst);
    ROUTES6
        .iter()
        .filter(|(gw, _, _)| *gw == gateway)
        .map(|(_, p, nh)| (p.parse::<Ipv6Net>().expect("prefix"), *nh))
        .filter(|(p, _)| p.contains(&addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, nh)| nh)
}

#[test]
fn encapsulates_ipv6_customer_traffic_toward_the_attachment() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv6_udp(IDC6, VPC6, 64, 40000, 5001, &b"hello v6 vpc".repeat(8));
    let frame = tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &packet);
    let att_before = f.dp.attachment_counters(1)?;
    let (action, out) = f.customer(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let hash = hash6_of(IDC6, VPC6, 0, 40000, 5001);
    let expected = vxlan_frame(
        &f,
        1001,
        REMOTE_VTEP,
        VIF_MAC[1],
        &forwarded6(&packet),
        hash,
    );
    assert_eq!(out, expected, "encapsulated IPv6, byte for byte");
    assert_eq!(
        u16::from_be_bytes([out[50 + 12], out[50 + 13]]),
        0x86dd,
        "inner ethertype"
    );
    assert_eq!(out[64 + 7], 63, "hop limit decremented");
    let att_after = f.dp.attachment_counters(1)?;
    assert_eq!(att_after.tx_packets - att_before.tx_packets, 1);
    assert_eq!(att_after.tx_bytes - att_before.tx_bytes, out.len() as u64);

    // The flow label is part of the flow: another label, another source port (as predicted).
    let mut labelled = packet.clone();
    labelled[1..4].copy_from_slice(&[0x0a, 0xbc, 0xde]);
    let (_, out2) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &labelled));
    assert_eq!(
        u16::from_be_bytes([out2[34], out2[35]]),
        vxlan_source_port(hash6_of(IDC6, VPC6, 0xabcde, 40000, 5001))
    );
    // Longest prefix: the /49 inside the /48 goes to attachment 5.
    let deeper = ipv6_udp(IDC6, v6(0x2001_0db8_000a_8000, 1), 64, 1, 2, b"x");
    let (_, out3) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &deeper));
    assert_eq!(u32::from_be_bytes([0, out3[46], out3[47], out3[48]]), 1005);
    // And the same prefix in gateway 2 is its own.
    assert_eq!(f.dp.lookup(2, Ipv6Addr::from(VPC6))?, Some(2));
    assert_eq!(f.dp.lookup(1, Ipv6Addr::from(VPC6))?, Some(1));
    assert_eq!(
        f.dp.lookup(1, Ipv6Addr::from(v6(0x2001_0db8_0099, 1)))?,
        None
    );
    Ok(())
}

#[test]
fn decapsulates_ipv6_and_hairpins_it() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let packet = ipv6_udp(VPC6, IDC6, 64, 5001, 40000, b"hello v6 idc");
    let (action, out) = f.underlay(&from_vpc(1001, REMOTE_VTEP, &packet));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[1], 100, 0x86dd, &forwarded6(&packet))
    );
    assert_eq!(f.dp.vif_counters(1)?.tx_packets, 1);

    // VIF 1 → VIF 6 in the same gateway, re-tagged.
    let across = ipv6_udp(IDC6, v6(0x2001_0db8_0061_0000, 5), 64, 1, 2, b"across");
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &across));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        tagged(CLIENT1, VIF_MAC[6], 600, 0x86dd, &forwarded6(&across))
    );
    Ok(())
}

/// Neighbor Discovery (multicast), and anything to the cloud's addresses or to a link-local
/// one, goes to the VIF's control plane, untagged; a VIF without IPv6 addresses sends data on.
#[test]
fn neighbor_discovery_and_the_cloud_address_go_to_the_control_plane() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let mut solicit = Vec::new();
    PacketBuilder::ipv6(CLIENT6, v6(0xff02_0000_0000_0000, 0x0001_ff00_0001), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut solicit, &CLOUD6)?;
    let to_cloud = ipv6_udp(CLIENT6, CLOUD6, 64, 179, 40000, b"bgp");
    let to_link_local = ipv6_udp(CLIENT6, v6(0xfe80_0000_0000_0000, 1), 64, 1, 2, b"ll");
    for (what, dst_mac, packet) in [
        (
            "neighbor solicitation",
            [0x33, 0x33, 0xff, 0, 0, 1],
            &solicit,
        ),
        ("to the cloud address", VIF_MAC[1], &to_cloud),
        ("to a link-local address", VIF_MAC[1], &to_link_local),
    ] {
        let frame = tagged(dst_mac, CLIENT1, 100, 0x86dd, packet);
        let (action, out) = f.customer(&frame);
        assert_eq!(action, XDP_REDIRECT, "{what}");
        let mut untagged = eth(dst_mac, CLIENT1, 0x86dd);
        untagged.extend_from_slice(packet);
        assert_eq!(out, untagged, "{what}: untagged for the control plane");
    }
    assert!(f.dp.passes()?[pass_reason::CONTROL_IN as usize] >= 3);
    Ok(())
}

/// The drops of the IPv6 path, each counted under its reason.
#[test]
fn ipv6_drops_are_counted() -> anyhow::Result<()> {
    use drop_reason::*;
    let mut f = Fixture::new()?;
    let from_vif1 = |packet: &[u8]| tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, packet);
    let vpc = |packet: &[u8]| from_vpc(1001, REMOTE_VTEP, packet);
    f.expect_drop(TTL, |f| {
        f.customer(&from_vif1(&ipv6_udp(IDC6, VPC6, 1, 1, 2, b"x")))
    });
    f.expect_drop(TTL, |f| {
        f.underlay(&vpc(&ipv6_udp(VPC6, IDC6, 1, 1, 2, b"x")))
    });
    f.expect_drop(NO_ROUTE, |f| {
        f.customer(&from_vif1(&ipv6_udp(
            IDC6,
            v6(0x2001_0db8_0099, 1),
            64,
            1,
            2,
            b"x",
        )))
    });
    for (what, src, dst) in [
        ("link-local source", v6(0xfe80_0000_0000_0000, 1), VPC6),
        ("unspecified source", [0; 16], VPC6),
        ("loopback source", v6(0, 1), VPC6),
        ("multicast source", v6(0xff0e_0000_0000_0000, 1), VPC6),
    ] {
        println!("{what}");
        f.expect_drop(IPV6_SCOPE, |f| {
            f.customer(&from_vif1(&ipv6_udp(src, dst, 64, 1, 2, b"x")))
        });
    }
    f.expect_drop(IPV6_SCOPE, |f| {
        f.underlay(&vpc(&ipv6_udp(
            VPC6,
            v6(0xfe80_0000_0000_0000, 1),
            64,
            1,
            2,
            b"x",
        )))
    });
    let mut bad_version = ipv6_udp(IDC6, VPC6, 64, 1, 2, b"x");
    bad_version[0] = 0x40;
    f.expect_drop(MALFORMED, |f| f.customer(&from_vif1(&bad_version)));
    let mut long_claim = ipv6_udp(IDC6, VPC6, 64, 1, 2, b"x");
    long_claim[4..6].copy_from_slice(&1000u16.to_be_bytes());
    f.expect_drop(MALFORMED, |f| f.customer(&from_vif1(&long_claim)));
    let mut jumbogram = ipv6_udp(IDC6, VPC6, 64, 1, 2, b"x");
    jumbogram[4..6].copy_from_slice(&[0, 0]);
    f.expect_drop(MALFORMED, |f| f.customer(&from_vif1(&jumbogram)));
    f.expect_drop(VIF_DOWN, |f| {
        f.customer(&tagged(
            VIF_MAC[4],
            CLIENT1,
            400,
            0x86dd,
            &ipv6_udp(IDC6, VPC6, 64, 1, 2, b"x"),
        ))
    });
    // Too big for VIF 2 (MTU 1000, below IPv6's minimum): no Packet Too Big can say that.
    f.expect_drop(MTU, |f| {
        f.underlay(&vpc(&ipv6_udp(
            VPC6,
            v6(0x2001_0db8_0060_0000, 1),
            64,
            1,
            2,
            &[0; 1100],
        )))
    });

    // Source check: a source routed back to the VIF passes (2001:db8:50::/48 is VIF 1's), so
    // does the client router's own address; anything else is dropped and counted on the VIF.
    f.dp.set_vif_policy(
        1,
        VifPolicy {
            flags: vif_flags::SOURCE_CHECK,
            ..VifPolicy::default()
        },
    )?;
    for (what, src) in [("routed back", IDC6), ("the client router's", CLIENT6)] {
        let (action, _) = f.customer(&from_vif1(&ipv6_udp(src, VPC6, 64, 1, 2, b"x")));
        assert_eq!(action, XDP_REDIRECT, "a source {what} passes the check");
    }
    let before = f.dp.vif_drops(1)?.source_check;
    let spoofed = ipv6_udp(v6(0x2001_0db8_0099, 1), VPC6, 64, 1, 2, b"spoofed");
    f.expect_drop(SOURCE_CHECK, |f| f.customer(&from_vif1(&spoofed)));
    assert_eq!(f.dp.vif_drops(1)?.source_check, before + 1);
    Ok(())
}

/// Extension headers (Hop-by-Hop, fragments) are forwarded unchanged; the hash then covers
/// addresses, flow label and the first next header, without ports.
#[test]
fn ipv6_extension_headers_and_fragments_are_forwarded() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    let udp = ipv6_udp(IDC6, VPC6, 64, 40000, 5001, b"behind a header");
    for (name, next_header, ext) in [
        ("hop-by-hop (padding)", 0u8, [17u8, 0, 1, 4, 0, 0, 0, 0]),
        (
            "first fragment",
            44u8,
            [17u8, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef],
        ),
    ] {
        let mut packet = udp[..40].to_vec();
        packet[6] = next_header;
        let payload_len = u16::from_be_bytes([udp[4], udp[5]]) + 8;
        packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
        packet.extend_from_slice(&ext);
        packet.extend_from_slice(&udp[40..]);
        let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &packet));
        assert_eq!(action, XDP_REDIRECT, "{name}");
        let hash = flow_hash6(IDC6, VPC6, 0, next_header, 0, 0);
        let expected = vxlan_frame(
            &f,
            1001,
            REMOTE_VTEP,
            VIF_MAC[1],
            &forwarded6(&packet),
            hash,
        );
        assert_eq!(
            out, expected,
            "{name}: forwarded unchanged but for the hop limit"
        );
    }
    Ok(())
}

/// The IPv6 Packet Too Big a quote of `original` (its first 128 bytes) makes, from `from`.
fn packet_too_big(from: [u8; 16], original: &[u8], mtu: u32) -> Vec<u8> {
    let to: [u8; 16] = original[8..24].try_into().expect("source");
    let mut out = Vec::new();
    PacketBuilder::ipv6(from, to, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu })
        .write(&mut out, &original[..128])
        .expect("icmpv6");
    out
}

#[test]
fn too_big_ipv6_is_answered_with_packet_too_big() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    // Toward the customer: attachment 8's path takes 1400 bytes, 1350 inside the tunnel.
    let big = ipv6_udp(IDC6, v6(0x2001_0db8_000b_0000, 1), 64, 1, 2, &[7; 1360]);
    let (action, out) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &big));
    assert_eq!(action, XDP_REDIRECT);
    let mtu = u32::from(PATH8_MTU) - 50;
    assert_eq!(
        out,
        tagged(
            CLIENT1,
            VIF_MAC[1],
            100,
            0x86dd,
            &packet_too_big(CLOUD6, &big, mtu)
        ),
        "Packet Too Big from the cloud address, byte for byte"
    );
    assert_eq!(f.dp.passes()?[pass_reason::ICMP6_TOO_BIG as usize], 1);
    assert_eq!(f.dp.vif_drops(1)?.too_big, 1);
    // One that fits passes.
    let fits = ipv6_udp(IDC6, v6(0x2001_0db8_000b_0000, 1), 64, 1, 2, &[7; 1300]);
    let (action, _) = f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &fits));
    assert_eq!(action, XDP_REDIRECT);

    // Toward VIF 6 (MTU 1300): back through the tunnel it came from, from VIF 6's address.
    let big = ipv6_udp(VPC6, v6(0x2001_0db8_0061_0000, 1), 64, 1, 2, &[7; 1300]);
    let frame = from_vpc(1001, REMOTE_VTEP, &big);
    let (action, out) = f.underlay(&frame);
    assert_eq!(action, XDP_REDIRECT);
    let sliced = etherparse::SlicedPacket::from_ethernet(&out)?;
    let Some(etherparse::TransportSlice::Udp(udp)) = &sliced.transport else {
        panic!("VXLAN back to the VPC")
    };
    let inner = &udp.payload()[8 + 14..];
    assert_eq!(
        inner,
        packet_too_big(CLOUD6_VIF6, &big, u32::from(VIF6_MTU)).as_slice(),
        "the Packet Too Big inside the tunnel"
    );
    assert_eq!(f.dp.passes()?[pass_reason::ICMP6_TOO_BIG as usize], 2);

    // No error about an error.
    let mut error = Vec::new();
    PacketBuilder::ipv6(IDC6, v6(0x2001_0db8_000b_0000, 1), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut error, &[0; 1400])?;
    f.expect_drop(drop_reason::MTU, |f| {
        f.customer(&tagged(VIF_MAC[1], CLIENT1, 100, 0x86dd, &error))
    });
    Ok(())
}
