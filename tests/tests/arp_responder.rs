//! `xdp_arp_reply` (forwarder-test-ebpf) through BPF_PROG_TEST_RUN: a tagged ARP request
//! becomes, in place, the byte-exact reply with the VLAN's MAC and XDP_TX; anything else
//! passes untouched. Needs root (loading a BPF program).

use aya::programs::{TestRun as _, TestRunOptions};
use forwarder_tests::{
    arp::{self, ArpCounters, arp_reply_mac},
    require_root,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const REQUESTER: [u8; 6] = [0x02, 0xf0, 0x00, 0x00, 0x00, 0x07];
const BROADCAST: [u8; 6] = [0xff; 6];
const CLOUD: [u8; 4] = [10, 100, 0, 1];
const CLIENT: [u8; 4] = [10, 100, 0, 2];

/// A tagged ARP frame for Ethernet/IPv4.
#[derive(Clone, Copy)]
struct Arp {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    vlan: u16,
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

impl Arp {
    /// A broadcast request from REQUESTER (CLOUD) for CLIENT on VLAN `vlan`.
    fn request(vlan: u16) -> Self {
        Self {
            eth_dst: BROADCAST,
            eth_src: REQUESTER,
            vlan,
            op: 1,
            sha: REQUESTER,
            spa: CLOUD,
            tha: [0; 6],
            tpa: CLIENT,
        }
    }

    /// Ethernet, 802.1Q tag (PCP 5, so the whole TCI must survive), ARP, padded to the
    /// 60-byte minimum (the padding must survive too).
    fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&(0xa000 | self.vlan).to_be_bytes());
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
        f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        f.extend_from_slice(&[6, 4]);
        f.extend_from_slice(&self.op.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa);
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa);
        f.resize(60, 0xee);
        f
    }
}

fn run(ebpf: &mut aya::Ebpf, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog = arp::program(ebpf).expect("program");
    let mut out = vec![0u8; 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn counters(ebpf: &aya::Ebpf) -> ArpCounters {
    arp::counters(ebpf).expect("counters")
}

#[test]
fn request_becomes_the_vlan_routers_reply() {
    require_root().expect("root");
    let mut ebpf = arp::load().expect("load");
    let vlan = 0x0123;
    let (action, out) = run(&mut ebpf, &Arp::request(vlan).frame());
    assert_eq!(action, XDP_TX);
    let mac = [0x02, 0xcc, 0x00, 0x00, 0x01, 0x23];
    assert_eq!(arp_reply_mac(vlan), mac);
    let expected = Arp {
        eth_dst: REQUESTER,
        eth_src: mac,
        vlan,
        op: 2,
        sha: mac,
        spa: CLIENT,
        tha: REQUESTER,
        tpa: CLOUD,
    }
    .frame();
    assert_eq!(out, expected);
    assert_eq!(
        counters(&ebpf),
        ArpCounters {
            replied: 1,
            ..ArpCounters::default()
        }
    );
}

#[test]
fn everything_else_passes_unchanged() {
    require_root().expect("root");
    let mut ebpf = arp::load().expect("load");
    let request = Arp::request(100).frame();

    // Not ARP: a tagged IPv4 frame of the same length.
    let mut ipv4 = request.clone();
    ipv4[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    // Untagged ARP request.
    let mut untagged = request[..12].to_vec();
    untagged.extend_from_slice(&request[16..]);
    // An ARP reply, not a request.
    let reply = Arp {
        op: 2,
        tha: REQUESTER,
        ..Arp::request(100)
    }
    .frame();
    // Truncated: one byte short of the target address.
    let truncated = request[..45].to_vec();
    for (what, frame) in [
        ("IPv4", &ipv4),
        ("untagged", &untagged),
        ("ARP reply", &reply),
        ("truncated", &truncated),
    ] {
        let (action, out) = run(&mut ebpf, frame);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(&out, frame, "{what} changed");
    }

    // A probe (sender 0.0.0.0) and an announcement (sender = target) ask nobody.
    let probe = Arp {
        spa: [0; 4],
        ..Arp::request(100)
    }
    .frame();
    let announcement = Arp {
        tpa: CLOUD,
        ..Arp::request(100)
    }
    .frame();
    for (what, frame) in [("probe", &probe), ("announcement", &announcement)] {
        let (action, out) = run(&mut ebpf, frame);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(&out, frame, "{what} changed");
    }
    assert_eq!(
        counters(&ebpf),
        ArpCounters {
            replied: 0,
            passed: 4,
            not_answered: 2,
        }
    );
}
