//! Answers to control requests: read-only views of the agent's state, and the changes an
//! operator may make (static routes, reload).

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::programs::XdpMode;
use forwarder_common::{drop_reason, pass_reason, vif_state};
use ipnet::Ipv4Net;

use super::{Agent, Error, state_name};
use crate::{
    config::{self, Routing},
    control::{self, Request, Response},
    dataplane::PortRole,
    host,
    rib::{Source, Target},
    state::CliRoute,
};

impl Agent {
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
            Request::BgpNeighbors => Ok(Response::ok(self.speaker.status())),
            Request::BgpRoutes { vif, advertised } => self.bgp_routes_view(&vif, advertised),
        };
        result.unwrap_or_else(|e| Response::err(super::error_chain(&e)))
    }

    fn bgp_routes_view(&self, vif: &str, advertised: bool) -> Result<Response, Error> {
        let config = self
            .config
            .vif(vif)
            .ok_or_else(|| Error::Refused(format!("no VIF named {vif:?}")))?;
        if config.routing != Routing::Bgp {
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
            Ok(Response::ok(self.speaker.received(vif)))
        }
    }

    fn status(&self) -> control::Status {
        let ports = self
            .ports
            .iter()
            .map(|(name, p)| control::PortStatus {
                name: name.clone(),
                role: match p.role {
                    PortRole::Connection => "connection",
                    PortRole::Underlay => "underlay",
                    PortRole::Control => "control",
                }
                .into(),
                ifindex: p.ifindex,
                xdp_mode: match self.mode {
                    XdpMode::Skb => "skb",
                    _ => "native",
                }
                .into(),
                up: host::link_up(name).unwrap_or(false),
            })
            .collect();
        let gateways = self
            .config
            .border_gateways
            .iter()
            .map(|g| {
                let gw = self.gateway_id(&g.name);
                control::GatewayStatus {
                    name: g.name.clone(),
                    routes: self.tables.get(&g.name).map_or(0, |t| t.routes().count()),
                    installed: self
                        .installed_routes
                        .keys()
                        .filter(|(id, _)| *id == gw)
                        .count(),
                }
            })
            .collect();
        control::Status {
            uptime_seconds: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            ports,
            vifs: self.vif_summaries(),
            gateways,
        }
    }

    fn vif_summaries(&self) -> Vec<control::VifSummary> {
        self.config
            .vifs
            .iter()
            .map(|v| self.vif_summary(v))
            .collect()
    }

    fn vif_summary(&self, v: &config::Vif) -> control::VifSummary {
        control::VifSummary {
            name: v.name.clone(),
            connection: v.connection.clone(),
            vlan: v.vlan,
            border_gateway: v.border_gateway.clone(),
            routing: match v.routing {
                Routing::Bgp => "bgp",
                Routing::Static => "static",
            }
            .into(),
            state: state_name(
                self.vifs
                    .get(&v.name)
                    .map_or(vif_state::ABSENT, |r| r.state),
            )
            .into(),
        }
    }

    fn vif_detail(&self, name: &str) -> Result<control::VifDetail, Error> {
        let vif = self
            .config
            .vif(name)
            .ok_or_else(|| Error::Refused(format!("no VIF named {name:?}")))?;
        let rt = self
            .vifs
            .get(name)
            .ok_or_else(|| Error::Refused(format!("VIF {name:?} is not set up")))?;
        Ok(control::VifDetail {
            summary: self.vif_summary(vif),
            id: rt.id,
            control_netns: rt.control.netns.clone(),
            control_interface: rt.control.host_if.clone(),
            mac: host::format_mac(rt.mac),
            peers: vif
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| control::PeerStatus {
                    cloud_address: format!("{}/{}", p.cloud_address, p.prefix_len),
                    client_address: p.client_address.to_string(),
                    client_mac: rt
                        .client_macs
                        .get(i)
                        .copied()
                        .flatten()
                        .map(host::format_mac),
                })
                .collect(),
        })
    }

    fn check_gateway(&self, gateway: &str) -> Result<u32, Error> {
        self.config
            .border_gateway(gateway)
            .map(|_| self.gateway_id(gateway))
            .ok_or_else(|| Error::Refused(format!("no border gateway named {gateway:?}")))
    }

    fn route_list(&self, gateway: Option<&str>) -> Result<Vec<control::RouteEntry>, Error> {
        if let Some(g) = gateway {
            self.check_gateway(g)?;
        }
        let mut out = Vec::new();
        for (name, table) in &self.tables {
            if gateway.is_some_and(|g| g != name) {
                continue;
            }
            let gw = self.gateway_id(name);
            let installed_targets: BTreeMap<u32, Target> = self.nh_targets();
            for route in table.routes() {
                let installed_nh = self.installed_routes.get(&(gw, route.prefix));
                let installed =
                    installed_nh.and_then(|nh| installed_targets.get(nh)) == Some(&route.target);
                let reason = (!installed).then(|| {
                    if installed_nh.is_some() {
                        "a preferred route for the prefix is installed".to_owned()
                    } else if let Target::Vif(v) = &route.target {
                        format!(
                            "vif {v} is {}",
                            state_name(self.vifs.get(v).map_or(0, |r| r.state))
                        )
                    } else {
                        "not selected".to_owned()
                    }
                });
                out.push(control::RouteEntry {
                    gateway: name.clone(),
                    prefix: route.prefix,
                    source: route.source.to_string(),
                    next_hop: route.target.to_string(),
                    installed,
                    reason,
                    cli: route.source == Source::Static
                        && self.state.routes.iter().any(|r| {
                            r.gateway == *name
                                && r.prefix == route.prefix
                                && r.via == route.target.name()
                        }),
                });
            }
        }
        Ok(out)
    }

    /// Next-hop id → the target it serves (groups and attachments, as routes use them).
    fn nh_targets(&self) -> BTreeMap<u32, Target> {
        let mut out = BTreeMap::new();
        for (name, id) in &self.state.ids.next_hops {
            if let Some(att) = name.strip_prefix("att:") {
                out.insert(*id, Target::Attachment(att.to_owned()));
            } else if let Some(vif) = name.strip_prefix("vif:") {
                match vif.split_once(':') {
                    None => {
                        out.insert(*id, Target::Vif(vif.to_owned()));
                    }
                    Some((vif, mask)) => {
                        if let Some(mask) = mask.strip_prefix('m').and_then(|m| m.parse().ok()) {
                            out.insert(*id, Target::VifPeers(vif.to_owned(), mask));
                        }
                    }
                }
            }
        }
        out
    }

    fn route_add(&mut self, gateway: String, prefix: Ipv4Net, via: String) -> Result<(), Error> {
        self.check_gateway(&gateway)?;
        if prefix.trunc() != prefix {
            return Err(Error::Refused(format!(
                "prefix {prefix} has host bits set (did you mean {}?)",
                prefix.trunc()
            )));
        }
        let target = self
            .config
            .via(&via)
            .ok_or_else(|| Error::Refused(format!("no VIF or attachment named {via:?}")))?;
        if target.border_gateway() != gateway {
            return Err(Error::Refused(format!(
                "{} {via:?} belongs to border gateway {:?}, not {gateway:?}",
                target.kind(),
                target.border_gateway()
            )));
        }
        if let config::Via::Vif(_) = target
            && let Some((att, cidr)) = self.config.overlapping_propagated(&gateway, prefix)
        {
            return Err(Error::Refused(format!(
                "{prefix} overlaps VPC CIDR {cidr} of attachment {:?}: customer segments must not overlap VPC segments",
                att.name
            )));
        }
        let exists = self
            .config
            .static_routes
            .iter()
            .any(|r| r.border_gateway == gateway && r.prefix == prefix)
            || self
                .state
                .routes
                .iter()
                .any(|r| r.gateway == gateway && r.prefix == prefix);
        if exists {
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
        // Persisted before it is applied: an acknowledged route survives a crash.
        self.state.save(&self.config.agent.state_dir)?;
        self.rebuild_tables();
        self.reconcile()
    }

    fn route_del(&mut self, gateway: &str, prefix: Ipv4Net) -> Result<(), Error> {
        self.check_gateway(gateway)?;
        let before = self.state.routes.len();
        self.state
            .routes
            .retain(|r| !(r.gateway == gateway && r.prefix == prefix));
        if self.state.routes.len() == before {
            if self
                .config
                .static_routes
                .iter()
                .any(|r| r.border_gateway == gateway && r.prefix == prefix)
            {
                return Err(Error::Refused(format!(
                    "the static route for {prefix} comes from the config file: remove it there and run `forwarder reload`"
                )));
            }
            return Err(Error::Refused(format!(
                "no static route for {prefix} in {gateway:?}"
            )));
        }
        self.state.save(&self.config.agent.state_dir)?;
        self.rebuild_tables();
        self.reconcile()
    }

    fn lookup(&self, gateway: &str, address: Ipv4Addr) -> Result<control::LookupAnswer, Error> {
        let gw = self.check_gateway(gateway)?;
        let id = self.dp.lookup(gw, address)?;
        let targets = self.nh_targets();
        Ok(control::LookupAnswer {
            gateway: gateway.to_owned(),
            address,
            next_hop_id: id,
            next_hop: id.map(|id| {
                targets
                    .get(&id)
                    .map_or_else(|| format!("next hop {id}"), Target::to_string)
            }),
        })
    }

    fn stats(&self, vif: Option<&str>, attachment: Option<&str>) -> Result<control::Stats, Error> {
        let convert = |c: forwarder_common::TrafficCounters| control::Counters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
        };
        if let Some(v) = vif
            && !self.vifs.contains_key(v)
        {
            return Err(Error::Refused(format!("no VIF named {v:?}")));
        }
        if let Some(a) = attachment
            && self.config.attachment(a).is_none()
        {
            return Err(Error::Refused(format!("no attachment named {a:?}")));
        }
        let mut vifs = Vec::new();
        for (name, rt) in &self.vifs {
            if attachment.is_none() && vif.is_none_or(|v| v == name) {
                vifs.push(control::NamedCounters {
                    name: name.clone(),
                    counters: convert(self.dp.vif_counters(rt.id)?),
                });
            }
        }
        let mut attachments = Vec::new();
        for (name, id) in &self.state.ids.attachments {
            if vif.is_none() && attachment.is_none_or(|a| a == name) {
                attachments.push(control::NamedCounters {
                    name: name.clone(),
                    counters: convert(self.dp.attachment_counters(*id)?),
                });
            }
        }
        let drops = self.dp.drops()?;
        let passes = self.dp.passes()?;
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
