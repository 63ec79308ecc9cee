//! Longest-prefix match in a border gateway's table and next-hop resolution, including the
//! choice of a group member by flow hash.

use aya_ebpf::maps::lpm_trie::Key;
use forwarder_common::{RouteKey, RouteKey6, group_member, next_hop_kind};

use crate::{
    Drop,
    maps::{NEXT_HOPS, ROUTES, ROUTES6, ROUTES24},
};

/// A next hop after group resolution: an attachment or a VIF, never a group.
#[derive(Clone, Copy)]
pub struct Resolved {
    pub kind: u32,
    pub target: u32,
    pub mac: [u8; 6],
}

#[inline(always)]
pub fn lookup(gateway_id: u32, dst: [u8; 4], hash: u32) -> Result<Resolved, Drop> {
    resolve(longest_match(gateway_id, dst).ok_or(Drop::NoRoute)?, hash)
}

/// The next-hop id of the longest prefix holding `addr` in `gateway_id`'s table: the /24
/// shortcut when the agent wrote one, else the trie.
#[inline(always)]
fn longest_match(gateway_id: u32, addr: [u8; 4]) -> Option<u32> {
    // SAFETY: the value is a u32 read at once; the agent replaces entries whole.
    if let Some(id) = unsafe { ROUTES24.get(RouteKey::slash24(gateway_id, addr)) } {
        return Some(*id);
    }
    let key = Key::new(RouteKey::lpm_len(32), RouteKey::new(gateway_id, addr));
    ROUTES.get(&key).copied()
}

/// [`lookup`] in the gateway's IPv6 table.
#[inline(always)]
pub fn lookup6(gateway_id: u32, dst: [u8; 16], hash: u32) -> Result<Resolved, Drop> {
    let key = Key::new(RouteKey::lpm_len(128), RouteKey6::new(gateway_id, dst));
    resolve(*ROUTES6.get(&key).ok_or(Drop::NoRoute)?, hash)
}

/// Next hop `id`, a group resolved to one member by the flow hash.
#[inline(always)]
fn resolve(id: u32, hash: u32) -> Result<Resolved, Drop> {
    let mut nh = NEXT_HOPS.get(id).ok_or(Drop::BadNextHop)?;
    if nh.kind == next_hop_kind::GROUP {
        let count = nh.member_count;
        if count == 0 || usize::from(count) > nh.members.len() {
            return Err(Drop::BadNextHop);
        }
        let member = *nh
            .members
            .get(group_member(hash, count))
            .ok_or(Drop::BadNextHop)?;
        nh = NEXT_HOPS.get(member).ok_or(Drop::BadNextHop)?;
    }
    match nh.kind {
        next_hop_kind::ATTACHMENT | next_hop_kind::VIF => Ok(Resolved {
            kind: nh.kind,
            target: nh.target,
            mac: nh.mac,
        }),
        _ => Err(Drop::BadNextHop),
    }
}

/// Unicast RPF: is `src` routed (in `gateway_id`'s table) to VIF `vif`, directly or through
/// a group with a member on it?
#[inline(always)]
pub fn reaches_vif(gateway_id: u32, src: [u8; 4], vif: u32) -> bool {
    longest_match(gateway_id, src).is_some_and(|id| next_hop_reaches_vif(id, vif))
}

/// [`reaches_vif`] in the gateway's IPv6 table.
#[inline(always)]
pub fn reaches_vif6(gateway_id: u32, src: [u8; 16], vif: u32) -> bool {
    let key = Key::new(RouteKey::lpm_len(128), RouteKey6::new(gateway_id, src));
    ROUTES6
        .get(&key)
        .is_some_and(|id| next_hop_reaches_vif(*id, vif))
}

#[inline(always)]
fn next_hop_reaches_vif(id: u32, vif: u32) -> bool {
    let Some(nh) = NEXT_HOPS.get(id) else {
        return false;
    };
    match nh.kind {
        next_hop_kind::VIF => nh.target == vif,
        next_hop_kind::GROUP => {
            let count = usize::from(nh.member_count);
            let mut i = 0;
            while i < nh.members.len() {
                if i < count
                    && let Some(m) = NEXT_HOPS.get(nh.members[i])
                    && m.kind == next_hop_kind::VIF
                    && m.target == vif
                {
                    return true;
                }
                i += 1;
            }
            false
        }
        _ => false,
    }
}
