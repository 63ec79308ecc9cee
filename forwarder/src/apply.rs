//! The only writer of the maps. It knows what the maps hold (read once from the pinned maps
//! at start, then kept in step with every write) and writes only the difference between that
//! and what the plan wants, in an order that never lets traffic see a half-made state:
//! VIF states, then next hops (members before the groups that list them), then route
//! removals, then route writes (propagated and static before BGP), then next hops nothing
//! points to any more. A full route map leaves the routes that do not fit pending (retried
//! when space frees up), and a propagated or static route takes the place of a BGP one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use aya::programs::XdpMode;
use forwarder_common::{
    Attachment, MAP_NEXT_HOPS, MAP_ROUTES, MAP_ROUTES24, Vif, VifAddrs6, VifKey, VifPolicy, VtepKey,
};
use ipnet::IpNet;

use crate::{
    FastMap, FastSet,
    dataplane::{self, AttachmentSpec, Dataplane, NextHopSpec, PortRole, ROUTE_BATCH, VifSpec},
    ids::{GatewayId, NextHopKey, Pool},
    plan::{Changes, Desired, NextHop, Selected},
    rib::Source,
    routes24,
};

pub use dataplane::Error;

/// A port with XDP attached by this agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub role: PortRole,
    pub ifindex: u32,
}

/// What one pass wrote and what it could not.
#[derive(Debug, Default)]
pub struct Report {
    pub written: usize,
    pub removed: usize,
    /// Next-hop ids were given out or released: the state file must be saved.
    pub ids_changed: bool,
    /// Failures other than a full route map (the first few), retried later.
    pub errors: Vec<String>,
}

impl Report {
    fn error(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < 8 {
            self.errors.push(e.to_string());
        }
    }
}

/// A gateway's routes as the map holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayRoutes {
    pub installed: usize,
    /// Selected but not in the map.
    pub pending: usize,
    /// Some of those wait for room in a full route map.
    pub waiting_for_room: bool,
}

/// Why a selected route is not in the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// The route map is full.
    Full,
    /// A write failed (the message says why); retried.
    Failed(String),
}

/// Hash-map keys that point to slots, with the way back: which keys point to a slot.
#[derive(Debug)]
struct Keys<K> {
    to_slot: HashMap<K, u32>,
    of_slot: HashMap<u32, HashSet<K>>,
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Self {
            to_slot: HashMap::new(),
            of_slot: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> Keys<K> {
    fn load(entries: Vec<(K, u32)>) -> Self {
        let mut keys = Self::default();
        for (k, slot) in entries {
            keys.insert(k, slot);
        }
        keys
    }

    fn get(&self, key: &K) -> Option<u32> {
        self.to_slot.get(key).copied()
    }

    fn insert(&mut self, key: K, slot: u32) {
        if let Some(old) = self.to_slot.insert(key, slot) {
            self.unlink(key, old);
        }
        self.of_slot.entry(slot).or_default().insert(key);
    }

    fn remove(&mut self, key: K) {
        if let Some(slot) = self.to_slot.remove(&key) {
            self.unlink(key, slot);
        }
    }

    fn unlink(&mut self, key: K, slot: u32) {
        if let Some(set) = self.of_slot.get_mut(&slot) {
            set.remove(&key);
            if set.is_empty() {
                self.of_slot.remove(&slot);
            }
        }
    }

    /// The keys pointing to `slot` other than `except`.
    fn others(&self, slot: u32, except: Option<K>) -> Vec<K> {
        self.of_slot
            .get(&slot)
            .into_iter()
            .flatten()
            .filter(|k| Some(**k) != except)
            .copied()
            .collect()
    }

    fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.of_slot.keys().copied()
    }
}

#[derive(Debug, Default)]
struct Programmed {
    routes: FastMap<(GatewayId, IpNet), (u32, Source)>,
    /// Of `routes`, the IPv6 ones (their own map).
    routes6: usize,
    per_gateway: HashMap<GatewayId, usize>,
    /// Installed BGP routes: the ones to give up when a static route needs room.
    bgp: BTreeSet<(GatewayId, IpNet)>,
    next_hops: HashMap<u32, NextHopSpec>,
    /// Routes pointing to each next hop.
    route_refs: FastMap<u32, u32>,
    /// Groups listing each next hop.
    member_refs: FastMap<u32, u32>,
    vifs: BTreeMap<u32, Vif>,
    /// Non-default policy slots.
    policies: BTreeMap<u32, VifPolicy>,
    /// Non-empty IPv6 address slots.
    addrs6: BTreeMap<u32, VifAddrs6>,
    vif_keys: Keys<VifKey>,
    /// Control ports (ifindex) of each VIF.
    control_ports: Keys<u32>,
    attachments: BTreeMap<u32, Attachment>,
    vtep_keys: Keys<VtepKey>,
    ports: BTreeMap<String, Port>,
    /// IPv4 routes longer than /24 in each /24 (a /24 they split has no shortcut).
    split24: FastMap<(GatewayId, u32), u32>,
}

impl Programmed {
    /// Keeps the set of installed BGP routes (those to give up for room) in step with a
    /// route's source.
    fn note_bgp(&mut self, gateway: GatewayId, prefix: IpNet, source: Source) {
        if source == Source::Bgp {
            self.bgp.insert((gateway, prefix));
        } else if !self.bgp.is_empty() {
            self.bgp.remove(&(gateway, prefix));
        }
    }

    /// Counts a route in or out of the /24 it splits, if it is longer than /24.
    fn note_split(&mut self, gateway: GatewayId, prefix: IpNet, added: bool) {
        let IpNet::V4(p) = prefix else { return };
        if !routes24::splits(p) {
            return;
        }
        for net in routes24::touched(p) {
            let key = (gateway, net);
            if added {
                *self.split24.entry(key).or_default() += 1;
            } else if let Some(n) = self.split24.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.split24.remove(&key);
                }
            }
        }
    }

    /// The /24 shortcut `net` of `gateway` must have, from the routes in the trie.
    fn entry24(&self, gateway: GatewayId, net: u32) -> Option<u32> {
        let split = self.split24.contains_key(&(gateway, net));
        routes24::entry(net, split, |p| {
            self.routes.get(&(gateway, IpNet::V4(p))).map(|(nh, _)| *nh)
        })
    }
}

fn bump(refs: &mut FastMap<u32, u32>, id: u32, up: bool) {
    if up {
        *refs.entry(id).or_default() += 1;
    } else if let Some(n) = refs.get_mut(&id) {
        *n -= 1;
        if *n == 0 {
            refs.remove(&id);
        }
    }
}

pub struct Apply {
    dp: Dataplane,
    mode: XdpMode,
    programmed: Programmed,
    /// Selected routes not in the map, most preferred source first.
    pending: BTreeMap<(Source, GatewayId, IpNet), Pending>,
    /// Next hops no longer wanted but still referred to; cleared once nothing does.
    deferred: BTreeSet<NextHopKey>,
    /// Next hops whose write failed, and routes whose removal failed: written again.
    failed_next_hops: BTreeSet<NextHopKey>,
    failed_routes: BTreeSet<(GatewayId, IpNet)>,
    /// /24s whose routes changed since the last write of shortcuts (repeats allowed: a
    /// push costs less than a set insert, and a full table pushes a million).
    dirty24: Vec<(GatewayId, u32)>,
    /// /24s that have a shortcut in the map.
    have24: FastSet<(GatewayId, u32)>,
    /// /24s that have none and may get one (repeats allowed): written when the agent is
    /// idle ([`Self::write_new_routes24`]); until then the trie answers for them.
    new24: Vec<(GatewayId, u32)>,
    route_capacity: u32,
    routes24_capacity: u32,
    next_hop_capacity: u32,
}

impl Apply {
    /// Takes the data plane and reads what its (possibly re-adopted) maps hold.
    pub fn new(mut dp: Dataplane, mode: XdpMode) -> Result<Self, Error> {
        let mut p = Programmed::default();
        for (gw, prefix, nh) in dp.routes()? {
            // The source is not in the map; BGP is the safe guess (never kept over a
            // static route) until the first full pass rewrites it.
            let gateway = GatewayId(gw);
            p.routes.insert((gateway, prefix), (nh, Source::Bgp));
            p.bgp.insert((gateway, prefix));
            *p.per_gateway.entry(gateway).or_default() += 1;
            p.routes6 += usize::from(prefix.addr().is_ipv6());
            bump(&mut p.route_refs, nh, true);
            p.note_split(gateway, prefix, true);
        }
        // The /24 shortcuts a killed agent (or another version) left out of step with the
        // trie are removed before the programs see this map again (a removal never changes
        // an answer, and a wrong one may name a next hop given back since); the trie's
        // answers get shortcuts again when the agent is idle. The others are left alone.
        let mut dirty24 = Vec::new();
        let mut have24: FastSet<(GatewayId, u32)> = FastSet::default();
        let mut wrong = Vec::new();
        for (gw, net, nh) in dp.routes24()? {
            let key = (GatewayId(gw), net);
            if p.entry24(key.0, net) == Some(nh) {
                have24.insert(key);
            } else {
                wrong.push(key);
            }
        }
        if !wrong.is_empty() {
            tracing::info!(
                count = wrong.len(),
                "removing /24 shortcuts out of step with the routes"
            );
            let removals: Vec<(u32, u32)> = wrong.iter().map(|(g, n)| (g.0, *n)).collect();
            if let Err(e) = dp.write_routes24(&[], &removals) {
                // Rewritten at the first pass instead.
                tracing::error!(error = %e, "removing /24 shortcuts; the first pass rewrites them");
                have24.extend(wrong.iter().copied());
                dirty24.extend(wrong);
            }
        }
        for (gateway, prefix) in p.routes.keys() {
            if let IpNet::V4(v4) = prefix {
                // Those in `have24` are right already (or dirty, above).
                for net in routes24::touched(*v4) {
                    let key = (*gateway, net);
                    if !have24.contains(&key) && p.entry24(*gateway, net).is_some() {
                        dirty24.push(key);
                    }
                }
            }
        }
        for (id, entry) in dp.next_hops()? {
            if let Some(spec) = NextHopSpec::from_entry(&entry) {
                if let NextHopSpec::Group(members) = &spec {
                    for m in members {
                        bump(&mut p.member_refs, *m, true);
                    }
                }
                p.next_hops.insert(id, spec);
            }
        }
        p.vifs = dp.vif_entries()?.into_iter().collect();
        p.policies = dp.vif_policies()?.into_iter().collect();
        p.addrs6 = dp.vif_addrs6_entries()?.into_iter().collect();
        p.vif_keys = Keys::load(dp.vif_keys()?);
        p.control_ports = Keys::load(dp.control_ports()?);
        p.attachments = dp.attachment_entries()?.into_iter().collect();
        p.vtep_keys = Keys::load(dp.vtep_keys()?);
        let route_capacity = dp.capacity(MAP_ROUTES)?;
        let routes24_capacity = dp.capacity(MAP_ROUTES24)?;
        let next_hop_capacity = dp
            .capacity(MAP_NEXT_HOPS)?
            .min(forwarder_common::MAX_NEXT_HOPS);
        Ok(Self {
            dp,
            mode,
            programmed: p,
            pending: BTreeMap::new(),
            deferred: BTreeSet::new(),
            failed_next_hops: BTreeSet::new(),
            failed_routes: BTreeSet::new(),
            dirty24,
            have24,
            new24: Vec::new(),
            route_capacity,
            routes24_capacity,
            next_hop_capacity,
        })
    }

    /// For reads (counters, lookups): the maps are written only here.
    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    pub fn route_capacity(&self) -> u32 {
        self.route_capacity
    }

    pub fn next_hop_capacity(&self) -> u32 {
        self.next_hop_capacity
    }

    /// IPv4 routes in the map.
    pub fn routes_installed(&self) -> usize {
        self.programmed.routes.len() - self.programmed.routes6
    }

    /// /24 shortcuts in their map (at most; a write that found no room may be counted) and
    /// the map's capacity.
    pub fn routes24(&self) -> (usize, u32) {
        (self.have24.len(), self.routes24_capacity)
    }

    /// IPv6 routes in their map (of [`forwarder_common::MAX_ROUTES6`]).
    pub fn routes6_installed(&self) -> usize {
        self.programmed.routes6
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Pending routes per gateway: (count, some wait for room). One pass over them.
    pub fn pending_by_gateway(&self) -> HashMap<GatewayId, (usize, bool)> {
        let mut out: HashMap<GatewayId, (usize, bool)> = HashMap::new();
        for ((_, g, _), why) in &self.pending {
            let entry = out.entry(*g).or_default();
            entry.0 += 1;
            entry.1 |= *why == Pending::Full;
        }
        out
    }

    /// A gateway's routes in the map and waiting for it, with `pending` from
    /// [`Self::pending_by_gateway`].
    pub fn gateway_routes_with(
        &self,
        gateway: GatewayId,
        pending: &HashMap<GatewayId, (usize, bool)>,
    ) -> GatewayRoutes {
        let (waiting, full) = pending.get(&gateway).copied().unwrap_or_default();
        GatewayRoutes {
            installed: self
                .programmed
                .per_gateway
                .get(&gateway)
                .copied()
                .unwrap_or(0),
            pending: waiting,
            waiting_for_room: full,
        }
    }

    /// A gateway's routes in the map and waiting for it.
    pub fn gateway_routes(&self, gateway: GatewayId) -> GatewayRoutes {
        self.gateway_routes_with(gateway, &self.pending_by_gateway())
    }

    /// The next-hop id a route of the map holds.
    /// Every route in the map with its next-hop id.
    pub fn programmed_routes(&self) -> impl Iterator<Item = (GatewayId, IpNet, u32)> + '_ {
        self.programmed
            .routes
            .iter()
            .map(|((g, p), (nh, _))| (*g, *p, *nh))
    }

    pub fn installed(&self, gateway: GatewayId, prefix: IpNet) -> Option<u32> {
        self.programmed
            .routes
            .get(&(gateway, prefix))
            .map(|(nh, _)| *nh)
    }

    pub fn pending(&self, gateway: GatewayId, prefix: IpNet) -> Option<&Pending> {
        [Source::Propagated, Source::Static, Source::Bgp]
            .iter()
            .find_map(|s| self.pending.get(&(*s, gateway, prefix)))
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.deferred.is_empty()
            || !self.failed_next_hops.is_empty()
            || !self.failed_routes.is_empty()
            || !self.dirty24.is_empty()
    }

    // ---- capture ---------------------------------------------------------------------

    /// Starts copying VIF `vif`'s frames (0: stops); the ring buffer to read them from is
    /// lent to the caller while a capture runs.
    /// The data plane answers a BFD session until the next agent takes it over.
    pub fn set_bfd_answer(
        &mut self,
        key: forwarder_common::BfdKey,
        answer: forwarder_common::BfdAnswer,
    ) -> Result<(), Error> {
        self.dp.set_bfd_answer(key, answer)
    }

    pub fn bfd_answers(
        &self,
    ) -> Result<Vec<(forwarder_common::BfdKey, forwarder_common::BfdAnswer)>, Error> {
        self.dp.bfd_answers()
    }

    pub fn remove_bfd_answer(&mut self, key: forwarder_common::BfdKey) -> Result<(), Error> {
        self.dp.remove_bfd_answer(key)
    }

    pub fn set_capture(&mut self, vif: u32) -> Result<(), Error> {
        if self.dp.capture()? != vif {
            self.dp.set_capture(vif)?;
        }
        Ok(())
    }

    pub fn take_capture_ring(
        &mut self,
    ) -> Result<Option<aya::maps::RingBuf<aya::maps::MapData>>, Error> {
        self.dp.take_capture_ring()
    }

    pub fn return_capture_ring(&mut self, ring: aya::maps::RingBuf<aya::maps::MapData>) {
        self.dp.return_capture_ring(ring);
    }

    // ---- ports -----------------------------------------------------------------------

    pub fn port(&self, name: &str) -> Option<Port> {
        self.programmed.ports.get(name).copied()
    }

    pub fn ports(&self) -> impl Iterator<Item = (&str, Port)> {
        self.programmed.ports.iter().map(|(n, p)| (n.as_str(), *p))
    }

    /// Prepares `name` and attaches the program for `role` (re-adopting its pinned link).
    pub fn attach(&mut self, name: &str, role: PortRole) -> Result<u32, Error> {
        if role != PortRole::Control {
            dataplane::prepare_port(name, role)?;
        }
        let ifindex = self.dp.attach(name, role, self.mode)?;
        self.programmed
            .ports
            .insert(name.to_owned(), Port { role, ifindex });
        Ok(ifindex)
    }

    /// Forgets a port whose interface is gone (the kernel detached it; the pin is stale).
    pub fn forget_port(&mut self, name: &str) -> Result<(), Error> {
        self.programmed.ports.remove(name);
        self.dp.detach(name)
    }

    pub fn detach(&mut self, name: &str) -> Result<(), Error> {
        self.programmed.ports.remove(name);
        self.dp.detach(name)
    }

    /// Ports with a pinned link (ours, by the pin directory), attached by this run or not.
    pub fn pinned_ports(&self) -> Vec<String> {
        self.dp.pinned_ports()
    }

    // ---- VIFs and attachments ---------------------------------------------------------

    /// Makes VIF `spec.id` what `spec` says: its slot, its one (port, VLAN) key, its control
    /// port. Writes only what differs.
    pub fn set_vif(&mut self, spec: &VifSpec) -> Result<(), Error> {
        let p = &mut self.programmed;
        let policy = spec.policy;
        if p.policies.get(&spec.id).copied().unwrap_or_default() != policy {
            // Before the slot: a VIF found is a VIF with its policy.
            self.dp.set_vif_policy(spec.id, policy)?;
            if policy == VifPolicy::default() {
                p.policies.remove(&spec.id);
            } else {
                p.policies.insert(spec.id, policy);
            }
        }
        if p.addrs6.get(&spec.id).copied().unwrap_or_default() != spec.addrs6 {
            // Before the slot too: a VIF found has its addresses.
            self.dp.set_vif_addrs6(spec.id, spec.addrs6)?;
            if spec.addrs6 == VifAddrs6::default() {
                p.addrs6.remove(&spec.id);
            } else {
                p.addrs6.insert(spec.id, spec.addrs6);
            }
        }
        let entry = spec.entry();
        if p.vifs.get(&spec.id) != Some(&entry) {
            // Slot first: a key never points to a stale slot.
            tracing::trace!(vif = spec.id, ?entry, "VIF slot written");
            self.dp.set_vif_slot(spec.id, entry)?;
            p.vifs.insert(spec.id, entry);
        }
        let key = spec.key();
        if p.vif_keys.get(&key) != Some(spec.id) {
            self.dp.set_vif_key(key, spec.id)?;
            p.vif_keys.insert(key, spec.id);
        }
        for k in p.vif_keys.others(spec.id, Some(key)) {
            self.dp.remove_vif_key(k)?;
            p.vif_keys.remove(k);
        }
        let port = (spec.control_ifindex != 0).then_some(spec.control_ifindex);
        if let Some(ifindex) = port {
            if p.control_ports.get(&ifindex) != Some(spec.id) {
                self.dp.set_control_port(ifindex, spec.id)?;
                p.control_ports.insert(ifindex, spec.id);
            }
            self.dp.add_tx_port(ifindex)?;
        }
        for ifindex in p.control_ports.others(spec.id, port) {
            self.dp.remove_control_port(ifindex)?;
            p.control_ports.remove(ifindex);
        }
        Ok(())
    }

    /// Changes a VIF's state (one write).
    pub fn set_vif_state(&mut self, id: u32, state: u32) -> Result<(), Error> {
        let Some(entry) = self.programmed.vifs.get_mut(&id) else {
            return Ok(());
        };
        if entry.state != state {
            let mut new = *entry;
            new.state = state;
            self.dp.set_vif_slot(id, new)?;
            *entry = new;
        }
        Ok(())
    }

    pub fn vif_state(&self, id: u32) -> Option<u32> {
        self.programmed.vifs.get(&id).map(|v| v.state)
    }

    /// Attachment slot `id` as the map holds it.
    pub fn attachment_entry(&self, id: u32) -> Option<Attachment> {
        self.programmed.attachments.get(&id).copied()
    }

    /// VIF `id`'s policy as the map holds it.
    pub fn vif_policy(&self, id: u32) -> VifPolicy {
        self.programmed
            .policies
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    /// VIF table slot `id` as the map holds it.
    pub fn vif_entry(&self, id: u32) -> Option<Vif> {
        self.programmed.vifs.get(&id).copied()
    }

    /// Removes a VIF: its keys first (no new frame finds it), its control port, its slot.
    pub fn remove_vif(&mut self, id: u32) -> Result<(), Error> {
        let p = &mut self.programmed;
        for k in p.vif_keys.others(id, None) {
            self.dp.remove_vif_key(k)?;
            p.vif_keys.remove(k);
        }
        for ifindex in p.control_ports.others(id, None) {
            self.dp.remove_control_port(ifindex)?;
            p.control_ports.remove(ifindex);
        }
        if p.vifs.remove(&id).is_some() {
            self.dp.clear_vif(id)?;
        }
        if p.policies.remove(&id).is_some() {
            self.dp.set_vif_policy(id, VifPolicy::default())?;
        }
        if p.addrs6.remove(&id).is_some() {
            self.dp.set_vif_addrs6(id, VifAddrs6::default())?;
        }
        Ok(())
    }

    /// VIF slots and keys in use, by id.
    pub fn vif_ids(&self) -> BTreeSet<u32> {
        let p = &self.programmed;
        p.vifs
            .keys()
            .copied()
            .chain(p.vif_keys.slots())
            .chain(p.control_ports.slots())
            .collect()
    }

    /// Makes attachment `spec.id` what `spec` says (slot, one key), writing what differs.
    pub fn set_attachment(&mut self, spec: &AttachmentSpec) -> Result<(), Error> {
        let entry = spec.entry();
        let old = self.programmed.attachments.get(&spec.id).copied();
        if old != Some(entry) {
            // Another VTEP or port: the resolved underlay next hop is for the old one, so
            // the FIB decides until the agent has resolved the new one.
            if old.is_some_and(|o| {
                o.remote_vtep != entry.remote_vtep || o.underlay_ifindex != entry.underlay_ifindex
            }) {
                self.dp
                    .set_underlay(spec.id, forwarder_common::UnderlayHop::default())?;
            }
            self.dp.set_attachment_slot(spec.id, entry)?;
            self.programmed.attachments.insert(spec.id, entry);
        }
        let p = &mut self.programmed;
        let key = spec.key();
        if p.vtep_keys.get(&key) != Some(spec.id) {
            self.dp.set_vtep_key(key, spec.id)?;
            p.vtep_keys.insert(key, spec.id);
        }
        for k in p.vtep_keys.others(spec.id, Some(key)) {
            self.dp.remove_vtep_key(k)?;
            p.vtep_keys.remove(k);
        }
        Ok(())
    }

    /// Writes attachment `id`'s underlay next hop when it differs from what the map has.
    pub fn set_underlay(
        &mut self,
        id: u32,
        hop: forwarder_common::UnderlayHop,
    ) -> Result<bool, Error> {
        if self.dp.underlay(id).is_ok_and(|h| h == hop) {
            return Ok(false);
        }
        self.dp.set_underlay(id, hop)?;
        Ok(true)
    }

    pub fn remove_attachment(&mut self, id: u32) -> Result<(), Error> {
        let p = &mut self.programmed;
        for k in p.vtep_keys.others(id, None) {
            self.dp.remove_vtep_key(k)?;
            p.vtep_keys.remove(k);
        }
        if p.attachments.remove(&id).is_some() {
            self.dp.clear_attachment(id)?;
        }
        Ok(())
    }

    pub fn attachment_ids(&self) -> BTreeSet<u32> {
        let p = &self.programmed;
        p.attachments
            .keys()
            .copied()
            .chain(p.vtep_keys.slots())
            .collect()
    }

    // ---- next hops and routes -----------------------------------------------------------

    fn spec_of(nh: &NextHop, pool: &Pool<NextHopKey>) -> Option<NextHopSpec> {
        Some(match nh {
            NextHop::Attachment(a) => NextHopSpec::Attachment(a.0),
            NextHop::Vif { vif, mac } => NextHopSpec::Vif {
                vif: vif.0,
                mac: *mac,
            },
            NextHop::Group(members) => NextHopSpec::Group(
                members
                    .iter()
                    .map(|m| pool.get(m))
                    .collect::<Option<Vec<u32>>>()?,
            ),
        })
    }

    fn write_next_hop(&mut self, id: u32, spec: NextHopSpec) -> Result<(), Error> {
        if self.programmed.next_hops.get(&id) == Some(&spec) {
            return Ok(());
        }
        tracing::trace!(id, ?spec, "next hop written");
        self.dp.set_next_hop(id, &spec)?;
        let p = &mut self.programmed;
        if let Some(NextHopSpec::Group(old)) = p.next_hops.get(&id) {
            for m in old.clone() {
                bump(&mut p.member_refs, m, false);
            }
        }
        if let NextHopSpec::Group(new) = &spec {
            for m in new {
                bump(&mut p.member_refs, *m, true);
            }
        }
        p.next_hops.insert(id, spec);
        Ok(())
    }

    /// Whether next-hop slot `id` holds anything or is referred to.
    pub fn next_hop_in_use(&self, id: u32) -> bool {
        let p = &self.programmed;
        !self.dirty24.is_empty()
            || p.next_hops.contains_key(&id)
            || p.route_refs.contains_key(&id)
            || p.member_refs.contains_key(&id)
    }

    /// Clears a next hop nothing refers to; false (and nothing done) while something does.
    /// Its id stays with its key (the agent releases ids of objects gone from the config):
    /// a VIF that comes back finds its slots, and a flap does not rewrite the state file.
    fn clear_next_hop(&mut self, key: NextHopKey, pool: &Pool<NextHopKey>) -> Result<bool, Error> {
        let Some(id) = pool.get(&key) else {
            return Ok(true);
        };
        let p = &self.programmed;
        if p.route_refs.contains_key(&id) || p.member_refs.contains_key(&id) {
            return Ok(false);
        }
        if p.next_hops.contains_key(&id) {
            self.dp.clear_next_hop(id)?;
            let p = &mut self.programmed;
            if let Some(NextHopSpec::Group(old)) = p.next_hops.remove(&id) {
                for m in old {
                    bump(&mut p.member_refs, m, false);
                }
            }
        }
        Ok(true)
    }

    /// Removes a route from the map; false if it was not there.
    fn remove_route(&mut self, gateway: GatewayId, prefix: IpNet) -> Result<bool, Error> {
        let Some((nh, _)) = self.programmed.routes.get(&(gateway, prefix)).copied() else {
            return Ok(false);
        };
        self.dp.remove_route(gateway.0, prefix)?;
        self.forget_route(gateway, prefix, nh);
        Ok(true)
    }

    fn forget_route(&mut self, gateway: GatewayId, prefix: IpNet, nh: u32) {
        if self.programmed.routes.remove(&(gateway, prefix)).is_some() {
            self.programmed.routes6 -= usize::from(prefix.addr().is_ipv6());
            self.programmed.note_split(gateway, prefix, false);
            self.touch24(gateway, prefix);
        }
        let p = &mut self.programmed;
        p.bgp.remove(&(gateway, prefix));
        bump(&mut p.route_refs, nh, false);
        if let Some(n) = p.per_gateway.get_mut(&gateway) {
            *n -= 1;
            if *n == 0 {
                p.per_gateway.remove(&gateway);
            }
        }
    }

    /// Gives up an installed BGP route of the family of `room_for` (each family has its own
    /// map); false if there is none.
    fn evict_bgp(&mut self, room_for: IpNet) -> Result<bool, Error> {
        let v6 = room_for.addr().is_ipv6();
        let Some((gateway, prefix)) = self
            .programmed
            .bgp
            .iter()
            .rev()
            .find(|(_, p)| p.addr().is_ipv6() == v6)
            .copied()
        else {
            return Ok(false);
        };
        tracing::warn!(gateway = %gateway, prefix = %prefix, "route map full: a BGP route makes room for a propagated or static one");
        self.remove_route(gateway, prefix)?;
        self.pending
            .insert((Source::Bgp, gateway, prefix), Pending::Full);
        Ok(true)
    }

    /// Writes one selected route; on a full map it is left pending (a propagated or static
    /// route first takes the place of a BGP one).
    fn install(
        &mut self,
        gateway: GatewayId,
        prefix: IpNet,
        candidate: Selected,
        next_hop: Option<NextHopKey>,
        pool: &Pool<NextHopKey>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let slot = self.next_hop_slot(next_hop, pool);
        if let Some(nh) = self.stage(gateway, prefix, candidate, slot) {
            self.write_route(gateway, prefix, nh, candidate.source, report)?;
        }
        Ok(())
    }

    /// The slot of a route's next hop, if it has one and it is written.
    fn next_hop_slot(&self, next_hop: Option<NextHopKey>, pool: &Pool<NextHopKey>) -> Option<u32> {
        next_hop
            .and_then(|key| pool.get(&key))
            .filter(|id| self.programmed.next_hops.contains_key(id))
    }

    /// What a route's write needs: its next-hop slot, or None when there is nothing to
    /// write (the map already has it, or its next hop has no slot: then it is pending).
    fn stage(
        &mut self,
        gateway: GatewayId,
        prefix: IpNet,
        candidate: Selected,
        next_hop: Option<u32>,
    ) -> Option<u32> {
        if !self.pending.is_empty() {
            for s in [Source::Propagated, Source::Static, Source::Bgp] {
                self.pending.remove(&(s, gateway, prefix));
            }
        }
        let Some(nh) = next_hop else {
            self.pending.insert(
                (candidate.source, gateway, prefix),
                Pending::Failed("its next hop could not be written".into()),
            );
            return None;
        };
        match self.programmed.routes.get(&(gateway, prefix)) {
            Some(&(id, _)) if id == nh => {
                self.note_source(gateway, prefix, nh, candidate.source);
                None
            }
            _ => Some(nh),
        }
    }

    /// Writes a staged route with a system call of its own.
    fn write_route(
        &mut self,
        gateway: GatewayId,
        prefix: IpNet,
        nh: u32,
        source: Source,
        report: &mut Report,
    ) -> Result<(), Error> {
        tracing::trace!(gateway = %gateway, prefix = %prefix, nh, "route written");
        let mut result = self.dp.upsert_route(gateway.0, prefix, nh);
        if matches!(result, Err(Error::RouteMapFull))
            && source != Source::Bgp
            && self.evict_bgp(prefix)?
        {
            result = self.dp.upsert_route(gateway.0, prefix, nh);
        }
        self.written(gateway, prefix, nh, source, result, report);
        Ok(())
    }

    /// Writes staged routes, [`ROUTE_BATCH`] to a system call, in order. After a write that
    /// failed (a full map, most likely) the rest go one at a time, where a full map makes a
    /// propagated or static route take a BGP route's place.
    fn write_staged(
        &mut self,
        staged: &mut Vec<(GatewayId, IpNet, u32, Source)>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let routes: Vec<(u32, IpNet, u32)> =
            staged.iter().map(|(g, p, nh, _)| (g.0, *p, *nh)).collect();
        let (done, result) = self.dp.upsert_route_batch(&routes);
        let mut rest = staged.drain(..);
        for (gateway, prefix, nh, source) in rest.by_ref().take(done) {
            tracing::trace!(gateway = %gateway, prefix = %prefix, nh, "route written");
            self.written(gateway, prefix, nh, source, Ok(()), report);
        }
        if result.is_err() {
            for (gateway, prefix, nh, source) in rest.collect::<Vec<_>>() {
                self.write_route(gateway, prefix, nh, source, report)?;
            }
        }
        self.write_routes24(report);
        Ok(())
    }

    /// Notes what a route's write did.
    fn written(
        &mut self,
        gateway: GatewayId,
        prefix: IpNet,
        nh: u32,
        source: Source,
        result: Result<(), Error>,
        report: &mut Report,
    ) {
        match result {
            Ok(()) => {
                let p = &mut self.programmed;
                match p.routes.insert((gateway, prefix), (nh, source)) {
                    Some((old_nh, _)) => bump(&mut p.route_refs, old_nh, false),
                    None => {
                        *p.per_gateway.entry(gateway).or_default() += 1;
                        p.routes6 += usize::from(prefix.addr().is_ipv6());
                        p.note_split(gateway, prefix, true);
                    }
                }
                bump(&mut p.route_refs, nh, true);
                p.note_bgp(gateway, prefix, source);
                self.touch24(gateway, prefix);
                report.written += 1;
            }
            Err(Error::RouteMapFull) => {
                self.pending
                    .insert((source, gateway, prefix), Pending::Full);
            }
            Err(e) => {
                report.error(format!("route {prefix} of gateway {gateway}: {e}"));
                self.pending.insert(
                    (source, gateway, prefix),
                    Pending::Failed(crate::agent::error_chain(&e)),
                );
            }
        }
    }

    /// Marks the /24 shortcuts a change of `prefix` can alter, to be written by
    /// [`Self::write_routes24`].
    fn touch24(&mut self, gateway: GatewayId, prefix: IpNet) {
        if let IpNet::V4(p) = prefix {
            self.dirty24
                .extend(routes24::touched(p).map(|net| (gateway, net)));
        }
    }

    /// Brings the /24 shortcuts of the routes written or removed since the last call in line
    /// with the trie: those in the map are rewritten or removed at once; a /24 that has none
    /// waits in `new24` for an idle moment. Runs after a pass's removals, after each batch of
    /// route writes (a shortcut lags its routes by one batch at most) and before next hops
    /// are cleared (none outlives the next hop it names). False if a write failed: the /24s
    /// stay dirty and are retried.
    fn write_routes24(&mut self, report: &mut Report) -> bool {
        if self.dirty24.is_empty() {
            return true;
        }
        let mut dirty = std::mem::take(&mut self.dirty24);
        dirty.sort_unstable();
        dirty.dedup();
        let mut writes = Vec::new();
        let mut removals = Vec::new();
        for &key @ (gateway, net) in &dirty {
            if !self.have24.contains(&key) {
                self.new24.push(key);
                continue;
            }
            match self.programmed.entry24(gateway, net) {
                Some(nh) => writes.push((gateway.0, net, nh)),
                None => removals.push((gateway.0, net)),
            }
        }
        match self.dp.write_routes24(&writes, &removals) {
            Ok(left_out) => {
                for (g, net) in removals {
                    self.have24.remove(&(GatewayId(g), net));
                }
                // A write that found no room removed the shortcut: which one is not known
                // here, and a /24 in `have24` without one only costs a removal later.
                Self::note_left_out(left_out);
                true
            }
            // Kept dirty, written again at the next retry.
            Err(e) => {
                self.dirty24 = dirty;
                report.error(format!("/24 shortcuts: {e}"));
                false
            }
        }
    }

    /// Whether every /24 shortcut that exists agrees with the routes (none failed to be
    /// written): until then no next hop or gateway id may be given back, as a shortcut
    /// may still name it.
    pub fn routes24_settled(&self) -> bool {
        self.dirty24.is_empty()
    }

    fn note_left_out(left_out: usize) {
        if left_out > 0 {
            tracing::warn!(
                left_out,
                "the /24 shortcut map is full: the route trie alone answers for these /24s \
                 (same forwarding, slower lookups)"
            );
        }
    }

    /// /24s waiting for a first shortcut.
    pub fn new_routes24(&self) -> usize {
        self.new24.len()
    }

    /// Writes up to `max` of the /24 shortcuts that wait for an idle moment (each as the
    /// routes are now); returns how many wait still.
    pub fn write_new_routes24(&mut self, max: usize) -> Result<usize, Error> {
        let mut writes = Vec::new();
        while writes.len() < max
            && let Some(key @ (gateway, net)) = self.new24.pop()
        {
            // A repeat, or a /24 split or left without a route meanwhile.
            if self.have24.contains(&key) {
                continue;
            }
            if let Some(nh) = self.programmed.entry24(gateway, net) {
                // Noted before the write: `have24` may name a /24 the map has no shortcut
                // for (a removal then finds nothing), never the other way round (a
                // shortcut no removal would reach).
                self.have24.insert(key);
                writes.push((gateway.0, net, nh));
            }
        }
        if self.new24.is_empty() {
            self.new24.shrink_to_fit();
        }
        match self.dp.write_routes24(&writes, &[]) {
            Ok(left_out) => Self::note_left_out(left_out),
            Err(e) => {
                // Written again, as shortcuts the map may have, by the next retry.
                self.dirty24
                    .extend(writes.iter().map(|&(g, net, _)| (GatewayId(g), net)));
                return Err(e);
            }
        }
        Ok(self.new24.len())
    }

    fn note_source(&mut self, gateway: GatewayId, prefix: IpNet, nh: u32, source: Source) {
        let p = &mut self.programmed;
        p.routes.insert((gateway, prefix), (nh, source));
        p.note_bgp(gateway, prefix, source);
    }

    /// Writes what `changes` moved (everything, for a full plan) so that the maps hold
    /// `desired`. Next-hop ids come from `pool` (allocated for new next hops, released for
    /// those cleared).
    pub fn sync(
        &mut self,
        desired: &Desired,
        changes: &Changes,
        pool: &mut Pool<NextHopKey>,
    ) -> Result<Report, Error> {
        let mut report = Report::default();
        pool.set_capacity(self.next_hop_capacity);

        // VIF states.
        let states: Vec<(u32, u32)> = if changes.full {
            desired.vifs.iter().map(|(v, s)| (v.0, s.value())).collect()
        } else {
            changes.vifs.iter().map(|(v, s)| (v.0, s.value())).collect()
        };
        for (id, state) in states {
            self.set_vif_state(id, state)?;
        }

        // Next hops: which keys to look at.
        let mut keys: BTreeSet<NextHopKey> = changes.next_hops.clone();
        if changes.full {
            keys.extend(desired.next_hops.keys().copied());
            let ids: Vec<u32> = self.programmed.next_hops.keys().copied().collect();
            for id in ids {
                match pool.key(id) {
                    Some(key) => {
                        keys.insert(*key);
                    }
                    None => {
                        // A slot no state file explained: reserved until unused.
                        let key = NextHopKey::Pinned { id };
                        if pool.reserve(key, id) {
                            report.ids_changed = true;
                        }
                        keys.insert(key);
                    }
                }
            }
        }
        let removals = self.write_next_hops(keys, desired, pool, &mut report);

        // Routes: removals first (they also make room), then writes by preference.
        // A full plan's changes are among what the maps and the plan hold: not listed twice.
        let mut routes: Vec<(GatewayId, IpNet)> = if changes.full {
            Vec::new()
        } else {
            changes
                .routes
                .iter()
                .map(|c| (c.gateway, c.prefix))
                .collect()
        };
        if changes.full {
            routes.extend(self.programmed.routes.keys().copied());
            routes.extend(self.pending.keys().map(|(_, g, p)| (*g, *p)));
            routes.extend(
                desired
                    .routes
                    .iter()
                    .flat_map(|(g, t)| t.keys().map(move |p| (*g, *p))),
            );
        }
        let mut result = self.write_routes(routes, desired, pool, &mut report);
        if result.is_ok() && report.removed > 0 && !self.pending.is_empty() {
            result = self.retry_pending(desired, pool, &mut report);
        }
        self.finish_pass(result, removals, desired, pool, &mut report)?;
        Ok(report)
    }

    /// The end of a pass that wrote routes: the /24 shortcuts follow them (also when the
    /// pass stopped at an error), then next hops nothing refers to are cleared, unless a
    /// shortcut could not be written (it may still name one of them): then they wait.
    fn finish_pass(
        &mut self,
        result: Result<(), Error>,
        removals: Vec<NextHopKey>,
        desired: &Desired,
        pool: &mut Pool<NextHopKey>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let shortcuts_written = self.write_routes24(report);
        result?;
        if shortcuts_written {
            self.clear_next_hops(removals, desired, pool, report);
        } else {
            self.deferred.extend(removals);
        }
        Ok(())
    }

    /// Writes the next hops of `keys` that `desired` has (members before the groups that
    /// list them) and returns the others, to be cleared once routes no longer use them.
    fn write_next_hops(
        &mut self,
        keys: BTreeSet<NextHopKey>,
        desired: &Desired,
        pool: &mut Pool<NextHopKey>,
        report: &mut Report,
    ) -> Vec<NextHopKey> {
        let (mut upserts, removals): (Vec<NextHopKey>, Vec<NextHopKey>) = keys
            .into_iter()
            .partition(|k| desired.next_hops.contains_key(k));
        upserts.sort_by_key(|k| matches!(desired.next_hops.get(k), Some(NextHop::Group(_))));
        for key in upserts {
            let Some(nh) = desired.next_hops.get(&key) else {
                continue;
            };
            self.deferred.remove(&key);
            let had = pool.get(&key).is_some();
            let id = match pool.allocate(&key) {
                Ok(id) => id,
                Err(e) => {
                    report.error(e);
                    self.failed_next_hops.insert(key);
                    continue;
                }
            };
            report.ids_changed |= !had;
            let written = match Self::spec_of(nh, pool) {
                Some(spec) => self
                    .write_next_hop(id, spec)
                    .map_err(|e| format!("next hop {key:?}: {e}")),
                None => Err(format!("next hop {key:?}: a member has no slot")),
            };
            match written {
                Ok(()) => {
                    self.failed_next_hops.remove(&key);
                }
                Err(e) => {
                    report.error(e);
                    self.failed_next_hops.insert(key);
                }
            }
        }
        removals
    }

    /// Brings the routes of `routes` in line with `desired`: removals first (they also make
    /// room), then writes, propagated and static before BGP.
    fn write_routes(
        &mut self,
        mut routes: Vec<(GatewayId, IpNet)>,
        desired: &Desired,
        pool: &Pool<NextHopKey>,
        report: &mut Report,
    ) -> Result<(), Error> {
        routes.sort_unstable();
        routes.dedup();
        let mut writes: Vec<(Source, GatewayId, IpNet, Selected)> = Vec::new();
        for (gateway, prefix) in routes {
            match desired.route(gateway, prefix) {
                Some(c) => writes.push((c.source, gateway, prefix, c)),
                None => {
                    for s in [Source::Propagated, Source::Static, Source::Bgp] {
                        self.pending.remove(&(s, gateway, prefix));
                    }
                    match self.remove_route(gateway, prefix) {
                        Ok(true) => {
                            report.removed += 1;
                            self.failed_routes.remove(&(gateway, prefix));
                        }
                        Ok(false) => {
                            self.failed_routes.remove(&(gateway, prefix));
                        }
                        Err(e) => {
                            report.error(format!("removing {prefix}: {e}"));
                            self.failed_routes.insert((gateway, prefix));
                        }
                    }
                }
            }
        }
        self.write_routes24(report);
        writes.sort_unstable_by_key(|(s, g, p, _)| (*s, *g, *p));
        let mut staged = Vec::with_capacity(writes.len().min(ROUTE_BATCH));
        // Routes in a row mostly share a target: its slot is looked up once for them.
        let mut last: Option<(crate::rib::Target, Option<u32>)> = None;
        for (_, gateway, prefix, candidate) in writes {
            if !self.failed_routes.is_empty() {
                self.failed_routes.remove(&(gateway, prefix));
            }
            let slot = match last {
                Some((target, slot)) if target == candidate.target => slot,
                _ => {
                    let key = desired.next_hop_key(candidate.target);
                    let slot = self.next_hop_slot(key, pool);
                    last = Some((candidate.target, slot));
                    slot
                }
            };
            if let Some(nh) = self.stage(gateway, prefix, candidate, slot) {
                staged.push((gateway, prefix, nh, candidate.source));
                if staged.len() == ROUTE_BATCH {
                    self.write_staged(&mut staged, report)?;
                }
            }
        }
        self.write_staged(&mut staged, report)
    }

    /// Clears next hops nothing wants (groups first: they free their members); those still
    /// referred to wait.
    fn clear_next_hops(
        &mut self,
        mut removals: Vec<NextHopKey>,
        desired: &Desired,
        pool: &mut Pool<NextHopKey>,
        report: &mut Report,
    ) {
        removals.extend(self.deferred.iter().copied());
        removals.sort_by_key(|k| {
            !matches!(
                pool.get(k)
                    .and_then(|id| self.programmed.next_hops.get(&id)),
                Some(NextHopSpec::Group(_))
            )
        });
        removals.dedup();
        for key in removals {
            if desired.next_hops.contains_key(&key) {
                self.deferred.remove(&key);
                continue;
            }
            match self.clear_next_hop(key, pool) {
                Ok(true) => {
                    self.deferred.remove(&key);
                    self.failed_next_hops.remove(&key);
                    // A multipath set's slot goes back at once: sets come and go with the
                    // customers' routes, and a set that comes back may take any free slot.
                    if matches!(key, NextHopKey::Multipath { .. }) && pool.release(&key).is_some() {
                        report.ids_changed = true;
                    }
                }
                Ok(false) => {
                    self.deferred.insert(key);
                }
                Err(e) => {
                    self.deferred.insert(key);
                    report.error(format!("clearing next hop {key:?}: {e}"));
                }
            }
        }
    }

    fn retry_pending(
        &mut self,
        desired: &Desired,
        pool: &Pool<NextHopKey>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let keys: Vec<(Source, GatewayId, IpNet)> = self.pending.keys().copied().collect();
        for (source, gateway, prefix) in keys {
            let Some(c) = desired.route(gateway, prefix) else {
                self.pending.remove(&(source, gateway, prefix));
                continue;
            };
            self.install(
                gateway,
                prefix,
                c,
                desired.next_hop_key(c.target),
                pool,
                report,
            )?;
            // A route that still does not fit (and had nothing to take the place of): the
            // rest will not either.
            if matches!(
                self.pending.get(&(c.source, gateway, prefix)),
                Some(Pending::Full)
            ) {
                break;
            }
        }
        Ok(())
    }

    /// Retries what did not go in: next hops and route removals that failed, pending routes,
    /// next hops waiting to be cleared (the agent's timer, while there are any).
    pub fn retry(
        &mut self,
        desired: &Desired,
        pool: &mut Pool<NextHopKey>,
    ) -> Result<Report, Error> {
        let mut report = Report::default();
        let keys = std::mem::take(&mut self.failed_next_hops);
        let removals = self.write_next_hops(keys, desired, pool, &mut report);
        let routes: Vec<(GatewayId, IpNet)> = self.failed_routes.iter().copied().collect();
        let result = self
            .write_routes(routes, desired, pool, &mut report)
            .and_then(|()| self.retry_pending(desired, pool, &mut report));
        self.finish_pass(result, removals, desired, pool, &mut report)?;
        Ok(report)
    }
}
