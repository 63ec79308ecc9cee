//! TC programs that give a test's customer-router namespace 802.1Q sub-interfaces on a trunk
//! veth without the 8021q module (see `lib.rs` for the wiring). Both run on TC ingress hooks
//! and redirect to the egress of the other side; every drop is counted in `SHIM_COUNTERS`.
//! And `xdp_arp_reply`, an XDP ARP responder for a trunk: it stands in for the client routers
//! of many VLANs at once (see the end of this file).
//!
//! The tag goes into skb metadata (`bpf_skb_vlan_push`); the trunk needs `txvlan off` so the
//! kernel writes it inline before the frame leaves. On receive the kernel lifts an inline tag
//! into metadata before TC runs (`skb_vlan_untag`), so the ingress side reads it from
//! `__sk_buff::vlan_*`, and from the frame only if it is still inline.
// Built for bpfel-unknown-none by tests/build.rs. On the host (workspace-wide clippy) it
// compiles as an empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use forwarder_test_ebpf::{MAX_SUBIFS, SubIf, TrunkVlan, arp_counter, arp_reply_mac, counter};

const ETH_P_8021Q: u16 = 0x8100;
/// `TC_ACT_SHOT` (and `TCX_DROP`); the generated bindings type it differently per target.
const TC_ACT_SHOT: i32 = 2;
const VLAN_VID_MASK: u16 = 0x0fff;

#[map(name = "SHIM_SUBIFS")]
static SUBIFS: HashMap<u32, SubIf> = HashMap::with_max_entries(MAX_SUBIFS, 0);

#[map(name = "SHIM_VLANS")]
static VLANS: HashMap<TrunkVlan, u32> = HashMap::with_max_entries(MAX_SUBIFS, 0);

#[map(name = "SHIM_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe { *c += 1 };
    }
}

/// Counts the outcome; `Err(slot)` is a drop counted in `slot`.
#[inline(always)]
fn finish(result: Result<(u32, i32), u32>) -> i32 {
    match result {
        Ok((slot, action)) => {
            count(slot);
            action
        }
        Err(slot) => {
            count(slot);
            TC_ACT_SHOT
        }
    }
}

/// On `vNNNp`: tag with the sub-interface's VLAN and send out of its trunk.
#[classifier]
pub fn vlan_shim_egress(ctx: TcContext) -> i32 {
    finish(try_egress(&ctx))
}

/// On the trunk: untag and deliver to the sub-interface of the frame's VLAN.
#[classifier]
pub fn vlan_shim_ingress(ctx: TcContext) -> i32 {
    finish(try_ingress(&ctx))
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<(u32, i32), u32> {
    let skb = ctx.skb.skb;
    // SAFETY: skb is the context the kernel passed in; the verifier rewrites field reads.
    let ifindex = unsafe { (*skb).ifindex };
    // SAFETY: the value is copied out at once.
    let subif = *unsafe { SUBIFS.get(ifindex) }.ok_or(counter::UNKNOWN_SUBIF)?;
    // SAFETY: skb is our context; the helper takes the protocol in network byte order.
    if unsafe { bpf_skb_vlan_push(skb, ETH_P_8021Q.to_be(), subif.vlan as u16) } != 0 {
        return Err(counter::HELPER_FAILED);
    }
    // SAFETY: plain helper call; it returns TC_ACT_REDIRECT (or TC_ACT_SHOT on bad flags).
    let action = unsafe { bpf_redirect(subif.trunk_ifindex, 0) } as i32;
    Ok((counter::TO_TRUNK, action))
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<(u32, i32), u32> {
    let skb = ctx.skb.skb;
    // SAFETY: as in try_egress.
    let (ifindex, present, proto, tci) = unsafe {
        (
            (*skb).ifindex,
            (*skb).vlan_present,
            (*skb).vlan_proto,
            (*skb).vlan_tci,
        )
    };
    let vlan = if present != 0 {
        // vlan_proto holds the big-endian TPID as stored in the skb.
        if proto != u32::from(ETH_P_8021Q.to_be()) {
            return Err(counter::NOT_TAGGED);
        }
        tci as u16 & VLAN_VID_MASK
    } else {
        let tag: [u8; 4] = ctx.load(12).map_err(|_| counter::NOT_TAGGED)?;
        if u16::from_be_bytes([tag[0], tag[1]]) != ETH_P_8021Q {
            return Err(counter::NOT_TAGGED);
        }
        u16::from_be_bytes([tag[2], tag[3]]) & VLAN_VID_MASK
    };
    let key = TrunkVlan {
        trunk_ifindex: ifindex,
        vlan: u32::from(vlan),
    };
    // SAFETY: the value is copied out at once.
    let shim = *unsafe { VLANS.get(key) }.ok_or(counter::UNKNOWN_VLAN)?;
    // SAFETY: skb is our context. Pops the metadata tag or, failing that, the inline one.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 {
        return Err(counter::HELPER_FAILED);
    }
    // A second tag would now have moved into metadata.
    // SAFETY: as above; context fields stay readable after a packet-changing helper.
    if unsafe { (*skb).vlan_present } != 0 {
        return Err(counter::STACKED_TAGS);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(shim, 0) } as i32;
    Ok((counter::FROM_TRUNK, action))
}

// --- ARP responder -------------------------------------------------------------------------

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// Ethernet header (14) + one 802.1Q tag (4) + ARP for Ethernet/IPv4 (28).
const TAGGED_ARP_LEN: usize = 46;
// Offsets into a tagged ARP frame.
const ETH_DST: usize = 0;
const ETH_SRC: usize = 6;
const TPID: usize = 12;
const TCI: usize = 14;
const ETHER_TYPE: usize = 16;
const ARP_HTYPE: usize = 18;
const ARP_PTYPE: usize = 20;
const ARP_HLEN: usize = 22;
const ARP_PLEN: usize = 23;
const ARP_OP: usize = 24;
const ARP_SHA: usize = 26;
const ARP_SPA: usize = 32;
const ARP_THA: usize = 36;
const ARP_TPA: usize = 42;

#[map(name = "FLOOR_PORTS")]
static FLOOR_PORTS: DevMapHash = DevMapHash::with_max_entries(4, 0);

#[map(name = "FLOOR_TO")]
static FLOOR_TO: Array<u32> = Array::with_max_entries(1, 0);

/// The benchmark's floor: the cheapest forwarding XDP can do. Every frame leaves unchanged
/// through the port in `FLOOR_TO[0]`, redirected through a device map as the data plane's
/// frames are (`FLOOR_PORTS` must hold the port).
#[xdp]
pub fn xdp_redirect_floor(_ctx: XdpContext) -> u32 {
    let Some(to) = FLOOR_TO.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    FLOOR_PORTS
        .redirect(*to, u64::from(xdp_action::XDP_DROP))
        .unwrap_or(xdp_action::XDP_DROP)
}

#[map(name = "ARP_COUNTERS")]
static ARP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(arp_counter::COUNT, 0);

/// On a customer trunk: answers each tagged ARP request in place, as the owner of the requested
/// address with MAC `02:cc:00:00:HI:LO` (HI:LO = the VLAN id), and sends it back (XDP_TX).
#[xdp]
pub fn xdp_arp_reply(ctx: XdpContext) -> u32 {
    let (slot, action) = try_arp_reply(&ctx);
    if let Some(c) = ARP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe { *c += 1 };
    }
    action
}

#[inline(always)]
fn be16(frame: &[u8; TAGGED_ARP_LEN], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[inline(always)]
fn copy<const N: usize>(frame: &mut [u8; TAGGED_ARP_LEN], at: usize, bytes: [u8; N]) {
    let mut i = 0;
    while i < N {
        frame[at + i] = bytes[i];
        i += 1;
    }
}

#[inline(always)]
fn read<const N: usize>(frame: &[u8; TAGGED_ARP_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = frame[at + i];
        i += 1;
    }
    out
}

/// (counter slot, action).
#[inline(always)]
fn try_arp_reply(ctx: &XdpContext) -> (u32, u32) {
    let pass = (arp_counter::PASSED, xdp_action::XDP_PASS);
    let start = ctx.data();
    if start + TAGGED_ARP_LEN > ctx.data_end() {
        return pass;
    }
    // SAFETY: the check above makes TAGGED_ARP_LEN bytes from `data` part of the frame, which
    // the program may read and write; nothing else refers to them while it runs.
    let frame = unsafe { &mut *(start as *mut [u8; TAGGED_ARP_LEN]) };
    if be16(frame, TPID) != ETH_P_8021Q
        || be16(frame, ETHER_TYPE) != ETH_P_ARP
        || be16(frame, ARP_HTYPE) != ARPHRD_ETHER
        || be16(frame, ARP_PTYPE) != ETH_P_IP
        || frame[ARP_HLEN] != 6
        || frame[ARP_PLEN] != 4
        || be16(frame, ARP_OP) != ARPOP_REQUEST
    {
        return pass;
    }
    let requester: [u8; 6] = read(frame, ETH_SRC);
    let sender_mac: [u8; 6] = read(frame, ARP_SHA);
    let sender_ip: [u8; 4] = read(frame, ARP_SPA);
    let target_ip: [u8; 4] = read(frame, ARP_TPA);
    // A probe (RFC 5227, sender 0.0.0.0) or an announcement (sender = target) asks nobody.
    if sender_ip == [0; 4] || sender_ip == target_ip {
        return (arp_counter::NOT_ANSWERED, xdp_action::XDP_PASS);
    }
    let mac = arp_reply_mac(be16(frame, TCI) & VLAN_VID_MASK);
    copy(frame, ETH_DST, requester);
    copy(frame, ETH_SRC, mac);
    copy(frame, ARP_OP, ARPOP_REPLY.to_be_bytes());
    copy(frame, ARP_SHA, mac);
    copy(frame, ARP_SPA, target_ip);
    copy(frame, ARP_THA, sender_mac);
    copy(frame, ARP_TPA, sender_ip);
    (arp_counter::REPLIED, xdp_action::XDP_TX)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
