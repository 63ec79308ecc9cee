//! The agent's side of BGP: one session per `[[vif.peer]]` of every `routing = "bgp"` VIF,
//! the routes each session holds (as candidates in the route tables), and what each session
//! is told: the whole export once when it comes up, then only what changes. The protocol
//! itself is in `crate::bgp`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use ipnet::Ipv4Net;

use super::Agent;
use crate::{
    bgp::{Event, SessionConfig},
    config::Routing,
    ids::VifId,
    plan::{self, BgpMasks, Changes, SessionKey},
    rib::{Candidate, Source, Target},
};

/// BGP state the agent keeps between events.
#[derive(Debug, Default)]
pub struct BgpState {
    /// Sessions started, with the config they were started with (a changed config restarts).
    pub sessions: BTreeMap<SessionKey, SessionConfig>,
    /// The VPC CIDRs each session's import filter was last given.
    pub cidrs: BTreeMap<SessionKey, Vec<Ipv4Net>>,
    /// Sessions in Established.
    pub up: BTreeSet<SessionKey>,
    /// Accepted prefixes per session.
    pub routes: BTreeMap<SessionKey, BTreeSet<Ipv4Net>>,
    /// Per (VIF, prefix): the sessions holding it.
    pub masks: BgpMasks,
    /// Sessions that came up and get their whole export after the next plan.
    pub announce_all: BTreeSet<SessionKey>,
}

impl BgpState {
    /// Forgets the routes of a VIF gone from the model (its sessions are stopped).
    pub fn forget_vif(&mut self, vif: VifId) {
        self.masks.retain(|(v, _), _| *v != vif);
        self.routes.retain(|(v, _), _| *v != vif);
        self.up.retain(|(v, _)| *v != vif);
        self.announce_all.retain(|(v, _)| *v != vif);
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
                wanted.insert(
                    (*id, i as u8),
                    SessionConfig {
                        vif: vif.name.clone(),
                        peer_index: i,
                        netns: Some(PathBuf::from(crate::netns::RUN_DIR).join(&vif.netns)),
                        local_addr: peer.cloud_address,
                        remote_addr: peer.client_address,
                        local_asn: self.config.agent.local_asn,
                        remote_asn: c.client_asn.unwrap_or_default(),
                        router_id: self.config.router_id(),
                        password: c.bgp_password.clone(),
                        max_prefixes: c.max_prefixes,
                        accept_default: c.accept_default,
                        hold_time: self.config.agent.bgp_hold_time,
                        connect_retry: Duration::from_secs(u64::from(
                            self.config.agent.bgp_connect_retry,
                        )),
                        idle_after_max_prefix: Duration::from_secs(u64::from(
                            self.config.agent.bgp_max_prefix_restart,
                        )),
                        port: 179,
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
    }

    fn stop_session(&mut self, key: SessionKey) {
        if let Some(cfg) = self.bgp.sessions.remove(&key) {
            tracing::info!(vif = %cfg.vif, peer = key.1, "stopping BGP session");
            self.speaker.remove_session(&cfg.vif, cfg.peer_index);
        }
        self.bgp.cidrs.remove(&key);
        self.bgp.up.remove(&key);
        self.bgp.announce_all.remove(&key);
        self.dirty.vifs.insert(key.0);
        self.drop_session_routes(key);
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

    /// The mask of (vif, prefix) becomes `new`: the route tables follow (a VIF the model no
    /// longer has keeps no mask; the tables are rebuilt without it).
    fn set_mask(&mut self, vif: VifId, prefix: Ipv4Net, new: u8) {
        let old = self.bgp.masks.get(&(vif, prefix)).copied().unwrap_or(0);
        if old == new {
            return;
        }
        if new != 0 {
            self.bgp.masks.insert((vif, prefix), new);
        } else {
            self.bgp.masks.remove(&(vif, prefix));
        }
        let Some(gateway) = self.model.vifs.get(&vif).map(|v| v.gateway) else {
            return;
        };
        let candidate = |mask| Candidate {
            source: Source::Bgp,
            target: Target::VifPeers(vif, mask),
        };
        if old != 0 {
            self.rib.remove(gateway, prefix, candidate(old));
        }
        if new != 0 {
            self.rib.insert(gateway, prefix, candidate(new));
        }
        self.dirty.prefixes.insert((gateway, prefix));
    }

    /// A session's routes go with it.
    fn drop_session_routes(&mut self, key: SessionKey) {
        let Some(prefixes) = self.bgp.routes.remove(&key) else {
            return;
        };
        let bit = 1u8 << key.1;
        for prefix in prefixes {
            let mask = self.bgp.masks.get(&(key.0, prefix)).copied().unwrap_or(0);
            self.set_mask(key.0, prefix, mask & !bit);
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
            Event::Established { .. } => {
                tracing::info!(vif = %vif, peer, "BGP session established");
                self.bgp.up.insert(key);
                self.bgp.announce_all.insert(key);
                self.dirty.vifs.insert(id);
            }
            Event::Down { reason, .. } => {
                tracing::warn!(vif = %vif, peer, reason = %reason, "BGP session down");
                // The next-hop groups lose it in the same plan, before any route moves.
                self.bgp.up.remove(&key);
                self.bgp.announce_all.remove(&key);
                self.dirty.vifs.insert(id);
                self.drop_session_routes(key);
            }
            Event::Routes {
                announced,
                withdrawn,
                ..
            } => {
                let bit = 1u8 << key.1;
                for prefix in withdrawn {
                    if self
                        .bgp
                        .routes
                        .get_mut(&key)
                        .is_some_and(|held| held.remove(&prefix))
                    {
                        let mask = self.bgp.masks.get(&(id, prefix)).copied().unwrap_or(0);
                        self.set_mask(id, prefix, mask & !bit);
                    }
                }
                for prefix in announced {
                    if self.bgp.routes.entry(key).or_default().insert(prefix) {
                        let mask = self.bgp.masks.get(&(id, prefix)).copied().unwrap_or(0);
                        self.set_mask(id, prefix, mask | bit);
                    }
                }
            }
        }
    }

    /// Tells the established sessions what a plan changed; a session that just came up gets
    /// its whole export instead.
    pub(super) fn export_changes(&mut self, changes: &Changes) {
        let deltas = plan::export_changes(changes, &self.model, &self.bgp.up);
        for (key, (announce, withdraw)) in deltas {
            if self.bgp.announce_all.contains(&key) {
                continue;
            }
            if let Some(cfg) = self.bgp.sessions.get(&key) {
                self.speaker
                    .update_export(&cfg.vif, cfg.peer_index, announce, withdraw);
            }
        }
        self.send_full_exports();
    }

    pub(super) fn send_full_exports(&mut self) {
        for key in std::mem::take(&mut self.bgp.announce_all) {
            if !self.bgp.up.contains(&key) {
                continue;
            }
            if let Some(cfg) = self.bgp.sessions.get(&key) {
                let set = self.desired.exports(&self.model, key.0);
                self.speaker.set_export(&cfg.vif, cfg.peer_index, set);
            }
        }
    }
}
