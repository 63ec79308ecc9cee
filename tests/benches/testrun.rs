//! Per-packet cost of the XDP fast paths through BPF_PROG_TEST_RUN: customer → VPC
//! (encapsulation) and VPC → customer (decapsulation), with 10 and with 100,000 routes in the
//! border gateway's table. Two data planes (one per table size) are loaded side by side and
//! sampled alternately, so machine noise hits both alike. Prints one Markdown table that
//! `cargo xtask bench` puts into BENCHMARKS.md.
//!
//! Each sample is one program run (repeat = 1: the kernel does not reset a frame between
//! repeats, and these programs move the frame head); the kernel times the run itself, so the
//! syscall is not counted. Reported: the median of the samples.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use etherparse::{PacketBuilder, VlanId};
use forwarder::dataplane::{AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, VifSpec};
use forwarder_common::vif_state;
use forwarder_tests::{NetNs, veth};
use ipnet::Ipv4Net;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 1_000;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn dataplane(gw: &NetNs, routes: u32) -> anyhow::Result<(Dataplane, u32, u32)> {
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
    // The two routes the frames use, the rest /24s and /32s spread over 11.0.0.0/8 and
    // 100.64.0.0/10 so the trie is deep.
    let mut table = vec![
        (1, "10.0.0.0/16".parse::<Ipv4Net>()?, 1),
        (1, "192.168.50.0/24".parse::<Ipv4Net>()?, 2),
    ];
    for i in 0..routes.saturating_sub(2) {
        let prefix = if i % 2 == 0 {
            Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24)?
        } else {
            Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + i * 7), 32)?
        };
        table.push((1, prefix, if i % 3 == 0 { 1 } else { 2 }));
    }
    dp.upsert_routes(&table)?;
    Ok((dp, trunk, ul0))
}

/// `count` runs of `program` on `frame`, appending the kernel-measured ns of each.
fn sample(
    gw: &NetNs,
    dp: &mut Dataplane,
    program: &str,
    ifindex: u32,
    frame: &[u8],
    action: u32,
    out: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let prog: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(program)
        .expect("program")
        .try_into()?;
    let prog = &*prog;
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let samples = gw.enter(|| {
        let mut data_out = vec![0u8; 2048];
        let mut samples = Vec::with_capacity(PER_ROUND);
        for _ in 0..PER_ROUND {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx),
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

fn frames() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut customer = Vec::new();
    PacketBuilder::ethernet2([2, 0xc1, 0, 0, 0, 1], [2, 0xf0, 0, 0, 0, 1])
        .single_vlan(VlanId::try_new(100)?)
        .ipv4([192, 168, 50, 10], [10, 0, 1, 10], 64)
        .udp(40000, 5001)
        .write(&mut customer, &[0u8; 18])?;
    let mut inner = Vec::new();
    PacketBuilder::ipv4([10, 0, 1, 10], [192, 168, 50, 10], 64)
        .udp(5001, 40000)
        .write(&mut inner, &[0u8; 18])?;
    let mut vxlan_payload = vec![0x08, 0, 0, 0, 0, 0x03, 0xe9, 0];
    vxlan_payload.extend_from_slice(&[2, 0xf0, 0, 0, 0, 1, 2, 0, 0, 0, 0x0a, 1, 8, 0]);
    vxlan_payload.extend(inner);
    let mut vpc = Vec::new();
    PacketBuilder::ethernet2([2, 0x5e, 0, 0, 0, 2], [2, 0xaa, 0, 0, 0, 1])
        .ipv4([172, 31, 0, 2], [172, 31, 0, 1], 64)
        .udp(51234, 4789)
        .write(&mut vpc, &vxlan_payload)?;
    Ok((customer, vpc))
}

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
    let (customer, vpc) = frames()?;
    let (mut small, trunk, ul0) = dataplane(&gw, 10)?;
    let (mut big, _, _) = dataplane(&gw, 100_000)?;
    // The floor: a program that only bumps a per-CPU counter and passes (the timer and call
    // overhead of a test run on this machine).
    let floor_prog: &mut Xdp = small
        .ebpf_mut()
        .program_mut("vlan_count")
        .expect("vlan_count")
        .try_into()?;
    floor_prog.load()?;

    let (mut floor, mut encap_s, mut encap_b, mut decap_s, mut decap_b) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Capture (`forwarder capture`): running for another VIF, and for this one (the frame is
    // copied into the ring buffer, which is drained between rounds, outside the timing).
    let (mut encap_other, mut decap_other, mut encap_this, mut decap_this) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ring = small.take_capture_ring().expect("capture ring");
    for _ in 0..ROUNDS {
        small.set_capture(7)?;
        sample(
            &gw,
            &mut small,
            "xdp_customer",
            trunk,
            &customer,
            XDP_REDIRECT,
            &mut encap_other,
        )?;
        sample(
            &gw,
            &mut small,
            "xdp_underlay",
            ul0,
            &vpc,
            XDP_REDIRECT,
            &mut decap_other,
        )?;
        small.set_capture(1)?;
        sample(
            &gw,
            &mut small,
            "xdp_customer",
            trunk,
            &customer,
            XDP_REDIRECT,
            &mut encap_this,
        )?;
        while ring.next().is_some() {}
        sample(
            &gw,
            &mut small,
            "xdp_underlay",
            ul0,
            &vpc,
            XDP_REDIRECT,
            &mut decap_this,
        )?;
        while ring.next().is_some() {}
        small.set_capture(0)?;
        sample(
            &gw,
            &mut small,
            "vlan_count",
            trunk,
            &customer,
            XDP_PASS,
            &mut floor,
        )?;
        sample(
            &gw,
            &mut small,
            "xdp_customer",
            trunk,
            &customer,
            XDP_REDIRECT,
            &mut encap_s,
        )?;
        sample(
            &gw,
            &mut big,
            "xdp_customer",
            trunk,
            &customer,
            XDP_REDIRECT,
            &mut encap_b,
        )?;
        sample(
            &gw,
            &mut small,
            "xdp_underlay",
            ul0,
            &vpc,
            XDP_REDIRECT,
            &mut decap_s,
        )?;
        sample(
            &gw,
            &mut big,
            "xdp_underlay",
            ul0,
            &vpc,
            XDP_REDIRECT,
            &mut decap_b,
        )?;
    }
    let (floor, es, eb, ds, db) = (
        median(floor),
        median(encap_s),
        median(encap_b),
        median(decap_s),
        median(decap_b),
    );
    println!(
        "| routes in the gateway table | encap ns/packet (median) | decap ns/packet (median) |"
    );
    println!("|---:|---:|---:|");
    println!("| 10 | {es:.0} | {ds:.0} |");
    println!("| 100000 | {eb:.0} | {db:.0} |");
    println!("| ratio 100k / 10 | {:.2} | {:.2} |", eb / es, db / ds);
    println!();
    println!(
        "Floor, a program that only counts and passes: {floor:.0} ns. {} samples per cell, \
         taken in alternating rounds of {PER_ROUND}; BPF_PROG_TEST_RUN, repeat = 1, 64-byte inner \
         UDP packets. Encapsulation includes `bpf_fib_lookup` for the underlay next hop.",
        ROUNDS * PER_ROUND
    );
    println!();
    println!("Packet capture (`forwarder capture`), 10 routes, same rounds:");
    println!();
    println!("| capture | encap ns/packet (median) | decap ns/packet (median) |");
    println!("|---|---:|---:|");
    println!("| none running | {es:.0} | {ds:.0} |");
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
