//! The customer side: 802.1Q termination on connection ports (VIF by port and VLAN, control
//! frames to the VIF's control plane, data to routing), hairpin between VIFs, and tagging of
//! frames that leave a VIF's control plane.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use forwarder_common::{
    Vif, VifAddrs6, VifKey, VifPolicy, capture_direction, control_class, next_hop_kind,
    pass_reason, vif_flags, vif_state,
};

use crate::{
    Drop, capture, icmp, limit,
    maps::{CONTROL_PORTS, VIF_ADDRS6, VIF_POLICY, VIF_TABLE, VIFS},
    parse::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPV6_HLEN, Packet, VLAN_HLEN, check_ipv4, check_ipv6, decrement_hops,
        frame_len, ipv6_forwardable, is_link_local, read, write,
    },
    redirect, route,
    stats::{self, VifDrop},
    vxlan,
};

const BGP_PORT: u16 = 179;

/// Offset of the IP header in a tagged frame.
const TAGGED_L3: usize = ETH_HLEN + VLAN_HLEN;

/// XDP on a connection port.
#[inline(always)]
pub fn try_customer(ctx: &XdpContext) -> Result<u32, Drop> {
    match u16::from_be_bytes(read(ctx, 12)?) {
        ETH_P_8021Q => {}
        ETH_P_8021AD => return Err(Drop::ServiceTag),
        _ => return Err(Drop::NotTagged),
    }
    let tci = u16::from_be_bytes(read(ctx, ETH_HLEN)?);
    let inner_type = u16::from_be_bytes(read(ctx, ETH_HLEN + 2)?);
    let key = VifKey {
        ifindex: ctx.ingress_ifindex() as u32,
        vlan: tci & 0x0fff,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; a concurrent update can only make it stale.
    let vif_id = *unsafe { VIFS.get(key) }.ok_or(Drop::UnknownVlan)?;
    let vif: Vif = *VIF_TABLE.get(vif_id).ok_or(Drop::UnknownVlan)?;
    if vif.state == vif_state::ABSENT {
        return Err(Drop::UnknownVlan);
    }
    let len = frame_len(ctx);
    stats::vif_rx(vif_id, len);
    capture::frame(ctx, vif_id, capture_direction::FROM_CUSTOMER);

    let dst_mac: [u8; 6] = read(ctx, 0)?;
    let policy: VifPolicy = VIF_POLICY.get(vif_id).copied().unwrap_or_default();
    if inner_type == ETH_P_IPV6 {
        return customer_v6(ctx, tci, vif_id, &vif, &policy, dst_mac, len);
    }
    let control = inner_type == ETH_P_ARP
        || dst_mac[0] & 1 == 1
        || (inner_type == ETH_P_IP && is_cloud_address(&vif, read(ctx, TAGGED_L3 + 16)?));
    if control
        && inner_type == ETH_P_IP
        && let Some(answered) = crate::bfd::answer(ctx, vif_id, &vif)
    {
        return answered;
    }
    if control {
        let class = control_class_of(ctx, &vif, inner_type);
        return to_control_plane(ctx, vif_id, &vif, &policy, class);
    }
    if vif.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    if inner_type != ETH_P_IP {
        return Err(Drop::NotIpv4);
    }
    let ip = check_ipv4(ctx, TAGGED_L3, len)?;
    if ip.ttl <= 1 {
        return Err(Drop::Ttl);
    }
    // The client router's own interconnect address passes too (its ICMP errors, its pings).
    if policy.flags & vif_flags::SOURCE_CHECK != 0
        && !vif
            .cloud_addrs
            .iter()
            .any(|c| *c != [0; 4] && ip.src == client_of(*c))
        && !route::reaches_vif(vif.gateway_id, ip.src, vif_id)
    {
        stats::vif_drop(vif_id, VifDrop::SourceCheck);
        return Err(Drop::SourceCheck);
    }
    let nh = route::lookup(vif.gateway_id, ip.dst, ip.hash)?;
    forward(ctx, tci, &ip.packet(), vif_id, &vif, nh)
}

/// An IPv6 frame from the customer: Neighbor Discovery, multicast and whatever is addressed
/// to the cloud's addresses (its link-local ones too) goes to the control plane; data is
/// looked up in the gateway's IPv6 table.
#[inline(always)]
fn customer_v6(
    ctx: &XdpContext,
    tci: u16,
    vif_id: u32,
    vif: &Vif,
    policy: &VifPolicy,
    dst_mac: [u8; 6],
    len: u64,
) -> Result<u32, Drop> {
    let addrs: &VifAddrs6 = VIF_ADDRS6.get(vif_id).ok_or(Drop::UnknownVlan)?;
    let dst: [u8; 16] = read(ctx, TAGGED_L3 + 24)?;
    if dst_mac[0] & 1 == 1 || is_link_local(&dst) || is_cloud_address6(addrs, &dst) {
        let class = control_class_of6(ctx, addrs);
        return to_control_plane(ctx, vif_id, vif, policy, class);
    }
    if vif.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    let ip = check_ipv6(ctx, TAGGED_L3, len)?;
    if !ipv6_forwardable(&ip.src, &ip.dst) {
        return Err(Drop::Ipv6Scope);
    }
    if ip.hop_limit <= 1 {
        return Err(Drop::Ttl);
    }
    if policy.flags & vif_flags::SOURCE_CHECK != 0
        && !addrs.client.iter().any(|c| *c != [0; 16] && ip.src == *c)
        && !route::reaches_vif6(vif.gateway_id, ip.src, vif_id)
    {
        stats::vif_drop(vif_id, VifDrop::SourceCheck);
        return Err(Drop::SourceCheck);
    }
    let nh = route::lookup6(vif.gateway_id, ip.dst, ip.packet.hash)?;
    forward(ctx, tci, &ip.packet, vif_id, vif, nh)
}

/// A routed data packet from VIF `vif_id`: into an attachment's tunnel, or to another VIF.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    tci: u16,
    pkt: &Packet,
    vif_id: u32,
    vif: &Vif,
    nh: route::Resolved,
) -> Result<u32, Drop> {
    if nh.kind == next_hop_kind::ATTACHMENT {
        vxlan::encap(ctx, nh.target, pkt, vif_id, vif)
    } else {
        hairpin(ctx, tci, pkt, vif_id, vif, nh)
    }
}

/// The packet is too big for where it goes next: ICMP fragmentation needed (IPv4) or Packet
/// Too Big (IPv6) back to the customer on VIF `vif_id` (out of the port it came in on, with
/// its tag), or a drop.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, vif_id: u32, vif: &Vif, mtu: u16, v6: bool) -> Result<u32, Drop> {
    stats::vif_drop(vif_id, VifDrop::TooBig);
    let src_mac: [u8; 6] = read(ctx, 6)?;
    let answered = if v6 {
        let addrs = VIF_ADDRS6.get(vif_id).ok_or(Drop::Mtu)?;
        icmp::packet_too_big(ctx, TAGGED_L3, mtu, &addrs.cloud[0])?;
        pass_reason::ICMP6_TOO_BIG
    } else {
        icmp::frag_needed(ctx, TAGGED_L3, mtu, vif.cloud_addrs[0])?;
        pass_reason::ICMP_FRAG_NEEDED
    };
    write(ctx, 0, src_mac)?;
    write(ctx, 6, vif.mac)?;
    // A redirect to the port it came in on rather than XDP_TX: veth does not flush XDP_TX
    // frames to a peer without an XDP program (they wait for the next redirect).
    let action = redirect(ctx.ingress_ifindex() as u32)?;
    stats::pass(answered);
    stats::vif_tx(vif_id, frame_len(ctx));
    capture::frame(ctx, vif_id, capture_direction::TO_CUSTOMER);
    Ok(action)
}

#[inline(always)]
fn is_cloud_address(vif: &Vif, dst: [u8; 4]) -> bool {
    dst != [0; 4] && (dst == vif.cloud_addrs[0] || dst == vif.cloud_addrs[1])
}

#[inline(always)]
fn is_cloud_address6(addrs: &VifAddrs6, dst: &[u8; 16]) -> bool {
    *dst != [0; 16] && (*dst == addrs.cloud[0] || *dst == addrs.cloud[1])
}

/// Strips the tag and hands the frame to the VIF's control veth, within the VIF's rate
/// limit for the frame's class.
#[inline(always)]
fn to_control_plane(
    ctx: &XdpContext,
    vif_id: u32,
    vif: &Vif,
    policy: &VifPolicy,
    class: usize,
) -> Result<u32, Drop> {
    if vif.state == vif_state::DELETING {
        return Err(Drop::VifDown);
    }
    if vif.control_ifindex == 0 {
        return Err(Drop::NoControlPlane);
    }
    if policy.control_interval_ns != 0 && !limit::control(vif_id, policy, class) {
        stats::vif_drop(vif_id, VifDrop::ControlLimited);
        return Err(Drop::ControlLimited);
    }
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: shrinking the head by 4 bytes of a frame checked to be at least 18 bytes long.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), VLAN_HLEN as i32) } != 0 {
        return Err(Drop::Malformed);
    }
    // The inner ethertype already sits at offset 12 of the shortened frame.
    write(ctx, 0, macs)?;
    let action = redirect(vif.control_ifindex)?;
    stats::pass(pass_reason::CONTROL_IN);
    Ok(action)
}

/// Which control class a frame for the control plane belongs to. BGP: TCP port 179 between
/// one of the VIF's cloud addresses and its client router's address (the other host of the
/// /30), unfragmented; a flood from anywhere else cannot use up the BGP bucket.
#[inline(always)]
fn control_class_of(ctx: &XdpContext, vif: &Vif, inner_type: u16) -> usize {
    if inner_type == ETH_P_ARP {
        return control_class::ARP;
    }
    if inner_type == ETH_P_IP
        && let Ok(ip) = read::<[u8; 20]>(ctx, TAGGED_L3)
        && ip[9] == IPPROTO_TCP
        && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0
        && ip[0] & 0x0f >= 5
    {
        let src = [ip[12], ip[13], ip[14], ip[15]];
        let dst = [ip[16], ip[17], ip[18], ip[19]];
        let session = vif
            .cloud_addrs
            .iter()
            .any(|cloud| *cloud != [0; 4] && dst == *cloud && src == client_of(*cloud));
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if session && let Ok(ports) = read::<[u8; 4]>(ctx, TAGGED_L3 + ihl) {
            let (sport, dport) = (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            );
            if sport == BGP_PORT || dport == BGP_PORT {
                return control_class::BGP;
            }
        }
    }
    control_class::OTHER
}

/// [`control_class_of`] for an IPv6 frame: Neighbor Discovery (ICMPv6 133–137, RFC 4861) is
/// the ARP class; BGP is TCP port 179 between a cloud address and its client router's
/// address, with no extension header in between.
#[inline(always)]
fn control_class_of6(ctx: &XdpContext, addrs: &VifAddrs6) -> usize {
    let Ok(next_header) = read::<u8>(ctx, TAGGED_L3 + 6) else {
        return control_class::OTHER;
    };
    if next_header == IPPROTO_ICMPV6 {
        return match read::<u8>(ctx, TAGGED_L3 + IPV6_HLEN) {
            Ok(133..=137) => control_class::ARP,
            _ => control_class::OTHER,
        };
    }
    if next_header == IPPROTO_TCP
        && let Ok(src) = read::<[u8; 16]>(ctx, TAGGED_L3 + 8)
        && let Ok(dst) = read::<[u8; 16]>(ctx, TAGGED_L3 + 24)
        && let Ok(ports) = read::<[u8; 4]>(ctx, TAGGED_L3 + IPV6_HLEN)
    {
        let mut i = 0;
        while i < 2 {
            if addrs.cloud[i] != [0; 16] && dst == addrs.cloud[i] && src == addrs.client[i] {
                let (sport, dport) = (
                    u16::from_be_bytes([ports[0], ports[1]]),
                    u16::from_be_bytes([ports[2], ports[3]]),
                );
                if sport == BGP_PORT || dport == BGP_PORT {
                    return control_class::BGP;
                }
            }
            i += 1;
        }
    }
    control_class::OTHER
}

/// The client router's address of an interconnect /30 from the cloud's (.1 ↔ .2).
#[inline(always)]
pub fn client_of(cloud: [u8; 4]) -> [u8; 4] {
    [cloud[0], cloud[1], cloud[2], cloud[3] ^ 3]
}

/// VIF to VIF within one border gateway: rewrite MACs and VLAN id, keep the priority bits.
#[inline(always)]
fn hairpin(
    ctx: &XdpContext,
    tci: u16,
    ip: &Packet,
    from_id: u32,
    from: &Vif,
    nh: route::Resolved,
) -> Result<u32, Drop> {
    let target: Vif = *VIF_TABLE.get(nh.target).ok_or(Drop::BadNextHop)?;
    if target.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    if nh.mac == [0; 6] {
        return Err(Drop::NoNeighbour);
    }
    if let Some(p) = VIF_POLICY.get(nh.target)
        && p.mtu != 0
        && ip.tot_len > p.mtu
    {
        let mtu = p.mtu;
        return too_big(ctx, from_id, from, mtu, ip.v6);
    }
    decrement_hops(ctx, TAGGED_L3, ip.v6)?;
    write(ctx, 0, nh.mac)?;
    write(ctx, 6, target.mac)?;
    write(ctx, ETH_HLEN, ((tci & 0xf000) | target.vlan).to_be_bytes())?;
    let action = redirect(target.port_ifindex)?;
    // Re-tagged in place: the same length.
    stats::vif_tx(nh.target, ip.frame_len);
    capture::frame(ctx, nh.target, capture_direction::TO_CUSTOMER);
    Ok(action)
}

/// XDP on the host end of a VIF's control veth: tag what the control plane sends and put it on
/// the VIF's connection port.
#[inline(always)]
pub fn try_control(ctx: &XdpContext) -> Result<u32, Drop> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out at once.
    let vif_id = *unsafe { CONTROL_PORTS.get(ifindex) }.ok_or(Drop::NoControlPlane)?;
    let vif: Vif = *VIF_TABLE.get(vif_id).ok_or(Drop::NoControlPlane)?;
    if vif.state == vif_state::ABSENT || vif.state == vif_state::DELETING {
        return Err(Drop::VifDown);
    }
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: growing the head by 4 bytes; the verifier-visible bounds are re-checked by the
    // writes below.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -(VLAN_HLEN as i32)) } != 0 {
        return Err(Drop::Malformed);
    }
    write(ctx, 0, macs)?;
    write(ctx, 12, ETH_P_8021Q.to_be_bytes())?;
    write(ctx, ETH_HLEN, vif.vlan.to_be_bytes())?;
    let action = redirect(vif.port_ifindex)?;
    stats::pass(pass_reason::CONTROL_OUT);
    stats::vif_tx(vif_id, frame_len(ctx));
    capture::frame(ctx, vif_id, capture_direction::TO_CUSTOMER);
    Ok(action)
}
