//! Per-packet cost of the XDP fast paths through BPF_PROG_TEST_RUN: customer → VPC
//! (encapsulation, with the agent's resolved underlay next hop and with a FIB lookup per
//! packet) and VPC → customer (decapsulation), with 1,000, 100,000 and 1,000,000 routes in
//! the border gateway's table: prefixes of a length mix like a real table, destinations drawn
//! at random from the installed prefixes (half of them route to the attachment, half to the
//! VIF). The data planes are loaded side by side and sampled alternately, so machine noise
//! hits all alike. Prints the Markdown that `cargo xtask bench` puts into BENCHMARKS.md.
//!
//! Each sample is one program run (repeat = 1: the kernel does not reset a frame between
//! repeats, and these programs move the frame head); the kernel times the run itself, so the
//! syscall is not counted. Reported: the median of the samples.
//!
//! IPv6 beside it: 1,000 and 100,000 IPv6 routes (a length mix like the public IPv6 table) in
//! the same gateways as the 1,000- and 100,000-route IPv4 tables, sampled in the same rounds.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use etherparse::{PacketBuilder, VlanId};
use forwarder::dataplane::{AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, VifSpec};
use forwarder_common::{UnderlayHop, vif_state};
use forwarder_tests::{NetNs, veth};
use ipnet::{Ipv4Net, Ipv6Net};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 1_000;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// A small deterministic generator (xorshift64*): the same table on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A prefix length drawn from `mix` ((length, per mille) pairs summing to 1000).
fn pick_length(mix: &[(u8, u64)], rng: &mut Rng) -> u8 {
    let mut pick = rng.next() % 1000;
    for (len, share) in mix {
        if pick < *share {
            return *len;
        }
        pick -= share;
    }
    mix.last().map_or(24, |(l, _)| *l)
}

/// Prefix lengths in roughly the proportions of a public IPv4 table (per mille).
const LENGTH_MIX: [(u8, u64); 12] = [
    (8, 2),
    (12, 8),
    (16, 20),
    (17, 10),
    (18, 20),
    (19, 30),
    (20, 50),
    (21, 50),
    (22, 100),
    (23, 90),
    (24, 600),
    (32, 20),
];

/// `count` distinct prefixes with the length mix, outside 10.0.0.0/8 and 172.16.0.0/12 (the
/// VPC and the underlay), each routed to the attachment (next hop 1) or the VIF (2)
/// alternately.
fn table(count: usize, seed: u64) -> Table {
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let len = pick_length(&LENGTH_MIX, &mut rng);
        let addr = Ipv4Addr::from((rng.next() >> 32) as u32 % 0xdf00_0000 + 0x0100_0000);
        let Ok(prefix) = Ipv4Net::new(addr, len).map(|p| p.trunc()) else {
            continue;
        };
        let first = prefix.network().octets()[0];
        if first == 10 || first == 172 || first == 127 || first == 169 || !seen.insert(prefix) {
            continue;
        }
        out.push((prefix, if out.len() % 2 == 0 { 1 } else { 2 }));
    }
    out
}

/// Prefix lengths in roughly the proportions of the public IPv6 table (per mille).
const LENGTH_MIX6: [(u8, u64); 10] = [
    (29, 20),
    (32, 120),
    (36, 30),
    (40, 60),
    (44, 80),
    (46, 40),
    (47, 30),
    (48, 580),
    (56, 20),
    (64, 20),
];

/// [`table`] for IPv6: `count` distinct prefixes of 2000::/3 with [`LENGTH_MIX6`].
fn table6(count: usize, seed: u64) -> Vec<(Ipv6Net, u32)> {
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let len = pick_length(&LENGTH_MIX6, &mut rng);
        let high = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        let Ok(prefix) = Ipv6Net::new(Ipv6Addr::from(high), len).map(|p| p.trunc()) else {
            continue;
        };
        if !seen.insert(prefix) {
            continue;
        }
        out.push((prefix, if out.len() % 2 == 0 { 1 } else { 2 }));
    }
    out
}

/// Routes of gateway 1: (prefix, next hop).
type Table = Vec<(Ipv4Net, u32)>;
/// Frames to run a program on, in turn.
type Frames = Vec<Vec<u8>>;

/// A data plane with `routes` routes in gateway 1; returns it, the ports and its table.
fn dataplane(gw: &NetNs, routes: usize) -> anyhow::Result<(Dataplane, u32, u32, Table)> {
    let (mut dp, trunk, ul0) = gw.enter(|| {
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        let trunk = forwarder::dataplane::if_index("trunk")?;
        let ul0 = forwarder::dataplane::if_index("ul0")?;
        dp.add_tx_port(trunk)?;
        dp.add_tx_port(ul0)?;
        Ok((dp, trunk, ul0))
    })?;
    dp.upsert_vif(&VifSpec {
        id: 1,
        port_ifindex: trunk,
        vlan: 100,
        gateway_id: 1,
        state: vif_state::AVAILABLE,
        control_ifindex: 0,
        cloud_addrs: [Some(Ipv4Addr::new(169, 254, 10, 1)), None],
        addrs6: Default::default(),
        mac: [2, 0xf0, 0, 0, 0, 1],
        policy: Default::default(),
    })?;
    dp.upsert_attachment(&AttachmentSpec {
        id: 1,
        gateway_id: 1,
        vni: 1001,
        local_vtep: Ipv4Addr::new(172, 31, 0, 1),
        remote_vtep: Ipv4Addr::new(172, 31, 0, 2),
        underlay_ifindex: ul0,
        router_mac: [2, 0, 0, 0, 0x0a, 1],
    })?;
    dp.set_next_hop(1, &NextHopSpec::Attachment(1))?;
    dp.set_next_hop(
        2,
        &NextHopSpec::Vif {
            vif: 1,
            mac: [2, 0xc1, 0, 0, 0, 1],
        },
    )?;
    let routes = table(routes, 0x5eed);
    let entries: Vec<(u32, Ipv4Net, u32)> = routes.iter().map(|(p, nh)| (1, *p, *nh)).collect();
    dp.upsert_routes(&entries)?;
    // The /24 shortcuts in front of the trie, as the agent writes them.
    let left_out = dp.write_routes24(&forwarder::routes24::build(&entries), &[])?;
    anyhow::ensure!(left_out == 0, "{left_out} /24 shortcuts found no room");
    // As the agent resolves it: out of ul0 to the VTEP's MAC.
    dp.set_underlay(1, resolved_underlay(ul0))?;
    Ok((dp, trunk, ul0, routes))
}

fn resolved_underlay(ul0: u32) -> UnderlayHop {
    UnderlayHop {
        valid: 1,
        ifindex: ul0,
        mtu: 1500,
        smac: [2, 0xaa, 0, 0, 0, 1],
        dmac: [2, 0x5e, 0, 0, 0, 2],
    }
}

/// `PER_ROUND` runs of `program` (of a loaded object), over `frames` in turn, appending the
/// kernel-measured ns of each.
fn sample(
    gw: &NetNs,
    ebpf: &mut aya::Ebpf,
    program: &str,
    ifindex: u32,
    frames: &[Vec<u8>],
    action: u32,
    out: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let prog: &mut Xdp = ebpf.program_mut(program).expect("program").try_into()?;
    let prog = &*prog;
    let ctxs: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            [0u32, f.len() as u32, 0, ifindex, 0, 0]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect()
        })
        .collect();
    let samples = gw.enter(|| {
        let mut data_out = vec![0u8; 2048];
        let mut samples = Vec::with_capacity(PER_ROUND);
        for i in 0..PER_ROUND {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(&frames[i % frames.len()]),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctxs[i % frames.len()]),
                ..TestRunOptions::new()
            })?;
            anyhow::ensure!(
                r.return_value == action,
                "{program}: action {} instead of {action}",
                r.return_value
            );
            samples.push(r.duration.as_nanos() as f64);
        }
        Ok(samples)
    })?;
    out.extend(samples);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A random host of `prefix`.
fn host_in(prefix: Ipv4Net, rng: &mut Rng) -> [u8; 4] {
    let size = 1u64 << (32 - u32::from(prefix.prefix_len()));
    let offset = (rng.next() >> 16) % size;
    (u32::from(prefix.network()) + offset as u32).to_be_bytes()
}

/// Frames toward random destinations of `routes`: tagged customer frames to prefixes routed
/// to the attachment (encapsulation), VXLAN frames from the VPC to prefixes routed to the
/// VIF (decapsulation). 64-byte inner packets.
fn frames(routes: &[(Ipv4Net, u32)], count: usize) -> anyhow::Result<(Frames, Frames)> {
    let mut rng = Rng(0xf1a7);
    // The longest match decides, as in the trie: a host of a prefix may lie in a longer one.
    let by_prefix: std::collections::HashMap<Ipv4Net, u32> = routes.iter().copied().collect();
    let longest = |dst: [u8; 4]| {
        (0..=32u8).rev().find_map(|len| {
            let p = Ipv4Net::new(Ipv4Addr::from(dst), len).ok()?.trunc();
            by_prefix.get(&p).copied()
        })
    };
    let (mut customer, mut vpc) = (Vec::new(), Vec::new());
    while customer.len() < count || vpc.len() < count {
        let (prefix, _) = routes[(rng.next() % routes.len() as u64) as usize];
        let dst = host_in(prefix, &mut rng);
        let Some(nh) = longest(dst) else { continue };
        if nh == 1 && customer.len() < count {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([2, 0xc1, 0, 0, 0, 1], [2, 0xf0, 0, 0, 0, 1])
                .single_vlan(VlanId::try_new(100)?)
                .ipv4([192, 168, 50, 10], dst, 64)
                .udp(40000, 5001)
                .write(&mut frame, &[0u8; 18])?;
            customer.push(frame);
        } else if nh == 2 && vpc.len() < count {
            let mut inner = Vec::new();
            PacketBuilder::ipv4([10, 0, 1, 10], dst, 64)
                .udp(5001, 40000)
                .write(&mut inner, &[0u8; 18])?;
            vpc.push(from_vpc(&inner, 0x0800)?);
        }
    }
    Ok((customer, vpc))
}

/// `inner` (of `ether_type`) as the VPC's VTEP sends it: VXLAN, VNI 1001, toward the gateway.
fn from_vpc(inner: &[u8], ether_type: u16) -> anyhow::Result<Vec<u8>> {
    let mut vxlan_payload = vec![0x08, 0, 0, 0, 0, 0x03, 0xe9, 0];
    vxlan_payload.extend_from_slice(&[2, 0xf0, 0, 0, 0, 1, 2, 0, 0, 0, 0x0a, 1]);
    vxlan_payload.extend_from_slice(&ether_type.to_be_bytes());
    vxlan_payload.extend_from_slice(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0x5e, 0, 0, 0, 2], [2, 0xaa, 0, 0, 0, 1])
        .ipv4([172, 31, 0, 2], [172, 31, 0, 1], 64)
        .udp(51234, 4789)
        .write(&mut frame, &vxlan_payload)?;
    Ok(frame)
}

/// A random host of an IPv6 `prefix`.
fn host_in6(prefix: Ipv6Net, rng: &mut Rng) -> [u8; 16] {
    let bits = 128 - u32::from(prefix.prefix_len());
    let offset = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & ((1u128 << bits) - 1);
    (u128::from(prefix.network()) | offset).to_be_bytes()
}

/// [`frames`] for IPv6: the same two directions, 64-byte inner UDP packets over IPv6.
fn frames6(routes: &[(Ipv6Net, u32)], count: usize) -> anyhow::Result<(Frames, Frames)> {
    let mut rng = Rng(0xf1a8);
    let by_prefix: std::collections::HashMap<Ipv6Net, u32> = routes.iter().copied().collect();
    let longest = |dst: [u8; 16]| {
        (0..=128u8).rev().find_map(|len| {
            let p = Ipv6Net::new(Ipv6Addr::from(dst), len).ok()?.trunc();
            by_prefix.get(&p).copied()
        })
    };
    let (idc, vpc_host) = (
        Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x10).octets(),
        Ipv6Addr::new(0x2001, 0xdb8, 0xa, 1, 0, 0, 0, 0x10).octets(),
    );
    let (mut customer, mut vpc) = (Vec::new(), Vec::new());
    while customer.len() < count || vpc.len() < count {
        let (prefix, _) = routes[(rng.next() % routes.len() as u64) as usize];
        let dst = host_in6(prefix, &mut rng);
        let Some(nh) = longest(dst) else { continue };
        if nh == 1 && customer.len() < count {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([2, 0xc1, 0, 0, 0, 1], [2, 0xf0, 0, 0, 0, 1])
                .single_vlan(VlanId::try_new(100)?)
                .ipv6(idc, dst, 64)
                .udp(40000, 5001)
                .write(&mut frame, &[0u8; 18])?;
            customer.push(frame);
        } else if nh == 2 && vpc.len() < count {
            let mut inner = Vec::new();
            PacketBuilder::ipv6(vpc_host, dst, 64)
                .udp(5001, 40000)
                .write(&mut inner, &[0u8; 18])?;
            vpc.push(from_vpc(&inner, 0x86dd)?);
        }
    }
    Ok((customer, vpc))
}

/// One table size's samples.
#[derive(Default)]
struct Cells {
    encap: Vec<f64>,
    encap_fib: Vec<f64>,
    decap: Vec<f64>,
    /// IPv6, where the plane has an IPv6 table.
    encap6: Vec<f64>,
    decap6: Vec<f64>,
}

/// IPv6 routes beside each IPv4 table size (none for the largest).
const SIZES6: [usize; 2] = [1_000, 100_000];

fn main() -> anyhow::Result<()> {
    let gw = NetNs::new("bngw")?;
    let cust = NetNs::new("bncust")?;
    let vpc_ns = NetNs::new("bnvpc")?;
    veth(&gw, "trunk", &cust, "cust0")?;
    veth(&gw, "ul0", &vpc_ns, "eth0")?;
    gw.exec(&["ip", "addr", "add", "172.31.0.1/24", "dev", "ul0"])?;
    gw.exec(&[
        "ip",
        "neigh",
        "replace",
        "172.31.0.2",
        "lladdr",
        "02:5e:00:00:00:02",
        "dev",
        "ul0",
        "nud",
        "permanent",
    ])?;
    gw.enter(|| {
        forwarder::dataplane::prepare_port("ul0", forwarder::dataplane::PortRole::Underlay)?;
        Ok(())
    })?;
    const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
    let mut planes = Vec::new();
    let mut shortcuts = Vec::new();
    for size in SIZES {
        let started = std::time::Instant::now();
        let (mut dp, trunk, ul0, routes) = dataplane(&gw, size)?;
        let (customer, vpc) = frames(&routes, 256)?;
        let v6 = match SIZES6.get(planes.len()) {
            Some(size6) => {
                let routes6 = table6(*size6, 0x5eed6);
                let entries: Vec<(u32, Ipv6Net, u32)> =
                    routes6.iter().map(|(p, nh)| (1, *p, *nh)).collect();
                dp.upsert_routes(&entries)?;
                Some(frames6(&routes6, 256)?)
            }
            None => None,
        };
        eprintln!(
            "testrun bench: {size} routes loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        shortcuts.push(dp.routes24()?.len());
        planes.push((dp, trunk, ul0, customer, vpc, v6, Cells::default()));
    }
    // The floor: a program that only bumps a per-CPU counter and passes (the timer and call
    // overhead of a test run on this machine).
    let floor_prog: &mut Xdp = planes[0]
        .0
        .ebpf_mut()
        .program_mut("vlan_count")
        .expect("vlan_count")
        .try_into()?;
    floor_prog.load()?;

    // The redirect floor: a program that redirects every frame, unchanged, to the underlay
    // port through a device map (the test object's `xdp_redirect_floor`).
    let mut floor_ebpf =
        gw.enter(|| Ok(aya::Ebpf::load(forwarder_tests::customer::SHIM_OBJECT)?))?;
    {
        let ul0 = planes[0].2;
        let mut ports = aya::maps::DevMapHash::try_from(
            floor_ebpf.map_mut("FLOOR_PORTS").expect("FLOOR_PORTS"),
        )?;
        ports.insert(ul0, ul0, None, 0)?;
        let mut to: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(floor_ebpf.map_mut("FLOOR_TO").expect("FLOOR_TO"))?;
        to.set(0, ul0, 0)?;
        let prog: &mut Xdp = floor_ebpf
            .program_mut("xdp_redirect_floor")
            .expect("xdp_redirect_floor")
            .try_into()?;
        prog.load()?;
    }
    let mut floor = Vec::new();
    let mut redirect_floor = Vec::new();
    // Capture (`forwarder capture`), 1,000 routes: running for another VIF, and for this one
    // (the frame is copied into the ring buffer, drained between rounds, outside the timing).
    let (mut encap_other, mut decap_other, mut encap_this, mut decap_this) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ring = planes[0].0.take_capture_ring()?.expect("capture ring");
    for _ in 0..ROUNDS {
        {
            let (small, trunk, ul0, customer, vpc, _, _) = &mut planes[0];
            let (trunk, ul0) = (*trunk, *ul0);
            for (vif, encap, decap) in [
                (7, &mut encap_other, &mut decap_other),
                (1, &mut encap_this, &mut decap_this),
            ] {
                small.set_capture(vif)?;
                sample(
                    &gw,
                    small.ebpf_mut(),
                    "xdp_customer",
                    trunk,
                    customer,
                    XDP_REDIRECT,
                    encap,
                )?;
                while ring.next().is_some() {}
                sample(
                    &gw,
                    small.ebpf_mut(),
                    "xdp_underlay",
                    ul0,
                    vpc,
                    XDP_REDIRECT,
                    decap,
                )?;
                while ring.next().is_some() {}
            }
            small.set_capture(0)?;
            sample(
                &gw,
                small.ebpf_mut(),
                "vlan_count",
                trunk,
                customer,
                XDP_PASS,
                &mut floor,
            )?;
            sample(
                &gw,
                &mut floor_ebpf,
                "xdp_redirect_floor",
                trunk,
                customer,
                XDP_REDIRECT,
                &mut redirect_floor,
            )?;
        }
        for (dp, trunk, ul0, customer, vpc, v6, cells) in &mut planes {
            let (trunk, ul0) = (*trunk, *ul0);
            // With the resolved underlay hop, then without (a FIB lookup per packet).
            for (hop, out) in [
                (resolved_underlay(ul0), &mut cells.encap),
                (UnderlayHop::default(), &mut cells.encap_fib),
            ] {
                dp.set_underlay(1, hop)?;
                sample(
                    &gw,
                    dp.ebpf_mut(),
                    "xdp_customer",
                    trunk,
                    customer,
                    XDP_REDIRECT,
                    out,
                )?;
            }
            dp.set_underlay(1, resolved_underlay(ul0))?;
            sample(
                &gw,
                dp.ebpf_mut(),
                "xdp_underlay",
                ul0,
                vpc,
                XDP_REDIRECT,
                &mut cells.decap,
            )?;
            if let Some((customer6, vpc6)) = v6 {
                sample(
                    &gw,
                    dp.ebpf_mut(),
                    "xdp_customer",
                    trunk,
                    customer6,
                    XDP_REDIRECT,
                    &mut cells.encap6,
                )?;
                sample(
                    &gw,
                    dp.ebpf_mut(),
                    "xdp_underlay",
                    ul0,
                    vpc6,
                    XDP_REDIRECT,
                    &mut cells.decap6,
                )?;
            }
        }
    }
    let floor = median(floor);
    let redirect_floor = median(redirect_floor);
    let cells: Vec<Cells> = planes
        .iter_mut()
        .map(|p| std::mem::take(&mut p.6))
        .collect();
    // (IPv6 routes, encap, decap, IPv4 encap and decap of the same plane)
    let v6: Vec<(usize, f64, f64, f64, f64)> = SIZES6
        .iter()
        .zip(&cells)
        .map(|(size, c)| {
            (
                *size,
                median(c.encap6.clone()),
                median(c.decap6.clone()),
                median(c.encap.clone()),
                median(c.decap.clone()),
            )
        })
        .collect();
    let medians: Vec<(usize, f64, f64, f64)> = SIZES
        .iter()
        .zip(cells)
        .map(|(size, c)| (*size, median(c.encap), median(c.encap_fib), median(c.decap)))
        .collect();
    println!(
        "| routes in the gateway table | encap ns/packet | encap, FIB lookup per packet | decap ns/packet | encap / decap | encap / redirect floor | decap / redirect floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (size, e, ef, d) in &medians {
        println!(
            "| {size} | {e:.0} | {ef:.0} | {d:.0} | {:.2} | {:.2} | {:.2} |",
            e / d,
            e / redirect_floor,
            d / redirect_floor
        );
    }
    let (first, last) = (medians[0], medians[medians.len() - 1]);
    println!(
        "| ratio {}k / {}k | {:.2} | {:.2} | {:.2} | | | |",
        last.0 / 1000,
        first.0 / 1000,
        last.1 / first.1,
        last.2 / first.2,
        last.3 / first.3
    );
    println!();
    println!(
        "Medians of {} samples per cell, taken in alternating rounds of {PER_ROUND}; \
         BPF_PROG_TEST_RUN, repeat = 1, 64-byte inner UDP packets. Tables: prefixes of a length \
         mix like a public IPv4 table (60 % /24, 10 % /22, 9 % /23, 5 % /20 and /21, the rest \
         /8 to /19 and /32), half routed to the attachment and half to the VIF; each frame goes \
         to a random host of a random installed prefix (256 frames per direction, in turn). \
         Encapsulation uses the underlay next hop the agent resolved (the `UNDERLAY` map); the \
         \"FIB lookup\" column is the same with that entry invalid, as for an ECMP underlay \
         route (`bpf_fib_lookup` per packet). IPv4 lookups go to the /24 shortcut map first \
         (`ROUTES24`, written as the agent writes it: {} entries for the three tables) and to \
         the LPM trie on a miss. Redirect floor, a program that redirects every \
         frame unchanged through a device map (the cheapest forwarding XDP can do): \
         {redirect_floor:.0} ns; a program that only counts and passes: {floor:.0} ns.",
        ROUNDS * PER_ROUND,
        shortcuts
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("IPv6, same rounds (each IPv6 table sits beside the IPv4 table of the same size):");
    println!();
    println!(
        "| IPv6 routes | encap ns/packet | decap ns/packet | encap / decap | encap IPv6 / IPv4 | decap IPv6 / IPv4 | encap / redirect floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (size, e6, d6, e4, d4) in &v6 {
        println!(
            "| {size} | {e6:.0} | {d6:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            e6 / d6,
            e6 / e4,
            d6 / d4,
            e6 / redirect_floor
        );
    }
    let (first6, last6) = (v6[0], v6[v6.len() - 1]);
    println!(
        "| ratio {}k / {}k | {:.2} | {:.2} | | | | |",
        last6.0 / 1000,
        first6.0 / 1000,
        last6.1 / first6.1,
        last6.2 / first6.2
    );
    println!();
    println!(
        "IPv6 tables: prefixes of 2000::/3 with a length mix like the public IPv6 table (58 % \
         /48, 12 % /32, 8 % /44, 6 % /40, the rest /29 to /64), half to the attachment and half \
         to the VIF; frames to random hosts of random installed prefixes, 64-byte inner UDP \
         packets over IPv6 (the underlay stays IPv4)."
    );
    println!();
    println!("Packet capture (`forwarder capture`), 1,000 routes, same rounds:");
    println!();
    println!("| capture | encap ns/packet (median) | decap ns/packet (median) |");
    println!("|---|---:|---:|");
    println!(
        "| none running | {:.0} | {:.0} |",
        medians[0].1, medians[0].3
    );
    println!(
        "| running for another VIF | {:.0} | {:.0} |",
        median(encap_other),
        median(decap_other)
    );
    println!(
        "| running for this VIF (frame copied to the ring buffer) | {:.0} | {:.0} |",
        median(encap_this),
        median(decap_this)
    );
    Ok(())
}
