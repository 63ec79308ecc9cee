//! `forwarder capture`: while the agent has set `CAPTURE` to a VIF, every frame of that VIF
//! (as it arrived from the customer, and as it leaves toward the customer) is copied into
//! the ring buffer. Without a capture the cost is one array read per frame.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use forwarder_common::{CAPTURE_SNAPLEN, CaptureRecord};

const _: () = assert!(CAPTURE_SNAPLEN.is_power_of_two());

use crate::{
    maps::{CAPTURE, CAPTURE_RING},
    parse::frame_len,
};

/// Copies the frame if VIF `vif` is being captured.
#[inline(always)]
pub fn frame(ctx: &XdpContext, vif: u32, direction: u32) {
    match CAPTURE.get(0) {
        Some(v) if *v == vif && vif != 0 => {}
        _ => return,
    }
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        // The ring is full: the reader is behind, this frame is not captured.
        return;
    };
    let len = frame_len(ctx);
    let mut caplen = len as u32;
    if caplen > CAPTURE_SNAPLEN as u32 {
        caplen = CAPTURE_SNAPLEN as u32;
    }
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, writable CaptureRecord; the fields are written
    // through raw pointers before anything reads them, and the copy is bounded by the data
    // array's size (caplen <= CAPTURE_SNAPLEN) and by the frame (caplen <= len).
    let copied = unsafe {
        (*record).timestamp_ns = bpf_ktime_get_ns();
        (*record).vif = vif;
        (*record).direction = direction;
        (*record).len = len as u32;
        (*record).caplen = caplen;
        if caplen == 0 {
            0
        } else {
            // In 1..=CAPTURE_SNAPLEN in a form the verifier can bound: a mask it sees (the
            // volatile read keeps the compiler from dropping a mask it knows is a no-op).
            let last = core::ptr::read_volatile(&(caplen - 1));
            let n = (last & (CAPTURE_SNAPLEN as u32 - 1)) + 1;
            bpf_xdp_load_bytes(ctx.as_ptr().cast(), 0, (&raw mut (*record).data).cast(), n)
        }
    };
    if copied == 0 {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}
