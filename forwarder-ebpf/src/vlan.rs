//! The customer side: 802.1Q termination on connection ports (VIF by port and VLAN, control
//! frames to the VIF's control plane, data to routing), hairpin between VIFs, and tagging of
//! frames that leave a VIF's control plane.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use forwarder_common::{Vif, VifKey, capture_direction, next_hop_kind, pass_reason, vif_state};

use crate::{
    Drop, capture,
    maps::{CONTROL_PORTS, VIF_TABLE, VIFS},
    parse::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, VLAN_HLEN, check_ipv4,
        decrement_ttl, frame_len, read, write,
    },
    redirect, route, stats, vxlan,
};

/// Offset of the IPv4 header in a tagged frame.
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
    stats::vif_rx(vif_id, frame_len(ctx));
    capture::frame(ctx, vif_id, capture_direction::FROM_CUSTOMER);

    let dst_mac: [u8; 6] = read(ctx, 0)?;
    let control = inner_type == ETH_P_ARP
        || dst_mac[0] & 1 == 1
        || (inner_type == ETH_P_IP && is_cloud_address(&vif, read(ctx, TAGGED_L3 + 16)?));
    if control {
        return to_control_plane(ctx, &vif);
    }
    if vif.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    if inner_type != ETH_P_IP {
        return Err(Drop::NotIpv4);
    }
    let ip = check_ipv4(ctx, TAGGED_L3)?;
    if ip.ttl <= 1 {
        return Err(Drop::Ttl);
    }
    let nh = route::lookup(vif.gateway_id, ip.dst, ip.hash)?;
    if nh.kind == next_hop_kind::ATTACHMENT {
        vxlan::encap(ctx, nh.target, &ip, vif.mac)
    } else {
        hairpin(ctx, tci, nh)
    }
}

#[inline(always)]
fn is_cloud_address(vif: &Vif, dst: [u8; 4]) -> bool {
    dst != [0; 4] && (dst == vif.cloud_addrs[0] || dst == vif.cloud_addrs[1])
}

/// Strips the tag and hands the frame to the VIF's control veth.
#[inline(always)]
fn to_control_plane(ctx: &XdpContext, vif: &Vif) -> Result<u32, Drop> {
    if vif.state == vif_state::DELETING {
        return Err(Drop::VifDown);
    }
    if vif.control_ifindex == 0 {
        return Err(Drop::NoControlPlane);
    }
    let macs: [u8; 12] = read(ctx, 0)?;
    // SAFETY: shrinking the head by 4 bytes of a frame checked to be at least 18 bytes long.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), VLAN_HLEN as i32) } != 0 {
        return Err(Drop::Malformed);
    }
    // The inner ethertype already sits at offset 12 of the shortened frame.
    write(ctx, 0, macs)?;
    stats::pass(pass_reason::CONTROL_IN);
    redirect(vif.control_ifindex)
}

/// VIF to VIF within one border gateway: rewrite MACs and VLAN id, keep the priority bits.
#[inline(always)]
fn hairpin(ctx: &XdpContext, tci: u16, nh: route::Resolved) -> Result<u32, Drop> {
    let target: Vif = *VIF_TABLE.get(nh.target).ok_or(Drop::BadNextHop)?;
    if target.state != vif_state::AVAILABLE {
        return Err(Drop::VifDown);
    }
    if nh.mac == [0; 6] {
        return Err(Drop::NoNeighbour);
    }
    decrement_ttl(ctx, TAGGED_L3)?;
    write(ctx, 0, nh.mac)?;
    write(ctx, 6, target.mac)?;
    write(ctx, ETH_HLEN, ((tci & 0xf000) | target.vlan).to_be_bytes())?;
    stats::vif_tx(nh.target, frame_len(ctx));
    capture::frame(ctx, nh.target, capture_direction::TO_CUSTOMER);
    redirect(target.port_ifindex)
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
    stats::pass(pass_reason::CONTROL_OUT);
    stats::vif_tx(vif_id, frame_len(ctx));
    capture::frame(ctx, vif_id, capture_direction::TO_CUSTOMER);
    redirect(vif.port_ifindex)
}
