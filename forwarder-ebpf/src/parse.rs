//! Bounds-checked header access. The verifier needs an explicit `data_end` comparison before
//! each access; every read or write of packet memory goes through [`ptr_at`] / [`ptr_at_mut`].

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};

use crate::Drop;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

/// IPv4 header (no options), fields as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The fixed IPv6 header, fields as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// A pointer to a `T` at `offset` bytes into the frame, or a malformed-frame drop if the frame
/// is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Drop> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Drop::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Drop> {
    Ok(ptr_at::<T>(ctx, offset)?.cast_mut())
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Drop> {
    // SAFETY: ptr_at checked that size_of::<T>() bytes at offset are inside the frame;
    // read_unaligned because packet data has no alignment guarantee.
    Ok(unsafe { ptr_at::<T>(ctx, offset)?.read_unaligned() })
}

#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), Drop> {
    // SAFETY: as in `read`.
    unsafe { ptr_at_mut::<T>(ctx, offset)?.write_unaligned(value) };
    Ok(())
}

/// The whole frame's length, its fragments included (XDP multi-buffer: a jumbo frame's
/// headers are in the linear part `data..data_end`, the rest in fragments).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    // SAFETY: ctx is the program's context.
    unsafe { bpf_xdp_get_buff_len(ctx.as_ptr().cast()) }
}

/// What forwarding needs of a packet, whichever its family: its length (the IPv4 total
/// length, or the IPv6 payload length plus the fixed header), its flow hash and the frame's.
#[derive(Clone, Copy)]
pub struct Packet {
    pub tot_len: u16,
    pub hash: u32,
    pub frame_len: u64,
    /// IPv6 (ethertype 0x86dd, hop limit without checksum) rather than IPv4.
    pub v6: bool,
}

impl Ipv4Info {
    #[inline(always)]
    pub fn packet(&self) -> Packet {
        Packet {
            tot_len: self.tot_len,
            hash: self.hash,
            frame_len: self.frame_len,
            v6: false,
        }
    }
}

/// What forwarding needs from an IPv6 header that passed [`check_ipv6`].
#[derive(Clone, Copy)]
pub struct Ipv6Info {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    pub packet: Packet,
}

/// Validates the fixed IPv6 header at `off` (version, payload length within the frame) and
/// computes the flow hash from addresses, flow label, the first next header and, when that
/// is TCP or UDP, the ports. Extension headers are not walked: a router forwards them
/// unchanged (RFC 8200 §4), Hop-by-Hop options included, and a fragment (next header 44)
/// hashes without ports like every fragment of its packet.
#[inline(always)]
pub fn check_ipv6(ctx: &XdpContext, off: usize, frame_len: u64) -> Result<Ipv6Info, Drop> {
    let ip: Ipv6Hdr = read(ctx, off)?;
    if ip.vtcfl[0] >> 4 != 6 {
        return Err(Drop::Malformed);
    }
    let payload = u16::from_be_bytes(ip.payload_len);
    // A payload length of 0 is a jumbogram (RFC 2675), which no link here carries.
    if payload == 0 || payload > u16::MAX - IPV6_HLEN as u16 {
        return Err(Drop::Malformed);
    }
    let tot_len = payload + IPV6_HLEN as u16;
    if (off + usize::from(tot_len)) as u64 > frame_len {
        return Err(Drop::Malformed);
    }
    let (mut sport, mut dport) = (0u16, 0u16);
    if (ip.next_header == IPPROTO_TCP || ip.next_header == IPPROTO_UDP)
        && let Ok(ports) = read::<[u8; 4]>(ctx, off + IPV6_HLEN)
    {
        sport = u16::from_be_bytes([ports[0], ports[1]]);
        dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    let label = u32::from_be_bytes(ip.vtcfl) & 0x000f_ffff;
    let hash = forwarder_common::flow_hash6(ip.src, ip.dst, label, ip.next_header, sport, dport);
    Ok(Ipv6Info {
        src: ip.src,
        dst: ip.dst,
        hop_limit: ip.hop_limit,
        packet: Packet {
            tot_len,
            hash,
            frame_len,
            v6: true,
        },
    })
}

/// May a packet with these addresses be forwarded off its link? Not from link-local,
/// unspecified, loopback or multicast sources; not to link-local, unspecified or loopback
/// destinations (multicast destinations never get here: their frames are multicast).
#[inline(always)]
pub fn ipv6_forwardable(src: &[u8; 16], dst: &[u8; 16]) -> bool {
    let special = |a: &[u8; 16]| {
        let mut zero = true;
        let mut i = 0;
        while i < 15 {
            zero &= a[i] == 0;
            i += 1;
        }
        // ::, ::1 and fe80::/10
        (zero && a[15] <= 1) || is_link_local(a)
    };
    !(special(src) || src[0] == 0xff || special(dst))
}

/// fe80::/10: an address of the link itself.
#[inline(always)]
pub fn is_link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// Decrements the hop count of the packet at `off`: IPv6's hop limit (no checksum), or
/// IPv4's TTL with its checksum patched.
#[inline(always)]
pub fn decrement_hops(ctx: &XdpContext, off: usize, v6: bool) -> Result<(), Drop> {
    if v6 {
        let ip = ptr_at_mut::<Ipv6Hdr>(ctx, off)?;
        // SAFETY: ptr_at_mut checked the whole header is inside the frame; all fields are bytes.
        unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1) };
        Ok(())
    } else {
        decrement_ttl(ctx, off)
    }
}

/// What the forwarding decision needs from an IPv4 header that passed [`check_ipv4`].
#[derive(Clone, Copy)]
pub struct Ipv4Info {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub tot_len: u16,
    pub ttl: u8,
    pub hash: u32,
    /// The whole frame's length as it arrived (read once per frame: a helper call).
    pub frame_len: u64,
}

/// Validates the IPv4 header at `off` (version, IHL, total length within the frame) and
/// computes the flow hash from addresses, protocol and, for unfragmented TCP/UDP, ports.
#[inline(always)]
pub fn check_ipv4(ctx: &XdpContext, off: usize, frame_len: u64) -> Result<Ipv4Info, Drop> {
    let ip: Ipv4Hdr = read(ctx, off)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(Drop::Malformed);
    }
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    if ihl < 20 || usize::from(tot_len) < ihl {
        return Err(Drop::Malformed);
    }
    if (off + usize::from(tot_len)) as u64 > frame_len {
        return Err(Drop::Malformed);
    }
    let frag = u16::from_be_bytes(ip.frag_off) & 0x3fff; // MF + offset
    let (mut sport, mut dport) = (0u16, 0u16);
    if frag == 0 && ihl == 20 && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        // Ports are optional for the hash: a header too short for them just hashes without.
        if let Ok(ports) = read::<[u8; 4]>(ctx, off + 20) {
            sport = u16::from_be_bytes([ports[0], ports[1]]);
            dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    let hash = forwarder_common::flow_hash(
        u32::from_be_bytes(ip.src),
        u32::from_be_bytes(ip.dst),
        ip.proto,
        sport,
        dport,
    );
    Ok(Ipv4Info {
        src: ip.src,
        dst: ip.dst,
        tot_len,
        ttl: ip.ttl,
        hash,
        frame_len,
    })
}

/// Decrements the TTL of the IPv4 header at `off` and patches its checksum incrementally
/// (RFC 1624; the same arithmetic as the kernel's `ip_decrease_ttl`).
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, off: usize) -> Result<(), Drop> {
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: ptr_at_mut checked the whole header is inside the frame; all fields are bytes.
    unsafe {
        let check = u32::from(u16::from_be_bytes((*ip).check)) + 0x0100;
        let check = (check + u32::from(check >= 0xffff)) as u16;
        (*ip).check = check.to_be_bytes();
        (*ip).ttl -= 1;
    }
    Ok(())
}
