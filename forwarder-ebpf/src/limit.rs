//! Token buckets as virtual clocks (GCRA): one per VIF and control class for what goes to a
//! VIF's control plane, one per CPU for the ICMP errors the data plane sends. Per CPU, so no
//! atomics: with N CPUs a VIF gets at most N times its configured rate.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use forwarder_common::{ICMP_BURST, ICMP_INTERVAL_NS, VifPolicy, control_class};

use crate::maps::{CONTROL_BUCKETS, ICMP_BUCKET};

/// Takes a token from the bucket whose clock is `*next`: true if one was there.
#[inline(always)]
fn take(next: &mut u64, now: u64, interval: u64, burst: u64) -> bool {
    // Capped at a full bucket: a clock left ahead by an older, deeper bucket (a reload that
    // lowered the burst, a VIF id used again) does not starve the new one.
    let tat = if *next > now {
        let empty = now + burst;
        if *next > empty {
            *next = empty;
        }
        *next
    } else {
        now
    };
    // A full bucket holds `burst / interval` tokens: the last one is taken at tat = now +
    // burst − interval.
    if tat - now + interval > burst {
        return false;
    }
    *next = tat + interval;
    true
}

/// May a control frame of `class` for VIF `vif` pass?
#[inline(always)]
pub fn control(vif: u32, policy: &VifPolicy, class: usize) -> bool {
    if policy.control_interval_ns == 0 {
        return true;
    }
    let Some(buckets) = CONTROL_BUCKETS.get_ptr_mut(vif) else {
        return true;
    };
    // SAFETY: a per-CPU slot is only touched by the CPU running this program.
    let buckets = unsafe { &mut *buckets };
    let next = match class {
        control_class::BGP => &mut buckets.next_ns[0],
        control_class::ARP => &mut buckets.next_ns[1],
        _ => &mut buckets.next_ns[2],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    take(
        next,
        now,
        u64::from(policy.control_interval_ns),
        policy.control_burst_ns,
    )
}

/// May an ICMP error be sent now?
#[inline(always)]
pub fn icmp() -> bool {
    let Some(next) = ICMP_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as above.
    let (next, now) = unsafe { (&mut *next, bpf_ktime_get_ns()) };
    take(next, now, ICMP_INTERVAL_NS, ICMP_BURST * ICMP_INTERVAL_NS)
}
