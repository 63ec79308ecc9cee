//! The agent: one owner of all state, on a thread of its own. Control connections, BGP
//! sessions and kernel events (netlink, inotify) run as tasks on the runtime and send it
//! messages; it answers them one at a time. Between the config and the maps: the `model`
//! (built once per load), the `plan` (pure: what the maps should hold, recomputed only for
//! what a message changed) and `apply` (the only writer of the maps, writing only the
//! difference). Map writes and netlink requests block this thread only, never a runtime
//! worker: BGP keepalives and control I/O keep going while a large change is written.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use forwarder_common::vif_state;
use tokio::sync::{mpsc, oneshot};

mod bgp;
mod host;
mod metrics;
mod requests;

use crate::{
    apply::{self, Apply},
    config::{self, Config},
    control::{self, Request, Response},
    dataplane::{self, AttachmentSpec, Dataplane, LoadOptions, VifSpec},
    ids::{AttachmentId, NextHopKey, VifId},
    lock,
    model::{self, Model},
    netlink::{self, Netlink},
    netns::{self, Namespace},
    observe::{self, Monitor, NetEvent},
    plan::{self, Desired, Dirty, Inputs, Observed, VifState},
    rib::Rib,
    state::{self, Owned, State},
    timer::sleep_until_or_never,
    vifcp,
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
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    ControlPlane(#[from] vifcp::Error),
    #[error(transparent)]
    Lock(#[from] lock::Error),
    #[error(transparent)]
    Ids(#[from] crate::ids::Exhausted),
    #[error("control socket")]
    Bind(#[from] control::BindError),
    #[error(
        "underlay interface {interface} does not carry local_vtep {vtep}; add it first (`ip addr add {vtep}/.. dev {interface}`)"
    )]
    NoLocalVtep { interface: String, vtep: Ipv4Addr },
    #[error("{0}")]
    Refused(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
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

/// A VIF's control plane as the agent holds it.
#[derive(Debug)]
struct ControlPlane {
    /// Held open: recognises the namespace, survives its name being removed.
    namespace: Namespace,
    /// Stamped on the neighbour events of this instance.
    generation: u64,
    /// None until the neighbour monitor runs.
    monitor: Option<Monitor>,
    host_ifindex: u32,
    /// `vif0` inside the namespace.
    inner_ifindex: u32,
    mac: [u8; 6],
}

/// What a new model asks of the host and the maps: the part of it not done yet (a reload
/// that failed half-way keeps what is left here and is retried).
#[derive(Debug, Default)]
struct Transition {
    /// VIFs gone from the model: removed once their routes are gone.
    removed: Vec<(VifId, model::Vif)>,
    /// VIFs whose control plane must be built or changed.
    ensure: BTreeSet<VifId>,
    /// VIFs moved to another port, VLAN or border gateway: new client routers, new table.
    moved: BTreeSet<VifId>,
}

impl Transition {
    /// From `old` (None: nothing was running) to `new`, for what `built` already has.
    fn between(old: Option<&Model>, new: &Model, built: &BTreeMap<VifId, ControlPlane>) -> Self {
        let mut t = Self::default();
        if let Some(old) = old {
            t.removed = old
                .vifs
                .iter()
                .filter(|(id, _)| !new.vifs.contains_key(id))
                .map(|(id, v)| (*id, v.clone()))
                .collect();
        }
        for (id, v) in &new.vifs {
            let before = old.and_then(|o| o.vifs.get(id));
            let changed = before
                .is_none_or(|o| o.peers != v.peers || o.netns != v.netns || o.host_if != v.host_if);
            if changed || !built.contains_key(id) {
                t.ensure.insert(*id);
            }
            if before
                .is_some_and(|o| o.port != v.port || o.vlan != v.vlan || o.gateway != v.gateway)
            {
                t.moved.insert(*id);
            }
        }
        t
    }

    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.ensure.is_empty() && self.moved.is_empty()
    }
}

/// Work that failed and is tried again on the retry timer, with a growing delay while it
/// keeps failing.
#[derive(Debug, Default)]
struct Retry {
    /// Control planes to build or repair.
    vifs: BTreeSet<VifId>,
    /// Ports to attach.
    ports: BTreeSet<String>,
    /// Namespaces whose neighbours must be read again.
    resync: BTreeSet<VifId>,
    /// A model not fully applied yet (a reload or a start that failed half-way).
    model: Option<Transition>,
    /// The agent's own links must be read again.
    links: bool,
    /// Consecutive retries that did not finish.
    failures: u32,
}

impl Retry {
    fn is_empty(&self) -> bool {
        self.vifs.is_empty()
            && !self.links
            && self.ports.is_empty()
            && self.resync.is_empty()
            && self.model.is_none()
    }

    /// 0.5 s, doubling while it keeps failing, at most 30 s.
    fn delay(&self) -> Duration {
        Duration::from_millis(500)
            .saturating_mul(1 << self.failures.min(6))
            .min(Duration::from_secs(30))
    }
}

pub struct Agent {
    config_path: PathBuf,
    config: Config,
    model: Model,
    state: State,
    apply: Apply,
    /// Requests in the agent's own namespace.
    host: Netlink,
    observed: Observed,
    /// Names of the agent's namespace's links by ifindex (a renamed port is a gone port).
    link_names: std::collections::HashMap<u32, String>,
    /// The attachments' underlay next hops as resolved from the kernel.
    underlay: crate::underlay::Underlay,
    rib: Rib,
    desired: Desired,
    bgp: bgp::BgpState,
    speaker: crate::bgp::Speaker,
    control_planes: BTreeMap<VifId, ControlPlane>,
    net_tx: mpsc::Sender<observe::Stamped>,
    /// Link events of the agent's namespace and removals under /run/netns.
    _monitors: Vec<Monitor>,
    next_generation: u64,
    /// The neighbour-table advice was logged once.
    neighbour_table_warned: bool,
    /// The state file is behind what is in memory.
    state_changed: bool,
    histograms: crate::metrics::Histograms,
    /// The VIF being captured, and where captures give the ring buffer back.
    capture: Option<String>,
    capture_done: Option<mpsc::Sender<crate::capture::Done>>,
    /// Arrival times of the kernel events planned by the next flush.
    event_times: Vec<tokio::time::Instant>,
    retry: Retry,
    /// Changes seen but not planned yet (a batch of events is planned once).
    dirty: Dirty,
    started: Instant,
    _locks: lock::Locks,
}

/// What the owner loop receives from the control server.
pub struct ControlMsg {
    pub request: Request,
    pub reply: oneshot::Sender<control::Reply>,
}

impl Agent {
    /// Loads the config and the persisted state, re-adopts (or creates) the pinned data
    /// plane, builds the control planes, attaches every port and programs the maps. Runs on
    /// the owner thread, inside the runtime.
    pub fn start(
        config_path: &Path,
        config: Config,
        events: mpsc::Sender<crate::bgp::Event>,
        net_tx: mpsc::Sender<observe::Stamped>,
    ) -> Result<Self, Error> {
        let agent_cfg = &config.agent;
        let mut locks = lock::acquire(&agent_cfg.state_dir, &agent_cfg.control_socket)?;
        control::check_free(&agent_cfg.control_socket)?;
        // Only an agent that holds the other two locks creates the pin directory.
        Dataplane::prepare_pin_dir(&agent_cfg.pin_dir)?;
        locks.lock_pins(&agent_cfg.pin_dir)?;
        let mut state = State::load(&agent_cfg.state_dir)?;
        let mut host = Netlink::open()?;
        check_local_vtep(&config, &mut host)?;
        let dp = Dataplane::load(&LoadOptions {
            pin_dir: Some(agent_cfg.pin_dir.clone()),
            max_routes: Some(agent_cfg.route_capacity),
        })?;
        let apply = Apply::new(dp, xdp_mode(agent_cfg.xdp_mode))?;
        if state.owned.is_none() {
            // A state file of the version before: what it knew of VIFs is what it made.
            state.owned = Some(Owned {
                namespaces: state
                    .ids
                    .vifs
                    .iter()
                    .map(|(name, _)| format!("{}{name}", agent_cfg.netns_prefix))
                    .collect(),
                links: state
                    .ids
                    .vifs
                    .iter()
                    .map(|(_, id)| format!("{}{id}", model::CONTROL_IF_PREFIX))
                    .collect(),
            });
        }
        let model = Model::build(&config, &state.routes, &mut state.ids)?;
        // Subscribed before the first read of the links: no change falls in between.
        let link_socket = observe::link_socket().map_err(|source| Error::Io {
            what: "subscribing to link events".into(),
            source,
        })?;
        let mut monitors = vec![
            observe::spawn(link_socket, observe::Scope::Host, net_tx.clone()).map_err(
                |source| Error::Io {
                    what: "watching link events".into(),
                    source,
                },
            )?,
        ];
        std::fs::create_dir_all(netns::RUN_DIR).map_err(|source| Error::Io {
            what: format!("creating {}", netns::RUN_DIR),
            source,
        })?;
        monitors.push(
            observe::netns_dir(net_tx.clone()).map_err(|source| Error::Io {
                what: format!("watching {}", netns::RUN_DIR),
                source,
            })?,
        );
        let mut config = config;
        forget_static_routes(&mut config);
        let mut agent = Self {
            config_path: config_path.to_owned(),
            config,
            model,
            state,
            apply,
            host,
            observed: Observed::default(),
            link_names: std::collections::HashMap::new(),
            underlay: crate::underlay::Underlay::default(),
            rib: Rib::default(),
            desired: Desired::default(),
            bgp: bgp::BgpState::default(),
            speaker: crate::bgp::Speaker::new(events),
            control_planes: BTreeMap::new(),
            net_tx,
            _monitors: monitors,
            next_generation: 0,
            neighbour_table_warned: false,
            state_changed: false,
            histograms: crate::metrics::Histograms::new(),
            capture: None,
            capture_done: None,
            event_times: Vec::new(),
            retry: Retry::default(),
            dirty: Dirty::default(),
            started: Instant::now(),
            _locks: locks,
        };
        // The plan starts from the states the data plane has: a re-adopted VIF keeps its
        // state until the plan decides otherwise (no blip on restart).
        for id in agent.model.vifs.keys() {
            if let Some(s) = agent.apply.vif_state(id.0).and_then(VifState::from_value) {
                agent.desired.vifs.insert(*id, s);
            }
        }
        // A capture a killed agent left on has no reader any more.
        agent.apply.set_capture(0)?;
        agent.read_links()?;
        // BGP routes the maps kept through the restart stay, stale, until their sessions are
        // back (graceful restart); the sessions tell their peers that we kept forwarding.
        let kept = agent.recover_stale_routes();
        let restarted = !agent.apply.vif_ids().is_empty();
        if kept > 0 {
            tracing::info!(
                routes = kept,
                "BGP routes kept from the pinned maps until their sessions are back"
            );
        }
        agent
            .speaker
            .set_restarted(restarted && agent.config.agent.bgp_graceful_restart);
        agent.take_bfd_from_the_data_plane();
        let transition = Transition::between(None, &agent.model, &agent.control_planes);
        let applied = agent.apply_model(transition);
        agent.speaker.set_restarted(false);
        applied?;
        agent.save_state()?;
        Ok(agent)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn save_state(&mut self) -> Result<(), Error> {
        self.state_changed = false;
        Ok(self.state.save(&self.config.agent.state_dir)?)
    }

    /// Saves the state file if something changed it since the last save (once per message
    /// handled, however many ids it gave out).
    fn save_if_changed(&mut self) -> Result<(), Error> {
        if self.state_changed {
            self.save_state()?;
        }
        Ok(())
    }

    fn owned(&mut self) -> &mut Owned {
        self.state.owned.get_or_insert_with(Owned::default)
    }

    /// Brings everything in line with `self.model`: ports, attachments, control planes and
    /// VIF entries, sessions, then a full plan; what `t` removed goes last, once its routes are
    /// gone. On an error, what is left of `t` is kept for the retry timer.
    fn apply_model(&mut self, mut t: Transition) -> Result<(), Error> {
        let result = self.apply_transition(&mut t);
        if result.is_err() || !t.is_empty() {
            let pending = self.retry.model.get_or_insert_with(Transition::default);
            pending.removed.extend(t.removed);
            pending.ensure.extend(t.ensure);
            pending.moved.extend(t.moved);
        }
        result
    }

    fn apply_transition(&mut self, t: &mut Transition) -> Result<(), Error> {
        // A VIF on its way out stops taking traffic at once (its sessions stop below).
        for (id, v) in &t.removed {
            tracing::info!(vif = %v.name, "deleting VIF: withdrawing its routes");
            self.apply.set_vif_state(id.0, vif_state::DELETING)?;
        }
        // A moved VIF has new client routers and maybe a new table: its sessions start
        // over (with the new gateway's export), its old neighbours go.
        let moved = std::mem::take(&mut t.moved);
        for id in &moved {
            self.stop_sessions_of(*id);
        }
        self.fit_neighbour_table();
        self.sync_ports();
        self.sync_attachments()?;
        // Recorded before they are made: whatever a crash leaves is known to be ours.
        let names: Vec<(String, String)> = t
            .ensure
            .iter()
            .filter_map(|id| self.model.vifs.get(id))
            .map(|v| (v.netns.clone(), v.host_if.clone()))
            .collect();
        let owned = self.owned();
        let mut recorded = false;
        for (netns, host_if) in names {
            recorded |= owned.namespaces.insert(netns);
            recorded |= owned.links.insert(host_if);
        }
        if recorded {
            self.save_state()?;
        }
        for id in moved {
            t.ensure.remove(&id);
            self.observed.clients.retain(|(v, _), _| *v != id);
            if let Err(e) = self.resync_vif(id, true) {
                tracing::error!(vif = %self.model.vif_name(id), error = %error_chain(&e), "control plane not ready; retrying");
                self.retry.vifs.insert(id);
            }
        }
        for id in std::mem::take(&mut t.ensure) {
            if let Err(e) = self.ensure_vif(id) {
                tracing::error!(vif = %self.model.vif_name(id), error = %error_chain(&e), "control plane not ready; retrying");
                self.retry.vifs.insert(id);
            }
        }
        // Entries whose port, VLAN or gateway changed (a write only where they differ).
        for id in self.model.vifs.keys().copied().collect::<Vec<_>>() {
            self.write_vif(id)?;
        }
        self.sync_sessions();
        // The BGP candidates carry over (the rib is where they are kept), except those of
        // VIFs gone from the model or moved to another gateway.
        let learned: Vec<_> = self.rib.learned().collect();
        self.rib = plan::build_rib(&self.model, learned);
        self.replan(Dirty::all())?;
        // Gone from the model and from the routes: now from the maps and the host.
        while let Some((id, v)) = t.removed.pop() {
            if let Err(e) = self.remove_vif_objects(id, &v) {
                t.removed.push((id, v));
                return Err(e);
            }
        }
        self.remove_leftovers()?;
        self.state_changed = true;
        Ok(())
    }

    /// The VIF table entry of `id` as the model, its control plane and its state make it.
    fn vif_spec(&self, id: VifId) -> Option<VifSpec> {
        let v = self.model.vifs.get(&id)?;
        let cp = self.control_planes.get(&id);
        // Each family's pairs in their order: IPv4 in the VIF table, IPv6 beside it.
        let mut cloud_addrs = [None, None];
        let v4 = v.peers.iter().filter_map(|p| match p.cloud_address {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        });
        for (slot, cloud) in cloud_addrs.iter_mut().zip(v4) {
            *slot = Some(cloud);
        }
        let mut addrs6 = forwarder_common::VifAddrs6::default();
        let v6 = v
            .peers
            .iter()
            .filter_map(|p| match (p.cloud_address, p.client_address) {
                (std::net::IpAddr::V6(cloud), std::net::IpAddr::V6(client)) => {
                    Some((cloud, client))
                }
                _ => None,
            });
        for (i, (cloud, client)) in v6.take(2).enumerate() {
            addrs6.cloud[i] = cloud.octets();
            addrs6.client[i] = client.octets();
        }
        // Until the plan and the control plane are known (a restart re-adopting the maps),
        // what the map holds: a half-known VIF is never written over a working one.
        let programmed = self.apply.vif_entry(id.0);
        let state = self
            .desired
            .vifs
            .get(&id)
            .map(|s| s.value())
            .or(programmed.map(|e| e.state))
            .unwrap_or(vif_state::CONFIGURING);
        let (control_ifindex, mac) = match (cp, programmed) {
            (Some(c), _) => (c.host_ifindex, c.mac),
            (None, Some(e)) => (e.control_ifindex, e.mac),
            (None, None) => (0, [0; 6]),
        };
        // A port not attached (yet) in this run: keep the port the entry has.
        let port_ifindex = match (self.apply.port(&v.port), programmed) {
            (Some(p), _) => p.ifindex,
            (None, Some(e)) => e.port_ifindex,
            (None, None) => 0,
        };
        Some(VifSpec {
            id: id.0,
            port_ifindex,
            vlan: v.vlan,
            gateway_id: v.gateway.0,
            state,
            control_ifindex,
            cloud_addrs,
            addrs6,
            mac,
            policy: self.vif_policy(v),
        })
    }

    /// What the data plane enforces for a VIF: its configured policy, with the MTU no larger
    /// than its connection port's (a larger frame would be dropped by the kernel on the way
    /// out, uncounted; capped, it gets ICMP fragmentation needed with the MTU that fits).
    fn vif_policy(&self, v: &model::Vif) -> forwarder_common::VifPolicy {
        let mut policy = v.policy(&self.config.agent);
        let port_mtu = self.observed.links.get(&v.port).map_or(0, |l| l.mtu);
        if port_mtu != 0 {
            policy.mtu = policy.mtu.min(u16::try_from(port_mtu).unwrap_or(u16::MAX));
        }
        policy
    }

    fn write_vif(&mut self, id: VifId) -> Result<(), Error> {
        if let Some(spec) = self.vif_spec(id) {
            let configured = self
                .model
                .vifs
                .get(&id)
                .map_or(0, |v| v.policy(&self.config.agent).mtu);
            if spec.policy.mtu < configured && self.apply.vif_policy(id.0).mtu != spec.policy.mtu {
                tracing::warn!(
                    vif = %self.model.vif_name(id),
                    mtu = configured,
                    port_mtu = spec.policy.mtu,
                    "the VIF's mtu is larger than its connection port's: the port's applies (raise the port's MTU)"
                );
            }
            self.apply.set_vif(&spec)?;
        }
        Ok(())
    }

    fn attachment_spec(&self, id: AttachmentId) -> Option<AttachmentSpec> {
        let a = self.model.attachments.get(&id)?;
        Some(AttachmentSpec {
            id: id.0,
            gateway_id: a.gateway.0,
            vni: a.vni,
            local_vtep: self.model.local_vtep,
            remote_vtep: a.remote_vtep,
            underlay_ifindex: self
                .apply
                .port(&self.model.underlay)
                .map(|p| p.ifindex)
                .or(self
                    .apply
                    .attachment_entry(id.0)
                    .map(|e| e.underlay_ifindex))
                .unwrap_or(0),
            router_mac: a.router_mac,
        })
    }

    fn sync_attachments(&mut self) -> Result<(), Error> {
        for id in self.model.attachments.keys().copied().collect::<Vec<_>>() {
            if let Some(spec) = self.attachment_spec(id) {
                self.apply.set_attachment(&spec)?;
                if let Err(e) = dataplane::track_vtep(spec.remote_vtep) {
                    tracing::warn!(attachment = %self.model.attachments[&id].name, error = %error_chain(&e), "cannot keep the VTEP's neighbour resolved");
                }
            }
        }
        self.underlay.all_dirty();
        self.refresh_underlay();
        Ok(())
    }

    /// Invalidates every resolved underlay next hop (XDP asks the FIB per packet).
    fn release_underlay(&mut self) {
        let all: Vec<AttachmentId> = self.model.attachments.keys().copied().collect();
        self.hand_underlay_to_the_fib(&all);
    }

    /// Invalidates the underlay next hops of `ids`: XDP asks the FIB for them.
    fn hand_underlay_to_the_fib(&mut self, ids: &[AttachmentId]) {
        for id in ids {
            if let Err(e) = self
                .apply
                .set_underlay(id.0, forwarder_common::UnderlayHop::default())
            {
                tracing::warn!(attachment = %self.model.attachments.get(id).map_or("?", |a| a.name.as_str()), error = %error_chain(&e), "cannot hand the underlay next hop back to the FIB");
            }
        }
    }

    /// Resolves again the underlay next hops that events touched and writes those that
    /// changed; one that cannot be resolved is left to XDP's FIB lookup (logged once).
    fn refresh_underlay(&mut self) {
        let existing: BTreeSet<AttachmentId> = self.model.attachments.keys().copied().collect();
        let dirty = self.underlay.take_dirty(&existing);
        if dirty.is_empty() {
            return;
        }
        let opened = crate::netlink::Netlink::open().and_then(|mut nl| {
            let links = nl.links()?;
            Ok((nl, links))
        });
        let (mut nl, links) = match opened {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot resolve the underlay next hops; XDP asks the FIB meanwhile");
                let dirty: Vec<AttachmentId> = dirty.into_iter().collect();
                for id in &dirty {
                    self.underlay.dirty(*id);
                }
                self.hand_underlay_to_the_fib(&dirty);
                self.retry.links = true;
                return;
            }
        };
        let underlay_port = self
            .apply
            .port(&self.model.underlay)
            .map_or(0, |p| p.ifindex);
        // Attachments toward one VTEP share its resolution.
        let mut by_vtep: std::collections::HashMap<std::net::Ipv4Addr, crate::underlay::Resolved> =
            std::collections::HashMap::new();
        for id in dirty {
            let Some(a) = self.model.attachments.get(&id) else {
                continue;
            };
            let resolved = match by_vtep.get(&a.remote_vtep) {
                Some(r) => *r,
                None => match crate::underlay::resolve(
                    &mut nl,
                    self.model.local_vtep,
                    a.remote_vtep,
                    underlay_port,
                    &links,
                ) {
                    Ok(r) => {
                        by_vtep.insert(a.remote_vtep, r);
                        r
                    }
                    Err(e) => {
                        tracing::debug!(attachment = %a.name, error = %error_chain(&e), "underlay next hop not resolved; XDP asks the FIB");
                        crate::underlay::Resolved::unresolved()
                    }
                },
            };
            let before = self.underlay.resolved.insert(id, resolved);
            if before.map(|b| b.why_not) != Some(resolved.why_not)
                && let Some(why) = resolved.why_not
            {
                tracing::info!(attachment = %a.name, reason = why, "encapsulation asks the kernel's FIB per packet");
            }
            if let Err(e) = self.apply.set_underlay(id.0, resolved.hop) {
                tracing::error!(attachment = %a.name, error = %error_chain(&e), "writing the underlay next hop failed; retrying");
                self.underlay.dirty(id);
            }
        }
    }

    /// Objects of earlier configs or runs that the model no longer has: attachment and VIF
    /// slots, pinned links, and the namespaces and links this agent made. Ids are released
    /// once nothing in the maps refers to them.
    fn remove_leftovers(&mut self) -> Result<(), Error> {
        for id in self.apply.attachment_ids() {
            if !self.model.attachments.contains_key(&AttachmentId(id)) {
                tracing::info!(
                    attachment = id,
                    "removing an attachment no longer configured"
                );
                self.apply.remove_attachment(id)?;
            }
        }
        for id in self.apply.vif_ids() {
            if !self.model.vifs.contains_key(&VifId(id)) {
                tracing::info!(vif = id, "removing a VIF slot no longer configured");
                self.apply.remove_vif(id)?;
            }
        }
        let mut wanted: BTreeSet<String> = self.model.ports.keys().cloned().collect();
        wanted.extend(self.model.vifs.values().map(|v| v.host_if.clone()));
        let attached: Vec<String> = self.apply.ports().map(|(n, _)| n.to_owned()).collect();
        for name in self.apply.pinned_ports().into_iter().chain(attached) {
            if !wanted.contains(&name) {
                tracing::info!(port = %name, "detaching XDP from a port no longer configured");
                self.apply.detach(&name)?;
            }
        }
        let namespaces: BTreeSet<String> =
            self.model.vifs.values().map(|v| v.netns.clone()).collect();
        let owned = self.owned().clone();
        for name in owned.namespaces.difference(&namespaces) {
            tracing::info!(netns = %name, "deleting a control namespace no VIF uses");
            netns::delete(name)?;
            self.owned().namespaces.remove(name);
        }
        for name in owned.links.difference(&wanted) {
            if let Some(link) = self.host.link(name)? {
                tracing::info!(link = %name, "deleting a control veth no VIF uses");
                self.host.delete_link(link.index)?;
            }
            self.owned().links.remove(name);
        }
        // Ids of objects gone from the config, once nothing in the maps refers to them any
        // more (a slot, a key, a next hop, a route): a new object never inherits a leftover.
        let vif_slots = self.apply.vif_ids();
        let att_slots = self.apply.attachment_ids();
        let mut nh_owners: BTreeSet<VifId> = BTreeSet::new();
        let mut nh_atts: BTreeSet<AttachmentId> = BTreeSet::new();
        for (key, id) in self.state.ids.next_hops.iter() {
            if self.apply.next_hop_in_use(id) {
                match key {
                    NextHopKey::Attachment { attachment } => {
                        nh_atts.insert(*attachment);
                    }
                    _ => nh_owners.extend(key.vifs()),
                }
            }
        }
        let ids = &mut self.state.ids;
        for (name, id) in ids
            .vifs
            .iter()
            .map(|(n, id)| (n.clone(), id))
            .collect::<Vec<_>>()
        {
            if self.model.vif_id(&name).is_none()
                && !vif_slots.contains(&id)
                && !nh_owners.contains(&VifId(id))
            {
                ids.vifs.release(&name);
            }
        }
        for (name, id) in ids
            .attachments
            .iter()
            .map(|(n, id)| (n.clone(), id))
            .collect::<Vec<_>>()
        {
            if self.model.attachment_id(&name).is_none()
                && !att_slots.contains(&id)
                && !nh_atts.contains(&AttachmentId(id))
            {
                ids.attachments.release(&name);
            }
        }
        for (name, id) in ids
            .gateways
            .iter()
            .map(|(n, id)| (n.clone(), id))
            .collect::<Vec<_>>()
        {
            let routes = self.apply.gateway_routes(crate::ids::GatewayId(id));
            // A shortcut that failed to go may still be keyed by the gateway's id.
            if self.model.gateway_id(&name).is_none()
                && routes.installed == 0
                && routes.pending == 0
                && self.apply.routes24_settled()
            {
                ids.gateways.release(&name);
            }
        }
        // Next-hop slots of objects gone from the config, and slots an earlier run left,
        // once the map no longer uses them.
        let unused: Vec<NextHopKey> = ids
            .next_hops
            .iter()
            .filter(|(key, id)| {
                let gone = match key {
                    NextHopKey::Attachment { attachment } => {
                        !self.model.attachments.contains_key(attachment)
                    }
                    NextHopKey::Pinned { .. } => true,
                    // Sets come and go with the customers' routes: kept only while planned.
                    NextHopKey::Multipath { .. } => !self.desired.next_hops.contains_key(key),
                    _ => key.vif().is_some_and(|v| !self.model.vifs.contains_key(&v)),
                };
                gone && !self.apply.next_hop_in_use(*id)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in unused {
            ids.next_hops.release(&key);
        }
        Ok(())
    }

    /// Plans what `dirty` (and what was already waiting) names and writes the difference;
    /// tells the sessions what to announce or withdraw.
    fn replan(&mut self, dirty: Dirty) -> Result<(), Error> {
        let mut dirty_all = std::mem::take(&mut self.dirty);
        dirty_all.all |= dirty.all;
        dirty_all.vifs.extend(dirty.vifs);
        dirty_all.prefixes.extend(dirty.prefixes);
        if dirty_all.is_empty() {
            self.send_full_exports();
            return Ok(());
        }
        let inputs = Inputs {
            model: &self.model,
            observed: &self.observed,
            sessions_up: &self.bgp.forwarding,
            rib: &self.rib,
        };
        let changes = self.desired.update(&inputs, &dirty_all);
        for (vif, s) in &changes.vifs {
            tracing::info!(vif = %self.model.vif_name(*vif), to = s.name(), "VIF state");
        }
        // The maps first, then the sessions; the sessions are told whatever happened to the
        // maps (the export is the selection, and a failed write is retried).
        let started = Instant::now();
        let written = if changes.is_empty() {
            Ok(())
        } else {
            self.apply
                .sync(&self.desired, &changes, &mut self.state.ids.next_hops)
                .map(|report| {
                    if !changes.routes.is_empty() {
                        tracing::debug!(
                            routes = changes.routes.len(),
                            written = report.written,
                            removed = report.removed,
                            "routes updated"
                        );
                    }
                    self.after_apply(&report);
                })
        };
        self.export_changes(&changes);
        if !changes.is_empty() {
            self.histograms
                .plan_apply
                .observe(started.elapsed().as_secs_f64());
        }
        // A large batch (a full table arriving, a reload) leaves its working memory freed but
        // mapped; hand it back. Small batches, the usual ones, do not pay for it.
        let large = changes.routes.len() >= LARGE_BATCH;
        drop(changes);
        if large {
            release_freed_memory();
        }
        Ok(written?)
    }

    fn after_apply(&mut self, report: &apply::Report) {
        for e in &report.errors {
            tracing::error!(error = %e, "map write failed; retrying");
        }
        // Ids are part of what the pinned maps mean: a restart must find the same ones.
        self.state_changed |= report.ids_changed;
    }

    /// When the retry timer should fire, if there is anything to retry.
    fn retry_due(&self) -> Option<Duration> {
        if !self.retry.is_empty() {
            Some(self.retry.delay())
        } else if self.apply.has_pending() {
            Some(Duration::from_secs(2))
        } else {
            None
        }
    }

    /// Tries again what failed: a model applied in part, ports, control planes, neighbour
    /// reads, map writes. What still fails waits longer next time.
    fn on_retry(&mut self) -> Result<(), Error> {
        let result = self.retry_pass();
        if result.is_err() || !self.retry.is_empty() {
            self.retry.failures = self.retry.failures.saturating_add(1);
        } else {
            self.retry.failures = 0;
        }
        result
    }

    fn retry_pass(&mut self) -> Result<(), Error> {
        self.refresh_underlay();
        if let Some(t) = self.retry.model.take() {
            self.apply_model(t)?;
        }
        if std::mem::take(&mut self.retry.links)
            && let Err(e) = self.read_links()
        {
            self.retry.links = true;
            return Err(e);
        }
        for name in std::mem::take(&mut self.retry.ports) {
            self.attach_port(&name);
        }
        for id in std::mem::take(&mut self.retry.vifs) {
            if !self.model.vifs.contains_key(&id) {
                continue;
            }
            if let Err(e) = self.ensure_vif(id) {
                tracing::warn!(vif = %self.model.vif_name(id), error = %error_chain(&e), "control plane still not ready");
                self.retry.vifs.insert(id);
            }
        }
        for id in std::mem::take(&mut self.retry.resync) {
            if let Err(e) = self.resync_vif(id, false) {
                tracing::warn!(vif = %self.model.vif_name(id), error = %error_chain(&e), "reading the neighbours again failed");
                self.retry.resync.insert(id);
            }
        }
        self.sync_sessions();
        self.replan(Dirty::default())?;
        let report = self
            .apply
            .retry(&self.desired, &mut self.state.ids.next_hops)?;
        self.after_apply(&report);
        Ok(())
    }

    /// Re-reads the config file. A config that does not load, that leaves a CLI-added route
    /// dangling, or that changes `[agent]` or `[underlay]` changes nothing.
    pub fn reload(&mut self) -> Result<(), Error> {
        let config = config::load(&self.config_path)?;
        for r in &self.state.routes {
            let via = config.via(&r.via);
            let ok = via.is_some_and(|v| v.border_gateway() == r.gateway)
                && config.border_gateway(&r.gateway).is_some()
                && !(matches!(via, Some(config::Via::Vif(_)))
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
        let model = Model::build(&config, &self.state.routes, &mut self.state.ids)?;
        tracing::info!(path = %self.config_path.display(), "reloading the configuration");
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
        notify(&reloading);
        self.config = config;
        forget_static_routes(&mut self.config);
        let old = std::mem::replace(&mut self.model, model);
        // Validated, but applying may still fail half-way (an interface vanished, a map is
        // full): the rest is retried until it succeeds.
        let transition = Transition::between(Some(&old), &self.model, &self.control_planes);
        let applied = self.apply_model(transition);
        let saved = self.save_state();
        drop(old);
        release_freed_memory();
        notify(&[sd_notify::NotifyState::Ready]);
        applied.and(saved)
    }

    /// The control socket's access rule (the group resolved by name).
    pub fn access(&self) -> Result<control::Access, Error> {
        let Some(name) = &self.config.agent.control_group else {
            return Ok(control::Access::default());
        };
        let c = std::ffi::CString::new(name.as_str())
            .map_err(|_| Error::Refused(format!("control_group {name:?} contains a NUL byte")))?;
        // SAFETY: getgrnam reads the group database; the result is copied out at once and
        // only the agent's owner thread calls it.
        let gid = unsafe {
            let group = libc::getgrnam(c.as_ptr());
            if group.is_null() {
                None
            } else {
                Some((*group).gr_gid)
            }
        };
        gid.map(|gid| control::Access { group: Some(gid) })
            .ok_or_else(|| Error::Refused(format!("[agent] control_group {name:?}: no such group")))
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.agent.control_socket.clone()
    }

    /// Handles one kernel event; a batch is planned together by the caller.
    fn on_net_event(
        &mut self,
        (arrived, event): (tokio::time::Instant, NetEvent),
    ) -> Result<(), Error> {
        self.event_times.push(arrived);
        self.handle_net_event(event)
    }

    /// Plans what the last batch of messages changed.
    fn flush(&mut self) -> Result<(), Error> {
        self.refresh_underlay();
        let result = self.replan(Dirty::default());
        let now = tokio::time::Instant::now();
        for arrived in self.event_times.drain(..) {
            self.histograms
                .event_to_map
                .observe(now.duration_since(arrived).as_secs_f64());
        }
        result
    }
}

fn check_local_vtep(config: &Config, host: &mut Netlink) -> Result<(), Error> {
    let iface = &config.underlay.interface;
    let vtep = config.underlay.local_vtep;
    let missing = || Error::NoLocalVtep {
        interface: iface.clone(),
        vtep,
    };
    let link = host.link(iface)?.ok_or_else(missing)?;
    if !host
        .addresses(link.index)?
        .iter()
        .any(|(addr, _)| *addr == vtep)
    {
        return Err(missing());
    }
    Ok(())
}

/// A killed agent's successor may have many sockets open: control planes, monitors, BGP
/// listeners, pinned links. Raise the soft limit of open files to the hard one.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                tracing::warn!("could not raise the open files limit");
            }
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT: the process-wide fix-ups (before any thread), the
/// runtime, the owner thread, the control server. XDP and the pinned maps stay when it
/// returns.
pub fn main(config_path: &Path) -> Result<(), Error> {
    fixed_malloc_thresholds();
    let config = config::load(config_path)?;
    if let Some(note) = netns::join_parent_mount_namespace(&config.agent.pin_dir)? {
        tracing::info!("{note}");
    }
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // BGP sessions and control connections; the owner has its own thread.
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the runtime".into(),
            source,
        })?;
    let handle = runtime.handle().clone();
    let path = config_path.to_owned();
    let owner = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || handle.block_on(run(path, config)))
        .map_err(|source| Error::Io {
            what: "starting the owner thread".into(),
            source,
        })?;
    let result = owner
        .join()
        .unwrap_or_else(|_| Err(Error::Refused("the agent's owner thread panicked".into())));
    // Session tasks end with the runtime; forwarding goes on from the pinned maps.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// BGP events (one per UPDATE) handled between two looks at everything else.
const BGP_EVENT_BATCH: usize = 256;

/// The owner loop.
/// Route changes in one plan from which the agent returns freed memory afterwards.
const LARGE_BATCH: usize = 50_000;

/// New /24 shortcuts wait for the owner loop to be this long without other work (a table
/// arriving goes into the trie first, at full speed)...
const NEW24_QUIET: Duration = Duration::from_millis(20);
/// ...or, under constant churn, this long at most; they are then written a few at a time.
const NEW24_MAX_WAIT: Duration = Duration::from_secs(1);
/// Shortcuts written in one go when idle (tens of ms of work), and when the wait ran out.
const NEW24_IDLE_CHUNK: usize = 65_536;
const NEW24_BUSY_CHUNK: usize = 4_096;

/// The config's static routes, once the model holds them: nothing reads them again (a reload
/// reads the new file's), and at a million routes they are the largest thing the agent would
/// keep (two names and a prefix each).
fn forget_static_routes(config: &mut Config) {
    config.static_routes = Vec::new();
}

/// Hands the heap's free pages back to the kernel. Loading a large config builds a parse
/// tree and a first full plan many times the size of what the agent keeps (1M static routes:
/// hundreds of MiB); glibc keeps what was freed mapped, so without this the agent's RSS
/// stays at its peak for good.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas; no pointer
    // held anywhere is affected.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocations of [`MMAP_THRESHOLD`] and more get pages of their own, and each arena gives
/// back free memory above [`TRIM_THRESHOLD`] at its top. glibc otherwise raises both as
/// large blocks are freed (up to 32 and 64 MiB): after a million-route load each thread's
/// arena kept up to 64 MiB of freed memory resident, which `malloc_trim` does not return
/// for any arena but the main one (1M static routes: RSS 354 MiB, 260 MiB of it in use).
fn fixed_malloc_thresholds() {
    #[cfg(target_env = "gnu")]
    {
        const MMAP_THRESHOLD: libc::c_int = 4 << 20;
        const TRIM_THRESHOLD: libc::c_int = 8 << 20;
        // SAFETY: mallopt only changes the allocator's parameters; called before any
        // thread exists.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !ok {
            tracing::warn!(
                "could not set the allocator's thresholds; RSS may stay high after large loads"
            );
        }
    }
}

async fn run(config_path: PathBuf, config: Config) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let (events_tx, mut events) = mpsc::channel(1024);
    let (net_tx, mut net_rx) = mpsc::channel(4096);
    let (control_tx, mut control_rx) = mpsc::channel::<ControlMsg>(64);
    let (capture_tx, mut captures) = mpsc::channel::<crate::capture::Done>(1);
    let mut agent = Agent::start(&config_path, config, events_tx, net_tx)?;
    release_freed_memory();
    agent.capture_done = Some(capture_tx);
    let socket = agent.socket_path();
    let listener = control::bind(&socket, agent.access()?)?;
    let server = tokio::spawn(control_server(listener, agent.access()?, control_tx));
    let (scrape_tx, mut scrapes) = mpsc::channel::<crate::metrics::Scrape>(8);
    let metrics_server = match agent.config.agent.metrics_listen {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).map_err(|source| Error::Io {
                what: format!("metrics_listen {addr}"),
                source,
            })?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::serve(listener, scrape_tx)))
        }
        None => None,
    };
    tracing::info!(socket = %socket.display(), vifs = agent.model.vifs.len(), "agent ready");
    // Maps adopted, ports attached, control planes built, socket answering: tell systemd.
    let status = format!(
        "{} VIFs, {} ports; control socket {}",
        agent.model.vifs.len(),
        agent.apply.ports().count(),
        socket.display()
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    // The owner loop itself answers the watchdog: a wedged loop stops the pings.
    let mut watchdog = sd_notify::watchdog_enabled().map(|period| {
        let mut ticks = tokio::time::interval(period / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let sig = |kind| {
        signal(kind).map_err(|source| Error::Io {
            what: "installing signal handlers".into(),
            source,
        })
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    // The retry timer is armed once and runs out whatever else arrives meanwhile.
    let mut retry_at: Option<tokio::time::Instant> = None;
    // When the loop last did other work, and when new /24 shortcuts must go in regardless.
    let mut busy_at = tokio::time::Instant::now();
    let mut new24_deadline: Option<tokio::time::Instant> = None;
    loop {
        let sweep_at = agent.bgp.next_sweep();
        let new24_at = if agent.apply.new_routes24() > 0 {
            let deadline =
                *new24_deadline.get_or_insert_with(|| tokio::time::Instant::now() + NEW24_MAX_WAIT);
            Some((busy_at + NEW24_QUIET).min(deadline))
        } else {
            new24_deadline = None;
            None
        };
        let mut idle_work = false;
        match (retry_at, agent.retry_due()) {
            (None, Some(after)) => retry_at = Some(tokio::time::Instant::now() + after),
            (Some(_), None) => retry_at = None,
            _ => {}
        }
        let outcome = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = agent.reload() {
                    tracing::error!(error = %error_chain(&e), "reload refused or incomplete");
                }
                Ok(())
            }
            Some(event) = net_rx.recv() => {
                let mut result = agent.on_net_event(event);
                // Everything already queued is taken in one go and planned once.
                while let Ok(event) = net_rx.try_recv() {
                    result = result.and(agent.on_net_event(event));
                }
                result.and(agent.flush())
            }
            Some(event) = events.recv() => {
                agent.handle_bgp_event(event);
                // What is queued is planned once, a bounded batch at a time: a peer sending
                // a large table does not keep the control socket, netlink events or the
                // other sessions waiting.
                for _ in 0..BGP_EVENT_BATCH {
                    let Ok(event) = events.try_recv() else { break };
                    agent.handle_bgp_event(event);
                }
                agent.flush()
            }
            Some(scrape) = scrapes.recv() => {
                // A scraper that went away does not care.
                scrape.send(agent.exposition()).ok();
                Ok(())
            }
            Some(msg) = control_rx.recv() => {
                let reply = agent.reply(msg.request);
                // A client that went away does not care (a capture it started ends at once
                // and comes back as `Done`).
                if let Err(control::Reply::Capture(session)) = msg.reply.send(reply) {
                    agent.capture_ended(crate::capture::Done { ring: session.ring, frames: 0 });
                }
                Ok(())
            }
            Some(done) = captures.recv() => {
                agent.capture_ended(done);
                Ok(())
            }
            () = sleep_until_or_never(retry_at) => {
                retry_at = None;
                agent.on_retry()
            }
            () = sleep_until_or_never(sweep_at) => {
                agent.sweep_due();
                agent.flush()
            }
            () = tick_or_never(watchdog.as_mut()) => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                Ok(())
            }
            () = sleep_until_or_never(new24_at) => {
                idle_work = true;
                let idle = tokio::time::Instant::now() >= busy_at + NEW24_QUIET;
                new24_deadline = None;
                let max = if idle { NEW24_IDLE_CHUNK } else { NEW24_BUSY_CHUNK };
                // They stay waiting; the trie answers for their /24s meanwhile.
                if let Err(e) = agent.apply.write_new_routes24(max) {
                    tracing::error!(error = %error_chain(&e), "writing /24 shortcuts; retrying");
                    // Not again before a second has gone by.
                    busy_at = tokio::time::Instant::now() + NEW24_MAX_WAIT;
                }
                Ok(())
            }
        };
        if !idle_work {
            busy_at = tokio::time::Instant::now();
        }
        if let Err(e) = outcome {
            tracing::error!(error = %error_chain(&e), "applying a change failed; retrying");
            // What failed is not known here: the whole model is applied again, which writes
            // only what differs.
            agent.retry.model.get_or_insert_with(Transition::default);
        }
        if let Err(e) = agent.save_if_changed() {
            tracing::error!(error = %error_chain(&e), "saving the state file; retrying");
        }
    }
    tracing::info!("stopping: XDP and pinned maps stay, forwarding continues");
    // Peers with graceful restart keep our routes until we are back, and the data plane
    // keeps their BFD sessions up meanwhile.
    agent.hand_bfd_to_the_data_plane();
    // Nobody follows the underlay's routes and neighbours while the agent is away: the data
    // plane asks the kernel's FIB until the next agent has resolved them again.
    agent.release_underlay();
    agent
        .speaker
        .stop_for_restart(std::time::Duration::from_secs(1))
        .await;
    notify(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, "removing the control socket");
    }
    Ok(())
}

async fn tick_or_never(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Tells the service manager (`NOTIFY_SOCKET`, set by systemd for `Type=notify`) how the
/// agent is; nothing without one.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "notifying the service manager");
    }
}

/// At most this many control connections are served at once; more are answered "busy".
const MAX_CONTROL_CONNECTIONS: usize = 64;

/// Accepts control connections; each is served by a task that hands its request to the
/// owner and waits for the answer.
async fn control_server(
    listener: tokio::net::UnixListener,
    access: control::Access,
    owner: mpsc::Sender<ControlMsg>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a control connection");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let owner = owner.clone();
        let permit = slots.clone().try_acquire_owned();
        tokio::spawn(async move {
            let served = match permit {
                Ok(_permit) => {
                    control::serve_one(stream, access, async |request| {
                        let stopping = || Response::err("the agent is stopping").into();
                        let (reply, answer) = oneshot::channel();
                        if owner.send(ControlMsg { request, reply }).await.is_err() {
                            return stopping();
                        }
                        answer.await.unwrap_or_else(|_| stopping())
                    })
                    .await
                }
                Err(_) => {
                    control::refuse(stream, "too many control connections at once; try again").await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}
