//! forwarder's XDP programs. One thin `#[xdp]` entry per port role; the work is in `try_*`
//! functions returning `Result<action, Drop>` so that every drop is counted in one place.
//!
//! - `xdp_customer` on connection ports: 802.1Q → VIF → control plane, or route → VXLAN /
//!   hairpin.
//! - `xdp_underlay` on the underlay port: VXLAN from an attachment → route → tagged to a VIF.
//! - `xdp_control` on the host end of each VIF's control veth: tag and send to the customer.
//!
// Built for bpfel-unknown-none by forwarder/build.rs. On the host (`cargo build --workspace`)
// it compiles as an empty program so that workspace-wide commands work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod bfd;
mod capture;
mod icmp;
mod limit;
mod maps;
mod parse;
mod route;
mod stats;
mod vlan;
mod vxlan;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use forwarder_common::{PacketCounter, VLAN_COUNTERS_LEN, VLAN_UNTAGGED_SLOT, drop_reason};

/// Why a frame is dropped; the discriminant is its index in the `DROPS` map.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Drop {
    NotTagged = drop_reason::NOT_TAGGED,
    ServiceTag = drop_reason::SERVICE_TAG,
    UnknownVlan = drop_reason::UNKNOWN_VLAN,
    VifDown = drop_reason::VIF_DOWN,
    NoRoute = drop_reason::NO_ROUTE,
    Ttl = drop_reason::TTL,
    Mtu = drop_reason::MTU,
    Malformed = drop_reason::MALFORMED,
    BadVxlan = drop_reason::BAD_VXLAN,
    NoNeighbour = drop_reason::NO_NEIGHBOUR,
    NotIpv4 = drop_reason::NOT_IPV4,
    NoControlPlane = drop_reason::NO_CONTROL_PLANE,
    BadNextHop = drop_reason::BAD_NEXT_HOP,
    NoTxPort = drop_reason::NO_TX_PORT,
    UnderlayUnreachable = drop_reason::UNDERLAY_UNREACHABLE,
    ControlLimited = drop_reason::CONTROL_LIMITED,
    SourceCheck = drop_reason::SOURCE_CHECK,
    Ipv6Scope = drop_reason::IPV6_SCOPE,
}

#[inline(always)]
fn finish(result: Result<u32, Drop>) -> u32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason as u32);
            XDP_DROP
        }
    }
}

/// Redirects through `TX_PORTS`; a port missing from the map is a counted drop, not an abort.
#[inline(always)]
fn redirect(ifindex: u32) -> Result<u32, Drop> {
    maps::TX_PORTS
        .redirect(ifindex, u64::from(XDP_DROP))
        .map_err(|_| Drop::NoTxPort)
}

// Every forwarding program accepts multi-buffer frames (`xdp.frags`): a port whose MTU
// needs more than one page (jumbo frames) can only have such a program attached.
#[xdp(frags)]
pub fn xdp_customer(ctx: XdpContext) -> u32 {
    finish(vlan::try_customer(&ctx))
}

#[xdp(frags)]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    finish(vxlan::try_underlay(&ctx))
}

#[xdp(frags)]
pub fn xdp_control(ctx: XdpContext) -> u32 {
    finish(vlan::try_control(&ctx))
}

#[map(name = "VLAN_COUNTERS")]
static VLAN_COUNTERS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(VLAN_COUNTERS_LEN, 0);

/// Diagnostic: counts every frame by its 802.1Q VLAN id (untagged frames in their own slot)
/// and passes it on. Used by the foundation smoke test.
#[xdp]
pub fn vlan_count(ctx: XdpContext) -> u32 {
    let len = parse::frame_len(&ctx);
    let slot = match parse::read::<[u8; 4]>(&ctx, 12) {
        Ok([0x81, 0x00, hi, lo]) => u32::from(u16::from_be_bytes([hi, lo]) & 0x0fff),
        Ok(_) => VLAN_UNTAGGED_SLOT,
        Err(_) => return XDP_PASS,
    };
    if let Some(counter) = VLAN_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
    XDP_PASS
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
