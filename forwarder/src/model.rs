//! The configuration resolved once per load into what the plan reads: typed ids (kept across
//! restarts), names to ids, each VIF's port and control-plane names, VPC CIDRs per border
//! gateway, and the static routes of the config and of the CLI as typed targets. Lookups by
//! name or by port are maps, not scans: the agent asks them per event.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use ipnet::IpNet;

use crate::{
    config::{self, Config, Routing},
    ids::{AttachmentId, Exhausted, GatewayId, VifId},
    rib::Target,
    state::{CliRoute, Ids},
};

/// Which program a port runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRole {
    /// A hosted or dedicated connection toward customers (802.1Q trunk).
    Connection,
    /// The port toward the VPCs' VTEPs.
    Underlay,
    /// The host end of a VIF's control veth.
    Control,
}

impl PortRole {
    pub const fn program(self) -> &'static str {
        match self {
            Self::Connection => "xdp_customer",
            Self::Underlay => "xdp_underlay",
            Self::Control => "xdp_control",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Underlay => "underlay",
            Self::Control => "control",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    /// The CIDRs its attachments propagate: customer routes may not overlap them.
    pub vpc_cidrs: Vec<IpNet>,
    /// One VIF's routes are advertised to the others.
    pub advertise_between_vifs: bool,
    /// Equal best BGP paths on several VIFs share the traffic.
    pub multipath: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub gateway: GatewayId,
    pub vni: u32,
    pub remote_vtep: Ipv4Addr,
    pub router_mac: [u8; 6],
    pub propagate: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vif {
    pub name: String,
    pub gateway: GatewayId,
    /// The connection's interface.
    pub port: String,
    pub vlan: u16,
    pub routing: Routing,
    pub peers: Vec<config::Peer>,
    /// The control plane: namespace name and host end of its veth (`fwc<ID>`).
    pub netns: String,
    pub host_if: String,
    /// The section as configured (BGP settings, names for views).
    pub config: config::Vif,
}

/// A static route, from the config file or from `forwarder route add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Static {
    pub target: Target,
    pub cli: bool,
}

/// What a `via` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Vif(VifId),
    Attachment(AttachmentId),
}

/// Prefix of the host ends of control veths (`fwc<VIF id>`); interfaces of the config may not
/// look like one.
pub const CONTROL_IF_PREFIX: &str = "fwc";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub gateways: BTreeMap<GatewayId, Gateway>,
    pub attachments: BTreeMap<AttachmentId, Attachment>,
    pub vifs: BTreeMap<VifId, Vif>,
    pub statics: BTreeMap<(GatewayId, IpNet), Static>,
    /// Configured ports (connections and the underlay) by interface name.
    pub ports: BTreeMap<String, PortRole>,
    pub underlay: String,
    pub local_vtep: Ipv4Addr,
    gateway_names: HashMap<String, GatewayId>,
    names: HashMap<String, Named>,
    vifs_by_port: HashMap<String, Vec<VifId>>,
    vifs_by_netns: HashMap<String, VifId>,
    vifs_by_gateway: HashMap<GatewayId, Vec<VifId>>,
}

impl Vif {
    /// What the data plane enforces for this VIF: MTU, source check, control-path limit.
    pub fn policy(&self, agent: &config::Agent) -> forwarder_common::VifPolicy {
        let c = &self.config;
        let rate = c.control_rate_pps.unwrap_or(agent.control_rate_pps);
        let burst = c.control_burst.unwrap_or(agent.control_burst).max(1);
        // 0 pps: unlimited (interval 0).
        let interval = 1_000_000_000u32.checked_div(rate).map_or(0, |i| i.max(1));
        forwarder_common::VifPolicy {
            mtu: c.mtu.unwrap_or(forwarder_common::DEFAULT_VIF_MTU),
            flags: match c.source_check {
                config::SourceCheck::Off => 0,
                config::SourceCheck::Strict => forwarder_common::vif_flags::SOURCE_CHECK,
            },
            control_interval_ns: interval,
            control_burst_ns: u64::from(interval) * u64::from(burst),
        }
    }
}

impl Default for Model {
    fn default() -> Self {
        Self {
            gateways: BTreeMap::new(),
            attachments: BTreeMap::new(),
            vifs: BTreeMap::new(),
            statics: BTreeMap::new(),
            ports: BTreeMap::new(),
            underlay: String::new(),
            local_vtep: Ipv4Addr::UNSPECIFIED,
            gateway_names: HashMap::new(),
            names: HashMap::new(),
            vifs_by_port: HashMap::new(),
            vifs_by_netns: HashMap::new(),
            vifs_by_gateway: HashMap::new(),
        }
    }
}

/// The gateway and via names of the last static route resolved, and what they resolved to.
type LastNames<'a> = (&'a str, &'a str, Option<(GatewayId, Target)>);

impl Model {
    /// Resolves `config` and the CLI routes, giving ids to objects that have none yet. Ids
    /// are never released here: the agent releases those of removed objects once they are
    /// gone from the maps, so a new object never takes a slot still in use.
    pub fn build(config: &Config, cli: &[CliRoute], ids: &mut Ids) -> Result<Self, Exhausted> {
        let mut m = Self {
            underlay: config.underlay.interface.clone(),
            local_vtep: config.underlay.local_vtep,
            ..Self::default()
        };
        for g in &config.border_gateways {
            let id = GatewayId(ids.gateways.allocate(&g.name)?);
            m.gateway_names.insert(g.name.clone(), id);
            m.gateways.insert(
                id,
                Gateway {
                    name: g.name.clone(),
                    vpc_cidrs: Vec::new(),
                    advertise_between_vifs: g.advertise_between_vifs,
                    multipath: g.multipath,
                },
            );
        }
        for a in &config.vpc_attachments {
            let id = AttachmentId(ids.attachments.allocate(&a.name)?);
            let gateway = m.gateway_names[&a.border_gateway];
            if let Some(g) = m.gateways.get_mut(&gateway) {
                g.vpc_cidrs.extend(a.propagate.iter().copied());
            }
            m.names.insert(a.name.clone(), Named::Attachment(id));
            m.attachments.insert(
                id,
                Attachment {
                    name: a.name.clone(),
                    gateway,
                    vni: a.vni,
                    remote_vtep: a.remote_vtep,
                    router_mac: a.router_mac.0,
                    propagate: a.propagate.clone(),
                },
            );
        }
        m.ports
            .insert(config.underlay.interface.clone(), PortRole::Underlay);
        for c in &config.connections {
            m.ports.insert(c.interface.clone(), PortRole::Connection);
        }
        for v in &config.vifs {
            let id = VifId(ids.vifs.allocate(&v.name)?);
            let gateway = m.gateway_names[&v.border_gateway];
            let port = config
                .connection(&v.connection)
                .map(|c| c.interface.clone())
                .unwrap_or_default();
            m.names.insert(v.name.clone(), Named::Vif(id));
            m.vifs_by_port.entry(port.clone()).or_default().push(id);
            m.vifs_by_gateway.entry(gateway).or_default().push(id);
            let netns = format!("{}{}", config.agent.netns_prefix, v.name);
            m.vifs_by_netns.insert(netns, id);
            m.vifs.insert(
                id,
                Vif {
                    name: v.name.clone(),
                    gateway,
                    port,
                    vlan: v.vlan,
                    routing: v.routing,
                    peers: v.peers.clone(),
                    netns: format!("{}{}", config.agent.netns_prefix, v.name),
                    host_if: format!("{CONTROL_IF_PREFIX}{id}"),
                    config: v.clone(),
                },
            );
        }
        let routes = config
            .static_routes
            .iter()
            .map(|r| (&r.border_gateway, r.prefix, &r.via, false))
            .chain(cli.iter().map(|r| (&r.gateway, r.prefix, &r.via, true)));
        // Built in bulk (full B-tree nodes); a CLI route replaces a config route of its
        // prefix, as inserting them in this order would. Routes in a row mostly name the
        // same gateway and via: those names are looked up once for the run.
        let mut names: Option<LastNames<'_>> = None;
        let statics: Vec<((GatewayId, IpNet), Static)> = routes
            .filter_map(|(gateway, prefix, via, cli)| {
                let resolved = match names {
                    Some((g, v, resolved)) if g == gateway.as_str() && v == via.as_str() => {
                        resolved
                    }
                    _ => {
                        let resolved = m.gateway_id(gateway).zip(m.target(via));
                        names = Some((gateway.as_str(), via.as_str(), resolved));
                        resolved
                    }
                };
                let (gateway, target) = resolved?;
                Some((
                    (gateway, prefix),
                    Static {
                        target: target.for_prefix(prefix),
                        cli,
                    },
                ))
            })
            .collect();
        m.statics = statics.into_iter().collect();
        Ok(m)
    }

    pub fn gateway_id(&self, name: &str) -> Option<GatewayId> {
        self.gateway_names.get(name).copied()
    }

    pub fn named(&self, name: &str) -> Option<Named> {
        self.names.get(name).copied()
    }

    pub fn vif_id(&self, name: &str) -> Option<VifId> {
        match self.names.get(name) {
            Some(Named::Vif(id)) => Some(*id),
            _ => None,
        }
    }

    pub fn attachment_id(&self, name: &str) -> Option<AttachmentId> {
        match self.names.get(name) {
            Some(Named::Attachment(id)) => Some(*id),
            _ => None,
        }
    }

    /// The target a static route's `via` makes.
    pub fn target(&self, via: &str) -> Option<Target> {
        Some(match self.names.get(via)? {
            Named::Vif(id) => Target::Vif(*id),
            Named::Attachment(id) => Target::Attachment(*id),
        })
    }

    /// The border gateway a target belongs to.
    pub fn target_gateway(&self, target: Target) -> Option<GatewayId> {
        match target {
            Target::Attachment(a) => self.attachments.get(&a).map(|a| a.gateway),
            Target::Vif(v) | Target::Vif6(v) | Target::VifPeers(v, _) => {
                self.vifs.get(&v).map(|v| v.gateway)
            }
            Target::Multipath(_) => None,
        }
    }

    /// The VIF whose control namespace is `netns`.
    pub fn vif_of_netns(&self, netns: &str) -> Option<VifId> {
        self.vifs_by_netns.get(netns).copied()
    }

    pub fn vifs_on_port(&self, port: &str) -> &[VifId] {
        self.vifs_by_port.get(port).map_or(&[], Vec::as_slice)
    }

    pub fn vifs_of_gateway(&self, gateway: GatewayId) -> &[VifId] {
        self.vifs_by_gateway
            .get(&gateway)
            .map_or(&[], Vec::as_slice)
    }

    /// A VPC CIDR of `gateway` that overlaps `prefix`, with the attachment propagating it.
    pub fn overlapping_vpc(&self, gateway: GatewayId, prefix: IpNet) -> Option<(&str, IpNet)> {
        self.attachments
            .values()
            .filter(|a| a.gateway == gateway)
            .flat_map(|a| a.propagate.iter().map(move |c| (a.name.as_str(), *c)))
            .find(|(_, c)| c.contains(&prefix.network()) || prefix.contains(&c.network()))
    }

    /// What a target is called in views: `attachment NAME`, `vif NAME`, `vif NAME (bgp peer 0+1)`.
    pub fn describe(&self, target: Target) -> String {
        match target {
            Target::Attachment(a) => format!(
                "attachment {}",
                self.attachments.get(&a).map_or("?", |a| &a.name)
            ),
            Target::Vif(v) | Target::Vif6(v) => format!("vif {}", self.vif_name(v)),
            Target::VifPeers(v, mask) => {
                let peers: Vec<String> = (0..8)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| i.to_string())
                    .collect();
                format!("vif {} (bgp peer {})", self.vif_name(v), peers.join("+"))
            }
            Target::Multipath(_) => "multipath".to_owned(),
        }
    }

    pub fn vif_name(&self, id: VifId) -> &str {
        self.vifs.get(&id).map_or("?", |v| &v.name)
    }

    pub fn gateway_name(&self, id: GatewayId) -> &str {
        self.gateways.get(&id).map_or("?", |g| &g.name)
    }
}
