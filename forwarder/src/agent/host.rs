//! The agent's side of the host: ports (attached when they appear, attached again when they
//! are recreated), VIF control planes (built, repaired, removed), and the kernel events that
//! move link states and client router MACs. Every change lands in `self.dirty` for the next
//! plan.

use std::collections::BTreeSet;

use super::{Agent, ControlPlane, Error, error_chain};
use crate::{
    ids::VifId,
    model::{self, PortRole},
    netlink::{self, Neighbour},
    netns::{self, Found},
    observe::{self, NetEvent, Scope},
    plan::LinkState,
    vifcp::{self, Pair},
};

impl Agent {
    /// Reads every link of the agent's namespace (at start, and after lost events) and acts
    /// on what differs from what was known.
    pub(super) fn read_links(&mut self) -> Result<(), Error> {
        let links = self.host.links()?;
        let old = std::mem::take(&mut self.observed.links);
        self.link_names = links.iter().map(|l| (l.index, l.name.clone())).collect();
        for link in links {
            self.observed.links.insert(
                link.name.clone(),
                LinkState {
                    index: link.index,
                    up: link.up,
                    mtu: link.mtu,
                },
            );
        }
        let names: BTreeSet<String> = old
            .keys()
            .chain(self.observed.links.keys())
            .cloned()
            .collect();
        for name in names {
            if old.get(&name) != self.observed.links.get(&name) {
                self.link_changed(&name, old.get(&name).copied());
            }
        }
        Ok(())
    }

    /// The VIF whose control veth's host end is `name`.
    fn control_vif(&self, name: &str) -> Option<VifId> {
        let id: u32 = name.strip_prefix(model::CONTROL_IF_PREFIX)?.parse().ok()?;
        self.model
            .vifs
            .contains_key(&VifId(id))
            .then_some(VifId(id))
    }

    fn link_changed(&mut self, name: &str, before: Option<LinkState>) {
        let now = self.observed.links.get(name).copied();
        if let Some(role) = self.model.ports.get(name).copied() {
            let attached = self.apply.port(name).map(|p| p.ifindex);
            match now {
                Some(link) if attached != Some(link.index) => {
                    if attached.is_some() {
                        tracing::warn!(
                            port = name,
                            ifindex = link.index,
                            "port was recreated: attaching XDP again"
                        );
                    }
                    self.attach_port(name);
                }
                Some(link) if before.map(|b| b.up) != Some(link.up) => {
                    tracing::info!(port = name, up = link.up, "port link state");
                    if link.up && role == PortRole::Connection {
                        self.resolve_clients(name);
                    }
                }
                Some(link)
                    if role == PortRole::Connection && before.map(|b| b.mtu) != Some(link.mtu) =>
                {
                    tracing::info!(port = name, mtu = link.mtu, "port MTU");
                    for vif in self.model.vifs_on_port(name).to_vec() {
                        if let Err(e) = self.write_vif(vif) {
                            tracing::warn!(port = name, error = %error_chain(&e), "VIF MTU not updated; retrying");
                            self.retry.vifs.insert(vif);
                        }
                    }
                }
                Some(_) => return,
                None => {
                    tracing::warn!(
                        port = name,
                        ?role,
                        "port deleted: its VIFs stop until it is back"
                    );
                    if let Err(e) = self.apply.forget_port(name) {
                        tracing::warn!(port = name, error = %error_chain(&e), "forgetting the port");
                    }
                }
            }
            let vifs = self.model.vifs_on_port(name).to_vec();
            self.dirty.vifs.extend(vifs);
            return;
        }
        if let Some(vif) = self.control_vif(name) {
            let known = self.control_planes.get(&vif).map(|c| c.host_ifindex);
            let broken = match now {
                None => known.is_some(),
                Some(link) if Some(link.index) != known => known.is_some(),
                // An event may be older than the state: ask before repairing.
                Some(link) if !link.up => {
                    !self.host.link(name).ok().flatten().is_some_and(|l| l.up)
                }
                Some(_) => false,
            };
            if broken {
                tracing::warn!(vif = %self.model.vif_name(vif), link = name, "control veth lost or down: repairing the control plane");
                self.retry.vifs.insert(vif);
            }
        }
    }

    /// A connection came (back) up: the client routers whose MAC was lost while it was down
    /// are asked for at once, so their VIFs come back without waiting for ARP timers.
    fn resolve_clients(&mut self, port: &str) {
        for id in self.model.vifs_on_port(port).to_vec() {
            let (Some(v), Some(cp)) = (self.model.vifs.get(&id), self.control_planes.get(&id))
            else {
                continue;
            };
            let missing: Vec<std::net::IpAddr> = v
                .peers
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.observed.clients.contains_key(&(id, *i as u8)))
                .map(|(_, p)| p.client_address)
                .collect();
            if missing.is_empty() {
                continue;
            }
            if let Err(e) = vifcp::resolve(&cp.namespace, &missing) {
                tracing::debug!(vif = %v.name, error = %error_chain(&e), "asking for client MACs");
            }
        }
    }

    /// Attaches XDP to a configured port (again, when it was recreated). A port that is not
    /// there yet is attached when its link appears.
    pub(super) fn attach_port(&mut self, name: &str) {
        let Some(role) = self.model.ports.get(name).copied() else {
            return;
        };
        if !self.observed.links.contains_key(name) {
            tracing::warn!(
                port = name,
                ?role,
                "port missing; XDP is attached when it appears"
            );
            return;
        }
        match self.apply.attach(name, role) {
            Ok(ifindex) => {
                tracing::info!(port = name, ?role, ifindex, "XDP attached");
                match role {
                    PortRole::Connection => {
                        for vif in self.model.vifs_on_port(name).to_vec() {
                            if let Err(e) = self.write_vif(vif) {
                                tracing::error!(vif = %self.model.vif_name(vif), error = %error_chain(&e), "updating the VIF's port");
                            }
                            self.dirty.vifs.insert(vif);
                        }
                    }
                    PortRole::Underlay => {
                        if let Err(e) = self.sync_attachments() {
                            tracing::error!(error = %error_chain(&e), "updating the attachments' underlay port");
                        }
                    }
                    PortRole::Control => {}
                }
            }
            Err(e) => {
                tracing::error!(port = name, error = %error_chain(&e), "attaching XDP failed; retrying");
                self.retry.ports.insert(name.to_owned());
            }
        }
    }

    /// Attaches every configured port that does not have XDP (or has it on an old ifindex).
    pub(super) fn sync_ports(&mut self) {
        let ports: Vec<String> = self.model.ports.keys().cloned().collect();
        for name in ports {
            let link = self.observed.links.get(&name).map(|l| l.index);
            if link.is_none() || self.apply.port(&name).map(|p| p.ifindex) != link {
                self.attach_port(&name);
            }
        }
    }

    /// The kernel's neighbour table is one for all namespaces, and its garbage collector
    /// removes entries (managed ones too) once the table holds more than `gc_thresh2`
    /// (default 512): at a few hundred VIFs the client routers' entries would start to
    /// vanish. Raises the thresholds (host-wide sysctls, writable from the host's network
    /// namespace) to fit every client router with room to spare, or says what to set.
    pub(super) fn fit_neighbour_table(&mut self) {
        let clients: usize = self.model.vifs.values().map(|v| v.peers.len()).sum();
        // Room for the host's own neighbours and for the VIFs' other entries.
        let want = (clients * 2 + 1024) as u64;
        let key = |n: u8| format!("net/ipv4/neigh/default/gc_thresh{n}");
        let read = |n: u8| {
            std::fs::read_to_string(std::path::Path::new("/proc/sys").join(key(n)))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        let (Some(t1), Some(t2), Some(t3)) = (read(1), read(2), read(3)) else {
            if clients > 256 && !self.neighbour_table_warned {
                self.neighbour_table_warned = true;
                tracing::warn!(
                    clients,
                    "the kernel's neighbour table limits are not visible from this network namespace: set net.ipv4.neigh.default.gc_thresh1/2/3 on the host to at least {}/{want}/{} or client routers' entries will be collected",
                    want / 2,
                    want * 2
                );
            }
            return;
        };
        if t2 >= want && t3 >= want * 2 {
            return;
        }
        let (n1, n2, n3) = (t1.max(want / 2), t2.max(want), t3.max(want * 2));
        for (n, value) in [(3, n3), (2, n2), (1, n1)] {
            if let Err(e) = netlink::sysctl(&key(n), &value.to_string()) {
                tracing::warn!(error = %error_chain(&e), "raising the neighbour table limits");
                return;
            }
        }
        tracing::info!(
            clients,
            gc_thresh1 = n1,
            gc_thresh2 = n2,
            gc_thresh3 = n3,
            "raised the kernel's neighbour table limits to fit every client router"
        );
    }

    /// Builds or repairs VIF `id`'s control plane, attaches XDP to its host end, reads its
    /// client MACs and writes its VIF entry.
    pub(super) fn ensure_vif(&mut self, id: VifId) -> Result<(), Error> {
        self.ensure_vif_with(id, false, false)
    }

    /// Reads VIF `id`'s neighbours again through a new monitor, so that no older queued
    /// event can undo what is read (after lost events); `reset` first forgets the client
    /// routers' entries (the VIF moved: other routers answer now).
    pub(super) fn resync_vif(&mut self, id: VifId, reset: bool) -> Result<(), Error> {
        self.ensure_vif_with(id, true, reset)
    }

    fn ensure_vif_with(&mut self, id: VifId, new_monitor: bool, reset: bool) -> Result<(), Error> {
        let Some(v) = self.model.vifs.get(&id).cloned() else {
            return Ok(());
        };
        let pairs: Vec<Pair> = v
            .peers
            .iter()
            .map(|p| Pair {
                cloud: p.cloud_address,
                client: p.client_address,
                prefix_len: p.prefix_len,
            })
            .collect();
        let held = self.control_planes.get(&id);
        // A new monitor when there is none, or when the name now means another namespace.
        let want_monitor = new_monitor
            || held.is_none_or(|cp| {
                netns::exists(&v.netns)
                    && netns::Namespace::open(&netns::path(&v.netns))
                        .is_ok_and(|ns| ns.inode != cp.namespace.inode)
            });
        let built = vifcp::ensure(
            &v.netns,
            &v.host_if,
            &pairs,
            held.map(|cp| &cp.namespace),
            vifcp::Options {
                monitor: want_monitor,
                reset_neighbours: reset,
            },
            &mut self.host,
        )?;
        let new_namespace = held.is_some_and(|cp| cp.namespace.inode != built.namespace.inode);
        match (built.found, built.veth_recreated, held.is_some()) {
            (Found::Restored, _, _) => {
                tracing::warn!(vif = %v.name, netns = %v.netns, "control namespace name was removed: restored");
            }
            (Found::ReplacedStale, _, _) => {
                tracing::warn!(vif = %v.name, netns = %v.netns, "control namespace entry was not a namespace: replaced");
            }
            (_, true, true) => {
                tracing::warn!(vif = %v.name, netns = %v.netns, "control plane was recreated");
            }
            (Found::Created, _, false) => {
                tracing::debug!(vif = %v.name, netns = %v.netns, "control plane created");
            }
            _ => {}
        }
        if new_namespace {
            // The sessions' sockets live in the old namespace.
            self.stop_sessions_of(id);
        }
        let owned = self.owned();
        let recorded =
            owned.namespaces.insert(v.netns.clone()) | owned.links.insert(v.host_if.clone());
        self.state_changed |= recorded;
        if self.apply.port(&v.host_if).map(|p| p.ifindex) != Some(built.host_ifindex) {
            self.apply.attach(&v.host_if, PortRole::Control)?;
        }
        let (generation, monitor) = match built.monitor {
            Some(socket) => {
                self.next_generation += 1;
                let monitor = observe::spawn(
                    socket,
                    Scope::Vif(id, self.next_generation),
                    self.net_tx.clone(),
                )
                .map_err(|source| Error::Io {
                    what: format!("watching the neighbours of {}", v.netns),
                    source,
                })?;
                (self.next_generation, Some(monitor))
            }
            None => {
                let old = self.control_planes.remove(&id);
                (
                    old.as_ref().map_or(0, |c| c.generation),
                    old.and_then(|c| c.monitor),
                )
            }
        };
        self.control_planes.insert(
            id,
            ControlPlane {
                namespace: built.namespace,
                generation,
                monitor,
                host_ifindex: built.host_ifindex,
                inner_ifindex: built.inner_ifindex,
                mac: built.mac,
            },
        );
        self.set_clients(id, &built.neighbours);
        self.write_vif(id)?;
        self.dirty.vifs.insert(id);
        Ok(())
    }

    /// Takes the client MACs of VIF `id` from a full read of its neighbours.
    fn set_clients(&mut self, id: VifId, neighbours: &[Neighbour]) {
        let Some(v) = self.model.vifs.get(&id) else {
            return;
        };
        for (i, peer) in v.peers.iter().enumerate() {
            let key = (id, i as u8);
            match neighbours
                .iter()
                .find(|n| n.addr == peer.client_address)
                .and_then(|n| n.mac)
            {
                Some(mac) => {
                    self.observed.clients.insert(key, mac);
                }
                None => {
                    self.observed.clients.remove(&key);
                }
            }
        }
    }

    /// Removes what a VIF gone from the config left: its map entries, its port, its control
    /// plane (the routes toward it are already gone).
    pub(super) fn remove_vif_objects(&mut self, id: VifId, v: &model::Vif) -> Result<(), Error> {
        self.apply.remove_vif(id.0)?;
        self.apply.detach(&v.host_if)?;
        self.control_planes.remove(&id);
        vifcp::destroy(&v.netns, &v.host_if, &mut self.host)?;
        let owned = self.owned();
        owned.namespaces.remove(&v.netns);
        owned.links.remove(&v.host_if);
        self.state_changed = true;
        self.forget_vif(id);
        tracing::info!(vif = %v.name, "VIF deleted");
        Ok(())
    }

    /// Drops everything the agent held for a VIF gone from the model, so that a VIF given its
    /// id later starts from nothing (no routes, clients or sessions of the old one).
    pub(super) fn forget_vif(&mut self, id: VifId) {
        self.control_planes.remove(&id);
        let clients: Vec<(VifId, u8)> = self
            .observed
            .clients
            .range((id, 0)..=(id, u8::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in clients {
            self.observed.clients.remove(&key);
        }
        self.stop_sessions_of(id);
        self.bgp.forget_vif(id);
        // Normally already out of the rib (rebuilt without the VIF); not if the id is back
        // in the model before its removal finished.
        if let Some(gateway) = self.model.vifs.get(&id).map(|v| v.gateway) {
            let prefixes: Vec<ipnet::IpNet> = self.rib.toward(id).collect();
            for prefix in prefixes {
                if self.rib.set_vif_paths(gateway, prefix, id, None).is_some() {
                    self.dirty.prefixes.insert((gateway, prefix));
                }
            }
        }
        self.retry.vifs.remove(&id);
        self.retry.resync.remove(&id);
    }

    pub(super) fn handle_net_event(&mut self, event: NetEvent) -> Result<(), Error> {
        match event {
            NetEvent::Link(link) => {
                // The underlay's egress link may have a new MAC or MTU.
                self.underlay.all_dirty();
                // A renamed link: its old name is gone.
                if let Some(old) = self.link_names.insert(link.index, link.name.clone())
                    && old != link.name
                {
                    let before = self.observed.links.remove(&old);
                    self.link_changed(&old, before);
                }
                let state = LinkState {
                    index: link.index,
                    up: link.up,
                    mtu: link.mtu,
                };
                let before = self.observed.links.insert(link.name.clone(), state);
                if before != Some(state) {
                    self.link_changed(&link.name, before);
                }
            }
            NetEvent::HostNeighbour(n) => {
                // The underlay is IPv4.
                if let std::net::IpAddr::V4(addr) = n.addr {
                    self.underlay.neighbour_changed(n.ifindex, addr, n.mac);
                }
            }
            NetEvent::HostRoute => self.underlay.all_dirty(),
            NetEvent::LinkGone { index, name } => {
                self.underlay.all_dirty();
                self.link_names.remove(&index);
                if self
                    .observed
                    .links
                    .get(&name)
                    .is_some_and(|l| l.index == index)
                {
                    let before = self.observed.links.remove(&name);
                    self.link_changed(&name, before);
                }
            }
            NetEvent::Neighbour {
                vif,
                generation,
                neighbour,
            } => {
                // Events of an older monitor, or of an older vif0 (the pair was remade), are
                // history: the read that came with the new one is newer.
                if self.control_planes.get(&vif).is_none_or(|cp| {
                    cp.generation != generation || cp.inner_ifindex != neighbour.ifindex
                }) {
                    return Ok(());
                }
                let Some(v) = self.model.vifs.get(&vif) else {
                    return Ok(());
                };
                for (i, peer) in v.peers.iter().enumerate() {
                    if peer.client_address != neighbour.addr {
                        continue;
                    }
                    let key = (vif, i as u8);
                    let changed = match neighbour.mac {
                        Some(mac) => self.observed.clients.insert(key, mac) != Some(mac),
                        None => self.observed.clients.remove(&key).is_some(),
                    };
                    if changed {
                        self.dirty.vifs.insert(vif);
                    }
                }
            }
            NetEvent::Resync(Scope::Host) => {
                self.underlay.all_dirty();
                if let Err(e) = self.read_links() {
                    self.retry.links = true;
                    return Err(e);
                }
            }
            NetEvent::Resync(Scope::Vif(vif, generation)) => {
                if self
                    .control_planes
                    .get(&vif)
                    .is_none_or(|cp| cp.generation != generation)
                {
                    return Ok(());
                }
                if let Err(e) = self.resync_vif(vif, false) {
                    self.retry.resync.insert(vif);
                    return Err(e);
                }
            }
            NetEvent::NetnsGone(name) => {
                let vif = self.model.vif_of_netns(&name);
                if let Some(vif) = vif
                    && !netns::exists(&name)
                    && let Err(e) = self.ensure_vif(vif)
                {
                    tracing::error!(vif = %self.model.vif_name(vif), error = %error_chain(&e), "restoring the control plane; retrying");
                    self.retry.vifs.insert(vif);
                }
            }
        }
        Ok(())
    }
}
