//! The underlay next hop of each VPC attachment, resolved in userspace from the kernel's
//! routing table, links and neighbours (`ip route get fibmatch`, `ip route get`, the egress
//! link's MAC and MTU, the next hop's neighbour entry) and kept in the `UNDERLAY` map, so
//! that encapsulation costs no `bpf_fib_lookup` per packet. Resolved again on the kernel's
//! route, link and neighbour events; an underlay route with several next hops (ECMP) or a
//! next hop without a usable MAC leaves the entry invalid, and XDP asks the FIB per packet.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use forwarder_common::UnderlayHop;

use crate::{
    ids::AttachmentId,
    netlink::{Error, Link, Netlink},
};

/// What the kernel says about the way to one remote VTEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The entry XDP uses (`valid` 0: ask the FIB per packet).
    pub hop: UnderlayHop,
    /// The neighbour whose MAC the entry holds, or would hold: (ifindex, address). Its
    /// events resolve the attachment again.
    pub via: Option<(u32, Ipv4Addr)>,
    /// Why the entry is not valid.
    pub why_not: Option<&'static str>,
}

impl Resolved {
    /// Not resolved (the kernel could not be asked): XDP asks the FIB.
    pub fn unresolved() -> Self {
        Self::fib("the kernel's routes could not be read", None)
    }

    fn fib(why: &'static str, via: Option<(u32, Ipv4Addr)>) -> Self {
        Self {
            hop: UnderlayHop::default(),
            via,
            why_not: Some(why),
        }
    }
}

/// Resolves the way from `local` to `remote` in the calling thread's namespace, for frames
/// that can only leave through `underlay` (the underlay port; `links`: the namespace's).
pub fn resolve(
    nl: &mut Netlink,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    underlay: u32,
    links: &[Link],
) -> Result<Resolved, Error> {
    let entry = nl.route_fib_match(remote, local)?;
    if entry.multipath {
        return Ok(Resolved::fib(
            "the underlay route has several next hops (ECMP)",
            None,
        ));
    }
    if entry.nexthop_object {
        return Ok(Resolved::fib(
            "the underlay route uses a nexthop object",
            None,
        ));
    }
    if entry.mtu.is_some() {
        // The kernel applies a route's MTU by rules (locked, ip_forward_use_pmtu) that the
        // FIB lookup knows best.
        return Ok(Resolved::fib("the underlay route sets an MTU", None));
    }
    let route = nl.route_get(remote, Some(local))?;
    let via = (route.oif, route.gateway.unwrap_or(remote));
    if route.oif != underlay {
        return Ok(Resolved::fib(
            "the route leaves through another port than the underlay",
            Some(via),
        ));
    }
    let Some(link) = links.iter().find(|l| l.index == route.oif) else {
        return Ok(Resolved::fib("the egress link is gone", Some(via)));
    };
    let Some(smac) = link.mac else {
        return Ok(Resolved::fib(
            "the egress link has no MAC address",
            Some(via),
        ));
    };
    let mtu = link.mtu;
    if mtu == 0 {
        return Ok(Resolved::fib("the egress link's MTU is unknown", Some(via)));
    }
    let dmac = nl
        .neighbours(route.oif)?
        .into_iter()
        .find(|n| n.addr == std::net::IpAddr::V4(via.1))
        .and_then(|n| n.mac);
    let Some(dmac) = dmac else {
        return Ok(Resolved::fib("the next hop's MAC is not known", Some(via)));
    };
    Ok(Resolved {
        hop: UnderlayHop {
            valid: 1,
            ifindex: route.oif,
            mtu,
            smac,
            dmac,
        },
        via: Some(via),
        why_not: None,
    })
}

/// Every attachment's resolved way, and which must be resolved again.
#[derive(Debug, Default)]
pub struct Underlay {
    pub resolved: BTreeMap<AttachmentId, Resolved>,
    dirty: BTreeSet<AttachmentId>,
    all: bool,
}

impl Underlay {
    /// Every attachment again (a route or link changed: any way may have moved).
    pub fn all_dirty(&mut self) {
        self.all = true;
    }

    pub fn dirty(&mut self, id: AttachmentId) {
        self.dirty.insert(id);
    }

    /// A neighbour entry changed (`mac`: its usable MAC, if any): the attachments whose way
    /// goes through it and whose entry it changes.
    pub fn neighbour_changed(&mut self, ifindex: u32, addr: Ipv4Addr, mac: Option<[u8; 6]>) {
        let hit: Vec<AttachmentId> = self
            .resolved
            .iter()
            .filter(|(_, r)| r.via == Some((ifindex, addr)))
            .filter(|(_, r)| mac.is_none() || r.hop.valid == 0 || mac != Some(r.hop.dmac))
            .map(|(id, _)| *id)
            .collect();
        self.dirty.extend(hit);
    }

    /// What to resolve now, given the attachments that exist (forgetting the others).
    pub fn take_dirty(&mut self, existing: &BTreeSet<AttachmentId>) -> BTreeSet<AttachmentId> {
        self.resolved.retain(|id, _| existing.contains(id));
        let out = if std::mem::take(&mut self.all) {
            existing.clone()
        } else {
            std::mem::take(&mut self.dirty)
                .intersection(existing)
                .copied()
                .collect()
        };
        self.dirty.clear();
        out
    }
}
