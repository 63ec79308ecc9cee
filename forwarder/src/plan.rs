//! What the data plane should hold, computed from the model, what was observed of the host
//! (links, client router MACs), the BGP sessions that are up and the route tables. Pure: no
//! maps, no I/O, no clock; `apply` turns the result into map writes.
//!
//! [`Desired::update`] recomputes only what a change touches (a VIF, a set of prefixes) and
//! says what moved; a full plan is the same update with everything dirty, so the incremental
//! path and the full one cannot disagree (a unit test holds them to it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use forwarder_common::vif_state;
use ipnet::IpNet;

use crate::{
    FastMap, FastSet,
    config::Routing,
    ids::{AttachmentId, GatewayId, NextHopKey, PathSet, VifId},
    model::Model,
    rib::{Candidate, Rib, Source, Target},
};

mod multipath;
pub use multipath::Multipaths;

/// A session: (VIF, index of its `[[vif.peer]]`).
pub type SessionKey = (VifId, u8);

pub use crate::rib::VifPaths;

/// A link of the agent's namespace as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    /// The link's MTU (0: unknown).
    pub mtu: u32,
}

/// What the agent has observed of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links of the agent's namespace by name (ports).
    pub links: BTreeMap<String, LinkState>,
    /// Resolved client router MACs per (VIF, peer index).
    pub clients: BTreeMap<SessionKey, [u8; 6]>,
}

impl Observed {
    pub fn port_up(&self, name: &str) -> bool {
        self.links.get(name).is_some_and(|l| l.up)
    }
}

/// The plan's inputs.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub observed: &'a Observed,
    /// BGP sessions whose client routers carry traffic: Established, or held by graceful
    /// restart while they are away.
    pub sessions_up: &'a BTreeSet<SessionKey>,
    pub rib: &'a Rib,
}

/// VIF states the plan decides (`deleting` is the agent's, while it removes a VIF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VifState {
    Configuring,
    Available,
    Unavailable,
}

impl VifState {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Configuring => "configuring",
            Self::Available => "available",
            Self::Unavailable => "unavailable",
        }
    }

    /// The value of [`forwarder_common::Vif::state`].
    pub const fn value(self) -> u32 {
        match self {
            Self::Configuring => vif_state::CONFIGURING,
            Self::Available => vif_state::AVAILABLE,
            Self::Unavailable => vif_state::UNAVAILABLE,
        }
    }

    /// The state a VIF table entry holds, if it is one the plan decides.
    pub const fn from_value(value: u32) -> Option<Self> {
        match value {
            vif_state::CONFIGURING => Some(Self::Configuring),
            vif_state::AVAILABLE => Some(Self::Available),
            vif_state::UNAVAILABLE => Some(Self::Unavailable),
            _ => None,
        }
    }
}

/// A next hop as routes see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    Attachment(AttachmentId),
    /// A VIF and the client router MAC frames toward it carry.
    Vif {
        vif: VifId,
        mac: [u8; 6],
    },
    /// Member next hops (each an attachment or VIF next hop), chosen by flow hash.
    Group(Vec<NextHopKey>),
}

/// What the data plane should hold.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub vifs: BTreeMap<VifId, VifState>,
    pub next_hops: BTreeMap<NextHopKey, NextHop>,
    /// The selected route of every prefix, per gateway.
    pub routes: BTreeMap<GatewayId, FastMap<IpNet, Selected>>,
    /// The multipath sets selected routes use.
    pub multipath: Multipaths,
}

/// Two plans are equal when they hold the same things: multipath sets compare by what they
/// are, not by their numbers.
impl PartialEq for Desired {
    fn eq(&self, other: &Self) -> bool {
        self.vifs == other.vifs
            && self.next_hops == other.next_hops
            && self.multipath.in_use() == other.multipath.in_use()
            && self.resolved_routes() == other.resolved_routes()
    }
}

impl Eq for Desired {}

/// What changed since the last plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything (start, reload).
    pub all: bool,
    pub vifs: BTreeSet<VifId>,
    /// Hashed, not ordered: a BGP table's worth arrives one prefix at a time, and the plan
    /// sorts them once.
    pub prefixes: FastSet<(GatewayId, IpNet)>,
}

impl Dirty {
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.vifs.is_empty() && self.prefixes.is_empty()
    }
}

/// One prefix whose selected route changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteChange {
    pub gateway: GatewayId,
    pub prefix: IpNet,
    pub old: Option<Selected>,
    pub new: Option<Selected>,
}

/// A selected route as the plan keeps it: what the maps and the exports need. A BGP
/// route's rank stays with its candidate in the rib, where explanations read it; kept here
/// too it would add 16 bytes to each of a million entries (32 MiB at 1M routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Selected {
    pub source: Source,
    pub target: Target,
    /// Not advertised to the gateway's other VIFs (NO_EXPORT / NO_ADVERTISE).
    pub no_export: bool,
}

impl From<Candidate> for Selected {
    fn from(c: Candidate) -> Self {
        Self {
            source: c.source,
            target: c.target,
            no_export: c.no_export,
        }
    }
}

/// What an update moved: the work `apply` has to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything was planned again: apply compares all of it with the maps.
    pub full: bool,
    pub vifs: Vec<(VifId, VifState)>,
    /// Next hops added, changed or removed.
    pub next_hops: BTreeSet<NextHopKey>,
    pub routes: Vec<RouteChange>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.full && self.vifs.is_empty() && self.next_hops.is_empty() && self.routes.is_empty()
    }
}

/// A VIF's state: `available` when its port is up and at least one client router can take
/// traffic; before it ever was, `configuring`; after, `unavailable`.
pub fn vif_state(inputs: &Inputs<'_>, vif: VifId, previous: VifState) -> VifState {
    let Some(v) = inputs.model.vifs.get(&vif) else {
        return VifState::Unavailable;
    };
    if inputs.observed.port_up(&v.port) && !eligible_peers(inputs, vif).is_empty() {
        VifState::Available
    } else if previous == VifState::Configuring {
        VifState::Configuring
    } else {
        VifState::Unavailable
    }
}

/// The client routers of a VIF that can take traffic: MAC resolved and, for BGP, session up.
pub fn eligible_peers(inputs: &Inputs<'_>, vif: VifId) -> Vec<(u8, [u8; 6])> {
    let Some(v) = inputs.model.vifs.get(&vif) else {
        return Vec::new();
    };
    let bgp = v.routing == Routing::Bgp;
    (0..v.peers.len() as u8)
        .filter_map(|i| Some((i, *inputs.observed.clients.get(&(vif, i))?)))
        .filter(|(i, _)| !bgp || inputs.sessions_up.contains(&(vif, *i)))
        .collect()
}

/// A VIF's next hops in `state`: one per eligible client router, a group of all of them
/// (routes toward the VIF), and for BGP one group per set of sessions a route can be held by
/// (every mask, not only those routes use now: when a session is lost, the group of the
/// routes it shared loses it in one write, before those routes move).
pub fn vif_next_hops(
    inputs: &Inputs<'_>,
    vif: VifId,
    state: VifState,
) -> BTreeMap<NextHopKey, NextHop> {
    let mut out = BTreeMap::new();
    let Some(v) = inputs.model.vifs.get(&vif) else {
        return out;
    };
    if state != VifState::Available {
        return out;
    }
    let eligible = eligible_peers(inputs, vif);
    if eligible.is_empty() {
        return out;
    }
    for (peer, mac) in &eligible {
        out.insert(
            NextHopKey::VifPeer { vif, peer: *peer },
            NextHop::Vif { vif, mac: *mac },
        );
    }
    // Static routes toward the VIF: its client routers of the route's family.
    for (key, v6) in [
        (NextHopKey::Vif { vif }, false),
        (NextHopKey::Vif6 { vif }, true),
    ] {
        let members: Vec<NextHopKey> = eligible
            .iter()
            .filter(|(peer, _)| {
                v.peers
                    .get(usize::from(*peer))
                    .is_some_and(|p| p.is_ipv6() == v6)
            })
            .map(|(peer, _)| NextHopKey::VifPeer { vif, peer: *peer })
            .collect();
        if !members.is_empty() {
            out.insert(key, NextHop::Group(members));
        }
    }
    if v.routing == Routing::Bgp {
        for mask in 1..(1u16 << v.peers.len()) {
            let mask = mask as u8;
            let members: Vec<NextHopKey> = eligible
                .iter()
                .filter(|(peer, _)| mask & (1 << peer) != 0)
                .map(|(peer, _)| NextHopKey::VifPeer { vif, peer: *peer })
                .collect();
            if !members.is_empty() {
                out.insert(NextHopKey::VifPeers { vif, mask }, NextHop::Group(members));
            }
        }
    }
    out
}

/// Every candidate route the model and the BGP routes make.
pub fn build_rib(
    model: &Model,
    bgp: impl IntoIterator<Item = (GatewayId, VifId, IpNet, VifPaths)>,
) -> Rib {
    let propagated = model.attachments.iter().flat_map(|(id, att)| {
        att.propagate.iter().map(move |prefix| {
            (
                att.gateway,
                *prefix,
                Candidate::new(Source::Propagated, Target::Attachment(*id)),
            )
        })
    });
    let statics = model.statics.iter().map(|((gateway, prefix), s)| {
        (*gateway, *prefix, Candidate::new(Source::Static, s.target))
    });
    // A VIF moved to another gateway starts its sessions again, and its routes with them.
    let learned = bgp.into_iter().filter_map(|(gateway, vif, prefix, paths)| {
        let v = model.vifs.get(&vif)?;
        (v.gateway == gateway).then(|| (gateway, prefix, paths.candidate(vif)))
    });
    Rib::from_candidates(propagated.chain(statics).chain(learned))
}

fn vif_keys(next_hops: &BTreeMap<NextHopKey, NextHop>, vif: VifId) -> Vec<NextHopKey> {
    let peers = NextHopKey::VifPeer { vif, peer: 0 }..=NextHopKey::VifPeer { vif, peer: u8::MAX };
    let masks = NextHopKey::VifPeers { vif, mask: 0 }..=NextHopKey::VifPeers { vif, mask: u8::MAX };
    next_hops
        .range(peers)
        .chain(next_hops.range(masks))
        .map(|(k, _)| *k)
        .chain(
            [NextHopKey::Vif { vif }, NextHopKey::Vif6 { vif }]
                .iter()
                .filter_map(|k| next_hops.get_key_value(k))
                .map(|(k, _)| *k),
        )
        .collect()
}

impl Desired {
    /// The route of `prefix` the data plane should use: the most preferred candidate whose
    /// next hop exists (a target that cannot carry traffic lets a less preferred one win);
    /// with `multipath`, a BGP winner and the paths of other VIFs that rank equal to it and
    /// can carry traffic, as many as a group's members allow (the set, if there are two or
    /// more).
    pub fn select(
        &self,
        rib: &Rib,
        gateway: GatewayId,
        prefix: IpNet,
        multipath: bool,
    ) -> Option<(Candidate, Option<PathSet>)> {
        let usable = |c: &&Candidate| {
            c.target
                .next_hop()
                .is_some_and(|k| self.next_hops.contains_key(&k))
        };
        let candidates = rib.candidates(gateway, prefix);
        let mut usable_ones = candidates.iter().filter(usable);
        let best = *usable_ones.next()?;
        let Target::VifPeers(vif, mask) = best.target else {
            return Some((best, None));
        };
        if !multipath || best.source != Source::Bgp {
            return Some((best, None));
        }
        let mut paths = vec![(vif, mask)];
        let mut members = self.group_len(NextHopKey::VifPeers { vif, mask });
        let mut no_export = best.no_export;
        for c in usable_ones.take_while(|c| c.source == Source::Bgp && c.rank == best.rank) {
            let Target::VifPeers(vif, mask) = c.target else {
                continue;
            };
            let more = self.group_len(NextHopKey::VifPeers { vif, mask });
            if members + more > forwarder_common::MAX_GROUP_MEMBERS {
                break;
            }
            members += more;
            paths.push((vif, mask));
            no_export |= c.no_export;
        }
        if paths.len() < 2 {
            return Some((best, None));
        }
        let set = PathSet::new(&paths)?;
        Some((Candidate { no_export, ..best }, Some(set)))
    }

    fn group_len(&self, key: NextHopKey) -> usize {
        match self.next_hops.get(&key) {
            Some(NextHop::Group(m)) => m.len(),
            Some(_) => 1,
            None => 0,
        }
    }

    /// The group of a multipath set: the client routers of each of its paths that can carry
    /// traffic, at most a group's worth.
    fn multipath_group(&self, set: &PathSet) -> Vec<NextHopKey> {
        set.as_slice()
            .iter()
            .filter_map(|(vif, mask)| {
                match self.next_hops.get(&NextHopKey::VifPeers {
                    vif: *vif,
                    mask: *mask,
                }) {
                    Some(NextHop::Group(m)) => Some(m.clone()),
                    _ => None,
                }
            })
            .flatten()
            .take(forwarder_common::MAX_GROUP_MEMBERS)
            .collect()
    }

    /// The next-hop object a selected route's target points to.
    pub fn next_hop_key(&self, target: Target) -> Option<NextHopKey> {
        match target {
            Target::Multipath(id) => Some(NextHopKey::Multipath {
                paths: *self.multipath.get(id)?,
            }),
            t => t.next_hop(),
        }
    }

    /// The multipath set of a selected route, if it has one.
    pub fn paths_of(&self, c: &Selected) -> Option<PathSet> {
        match c.target {
            Target::Multipath(id) => self.multipath.get(id).copied(),
            _ => None,
        }
    }

    /// Every selected route with its multipath set resolved (the candidate's set number
    /// zeroed), for comparing plans.
    fn resolved_routes(&self) -> BTreeMap<(GatewayId, IpNet), (Selected, Option<PathSet>)> {
        self.routes
            .iter()
            .flat_map(|(g, t)| t.iter().map(move |(p, c)| ((*g, *p), c)))
            .map(|(k, c)| {
                let set = self.paths_of(c);
                let c = match c.target {
                    Target::Multipath(_) => Selected {
                        target: Target::Multipath(crate::rib::MultipathId(0)),
                        ..*c
                    },
                    _ => *c,
                };
                (k, (c, set))
            })
            .collect()
    }

    /// Whether the selected route `c` goes to `vif` (alone or as one of a multipath set).
    fn toward_vif(&self, c: &Selected, vif: VifId) -> bool {
        c.target.vif() == Some(vif) || self.paths_of(c).is_some_and(|s| s.contains_vif(vif))
    }

    pub fn route(&self, gateway: GatewayId, prefix: IpNet) -> Option<Selected> {
        self.routes.get(&gateway)?.get(&prefix).copied()
    }

    /// Brings the plan up to date with `inputs` for what `dirty` names, and returns what moved.
    pub fn update(&mut self, inputs: &Inputs<'_>, dirty: &Dirty) -> Changes {
        let mut changes = Changes {
            full: dirty.all,
            ..Changes::default()
        };
        self.multipath.sweep();
        let model = inputs.model;
        // Sorted and deduplicated once, before selection: at a million prefixes a vector
        // costs a fraction of a B-tree set's inserts.
        let mut prefixes: Vec<(GatewayId, IpNet)> = dirty.prefixes.iter().copied().collect();

        // Attachments: one next hop each, whatever happens.
        if dirty.all {
            let wanted: BTreeMap<NextHopKey, NextHop> = model
                .attachments
                .keys()
                .map(|a| {
                    (
                        NextHopKey::Attachment { attachment: *a },
                        NextHop::Attachment(*a),
                    )
                })
                .collect();
            let stale: Vec<NextHopKey> = self
                .next_hops
                .keys()
                .filter(|k| matches!(k, NextHopKey::Attachment { .. } | NextHopKey::Pinned { .. }))
                .filter(|k| !wanted.contains_key(k))
                .copied()
                .collect();
            for key in stale {
                self.next_hops.remove(&key);
                changes.next_hops.insert(key);
            }
            for (key, nh) in wanted {
                if self.next_hops.get(&key) != Some(&nh) {
                    self.next_hops.insert(key, nh);
                    changes.next_hops.insert(key);
                }
            }
        }

        // VIFs: state and next hops; a VIF whose set of next hops changed re-selects the
        // prefixes that have a candidate toward it.
        let vifs: BTreeSet<VifId> = if dirty.all {
            model
                .vifs
                .keys()
                .chain(self.vifs.keys())
                .copied()
                .chain(self.next_hops.keys().filter_map(NextHopKey::vif))
                .collect()
        } else {
            dirty.vifs.clone()
        };
        for vif in vifs {
            let exists = model.vifs.contains_key(&vif);
            let previous = self.vifs.get(&vif).copied();
            let state =
                exists.then(|| vif_state(inputs, vif, previous.unwrap_or(VifState::Configuring)));
            match state {
                Some(s) => {
                    if previous != Some(s) {
                        changes.vifs.push((vif, s));
                    }
                    self.vifs.insert(vif, s);
                }
                None => {
                    self.vifs.remove(&vif);
                }
            }
            let wanted = state.map_or_else(BTreeMap::new, |s| vif_next_hops(inputs, vif, s));
            let present = vif_keys(&self.next_hops, vif);
            let mut keys_moved = false;
            for key in present.iter().filter(|k| !wanted.contains_key(k)) {
                self.next_hops.remove(key);
                changes.next_hops.insert(*key);
                keys_moved = true;
            }
            for (key, nh) in wanted {
                match self.next_hops.get(&key) {
                    Some(old) if *old == nh => {}
                    old => {
                        keys_moved |= old.is_none();
                        self.next_hops.insert(key, nh);
                        changes.next_hops.insert(key);
                    }
                }
            }
            // The multipath groups the VIF is in follow its client routers in one write
            // each, before any route moves.
            for (_, set) in self.multipath.with_vif(vif) {
                let members = self.multipath_group(&set);
                let key = NextHopKey::Multipath { paths: set };
                let group = NextHop::Group(members);
                if group != NextHop::Group(Vec::new()) && self.next_hops.get(&key) != Some(&group) {
                    self.next_hops.insert(key, group);
                    changes.next_hops.insert(key);
                }
            }
            if keys_moved && !dirty.all {
                match model.vifs.get(&vif) {
                    Some(v) => prefixes.extend(inputs.rib.toward(vif).map(|p| (v.gateway, p))),
                    // A VIF gone from the model: the rib no longer lists prefixes toward it,
                    // but routes selected toward it must go (rare: a whole-table scan).
                    None => {
                        let toward: Vec<(GatewayId, IpNet)> = self
                            .routes
                            .iter()
                            .flat_map(|(g, t)| t.iter().map(move |(p, c)| (*g, *p, c)))
                            .filter(|(_, _, c)| self.toward_vif(c, vif))
                            .map(|(g, p, _)| (g, p))
                            .collect();
                        prefixes.extend(toward);
                    }
                }
            }
        }

        // Routes.
        if dirty.all {
            prefixes.extend(inputs.rib.prefixes());
            prefixes.extend(
                self.routes
                    .iter()
                    .flat_map(|(g, t)| t.keys().map(move |p| (*g, *p))),
            );
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        for (gateway, prefix) in prefixes {
            let new = match model.gateways.get(&gateway) {
                Some(g) => self
                    .select(inputs.rib, gateway, prefix, g.multipath)
                    .map(|(c, set)| match set {
                        Some(set) => Selected {
                            target: Target::Multipath(self.multipath.id_for(set)),
                            ..c.into()
                        },
                        None => c.into(),
                    }),
                None => None,
            };
            let old = self.route(gateway, prefix);
            if old == new {
                continue;
            }
            if let Some(Target::Multipath(id)) = new.map(|c| c.target)
                && self.multipath.take(id)
                && let Some(set) = self.multipath.get(id).copied()
            {
                let key = NextHopKey::Multipath { paths: set };
                self.next_hops
                    .insert(key, NextHop::Group(self.multipath_group(&set)));
                changes.next_hops.insert(key);
            }
            if let Some(Target::Multipath(id)) = old.map(|c| c.target)
                && self.multipath.give_back(id)
                && let Some(set) = self.multipath.get(id).copied()
            {
                let key = NextHopKey::Multipath { paths: set };
                self.next_hops.remove(&key);
                changes.next_hops.insert(key);
            }
            match new {
                Some(c) => {
                    self.routes.entry(gateway).or_default().insert(prefix, c);
                }
                None => {
                    if let Some(t) = self.routes.get_mut(&gateway) {
                        t.remove(&prefix);
                        if t.is_empty() {
                            self.routes.remove(&gateway);
                        }
                    }
                }
            }
            changes.routes.push(RouteChange {
                gateway,
                prefix,
                old,
                new,
            });
        }
        changes
    }

    /// What a session of `vif` should advertise: every route selected in its gateway except
    /// those toward the VIF itself and BGP routes their customer marked NO_EXPORT or
    /// NO_ADVERTISE.
    pub fn exports(&self, model: &Model, vif: VifId) -> BTreeSet<IpNet> {
        let Some(v) = model.vifs.get(&vif) else {
            return BTreeSet::new();
        };
        let between = model
            .gateways
            .get(&v.gateway)
            .is_none_or(|g| g.advertise_between_vifs);
        self.routes
            .get(&v.gateway)
            .into_iter()
            .flatten()
            .filter(|(_, c)| self.exported(c, vif, between))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether a session of `vif` advertises the selected route `c`: not toward the VIF
    /// itself (alone or in a multipath set), not marked NO_EXPORT, and toward other VIFs
    /// only when the gateway advertises between its VIFs.
    fn exported(&self, c: &Selected, vif: VifId, between_vifs: bool) -> bool {
        match c.target {
            Target::Attachment(_) => true,
            _ => !self.toward_vif(c, vif) && between_vifs && !c.no_export,
        }
    }

    /// What each established session must announce and withdraw after `changes` (the last
    /// update's): work in proportion to the changed routes times the sessions of their
    /// gateway.
    pub fn export_changes(
        &self,
        changes: &Changes,
        model: &Model,
        sessions_up: &BTreeSet<SessionKey>,
    ) -> BTreeMap<SessionKey, (Vec<IpNet>, Vec<IpNet>)> {
        let mut out: BTreeMap<SessionKey, (Vec<IpNet>, Vec<IpNet>)> = BTreeMap::new();
        if changes.routes.is_empty() || sessions_up.is_empty() {
            return out;
        }
        let mut by_gateway: HashMap<GatewayId, Vec<SessionKey>> = HashMap::new();
        for session in sessions_up {
            if let Some(v) = model.vifs.get(&session.0) {
                by_gateway.entry(v.gateway).or_default().push(*session);
            }
        }
        for change in &changes.routes {
            for session in by_gateway.get(&change.gateway).into_iter().flatten() {
                let between = model
                    .gateways
                    .get(&change.gateway)
                    .is_none_or(|g| g.advertise_between_vifs);
                let exported =
                    |c: Option<Selected>| c.is_some_and(|c| self.exported(&c, session.0, between));
                let (was, now) = (exported(change.old), exported(change.new));
                if was == now {
                    continue;
                }
                let entry = out.entry(*session).or_default();
                if now {
                    entry.0.push(change.prefix);
                } else {
                    entry.1.push(change.prefix);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
