//! ICMP "fragmentation needed" (type 3, code 4, RFC 792 / RFC 1191) built in place from a
//! packet too big for the next link: the frame is cut down to the IPv4 header, the ICMP
//! header and the quote (the original IPv4 header and the first 8 bytes of its payload);
//! the callers rewrite the link layer (and, toward the VPC, the VXLAN headers) around it.
//!
//! No ICMP error answers a packet without DF (the data plane does not fragment), a
//! non-first fragment, an ICMP error, a packet from an address no reply can go to or to a
//! multicast or broadcast address (RFC 1812 §4.3.2.7); those, and packets over the rate
//! limit, are dropped as `mtu_exceeded`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{
        bpf_csum_diff, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};

use crate::{
    Drop, limit,
    parse::{IPPROTO_ICMP, Ipv4Hdr, frame_len, read, write},
};

/// ICMP header (8) + the longest quote (60-byte header + 8).
const BUF: usize = 8 + 68;

/// Turns the IPv4 packet at `l3` into an ICMP fragmentation-needed message to its sender,
/// from `from`, saying `mtu`. Returns the new IPv4 total length.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, l3: usize, mtu: u16, from: [u8; 4]) -> Result<u16, Drop> {
    let ip: Ipv4Hdr = read(ctx, l3)?;
    let frag = u16::from_be_bytes(ip.frag_off);
    if frag & 0x4000 == 0 || frag & 0x1fff != 0 {
        return Err(Drop::Mtu);
    }
    // RFC 1812 §4.3.2.7: not to "this network", loopback, multicast or broadcast sources,
    // and not for packets to multicast or broadcast destinations.
    if from == [0; 4] || ip.src[0] == 0 || ip.src[0] == 127 || ip.src[0] >= 224 || ip.dst[0] >= 224
    {
        return Err(Drop::Mtu);
    }
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(Drop::Malformed);
    }
    if ip.proto == IPPROTO_ICMP {
        let icmp_type: u8 = read(ctx, l3 + ihl)?;
        // Only queries (echo, timestamp, ...) get an answer; errors never do.
        if matches!(icmp_type, 3 | 4 | 5 | 11 | 12) {
            return Err(Drop::Mtu);
        }
    }
    if !limit::icmp() {
        return Err(Drop::Mtu);
    }

    let mut buf = [0u8; BUF];
    let quote = ihl + 8; // 28..=68, a multiple of 4
    // SAFETY: buf has room for 8 + quote bytes; the helper bounds-checks the frame side.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            l3 as u32,
            buf.as_mut_ptr().add(8).cast(),
            quote as u32,
        )
    };
    if rc != 0 {
        return Err(Drop::Malformed);
    }
    buf[0] = 3; // destination unreachable
    buf[1] = 4; // fragmentation needed and DF set
    let m = mtu.to_be_bytes();
    buf[6] = m[0];
    buf[7] = m[1];
    let icmp_len = 8 + quote;
    // SAFETY: icmp_len <= BUF bytes of buf, a multiple of 4 as the helper requires.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            icmp_len as u32,
            0,
        )
    };
    if sum < 0 {
        return Err(Drop::Malformed);
    }
    // The sum is of the bytes as loaded (host order): folded and stored the same way.
    let csum = !fold(sum as u64);
    let c = csum.to_ne_bytes();
    buf[2] = c[0];
    buf[3] = c[1];

    let tot_len = (20 + icmp_len) as u16;
    let delta = (l3 + usize::from(tot_len)) as i64 - frame_len(ctx) as i64;
    // SAFETY: shrinking the frame to the reply's length (it is never longer: the packet
    // was too big for a link of at least 68 bytes).
    if delta > 0 || unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta as i32) } != 0 {
        return Err(Drop::Malformed);
    }
    let mut hdr = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0xc0, // internetwork control, as the kernel sends its ICMP errors
        tot_len: tot_len.to_be_bytes(),
        id: [0, 0],
        frag_off: [0, 0],
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: [0, 0],
        src: from,
        dst: ip.src,
    };
    hdr.check = ipv4_checksum(&hdr).to_be_bytes();
    write(ctx, l3, hdr)?;
    // SAFETY: icmp_len bytes of buf; the helper bounds-checks the frame side.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.as_ptr().cast(),
            (l3 + 20) as u32,
            buf.as_mut_ptr().cast(),
            icmp_len as u32,
        )
    };
    if rc != 0 {
        return Err(Drop::Malformed);
    }
    Ok(tot_len)
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of a 20-byte IPv4 header (its `check` field zero).
#[inline(always)]
pub fn ipv4_checksum(h: &Ipv4Hdr) -> u16 {
    let w = |a: u8, b: u8| u64::from(u16::from_be_bytes([a, b]));
    let sum = w(h.ver_ihl, h.tos)
        + w(h.tot_len[0], h.tot_len[1])
        + w(h.id[0], h.id[1])
        + w(h.frag_off[0], h.frag_off[1])
        + w(h.ttl, h.proto)
        + w(h.src[0], h.src[1])
        + w(h.src[2], h.src[3])
        + w(h.dst[0], h.dst[1])
        + w(h.dst[2], h.dst[3]);
    !fold(sum)
}
