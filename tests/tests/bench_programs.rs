//! The throughput bench's own programs (forwarder-test-ebpf) through BPF_PROG_TEST_RUN, so
//! that what the bench counts is what it claims: the sink counts each kind of frame and
//! drops it, answers tagged ARP and passes untagged ARP; the loop generator counts what it
//! sends, sends a frame that is not due back into the loop and drops everything once stopped. (The
//! reference gateway's VLAN pop and push work on skb metadata, which a test run cannot set:
//! the bench checks them end to end before it measures.) Needs root.

use aya::{
    Ebpf,
    maps::{Array, DevMapHash},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::{PacketBuilder, VlanId};
use forwarder_test_ebpf::{MAP_SINK_COUNTERS, PROG_SINK, arp_reply_mac, sink_counter};
use forwarder_tests::{NetNs, customer::SHIM_OBJECT, per_cpu_sums, require_root, veth};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn load(programs: &[&str]) -> Ebpf {
    let mut ebpf = Ebpf::load(SHIM_OBJECT).expect("loading the test object");
    for name in programs {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("XDP");
        prog.load().expect("load");
    }
    ebpf
}

fn run(ebpf: &Ebpf, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog: &Xdp = ebpf
        .program(program)
        .expect(program)
        .try_into()
        .expect("XDP");
    let mut out = vec![0u8; 2048];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn udp(vlan: Option<u16>, dport: u16, size: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut frame = Vec::new();
    let header = 14 + 20 + 8 + if vlan.is_some() { 4 } else { 0 };
    let payload = vec![0u8; size - header];
    match vlan {
        Some(v) => eth
            .single_vlan(VlanId::try_new(v).expect("vlan"))
            .ipv4([192, 168, 50, 10], [10, 0, 1, 10], 64)
            .udp(1024, dport)
            .write(&mut frame, &payload),
        None => eth
            .ipv4([172, 31, 0, 1], [172, 31, 0, 2], 64)
            .udp(49152, dport)
            .write(&mut frame, &payload),
    }
    .expect("frame");
    frame
}

/// An 802.1Q tag and nothing after it.
fn truncated_tag() -> Vec<u8> {
    let mut f = vec![0u8; 16];
    f[12] = 0x81;
    f
}

fn arp(vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0xf0, 0, 0, 0, 7]);
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[2, 0xf0, 0, 0, 0, 7, 169, 254, 10, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 169, 254, 10, 2]);
    f.resize(60, 0);
    f
}

#[test]
fn the_sink_counts_each_kind_and_keeps_arp_working() {
    require_root().expect("root");
    let ebpf = load(&[PROG_SINK]);
    let cases: [(Vec<u8>, u32, u32); 6] = [
        (udp(None, 4789, 110), XDP_DROP, sink_counter::VXLAN),
        (udp(Some(100), 5001, 64), XDP_DROP, sink_counter::TAGGED),
        (udp(None, 5001, 64), XDP_DROP, sink_counter::OTHER),
        (truncated_tag(), XDP_DROP, sink_counter::OTHER),
        (arp(Some(100)), XDP_TX, sink_counter::ARP_REPLIED),
        (arp(None), XDP_PASS, sink_counter::ARP_PASSED),
    ];
    for (i, (frame, action, slot)) in cases.iter().enumerate() {
        let before = per_cpu_sums(&ebpf, MAP_SINK_COUNTERS, &sink_counter::NAMES).expect("sums");
        let (got, out) = run(&ebpf, PROG_SINK, frame);
        assert_eq!(got, *action, "case {i}");
        let after = per_cpu_sums(&ebpf, MAP_SINK_COUNTERS, &sink_counter::NAMES).expect("sums");
        for s in 0..sink_counter::COUNT as usize {
            let want = u64::from(s == *slot as usize);
            assert_eq!(
                after[s] - before[s],
                want,
                "case {i}: slot {}",
                sink_counter::NAMES[s]
            );
        }
        if *action == XDP_TX {
            // The tagged request came back as the VLAN router's reply.
            assert_eq!(out[6..12], arp_reply_mac(100));
            assert_eq!(u16::from_be_bytes([out[24], out[25]]), 2, "ARP reply");
        }
    }
}

#[test]
fn the_loop_generator_paces_counts_and_stops() {
    require_root().expect("root");
    let ns = NetNs::new("benchgen").expect("namespace");
    let peer = NetNs::new("benchgenpeer").expect("namespace");
    veth(&ns, "g1", &peer, "p0").expect("veth");
    let mut ebpf = ns
        .enter(|| {
            let mut ebpf = load(&["xdp_loop_gen", "xdp_loop_bounce"]);
            let ifindex = forwarder_tests::if_index("g1")?;
            let mut ports = DevMapHash::try_from(ebpf.map_mut("LOOP_PORTS").expect("map"))?;
            ports.insert(ifindex, ifindex, None, 0)?;
            Ok(ebpf)
        })
        .expect("generator");
    let set_pace = |ebpf: &mut Ebpf, interval: u64, next: u64, running: u64| {
        let mut pace: Array<_, u64> =
            Array::try_from(ebpf.map_mut("GEN_PACE").expect("map")).expect("GEN_PACE");
        pace.set(0, interval, 0).expect("interval");
        pace.set(1, next, 0).expect("next");
        pace.set(3, running, 0).expect("running");
    };
    let sent = |ebpf: &Ebpf| -> u64 {
        let pace: Array<_, u64> =
            Array::try_from(ebpf.map("GEN_PACE").expect("map")).expect("GEN_PACE");
        pace.get(&2, 0).expect("sent")
    };
    let frame = udp(Some(100), 5001, 64);
    // Stopped: both ends drop, so the loop empties, and nothing is counted.
    set_pace(&mut ebpf, 0, 0, 0);
    assert_eq!(run(&ebpf, "xdp_loop_gen", &frame).0, XDP_DROP);
    assert_eq!(run(&ebpf, "xdp_loop_bounce", &frame).0, XDP_DROP);
    assert_eq!(sent(&ebpf), 0);
    // Running without a pace: every pass sends (a broadcast redirect), unchanged, counted; the
    // bounce sends every frame back.
    set_pace(&mut ebpf, 0, 0, 1);
    let (action, out) = run(&ebpf, "xdp_loop_gen", &frame);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, frame);
    assert_eq!(sent(&ebpf), 1);
    assert_eq!(run(&ebpf, "xdp_loop_bounce", &frame).0, XDP_TX);
    // An interval of 36 years (longer than any uptime, which the monotonic clock counts): the
    // first frame is due at once, the next is not and goes back into the loop untouched.
    set_pace(&mut ebpf, 1 << 60, 0, 1);
    assert_eq!(run(&ebpf, "xdp_loop_gen", &frame).0, XDP_REDIRECT);
    let (action, out) = run(&ebpf, "xdp_loop_gen", &frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, frame, "a frame held back is left alone");
    assert_eq!(sent(&ebpf), 2);
}
