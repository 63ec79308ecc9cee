//! The contract between the test programs (`main.rs`, built for bpfel-unknown-none by
//! `tests/build.rs`) and the tests crate, which loads them (`forwarder_tests::customer` for
//! the VLAN shim, `forwarder_tests::arp` for the ARP responder): program and map names, key
//! and value types, counter slots.
//!
//! The shim emulates 802.1Q sub-interfaces of a customer router on a kernel without the
//! 8021q module. Per VLAN there is a veth pair `vNNN` (the router's sub-interface, holding its
//! address) ↔ `vNNNp` (the shim end); one trunk interface carries the tagged frames:
//!
//! ```text
//!  vNNN ── vNNNp [TC ingress: vlan_shim_egress: push tag NNN, redirect] ──▶ trunk egress
//!  vNNN ◀── vNNNp egress ◀── [TC ingress: vlan_shim_ingress: pop tag, redirect] trunk
//! ```
#![no_std]

use core::mem::size_of;

/// TC ingress of every shim end (`vNNNp`): what the router sends out of `vNNN` gets the tag of
/// that sub-interface and leaves through the trunk.
pub const PROG_EGRESS: &str = "vlan_shim_egress";
/// TC ingress of the trunk: a frame tagged with a known VLAN loses its tag and is delivered
/// to that VLAN's sub-interface; anything else is dropped.
pub const PROG_INGRESS: &str = "vlan_shim_ingress";

/// Shim end ifindex (`u32`) → [`SubIf`].
pub const MAP_SUBIFS: &str = "SHIM_SUBIFS";
/// [`TrunkVlan`] → shim end ifindex (`u32`).
pub const MAP_VLANS: &str = "SHIM_VLANS";
/// Per-CPU `u64` counters, indexed by [`counter`].
pub const MAP_COUNTERS: &str = "SHIM_COUNTERS";

/// Sub-interfaces per loaded shim (all trunks together).
pub const MAX_SUBIFS: u32 = 256;

/// What the shim needs to know about a sub-interface, keyed by its shim end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubIf {
    /// VLAN id, 1..=4094 (a `u32` so that the struct has no padding).
    pub vlan: u32,
    pub trunk_ifindex: u32,
}

/// A VLAN on a trunk: one namespace may hold several trunks (one per connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrunkVlan {
    pub trunk_ifindex: u32,
    pub vlan: u32,
}

const _: () = assert!(size_of::<SubIf>() == 8);
const _: () = assert!(size_of::<TrunkVlan>() == 8);

/// Slots of [`MAP_COUNTERS`].
pub mod counter {
    /// Frames tagged and sent out of the trunk.
    pub const TO_TRUNK: u32 = 0;
    /// Frames untagged and delivered to a sub-interface.
    pub const FROM_TRUNK: u32 = 1;
    /// A shim end that is not in [`super::MAP_SUBIFS`].
    pub const UNKNOWN_SUBIF: u32 = 2;
    /// A frame on the trunk without an 802.1Q (0x8100) tag.
    pub const NOT_TAGGED: u32 = 3;
    /// A tagged frame on the trunk whose VLAN has no sub-interface.
    pub const UNKNOWN_VLAN: u32 = 4;
    /// A frame on the trunk with more than one tag (QinQ is not emulated).
    pub const STACKED_TAGS: u32 = 5;
    /// `bpf_skb_vlan_push` or `bpf_skb_vlan_pop` failed.
    pub const HELPER_FAILED: u32 = 6;
    pub const COUNT: u32 = 7;

    pub const NAMES: [&str; COUNT as usize] = [
        "to_trunk",
        "from_trunk",
        "unknown_subif",
        "not_tagged",
        "unknown_vlan",
        "stacked_tags",
        "helper_failed",
    ];
}

/// XDP on a customer trunk: answers every 802.1Q-tagged ARP request (Ethernet/IPv4,
/// operation 1) in place with XDP_TX, as if a router on that VLAN owned the requested address
/// with MAC [`arp_reply_mac`]`(vlan)`; the tag stays. Everything else passes. Counted in
/// [`MAP_ARP_COUNTERS`].
pub const PROG_ARP_REPLY: &str = "xdp_arp_reply";
/// Per-CPU `u64` counters of [`PROG_ARP_REPLY`], indexed by [`arp_counter`].
pub const MAP_ARP_COUNTERS: &str = "ARP_COUNTERS";

/// The MAC the ARP responder answers with on `vlan`: `02:cc:00:00:HI:LO`, HI:LO = the VLAN id,
/// so each VLAN's client router has a distinct, predictable MAC.
pub const fn arp_reply_mac(vlan: u16) -> [u8; 6] {
    let [hi, lo] = vlan.to_be_bytes();
    [0x02, 0xcc, 0x00, 0x00, hi, lo]
}

/// Slots of [`MAP_ARP_COUNTERS`].
pub mod arp_counter {
    /// ARP requests answered (XDP_TX).
    pub const REPLIED: u32 = 0;
    /// Frames that are not a tagged ARP request (untagged, other EtherType, ARP reply, not
    /// Ethernet/IPv4, truncated): XDP_PASS.
    pub const PASSED: u32 = 1;
    /// Tagged ARP requests left alone: probes (sender 0.0.0.0) and announcements (sender =
    /// target), which no router answers. XDP_PASS.
    pub const NOT_ANSWERED: u32 = 2;
    pub const COUNT: u32 = 3;

    pub const NAMES: [&str; COUNT as usize] = ["replied", "passed", "not_answered"];
}

/// XDP receiver of the throughput benchmark: counts what arrives by kind and drops it, except
/// ARP: tagged requests are answered as [`PROG_ARP_REPLY`] does, untagged ARP passes to the
/// kernel. Counted in [`MAP_SINK_COUNTERS`].
pub const PROG_SINK: &str = "xdp_sink";
/// Per-CPU `u64` counters of [`PROG_SINK`], indexed by [`sink_counter`].
pub const MAP_SINK_COUNTERS: &str = "SINK_COUNTERS";

/// Slots of [`MAP_SINK_COUNTERS`].
pub mod sink_counter {
    /// IPv4 (no options) UDP to port 4789: what a gateway sends toward a VPC. Dropped.
    pub const VXLAN: u32 = 0;
    /// 802.1Q-tagged, not ARP: what a gateway sends toward a customer. Dropped.
    pub const TAGGED: u32 = 1;
    /// Anything else (truncated, other EtherTypes, other IPv4). Dropped.
    pub const OTHER: u32 = 2;
    /// Tagged ARP requests answered (XDP_TX).
    pub const ARP_REPLIED: u32 = 3;
    /// Other ARP, tagged or not: XDP_PASS.
    pub const ARP_PASSED: u32 = 4;
    pub const COUNT: u32 = 5;

    pub const NAMES: [&str; COUNT as usize] =
        ["vxlan", "tagged", "other", "arp_replied", "arp_passed"];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)] structs of two u32s: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SubIf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrunkVlan {}
}
