//! The agent's side of BGP: one session per `[[vif.peer]]` of every `routing = "bgp"` VIF,
//! the routes each session holds, what each session is told, and the events that move VIF
//! states and next-hop groups. The protocol itself is in `crate::bgp`.

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
    rib::{Route, Source, Target},
};

/// (VIF name, index of its `[[vif.peer]]`).
pub type SessionKey = (String, usize);

/// BGP state the agent keeps between events.
#[derive(Debug, Default)]
pub struct BgpState {
    /// Sessions started, with the config they were started with (a changed config restarts).
    pub sessions: BTreeMap<SessionKey, SessionConfig>,
    /// Sessions in Established.
    pub up: BTreeSet<SessionKey>,
    /// Accepted prefixes per session.
    pub routes: BTreeMap<SessionKey, BTreeSet<Ipv4Net>>,
    /// What each session was last told to advertise.
    pub exported: BTreeMap<SessionKey, BTreeSet<Ipv4Net>>,
}

/// The peers of a VIF as a bit mask (bit i = `[[vif.peer]]` i).
pub fn mask_of(peers: impl IntoIterator<Item = usize>) -> u8 {
    peers.into_iter().fold(0u8, |m, i| m | (1 << i))
}

impl Agent {
    /// Starts, restarts or stops sessions so that every peer of every BGP VIF has one with
    /// its current settings.
    pub(super) fn sync_sessions(&mut self) {
        let mut wanted: BTreeMap<SessionKey, SessionConfig> = BTreeMap::new();
        for vif in self
            .config
            .vifs
            .iter()
            .filter(|v| v.routing == Routing::Bgp)
        {
            let Some(rt) = self.vifs.get(&vif.name) else {
                continue;
            };
            for (i, peer) in vif.peers.iter().enumerate() {
                wanted.insert(
                    (vif.name.clone(), i),
                    SessionConfig {
                        vif: vif.name.clone(),
                        peer_index: i,
                        netns: Some(PathBuf::from("/run/netns").join(&rt.control.netns)),
                        local_addr: peer.cloud_address,
                        remote_addr: peer.client_address,
                        local_asn: self.config.agent.local_asn,
                        remote_asn: vif.client_asn.unwrap_or_default(),
                        router_id: self.config.router_id(),
                        password: vif.bgp_password.clone(),
                        max_prefixes: vif.max_prefixes,
                        accept_default: vif.accept_default,
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
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            tracing::info!(vif = %key.0, peer = key.1, "stopping BGP session");
            self.speaker.remove_session(&key.0, key.1);
            self.bgp.sessions.remove(&key);
            self.bgp.up.remove(&key);
            self.bgp.routes.remove(&key);
            self.bgp.exported.remove(&key);
        }
        for (key, cfg) in wanted {
            if self.bgp.sessions.contains_key(&key) {
                continue;
            }
            let cidrs = self.vpc_cidrs(&key.0);
            tracing::info!(vif = %key.0, peer = key.1, remote = %cfg.remote_addr, "starting BGP session");
            self.speaker.add_session(cfg.clone(), cidrs);
            self.bgp.sessions.insert(key, cfg);
        }
        // VPC CIDRs may have changed with a reload: the import filter follows.
        let keys: Vec<SessionKey> = self.bgp.sessions.keys().cloned().collect();
        for key in keys {
            let cidrs = self.vpc_cidrs(&key.0);
            self.speaker.set_vpc_cidrs(&key.0, key.1, cidrs);
        }
    }

    /// Stops every session of a VIF (its control plane was rebuilt); `sync_sessions` starts
    /// them again.
    pub(super) fn stop_sessions_of(&mut self, vif: &str) {
        let keys: Vec<SessionKey> = self
            .bgp
            .sessions
            .keys()
            .filter(|(v, _)| v == vif)
            .cloned()
            .collect();
        for key in keys {
            self.speaker.remove_session(&key.0, key.1);
            self.bgp.sessions.remove(&key);
            self.bgp.up.remove(&key);
            self.bgp.routes.remove(&key);
            self.bgp.exported.remove(&key);
        }
    }

    /// The propagated VPC CIDRs of a VIF's border gateway (the import filter's overlap rule).
    fn vpc_cidrs(&self, vif: &str) -> Vec<Ipv4Net> {
        let Some(gateway) = self.config.vif(vif).map(|v| v.border_gateway.clone()) else {
            return Vec::new();
        };
        self.config
            .vpc_attachments
            .iter()
            .filter(|a| a.border_gateway == gateway)
            .flat_map(|a| a.propagate.iter().copied())
            .collect()
    }

    /// The BGP candidates of every table: a prefix held by one or more sessions of a VIF
    /// points to those sessions' client routers.
    pub(super) fn bgp_routes(&self) -> Vec<(String, Route)> {
        let mut by_prefix: BTreeMap<(String, Ipv4Net), BTreeSet<usize>> = BTreeMap::new();
        for ((vif, peer), prefixes) in &self.bgp.routes {
            for prefix in prefixes {
                by_prefix
                    .entry((vif.clone(), *prefix))
                    .or_default()
                    .insert(*peer);
            }
        }
        by_prefix
            .into_iter()
            .filter_map(|((vif, prefix), peers)| {
                let gateway = self.config.vif(&vif)?.border_gateway.clone();
                let target = Target::VifPeers(vif, mask_of(peers));
                Some((
                    gateway,
                    Route {
                        prefix,
                        source: Source::Bgp,
                        target,
                    },
                ))
            })
            .collect()
    }

    /// An event from the speaker: session up or down, routes in or out. The caller rebuilds
    /// the tables and reconciles once after a batch of events.
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
            } => (vif, *peer_index, *session),
        };
        if !self.speaker.is_current(vif, peer, session) {
            tracing::debug!(vif = %vif, peer, session, "ignoring an event of a stopped BGP session");
            return;
        }
        match event {
            Event::Established {
                vif, peer_index, ..
            } => {
                tracing::info!(vif = %vif, peer = peer_index, "BGP session established");
                self.bgp.up.insert((vif, peer_index));
            }
            Event::Down {
                vif,
                peer_index,
                reason,
                ..
            } => {
                tracing::warn!(vif = %vif, peer = peer_index, reason = %reason, "BGP session down");
                let key = (vif, peer_index);
                self.bgp.up.remove(&key);
                // Its routes go with it; the next-hop groups lose it in the same reconcile,
                // before any route is rewritten.
                self.bgp.routes.remove(&key);
                self.bgp.exported.remove(&key);
            }
            Event::Routes {
                vif,
                peer_index,
                announced,
                withdrawn,
                ..
            } => {
                let held = self.bgp.routes.entry((vif, peer_index)).or_default();
                for prefix in withdrawn {
                    held.remove(&prefix);
                }
                held.extend(announced);
            }
        }
    }

    /// Tells each established session what to advertise: every route selected in its VIF's
    /// gateway except those toward that VIF itself.
    pub(super) fn export(&mut self, selected: &BTreeMap<String, Vec<(Ipv4Net, Target)>>) {
        let keys: Vec<SessionKey> = self.bgp.up.iter().cloned().collect();
        for key in keys {
            let Some(gateway) = self.config.vif(&key.0).map(|v| v.border_gateway.clone()) else {
                continue;
            };
            let set: BTreeSet<Ipv4Net> = selected
                .get(&gateway)
                .map(|routes| {
                    routes
                        .iter()
                        .filter(|(_, target)| target.vif() != Some(key.0.as_str()))
                        .map(|(prefix, _)| *prefix)
                        .collect()
                })
                .unwrap_or_default();
            if self.bgp.exported.get(&key) != Some(&set) {
                self.speaker.set_export(&key.0, key.1, set.clone());
                self.bgp.exported.insert(key, set);
            }
        }
    }
}
