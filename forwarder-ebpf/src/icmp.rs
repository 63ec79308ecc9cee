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
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};

use forwarder_common::IPV6_MIN_MTU;

use crate::{
    Drop, limit,
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPV6_HLEN, Ipv4Hdr, frame_len, read, write},
};

/// ICMP header (8) + the longest quote (60-byte header + 8).
const BUF: usize = 8 + 68;

/// Turns the IPv4 packet at `l3` into an ICMP fragmentation-needed message to its sender,
/// from `from`, saying `mtu`. Returns the new IPv4 total length.
#[inline(never)]
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

/// Bytes of the offending packet an ICMPv6 Packet Too Big quotes: its IPv6 header and the
/// start of what follows (a transport header behind a few extension headers). RFC 4443 asks
/// for as much as fits in 1280 bytes; a receiver needs the headers, and a short quote keeps
/// the checksum on the stack.
const QUOTE6: usize = 128;
/// IPv6 pseudo-header (40) + ICMPv6 header (8) + quote.
const BUF6: usize = 40 + 8 + QUOTE6;

/// Where a Packet Too Big is put together: too big for the stack the forwarding path has
/// left. The program's own, never pinned.
#[map(name = "ICMP6_SCRATCH")]
static ICMP6_SCRATCH: PerCpuArray<[u8; BUF6]> = PerCpuArray::with_max_entries(1, 0);

/// Turns the IPv6 packet at `l3` into an ICMPv6 Packet Too Big (type 2, RFC 4443 §3.2) to
/// its sender, from `from`, saying `mtu`. Returns the new IPv6 packet's length.
///
/// Not for a packet whose source is not a unicast address beyond its link, nor for an ICMPv6
/// error (RFC 4443 §2.4 e); nor when the VIF has no IPv6 address to send from or the MTU is
/// below IPv6's minimum; nor over the ICMP rate limit: those are `mtu_exceeded` drops.
// A function of its own (a BPF-to-BPF call): its frame is not added to the forwarding
// path's, which has no room for it; the call costs nothing on the path that never sends one.
#[inline(never)]
pub fn packet_too_big(ctx: &XdpContext, l3: usize, mtu: u16, from: &[u8; 16]) -> Result<u16, Drop> {
    // The caller checked the addresses (`ipv6_forwardable`): the source is unicast beyond
    // its link.
    if *from == [0; 16] || mtu < IPV6_MIN_MTU {
        return Err(Drop::Mtu);
    }
    // Built in a map value, not on the stack (the forwarding path leaves little of it): the
    // quote first, then the pseudo-header and the ICMPv6 header before it, then, once summed,
    // the IPv6 header in the pseudo-header's place, and the whole written to the frame at once.
    let buf = ICMP6_SCRATCH.get_ptr_mut(0).ok_or(Drop::Malformed)?;
    // SAFETY: the map value is this CPU's alone while the program runs.
    let buf = unsafe { &mut *buf };
    // SAFETY: buf has room for QUOTE6 bytes at 48; the helper bounds-checks the frame side
    // (the packet is longer than an IPv6 minimum MTU, so longer than the quote).
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            l3 as u32,
            buf.as_mut_ptr().add(48).cast(),
            QUOTE6 as u32,
        )
    };
    if rc != 0 {
        return Err(Drop::Malformed);
    }
    // An ICMPv6 error (types below 128) gets none.
    if buf[48 + 6] == IPPROTO_ICMPV6 && buf[48 + IPV6_HLEN] < 128 {
        return Err(Drop::Mtu);
    }
    if !limit::icmp() {
        return Err(Drop::Mtu);
    }
    let icmp_len = (8 + QUOTE6) as u16;
    let len = icmp_len.to_be_bytes();
    let m = u32::from(mtu).to_be_bytes();
    // Pseudo-header: source, destination (the offender's source), upper-layer length, next
    // header.
    buf[..16].copy_from_slice(from);
    buf.copy_within(48 + 8..48 + 24, 16);
    buf[32..40].copy_from_slice(&[0, 0, len[0], len[1], 0, 0, 0, IPPROTO_ICMPV6]);
    // Type 2 (packet too big), code 0, checksum 0 for now, the MTU.
    buf[40..48].copy_from_slice(&[2, 0, 0, 0, m[0], m[1], m[2], m[3]]);
    // SAFETY: BUF6 bytes of buf, a multiple of 4 as the helper requires.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            BUF6 as u32,
            0,
        )
    };
    if sum < 0 {
        return Err(Drop::Malformed);
    }
    let c = (!fold(sum as u64)).to_ne_bytes();
    buf[42] = c[0];
    buf[43] = c[1];
    // The IPv6 header: version 6, traffic class and flow label 0, hop limit 64.
    buf.copy_within(16..32, 24);
    buf.copy_within(..16, 8);
    buf[..8].copy_from_slice(&[0x60, 0, 0, 0, len[0], len[1], IPPROTO_ICMPV6, 64]);

    let tot_len = IPV6_HLEN as u16 + icmp_len;
    let delta = (l3 + usize::from(tot_len)) as i64 - frame_len(ctx) as i64;
    // SAFETY: shrinking the frame to the reply's length (the packet was bigger than 1280).
    if delta > 0 || unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta as i32) } != 0 {
        return Err(Drop::Malformed);
    }
    // SAFETY: BUF6 bytes of buf; the helper bounds-checks the frame side.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.as_ptr().cast(),
            l3 as u32,
            buf.as_mut_ptr().cast(),
            BUF6 as u32,
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
