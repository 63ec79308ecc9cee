//! forwarder's XDP programs. One thin `#[xdp]` entry per program; the work is in `try_*`
//! functions so that every outcome (and every drop reason) is decided in one place.
// Built for bpfel-unknown-none by forwarder/build.rs. On the host (`cargo build --workspace`)
// it compiles as an empty program so that workspace-wide commands work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod parse;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use forwarder_common::{PacketCounter, VLAN_COUNTERS_LEN, VLAN_UNTAGGED_SLOT};

#[map(name = "VLAN_COUNTERS")]
static VLAN_COUNTERS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(VLAN_COUNTERS_LEN, 0);

/// Counts every frame by its 802.1Q VLAN id (untagged frames in their own slot) and passes it
/// on. The smallest program that proves build → embed → load → attach → map read.
#[xdp]
pub fn vlan_count(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let slot = match parse::vlan_id(&ctx) {
        Ok(Some(vid)) => u32::from(vid),
        Ok(None) => VLAN_UNTAGGED_SLOT,
        // Too short to hold an Ethernet header: nothing to count it under.
        Err(()) => return xdp_action::XDP_PASS,
    };
    if let Some(counter) = VLAN_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
    xdp_action::XDP_PASS
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
