//! The VPC side: VXLAN encapsulation toward an attachment (outer headers from the attachment
//! and the kernel FIB) and, on the underlay port, decapsulation and tagging toward a VIF.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_fib_lookup,
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use forwarder_common::{
    Attachment, OUTER_TTL, UnderlayHop, VXLAN_OVERHEAD, VXLAN_PORT, Vif, VtepKey,
    capture_direction, finish_ipv4_csum, next_hop_kind, pass_reason, vif_state, vxlan_source_port,
};

use crate::{
    Drop, capture, icmp,
    maps::{ATTACHMENTS, UNDERLAY, VIF_ADDRS6, VIF_POLICY, VIF_TABLE, VTEPS},
    parse::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, Ipv4Hdr, Packet, VLAN_HLEN,
        check_ipv4, check_ipv6, decrement_hops, frame_len, ipv6_forwardable, read, write,
    },
    redirect, route,
    stats::{self, VifDrop},
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// Bytes the frame grows by: outer headers minus the VLAN tag that goes away.
const GROW: i32 = (VXLAN_OVERHEAD - VLAN_HLEN) as i32;
/// Offsets in an encapsulated frame.
const OUTER_IP: usize = ETH_HLEN;
const OUTER_UDP: usize = OUTER_IP + 20;
const VXLAN_HDR: usize = OUTER_UDP + 8;
const INNER_ETH: usize = VXLAN_HDR + 8;
const INNER_IP: usize = INNER_ETH + ETH_HLEN;

/// Customer → VPC: the tagged frame with its IPv4 or IPv6 packet at offset 18 becomes
/// outer Ethernet/IPv4/UDP/VXLAN + inner Ethernet + the same packet (TTL or hop limit − 1).
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    att_id: u32,
    ip: &Packet,
    vif_id: u32,
    vif: &Vif,
) -> Result<u32, Drop> {
    let inner_src = vif.mac;
    let att: Attachment = *ATTACHMENTS.get(att_id).ok_or(Drop::BadNextHop)?;
    if att.state == 0 {
        return Err(Drop::BadNextHop);
    }
    // Outer IPv4 + UDP + VXLAN + inner Ethernet, then the packet.
    let outer_len = ip.tot_len + VXLAN_OVERHEAD as u16;

    // Underlay next hop, and the MTU check, before the frame grows: the agent's resolved
    // hop when it has one, the kernel's FIB otherwise.
    let hop = match UNDERLAY.get(att_id) {
        // A torn read of an entry being rewritten cannot pass for a usable one.
        Some(h) if h.valid != 0 && h.mtu != 0 && h.ifindex != 0 => *h,
        _ => fib_hop(ctx, &att, outer_len)?,
    };
    if u32::from(outer_len) > hop.mtu {
        let mtu = (hop.mtu.min(u32::from(u16::MAX)) as u16).saturating_sub(VXLAN_OVERHEAD as u16);
        return crate::vlan::too_big(ctx, vif_id, vif, mtu, ip.v6);
    }

    decrement_hops(ctx, ETH_HLEN + VLAN_HLEN, ip.v6)?;
    // SAFETY: growing the head; every write below is bounds-checked again.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -GROW) } != 0 {
        return Err(Drop::Malformed);
    }

    write(ctx, 0, hop.dmac)?;
    write(ctx, 6, hop.smac)?;
    write(ctx, 12, ETH_P_IP.to_be_bytes())?;
    let sport = vxlan_source_port(ip.hash).to_be_bytes();
    write_outer(ctx, &att, outer_len, sport)?;
    let vni = (att.vni << 8).to_be_bytes();
    write(
        ctx,
        VXLAN_HDR,
        [0x08, 0, 0, 0, vni[0], vni[1], vni[2], vni[3]],
    )?;
    write(ctx, INNER_ETH, att.router_mac)?;
    write(ctx, INNER_ETH + 6, inner_src)?;
    let inner_type = if ip.v6 { ETH_P_IPV6 } else { ETH_P_IP };
    write(ctx, INNER_ETH + 12, inner_type.to_be_bytes())?;

    let action = redirect(hop.ifindex)?;
    stats::attachment_tx(att_id, ip.frame_len + GROW as u64);
    Ok(action)
}

/// The underlay next hop from the kernel's FIB (`bpf_fib_lookup`), for an attachment whose
/// hop the agent has not resolved (or cannot: several next hops). A path MTU the packet does
/// not fit comes back as the hop's `mtu`, for the caller's check.
#[inline(always)]
fn fib_hop(ctx: &XdpContext, att: &Attachment, outer_len: u16) -> Result<UnderlayHop, Drop> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = att.underlay_ifindex;
    fib.__bindgen_anon_1.tot_len = outer_len;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(att.local_vtep);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(att.remote_vtep);
    // SAFETY: ctx is the program's context and fib a properly sized, initialised struct.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &raw mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(UnderlayHop {
            valid: 1,
            ifindex: fib.ifindex,
            mtu: u32::from(outer_len),
            smac: fib.smac,
            dmac: fib.dmac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Drop::NoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(UnderlayHop {
            // SAFETY: on FRAG_NEEDED the kernel wrote the path MTU into the union.
            mtu: u32::from(unsafe { fib.__bindgen_anon_1.mtu_result }),
            ..UnderlayHop::default()
        }),
        _ => Err(Drop::UnderlayUnreachable),
    }
}

/// XDP on the underlay port: VXLAN from a configured attachment is decapsulated and routed
/// toward a VIF; other VXLAN is dropped; everything else is the host's and passes.
#[inline(always)]
pub fn try_underlay(ctx: &XdpContext) -> Result<u32, Drop> {
    use aya_ebpf::bindings::xdp_action::XDP_PASS;
    let host = || {
        stats::pass(pass_reason::HOST);
        Ok(XDP_PASS)
    };
    if u16::from_be_bytes(read(ctx, 12)?) != ETH_P_IP {
        return host();
    }
    let outer: Ipv4Hdr = read(ctx, OUTER_IP)?;
    if outer.ver_ihl != 0x45 || outer.proto != IPPROTO_UDP {
        return host();
    }
    let udp: [u8; 4] = read(ctx, OUTER_UDP)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return host();
    }
    // From here on it is VXLAN: ours, or dropped.
    if u16::from_be_bytes(outer.frag_off) & 0x3fff != 0 {
        return Err(Drop::Malformed);
    }
    let vxlan: [u8; 8] = read(ctx, VXLAN_HDR)?;
    if vxlan[0] & 0x08 == 0 {
        return Err(Drop::Malformed);
    }
    let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
    let key = VtepKey {
        vni,
        remote_vtep: outer.src,
    };
    // SAFETY: the value is copied out at once.
    let att_id = *unsafe { VTEPS.get(key) }.ok_or(Drop::BadVxlan)?;
    let att: Attachment = *ATTACHMENTS.get(att_id).ok_or(Drop::BadVxlan)?;
    if att.state == 0 || att.local_vtep != outer.dst {
        return Err(Drop::BadVxlan);
    }
    let len = frame_len(ctx);
    stats::attachment_rx(att_id, len);

    let inner_type = u16::from_be_bytes(read(ctx, INNER_ETH + 12)?);
    let (pkt, nh) = if inner_type == ETH_P_IP {
        let ip = check_ipv4(ctx, INNER_IP, len)?;
        if ip.ttl <= 1 {
            return Err(Drop::Ttl);
        }
        (ip.packet(), route::lookup(att.gateway_id, ip.dst, ip.hash)?)
    } else if inner_type == ETH_P_IPV6 {
        let ip = check_ipv6(ctx, INNER_IP, len)?;
        if !ipv6_forwardable(&ip.src, &ip.dst) {
            return Err(Drop::Ipv6Scope);
        }
        if ip.hop_limit <= 1 {
            return Err(Drop::Ttl);
        }
        (
            ip.packet,
            route::lookup6(att.gateway_id, ip.dst, ip.packet.hash)?,
        )
    } else {
        return Err(Drop::NotIpv4);
    };
    if nh.kind != next_hop_kind::VIF {
        // VPC-to-VPC transit through the gateway is not offered.
        return Err(Drop::NoRoute);
    }
    let vif: Vif = *VIF_TABLE.get(nh.target).ok_or(Drop::BadNextHop)?;
    if vif.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    if nh.mac == [0; 6] {
        return Err(Drop::NoNeighbour);
    }
    if let Some(p) = VIF_POLICY.get(nh.target)
        && p.mtu != 0
        && pkt.tot_len > p.mtu
    {
        let mtu = p.mtu;
        stats::vif_drop(nh.target, VifDrop::TooBig);
        return too_big_to_vpc(ctx, att_id, &att, nh.target, &vif, mtu, pkt.v6);
    }
    decrement_hops(ctx, INNER_IP, pkt.v6)?;
    // SAFETY: shrinking the head of a frame checked to hold every header removed.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), GROW) } != 0 {
        return Err(Drop::Malformed);
    }
    write(ctx, 0, nh.mac)?;
    write(ctx, 6, vif.mac)?;
    let tpid = ETH_P_8021Q.to_be_bytes();
    let tci = vif.vlan.to_be_bytes();
    let ipt = inner_type.to_be_bytes();
    write(ctx, 12, [tpid[0], tpid[1], tci[0], tci[1], ipt[0], ipt[1]])?;
    let action = redirect(vif.port_ifindex)?;
    stats::vif_tx(nh.target, len - GROW as u64);
    capture::frame(ctx, nh.target, capture_direction::TO_CUSTOMER);
    Ok(action)
}

/// The outer IPv4 and UDP headers toward attachment `att` (local → remote VTEP, DF, the
/// checksum from the partial sum computed in userspace; UDP checksum 0, allowed for VXLAN
/// over IPv4 by RFC 7348).
#[inline(always)]
fn write_outer(
    ctx: &XdpContext,
    att: &Attachment,
    outer_len: u16,
    sport: [u8; 2],
) -> Result<(), Drop> {
    write(
        ctx,
        OUTER_IP,
        Ipv4Hdr {
            ver_ihl: 0x45,
            tos: 0,
            tot_len: outer_len.to_be_bytes(),
            id: [0, 0],
            frag_off: [0x40, 0], // DF
            ttl: OUTER_TTL,
            proto: IPPROTO_UDP,
            check: finish_ipv4_csum(att.ip_csum_partial, outer_len).to_be_bytes(),
            src: att.local_vtep,
            dst: att.remote_vtep,
        },
    )?;
    let dport = VXLAN_PORT.to_be_bytes();
    let udp_len = (outer_len - 20).to_be_bytes();
    write(
        ctx,
        OUTER_UDP,
        [
            sport[0], sport[1], dport[0], dport[1], udp_len[0], udp_len[1], 0, 0,
        ],
    )
}

/// A decapsulated packet too big for VIF `vif`: ICMP fragmentation needed (IPv4) or Packet
/// Too Big (IPv6), from the VIF's cloud address, back to its sender in the VPC through the
/// same tunnel (outer addresses, MACs and the inner MACs swapped, the VNI kept), out of the
/// underlay port it came in on.
#[inline(always)]
fn too_big_to_vpc(
    ctx: &XdpContext,
    att_id: u32,
    att: &Attachment,
    vif_id: u32,
    vif: &Vif,
    mtu: u16,
    v6: bool,
) -> Result<u32, Drop> {
    // (destination, source) of the outer and the inner Ethernet header.
    let outer: [[u8; 6]; 2] = read(ctx, 0)?;
    let inner: [[u8; 6]; 2] = read(ctx, INNER_ETH)?;
    if inner[0][0] & 1 != 0 {
        // A link-layer broadcast or multicast gets no ICMP error (RFC 1812 §4.3.2.7).
        return Err(Drop::Mtu);
    }
    let sport: [u8; 2] = read(ctx, OUTER_UDP)?;
    let (inner_len, answered) = if v6 {
        let addrs = VIF_ADDRS6.get(vif_id).ok_or(Drop::Mtu)?;
        let len = icmp::packet_too_big(ctx, INNER_IP, mtu, &addrs.cloud[0])?;
        (len, pass_reason::ICMP6_TOO_BIG)
    } else {
        let len = icmp::frag_needed(ctx, INNER_IP, mtu, vif.cloud_addrs[0])?;
        (len, pass_reason::ICMP_FRAG_NEEDED)
    };
    let outer_len = inner_len + VXLAN_OVERHEAD as u16;
    // Back where it came from: both headers' addresses swapped.
    write(ctx, 0, [outer[1], outer[0]])?;
    write_outer(ctx, att, outer_len, sport)?;
    write(ctx, INNER_ETH, [inner[1], inner[0]])?;
    // Out of the underlay port it came in on (a redirect: see `vlan::too_big`).
    let action = redirect(ctx.ingress_ifindex() as u32)?;
    stats::pass(answered);
    stats::attachment_tx(att_id, frame_len(ctx));
    Ok(action)
}
