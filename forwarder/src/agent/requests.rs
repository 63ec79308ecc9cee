//! Answers to control requests: read-only views of the agent's state, and the changes an
//! operator may make (static routes, reload).

use std::net::IpAddr;

use aya::programs::XdpMode;
use forwarder_common::{drop_reason, pass_reason};
use ipnet::IpNet;

use super::{Agent, Error, state_name};
use crate::{
    apply::Pending,
    capture,
    config::Routing,
    control::{self, Request, Response},
    ids::{GatewayId, VifId},
    model::{self, Static},
    netlink::format_mac,
    plan::{Dirty, Selected},
    rib::{Candidate, Source, Target},
    state::CliRoute,
};

impl Agent {
    /// The answer to a control request: a capture starts a stream, the rest is one line.
    pub fn reply(&mut self, request: Request) -> control::Reply {
        match request {
            Request::Capture { vif, count } => match self.start_capture(&vif, count) {
                Ok(session) => control::Reply::Capture(session),
                Err(e) => Response::err(super::error_chain(&e)).into(),
            },
            other => self.handle(other).into(),
        }
    }

    /// Turns the capture flag on for `vif` and lends the ring buffer to the stream.
    fn start_capture(&mut self, vif: &str, count: Option<u64>) -> Result<capture::Session, Error> {
        let id = self.check_vif(vif)?;
        if let Some(other) = &self.capture {
            return Err(Error::Refused(format!(
                "a capture of VIF {other:?} is running; one at a time"
            )));
        }
        let done = self
            .capture_done
            .clone()
            .ok_or_else(|| Error::Refused("captures are not available".into()))?;
        let ring = self
            .apply
            .take_capture_ring()?
            .ok_or_else(|| Error::Refused("the capture buffer is busy".into()))?;
        if let Err(e) = self.apply.set_capture(id.0) {
            self.apply.return_capture_ring(ring);
            return Err(e.into());
        }
        tracing::info!(vif, ?count, "capture started");
        self.capture = Some(vif.to_owned());
        Ok(capture::Session {
            vif: vif.to_owned(),
            ring,
            count,
            done,
        })
    }

    /// A capture ended: the flag goes off, the ring buffer comes back.
    pub(super) fn capture_ended(&mut self, done: capture::Done) {
        if let Err(e) = self.apply.set_capture(0) {
            tracing::error!(error = %super::error_chain(&e), "turning the capture off");
        }
        self.apply.return_capture_ring(done.ring);
        self.capture = None;
    }

    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Status => Ok(Response::ok(self.status())),
            Request::VifList => Ok(Response::ok(self.vif_summaries())),
            Request::VifShow { name } => self.vif_detail(&name).map(Response::ok),
            Request::RouteList { gateway } => self.route_list(gateway.as_deref()).map(Response::ok),
            Request::RouteAdd {
                gateway,
                prefix,
                via,
            } => self
                .route_add(gateway, prefix, via)
                .map(|()| Response::ok("route added")),
            Request::RouteDel { gateway, prefix } => self
                .route_del(&gateway, prefix)
                .map(|()| Response::ok("route deleted")),
            Request::Lookup { gateway, address } => {
                self.lookup(&gateway, address).map(Response::ok)
            }
            Request::Stats { vif, attachment } => self
                .stats(vif.as_deref(), attachment.as_deref())
                .map(Response::ok),
            Request::Reload => self
                .reload()
                .map(|()| Response::ok("configuration reloaded")),
            Request::BgpNeighbors => Ok(Response::ok(self.neighbors())),
            Request::BgpRoutes { vif, advertised } => self.bgp_routes_view(&vif, advertised),
            Request::Capture { .. } => Err(Error::Refused(
                "a capture is a stream: use `forwarder capture`".into(),
            )),
        };
        result.unwrap_or_else(|e| Response::err(super::error_chain(&e)))
    }

    fn bgp_routes_view(&self, vif: &str, advertised: bool) -> Result<Response, Error> {
        let id = self.check_vif(vif)?;
        if self.model.vifs[&id].routing != Routing::Bgp {
            return Err(Error::Refused(format!("VIF {vif:?} is statically routed")));
        }
        if advertised {
            let routes: Vec<serde_json::Value> = self
                .speaker
                .advertised(vif)
                .into_iter()
                .map(|(peer, prefix)| serde_json::json!({"peer": peer, "prefix": prefix}))
                .collect();
            Ok(Response::ok(routes))
        } else {
            // Each route with its path and how it fared in the gateway's selection.
            let gateway = self.model.vifs[&id].gateway;
            let routes: Vec<serde_json::Value> = self
                .speaker
                .received(vif)
                .into_iter()
                .map(|r| {
                    let mut v = serde_json::to_value(&r).unwrap_or_default();
                    let key = ((id, r.peer_index as u8), r.prefix);
                    let path = self.bgp.routes.get(&key.0).and_then(|h| h.get(&key.1));
                    if let (Some(Some(path)), serde_json::Value::Object(o)) = (path, &mut v) {
                        o.insert("local_pref".into(), path.rank.local_pref().into());
                        o.insert("as_path_len".into(), path.rank.as_path_len.into());
                        o.insert("med".into(), path.rank.med.into());
                        o.insert("no_export".into(), path.no_export.into());
                        let (best, why) = self.selection(gateway, id, r.peer_index, key.1);
                        o.insert("best".into(), best.into());
                        o.insert("why".into(), why.into());
                    }
                    v
                })
                .collect();
            Ok(Response::ok(routes))
        }
    }

    /// Whether session (vif, peer)'s path to `prefix` is the one the gateway uses, and why
    /// (or why not): the winner and the rule that decided, as `birdc show route all` tells.
    fn selection(
        &self,
        gateway: GatewayId,
        vif: VifId,
        peer: usize,
        prefix: IpNet,
    ) -> (bool, String) {
        let Some(mine) = self.rib.vif_paths(gateway, prefix, vif) else {
            return (false, "not installed".into());
        };
        if mine.mask & (1 << peer) == 0 {
            return (false, "the VIF's other session has a better path".into());
        }
        let Some(best) = self
            .desired
            .routes
            .get(&gateway)
            .and_then(|t| t.get(&prefix))
        else {
            return (false, "not selected yet".into());
        };
        let me = Candidate::bgp(Target::VifPeers(vif, mine.mask), mine.path);
        if let Some(set) = self.desired.paths_of(best)
            && self.in_multipath(gateway, prefix, best, &me)
        {
            return (
                true,
                format!(
                    "multipath: equal paths over {}",
                    self.multipath_names(&set).join(" + ")
                ),
            );
        }
        if best.source == Source::Bgp && best.target == Target::VifPeers(vif, mine.mask) {
            let others: Vec<&Candidate> = self
                .rib
                .candidates(gateway, prefix)
                .iter()
                .filter(|c| c.target.vif() != Some(vif))
                .collect();
            return match others.first() {
                None => (true, "only path".into()),
                Some(c) if c.source != Source::Bgp => {
                    (true, format!("{} route beats BGP", c.source.name()))
                }
                Some(c) => {
                    let other = c.target.vif().map_or("?", |v| self.model.vif_name(v));
                    (
                        true,
                        format!("over {other}: {}", mine.path.rank.beats(c.rank)),
                    )
                }
            };
        }
        let winner = match (best.target.vif(), self.desired.paths_of(best)) {
            (Some(v), _) => format!("vif {}", self.model.vif_name(v)),
            (None, Some(set)) => {
                format!("multipath over {}", self.multipath_names(&set).join(" + "))
            }
            (None, None) => format!("{} route", best.source.name()),
        };
        let multipath = self
            .model
            .gateways
            .get(&gateway)
            .is_some_and(|g| g.multipath);
        let best_rank = self
            .selected_rank(gateway, prefix, best)
            .unwrap_or_default();
        let why = if best.source != Source::Bgp {
            format!("{} route preferred to BGP", best.source.name())
        } else if best_rank == mine.path.rank && multipath {
            format!(
                "an equal path, left out of the multipath group ({} client routers at most, in VIF id order)",
                forwarder_common::MAX_GROUP_MEMBERS
            )
        } else {
            best_rank.beats(mine.path.rank).to_owned()
        };
        (false, format!("{winner} wins: {why}"))
    }

    fn check_vif(&self, name: &str) -> Result<VifId, Error> {
        self.model
            .vif_id(name)
            .ok_or_else(|| Error::Refused(format!("no VIF named {name:?}")))
    }

    fn check_gateway(&self, gateway: &str) -> Result<GatewayId, Error> {
        self.model
            .gateway_id(gateway)
            .ok_or_else(|| Error::Refused(format!("no border gateway named {gateway:?}")))
    }

    /// Each attachment's underlay next hop: what the data plane's map holds, and why the FIB
    /// is asked when it holds nothing.
    fn attachment_statuses(&self) -> Vec<control::AttachmentStatus> {
        self.model
            .attachments
            .iter()
            .map(|(id, a)| {
                let hop = self
                    .apply
                    .dataplane()
                    .underlay(id.0)
                    .ok()
                    .filter(|h| h.valid != 0);
                control::AttachmentStatus {
                    name: a.name.clone(),
                    remote_vtep: a.remote_vtep,
                    underlay: if hop.is_some() { "resolved" } else { "fib" }.to_owned(),
                    fib_reason: match hop {
                        Some(_) => None,
                        None => Some(
                            self.underlay
                                .resolved
                                .get(id)
                                .and_then(|r| r.why_not)
                                .unwrap_or("not resolved yet")
                                .to_owned(),
                        ),
                    },
                    next_hop: self
                        .underlay
                        .resolved
                        .get(id)
                        .and_then(|r| r.via)
                        .map(|(_, addr)| addr),
                    next_hop_mac: hop.map(|h| crate::netlink::format_mac(h.dmac)),
                    ifindex: hop.map(|h| h.ifindex),
                    mtu: hop.map(|h| h.mtu),
                }
            })
            .collect()
    }

    fn status(&self) -> control::Status {
        let xdp_mode = match self.apply.mode() {
            XdpMode::Skb => "skb",
            _ => "native",
        };
        let ports = self
            .apply
            .ports()
            .map(|(name, p)| control::PortStatus {
                name: name.to_owned(),
                role: p.role.name().into(),
                ifindex: p.ifindex,
                xdp_mode: xdp_mode.into(),
                up: self.observed.port_up(name),
            })
            .collect();
        let pending = self.apply.pending_by_gateway();
        let gateways = self
            .model
            .gateways
            .iter()
            .map(|(id, g)| {
                let routes = self.apply.gateway_routes_with(*id, &pending);
                control::GatewayStatus {
                    name: g.name.clone(),
                    routes: self.rib.table(*id).map(|(_, c)| c.len()).sum(),
                    selected: self.desired.routes.get(id).map_or(0, |t| t.len()),
                    installed: routes.installed,
                    not_installed: routes.pending,
                    route_map_full: routes.waiting_for_room,
                }
            })
            .collect();
        control::Status {
            uptime_seconds: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            ports,
            vifs: self.vif_summaries(),
            gateways,
            capture: self.capture.clone(),
            attachments: self.attachment_statuses(),
            maps: control::MapUsage {
                routes: control::Usage {
                    used: self.apply.routes_installed() as u64,
                    capacity: u64::from(self.apply.route_capacity()),
                },
                routes6: control::Usage {
                    used: self.apply.routes6_installed() as u64,
                    capacity: u64::from(forwarder_common::MAX_ROUTES6),
                },
                routes24: control::Usage {
                    used: self.apply.routes24().0 as u64,
                    capacity: u64::from(self.apply.routes24().1),
                },
                next_hops: control::Usage {
                    used: self.state.ids.next_hops.len() as u64,
                    capacity: u64::from(self.apply.next_hop_capacity()),
                },
                vifs: control::Usage {
                    used: self.model.vifs.len() as u64,
                    capacity: u64::from(forwarder_common::MAX_VIFS - 1),
                },
            },
        }
    }

    pub(super) fn vif_state_name(&self, id: VifId) -> &'static str {
        self.apply.vif_state(id.0).map_or("configuring", state_name)
    }

    fn vif_summaries(&self) -> Vec<control::VifSummary> {
        self.model
            .vifs
            .iter()
            .map(|(id, v)| self.vif_summary(*id, v))
            .collect()
    }

    fn vif_summary(&self, id: VifId, v: &model::Vif) -> control::VifSummary {
        control::VifSummary {
            name: v.name.clone(),
            connection: v.config.connection.clone(),
            vlan: v.vlan,
            border_gateway: v.config.border_gateway.clone(),
            routing: match v.routing {
                Routing::Bgp => "bgp",
                Routing::Static => "static",
            }
            .into(),
            state: self.vif_state_name(id).into(),
        }
    }

    fn vif_detail(&self, name: &str) -> Result<control::VifDetail, Error> {
        let id = self.check_vif(name)?;
        let v = &self.model.vifs[&id];
        let cp = self
            .control_planes
            .get(&id)
            .ok_or_else(|| Error::Refused(format!("VIF {name:?} is not set up yet")))?;
        Ok(control::VifDetail {
            summary: self.vif_summary(id, v),
            id: id.0,
            control_netns: v.netns.clone(),
            control_interface: v.host_if.clone(),
            mac: format_mac(cp.mac),
            peers: v
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| control::PeerStatus {
                    cloud_address: format!("{}/{}", p.cloud_address, p.prefix_len),
                    client_address: p.client_address.to_string(),
                    client_mac: self
                        .observed
                        .clients
                        .get(&(id, i as u8))
                        .map(|m| format_mac(*m)),
                })
                .collect(),
        })
    }

    /// Whether `candidate` (a VIF's BGP path) is one of the selected route's multipath set.
    fn in_multipath(
        &self,
        gateway: GatewayId,
        prefix: IpNet,
        selected: &Selected,
        candidate: &Candidate,
    ) -> bool {
        let (Some(set), Target::VifPeers(vif, mask)) =
            (self.desired.paths_of(selected), candidate.target)
        else {
            return false;
        };
        self.selected_rank(gateway, prefix, selected) == Some(candidate.rank)
            && set.as_slice().contains(&(vif, mask))
    }

    /// The rank of the rib candidate a selected route came from (for a multipath set: of
    /// its paths, which rank equal).
    fn selected_rank(
        &self,
        gateway: GatewayId,
        prefix: IpNet,
        selected: &Selected,
    ) -> Option<crate::rib::Rank> {
        let set = self.desired.paths_of(selected);
        self.rib
            .candidates(gateway, prefix)
            .iter()
            .find(|c| {
                c.source == selected.source
                    && match (&set, c.target) {
                        (Some(set), Target::VifPeers(vif, mask)) => {
                            set.as_slice().contains(&(vif, mask))
                        }
                        (Some(_), _) => false,
                        (None, target) => target == selected.target,
                    }
            })
            .map(|c| c.rank)
    }

    /// Why a candidate is not the installed route, if it is not.
    fn not_installed_reason(
        &self,
        gateway: GatewayId,
        prefix: IpNet,
        candidate: Candidate,
    ) -> Option<String> {
        let selected = self.desired.route(gateway, prefix);
        if let Some(s) = selected
            && (s == candidate.into() || self.in_multipath(gateway, prefix, &s, &candidate))
        {
            let nh = self
                .desired
                .next_hop_key(s.target)
                .and_then(|k| self.state.ids.next_hops.get(&k));
            if nh.is_some() && self.apply.installed(gateway, prefix) == nh {
                return None;
            }
            return Some(match self.apply.pending(gateway, prefix) {
                Some(Pending::Full) => "the route map is full".to_owned(),
                Some(Pending::Failed(e)) => format!("writing it failed ({e}); retrying"),
                None => "not written yet".to_owned(),
            });
        }
        if selected.is_some() {
            return Some("a preferred route for the prefix is installed".to_owned());
        }
        Some(match candidate.target.vif() {
            Some(vif) => format!(
                "vif {} is {}",
                self.model.vif_name(vif),
                self.vif_state_name(vif)
            ),
            None => "not selected".to_owned(),
        })
    }

    fn route_list(&self, gateway: Option<&str>) -> Result<Vec<control::RouteEntry>, Error> {
        let only = gateway.map(|g| self.check_gateway(g)).transpose()?;
        let mut out = Vec::new();
        for (id, g) in &self.model.gateways {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            for (prefix, candidates) in self.rib.table(*id) {
                for c in candidates {
                    let reason = self.not_installed_reason(*id, prefix, *c);
                    let multipath = self
                        .desired
                        .route(*id, prefix)
                        .filter(|s| reason.is_none() && self.in_multipath(*id, prefix, s, c))
                        .and_then(|s| self.desired.paths_of(&s))
                        .map(|set| self.multipath_names(&set))
                        .unwrap_or_default();
                    out.push(control::RouteEntry {
                        gateway: g.name.clone(),
                        prefix,
                        source: c.source.name().to_owned(),
                        next_hop: self.model.describe(c.target),
                        installed: reason.is_none(),
                        reason,
                        cli: c.source == Source::Static
                            && self
                                .model
                                .statics
                                .get(&(*id, prefix))
                                .is_some_and(|s| s.cli),
                        multipath,
                    });
                }
            }
        }
        Ok(out)
    }

    fn route_add(&mut self, gateway: String, prefix: IpNet, via: String) -> Result<(), Error> {
        let gw = self.check_gateway(&gateway)?;
        if prefix.trunc() != prefix {
            return Err(Error::Refused(format!(
                "prefix {prefix} has host bits set (did you mean {}?)",
                prefix.trunc()
            )));
        }
        let target = self
            .model
            .target(&via)
            .ok_or_else(|| Error::Refused(format!("no VIF or attachment named {via:?}")))?
            .for_prefix(prefix);
        if let Some(why) = target
            .vif()
            .and_then(|id| self.model.vifs.get(&id))
            .and_then(|v| crate::config::family_mismatch(prefix, &v.config))
        {
            return Err(Error::Refused(why));
        }
        let target_gw = self.model.target_gateway(target).unwrap_or(gw);
        if target_gw != gw {
            let kind = match target {
                Target::Attachment(_) => "vpc_attachment",
                _ => "vif",
            };
            return Err(Error::Refused(format!(
                "{kind} {via:?} belongs to border gateway {:?}, not {gateway:?}",
                self.model.gateway_name(target_gw)
            )));
        }
        if target.vif().is_some()
            && let Some((att, cidr)) = self.model.overlapping_vpc(gw, prefix)
        {
            return Err(Error::Refused(format!(
                "{prefix} overlaps VPC CIDR {cidr} of attachment {att:?}: customer segments must not overlap VPC segments"
            )));
        }
        if self.model.statics.contains_key(&(gw, prefix)) {
            return Err(Error::Refused(format!(
                "a static route for {prefix} already exists in {gateway:?}; delete it first"
            )));
        }
        self.state.routes.push(CliRoute {
            gateway,
            prefix,
            via,
        });
        self.state.routes.sort();
        // Persisted before it is applied: an acknowledged route survives a crash. A route
        // that cannot be persisted is not added at all.
        if let Err(e) = self.save_state() {
            self.state
                .routes
                .retain(|r| !(r.gateway == self.model.gateway_name(gw) && r.prefix == prefix));
            return Err(e);
        }
        self.model
            .statics
            .insert((gw, prefix), Static { target, cli: true });
        self.rib
            .insert(gw, prefix, Candidate::new(Source::Static, target));
        let mut dirty = Dirty::default();
        dirty.prefixes.insert((gw, prefix));
        self.replan(dirty)
    }

    fn route_del(&mut self, gateway: &str, prefix: IpNet) -> Result<(), Error> {
        let gw = self.check_gateway(gateway)?;
        match self.model.statics.get(&(gw, prefix)) {
            None => {
                return Err(Error::Refused(format!(
                    "no static route for {prefix} in {gateway:?}"
                )));
            }
            Some(s) if !s.cli => {
                return Err(Error::Refused(format!(
                    "the static route for {prefix} comes from the config file: remove it there and run `forwarder reload`"
                )));
            }
            Some(_) => {}
        }
        let before = self.state.routes.clone();
        self.state
            .routes
            .retain(|r| !(r.gateway == gateway && r.prefix == prefix));
        if let Err(e) = self.save_state() {
            self.state.routes = before;
            return Err(e);
        }
        if let Some(s) = self.model.statics.remove(&(gw, prefix)) {
            self.rib
                .remove(gw, prefix, Candidate::new(Source::Static, s.target));
        }
        let mut dirty = Dirty::default();
        dirty.prefixes.insert((gw, prefix));
        self.replan(dirty)
    }

    fn lookup(&self, gateway: &str, address: IpAddr) -> Result<control::LookupAnswer, Error> {
        let gw = self.check_gateway(gateway)?;
        let dp = self.apply.dataplane();
        let id = dp.lookup(gw.0, address)?;
        let describe = |id: u32| match self.state.ids.next_hops.key(id) {
            Some(key) => self.describe_next_hop(*key),
            None => format!("next hop {id}"),
        };
        let mut members = Vec::new();
        if let Some(id) = id {
            let nh = dp.next_hop(id)?;
            if nh.kind == forwarder_common::next_hop_kind::GROUP {
                let count = usize::from(nh.member_count).min(nh.members.len());
                members = nh.members[..count]
                    .iter()
                    .map(|m| control::LookupMember {
                        next_hop_id: *m,
                        next_hop: describe(*m),
                    })
                    .collect();
            }
        }
        Ok(control::LookupAnswer {
            gateway: gateway.to_owned(),
            address,
            next_hop_id: id,
            next_hop: id.map(describe),
            members,
        })
    }

    /// The names of a multipath set's VIFs.
    fn multipath_names(&self, set: &crate::ids::PathSet) -> Vec<String> {
        set.as_slice()
            .iter()
            .map(|(vif, _)| self.model.vif_name(*vif).to_owned())
            .collect()
    }

    fn describe_next_hop(&self, key: crate::ids::NextHopKey) -> String {
        use crate::ids::NextHopKey;
        match key {
            NextHopKey::Attachment { attachment } => {
                self.model.describe(Target::Attachment(attachment))
            }
            NextHopKey::Vif { vif } => self.model.describe(Target::Vif(vif)),
            NextHopKey::Vif6 { vif } => self.model.describe(Target::Vif6(vif)),
            NextHopKey::VifPeers { vif, mask } => self.model.describe(Target::VifPeers(vif, mask)),
            NextHopKey::VifPeer { vif, peer } => {
                format!("vif {} (client router {peer})", self.model.vif_name(vif))
            }
            NextHopKey::Pinned { id } => format!("next hop {id} (left by an earlier run)"),
            NextHopKey::Multipath { paths } => {
                format!(
                    "multipath over {}",
                    self.multipath_names(&paths).join(" + ")
                )
            }
        }
    }

    fn stats(&self, vif: Option<&str>, attachment: Option<&str>) -> Result<control::Stats, Error> {
        let convert = |c: forwarder_common::TrafficCounters| control::Counters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
        };
        if let Some(v) = vif {
            self.check_vif(v)?;
        }
        if let Some(a) = attachment
            && self.model.attachment_id(a).is_none()
        {
            return Err(Error::Refused(format!("no attachment named {a:?}")));
        }
        let dp = self.apply.dataplane();
        let mut vifs = Vec::new();
        if attachment.is_none() {
            for (id, v) in &self.model.vifs {
                if vif.is_none_or(|n| n == v.name) {
                    let d = dp.vif_drops(id.0)?;
                    vifs.push(control::NamedCounters {
                        name: v.name.clone(),
                        counters: convert(dp.vif_counters(id.0)?),
                        vif_drops: Some(control::VifDropCounters {
                            control_limited: d.control_limited,
                            source_check_dropped: d.source_check,
                            too_big: d.too_big,
                        }),
                    });
                }
            }
        }
        let mut attachments = Vec::new();
        if vif.is_none() {
            for (id, a) in &self.model.attachments {
                if attachment.is_none_or(|n| n == a.name) {
                    attachments.push(control::NamedCounters {
                        name: a.name.clone(),
                        counters: convert(dp.attachment_counters(id.0)?),
                        vif_drops: None,
                    });
                }
            }
        }
        let drops = dp.drops()?;
        let passes = dp.passes()?;
        Ok(control::Stats {
            vifs,
            attachments,
            drops: drop_reason::NAMES
                .iter()
                .zip(drops)
                .map(|(n, v)| ((*n).to_owned(), v))
                .collect(),
            passes: pass_reason::NAMES
                .iter()
                .zip(passes)
                .map(|(n, v)| ((*n).to_owned(), v))
                .collect(),
        })
    }
}
