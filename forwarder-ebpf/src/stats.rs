//! Per-CPU counters: the only map writes on the hot path.

use forwarder_common::TrafficCounters;

use crate::maps::{ATTACHMENT_STATS, DROPS, PASSES, VIF_DROPS, VIF_STATS};

#[inline(always)]
fn bump(slot: Option<*mut u64>) {
    if let Some(counter) = slot {
        // SAFETY: a per-CPU slot is only written by the CPU running this program.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn drop(reason: u32) {
    bump(DROPS.get_ptr_mut(reason));
}

#[inline(always)]
pub fn pass(reason: u32) {
    bump(PASSES.get_ptr_mut(reason));
}

#[inline(always)]
fn traffic(slot: Option<*mut TrafficCounters>, rx: bool, bytes: u64) {
    if let Some(c) = slot {
        // SAFETY: as in `bump`.
        unsafe {
            if rx {
                (*c).rx_packets += 1;
                (*c).rx_bytes += bytes;
            } else {
                (*c).tx_packets += 1;
                (*c).tx_bytes += bytes;
            }
        }
    }
}

#[inline(always)]
pub fn vif_rx(vif: u32, bytes: u64) {
    traffic(VIF_STATS.get_ptr_mut(vif), true, bytes);
}

#[inline(always)]
pub fn vif_tx(vif: u32, bytes: u64) {
    traffic(VIF_STATS.get_ptr_mut(vif), false, bytes);
}

#[inline(always)]
pub fn attachment_rx(attachment: u32, bytes: u64) {
    traffic(ATTACHMENT_STATS.get_ptr_mut(attachment), true, bytes);
}

#[inline(always)]
pub fn attachment_tx(attachment: u32, bytes: u64) {
    traffic(ATTACHMENT_STATS.get_ptr_mut(attachment), false, bytes);
}

/// Per-VIF drop counters (which customer it is).
#[derive(Clone, Copy)]
pub enum VifDrop {
    ControlLimited,
    SourceCheck,
    TooBig,
}

#[inline(always)]
pub fn vif_drop(vif: u32, what: VifDrop) {
    if let Some(c) = VIF_DROPS.get_ptr_mut(vif) {
        // SAFETY: as in `bump`.
        unsafe {
            match what {
                VifDrop::ControlLimited => (*c).control_limited += 1,
                VifDrop::SourceCheck => (*c).source_check += 1,
                VifDrop::TooBig => (*c).too_big += 1,
            }
        }
    }
}
