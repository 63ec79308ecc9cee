//! The agent's configuration file (TOML, shape fixed by DESIGN §5): its serde types and the
//! check of every domain rule of DESIGN §1 before anything of it is applied.
//!
//! [`load`] and [`parse`] return a [`Config`] only when the whole file is valid. Otherwise the
//! [`ConfigError`] lists every problem found, one per line, each naming the file, the section
//! and the field: `forwarder.toml: vif "vif-100": vlan 100 already used on connection "hc-1" by
//! vif "vif-7"`. A section is named by its `name` (`vpc_attachment "att-a"`), or by its position
//! when the name is missing, invalid or a duplicate (`[[vif]] #2`, 1-based), and peers and
//! static routes by position (`vif "vif-100" peer #1`, `static_route #1`). TOML syntax, unknown
//! keys and wrong types stop parsing, so such an error comes alone, with its line and column.
//!
//! Choices beyond DESIGN §1, as an operator would expect them:
//! - interconnect addresses may also be link-local (169.254.0.0/16): the §5 example uses them;
//! - a peer's `prefix_len` must be 30 for an IPv4 pair (the default), 126 (the default) or
//!   127 for an IPv6 one; IPv6 pairs are unicast outside fe80::/10, and a /126 does not use
//!   its subnet-router anycast address (the first);
//! - a VIF with an IPv6 pair has an MTU of at least 1280 (IPv6's minimum); a static route's
//!   VIF has a pair of the prefix's family; on a BGP VIF an IPv6 pair runs an IPv6 session;
//! - a VIF and a VPC attachment may not share a name, since `static_route.via` names either;
//! - BGP-only settings (`bgp_password`, `max_prefixes`, `accept_default = true`) on a
//!   `routing = "static"` VIF are errors rather than silently ignored;
//! - names start with a letter or digit (they name namespaces and files), paths are absolute,
//!   VTEPs are unicast and not loopback;
//! - `[agent]` also has `pin_dir` (default `/sys/fs/bpf/forwarder`) and `netns_prefix`
//!   (default `fwv-`: VIF `vif-100` gets namespace `fwv-vif-100`).

use std::{
    collections::HashMap,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::IpNet;

use crate::{FastMap, FastSet};

mod split;
use serde::{Deserialize, Deserializer, de};

/// The ASN the gateway speaks to customers unless `agent.local_asn` says otherwise.
pub const DEFAULT_LOCAL_ASN: u32 = 64512;
/// The ASNs a customer router may use.
pub const CLIENT_ASN_RANGE: RangeInclusive<u32> = 65001..=65499;
/// 802.1Q VLAN ids a VIF may use (0 is priority tagging, 4095 reserved).
pub const VLAN_RANGE: RangeInclusive<u16> = 1..=4094;
/// 24-bit VXLAN network identifiers, 0 excluded.
pub const VNI_RANGE: RangeInclusive<u32> = 1..=0x00ff_ffff;
/// Names become namespace and file names: keep them short.
pub const MAX_NAME_LEN: usize = 32;
/// Linux `IFNAMSIZ` less the terminating NUL.
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Linux `TCP_MD5SIG_MAXKEYLEN`.
pub const MAX_BGP_PASSWORD_LEN: usize = 80;
/// `max_prefixes` when a BGP VIF does not say: a private VIF carries a customer's own
/// networks (AWS allows 100 on a private VIF, Azure 4,000 on private peering); 4,000 fits
/// the largest of them and bounds one session's Adj-RIB-In at well under 1 MiB.
pub const DEFAULT_MAX_PREFIXES: u32 = 4000;
/// One interconnect pair per cloud router.
pub const MAX_PEERS: usize = 2;
/// The most extra copies of our ASN a VIF may put on its AS_PATH.
pub const MAX_AS_PATH_PREPEND: u8 = 10;
/// The smallest MTU a VIF may have (every IPv4 link carries 68 bytes, RFC 791).
pub const MIN_VIF_MTU: u16 = 68;
/// Above this a control-path limit is no limit (1 µs per frame, per class, per CPU).
pub const MAX_CONTROL_RATE_PPS: u32 = 1_000_000;
/// IPv4 interconnect pairs are /30s.
pub const INTERCONNECT_PREFIX_LEN: u8 = 30;
/// IPv6 interconnect pairs are /126s (Azure's private peering) unless they say /127
/// (RFC 6164).
pub const INTERCONNECT_PREFIX_LEN_V6: u8 = 126;
/// Control namespace prefixes are short: the VIF name follows.
pub const MAX_NETNS_PREFIX_LEN: usize = 16;
/// Sizes of the route map an operator may choose.
pub const ROUTE_CAPACITY_RANGE: RangeInclusive<u32> = 16..=16_777_216;

/// The whole file. The ones [`load`] and [`parse`] return are valid.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: Agent,
    pub underlay: Underlay,
    #[serde(default, rename = "connection")]
    pub connections: Vec<Connection>,
    #[serde(default, rename = "border_gateway")]
    pub border_gateways: Vec<BorderGateway>,
    #[serde(default, rename = "vpc_attachment")]
    pub vpc_attachments: Vec<VpcAttachment>,
    #[serde(default, rename = "vif")]
    pub vifs: Vec<Vif>,
    #[serde(default, rename = "static_route")]
    pub static_routes: Vec<StaticRoute>,
}

/// `[agent]`: the daemon itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// The ASN the gateway speaks to customers.
    pub local_asn: u32,
    /// BGP identifier; [`parse`] fills in `underlay.local_vtep` when it is omitted.
    pub router_id: Option<Ipv4Addr>,
    /// Where persisted state (routes added with `route add`) lives.
    pub state_dir: PathBuf,
    /// The Unix socket the control CLI talks to.
    pub control_socket: PathBuf,
    pub xdp_mode: XdpMode,
    /// Where maps and links are pinned, so that forwarding outlives the agent (a bpf fs).
    pub pin_dir: PathBuf,
    /// Each VIF's control-plane namespace is this prefix followed by the VIF's name.
    pub netns_prefix: String,
    /// BGP hold time offered to customers, seconds (0: no keepalives; else at least 3).
    pub bgp_hold_time: u16,
    /// Seconds between attempts to open a BGP session that is down.
    pub bgp_connect_retry: u16,
    /// Seconds a session stays down after its peer exceeded `max_prefixes`.
    pub bgp_max_prefix_restart: u16,
    /// Graceful restart (RFC 4724) on every session: customer routers keep our routes
    /// while the agent restarts, and we keep theirs while they restart.
    pub bgp_graceful_restart: bool,
    /// The restart time we advertise: how long customer routers keep our routes while the
    /// agent is away, and how long the agent keeps a session's routes after its own restart
    /// before the session is back (seconds, 1 to 4095).
    pub bgp_restart_time: u16,
    /// After a session is back from a restart (ours or the peer's), how long its stale
    /// routes wait for the peer's End-of-RIB before they are swept (seconds).
    pub bgp_stale_routes_time: u16,
    /// Members of this group may use the control socket (mode 0660); without it only root
    /// (and the agent's own user) may (mode 0600).
    pub control_group: Option<String>,
    /// Entries of the route map (all border gateways together) when it is created; a pinned
    /// map keeps the size it was created with.
    pub route_capacity: u32,
    /// Where Prometheus scrapes `GET /metrics`, e.g. "127.0.0.1:9330" (in the agent's network
    /// namespace); none: no metrics endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What each VIF may send to its control plane (ARP, BGP, broadcast, multicast, traffic
    /// to the cloud address): frames per second of each of three classes (BGP, ARP, the
    /// rest), per CPU; 0 = unlimited. A `[[vif]]` may set its own.
    pub control_rate_pps: u32,
    /// How many control frames of a class may come at once (bucket depth).
    pub control_burst: u32,
    /// BFD (for VIFs with `bfd = true`): transmit and receive interval once Up, and how
    /// many intervals without a packet make the session down.
    pub bfd_interval_ms: u32,
    pub bfd_multiplier: u8,
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            local_asn: DEFAULT_LOCAL_ASN,
            router_id: None,
            state_dir: PathBuf::from("/var/lib/forwarder"),
            control_socket: PathBuf::from("/run/forwarder/forwarder.sock"),
            xdp_mode: XdpMode::Native,
            pin_dir: PathBuf::from(forwarder_common::PIN_ROOT),
            netns_prefix: "fwv-".to_owned(),
            bgp_hold_time: 90,
            bgp_connect_retry: 5,
            bgp_max_prefix_restart: 30,
            bgp_graceful_restart: true,
            bgp_restart_time: 120,
            bgp_stale_routes_time: 360,
            control_group: None,
            route_capacity: forwarder_common::MAX_ROUTES,
            metrics_listen: None,
            control_rate_pps: DEFAULT_CONTROL_RATE_PPS,
            control_burst: DEFAULT_CONTROL_BURST,
            bfd_interval_ms: 300,
            bfd_multiplier: 3,
        }
    }
}

/// Default control-path rate limit: frames per second per class per CPU, and burst.
pub const DEFAULT_CONTROL_RATE_PPS: u32 = 1000;
pub const DEFAULT_CONTROL_BURST: u32 = 200;

/// How XDP programs are attached to the ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver.
    #[default]
    Native,
    /// Generic XDP, after the skb is built: slower, works everywhere.
    Skb,
}

/// `[underlay]`: the port toward the VPCs' VTEPs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Underlay {
    pub interface: String,
    /// Outer source address of our VXLAN packets; the interface already carries it.
    pub local_vtep: Ipv4Addr,
}

/// `[[connection]]`: a port toward customers carrying 802.1Q-tagged frames.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub name: String,
    pub kind: ConnectionKind,
    pub interface: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Hosted,
    Dedicated,
}

/// `[[border_gateway]]`: a routing domain with its own route table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorderGateway {
    pub name: String,
    /// Whether one VIF's routes (BGP or static) are advertised to the gateway's other VIFs
    /// (IDC ↔ IDC through the gateway). Default true; false: the VIFs learn only the VPC
    /// CIDRs.
    #[serde(default = "yes")]
    pub advertise_between_vifs: bool,
    /// Equal best BGP paths on several VIFs share the traffic (per-flow hash, at most 8
    /// client routers). Default true; false: the lowest VIF id carries it alone.
    #[serde(default = "yes")]
    pub multipath: bool,
}

fn yes() -> bool {
    true
}

/// `[[vpc_attachment]]`: a VPC bound to a border gateway, on the wire a VXLAN tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcAttachment {
    pub name: String,
    pub border_gateway: String,
    pub vni: u32,
    pub remote_vtep: Ipv4Addr,
    /// Inner destination MAC toward the VPC.
    pub router_mac: MacAddr,
    /// VPC CIDRs (IPv4 or IPv6) installed in the gateway's table with this attachment as
    /// next hop.
    #[serde(deserialize_with = "prefixes")]
    pub propagate: Vec<IpNet>,
}

/// `[[vif]]`: one VLAN on one connection, bound to one border gateway.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vif {
    pub name: String,
    pub connection: String,
    pub vlan: u16,
    pub border_gateway: String,
    pub routing: Routing,
    /// Required with `routing = "bgp"`.
    pub client_asn: Option<u32>,
    /// TCP MD5 key of the BGP sessions.
    pub bgp_password: Option<String>,
    /// More prefixes than this received from the client (accepted or rejected): the session
    /// is torn down. Default [`DEFAULT_MAX_PREFIXES`].
    pub max_prefixes: Option<u32>,
    /// Accept a default route from the client.
    #[serde(default)]
    pub accept_default: bool,
    /// Received prefixes longer than this are rejected (default 32: none are).
    pub max_prefix_len: Option<u8>,
    /// When given, received prefixes must lie within one of these.
    #[serde(default, deserialize_with = "prefixes")]
    pub allowed_prefixes: Vec<IpNet>,
    /// GTSM (RFC 5082): the sessions send with TTL 255 and accept only TTL 255.
    #[serde(default)]
    pub ttl_security: bool,
    /// Accept a client router's hold time of 0 (no keepalives, a dead peer never noticed).
    #[serde(default)]
    pub allow_hold_time_zero: bool,
    /// Largest IPv4 packet toward the customer (68 to 9001; default 1500). Bigger ones get
    /// ICMP fragmentation needed (DF set) or are dropped. The connection port's MTU must be
    /// at least this.
    pub mtu: Option<u16>,
    /// `"strict"`: packets from the customer whose source address is not routed back to
    /// this VIF (unicast RPF over its static and BGP routes) are dropped. Default `"off"`.
    #[serde(default)]
    pub source_check: SourceCheck,
    /// Extra copies of our ASN on the AS_PATH of the routes advertised to this VIF's
    /// routers (0 to 10): makes this VIF's path less preferred by the customer.
    #[serde(default)]
    pub as_path_prepend: u8,
    /// BFD with the client routers, one session per BGP session (RFC 5880/5881): a
    /// failure is seen in `bfd_interval_ms × bfd_multiplier` instead of the hold time.
    #[serde(default)]
    pub bfd: bool,
    /// This VIF's own control-path rate limit (see `[agent] control_rate_pps`).
    pub control_rate_pps: Option<u32>,
    pub control_burst: Option<u32>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
}

/// `source_check` of a `[[vif]]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceCheck {
    #[default]
    Off,
    Strict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    Bgp,
    Static,
}

/// `[[vif.peer]]`: one interconnect pair, IPv4 (/30) or IPv6 (/126 or /127): one BGP session
/// to one client router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "PeerFields")]
pub struct Peer {
    pub client_address: IpAddr,
    pub cloud_address: IpAddr,
    /// 30 for IPv4 when the file says nothing, 126 for IPv6.
    pub prefix_len: u8,
}

/// `[[vif.peer]]` as written: the default `prefix_len` depends on the family.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFields {
    client_address: IpAddr,
    cloud_address: IpAddr,
    prefix_len: Option<u8>,
}

impl From<PeerFields> for Peer {
    fn from(f: PeerFields) -> Self {
        let default = if f.client_address.is_ipv6() {
            INTERCONNECT_PREFIX_LEN_V6
        } else {
            INTERCONNECT_PREFIX_LEN
        };
        Self {
            client_address: f.client_address,
            cloud_address: f.cloud_address,
            prefix_len: f.prefix_len.unwrap_or(default),
        }
    }
}

impl Peer {
    /// The interconnect subnet (of the client address's family), `None` only for a
    /// `prefix_len` longer than the address.
    pub fn network(&self) -> Option<IpNet> {
        IpNet::new(self.client_address, self.prefix_len)
            .ok()
            .map(|net| net.trunc())
    }

    /// An IPv6 pair.
    pub const fn is_ipv6(&self) -> bool {
        self.client_address.is_ipv6()
    }
}

/// `[[static_route]]`: a prefix in a border gateway's table toward a VIF or an attachment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub border_gateway: String,
    #[serde(deserialize_with = "prefix")]
    pub prefix: IpNet,
    /// The name of a VIF or a VPC attachment of the same border gateway.
    pub via: String,
}

/// What a `via` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<'a> {
    Vif(&'a Vif),
    Attachment(&'a VpcAttachment),
}

impl Via<'_> {
    pub fn border_gateway(&self) -> &str {
        match self {
            Self::Vif(vif) => &vif.border_gateway,
            Self::Attachment(attachment) => &attachment.border_gateway,
        }
    }

    /// The config section kind, for messages.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Vif(_) => "vif",
            Self::Attachment(_) => "vpc_attachment",
        }
    }
}

impl Config {
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.name == name)
    }

    pub fn border_gateway(&self, name: &str) -> Option<&BorderGateway> {
        self.border_gateways.iter().find(|g| g.name == name)
    }

    pub fn attachment(&self, name: &str) -> Option<&VpcAttachment> {
        self.vpc_attachments.iter().find(|a| a.name == name)
    }

    pub fn vif(&self, name: &str) -> Option<&Vif> {
        self.vifs.iter().find(|v| v.name == name)
    }

    /// The VIF or attachment a static route's `via` names.
    pub fn via(&self, name: &str) -> Option<Via<'_>> {
        self.vif(name)
            .map(Via::Vif)
            .or_else(|| self.attachment(name).map(Via::Attachment))
    }

    /// The BGP identifier: `agent.router_id`, or the local VTEP address.
    pub fn router_id(&self) -> Ipv4Addr {
        self.agent.router_id.unwrap_or(self.underlay.local_vtep)
    }

    /// A CIDR propagated into `border_gateway` that overlaps `prefix`, with its attachment:
    /// a route toward a customer must not overlap one (DESIGN §1).
    pub fn overlapping_propagated(
        &self,
        border_gateway: &str,
        prefix: IpNet,
    ) -> Option<(&VpcAttachment, IpNet)> {
        self.vpc_attachments
            .iter()
            .filter(|a| a.border_gateway == border_gateway)
            .flat_map(|a| a.propagate.iter().map(move |cidr| (a, *cidr)))
            .find(|(_, cidr)| overlaps(*cidr, prefix))
    }
}

/// An Ethernet address, written `02:00:00:00:0a:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid MAC address {0:?}: expected six hex octets separated by ':' like \"02:00:00:00:0a:01\""
)]
pub struct MacAddrParseError(String);

impl FromStr for MacAddr {
    type Err = MacAddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || MacAddrParseError(text.to_owned());
        let mut octets = [0; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(error)?;
            // from_str_radix alone would take "+f".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(Self(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

fn parse_prefix(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| {
        format!(
            "invalid prefix {text:?}: expected address/length like \"10.0.0.0/16\" or \"2001:db8::/32\""
        )
    })
}

fn prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    parse_prefix(&String::deserialize(deserializer)?).map_err(de::Error::custom)
}

fn prefixes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_prefix(text).map_err(de::Error::custom))
        .collect()
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, one line each.
    #[error("{}", render(origin, problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { problems, .. } => problems,
        }
    }
}

fn render(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("{origin}: {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One violated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `[agent]`, `vif "vif-100"`, `[[vif]] #2`, `vif "vif-100" peer #1`, `static_route #1`.
    pub section: String,
    /// The key at fault, as written in the file.
    pub field: String,
    /// The whole text after the section; it starts with the field.
    pub message: String,
}

impl Problem {
    /// `detail` continues the sentence after the field name: "100 already used on ...".
    fn new(section: &str, field: &str, detail: impl fmt::Display) -> Self {
        Self {
            section: section.to_owned(),
            field: field.to_owned(),
            message: format!("{field} {detail}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.section, self.message)
    }
}

/// Reads and checks the config file at `path`; messages name it as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and checks a config; `origin` names the file in messages.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        origin: origin.to_owned(),
        problems,
    };
    let mut config: Config = match split::parse(text, split::PIECE) {
        Some(config) => config,
        None => toml::from_str(text).map_err(|error| invalid(vec![toml_problem(text, &error)]))?,
    };
    let problems = Validator::run(&config);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    config.agent.router_id = Some(config.router_id());
    Ok(config)
}

/// A TOML error located the way validation problems are: section (found from the table
/// headers above the error) and field, plus line and column.
fn toml_problem(text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim_end();
    let span = error.span().unwrap_or_default();
    // A key missing at the top level comes with an empty span at the start.
    let top_level = span == (0..0) && message.starts_with("missing field");
    if error.span().is_none() || top_level {
        let field = quoted_field(message).unwrap_or("document");
        return Problem {
            section: "top level".to_owned(),
            field: field.to_owned(),
            message: format!("{field}: {message}"),
        };
    }
    let before = text.get(..span.start).unwrap_or(text);
    let line_index = before.matches('\n').count();
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let lines: Vec<&str> = text.split('\n').collect();
    let line = lines.get(line_index).copied().unwrap_or_default();
    let sections = Sections::scan(&lines, line_index);

    let (section, field) = match header(line) {
        // The table lacks a key.
        Some(_) if message.starts_with("missing field") => {
            (sections.current.clone(), quoted_field(message))
        }
        // The table itself is at fault (unknown, defined twice): its parent holds it.
        Some(header) => {
            let (parent, leaf) = match header.path().rsplit_once('.') {
                Some((parent, leaf)) => (Some(parent), leaf),
                None => (None, header.path()),
            };
            (
                sections.label(parent),
                Some(quoted_field(message).unwrap_or(leaf)),
            )
        }
        // A broken table header belongs to no section.
        None if line.trim_start().starts_with('[') => ("top level".to_owned(), None),
        None => {
            let key = line
                .split_once('=')
                .map(|(key, _)| key.trim())
                .filter(|key| !key.is_empty());
            (sections.current.clone(), quoted_field(message).or(key))
        }
    };
    let field = field.unwrap_or_else(|| line.trim());
    let field = if field.is_empty() { "document" } else { field };
    Problem {
        section,
        field: field.to_owned(),
        message: format!(
            "{field}: {message} (line {}, column {column})",
            line_index + 1
        ),
    }
}

/// The field serde names in "unknown field `x`" and "missing field `x`".
fn quoted_field(message: &str) -> Option<&str> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
}

enum Header<'a> {
    Table(&'a str),
    ArrayEntry(&'a str),
}

impl<'a> Header<'a> {
    fn path(&self) -> &'a str {
        match self {
            Self::Table(path) | Self::ArrayEntry(path) => path,
        }
    }
}

fn header(line: &str) -> Option<Header<'_>> {
    let line = line.trim_start();
    let is_path = |path: &str| {
        !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c))
    };
    if let Some(rest) = line.strip_prefix("[[") {
        let (path, _) = rest.split_once("]]")?;
        let path = path.trim();
        return is_path(path).then_some(Header::ArrayEntry(path));
    }
    let (path, _) = line.strip_prefix('[')?.split_once(']')?;
    let path = path.trim();
    is_path(path).then_some(Header::Table(path))
}

/// The sections of a document as far as one line, named like validation names them.
struct Sections<'t> {
    /// The section of the last line scanned.
    current: String,
    /// The section of the latest table (or array entry) of each header path.
    labels: HashMap<&'t str, String>,
}

impl<'t> Sections<'t> {
    /// Scans the table headers of `lines` up to line `upto` (0-based), included.
    fn scan(lines: &[&'t str], upto: usize) -> Self {
        let mut sections = Self {
            current: "top level".to_owned(),
            labels: HashMap::new(),
        };
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (index, line) in lines.iter().enumerate().take(upto + 1) {
            let label = match header(line) {
                Some(Header::Table(path)) => (path, format!("[{path}]")),
                Some(Header::ArrayEntry(path)) => {
                    let count = counts.get(path).copied().unwrap_or(0) + 1;
                    // A new entry restarts the numbering of the arrays nested in it.
                    counts.retain(|p, _| !p.strip_prefix(path).is_some_and(|r| r.starts_with('.')));
                    counts.insert(path, count);
                    let label = match path.rsplit_once('.') {
                        Some((parent, leaf)) => {
                            format!("{} {leaf} #{count}", sections.label(Some(parent)))
                        }
                        None => match block_name(&lines[index + 1..]) {
                            Some(name) => format!("{path} {name:?}"),
                            None if path == "static_route" => format!("{path} #{count}"),
                            None => format!("[[{path}]] #{count}"),
                        },
                    };
                    (path, label)
                }
                None => continue,
            };
            sections.current = label.1.clone();
            sections.labels.insert(label.0, label.1);
        }
        sections
    }

    /// The section of the table at `path`; `None` is the top level.
    fn label(&self, path: Option<&str>) -> String {
        match path {
            None => "top level".to_owned(),
            Some(path) => self
                .labels
                .get(path)
                .cloned()
                .unwrap_or_else(|| format!("[{path}]")),
        }
    }
}

/// The `name = "..."` of the table whose body starts at `lines`.
fn block_name(lines: &[&str]) -> Option<String> {
    lines
        .iter()
        .take_while(|line| header(line).is_none())
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "name")
        .and_then(|(_, value)| {
            let value = value.trim().strip_prefix('"')?;
            value.split_once('"').map(|(name, _)| name.to_owned())
        })
}

/// Why a route to `prefix` cannot go to `vif`: it has no interconnect pair of the prefix's
/// family (no client router to send it to).
pub fn family_mismatch(prefix: IpNet, vif: &Vif) -> Option<String> {
    let v6 = prefix.addr().is_ipv6();
    if vif.peers.iter().any(|p| p.is_ipv6() == v6) {
        return None;
    }
    let family = if v6 { "IPv6" } else { "IPv4" };
    Some(format!(
        "{prefix} is {family} but vif {:?} has no {family} peer to send it to",
        vif.name
    ))
}

/// Whether two prefixes share addresses (never across families).
fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// Why `name` cannot be a name, as the rest of a sentence.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Some(format!("{name:?} is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("{name:?} does not start with a letter or a digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some(format!(
            "{name:?} has characters other than letters, digits, '-', '_' and '.'"
        ));
    }
    None
}

/// Why `name` cannot be a port (a Linux interface name, `dev_valid_name`, that is not one of
/// the agent's own), as the rest of a sentence.
fn interface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return Some(format!(
            "{name:?} is longer than {MAX_INTERFACE_NAME_LEN} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        return Some(format!("{name:?} is not a valid interface name"));
    }
    if name == "lo" {
        return Some("\"lo\" is the loopback interface, not a port".to_owned());
    }
    if name
        .strip_prefix(crate::model::CONTROL_IF_PREFIX)
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(format!(
            "{name:?} has the form of the agent's own control veths ({}<VIF id>), which it \
             creates and deletes",
            crate::model::CONTROL_IF_PREFIX
        ));
    }
    None
}

/// Why `prefix` cannot prefix the VIF control namespaces, as the rest of a sentence. Every
/// namespace the agent makes is this prefix and a VIF name; a prefix that ends in a
/// separator keeps those apart from the host's own namespaces.
fn netns_prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some(
            "is empty: control namespaces would be named after the VIFs alone and could \
             clash with the host's own"
                .to_owned(),
        );
    }
    if prefix.len() > MAX_NETNS_PREFIX_LEN {
        return Some(format!(
            "{prefix:?} is longer than {MAX_NETNS_PREFIX_LEN} characters"
        ));
    }
    if let Some(detail) = name_problem(prefix) {
        return Some(detail);
    }
    if !prefix.ends_with(['-', '_', '.']) {
        return Some(format!(
            "{prefix:?} does not end with '-', '_' or '.' (for example \"{prefix}-\")"
        ));
    }
    None
}

/// Why `address` cannot be a VTEP, as the rest of a sentence.
fn vtep_problem(address: Ipv4Addr) -> Option<String> {
    let what = if address.is_unspecified() {
        "unspecified"
    } else if address.is_broadcast() {
        "the broadcast address"
    } else if address.is_multicast() {
        "multicast"
    } else if address.is_loopback() {
        "loopback"
    } else {
        return None;
    };
    Some(format!("{address} is not a unicast address ({what})"))
}

/// Why `asn` cannot be the gateway's own ASN, as the rest of a sentence.
fn local_asn_problem(asn: u32) -> Option<String> {
    let why = match asn {
        0 => "is reserved (RFC 7607)",
        23456 => "is reserved (AS_TRANS, RFC 6793)",
        65535 | u32::MAX => "is reserved (RFC 7300)",
        asn if CLIENT_ASN_RANGE.contains(&asn) => {
            return Some(format!(
                "{asn} is in the client ASN range {}..={}",
                CLIENT_ASN_RANGE.start(),
                CLIENT_ASN_RANGE.end()
            ));
        }
        _ => return None,
    };
    Some(format!("{asn} {why}"))
}

/// 10/8, 172.16/12, 192.168/16, and 169.254/16 as the §5 example uses it.
fn interconnect_range(address: Ipv4Addr) -> bool {
    address.is_private() || address.is_link_local()
}

/// Why an IPv6 address cannot be an interconnect address, as the rest of a sentence: it must
/// be unicast beyond its link (global or unique local; the link-local ones are the kernel's
/// own on each side, and a session over them is not offered).
fn interconnect_problem_v6(address: Ipv6Addr) -> Option<&'static str> {
    let first = address.segments()[0];
    if address.is_unspecified() || address.is_loopback() {
        Some("is unspecified or loopback")
    } else if address.is_multicast() {
        Some("is a multicast address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("is link-local (fe80::/10); use a global or unique local (fc00::/7) pair")
    } else if address.to_ipv4_mapped().is_some() {
        Some("is an IPv4-mapped address")
    } else {
        None
    }
}

/// One pass over a parsed config, collecting every problem.
struct Validator<'a> {
    config: &'a Config,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    fn run(config: &'a Config) -> Vec<Problem> {
        let mut validator = Self {
            config,
            problems: Vec::new(),
        };
        validator.agent();
        validator.underlay();
        validator.connections();
        validator.border_gateways();
        validator.vpc_attachments();
        validator.vifs();
        validator.static_routes();
        validator.problems
    }

    fn problem(&mut self, section: &str, field: &str, detail: impl fmt::Display) {
        self.problems.push(Problem::new(section, field, detail));
    }

    /// Checks each item's name and returns the label of each item's section: by name when
    /// the name is valid and unique, by position otherwise.
    fn sections<T>(&mut self, kind: &str, items: &'a [T], name: fn(&T) -> &str) -> Vec<String> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut sections = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let name = name(item);
            let by_position = format!("[[{kind}]] #{}", index + 1);
            if let Some(detail) = name_problem(name) {
                self.problem(&by_position, "name", detail);
                sections.push(by_position);
            } else if let Some(&earlier) = first.get(name) {
                let detail = format!("{name:?} already used by [[{kind}]] #{}", earlier + 1);
                self.problem(&by_position, "name", detail);
                sections.push(by_position);
            } else {
                first.insert(name, index);
                sections.push(format!("{kind} {name:?}"));
            }
        }
        sections
    }

    fn border_gateway_exists(&mut self, section: &str, name: &str) -> bool {
        let exists = self.config.border_gateway(name).is_some();
        if !exists {
            self.problem(
                section,
                "border_gateway",
                format!("{name:?} is not a configured border_gateway"),
            );
        }
        exists
    }

    fn agent(&mut self) {
        const SECTION: &str = "[agent]";
        let agent = &self.config.agent;
        if let Some(detail) = local_asn_problem(agent.local_asn) {
            self.problem(SECTION, "local_asn", detail);
        }
        if agent.router_id == Some(Ipv4Addr::UNSPECIFIED) {
            self.problem(
                SECTION,
                "router_id",
                "0.0.0.0 is not a valid BGP identifier",
            );
        }
        for (field, path) in [
            ("state_dir", &agent.state_dir),
            ("control_socket", &agent.control_socket),
            ("pin_dir", &agent.pin_dir),
        ] {
            if !path.is_absolute() {
                self.problem(SECTION, field, format!("{path:?} is not an absolute path"));
            }
        }
        if matches!(agent.bgp_hold_time, 1 | 2) {
            self.problem(
                SECTION,
                "bgp_hold_time",
                "must be 0 or at least 3 seconds (RFC 4271)",
            );
        }
        if agent.control_rate_pps != 0 && agent.control_burst == 0 {
            self.problem(
                SECTION,
                "control_burst",
                "must be at least 1 when control_rate_pps limits",
            );
        }
        if agent.control_rate_pps > MAX_CONTROL_RATE_PPS {
            let detail = format!(
                "{} is above {MAX_CONTROL_RATE_PPS}; 0 turns the limit off",
                agent.control_rate_pps
            );
            self.problem(SECTION, "control_rate_pps", detail);
        }
        if !(10..=60_000).contains(&agent.bfd_interval_ms) {
            let detail = format!("{} is not 10 to 60000 milliseconds", agent.bfd_interval_ms);
            self.problem(SECTION, "bfd_interval_ms", detail);
        }
        if agent.bfd_multiplier == 0 {
            self.problem(SECTION, "bfd_multiplier", "must be at least 1");
        }
        if agent.bgp_connect_retry == 0 {
            self.problem(SECTION, "bgp_connect_retry", "must be at least 1 second");
        }
        if !(1..=4095).contains(&agent.bgp_restart_time) {
            self.problem(
                SECTION,
                "bgp_restart_time",
                "must be 1 to 4095 seconds (12 bits in the capability, RFC 4724)",
            );
        }
        if agent.bgp_stale_routes_time == 0 {
            self.problem(
                SECTION,
                "bgp_stale_routes_time",
                "must be at least 1 second",
            );
        }
        if let Some(detail) = netns_prefix_problem(&agent.netns_prefix) {
            self.problem(SECTION, "netns_prefix", detail);
        }
        if let Some(group) = &agent.control_group
            && let Some(detail) = name_problem(group)
        {
            self.problem(SECTION, "control_group", detail);
        }
        if !ROUTE_CAPACITY_RANGE.contains(&agent.route_capacity) {
            self.problem(
                SECTION,
                "route_capacity",
                format!(
                    "{} is outside {}..={}",
                    agent.route_capacity,
                    ROUTE_CAPACITY_RANGE.start(),
                    ROUTE_CAPACITY_RANGE.end()
                ),
            );
        }
    }

    fn underlay(&mut self) {
        const SECTION: &str = "[underlay]";
        let underlay = &self.config.underlay;
        if let Some(detail) = interface_problem(&underlay.interface) {
            self.problem(SECTION, "interface", detail);
        }
        if let Some(detail) = vtep_problem(underlay.local_vtep) {
            self.problem(SECTION, "local_vtep", detail);
        }
    }

    fn connections(&mut self) {
        let connections = &self.config.connections;
        let sections = self.sections("connection", connections, |c| &c.name);
        let mut interfaces: HashMap<&str, usize> = HashMap::new();
        for (index, connection) in connections.iter().enumerate() {
            let section = &sections[index];
            let interface = connection.interface.as_str();
            if let Some(detail) = interface_problem(interface) {
                self.problem(section, "interface", detail);
            } else if interface == self.config.underlay.interface {
                self.problem(
                    section,
                    "interface",
                    format!("{interface:?} is the underlay interface"),
                );
            } else if let Some(&earlier) = interfaces.get(interface) {
                let detail = format!("{interface:?} already used by {}", sections[earlier]);
                self.problem(section, "interface", detail);
            } else {
                interfaces.insert(interface, index);
            }
        }
    }

    fn border_gateways(&mut self) {
        self.sections("border_gateway", &self.config.border_gateways, |g| &g.name);
    }

    fn vpc_attachments(&mut self) {
        let attachments = &self.config.vpc_attachments;
        let sections = self.sections("vpc_attachment", attachments, |a| &a.name);
        let mut tunnels: HashMap<(u32, Ipv4Addr), usize> = HashMap::new();
        // Per gateway: every CIDR propagated so far, with the attachment's index.
        let mut propagated: HashMap<&str, Vec<(IpNet, usize)>> = HashMap::new();
        for (index, attachment) in attachments.iter().enumerate() {
            let section = &sections[index];
            self.border_gateway_exists(section, &attachment.border_gateway);

            let (vni, remote_vtep) = (attachment.vni, attachment.remote_vtep);
            if !VNI_RANGE.contains(&vni) {
                self.problem(
                    section,
                    "vni",
                    format!(
                        "{vni} is outside {}..={}",
                        VNI_RANGE.start(),
                        VNI_RANGE.end()
                    ),
                );
            } else if let Some(&earlier) = tunnels.get(&(vni, remote_vtep)) {
                let detail = format!(
                    "{vni} with remote_vtep {remote_vtep} already used by {}",
                    sections[earlier]
                );
                self.problem(section, "vni", detail);
            } else {
                tunnels.insert((vni, remote_vtep), index);
            }

            if let Some(detail) = vtep_problem(remote_vtep) {
                self.problem(section, "remote_vtep", detail);
            } else if remote_vtep == self.config.underlay.local_vtep {
                let detail = format!("{remote_vtep} is the underlay's own local_vtep");
                self.problem(section, "remote_vtep", detail);
            }

            let mac = attachment.router_mac;
            if mac.is_zero() {
                self.problem(section, "router_mac", format!("{mac} is all-zero"));
            } else if mac.is_multicast() {
                self.problem(
                    section,
                    "router_mac",
                    format!("{mac} is a multicast address"),
                );
            }

            if attachment.propagate.is_empty() {
                self.problem(
                    section,
                    "propagate",
                    "is empty: an attachment propagates at least one VPC CIDR",
                );
            }
            let gateway = propagated
                .entry(attachment.border_gateway.as_str())
                .or_default();
            for &cidr in &attachment.propagate {
                if cidr != cidr.trunc() {
                    let detail =
                        format!("{cidr} has host bits set (the network is {})", cidr.trunc());
                    self.problem(section, "propagate", detail);
                    continue;
                }
                if let Some(&(other, earlier)) =
                    gateway.iter().find(|(other, _)| overlaps(*other, cidr))
                {
                    let detail = format!(
                        "{cidr} overlaps {other} propagated by {} into border_gateway {:?}",
                        sections[earlier], attachment.border_gateway
                    );
                    self.problem(section, "propagate", detail);
                    continue;
                }
                gateway.push((cidr, index));
            }
        }
    }

    fn vifs(&mut self) {
        let vifs = &self.config.vifs;
        let sections = self.sections("vif", vifs, |v| &v.name);
        let mut vlans: HashMap<(&str, u16), usize> = HashMap::new();
        let mut subnets: HashMap<(&str, IpNet), usize> = HashMap::new();
        for (index, vif) in vifs.iter().enumerate() {
            let section = &sections[index];
            if self.config.attachment(&vif.name).is_some() {
                let detail = format!(
                    "{:?} is also a vpc_attachment's name, which would make static_route via ambiguous",
                    vif.name
                );
                self.problem(section, "name", detail);
            }
            if self.config.connection(&vif.connection).is_none() {
                let detail = format!("{:?} is not a configured connection", vif.connection);
                self.problem(section, "connection", detail);
            }
            self.border_gateway_exists(section, &vif.border_gateway);

            if !VLAN_RANGE.contains(&vif.vlan) {
                let detail = format!(
                    "{} is outside {}..={}",
                    vif.vlan,
                    VLAN_RANGE.start(),
                    VLAN_RANGE.end()
                );
                self.problem(section, "vlan", detail);
            } else if let Some(&earlier) = vlans.get(&(vif.connection.as_str(), vif.vlan)) {
                let detail = format!(
                    "{} already used on connection {:?} by {}",
                    vif.vlan, vif.connection, sections[earlier]
                );
                self.problem(section, "vlan", detail);
            } else {
                vlans.insert((vif.connection.as_str(), vif.vlan), index);
            }

            self.routing(section, vif);
            self.vif_limits(section, vif);
            self.peers(section, vif, index, &sections, &mut subnets);
        }
    }

    /// The data-plane settings of a VIF: MTU and control-path rate limit.
    fn vif_limits(&mut self, section: &str, vif: &Vif) {
        if let Some(mtu) = vif.mtu
            && !(MIN_VIF_MTU..=forwarder_common::MAX_VIF_MTU).contains(&mtu)
        {
            let detail = format!(
                "{mtu} is not {MIN_VIF_MTU} to {} (IPv4's minimum to AWS's jumbo MTU)",
                forwarder_common::MAX_VIF_MTU
            );
            self.problem(section, "mtu", detail);
        } else if let Some(mtu) = vif.mtu
            && mtu < forwarder_common::IPV6_MIN_MTU
            && vif.peers.iter().any(Peer::is_ipv6)
        {
            let detail = format!(
                "{mtu} is below {}, IPv6's minimum, and the vif has an IPv6 peer",
                forwarder_common::IPV6_MIN_MTU
            );
            self.problem(section, "mtu", detail);
        }
        if let Some(rate) = vif.control_rate_pps
            && rate > MAX_CONTROL_RATE_PPS
        {
            let detail = format!("{rate} is above {MAX_CONTROL_RATE_PPS}; 0 turns the limit off");
            self.problem(section, "control_rate_pps", detail);
        }
        if vif.control_burst == Some(0) {
            self.problem(section, "control_burst", "must be at least 1");
        }
    }

    fn routing(&mut self, section: &str, vif: &Vif) {
        match (vif.routing, vif.client_asn) {
            (_, Some(asn)) if !CLIENT_ASN_RANGE.contains(&asn) => self.problem(
                section,
                "client_asn",
                format!(
                    "{asn} is outside the client range {}..={}",
                    CLIENT_ASN_RANGE.start(),
                    CLIENT_ASN_RANGE.end()
                ),
            ),
            (Routing::Bgp, None) => {
                self.problem(section, "client_asn", "is required with routing = \"bgp\"");
            }
            _ => {}
        }
        if vif.routing == Routing::Static {
            let bgp_only = [
                ("bgp_password", vif.bgp_password.is_some()),
                ("max_prefixes", vif.max_prefixes.is_some()),
                ("accept_default", vif.accept_default),
                ("max_prefix_len", vif.max_prefix_len.is_some()),
                ("allowed_prefixes", !vif.allowed_prefixes.is_empty()),
                ("ttl_security", vif.ttl_security),
                ("allow_hold_time_zero", vif.allow_hold_time_zero),
                ("bfd", vif.bfd),
                ("as_path_prepend", vif.as_path_prepend != 0),
            ];
            for (field, set) in bgp_only {
                if set {
                    self.problem(section, field, "is only meaningful with routing = \"bgp\"");
                }
            }
            return;
        }
        if let Some(password) = &vif.bgp_password {
            if password.is_empty() {
                self.problem(section, "bgp_password", "is empty; omit it for no TCP MD5");
            } else if password.len() > MAX_BGP_PASSWORD_LEN {
                let detail = format!(
                    "is {} bytes long; TCP MD5 keys have at most {MAX_BGP_PASSWORD_LEN}",
                    password.len()
                );
                self.problem(section, "bgp_password", detail);
            }
        }
        if vif.as_path_prepend > MAX_AS_PATH_PREPEND {
            let detail = format!("{} is above {MAX_AS_PATH_PREPEND}", vif.as_path_prepend);
            self.problem(section, "as_path_prepend", detail);
        }
        if vif.max_prefixes == Some(0) {
            self.problem(section, "max_prefixes", "0 is below 1");
        }
        if let Some(len) = vif.max_prefix_len
            && !(1..=32).contains(&len)
        {
            self.problem(section, "max_prefix_len", format!("{len} is not 1 to 32"));
        }
    }

    /// Checks a VIF's interconnect pairs; `subnets` holds the /30s seen so far, per
    /// connection, with the index of the VIF using each.
    fn peers<'v>(
        &mut self,
        section: &str,
        vif: &'v Vif,
        index: usize,
        sections: &[String],
        subnets: &mut HashMap<(&'v str, IpNet), usize>,
    ) {
        match vif.peers.len() {
            0 => self.problem(
                section,
                "peer",
                "is missing: a vif has one or two [[vif.peer]] interconnect pairs",
            ),
            count if count > MAX_PEERS => self.problem(
                section,
                "peer",
                format!("has {count} entries; at most {MAX_PEERS}, one per cloud router"),
            ),
            _ => {}
        }
        let mut own: Vec<(IpNet, usize)> = Vec::new();
        for (position, peer) in vif.peers.iter().enumerate() {
            let section = format!("{section} peer #{}", position + 1);
            let (client, cloud) = (peer.client_address, peer.cloud_address);
            if client.is_ipv6() != cloud.is_ipv6() {
                let detail = format!(
                    "{cloud} is not of the family of client_address {client}: a pair is IPv4 or IPv6"
                );
                self.problem(&section, "cloud_address", detail);
                continue;
            }
            let allowed: &[u8] = if peer.is_ipv6() {
                &[INTERCONNECT_PREFIX_LEN_V6, 127]
            } else {
                &[INTERCONNECT_PREFIX_LEN]
            };
            if !allowed.contains(&peer.prefix_len) {
                let detail = if peer.is_ipv6() {
                    format!(
                        "{} is not {INTERCONNECT_PREFIX_LEN_V6} or 127: IPv6 interconnect pairs are /{INTERCONNECT_PREFIX_LEN_V6}s or /127s",
                        peer.prefix_len
                    )
                } else {
                    format!(
                        "{} is not {INTERCONNECT_PREFIX_LEN}: interconnect pairs are /{INTERCONNECT_PREFIX_LEN}s",
                        peer.prefix_len
                    )
                };
                self.problem(&section, "prefix_len", detail);
                continue;
            }
            let mut in_range = true;
            for (field, address) in [("client_address", client), ("cloud_address", cloud)] {
                let detail = match address {
                    IpAddr::V4(a) if !interconnect_range(a) => Some(format!(
                        "{address} is outside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 169.254.0.0/16"
                    )),
                    IpAddr::V6(a) => {
                        interconnect_problem_v6(a).map(|why| format!("{address} {why}"))
                    }
                    IpAddr::V4(_) => None,
                };
                if let Some(detail) = detail {
                    self.problem(&section, field, detail);
                    in_range = false;
                }
            }
            let Some(subnet) = peer.network().filter(|_| in_range) else {
                continue;
            };
            if !subnet.contains(&cloud) {
                let detail = format!(
                    "{cloud} is not in {subnet}, the /{} of client_address {client}",
                    peer.prefix_len
                );
                self.problem(&section, "cloud_address", detail);
                continue;
            }
            if client == cloud {
                let detail = format!("{cloud} is the same as client_address");
                self.problem(&section, "cloud_address", detail);
                continue;
            }
            let mut usable = true;
            for (field, address) in [("client_address", client), ("cloud_address", cloud)] {
                let which = match subnet {
                    IpNet::V4(net) if address == net.network() => "network",
                    IpNet::V4(net) if address == net.broadcast() => "broadcast",
                    IpNet::V6(net) if net.prefix_len() == 126 && address == net.network() => {
                        "subnet-router anycast"
                    }
                    _ => continue,
                };
                self.problem(
                    &section,
                    field,
                    format!("{address} is the {which} address of {subnet}"),
                );
                usable = false;
            }
            if !usable {
                continue;
            }
            if let Some(&(_, earlier)) = own.iter().find(|(other, _)| *other == subnet) {
                let detail = format!(
                    "{client} is in {subnet}, the /{len} of peer #{} too; the two peers need different /{len}s",
                    earlier + 1,
                    len = peer.prefix_len,
                );
                self.problem(&section, "client_address", detail);
                continue;
            }
            own.push((subnet, position));
            let key = (vif.connection.as_str(), subnet);
            match subnets.get(&key) {
                Some(&other) if other != index => {
                    let detail = format!(
                        "{client} is in {subnet}, already used on connection {:?} by {}",
                        vif.connection, sections[other]
                    );
                    self.problem(&section, "client_address", detail);
                }
                _ => {
                    subnets.insert(key, index);
                }
            }
        }
    }

    /// A million routes take one hashed look-up each for their gateway, `via` and
    /// duplicate check; a section name is only written for a route with a problem.
    fn static_routes(&mut self) {
        let config = self.config;
        let gateways: FastSet<&str> = config
            .border_gateways
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        // What `Config::via` answers, by name: a VIF first, then an attachment.
        let mut vias: FastMap<&str, Via<'_>> = FastMap::default();
        for a in config.vpc_attachments.iter().rev() {
            vias.insert(&a.name, Via::Attachment(a));
        }
        for v in config.vifs.iter().rev() {
            vias.insert(&v.name, Via::Vif(v));
        }
        let mut seen: FastMap<(&str, IpNet), usize> =
            FastMap::with_capacity_and_hasher(config.static_routes.len(), Default::default());
        for (index, route) in config.static_routes.iter().enumerate() {
            let section = || format!("static_route #{}", index + 1);
            let gateway = route.border_gateway.as_str();
            let gateway_exists = gateways.contains(gateway);
            if !gateway_exists {
                self.problem(
                    &section(),
                    "border_gateway",
                    format!("{gateway:?} is not a configured border_gateway"),
                );
            }
            let prefix = route.prefix;

            if prefix != prefix.trunc() {
                let detail = format!(
                    "{prefix} has host bits set (the network is {})",
                    prefix.trunc()
                );
                self.problem(&section(), "prefix", detail);
            } else if let Some(&earlier) = seen.get(&(gateway, prefix)) {
                let detail = format!(
                    "{prefix} already has a static route in border_gateway {gateway:?} (static_route #{})",
                    earlier + 1
                );
                self.problem(&section(), "prefix", detail);
            } else {
                seen.insert((gateway, prefix), index);
            }

            let Some(&via) = vias.get(route.via.as_str()) else {
                let detail = format!("{:?} is neither a vif nor a vpc_attachment", route.via);
                self.problem(&section(), "via", detail);
                continue;
            };
            if via.border_gateway() != gateway {
                // An unknown gateway on either side is reported already.
                if gateway_exists && config.border_gateway(via.border_gateway()).is_some() {
                    let detail = format!(
                        "{:?} is a {} of border_gateway {:?}, not of {gateway:?}",
                        route.via,
                        via.kind(),
                        via.border_gateway()
                    );
                    self.problem(&section(), "via", detail);
                }
                continue;
            }
            if let Via::Vif(vif) = via
                && !vif.peers.is_empty()
                && let Some(detail) = family_mismatch(prefix, vif)
            {
                self.problem(&section(), "prefix", detail);
            }
            if let Via::Vif(_) = via
                && let Some((attachment, cidr)) = config.overlapping_propagated(gateway, prefix)
            {
                let detail = format!(
                    "{prefix} toward vif {:?} overlaps {cidr} propagated by vpc_attachment {:?}; \
                     customer segments must not overlap VPC segments",
                    route.via, attachment.name
                );
                self.problem(&section(), "prefix", detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "forwarder.toml";

    /// DESIGN §5, verbatim.
    const DESIGN_EXAMPLE: &str = r#"[agent]
local_asn = 64512                 # ASN the gateway speaks to customers
router_id = "192.0.2.1"
state_dir = "/var/lib/forwarder"
control_socket = "/run/forwarder/forwarder.sock"
xdp_mode = "native"               # native | skb

[underlay]
interface = "ul0"
local_vtep = "172.31.0.1"

[[connection]]
name = "hc-1"
kind = "hosted"                   # hosted | dedicated
interface = "hc1"

[[border_gateway]]
name = "bgw-1"

[[vpc_attachment]]
name = "att-a"
border_gateway = "bgw-1"
vni = 1001
remote_vtep = "172.31.0.2"
router_mac = "02:00:00:00:0a:01"  # inner destination MAC on the VPC side
propagate = ["10.0.0.0/16"]

[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "bgp"                   # bgp | static
client_asn = 65001
bgp_password = "s3cret"           # optional, TCP MD5
max_prefixes = 100                # optional; over the limit: session torn down, logged

  [[vif.peer]]                    # up to two /30 pairs (one per cloud router)
  client_address = "169.254.10.2"
  cloud_address = "169.254.10.1"
  prefix_len = 30

[[static_route]]
border_gateway = "bgw-1"
prefix = "192.168.50.0/24"
via = "vif-100"                   # a VIF or a VPC attachment name
"#;

    /// A valid config every invalid one below is one small edit of. It holds the cases that
    /// must stay allowed: the same VLAN and the same /30 on different connections, the same
    /// VPC CIDR in different gateways, a static VIF without client_asn.
    const BASE: &str = r#"
[agent]
local_asn = 64512
state_dir = "/var/lib/forwarder"

[underlay]
interface = "ul0"
local_vtep = "172.31.0.1"

[[connection]]
name = "hc-1"
kind = "hosted"
interface = "hc1"

[[connection]]
name = "dc-1"
kind = "dedicated"
interface = "dc1"

[[border_gateway]]
name = "bgw-1"

[[border_gateway]]
name = "bgw-2"

[[vpc_attachment]]
name = "att-a"
border_gateway = "bgw-1"
vni = 1001
remote_vtep = "172.31.0.2"
router_mac = "02:00:00:00:0a:01"
propagate = ["10.0.0.0/16"]

[[vpc_attachment]]
name = "att-b"
border_gateway = "bgw-1"
vni = 1002
remote_vtep = "172.31.0.3"
router_mac = "02:00:00:00:0b:01"
propagate = ["10.1.0.0/16", "10.2.0.0/16"]

[[vpc_attachment]]
name = "att-c"
border_gateway = "bgw-2"
vni = 2001
remote_vtep = "172.31.0.2"
router_mac = "02:00:00:00:0c:01"
propagate = ["10.0.0.0/16"]  # same CIDR as att-a, other gateway

[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "bgp"
client_asn = 65001
bgp_password = "s3cret"
max_prefixes = 100

  [[vif.peer]]
  client_address = "10.255.0.2"
  cloud_address = "10.255.0.1"
  prefix_len = 30

  [[vif.peer]]
  client_address = "10.255.0.6"
  cloud_address = "10.255.0.5"
  prefix_len = 30

[[vif]]
name = "vif-200"
connection = "hc-1"
vlan = 200
border_gateway = "bgw-2"
routing = "static"

  [[vif.peer]]
  client_address = "192.168.100.2"
  cloud_address = "192.168.100.1"
  prefix_len = 30

[[vif]]
name = "vif-300"
connection = "dc-1"
vlan = 100  # same VLAN as vif-100, other connection
border_gateway = "bgw-1"
routing = "bgp"
client_asn = 65499

  [[vif.peer]]
  client_address = "10.255.0.2"  # same /30 as vif-100, other connection
  cloud_address = "10.255.0.1"
  prefix_len = 30

[[static_route]]
border_gateway = "bgw-1"
prefix = "192.168.50.0/24"
via = "vif-100"

[[static_route]]
border_gateway = "bgw-1"
prefix = "10.0.128.0/17"  # overlaps att-a's CIDR, but toward an attachment
via = "att-b"

[[static_route]]
border_gateway = "bgw-2"
prefix = "172.20.0.0/16"
via = "vif-200"
"#;

    /// BASE with the one occurrence of `from` replaced by `to`.
    fn edit(from: &str, to: &str) -> String {
        assert_eq!(
            BASE.matches(from).count(),
            1,
            "{from:?} must occur once in BASE"
        );
        BASE.replacen(from, to, 1)
    }

    fn error(text: &str) -> String {
        match parse(text, ORIGIN) {
            Ok(config) => panic!("accepted: {config:#?}"),
            Err(error) => error.to_string(),
        }
    }

    /// The config is rejected with exactly this one line.
    #[track_caller]
    fn rejected(text: &str, expected: &str) {
        assert_eq!(error(text), expected);
    }

    /// The config is rejected with one line holding the file name and every `needles`.
    #[track_caller]
    fn rejected_with(text: &str, needles: &[&str]) {
        let message = error(text);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.starts_with("forwarder.toml: "), "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
    }

    #[track_caller]
    fn accepted(text: &str) -> Config {
        parse(text, ORIGIN).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn design_example_parses() {
        let config = accepted(DESIGN_EXAMPLE);
        assert_eq!(config.agent.local_asn, 64512);
        assert_eq!(config.router_id(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(config.agent.xdp_mode, XdpMode::Native);
        assert_eq!(config.connections[0].kind, ConnectionKind::Hosted);
        let attachment = config.attachment("att-a").expect("att-a");
        assert_eq!(attachment.router_mac, MacAddr([2, 0, 0, 0, 0x0a, 1]));
        assert_eq!(
            attachment.propagate,
            ["10.0.0.0/16".parse::<IpNet>().expect("cidr")]
        );
        let vif = config.vif("vif-100").expect("vif-100");
        assert_eq!(
            (vif.vlan, vif.routing, vif.client_asn),
            (100, Routing::Bgp, Some(65001))
        );
        assert_eq!(vif.bgp_password.as_deref(), Some("s3cret"));
        assert_eq!(vif.max_prefixes, Some(100));
        assert!(!vif.accept_default);
        assert_eq!(vif.peers[0].network(), "169.254.10.0/30".parse().ok());
        assert_eq!(config.via("vif-100"), Some(Via::Vif(vif)));
        assert!(config.border_gateway("bgw-1").is_some());
    }

    #[test]
    fn example_file_loads_and_matches_design() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/forwarder.toml");
        let config = load(&path).unwrap_or_else(|error| panic!("{error}"));
        let text = fs::read_to_string(&path).expect("example");
        assert!(
            text.starts_with(DESIGN_EXAMPLE),
            "examples/forwarder.toml does not start with DESIGN §5, verbatim"
        );
        // DESIGN's sections as DESIGN has them, then the dual-stack VIF it adds.
        let design = accepted(DESIGN_EXAMPLE);
        assert_eq!(config.vifs[0], design.vifs[0]);
        assert_eq!(config.vpc_attachments, design.vpc_attachments);
        let dual = config.vif("vif-200").expect("the dual-stack example");
        assert!(dual.peers.iter().any(|p| p.is_ipv6()) && dual.peers.iter().any(|p| !p.is_ipv6()));
        assert!(
            config
                .static_routes
                .iter()
                .any(|r| r.prefix.addr().is_ipv6())
        );
    }

    #[test]
    fn base_is_valid_with_its_allowed_reuses() {
        let config = accepted(BASE);
        assert_eq!(config.vif("vif-300").map(|v| v.vlan), Some(100));
        assert_eq!(config.vif("vif-200").and_then(|v| v.client_asn), None);
        assert_eq!(
            config.via("att-b").map(|via| via.kind()),
            Some("vpc_attachment")
        );
        assert_eq!(config.via("nothing"), None);
        assert!(config.border_gateway("bgw-3").is_none());
    }

    #[test]
    fn defaults() {
        // Without [agent] at all: every default, and the local VTEP as router id.
        let text = edit(
            "[agent]\nlocal_asn = 64512\nstate_dir = \"/var/lib/forwarder\"\n",
            "",
        );
        let config = accepted(&text);
        let expected = Agent {
            router_id: Some(Ipv4Addr::new(172, 31, 0, 1)),
            ..Agent::default()
        };
        assert_eq!(config.agent, expected);
        assert_eq!(config.agent.local_asn, DEFAULT_LOCAL_ASN);
        assert_eq!(config.agent.xdp_mode, XdpMode::Native);
        assert_eq!(config.router_id(), Ipv4Addr::new(172, 31, 0, 1));

        let peer = accepted(&edit(
            "  client_address = \"10.255.0.6\"\n  cloud_address = \"10.255.0.5\"\n  prefix_len = 30\n",
            "  client_address = \"10.255.0.6\"\n  cloud_address = \"10.255.0.5\"\n",
        ));
        assert_eq!(peer.vif("vif-100").map(|v| v.peers[1].prefix_len), Some(30));
        let skb = accepted(&edit("[agent]\n", "[agent]\nxdp_mode = \"skb\"\n"));
        assert_eq!(skb.agent.xdp_mode, XdpMode::Skb);
    }

    // --- VLANs

    #[test]
    fn duplicate_vlan_on_a_connection() {
        rejected(
            &edit("vlan = 200", "vlan = 100"),
            r#"forwarder.toml: vif "vif-200": vlan 100 already used on connection "hc-1" by vif "vif-100""#,
        );
    }

    #[test]
    fn vlan_0() {
        rejected(
            &edit("vlan = 200", "vlan = 0"),
            r#"forwarder.toml: vif "vif-200": vlan 0 is outside 1..=4094"#,
        );
    }

    #[test]
    fn vlan_4095() {
        rejected(
            &edit("vlan = 200", "vlan = 4095"),
            r#"forwarder.toml: vif "vif-200": vlan 4095 is outside 1..=4094"#,
        );
    }

    #[test]
    fn vlan_beyond_12_bits_of_u16() {
        rejected_with(
            &edit("vlan = 200", "vlan = 70000"),
            &[r#"vif "vif-200": vlan: "#, "70000", "line "],
        );
    }

    // --- ASNs

    #[test]
    fn client_asn_65000() {
        rejected(
            &edit("client_asn = 65001", "client_asn = 65000"),
            r#"forwarder.toml: vif "vif-100": client_asn 65000 is outside the client range 65001..=65499"#,
        );
    }

    #[test]
    fn client_asn_65500() {
        rejected(
            &edit("client_asn = 65499", "client_asn = 65500"),
            r#"forwarder.toml: vif "vif-300": client_asn 65500 is outside the client range 65001..=65499"#,
        );
    }

    #[test]
    fn bgp_vif_without_client_asn() {
        rejected(
            &edit("client_asn = 65499\n", ""),
            r#"forwarder.toml: vif "vif-300": client_asn is required with routing = "bgp""#,
        );
    }

    #[test]
    fn local_asn_in_client_range() {
        rejected(
            &edit("local_asn = 64512", "local_asn = 65001"),
            "forwarder.toml: [agent]: local_asn 65001 is in the client ASN range 65001..=65499",
        );
    }

    #[test]
    fn local_asn_reserved() {
        for asn in [0, 23456, 65535, u32::MAX] {
            rejected_with(
                &edit("local_asn = 64512", &format!("local_asn = {asn}")),
                &["[agent]: local_asn", &format!("{asn} is reserved")],
            );
        }
        accepted(&edit("local_asn = 64512", "local_asn = 4200000000"));
    }

    // --- interconnect pairs

    #[test]
    fn interconnect_in_shared_address_space() {
        let text = edit(
            "  client_address = \"192.168.100.2\"\n  cloud_address = \"192.168.100.1\"",
            "  client_address = \"100.64.0.2\"\n  cloud_address = \"100.64.0.1\"",
        );
        assert_eq!(
            error(&text),
            "forwarder.toml: vif \"vif-200\" peer #1: client_address 100.64.0.2 is outside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 169.254.0.0/16\n\
             forwarder.toml: vif \"vif-200\" peer #1: cloud_address 100.64.0.1 is outside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 169.254.0.0/16"
        );
    }

    #[test]
    fn interconnect_in_public_space() {
        rejected(
            &edit(
                "client_address = \"192.168.100.2\"",
                "client_address = \"8.8.8.2\"",
            ),
            r#"forwarder.toml: vif "vif-200" peer #1: client_address 8.8.8.2 is outside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 169.254.0.0/16"#,
        );
    }

    #[test]
    fn client_and_cloud_not_in_one_slash_30() {
        rejected(
            &edit(
                "cloud_address = \"192.168.100.1\"",
                "cloud_address = \"192.168.100.5\"",
            ),
            r#"forwarder.toml: vif "vif-200" peer #1: cloud_address 192.168.100.5 is not in 192.168.100.0/30, the /30 of client_address 192.168.100.2"#,
        );
    }

    #[test]
    fn network_address() {
        rejected(
            &edit(
                "cloud_address = \"192.168.100.1\"",
                "cloud_address = \"192.168.100.0\"",
            ),
            r#"forwarder.toml: vif "vif-200" peer #1: cloud_address 192.168.100.0 is the network address of 192.168.100.0/30"#,
        );
    }

    #[test]
    fn broadcast_address() {
        rejected(
            &edit(
                "client_address = \"192.168.100.2\"",
                "client_address = \"192.168.100.3\"",
            ),
            r#"forwarder.toml: vif "vif-200" peer #1: client_address 192.168.100.3 is the broadcast address of 192.168.100.0/30"#,
        );
    }

    #[test]
    fn client_equals_cloud() {
        rejected(
            &edit(
                "client_address = \"192.168.100.2\"",
                "client_address = \"192.168.100.1\"",
            ),
            r#"forwarder.toml: vif "vif-200" peer #1: cloud_address 192.168.100.1 is the same as client_address"#,
        );
    }

    #[test]
    fn prefix_len_29() {
        let text = edit(
            "  cloud_address = \"192.168.100.1\"\n  prefix_len = 30",
            "  cloud_address = \"192.168.100.1\"\n  prefix_len = 29",
        );
        rejected(
            &text,
            r#"forwarder.toml: vif "vif-200" peer #1: prefix_len 29 is not 30: interconnect pairs are /30s"#,
        );
    }

    #[test]
    fn three_peers() {
        let third = "  [[vif.peer]]\n  client_address = \"10.255.0.10\"\n  cloud_address = \"10.255.0.9\"\n\n[[vif]]\nname = \"vif-200\"";
        rejected(
            &edit("[[vif]]\nname = \"vif-200\"", third),
            r#"forwarder.toml: vif "vif-100": peer has 3 entries; at most 2, one per cloud router"#,
        );
    }

    #[test]
    fn zero_peers() {
        let text = edit(
            "  [[vif.peer]]\n  client_address = \"192.168.100.2\"\n  cloud_address = \"192.168.100.1\"\n  prefix_len = 30\n",
            "",
        );
        rejected(
            &text,
            r#"forwarder.toml: vif "vif-200": peer is missing: a vif has one or two [[vif.peer]] interconnect pairs"#,
        );
    }

    #[test]
    fn both_peers_in_one_slash_30() {
        let text = edit(
            "  client_address = \"10.255.0.6\"\n  cloud_address = \"10.255.0.5\"",
            "  client_address = \"10.255.0.1\"\n  cloud_address = \"10.255.0.2\"",
        );
        rejected(
            &text,
            r#"forwarder.toml: vif "vif-100" peer #2: client_address 10.255.0.1 is in 10.255.0.0/30, the /30 of peer #1 too; the two peers need different /30s"#,
        );
    }

    #[test]
    fn slash_30_reused_on_the_same_connection() {
        let text = edit(
            "  client_address = \"192.168.100.2\"\n  cloud_address = \"192.168.100.1\"",
            "  client_address = \"10.255.0.5\"\n  cloud_address = \"10.255.0.6\"",
        );
        rejected(
            &text,
            r#"forwarder.toml: vif "vif-200" peer #1: client_address 10.255.0.5 is in 10.255.0.4/30, already used on connection "hc-1" by vif "vif-100""#,
        );
        // The same /30 on another connection: vif-300 already does that in BASE.
        let moved = edit(
            "connection = \"hc-1\"\nvlan = 200",
            "connection = \"dc-1\"\nvlan = 200",
        );
        accepted(
            &moved
                .replacen("\"192.168.100.2\"", "\"10.255.0.5\"", 1)
                .replacen("\"192.168.100.1\"", "\"10.255.0.6\"", 1),
        );
    }

    // --- Data-plane settings of a VIF

    #[test]
    fn vif_mtu_range() {
        rejected(
            &edit("max_prefixes = 100", "max_prefixes = 100\nmtu = 9002"),
            r#"forwarder.toml: vif "vif-100": mtu 9002 is not 68 to 9001 (IPv4's minimum to AWS's jumbo MTU)"#,
        );
        rejected_with(
            &edit("max_prefixes = 100", "max_prefixes = 100\nmtu = 67"),
            &["vif \"vif-100\"", "mtu 67 is not 68 to 9001"],
        );
        let c = accepted(&edit(
            "max_prefixes = 100",
            "max_prefixes = 100\nmtu = 9001",
        ));
        assert_eq!(c.vifs[0].mtu, Some(9001));
    }

    #[test]
    fn source_check_values() {
        let c = accepted(&edit(
            "max_prefixes = 100",
            "max_prefixes = 100\nsource_check = \"strict\"",
        ));
        assert_eq!(c.vifs[0].source_check, SourceCheck::Strict);
        assert_eq!(c.vifs[1].source_check, SourceCheck::Off);
        rejected_with(
            &edit(
                "max_prefixes = 100",
                "max_prefixes = 100\nsource_check = \"loose\"",
            ),
            &["source_check", "loose"],
        );
    }

    #[test]
    fn control_rate_limits() {
        rejected(
            &edit(
                "max_prefixes = 100",
                "max_prefixes = 100\ncontrol_burst = 0",
            ),
            r#"forwarder.toml: vif "vif-100": control_burst must be at least 1"#,
        );
        rejected_with(
            &edit(
                "max_prefixes = 100",
                "max_prefixes = 100\ncontrol_rate_pps = 2000000",
            ),
            &["control_rate_pps 2000000 is above 1000000"],
        );
        let c = accepted(&edit(
            "max_prefixes = 100",
            "max_prefixes = 100\ncontrol_rate_pps = 0",
        ));
        assert_eq!(c.vifs[0].control_rate_pps, Some(0));
        assert_eq!(c.agent.control_rate_pps, DEFAULT_CONTROL_RATE_PPS);
    }

    #[test]
    fn as_path_prepend_range() {
        let c = accepted(&edit(
            "max_prefixes = 100",
            "max_prefixes = 100\nas_path_prepend = 10",
        ));
        assert_eq!(c.vifs[0].as_path_prepend, 10);
        rejected(
            &edit(
                "max_prefixes = 100",
                "max_prefixes = 100\nas_path_prepend = 11",
            ),
            r#"forwarder.toml: vif "vif-100": as_path_prepend 11 is above 10"#,
        );
        assert!(c.border_gateways[0].advertise_between_vifs);
        assert!(c.border_gateways[0].multipath);
    }

    #[test]
    fn bfd_settings() {
        let c = accepted(&edit(
            "max_prefixes = 100",
            "max_prefixes = 100\nbfd = true",
        ));
        assert!(c.vifs[0].bfd);
        assert_eq!((c.agent.bfd_interval_ms, c.agent.bfd_multiplier), (300, 3));
        rejected_with(
            &BASE.replacen("[agent]\n", "[agent]\nbfd_interval_ms = 5\n", 1),
            &[
                "[agent]",
                "bfd_interval_ms 5 is not 10 to 60000 milliseconds",
            ],
        );
        rejected_with(
            &BASE.replacen("[agent]\n", "[agent]\nbfd_multiplier = 0\n", 1),
            &["bfd_multiplier must be at least 1"],
        );
    }

    // --- BGP settings

    #[test]
    fn bgp_password_longer_than_tcp_md5_allows() {
        let password = "x".repeat(81);
        rejected(
            &edit(
                "bgp_password = \"s3cret\"",
                &format!("bgp_password = \"{password}\""),
            ),
            r#"forwarder.toml: vif "vif-100": bgp_password is 81 bytes long; TCP MD5 keys have at most 80"#,
        );
        let password = "x".repeat(80);
        accepted(&edit(
            "bgp_password = \"s3cret\"",
            &format!("bgp_password = \"{password}\""),
        ));
    }

    #[test]
    fn bgp_password_empty() {
        rejected(
            &edit("bgp_password = \"s3cret\"", "bgp_password = \"\""),
            r#"forwarder.toml: vif "vif-100": bgp_password is empty; omit it for no TCP MD5"#,
        );
    }

    #[test]
    fn max_prefixes_0() {
        rejected(
            &edit("max_prefixes = 100", "max_prefixes = 0"),
            r#"forwarder.toml: vif "vif-100": max_prefixes 0 is below 1"#,
        );
    }

    #[test]
    fn bgp_settings_on_a_static_vif() {
        rejected(
            &edit(
                "routing = \"static\"",
                "routing = \"static\"\nmax_prefixes = 10",
            ),
            r#"forwarder.toml: vif "vif-200": max_prefixes is only meaningful with routing = "bgp""#,
        );
        rejected(
            &edit(
                "routing = \"static\"",
                "routing = \"static\"\naccept_default = true",
            ),
            r#"forwarder.toml: vif "vif-200": accept_default is only meaningful with routing = "bgp""#,
        );
    }

    // --- references

    #[test]
    fn unknown_connection() {
        rejected(
            &edit("connection = \"dc-1\"", "connection = \"dc-9\""),
            r#"forwarder.toml: vif "vif-300": connection "dc-9" is not a configured connection"#,
        );
    }

    #[test]
    fn vif_with_unknown_gateway() {
        rejected(
            &edit(
                "vlan = 200\nborder_gateway = \"bgw-2\"",
                "vlan = 200\nborder_gateway = \"bgw-9\"",
            ),
            r#"forwarder.toml: vif "vif-200": border_gateway "bgw-9" is not a configured border_gateway"#,
        );
    }

    #[test]
    fn attachment_with_unknown_gateway() {
        rejected(
            &edit("vni = 2001", "vni = 2001\nborder_gateway = \"bgw-9\"").replacen(
                "name = \"att-c\"\nborder_gateway = \"bgw-2\"\n",
                "name = \"att-c\"\n",
                1,
            ),
            r#"forwarder.toml: vpc_attachment "att-c": border_gateway "bgw-9" is not a configured border_gateway"#,
        );
    }

    #[test]
    fn static_route_with_unknown_gateway() {
        rejected(
            &edit(
                "border_gateway = \"bgw-2\"\nprefix",
                "border_gateway = \"bgw-9\"\nprefix",
            ),
            r#"forwarder.toml: static_route #3: border_gateway "bgw-9" is not a configured border_gateway"#,
        );
    }

    #[test]
    fn static_route_via_unknown_name() {
        rejected(
            &edit("via = \"att-b\"", "via = \"att-z\""),
            r#"forwarder.toml: static_route #2: via "att-z" is neither a vif nor a vpc_attachment"#,
        );
    }

    #[test]
    fn static_route_via_a_vif_of_another_gateway() {
        rejected(
            &edit("via = \"vif-100\"", "via = \"vif-200\""),
            r#"forwarder.toml: static_route #1: via "vif-200" is a vif of border_gateway "bgw-2", not of "bgw-1""#,
        );
    }

    #[test]
    fn static_route_via_an_attachment_of_another_gateway() {
        rejected(
            &edit("via = \"att-b\"", "via = \"att-c\""),
            r#"forwarder.toml: static_route #2: via "att-c" is a vpc_attachment of border_gateway "bgw-2", not of "bgw-1""#,
        );
    }

    #[test]
    fn vif_named_like_an_attachment() {
        let text = edit("name = \"vif-300\"", "name = \"att-a\"");
        rejected(
            &text,
            r#"forwarder.toml: vif "att-a": name "att-a" is also a vpc_attachment's name, which would make static_route via ambiguous"#,
        );
    }

    // --- static routes

    #[test]
    fn static_route_toward_a_vif_overlapping_a_vpc_cidr() {
        rejected(
            &edit("prefix = \"192.168.50.0/24\"", "prefix = \"10.0.1.0/24\""),
            r#"forwarder.toml: static_route #1: prefix 10.0.1.0/24 toward vif "vif-100" overlaps 10.0.0.0/16 propagated by vpc_attachment "att-a"; customer segments must not overlap VPC segments"#,
        );
        // Covering a VPC CIDR is an overlap too.
        rejected_with(
            &edit("prefix = \"192.168.50.0/24\"", "prefix = \"10.0.0.0/8\""),
            &["static_route #1: prefix 10.0.0.0/8 toward vif \"vif-100\" overlaps 10.0.0.0/16"],
        );
        // Another gateway's VPC CIDRs do not matter.
        accepted(&edit(
            "prefix = \"172.20.0.0/16\"",
            "prefix = \"10.1.0.0/16\"",
        ));
    }

    #[test]
    fn static_route_with_host_bits() {
        rejected(
            &edit(
                "prefix = \"192.168.50.0/24\"",
                "prefix = \"192.168.50.1/24\"",
            ),
            "forwarder.toml: static_route #1: prefix 192.168.50.1/24 has host bits set (the network is 192.168.50.0/24)",
        );
    }

    #[test]
    fn duplicate_static_route() {
        rejected(
            &edit("prefix = \"10.0.128.0/17\"", "prefix = \"192.168.50.0/24\""),
            r#"forwarder.toml: static_route #2: prefix 192.168.50.0/24 already has a static route in border_gateway "bgw-1" (static_route #1)"#,
        );
    }

    #[test]
    fn prefix_that_is_not_one() {
        rejected_with(
            &edit("prefix = \"192.168.50.0/24\"", "prefix = \"192.168.50.0\""),
            &[
                "static_route #1: prefix: ",
                "invalid prefix \"192.168.50.0\"",
                "line ",
            ],
        );
    }

    // --- IPv6

    /// vif-200 with an IPv6 pair after its IPv4 one.
    fn dual_stack(client: &str, cloud: &str, extra: &str) -> String {
        edit(
            "  client_address = \"192.168.100.2\"\n  cloud_address = \"192.168.100.1\"\n  prefix_len = 30\n",
            &format!(
                "  client_address = \"192.168.100.2\"\n  cloud_address = \"192.168.100.1\"\n  prefix_len = 30\n\n  [[vif.peer]]\n  client_address = \"{client}\"\n  cloud_address = \"{cloud}\"\n{extra}"
            ),
        )
    }

    #[test]
    fn a_dual_stack_vif_with_ipv6_routes_and_cidrs() {
        let text = dual_stack("2001:db8:ff::2", "2001:db8:ff::1", "").replace(
            "propagate = [\"10.0.0.0/16\"]  # same CIDR",
            "propagate = [\"10.0.0.0/16\", \"2001:db8:a::/48\"]  # same CIDR",
        ) + "\n[[static_route]]\nborder_gateway = \"bgw-2\"\nprefix = \"2001:db8:100::/48\"\nvia = \"vif-200\"\n";
        let c = accepted(&text);
        let peer = c.vif("vif-200").expect("vif").peers[1];
        assert!(peer.is_ipv6());
        assert_eq!(peer.prefix_len, INTERCONNECT_PREFIX_LEN_V6, "the default");
        assert_eq!(
            peer.network(),
            Some("2001:db8:ff::/126".parse().expect("net"))
        );
        assert!(c.static_routes.iter().any(|r| r.prefix.addr().is_ipv6()));
    }

    #[test]
    fn ipv6_pair_rules() {
        rejected(
            &dual_stack("2001:db8:ff::2", "2001:db8:ff::1", "  prefix_len = 64\n"),
            r#"forwarder.toml: vif "vif-200" peer #2: prefix_len 64 is not 126 or 127: IPv6 interconnect pairs are /126s or /127s"#,
        );
        rejected(
            &dual_stack("2001:db8:ff::2", "2001:db8:ff::9", ""),
            r#"forwarder.toml: vif "vif-200" peer #2: cloud_address 2001:db8:ff::9 is not in 2001:db8:ff::/126, the /126 of client_address 2001:db8:ff::2"#,
        );
        rejected(
            &dual_stack("2001:db8:ff::2", "2001:db8:ff::", ""),
            r#"forwarder.toml: vif "vif-200" peer #2: cloud_address 2001:db8:ff:: is the subnet-router anycast address of 2001:db8:ff::/126"#,
        );
        // A /127 uses both (RFC 6164).
        accepted(&dual_stack(
            "2001:db8:ff::1",
            "2001:db8:ff::",
            "  prefix_len = 127\n",
        ));
        let both = error(&dual_stack("fe80::2", "fe80::1", ""));
        assert!(
            both.contains("peer #2: client_address fe80::2 is link-local")
                && both.contains("peer #2: cloud_address fe80::1 is link-local"),
            "{both}"
        );
        rejected_with(
            &dual_stack("2001:db8:ff::2", "192.168.101.1", ""),
            &[
                "peer #2: cloud_address 192.168.101.1 is not of the family of client_address 2001:db8:ff::2",
            ],
        );
    }

    #[test]
    fn ipv6_needs_its_family_and_1280_bytes_and_may_run_bgp() {
        rejected_with(
            &dual_stack("2001:db8:ff::2", "2001:db8:ff::1", "")
                .replace("routing = \"static\"", "routing = \"static\"\nmtu = 1000"),
            &["vif \"vif-200\": mtu 1000 is below 1280, IPv6's minimum"],
        );
        // vif-200 has no IPv6 pair.
        rejected(
            &edit(
                "prefix = \"172.20.0.0/16\"",
                "prefix = \"2001:db8:100::/48\"",
            ),
            r#"forwarder.toml: static_route #3: prefix 2001:db8:100::/48 is IPv6 but vif "vif-200" has no IPv6 peer to send it to"#,
        );
        // A BGP VIF's second pair is IPv6: its session carries IPv6 unicast.
        let c = accepted(
            &edit(
                "  client_address = \"10.255.0.6\"\n  cloud_address = \"10.255.0.5\"",
                "  client_address = \"2001:db8:ff::2\"\n  cloud_address = \"2001:db8:ff::1\"",
            )
            .replace(
                "  prefix_len = 30\n\n[[vif]]\nname = \"vif-200\"",
                "\n[[vif]]\nname = \"vif-200\"",
            ),
        );
        assert!(c.vif("vif-100").expect("vif-100").peers[1].is_ipv6());
    }

    // --- VPC attachments

    #[test]
    fn overlapping_propagated_cidrs_in_one_gateway() {
        rejected(
            &edit(
                "\"10.1.0.0/16\", \"10.2.0.0/16\"",
                "\"10.0.128.0/17\", \"10.2.0.0/16\"",
            ),
            r#"forwarder.toml: vpc_attachment "att-b": propagate 10.0.128.0/17 overlaps 10.0.0.0/16 propagated by vpc_attachment "att-a" into border_gateway "bgw-1""#,
        );
    }

    #[test]
    fn propagated_cidr_with_host_bits() {
        rejected(
            &edit(
                "propagate = [\"10.0.0.0/16\"]\n",
                "propagate = [\"10.0.0.1/16\"]\n",
            ),
            r#"forwarder.toml: vpc_attachment "att-a": propagate 10.0.0.1/16 has host bits set (the network is 10.0.0.0/16)"#,
        );
    }

    #[test]
    fn nothing_propagated() {
        rejected(
            &edit("propagate = [\"10.0.0.0/16\"]\n", "propagate = []\n"),
            r#"forwarder.toml: vpc_attachment "att-a": propagate is empty: an attachment propagates at least one VPC CIDR"#,
        );
    }

    #[test]
    fn bad_mac() {
        rejected_with(
            &edit(
                "router_mac = \"02:00:00:00:0a:01\"",
                "router_mac = \"02:00:00:00:0a\"",
            ),
            &[
                r#"vpc_attachment "att-a": router_mac: "#,
                r#"invalid MAC address "02:00:00:00:0a""#,
                "line ",
            ],
        );
        for bad in [
            "02:00:00:00:0a:01:02",
            "02-00-00-00-0a-01",
            "+2:00:00:00:0a:01",
            "g2:00:00:00:0a:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            "02:00:00:00:0A:01"
                .parse::<MacAddr>()
                .map(|m| m.to_string())
                .ok()
                .as_deref(),
            Some("02:00:00:00:0a:01")
        );
    }

    #[test]
    fn multicast_and_zero_mac() {
        rejected(
            &edit(
                "router_mac = \"02:00:00:00:0a:01\"",
                "router_mac = \"01:00:5e:00:00:01\"",
            ),
            r#"forwarder.toml: vpc_attachment "att-a": router_mac 01:00:5e:00:00:01 is a multicast address"#,
        );
        rejected(
            &edit(
                "router_mac = \"02:00:00:00:0a:01\"",
                "router_mac = \"00:00:00:00:00:00\"",
            ),
            r#"forwarder.toml: vpc_attachment "att-a": router_mac 00:00:00:00:00:00 is all-zero"#,
        );
    }

    #[test]
    fn vni_0() {
        rejected(
            &edit("vni = 1001", "vni = 0"),
            r#"forwarder.toml: vpc_attachment "att-a": vni 0 is outside 1..=16777215"#,
        );
    }

    #[test]
    fn vni_2_pow_24() {
        rejected(
            &edit("vni = 1001", "vni = 16777216"),
            r#"forwarder.toml: vpc_attachment "att-a": vni 16777216 is outside 1..=16777215"#,
        );
        accepted(&edit("vni = 1001", "vni = 16777215"));
    }

    #[test]
    fn duplicate_vni_and_remote_vtep() {
        rejected(
            &edit("vni = 2001", "vni = 1001"),
            r#"forwarder.toml: vpc_attachment "att-c": vni 1001 with remote_vtep 172.31.0.2 already used by vpc_attachment "att-a""#,
        );
        // The same VNI toward another VTEP is another tunnel.
        accepted(&edit("vni = 1002", "vni = 1001"));
    }

    #[test]
    fn remote_vtep_is_local_vtep() {
        rejected(
            &edit(
                "remote_vtep = \"172.31.0.3\"",
                "remote_vtep = \"172.31.0.1\"",
            ),
            r#"forwarder.toml: vpc_attachment "att-b": remote_vtep 172.31.0.1 is the underlay's own local_vtep"#,
        );
    }

    #[test]
    fn remote_vtep_multicast() {
        rejected(
            &edit(
                "remote_vtep = \"172.31.0.3\"",
                "remote_vtep = \"239.1.1.1\"",
            ),
            r#"forwarder.toml: vpc_attachment "att-b": remote_vtep 239.1.1.1 is not a unicast address (multicast)"#,
        );
    }

    // --- names

    #[test]
    fn duplicate_vif_name() {
        rejected(
            &edit("name = \"vif-300\"", "name = \"vif-100\""),
            r#"forwarder.toml: [[vif]] #3: name "vif-100" already used by [[vif]] #1"#,
        );
    }

    #[test]
    fn duplicate_names_of_other_kinds() {
        // vif-300's connection "dc-1" is gone as well.
        rejected(
            &edit("name = \"dc-1\"", "name = \"hc-1\""),
            "forwarder.toml: [[connection]] #2: name \"hc-1\" already used by [[connection]] #1\n\
             forwarder.toml: vif \"vif-300\": connection \"dc-1\" is not a configured connection",
        );
        rejected(
            &edit("name = \"att-c\"", "name = \"att-a\""),
            r#"forwarder.toml: [[vpc_attachment]] #3: name "att-a" already used by [[vpc_attachment]] #1"#,
        );
        // bgw-2 is still referenced, so the duplicate also leaves references dangling.
        let message = error(&edit("name = \"bgw-2\"", "name = \"bgw-1\""));
        assert!(
            message.starts_with(r#"forwarder.toml: [[border_gateway]] #2: name "bgw-1" already used by [[border_gateway]] #1"#),
            "{message}"
        );
    }

    #[test]
    fn bad_names() {
        rejected(
            &edit("name = \"vif-300\"", "name = \"vif 300\""),
            r#"forwarder.toml: [[vif]] #3: name "vif 300" has characters other than letters, digits, '-', '_' and '.'"#,
        );
        rejected(
            &edit("name = \"vif-300\"", "name = \"\""),
            "forwarder.toml: [[vif]] #3: name is empty",
        );
        rejected(
            &edit("name = \"vif-300\"", "name = \"..\""),
            r#"forwarder.toml: [[vif]] #3: name ".." does not start with a letter or a digit"#,
        );
        let long = "v".repeat(33);
        rejected(
            &edit("name = \"vif-300\"", &format!("name = \"{long}\"")),
            &format!("forwarder.toml: [[vif]] #3: name \"{long}\" is longer than 32 characters"),
        );
        accepted(&edit(
            "name = \"vif-300\"",
            &format!("name = \"{}\"", "v".repeat(32)),
        ));
    }

    // --- ports

    #[test]
    fn connection_interface_reused() {
        rejected(
            &edit("interface = \"dc1\"", "interface = \"hc1\""),
            r#"forwarder.toml: connection "dc-1": interface "hc1" already used by connection "hc-1""#,
        );
    }

    #[test]
    fn connection_on_the_underlay_interface() {
        rejected(
            &edit("interface = \"dc1\"", "interface = \"ul0\""),
            r#"forwarder.toml: connection "dc-1": interface "ul0" is the underlay interface"#,
        );
    }

    #[test]
    fn interface_name_too_long() {
        rejected(
            &edit("interface = \"dc1\"", "interface = \"dc1-0123456789ab\""),
            r#"forwarder.toml: connection "dc-1": interface "dc1-0123456789ab" is longer than 15 bytes"#,
        );
        rejected(
            &edit("interface = \"ul0\"", "interface = \"ul/0\""),
            r#"forwarder.toml: [underlay]: interface "ul/0" is not a valid interface name"#,
        );
    }

    #[test]
    fn local_vtep_not_unicast() {
        for (address, what) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.5", "multicast"),
            ("255.255.255.255", "the broadcast address"),
            ("127.0.0.1", "loopback"),
        ] {
            rejected(
                &edit(
                    "local_vtep = \"172.31.0.1\"",
                    &format!("local_vtep = \"{address}\""),
                ),
                &format!(
                    "forwarder.toml: [underlay]: local_vtep {address} is not a unicast address ({what})"
                ),
            );
        }
    }

    #[test]
    fn router_id_zero() {
        rejected(
            &edit("[agent]\n", "[agent]\nrouter_id = \"0.0.0.0\"\n"),
            "forwarder.toml: [agent]: router_id 0.0.0.0 is not a valid BGP identifier",
        );
    }

    #[test]
    fn agent_extensions() {
        let config = accepted(BASE);
        assert_eq!(config.agent.pin_dir, Path::new("/sys/fs/bpf/forwarder"));
        assert_eq!(config.agent.netns_prefix, "fwv-");
        let text = edit(
            "[agent]\n",
            "[agent]\npin_dir = \"/sys/fs/bpf/t1\"\nnetns_prefix = \"t1-\"\n",
        );
        let config = accepted(&text);
        assert_eq!(config.agent.pin_dir, Path::new("/sys/fs/bpf/t1"));
        assert_eq!(config.agent.netns_prefix, "t1-");
        rejected(
            &edit("[agent]\n", "[agent]\nnetns_prefix = \"a/b\"\n"),
            r#"forwarder.toml: [agent]: netns_prefix "a/b" has characters other than letters, digits, '-', '_' and '.'"#,
        );
        rejected(
            &edit("[agent]\n", "[agent]\npin_dir = \"bpf\"\n"),
            r#"forwarder.toml: [agent]: pin_dir "bpf" is not an absolute path"#,
        );
        let config = accepted(&edit(
            "[agent]\n",
            "[agent]\ncontrol_group = \"netops\"\nroute_capacity = 4096\n",
        ));
        assert_eq!(config.agent.control_group.as_deref(), Some("netops"));
        assert_eq!(config.agent.route_capacity, 4096);
        assert_eq!(accepted(BASE).agent.route_capacity, 1_048_576);
        rejected(
            &edit("[agent]\n", "[agent]\nroute_capacity = 8\n"),
            "forwarder.toml: [agent]: route_capacity 8 is outside 16..=16777216",
        );
    }

    #[test]
    fn names_that_clash_with_the_agents_own() {
        rejected(
            &edit("[agent]\n", "[agent]\nnetns_prefix = \"\"\n"),
            "forwarder.toml: [agent]: netns_prefix is empty: control namespaces would be named after the VIFs alone and could clash with the host's own",
        );
        rejected(
            &edit("[agent]\n", "[agent]\nnetns_prefix = \"f\"\n"),
            r#"forwarder.toml: [agent]: netns_prefix "f" does not end with '-', '_' or '.' (for example "f-")"#,
        );
        rejected(
            &edit(
                "[agent]\n",
                "[agent]\nnetns_prefix = \"forwarder-vif-ctl-\"\n",
            ),
            r#"forwarder.toml: [agent]: netns_prefix "forwarder-vif-ctl-" is longer than 16 characters"#,
        );
        accepted(&edit("[agent]\n", "[agent]\nnetns_prefix = \"gw1_\"\n"));
        rejected(
            &edit("interface = \"dc1\"", "interface = \"fwc3\""),
            r#"forwarder.toml: connection "dc-1": interface "fwc3" has the form of the agent's own control veths (fwc<VIF id>), which it creates and deletes"#,
        );
        rejected(
            &edit("interface = \"ul0\"", "interface = \"fwc12\""),
            r#"forwarder.toml: [underlay]: interface "fwc12" has the form of the agent's own control veths (fwc<VIF id>), which it creates and deletes"#,
        );
        rejected(
            &edit("interface = \"dc1\"", "interface = \"lo\""),
            r#"forwarder.toml: connection "dc-1": interface "lo" is the loopback interface, not a port"#,
        );
        // Names that merely start alike are ports like any other.
        accepted(&edit("interface = \"dc1\"", "interface = \"fwc\""));
        accepted(&edit("interface = \"dc1\"", "interface = \"fwcore1\""));
    }

    #[test]
    fn relative_state_dir() {
        rejected(
            &edit(
                "state_dir = \"/var/lib/forwarder\"",
                "state_dir = \"var/lib/forwarder\"",
            ),
            r#"forwarder.toml: [agent]: state_dir "var/lib/forwarder" is not an absolute path"#,
        );
    }

    // --- TOML level: unknown keys, types, syntax

    #[test]
    fn unknown_top_level_key() {
        rejected_with(
            &format!("colour = \"blue\"\n{BASE}"),
            &[
                "forwarder.toml: top level: colour: unknown field `colour`",
                "(line 1, column 1)",
            ],
        );
    }

    #[test]
    fn unknown_top_level_table() {
        rejected_with(
            &edit("[underlay]", "[underlays]"),
            &["forwarder.toml: top level: underlays: unknown field `underlays`"],
        );
    }

    #[test]
    fn unknown_key_in_a_peer() {
        rejected_with(
            &edit(
                "  cloud_address = \"10.255.0.5\"",
                "  cloud_address = \"10.255.0.5\"\n  mtu = 1500",
            ),
            &[
                r#"forwarder.toml: vif "vif-100" peer #2: mtu: unknown field `mtu`, expected one of `client_address`, `cloud_address`, `prefix_len`"#,
                "(line 68, column 3)",
            ],
        );
    }

    #[test]
    fn unknown_nested_table() {
        rejected_with(
            &edit(
                "  [[vif.peer]]\n  client_address = \"192.168.100.2\"",
                "  [[vif.peers]]\n  client_address = \"192.168.100.2\"",
            ),
            &[r#"forwarder.toml: vif "vif-200": peers: unknown field `peers`"#],
        );
    }

    #[test]
    fn table_defined_twice() {
        rejected_with(
            &edit("[underlay]", "[agent]\n[underlay]"),
            &["forwarder.toml: top level: agent: duplicate key (line 6, column 2)"],
        );
    }

    #[test]
    fn missing_table() {
        rejected(
            &edit(
                "[underlay]\ninterface = \"ul0\"\nlocal_vtep = \"172.31.0.1\"\n",
                "",
            ),
            "forwarder.toml: top level: underlay: missing field `underlay`",
        );
        rejected(
            "",
            "forwarder.toml: top level: underlay: missing field `underlay`",
        );
    }

    #[test]
    fn unknown_key_in_agent() {
        rejected_with(
            &edit("[agent]\n", "[agent]\nlocal_as = 64512\n"),
            &[
                "forwarder.toml: [agent]: local_as: unknown field `local_as`",
                "(line 3, column 1)",
            ],
        );
    }

    #[test]
    fn wrong_type() {
        rejected_with(
            &edit("vlan = 200", "vlan = \"200\""),
            &[r#"forwarder.toml: vif "vif-200": vlan: invalid type: string "200", expected u16"#],
        );
        rejected_with(
            &edit("client_asn = 65001", "client_asn = -1"),
            &[r#"forwarder.toml: vif "vif-100": client_asn: invalid value: integer `-1`"#],
        );
    }

    #[test]
    fn unknown_enum_value() {
        rejected_with(
            &edit("kind = \"dedicated\"", "kind = \"shared\""),
            &[
                r#"forwarder.toml: connection "dc-1": kind: unknown variant `shared`, expected `hosted` or `dedicated`"#,
            ],
        );
    }

    #[test]
    fn missing_field() {
        rejected_with(
            &edit("interface = \"dc1\"\n", ""),
            &[r#"forwarder.toml: connection "dc-1": interface: missing field `interface`"#],
        );
        rejected_with(
            &edit("name = \"att-b\"\n", ""),
            &["forwarder.toml: [[vpc_attachment]] #2: name: missing field `name`"],
        );
    }

    #[test]
    fn bad_address_syntax() {
        rejected_with(
            &edit(
                "cloud_address = \"192.168.100.1\"",
                "cloud_address = \"192.168.100\"",
            ),
            &[r#"forwarder.toml: vif "vif-200" peer #1: cloud_address: invalid IP address syntax"#],
        );
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        rejected_with(
            &edit(
                "[[border_gateway]]\nname = \"bgw-2\"",
                "[[border_gateway]\nname = \"bgw-2\"",
            ),
            &[
                "forwarder.toml: top level: [[border_gateway]: unclosed array table",
                "(line 23, column 18)",
            ],
        );
        rejected_with(
            &edit("vlan = 200", "vlan = 200 200"),
            &[
                "forwarder.toml: vif \"vif-200\": vlan: ",
                "(line 73, column 8)",
            ],
        );
    }

    // --- reporting

    #[test]
    fn every_problem_is_reported_one_per_line() {
        let text = edit("vlan = 200", "vlan = 0").replacen("vni = 1001", "vni = 0", 1);
        let Err(error) = parse(&text, ORIGIN) else {
            panic!("accepted");
        };
        assert_eq!(
            error.to_string(),
            "forwarder.toml: vpc_attachment \"att-a\": vni 0 is outside 1..=16777215\n\
             forwarder.toml: vif \"vif-200\": vlan 0 is outside 1..=4094"
        );
        let fields: Vec<_> = error.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["vni", "vlan"]);
        assert_eq!(error.problems()[1].section, "vif \"vif-200\"");
    }

    #[test]
    fn load_names_the_path() {
        let path = Path::new("/nonexistent/forwarder.toml");
        let Err(error) = load(path) else {
            panic!("loaded");
        };
        assert!(matches!(error, ConfigError::Read { .. }));
        assert_eq!(
            error.to_string(),
            "/nonexistent/forwarder.toml: cannot read the config file"
        );
    }
}
