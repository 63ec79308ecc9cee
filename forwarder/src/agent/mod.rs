//! The agent: owns the configuration, the VIF control planes, the border gateways' route
//! tables and the data plane, and keeps the three in step. Every change (start, reload, a CLI
//! route, a link or neighbour change seen by the periodic check) goes through one
//! `reconcile`, which computes what the maps should hold and writes only the difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use forwarder_common::{MAX_ATTACHMENTS, MAX_NEXT_HOPS, MAX_VIFS, vif_state};
use ipnet::Ipv4Net;

mod bgp;
mod requests;

use crate::{
    config::{self, Config, Routing},
    control,
    dataplane::{self, AttachmentSpec, Dataplane, LoadOptions, NextHopSpec, PortRole, VifSpec},
    host,
    rib::{self, Route, Source, Target},
    state::{self, State},
    vifcp::{ControlPlane, Pair},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Host(#[from] host::Error),
    #[error(
        "underlay interface {interface} does not carry local_vtep {vtep}; add it first (`ip addr add {vtep}/.. dev {interface}`)"
    )]
    NoLocalVtep { interface: String, vtep: Ipv4Addr },
    #[error("{0}")]
    Refused(String),
}

/// A VIF as the agent tracks it between reconciliations.
#[derive(Clone, Debug)]
struct VifRuntime {
    id: u32,
    port_ifindex: u32,
    control: ControlPlane,
    control_ifindex: u32,
    mac: [u8; 6],
    state: u32,
    /// Last sample of the connection port's link state and the client routers' MACs.
    link_up: bool,
    client_macs: Vec<Option<[u8; 6]>>,
}

#[derive(Clone, Debug)]
struct Port {
    role: PortRole,
    ifindex: u32,
}

pub struct Agent {
    config_path: PathBuf,
    config: Config,
    state: State,
    dp: Dataplane,
    mode: XdpMode,
    ports: BTreeMap<String, Port>,
    vifs: BTreeMap<String, VifRuntime>,
    tables: BTreeMap<String, rib::Table>,
    installed_routes: BTreeMap<(u32, Ipv4Net), u32>,
    installed_next_hops: BTreeMap<u32, NextHopSpec>,
    started: Instant,
    speaker: crate::bgp::Speaker,
    bgp: bgp::BgpState,
    /// The last reconcile did not finish.
    retry: bool,
    /// The last reload was only partly applied: the next tick applies it again.
    reapply: bool,
}

fn xdp_mode(mode: config::XdpMode) -> XdpMode {
    match mode {
        config::XdpMode::Native => XdpMode::Driver,
        config::XdpMode::Skb => XdpMode::Skb,
    }
}

fn state_name(state: u32) -> &'static str {
    match state {
        vif_state::CONFIGURING => "configuring",
        vif_state::AVAILABLE => "available",
        vif_state::UNAVAILABLE => "unavailable",
        vif_state::DELETING => "deleting",
        _ => "absent",
    }
}

impl Agent {
    /// Loads the configuration and the persisted state, re-adopts (or creates) the pinned data
    /// plane, attaches it to every port and programs it.
    pub fn start(
        config_path: &Path,
        events: tokio::sync::mpsc::Sender<crate::bgp::Event>,
    ) -> Result<Self, Error> {
        let config = config::load(config_path)?;
        let state = State::load(&config.agent.state_dir)?;
        check_local_vtep(&config)?;
        let dp = Dataplane::load(&LoadOptions {
            pin_dir: Some(config.agent.pin_dir.clone()),
            max_routes: None,
        })?;
        let installed_routes = dp
            .routes()?
            .into_iter()
            .map(|(gw, prefix, nh)| ((gw, prefix), nh))
            .collect();
        let mut agent = Self {
            config_path: config_path.to_owned(),
            mode: xdp_mode(config.agent.xdp_mode),
            config,
            state,
            dp,
            ports: BTreeMap::new(),
            vifs: BTreeMap::new(),
            tables: BTreeMap::new(),
            installed_routes,
            // Unknown until written: the first reconcile rewrites every next hop it needs
            // (same values, so traffic does not notice) and clears the ones it does not.
            installed_next_hops: BTreeMap::new(),
            started: Instant::now(),
            speaker: crate::bgp::Speaker::new(events),
            bgp: bgp::BgpState::default(),
            retry: false,
            reapply: false,
        };
        let stale: Vec<u32> = agent
            .dp
            .next_hops()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // Slots the pinned map uses but the state file does not know (a lost or older state
        // file) are not handed out during the first reconcile, which still routes through them.
        let known: BTreeSet<u32> = agent.state.ids.next_hops.values().copied().collect();
        for id in stale.iter().filter(|id| !known.contains(id)) {
            agent
                .state
                .ids
                .next_hops
                .insert(format!("pinned:{id}"), *id);
        }
        agent.apply_config()?;
        let wanted: BTreeSet<u32> = agent.installed_next_hops.keys().copied().collect();
        for id in stale.into_iter().filter(|id| !wanted.contains(id)) {
            agent.dp.clear_next_hop(id)?;
        }
        Ok(agent)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Brings ports, attachments, VIFs and route tables in line with `self.config`.
    fn apply_config(&mut self) -> Result<(), Error> {
        self.sync_ids()?;
        self.sync_ports()?;
        self.sync_attachments()?;
        self.sync_vifs()?;
        self.remove_leftovers()?;
        self.sync_sessions();
        self.rebuild_tables();
        self.sample_vifs();
        self.reconcile()?;
        self.state.save(&self.config.agent.state_dir)?;
        Ok(())
    }

    /// Gives every object of the config an id (kept across restarts), releases the ids of
    /// objects that are gone.
    fn sync_ids(&mut self) -> Result<(), Error> {
        let ids = &mut self.state.ids;
        let gateways: BTreeSet<&str> = self
            .config
            .border_gateways
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        ids.gateways
            .retain(|name, _| gateways.contains(name.as_str()));
        for name in &gateways {
            state::allocate(&mut ids.gateways, name, "border gateway", 1, u32::MAX)?;
        }
        let vifs: BTreeSet<&str> = self.config.vifs.iter().map(|v| v.name.as_str()).collect();
        ids.vifs.retain(|name, _| vifs.contains(name.as_str()));
        for name in &vifs {
            state::allocate(&mut ids.vifs, name, "VIF", 1, MAX_VIFS)?;
        }
        let atts: BTreeSet<&str> = self
            .config
            .vpc_attachments
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        ids.attachments
            .retain(|name, _| atts.contains(name.as_str()));
        for name in &atts {
            state::allocate(&mut ids.attachments, name, "attachment", 1, MAX_ATTACHMENTS)?;
        }
        Ok(())
    }

    fn gateway_id(&self, name: &str) -> u32 {
        self.state.ids.gateways.get(name).copied().unwrap_or(0)
    }

    fn next_hop_id(&mut self, key: &str) -> Result<u32, Error> {
        Ok(state::allocate(
            &mut self.state.ids.next_hops,
            key,
            "next hop",
            1,
            MAX_NEXT_HOPS,
        )?)
    }

    /// Connection ports and the underlay, by interface name.
    fn wanted_ports(&self) -> BTreeMap<String, PortRole> {
        let mut wanted: BTreeMap<String, PortRole> = self
            .config
            .connections
            .iter()
            .map(|c| (c.interface.clone(), PortRole::Connection))
            .collect();
        wanted.insert(self.config.underlay.interface.clone(), PortRole::Underlay);
        wanted
    }

    /// Attaches XDP to every configured port that does not have it yet.
    fn sync_ports(&mut self) -> Result<(), Error> {
        for (name, role) in self.wanted_ports() {
            if self.ports.get(&name).is_some_and(|p| p.role == role) {
                continue;
            }
            dataplane::prepare_port(&name, role)?;
            let ifindex = self.dp.attach(&name, role, self.mode)?;
            tracing::info!(port = %name, ?role, ifindex, "XDP attached");
            self.ports.insert(name, Port { role, ifindex });
        }
        Ok(())
    }

    /// Detaches ports and deletes control namespaces nothing configured uses any more: after
    /// the VIFs on them are gone (a reload), or left by an earlier run whose config had them
    /// (pinned links and namespaces outlive the agent).
    fn remove_leftovers(&mut self) -> Result<(), Error> {
        let mut wanted: BTreeSet<String> = self.wanted_ports().into_keys().collect();
        wanted.extend(self.vifs.values().map(|v| v.control.host_if.clone()));
        let mut present: BTreeSet<String> = self.ports.keys().cloned().collect();
        if let Ok(dir) = std::fs::read_dir(self.config.agent.pin_dir.join("links")) {
            present.extend(
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        for name in present.difference(&wanted) {
            tracing::info!(port = %name, "detaching XDP from a port no longer configured");
            self.dp.detach(name)?;
            self.ports.remove(name);
        }
        let prefix = &self.config.agent.netns_prefix;
        let ours: BTreeSet<String> = self
            .vifs
            .values()
            .map(|v| v.control.netns.clone())
            .collect();
        let listed = host::run("ip", &["netns", "list"])?;
        for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if !prefix.is_empty() && name.starts_with(prefix.as_str()) && !ours.contains(name) {
                tracing::info!(netns = name, "deleting a control namespace no VIF uses");
                host::run("ip", &["netns", "del", name])?;
            }
        }
        Ok(())
    }

    fn sync_attachments(&mut self) -> Result<(), Error> {
        let underlay = self
            .ports
            .get(&self.config.underlay.interface)
            .map_or(0, |p| p.ifindex);
        let mut wanted = BTreeSet::new();
        for att in self.config.vpc_attachments.clone() {
            let id = self
                .state
                .ids
                .attachments
                .get(&att.name)
                .copied()
                .unwrap_or(0);
            let spec = AttachmentSpec {
                id,
                gateway_id: self.gateway_id(&att.border_gateway),
                vni: att.vni,
                local_vtep: self.config.underlay.local_vtep,
                remote_vtep: att.remote_vtep,
                underlay_ifindex: underlay,
                router_mac: att.router_mac.0,
            };
            self.dp.upsert_attachment(&spec)?;
            if let Err(e) = dataplane::track_vtep(att.remote_vtep) {
                tracing::warn!(attachment = %att.name, error = %e, "cannot keep the VTEP's neighbour resolved");
            }
            wanted.insert((att.vni, att.remote_vtep.octets(), id));
        }
        // Keys no attachment owns any more (removed, or its VNI/VTEP changed); a slot is
        // emptied only when no configured attachment uses its id.
        let live_ids: BTreeSet<u32> = wanted.iter().map(|(_, _, id)| *id).collect();
        for (key, id) in self.dp.vtep_keys()? {
            if !wanted.contains(&(key.vni, key.remote_vtep, id)) {
                tracing::info!(
                    vni = key.vni,
                    "removing an attachment key no longer configured"
                );
                self.dp.remove_vtep_key(key)?;
                if !live_ids.contains(&id) {
                    self.dp.clear_attachment(id)?;
                }
            }
        }
        Ok(())
    }

    fn sync_vifs(&mut self) -> Result<(), Error> {
        let configured: BTreeSet<String> =
            self.config.vifs.iter().map(|v| v.name.clone()).collect();
        // VIFs that went away: withdraw their routes first (tables rebuilt without them),
        // then remove them from the maps and their control planes.
        let gone: Vec<String> = self
            .vifs
            .keys()
            .filter(|n| !configured.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.remove_vif(&name)?;
        }
        let mut keys = BTreeSet::new();
        for vif in self.config.vifs.clone() {
            let id = self.state.ids.vifs.get(&vif.name).copied().unwrap_or(0);
            let connection = self
                .config
                .connection(&vif.connection)
                .map(|c| c.interface.clone())
                .unwrap_or_default();
            let port_ifindex = self.ports.get(&connection).map_or(0, |p| p.ifindex);
            let control = ControlPlane::new(&self.config.agent.netns_prefix, &vif.name, id);
            let pairs: Vec<Pair> = vif
                .peers
                .iter()
                .map(|p| Pair {
                    cloud: p.cloud_address,
                    client: p.client_address,
                    prefix_len: p.prefix_len,
                })
                .collect();
            let (mac, recreated) = control.ensure(&pairs)?;
            let control_port = control.host_if.clone();
            if recreated && self.ports.contains_key(&control_port) {
                // The pair vanished under us (namespace deleted by hand, ...): the new host
                // end needs XDP, and the VIF's BGP sessions need sockets in the new namespace.
                tracing::warn!(vif = %vif.name, "control plane was recreated");
                self.dp.detach(&control_port)?;
                self.ports.remove(&control_port);
                self.stop_sessions_of(&vif.name);
            }
            if !self.ports.contains_key(&control_port) {
                dataplane::prepare_port(&control_port, PortRole::Control)?;
                let ifindex = self
                    .dp
                    .attach(&control_port, PortRole::Control, self.mode)?;
                self.ports.insert(
                    control_port.clone(),
                    Port {
                        role: PortRole::Control,
                        ifindex,
                    },
                );
            }
            let control_ifindex = self.ports.get(&control_port).map_or(0, |p| p.ifindex);
            // A re-adopted VIF keeps the state the data plane has (no blip on restart).
            let previous = self.vifs.get(&vif.name).map(|v| v.state);
            let adopted = self
                .dp
                .vif(id)
                .map(|v| v.state)
                .unwrap_or(vif_state::ABSENT);
            let state = previous.unwrap_or(if adopted == vif_state::ABSENT {
                vif_state::CONFIGURING
            } else {
                adopted
            });
            let runtime = VifRuntime {
                id,
                port_ifindex,
                control,
                control_ifindex,
                mac,
                state,
                link_up: self.vifs.get(&vif.name).is_some_and(|v| v.link_up),
                client_macs: self
                    .vifs
                    .get(&vif.name)
                    .map(|v| v.client_macs.clone())
                    .unwrap_or_default(),
            };
            self.dp.upsert_vif(&self.vif_spec(&vif, &runtime))?;
            keys.insert((port_ifindex, vif.vlan, id));
            self.vifs.insert(vif.name.clone(), runtime);
        }
        // (port, VLAN) keys that no configured VIF owns any more (changed VLAN or connection,
        // state left by an earlier run), and table slots no VIF uses.
        let live_ids: BTreeSet<u32> = self.vifs.values().map(|v| v.id).collect();
        for (key, id) in self.dp.vif_keys()? {
            if !keys.contains(&(key.ifindex, key.vlan, id)) {
                self.dp.remove_vif_key(key)?;
                if !live_ids.contains(&id) {
                    self.dp.clear_vif(id)?;
                }
            }
        }
        Ok(())
    }

    fn vif_spec(&self, vif: &config::Vif, rt: &VifRuntime) -> VifSpec {
        let mut cloud_addrs = [None, None];
        for (slot, peer) in cloud_addrs.iter_mut().zip(&vif.peers) {
            *slot = Some(peer.cloud_address);
        }
        VifSpec {
            id: rt.id,
            port_ifindex: rt.port_ifindex,
            vlan: vif.vlan,
            gateway_id: self.gateway_id(&vif.border_gateway),
            state: rt.state,
            control_ifindex: rt.control_ifindex,
            cloud_addrs,
            mac: rt.mac,
        }
    }

    fn remove_vif(&mut self, name: &str) -> Result<(), Error> {
        let Some(rt) = self.vifs.get(name).cloned() else {
            return Ok(());
        };
        tracing::info!(vif = name, "deleting VIF: withdrawing its routes");
        self.dp.set_vif_state(rt.id, vif_state::DELETING)?;
        for table in self.tables.values_mut() {
            table.remove_where(|r| r.target.vif() != Some(name));
        }
        self.vifs.remove(name);
        self.reconcile()?;
        for (key, id) in self.dp.vif_keys()? {
            if id == rt.id {
                self.dp.remove_vif_key(key)?;
            }
        }
        self.dp.clear_vif(rt.id)?;
        self.dp.remove_control_port(rt.control_ifindex)?;
        self.dp.detach(&rt.control.host_if)?;
        self.ports.remove(&rt.control.host_if);
        rt.control.destroy()?;
        Ok(())
    }

    /// Every candidate route: propagated VPC CIDRs, static routes of the config and of the CLI.
    pub(crate) fn rebuild_tables(&mut self) {
        let mut tables: BTreeMap<String, rib::Table> = self
            .config
            .border_gateways
            .iter()
            .map(|g| (g.name.clone(), rib::Table::default()))
            .collect();
        for att in &self.config.vpc_attachments {
            if let Some(t) = tables.get_mut(&att.border_gateway) {
                for prefix in &att.propagate {
                    t.insert(Route {
                        prefix: *prefix,
                        source: Source::Propagated,
                        target: Target::Attachment(att.name.clone()),
                    });
                }
            }
        }
        let statics = self
            .config
            .static_routes
            .iter()
            .map(|r| (r.border_gateway.clone(), r.prefix, r.via.clone()))
            .chain(
                self.state
                    .routes
                    .iter()
                    .map(|r| (r.gateway.clone(), r.prefix, r.via.clone())),
            );
        for (gateway, prefix, via) in statics {
            let target = match self.config.via(&via) {
                Some(config::Via::Vif(_)) => Target::Vif(via),
                Some(config::Via::Attachment(_)) => Target::Attachment(via),
                None => continue,
            };
            if let Some(t) = tables.get_mut(&gateway) {
                t.insert(Route {
                    prefix,
                    source: Source::Static,
                    target,
                });
            }
        }
        for (gateway, route) in self.bgp_routes() {
            if let Some(t) = tables.get_mut(&gateway) {
                t.insert(route);
            }
        }
        self.tables = tables;
    }

    /// Observes links and neighbours, updates VIF states, and writes the next hops and routes
    /// that differ from what the data plane holds.
    pub fn reconcile(&mut self) -> Result<(), Error> {
        // Set until this reconcile completes: a failure is retried on the next tick.
        self.retry = true;
        let ids_before = self.state.ids.clone();
        self.derive_vif_states()?;
        // Next hops: one per attachment, one per (VIF, resolved client router), one group per
        // VIF over its resolved client routers.
        let mut wanted_nh: BTreeMap<u32, NextHopSpec> = BTreeMap::new();
        let mut target_nh: BTreeMap<Target, u32> = BTreeMap::new();
        for att in self.config.vpc_attachments.clone() {
            let id = self.next_hop_id(&format!("att:{}", att.name))?;
            let att_id = self
                .state
                .ids
                .attachments
                .get(&att.name)
                .copied()
                .unwrap_or(0);
            wanted_nh.insert(id, NextHopSpec::Attachment(att_id));
            target_nh.insert(Target::Attachment(att.name.clone()), id);
        }
        // Masks of BGP sessions that routes point to, per VIF.
        let mut masks: BTreeMap<String, BTreeSet<u8>> = BTreeMap::new();
        for table in self.tables.values() {
            for route in table.routes() {
                if let Target::VifPeers(vif, mask) = &route.target {
                    masks.entry(vif.clone()).or_default().insert(*mask);
                }
            }
        }
        for (name, rt) in self.vifs.clone() {
            if rt.state != vif_state::AVAILABLE {
                continue;
            }
            let mut members = Vec::new();
            for (i, mac) in self.eligible_peers(&name) {
                let id = self.next_hop_id(&format!("vif:{name}:{i}"))?;
                wanted_nh.insert(id, NextHopSpec::Vif { vif: rt.id, mac });
                members.push((i, id));
            }
            if members.is_empty() {
                continue;
            }
            let id = self.next_hop_id(&format!("vif:{name}"))?;
            wanted_nh.insert(
                id,
                NextHopSpec::Group(members.iter().map(|(_, id)| *id).collect()),
            );
            target_nh.insert(Target::Vif(name.clone()), id);
            // Every mask the VIF's peers can form, not only those routes use now: when a
            // session is lost, the group of routes it shared is rewritten without it at once,
            // before those routes move to the group of the sessions that remain.
            let peers = self.config.vif(&name).map_or(0, |v| v.peers.len());
            let all_masks: BTreeSet<u8> = (1..(1u8 << peers)).collect();
            for mask in all_masks
                .iter()
                .chain(masks.get(&name).into_iter().flatten())
            {
                let group: Vec<u32> = members
                    .iter()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, id)| *id)
                    .collect();
                if !group.is_empty() {
                    let id = self.next_hop_id(&format!("vif:{name}:m{mask}"))?;
                    wanted_nh.insert(id, NextHopSpec::Group(group));
                    target_nh.insert(Target::VifPeers(name.clone(), *mask), id);
                }
            }
        }
        // Routes: the selection of each table among targets that can carry traffic.
        let mut wanted_routes: BTreeMap<(u32, Ipv4Net), u32> = BTreeMap::new();
        let mut selected: BTreeMap<String, Vec<(Ipv4Net, Target)>> = BTreeMap::new();
        for (gateway, table) in &self.tables {
            let gw = self.gateway_id(gateway);
            let chosen = selected.entry(gateway.clone()).or_default();
            for (prefix, route) in table.select(|t| target_nh.contains_key(t)) {
                if let Some(nh) = target_nh.get(&route.target) {
                    wanted_routes.insert((gw, prefix), *nh);
                    chosen.push((prefix, route.target.clone()));
                }
            }
        }

        // Write order: next hops members first, then groups, then routes; clean up last.
        let nh_diff = rib::diff(&self.installed_next_hops, &wanted_nh);
        let (groups, singles): (Vec<_>, Vec<_>) = nh_diff
            .upsert
            .iter()
            .partition(|(_, spec)| matches!(spec, NextHopSpec::Group(_)));
        for (id, spec) in singles.into_iter().chain(groups) {
            self.dp.set_next_hop(*id, spec)?;
            self.installed_next_hops.insert(*id, spec.clone());
        }
        let route_diff = rib::diff(&self.installed_routes, &wanted_routes);
        if !route_diff.is_empty() {
            tracing::info!(
                add = route_diff.upsert.len(),
                remove = route_diff.remove.len(),
                "updating routes"
            );
        }
        // Removals first (they also make room), then each write on its own: a full map or a
        // failed write leaves that route out (counted, retried on the next tick) instead of
        // stalling every other change.
        let removes: Vec<(u32, Ipv4Net)> = route_diff.remove.clone();
        self.dp.remove_routes(&removes)?;
        for key in &removes {
            self.installed_routes.remove(key);
        }
        let mut failed = 0usize;
        let mut first_error = None;
        for ((gw, prefix), nh) in route_diff.upsert {
            match self.dp.upsert_route(gw, prefix, nh) {
                Ok(()) => {
                    self.installed_routes.insert((gw, prefix), nh);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            tracing::error!(failed, error = %e, "routes not installed; retrying on the next tick");
        }
        // Next hops no installed route uses any more can go.
        let used: BTreeSet<u32> = self.installed_routes.values().copied().collect();
        for id in nh_diff.remove {
            // A group member is never cleared while its group (wanted) still lists it, and a
            // group never while an installed route points to it.
            if used.contains(&id) {
                continue;
            }
            self.dp.clear_next_hop(id)?;
            self.installed_next_hops.remove(&id);
        }
        self.export(&selected);
        self.retry = failed > 0;
        // Next-hop ids no object needs any more are released.
        let live: BTreeSet<u32> = self.installed_next_hops.keys().copied().collect();
        let keep_names: BTreeSet<String> = self
            .config
            .vpc_attachments
            .iter()
            .map(|a| format!("att:{}", a.name))
            .chain(self.config.vifs.iter().flat_map(|v| {
                (0..v.peers.len())
                    .map(move |i| format!("vif:{}:{i}", v.name))
                    .chain((1..4u8).map(move |m| format!("vif:{}:m{m}", v.name)))
                    .chain([format!("vif:{}", v.name)])
            }))
            .collect();
        self.state
            .ids
            .next_hops
            .retain(|name, id| live.contains(id) || keep_names.contains(name));
        // Ids are part of what the pinned maps mean: a restart must find the same ones.
        if self.state.ids != ids_before {
            self.state.save(&self.config.agent.state_dir)?;
        }
        Ok(())
    }

    /// Samples each VIF's connection link state and its client routers' MACs (iproute2
    /// calls: done on the periodic tick, not per event).
    fn sample_vifs(&mut self) -> bool {
        let configs: BTreeMap<String, config::Vif> = self
            .config
            .vifs
            .iter()
            .map(|v| (v.name.clone(), v.clone()))
            .collect();
        let mut changed = false;
        let mut reapply = false;
        for (name, rt) in self.vifs.iter_mut() {
            let Some(vif) = configs.get(name) else {
                continue;
            };
            let interface = self
                .config
                .connection(&vif.connection)
                .map(|c| c.interface.clone())
                .unwrap_or_default();
            let link_up = host::link_up(&interface).unwrap_or(false);
            let clients: Vec<Ipv4Addr> = vif.peers.iter().map(|p| p.client_address).collect();
            let client_macs = rt.control.client_macs(&clients).unwrap_or_else(|e| {
                // Most likely the namespace is gone: the config is applied again to rebuild it.
                tracing::warn!(vif = %name, error = %e, "cannot read the control plane's neighbours");
                reapply = true;
                vec![None; clients.len()]
            });
            changed |= link_up != rt.link_up || client_macs != rt.client_macs;
            rt.link_up = link_up;
            rt.client_macs = client_macs;
        }
        self.reapply |= reapply;
        changed
    }

    /// The peers of a VIF that can take traffic: client MAC resolved and, for BGP, session
    /// established.
    fn eligible_peers(&self, name: &str) -> Vec<(usize, [u8; 6])> {
        let Some(rt) = self.vifs.get(name) else {
            return Vec::new();
        };
        let bgp = self
            .config
            .vif(name)
            .is_some_and(|v| v.routing == Routing::Bgp);
        rt.client_macs
            .iter()
            .enumerate()
            .filter_map(|(i, mac)| Some((i, (*mac)?)))
            .filter(|(i, _)| !bgp || self.bgp.up.contains(&(name.to_owned(), *i)))
            .collect()
    }

    /// VIF states from the last sample and the BGP sessions: `available` when the link is up
    /// and at least one peer can take traffic.
    fn derive_vif_states(&mut self) -> Result<(), Error> {
        let names: Vec<String> = self.vifs.keys().cloned().collect();
        for name in names {
            let Some(rt) = self.vifs.get(&name) else {
                continue;
            };
            let (old, link_up) = (rt.state, rt.link_up);
            let usable = !self.eligible_peers(&name).is_empty();
            let state = if link_up && usable {
                vif_state::AVAILABLE
            } else if old == vif_state::CONFIGURING {
                vif_state::CONFIGURING
            } else {
                vif_state::UNAVAILABLE
            };
            if state != old {
                tracing::info!(vif = %name, from = state_name(old), to = state_name(state), link_up, "VIF state");
                self.dp.set_vif_state(rt.id, state)?;
            }
            if let Some(rt) = self.vifs.get_mut(&name) {
                rt.state = state;
            }
        }
        Ok(())
    }

    /// The periodic check: sample links and neighbours; reconcile when something moved (or
    /// when a previous reconcile failed and must be retried).
    pub fn tick(&mut self) -> Result<(), Error> {
        if self.reapply {
            self.apply_config()?;
            self.reapply = false;
            return Ok(());
        }
        if self.sample_vifs() || self.retry {
            self.reconcile()?;
        }
        Ok(())
    }

    /// Re-reads the config file. A config that does not load, or that leaves a CLI-added route
    /// dangling, changes nothing.
    pub fn reload(&mut self) -> Result<(), Error> {
        let config = config::load(&self.config_path)?;
        for r in &self.state.routes {
            let ok = config
                .via(&r.via)
                .is_some_and(|v| v.border_gateway() == r.gateway)
                && config.border_gateway(&r.gateway).is_some()
                && !(matches!(config.via(&r.via), Some(config::Via::Vif(_)))
                    && config
                        .overlapping_propagated(&r.gateway, r.prefix)
                        .is_some());
            if !ok {
                return Err(Error::Refused(format!(
                    "the new config would leave the route {} via {} in {:?} (added with `forwarder route add`) invalid; delete it first",
                    r.prefix, r.via, r.gateway
                )));
            }
            if config
                .static_routes
                .iter()
                .any(|c| c.border_gateway == r.gateway && c.prefix == r.prefix)
            {
                return Err(Error::Refused(format!(
                    "the new config has a static route for {} in {:?}, which was also added with `forwarder route add`; delete that one first (`forwarder route del --gateway {} {}`)",
                    r.prefix, r.gateway, r.gateway, r.prefix
                )));
            }
        }
        if config.underlay != self.config.underlay || config.agent != self.config.agent {
            return Err(Error::Refused(
                "[agent] and [underlay] changes need a restart of the agent (`systemctl restart forwarder`); nothing was changed".into(),
            ));
        }
        tracing::info!(path = %self.config_path.display(), "reloading the configuration");
        self.config = config;
        // Validated, but applying may still fail half-way (an interface vanished, a map is
        // full): the rest is retried every second until it succeeds.
        let applied = self.apply_config();
        self.reapply = applied.is_err();
        applied
    }

    /// A short clean-up when the agent stops: the socket goes, forwarding stays.
    pub fn socket_path(&self) -> PathBuf {
        self.config.agent.control_socket.clone()
    }
}

/// An error with its causes, `outer: inner: innermost`, for logs and CLI answers.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn check_local_vtep(config: &Config) -> Result<(), Error> {
    let iface = &config.underlay.interface;
    let addrs = host::ip_json(&["-4", "addr", "show", "dev", iface])?;
    let vtep = config.underlay.local_vtep.to_string();
    let has = addrs
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .any(|a| a["local"].as_str() == Some(vtep.as_str()));
    if !has {
        return Err(Error::NoLocalVtep {
            interface: iface.clone(),
            vtep: config.underlay.local_vtep,
        });
    }
    Ok(())
}

/// Runs the agent until SIGTERM/SIGINT: the control socket, a reconcile every second, a
/// reload on SIGHUP. XDP and the pinned maps stay when it returns.
pub async fn run(config_path: &Path) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
    let agent = Agent::start(config_path, events_tx)?;
    let socket = agent.socket_path();
    let listener = control::bind(&socket)
        .map_err(|source| Error::Refused(format!("binding {}: {source}", socket.display())))?;
    tracing::info!(socket = %socket.display(), "agent ready");
    let agent = std::sync::Arc::new(tokio::sync::Mutex::new(agent));
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Refused(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Refused(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Refused(e.to_string()))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = agent.lock().await.reload() {
                    tracing::error!(error = %error_chain(&e), "reload refused; the running configuration is unchanged");
                }
            }
            _ = tick.tick() => {
                if let Err(e) = agent.lock().await.tick() {
                    tracing::error!(error = %error_chain(&e), "reconcile failed; retrying in a second");
                }
            }
            Some(event) = events.recv() => {
                // Everything already queued is taken in one go: a 100k-prefix import is many
                // UPDATEs but only as many reconciliations as the agent can keep up with.
                let mut agent = agent.lock().await;
                agent.handle_bgp_event(event);
                while let Ok(event) = events.try_recv() {
                    agent.handle_bgp_event(event);
                }
                agent.rebuild_tables();
                if let Err(e) = agent.reconcile() {
                    tracing::error!(error = %error_chain(&e), "reconcile after BGP events failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        let served = control::serve_one(stream, async |request| agent.lock().await.handle(request)).await;
                        if let Err(e) = served {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a control connection"),
            },
        }
    }
    tracing::info!("stopping: XDP and pinned maps stay, forwarding continues");
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, "removing the control socket");
    }
    Ok(())
}
