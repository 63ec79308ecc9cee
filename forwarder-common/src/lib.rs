//! The only contract between the XDP programs and the agent: map names, capacities and the
//! `#[repr(C)]` types stored in the maps. Both sides compile this crate; nothing here may
//! depend on `std`.
#![no_std]

/// Index of the "untagged frame" slot in [`VLAN_COUNTERS`]: VLAN ids are 0..=4095.
pub const VLAN_UNTAGGED_SLOT: u32 = 4096;

/// Per-CPU array of [`PacketCounter`], one slot per VLAN id plus one for untagged frames.
pub const VLAN_COUNTERS: &str = "VLAN_COUNTERS";
pub const VLAN_COUNTERS_LEN: u32 = VLAN_UNTAGGED_SLOT + 1;

/// Packets and bytes seen, one per CPU per slot; the agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type here is #[repr(C)], Copy, made only of integers, with no implicit
    // padding (checked by the size assertions above), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::PacketCounter {}
}
