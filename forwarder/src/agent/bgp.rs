//! The agent's side of BGP: one session per `[[vif.peer]]` of every `routing = "bgp"` VIF,
//! the routes each session holds (as candidates in the route tables), and what each session
//! is told: the whole export once when it comes up, then only what changes. The protocol
//! itself is in `crate::bgp`.
//!
//! Graceful restart keeps a session's routes, stale, while the session is away: after the
//! agent's own restart (read back from the pinned maps) until the session is back and the
//! peer's table is complete, bounded by `bgp_restart_time`; while a peer restarts
//! gracefully, for the restart time it advertised. A session that is back waits at most
//! `bgp_stale_routes_time` for the peer's End-of-RIB; what was not announced again by
//! then is swept.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;

use super::Agent;
use crate::{
    FastMap, FastSet,
    bgp::{Event, Family, SessionConfig},
    config::Routing,
    ids::VifId,
    plan::{self, Changes, SessionKey},
};

/// BGP state the agent keeps between events.
#[derive(Debug, Default)]
pub struct BgpState {
    /// Sessions started, with the config they were started with (a changed config restarts).
    pub sessions: BTreeMap<SessionKey, SessionConfig>,
    /// BFD sessions the data plane answers since the previous agent stopped, until this
    /// agent's session for them has started.
    pub bfd_handed: BTreeMap<SessionKey, forwarder_common::BfdKey>,
    /// The VPC CIDRs each session's import filter was last given.
    pub cidrs: BTreeMap<SessionKey, Vec<IpNet>>,
    /// Sessions in Established.
    pub up: BTreeSet<SessionKey>,
    /// Accepted prefixes per session, each with its path's attributes (`None`: a route kept
    /// from before a restart, ranked as a path without attributes). Hashed: a full table
    /// arrives one prefix at a time. One map for both: a full table is a million entries.
    pub routes: BTreeMap<SessionKey, FastMap<IpNet, Option<crate::rib::PathInfo>>>,
    /// Sessions that came up and get their whole export after the next plan.
    pub announce_all: BTreeSet<SessionKey>,
    /// Sessions holding stale routes (graceful restart).
    pub stale: BTreeMap<SessionKey, Stale>,
    /// Sessions whose client routers carry traffic: up, or held by graceful restart.
    pub forwarding: BTreeSet<SessionKey>,
}

/// Why a session's routes are stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleCause {
    /// The agent restarted; the routes were read back from the pinned maps.
    AgentRestart,
    /// The peer restarts gracefully.
    PeerRestart,
}

/// A session's stale routes.
#[derive(Debug)]
pub struct Stale {
    /// Routes not announced again since they went stale.
    pub prefixes: FastSet<IpNet>,
    /// When whatever is still stale is swept.
    pub until: Instant,
    pub cause: StaleCause,
}

impl BgpState {
    /// Forgets the routes of a VIF gone from the model (its sessions are stopped).
    pub fn forget_vif(&mut self, vif: VifId) {
        self.routes.retain(|(v, _), _| *v != vif);
        self.up.retain(|(v, _)| *v != vif);
        self.announce_all.retain(|(v, _)| *v != vif);
        self.stale.retain(|(v, _), _| *v != vif);
        self.forwarding.retain(|(v, _)| *v != vif);
    }

    /// Whether `key` carries traffic follows from whether it is up or stale.
    fn refresh_forwarding(&mut self, key: SessionKey) {
        if self.up.contains(&key) || self.stale.contains_key(&key) {
            self.forwarding.insert(key);
        } else {
            self.forwarding.remove(&key);
        }
    }

    /// Stale routes of `key` still waiting to be announced again.
    pub fn stale_count(&self, key: SessionKey) -> usize {
        self.stale.get(&key).map_or(0, |s| s.prefixes.len())
    }

    /// When the next stale routes are due to be swept.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.stale.values().map(|s| s.until).min()
    }
}

impl Agent {
    /// Starts, restarts or stops sessions so that every peer of every BGP VIF with a control
    /// plane has one with its current settings.
    pub(super) fn sync_sessions(&mut self) {
        let mut wanted: BTreeMap<SessionKey, SessionConfig> = BTreeMap::new();
        for (id, vif) in &self.model.vifs {
            if vif.routing != Routing::Bgp || !self.control_planes.contains_key(id) {
                continue;
            }
            let c = &vif.config;
            for (i, peer) in vif.peers.iter().enumerate() {
                // One family per session, the pair's: IPv4 unicast over an IPv4 pair, IPv6
                // unicast (MP-BGP) over an IPv6 one.
                let (local_addr, remote_addr) = (peer.cloud_address, peer.client_address);
                let v6 = remote_addr.is_ipv6();
                wanted.insert(
                    (*id, i as u8),
                    SessionConfig {
                        vif: vif.name.clone(),
                        peer_index: i,
                        netns: Some(PathBuf::from(crate::netns::RUN_DIR).join(&vif.netns)),
                        local_addr,
                        remote_addr,
                        local_asn: self.config.agent.local_asn,
                        remote_asn: c.client_asn.unwrap_or_default(),
                        router_id: self.config.router_id(),
                        password: c.bgp_password.clone(),
                        max_prefixes: Some(
                            c.max_prefixes
                                .unwrap_or(crate::config::DEFAULT_MAX_PREFIXES),
                        ),
                        accept_default: c.accept_default,
                        // `max_prefix_len` is IPv4's; IPv6 routes are not cut by length.
                        max_prefix_len: if v6 {
                            128
                        } else {
                            c.max_prefix_len.unwrap_or(32)
                        },
                        allowed_prefixes: c.allowed_prefixes.clone(),
                        hold_time: self.config.agent.bgp_hold_time,
                        allow_hold_time_zero: c.allow_hold_time_zero,
                        graceful_restart: self
                            .config
                            .agent
                            .bgp_graceful_restart
                            .then_some(self.config.agent.bgp_restart_time),
                        ttl_security: c.ttl_security,
                        connect_retry: Duration::from_secs(u64::from(
                            self.config.agent.bgp_connect_retry,
                        )),
                        idle_after_max_prefix: Duration::from_secs(u64::from(
                            self.config.agent.bgp_max_prefix_restart,
                        )),
                        port: 179,
                        as_path_prepend: c.as_path_prepend,
                        // BFD is IPv4's only (for now): an IPv6 session of a `bfd = true` VIF
                        // runs on its hold timer.
                        bfd: (c.bfd && !v6).then(|| crate::bgp::BfdConfig {
                            interval: Duration::from_millis(u64::from(
                                self.config.agent.bfd_interval_ms,
                            )),
                            detect_mult: self.config.agent.bfd_multiplier,
                            // Unique per (VIF, peer); never 0.
                            discriminator: (id.0 << 2 | i as u32) + 1,
                        }),
                    },
                );
            }
        }
        let stale: Vec<SessionKey> = self
            .bgp
            .sessions
            .iter()
            .filter(|(key, cfg)| wanted.get(*key) != Some(*cfg))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            self.stop_session(key);
        }
        for (key, cfg) in wanted {
            let cidrs = self
                .model
                .vifs
                .get(&key.0)
                .and_then(|v| self.model.gateways.get(&v.gateway))
                .map(|g| g.vpc_cidrs.clone())
                .unwrap_or_default();
            if !self.bgp.sessions.contains_key(&key) {
                tracing::info!(vif = %cfg.vif, peer = key.1, remote = %cfg.remote_addr, "starting BGP session");
                self.speaker.add_session(cfg.clone(), cidrs.clone());
                self.bgp.sessions.insert(key, cfg);
                self.bgp.cidrs.insert(key, cidrs);
            } else if self.bgp.cidrs.get(&key) != Some(&cidrs) {
                // VPC CIDRs changed with a reload: the import filter judges again.
                self.speaker
                    .set_vpc_cidrs(&cfg.vif, cfg.peer_index, cidrs.clone());
                self.bgp.cidrs.insert(key, cidrs);
            }
        }
        self.settle_bfd_handover();
    }

    fn stop_session(&mut self, key: SessionKey) {
        if let Some(cfg) = self.bgp.sessions.remove(&key) {
            tracing::info!(vif = %cfg.vif, peer = key.1, "stopping BGP session");
            self.speaker.remove_session(&cfg.vif, cfg.peer_index);
        }
        self.bgp.cidrs.remove(&key);
        self.bgp.up.remove(&key);
        self.bgp.announce_all.remove(&key);
        self.bgp.stale.remove(&key);
        self.bgp.refresh_forwarding(key);
        self.dirty.vifs.insert(key.0);
        self.drop_session_routes(key);
    }

    /// After a restart: the BGP routes the pinned route map still holds become the stale
    /// routes of the sessions that announced them (the next hop `VifPeers { vif, mask }`,
    /// or each path of a `Multipath` one, says which), kept until each session is back with its table or the restart time
    /// runs out. Returns how many routes were kept.
    pub(super) fn recover_stale_routes(&mut self) -> usize {
        let until =
            Instant::now() + Duration::from_secs(u64::from(self.config.agent.bgp_restart_time));
        let mut kept = 0;
        let installed: Vec<(crate::ids::GatewayId, IpNet, u32)> =
            self.apply.programmed_routes().collect();
        for (gateway, prefix, nh) in installed {
            // A multipath route was announced on each of its paths.
            let paths: Vec<(crate::ids::VifId, u8)> = match self.state.ids.next_hops.key(nh) {
                Some(crate::ids::NextHopKey::VifPeers { vif, mask }) => vec![(*vif, *mask)],
                Some(crate::ids::NextHopKey::Multipath { paths }) => paths.as_slice().to_vec(),
                _ => continue,
            };
            let mut any = false;
            for (vif, mask) in paths {
                any |= self.recover_stale_path(gateway, prefix, vif, mask, until);
            }
            kept += usize::from(any);
        }
        let keys: Vec<SessionKey> = self.bgp.stale.keys().copied().collect();
        for key in keys {
            self.bgp.refresh_forwarding(key);
        }
        kept
    }

    /// One VIF's path of a route read back after a restart: stale for the sessions in
    /// `mask`; false if the VIF is no longer a BGP VIF of `gateway` or has none of them.
    fn recover_stale_path(
        &mut self,
        gateway: crate::ids::GatewayId,
        prefix: IpNet,
        vif: crate::ids::VifId,
        mask: u8,
        until: Instant,
    ) -> bool {
        let Some(v) = self.model.vifs.get(&vif) else {
            return false;
        };
        if v.routing != Routing::Bgp || v.gateway != gateway {
            return false;
        }
        let mask = mask & ((1u16 << v.peers.len()) - 1) as u8;
        if mask == 0 {
            return false;
        }
        for peer in 0..v.peers.len() as u8 {
            if mask & (1 << peer) == 0 {
                continue;
            }
            let key = (vif, peer);
            self.bgp
                .routes
                .entry(key)
                .or_default()
                .entry(prefix)
                .or_insert(None);
            self.bgp
                .stale
                .entry(key)
                .or_insert_with(|| Stale {
                    prefixes: FastSet::default(),
                    until,
                    cause: StaleCause::AgentRestart,
                })
                .prefixes
                .insert(prefix);
        }
        self.rib.set_vif_paths(
            gateway,
            prefix,
            vif,
            Some(plan::VifPaths {
                mask,
                path: crate::rib::PathInfo::default(),
            }),
        );
        true
    }

    /// Every session's status, with its stale routes.
    /// Stopping for a restart: every BFD session that is Up is answered by the data plane
    /// until the next agent takes it over, so that the customer's router does not see the
    /// restart as a failure of the path.
    pub(super) fn hand_bfd_to_the_data_plane(&mut self) {
        // Stopped first (no AdminDown, no detection timer left running while the data
        // plane takes the peer's packets), then handed over from what each said last.
        let mut handed = 0;
        for (vif, _peer, remote, status) in self.speaker.stop_bfd_for_restart() {
            let Some(answer) = status.handover else {
                continue;
            };
            let Some(id) = self.model.vif_id(&vif) else {
                continue;
            };
            let key = forwarder_common::BfdKey {
                vif: id.0,
                client: remote.octets(),
            };
            match self.apply.set_bfd_answer(key, answer) {
                Ok(()) => handed += 1,
                Err(e) => {
                    tracing::warn!(vif = %vif, error = %super::error_chain(&e), "BFD not handed to the data plane");
                }
            }
        }
        if handed > 0 {
            tracing::info!(
                sessions = handed,
                "BFD answered by the data plane until the next agent"
            );
        }
    }

    /// BFD sessions the data plane still answers go back to the agent once their session
    /// runs (it goes on from the same state), and away when no session will take them; a
    /// failed map write is tried again on the next call.
    fn settle_bfd_handover(&mut self) {
        let pending: Vec<(SessionKey, forwarder_common::BfdKey)> =
            self.bgp.bfd_handed.iter().map(|(k, v)| (*k, *v)).collect();
        for (key, bfd) in pending {
            let taken = self.bgp.sessions.contains_key(&key);
            let orphan = !self
                .model
                .vifs
                .get(&key.0)
                .is_some_and(|v| v.routing == Routing::Bgp && v.config.bfd);
            if !(taken || orphan) {
                continue;
            }
            match self.apply.remove_bfd_answer(bfd) {
                Ok(()) => {
                    self.bgp.bfd_handed.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(error = %super::error_chain(&e), "BFD still answered by the data plane; retrying");
                }
            }
        }
    }

    /// Starting over a previous agent's data plane: the BFD sessions it answers are taken
    /// over by the sessions about to start; those no session will take are dropped.
    pub(super) fn take_bfd_from_the_data_plane(&mut self) {
        let answers = match self.apply.bfd_answers() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %super::error_chain(&e), "reading the BFD answers");
                return;
            }
        };
        let mut resume = BTreeMap::new();
        for (key, answer) in answers {
            let session = self.model.vifs.iter().find_map(|(id, v)| {
                let peer = v
                    .peers
                    .iter()
                    .position(|p| p.client_address == IpAddr::from(key.client))?;
                (id.0 == key.vif && v.routing == Routing::Bgp && v.config.bfd)
                    .then(|| ((*id, peer as u8), v.name.clone(), peer))
            });
            match session {
                Some((skey, name, peer)) => {
                    resume.insert((name, peer), answer);
                    self.bgp.bfd_handed.insert(skey, key);
                }
                None => {
                    if let Err(e) = self.apply.remove_bfd_answer(key) {
                        tracing::warn!(error = %super::error_chain(&e), "removing a BFD answer");
                    }
                }
            }
        }
        if !resume.is_empty() {
            tracing::info!(
                sessions = resume.len(),
                "BFD sessions kept up by the data plane: taking them over"
            );
        }
        self.speaker.set_bfd_resume(resume);
    }

    pub(super) fn neighbors(&self) -> Vec<crate::bgp::NeighborStatus> {
        let mut all = self.speaker.status();
        for n in &mut all {
            if let Some(id) = self.model.vif_id(&n.vif) {
                n.stale_routes = self.bgp.stale_count((id, n.peer_index as u8));
            }
        }
        all
    }

    /// Sweeps what is still stale of `key`: those routes were not announced again.
    fn sweep(&mut self, key: SessionKey, why: &str) {
        let Some(stale) = self.bgp.stale.remove(&key) else {
            return;
        };
        if !stale.prefixes.is_empty() {
            tracing::info!(
                vif = %self.model.vif_name(key.0),
                peer = key.1,
                routes = stale.prefixes.len(),
                why,
                "sweeping stale routes"
            );
        }
        for prefix in stale.prefixes {
            if self
                .bgp
                .routes
                .get_mut(&key)
                .is_some_and(|held| held.remove(&prefix).is_some())
            {
                self.refresh_paths(key.0, prefix);
            }
        }
        self.bgp.refresh_forwarding(key);
        self.dirty.vifs.insert(key.0);
    }

    /// The timer: sweeps every session whose stale routes are due.
    pub(super) fn sweep_due(&mut self) {
        let now = Instant::now();
        let due: Vec<SessionKey> = self
            .bgp
            .stale
            .iter()
            .filter(|(_, s)| s.until <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let why = if self.bgp.up.contains(&key) {
                "no End-of-RIB in bgp_stale_routes_time"
            } else {
                "the session did not come back within the restart time"
            };
            self.sweep(key, why);
        }
    }

    /// Stops every session of a VIF (its control plane was rebuilt, or it moved);
    /// `sync_sessions` starts them again.
    pub(super) fn stop_sessions_of(&mut self, vif: VifId) {
        let keys: Vec<SessionKey> = self
            .bgp
            .sessions
            .keys()
            .filter(|(v, _)| *v == vif)
            .copied()
            .collect();
        for key in keys {
            self.stop_session(key);
        }
    }

    /// Which of a VIF's sessions hold `prefix`, and the best path among them: the VIF's
    /// candidate for the prefix is that path, through the sessions that have it.
    fn refresh_paths(&mut self, vif: VifId, prefix: IpNet) {
        // A VIF gone from the model has no candidates (the rib was rebuilt without it).
        let Some((gateway, peers)) = self
            .model
            .vifs
            .get(&vif)
            .map(|v| (v.gateway, v.peers.len() as u8))
        else {
            return;
        };
        let mut best: Option<plan::VifPaths> = None;
        // Sessions holding the prefix without known attributes (routes kept from before a
        // restart) do not rank on their own: they join whichever path wins.
        let mut unknown = 0u8;
        for peer in 0..peers {
            let bit = 1u8 << peer;
            let path = match self
                .bgp
                .routes
                .get(&(vif, peer))
                .and_then(|r| r.get(&prefix))
            {
                None => continue,
                Some(None) => {
                    unknown |= bit;
                    continue;
                }
                Some(Some(path)) => *path,
            };
            best = Some(match best {
                Some(b) if b.path.rank < path.rank => b,
                Some(b) if b.path.rank == path.rank => plan::VifPaths {
                    mask: b.mask | bit,
                    path: crate::rib::PathInfo {
                        rank: b.path.rank,
                        no_export: b.path.no_export || path.no_export,
                    },
                },
                _ => plan::VifPaths { mask: bit, path },
            });
        }
        if unknown != 0 {
            best.get_or_insert_with(plan::VifPaths::default).mask |= unknown;
        }
        if self.rib.set_vif_paths(gateway, prefix, vif, best) != best {
            self.dirty.prefixes.insert((gateway, prefix));
        }
    }

    /// A session's routes go with it.
    fn drop_session_routes(&mut self, key: SessionKey) {
        let Some(prefixes) = self.bgp.routes.remove(&key) else {
            return;
        };
        for prefix in prefixes.into_keys() {
            self.refresh_paths(key.0, prefix);
        }
    }

    /// An event from the speaker: session up or down, routes in or out. The caller plans
    /// once after a batch of events.
    pub fn handle_bgp_event(&mut self, event: Event) {
        let (vif, peer, session) = match &event {
            Event::Established {
                vif,
                peer_index,
                session,
                ..
            }
            | Event::Down {
                vif,
                peer_index,
                session,
                ..
            }
            | Event::Routes {
                vif,
                peer_index,
                session,
                ..
            }
            | Event::EndOfRib {
                vif,
                peer_index,
                session,
            } => (vif.clone(), *peer_index, *session),
        };
        let vif = vif.as_str();
        if !self.speaker.is_current(vif, peer, session) {
            tracing::debug!(vif = %vif, peer, session, "ignoring an event of a stopped BGP session");
            return;
        }
        let Some(id) = self.model.vif_id(vif) else {
            return;
        };
        let key = (id, peer as u8);
        match event {
            Event::Established { peer_restart, .. } => {
                tracing::info!(vif = %vif, peer, "BGP session established");
                self.bgp.up.insert(key);
                self.bgp.announce_all.insert(key);
                self.bgp.refresh_forwarding(key);
                self.dirty.vifs.insert(id);
                let lost_state = self.bgp.stale.get(&key).is_some_and(|s| {
                    s.cause == StaleCause::PeerRestart && !peer_restart.is_some_and(|r| r.preserved)
                });
                if lost_state {
                    // The peer came back without its forwarding state (F bit clear).
                    self.sweep(key, "the peer did not keep its forwarding state");
                } else if let Some(stale) = self.bgp.stale.get_mut(&key) {
                    stale.until = Instant::now()
                        + Duration::from_secs(u64::from(self.config.agent.bgp_stale_routes_time));
                }
            }
            Event::Down { reason, retain, .. } => {
                tracing::warn!(vif = %vif, peer, reason = %reason, "BGP session down");
                self.bgp.up.remove(&key);
                self.bgp.announce_all.remove(&key);
                self.dirty.vifs.insert(id);
                match retain {
                    Some(keep) if self.bgp.routes.get(&key).is_some_and(|r| !r.is_empty()) => {
                        // The peer restarts gracefully: its routes stay, stale, and keep
                        // carrying traffic for its restart time.
                        let prefixes: FastSet<IpNet> =
                            self.bgp.routes[&key].keys().copied().collect();
                        tracing::info!(vif = %vif, peer, routes = prefixes.len(), keep_for = ?keep, "keeping the restarting peer's routes");
                        self.bgp.stale.insert(
                            key,
                            Stale {
                                prefixes,
                                until: Instant::now() + keep,
                                cause: StaleCause::PeerRestart,
                            },
                        );
                    }
                    _ => {
                        // The next-hop groups lose it in the same plan, before any route
                        // moves.
                        self.bgp.stale.remove(&key);
                        self.drop_session_routes(key);
                    }
                }
                self.bgp.refresh_forwarding(key);
            }
            Event::EndOfRib { .. } => {
                self.sweep(key, "End-of-RIB");
            }
            Event::Routes {
                announced,
                withdrawn,
                ..
            } => {
                // Announced again: fresh. Withdrawn: gone below.
                if let Some(stale) = self.bgp.stale.get_mut(&key) {
                    for prefix in announced.iter().map(|(p, _)| p).chain(&withdrawn) {
                        stale.prefixes.remove(prefix);
                    }
                }
                for prefix in withdrawn {
                    if self
                        .bgp
                        .routes
                        .get_mut(&key)
                        .is_some_and(|held| held.remove(&prefix).is_some())
                    {
                        self.refresh_paths(id, prefix);
                    }
                }
                if announced.is_empty() {
                    return;
                }
                let held = self.bgp.routes.entry(key).or_default();
                let changed: Vec<IpNet> = announced
                    .into_iter()
                    .filter(|&(prefix, path)| held.insert(prefix, Some(path)) != Some(Some(path)))
                    .map(|(prefix, _)| prefix)
                    .collect();
                for prefix in changed {
                    self.refresh_paths(id, prefix);
                }
            }
        }
    }

    /// Tells the established sessions what a plan changed; a session that just came up gets
    /// its whole export instead.
    pub(super) fn export_changes(&mut self, changes: &Changes) {
        let deltas = self
            .desired
            .export_changes(changes, &self.model, &self.bgp.up);
        for (key, (announce, withdraw)) in deltas {
            if self.bgp.announce_all.contains(&key) {
                continue;
            }
            if let Some(cfg) = self.bgp.sessions.get(&key) {
                let family = Family::of(cfg.remote_addr);
                self.speaker.update_export(
                    &cfg.vif,
                    cfg.peer_index,
                    of_family(family, announce),
                    of_family(family, withdraw),
                );
            }
        }
        self.send_full_exports();
    }

    /// Sends sessions that just came up their whole export, once their VIF takes traffic
    /// (`available`: port up, the client router's MAC known); until then they wait, and
    /// announce nothing.
    pub(super) fn send_full_exports(&mut self) {
        let waiting = std::mem::take(&mut self.bgp.announce_all);
        for key in waiting {
            if !self.bgp.up.contains(&key) {
                continue;
            }
            if self.desired.vifs.get(&key.0) != Some(&plan::VifState::Available) {
                self.bgp.announce_all.insert(key);
                continue;
            }
            if let Some(cfg) = self.bgp.sessions.get(&key) {
                let family = Family::of(cfg.remote_addr);
                let set = self
                    .desired
                    .exports(&self.model, key.0)
                    .into_iter()
                    .filter(|p| family.holds(p))
                    .collect();
                self.speaker.set_export(&cfg.vif, cfg.peer_index, set);
            }
        }
    }
}

/// The prefixes of a list a session of `family` carries.
fn of_family(family: Family, prefixes: Vec<IpNet>) -> Vec<IpNet> {
    prefixes.into_iter().filter(|p| family.holds(p)).collect()
}
