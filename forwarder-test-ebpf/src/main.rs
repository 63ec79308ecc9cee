//! TC programs that give a test's customer-router namespace 802.1Q sub-interfaces on a trunk
//! veth without the 8021q module (see `lib.rs` for the wiring). Both run on TC ingress hooks
//! and redirect to the egress of the other side; every drop is counted in `SHIM_COUNTERS`.
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
    helpers::generated::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use forwarder_test_ebpf::{MAX_SUBIFS, SubIf, TrunkVlan, counter};

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
