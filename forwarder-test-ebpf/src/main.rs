//! TC programs that give a test's customer-router namespace 802.1Q sub-interfaces on a trunk
//! veth without the 8021q module (see `lib.rs` for the wiring). Both run on TC ingress hooks
//! and redirect to the egress of the other side; every drop is counted in `SHIM_COUNTERS`.
//! And `xdp_arp_reply`, an XDP ARP responder for a trunk: it stands in for the client routers
//! of many VLANs at once; `xdp_redirect_floor`, the benchmark's cheapest forwarding;
//! `xdp_loop_gen` and `xdp_loop_bounce`, its traffic generator; `xdp_sink`, its counting sink
//! (see the end of this file).
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
    bindings::{BPF_F_BROADCAST, xdp_action},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use forwarder_test_ebpf::{
    MAX_SUBIFS, SubIf, TrunkVlan, arp_counter, arp_reply_mac, counter, sink_counter,
};

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

/// [`xdp_loop_gen`]'s pacing, written by the bench: `[0]` the interval between frames in ns
/// (0: every frame goes), `[1]` when the next frame is due (ns, monotonic clock), `[2]` frames
/// sent so far, `[3]` whether the loop's frames keep circulating (0: they are dropped).
#[map(name = "GEN_PACE")]
static GEN_PACE: Array<u64> = Array::with_max_entries(4, 0);

/// Frames a late generator may send back to back to catch up; later than that, it skips the
/// slots it missed (the offered rate is measured, not assumed).
const GEN_CATCH_UP: u64 = 32;

/// Whether a frame is due now by `GEN_PACE` (and then the next one's time is set); `None`:
/// the map is missing.
#[inline(always)]
fn due() -> Option<bool> {
    let (interval, next) = (*GEN_PACE.get(0)?, GEN_PACE.get_ptr_mut(1)?);
    if interval == 0 {
        return Some(true);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: map values stay valid while the program runs; one generator writes at a time.
    let due = unsafe { *next };
    if now < due {
        return Some(false);
    }
    let following = if now - due > GEN_CATCH_UP * interval {
        now + interval
    } else {
        due + interval
    };
    // SAFETY: as above.
    unsafe { *next = following };
    Some(true)
}

/// The loop generator's broadcast targets: the port toward the gateway and the loop's own veth
/// (`g1`), so that a frame sent keeps circulating.
#[map(name = "LOOP_PORTS")]
static LOOP_PORTS: DevMapHash = DevMapHash::with_max_entries(4, 0);

/// The throughput benchmark's generator: a few frames circulate between the two ends of a
/// veth pair (`g1` runs this, `g0` runs [`xdp_loop_bounce`]), each pass a slot of the offered
/// stream. A frame whose time has come is counted and broadcast through `LOOP_PORTS`: a copy
/// leaves toward the gateway, as an XDP redirect (a NIC driver's path: no skb), and the frame
/// goes on circulating; the others go straight back (XDP_TX), so the stream is paced frame by
/// frame and not in bursts. With `GEN_PACE[3]` at 0 every frame is dropped and the loop
/// empties.
#[xdp]
pub fn xdp_loop_gen(_ctx: XdpContext) -> u32 {
    let (Some(running), Some(sent)) = (GEN_PACE.get(3), GEN_PACE.get_ptr_mut(2)) else {
        return xdp_action::XDP_ABORTED;
    };
    if *running == 0 {
        return xdp_action::XDP_DROP;
    }
    match due() {
        Some(true) => {}
        Some(false) => return xdp_action::XDP_TX,
        None => return xdp_action::XDP_ABORTED,
    }
    // SAFETY: map values stay valid while the program runs; one generator writes at a time.
    unsafe { *sent += 1 };
    LOOP_PORTS
        .redirect(
            0,
            u64::from(BPF_F_BROADCAST) | u64::from(xdp_action::XDP_DROP),
        )
        .unwrap_or(xdp_action::XDP_DROP)
}

/// The other end of [`xdp_loop_gen`]'s loop: every frame goes back, until the loop stops.
#[xdp]
pub fn xdp_loop_bounce(_ctx: XdpContext) -> u32 {
    match GEN_PACE.get(3) {
        Some(0) | None => xdp_action::XDP_DROP,
        Some(_) => xdp_action::XDP_TX,
    }
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

// --- The kernel reference gateway's VLAN pop and push --------------------------------------

/// `TC_ACT_OK`: let the stack carry on with the frame.
const TC_ACT_OK: i32 = 0;

#[map(name = "REF_VLAN")]
static REF_VLAN: Array<u32> = Array::with_max_entries(1, 0);

/// TC ingress of the reference gateway's connection port: what `tc action vlan pop` does (the
/// kernel has moved the tag into skb metadata before TC runs). Frames of other VLANs, and
/// untagged ones, are dropped, as a port that only carries VIFs does.
#[classifier]
pub fn ref_vlan_pop(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let want = REF_VLAN.get(0).copied().unwrap_or(0);
    // SAFETY: skb is our context; the verifier rewrites field reads.
    let (present, tci) = unsafe { ((*skb).vlan_present, (*skb).vlan_tci) };
    if present == 0 || tci & u32::from(VLAN_VID_MASK) != want {
        return TC_ACT_SHOT;
    }
    // SAFETY: skb is our context.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// TC egress of the reference gateway's connection port: what `tc action vlan push id N` does.
#[classifier]
pub fn ref_vlan_push(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let vlan = REF_VLAN.get(0).copied().unwrap_or(0);
    // SAFETY: skb is our context; the helper takes the protocol in network byte order.
    if unsafe { bpf_skb_vlan_push(skb, ETH_P_8021Q.to_be(), vlan as u16) } != 0 {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

// --- Benchmark sink --------------------------------------------------------------------------

const VXLAN_PORT: u16 = 4789;
const IPPROTO_UDP: u8 = 17;

#[map(name = "SINK_COUNTERS")]
static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(sink_counter::COUNT, 0);

/// The throughput benchmark's receiver: counts and drops what a gateway forwarded (VXLAN on
/// the VPC side, 802.1Q-tagged frames on the customer side), answers tagged ARP requests as
/// [`xdp_arp_reply`] does and lets untagged ARP through to the kernel, so that both ends keep
/// their neighbours while the data frames never reach the stack.
#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    let (slot, action) = try_sink(&ctx);
    if let Some(c) = SINK_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe { *c += 1 };
    }
    action
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, at: usize) -> Option<u16> {
    let start = ctx.data();
    if start + at + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: the two bytes are inside the frame (checked above).
    let bytes = unsafe { *((start + at) as *const [u8; 2]) };
    Some(u16::from_be_bytes(bytes))
}

/// (counter slot, action).
#[inline(always)]
fn try_sink(ctx: &XdpContext) -> (u32, u32) {
    let drop = xdp_action::XDP_DROP;
    match be16_at(ctx, 12) {
        Some(ETH_P_8021Q) => match be16_at(ctx, 16) {
            Some(ETH_P_ARP) => {
                let (slot, action) = try_arp_reply(ctx);
                if slot == arp_counter::REPLIED {
                    (sink_counter::ARP_REPLIED, action)
                } else {
                    (sink_counter::ARP_PASSED, action)
                }
            }
            Some(_) => (sink_counter::TAGGED, drop),
            None => (sink_counter::OTHER, drop),
        },
        Some(ETH_P_ARP) => (sink_counter::ARP_PASSED, xdp_action::XDP_PASS),
        Some(ETH_P_IP) => {
            // Outer IPv4 without options (what every VTEP here sends), UDP to the VXLAN port.
            let start = ctx.data();
            if start + 14 + 20 + 4 > ctx.data_end() {
                return (sink_counter::OTHER, drop);
            }
            // SAFETY: the byte is inside the frame (checked above).
            let (ihl, proto) = unsafe {
                (
                    *((start + 14) as *const u8),
                    *((start + 14 + 9) as *const u8),
                )
            };
            if ihl == 0x45 && proto == IPPROTO_UDP && be16_at(ctx, 14 + 20 + 2) == Some(VXLAN_PORT)
            {
                (sink_counter::VXLAN, drop)
            } else {
                (sink_counter::OTHER, drop)
            }
        }
        _ => (sink_counter::OTHER, drop),
    }
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
