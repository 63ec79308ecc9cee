//! The XDP data plane as the agent sees it: the embedded eBPF object, loading it (with maps
//! pinned under a directory so that forwarding outlives the agent), attaching it to ports
//! (re-adopting pinned links), and typed operations on its maps. Map names and value types
//! come from `forwarder-common` only.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    pin::PinError,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use forwarder_common::{
    Attachment, BfdAnswer, BfdKey, ControlBuckets, DROP_SLOTS, MAP_ATTACHMENT_STATS,
    MAP_ATTACHMENTS, MAP_BFD_ANSWER, MAP_CAPTURE, MAP_CAPTURE_RING, MAP_CONTROL_BUCKETS,
    MAP_CONTROL_PORTS, MAP_DROPS, MAP_NEXT_HOPS, MAP_PASSES, MAP_ROUTES, MAP_ROUTES6, MAP_ROUTES24,
    MAP_TX_PORTS, MAP_UNDERLAY, MAP_VIF_ADDRS6, MAP_VIF_DROPS, MAP_VIF_POLICY, MAP_VIF_STATS,
    MAP_VIF_TABLE, MAP_VIFS, MAP_VTEPS, MAX_ATTACHMENTS, MAX_BFD_ANSWERS, MAX_GROUP_MEMBERS,
    MAX_NEXT_HOPS, MAX_PORTS, MAX_ROUTES6, MAX_VIFS, NextHop, PASS_SLOTS, PacketCounter, RouteKey,
    RouteKey6, TrafficCounters, UnderlayHop, VLAN_COUNTERS, VLAN_UNTAGGED_SLOT, Vif, VifAddrs6,
    VifDrops, VifKey, VifPolicy, VtepKey, drop_reason, next_hop_kind, outer_ipv4_partial_csum,
    pass_reason,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netlink;

/// The eBPF object built by `build.rs` from `forwarder-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder-ebpf"));

/// Every map the agent pins and re-adopts (the capture flag too, so that a new agent turns
/// off a capture a killed one left on).
const PINNED_MAPS: [&str; 21] = [
    MAP_ROUTES24,
    MAP_ROUTES6,
    MAP_VIF_ADDRS6,
    MAP_UNDERLAY,
    MAP_BFD_ANSWER,
    MAP_VIF_POLICY,
    MAP_CONTROL_BUCKETS,
    MAP_VIF_DROPS,
    MAP_CAPTURE,
    MAP_VIFS,
    MAP_VIF_TABLE,
    MAP_CONTROL_PORTS,
    MAP_ATTACHMENTS,
    MAP_VTEPS,
    MAP_ROUTES,
    MAP_NEXT_HOPS,
    MAP_TX_PORTS,
    MAP_VIF_STATS,
    MAP_ATTACHMENT_STATS,
    MAP_DROPS,
    MAP_PASSES,
];

/// What each pinned map must look like to be adopted: (name, key size, value size, entries;
/// 0 = any). The kernel does not compare a pinned map with the program's definition, and
/// aya adopts whatever the pin holds, so an upgrade that changed a map would run the new
/// program on the old map.
const MAP_SHAPES: [(&str, usize, usize, u32); 21] = [
    // Sized with the route map.
    (MAP_ROUTES24, size_of::<RouteKey>(), 4, 0),
    (MAP_ROUTES6, 4 + size_of::<RouteKey6>(), 4, MAX_ROUTES6),
    (MAP_VIF_ADDRS6, 4, size_of::<VifAddrs6>(), MAX_VIFS),
    (MAP_UNDERLAY, 4, size_of::<UnderlayHop>(), MAX_ATTACHMENTS),
    (
        MAP_BFD_ANSWER,
        size_of::<BfdKey>(),
        size_of::<BfdAnswer>(),
        MAX_BFD_ANSWERS,
    ),
    (MAP_VIF_POLICY, 4, size_of::<VifPolicy>(), MAX_VIFS),
    (
        MAP_CONTROL_BUCKETS,
        4,
        size_of::<ControlBuckets>(),
        MAX_VIFS,
    ),
    (MAP_VIF_DROPS, 4, size_of::<VifDrops>(), MAX_VIFS),
    (MAP_CAPTURE, 4, 4, 1),
    (MAP_VIFS, size_of::<VifKey>(), 4, MAX_VIFS),
    (MAP_VIF_TABLE, 4, size_of::<Vif>(), MAX_VIFS),
    (MAP_CONTROL_PORTS, 4, 4, MAX_VIFS),
    (MAP_ATTACHMENTS, 4, size_of::<Attachment>(), MAX_ATTACHMENTS),
    (MAP_VTEPS, size_of::<VtepKey>(), 4, MAX_ATTACHMENTS),
    // The route map's size is the operator's (`max_routes`); its key is an LPM key.
    (MAP_ROUTES, 4 + size_of::<RouteKey>(), 4, 0),
    (MAP_NEXT_HOPS, 4, size_of::<NextHop>(), MAX_NEXT_HOPS),
    // struct bpf_devmap_val: ifindex and a program fd.
    (MAP_TX_PORTS, 4, 8, MAX_PORTS),
    (MAP_VIF_STATS, 4, size_of::<TrafficCounters>(), MAX_VIFS),
    (
        MAP_ATTACHMENT_STATS,
        4,
        size_of::<TrafficCounters>(),
        MAX_ATTACHMENTS,
    ),
    (MAP_DROPS, 4, 8, DROP_SLOTS),
    (MAP_PASSES, 4, 8, PASS_SLOTS),
];

/// Maps that hold only counters, rate-limit state or what the agent writes again at start
/// (the underlay next hops, the /24 shortcuts): one of another shape is replaced by a new,
/// empty one (counts start again from zero). Any other mismatch stops the load.
const REPLACEABLE_MAPS: [&str; 9] = [
    MAP_ROUTES24,
    MAP_UNDERLAY,
    MAP_CONTROL_BUCKETS,
    MAP_VIF_DROPS,
    MAP_VIF_STATS,
    MAP_ATTACHMENT_STATS,
    MAP_DROPS,
    MAP_PASSES,
    MAP_CAPTURE,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the pinned map {path:?} is {found}, this build needs {wanted}: it was made by an \
         incompatible version. Stop the agent, remove {path:?} (forwarding of what that map \
         holds stops until the agent has written it again) and start the agent"
    )]
    MapShape {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("loading the eBPF object (maps pinned under {pin_dir:?})")]
    Load {
        pin_dir: Option<PathBuf>,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {0} not found in the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {0} not found in the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("adding port {ifindex} to the TX map")]
    TxPort {
        ifindex: u32,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error(transparent)]
    Host(#[from] crate::host::Error),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error("{0} is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs(PathBuf),
    #[error("no interface {0}")]
    NoInterface(String),
    #[error("attaching XDP to {ifname}")]
    Attach {
        ifname: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<LinkError>,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} id {id} out of range (max {max})")]
    OutOfRange {
        what: &'static str,
        id: u32,
        max: u32,
    },
    #[error("next-hop group {id} has {count} members; 1..={MAX_GROUP_MEMBERS} allowed")]
    GroupSize { id: u32, count: usize },
    #[error("the route map is full")]
    RouteMapFull,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map {
        name,
        source: Box::new(source),
    }
}

pub use crate::model::PortRole;

const PROGRAMS: [&str; 3] = ["xdp_customer", "xdp_underlay", "xdp_control"];

/// What a VIF looks like to the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VifSpec {
    pub id: u32,
    /// Connection port ifindex and VLAN id.
    pub port_ifindex: u32,
    pub vlan: u16,
    pub gateway_id: u32,
    /// One of [`forwarder_common::vif_state`].
    pub state: u32,
    /// Host end of the control veth, 0 until the control plane exists.
    pub control_ifindex: u32,
    pub cloud_addrs: [Option<Ipv4Addr>; 2],
    /// IPv6 interconnect pairs (cloud, client); all zero: no IPv6 on this VIF.
    pub addrs6: VifAddrs6,
    /// Source MAC toward the customer.
    pub mac: [u8; 6],
    /// MTU, source check, control-path rate limit (all zero: none).
    pub policy: VifPolicy,
}

impl VifSpec {
    /// The VIF table entry.
    pub fn entry(&self) -> Vif {
        Vif {
            state: self.state,
            gateway_id: self.gateway_id,
            port_ifindex: self.port_ifindex,
            control_ifindex: self.control_ifindex,
            cloud_addrs: self.cloud_addrs.map(|a| a.map_or([0; 4], |a| a.octets())),
            vlan: self.vlan,
            mac: self.mac,
        }
    }

    /// The (port, VLAN) key frames find the VIF by.
    pub fn key(&self) -> VifKey {
        VifKey {
            ifindex: self.port_ifindex,
            vlan: self.vlan,
            _pad: 0,
        }
    }
}

/// What a VPC attachment looks like to the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachmentSpec {
    pub id: u32,
    pub gateway_id: u32,
    pub vni: u32,
    pub local_vtep: Ipv4Addr,
    pub remote_vtep: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub router_mac: [u8; 6],
}

impl AttachmentSpec {
    /// The attachment table entry.
    pub fn entry(&self) -> Attachment {
        let (local, remote) = (self.local_vtep.octets(), self.remote_vtep.octets());
        Attachment {
            state: 1,
            gateway_id: self.gateway_id,
            vni: self.vni,
            local_vtep: local,
            remote_vtep: remote,
            underlay_ifindex: self.underlay_ifindex,
            ip_csum_partial: outer_ipv4_partial_csum(local, remote),
            router_mac: self.router_mac,
            _pad: [0; 2],
        }
    }

    /// The (VNI, remote VTEP) key decapsulated frames find the attachment by.
    pub fn key(&self) -> VtepKey {
        VtepKey {
            vni: self.vni,
            remote_vtep: self.remote_vtep.octets(),
        }
    }
}

/// A next hop as the map holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHopSpec {
    Attachment(u32),
    /// A VIF and the client router MAC frames toward it carry.
    Vif {
        vif: u32,
        mac: [u8; 6],
    },
    /// Member next-hop ids (each an attachment or VIF next hop), chosen by flow hash.
    Group(Vec<u32>),
}

impl NextHopSpec {
    /// What a map entry holds; None for an empty or unknown slot.
    pub fn from_entry(nh: &NextHop) -> Option<Self> {
        match nh.kind {
            next_hop_kind::ATTACHMENT => Some(Self::Attachment(nh.target)),
            next_hop_kind::VIF => Some(Self::Vif {
                vif: nh.target,
                mac: nh.mac,
            }),
            next_hop_kind::GROUP => Some(Self::Group(
                nh.members
                    .iter()
                    .take(usize::from(nh.member_count).min(MAX_GROUP_MEMBERS))
                    .copied()
                    .collect(),
            )),
            _ => None,
        }
    }
}

/// Options for [`Dataplane::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin maps under `DIR/maps` and links under `DIR/links`, re-adopting what is there.
    /// `None` (tests): everything lives as long as the [`Dataplane`].
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the route map (default: [`forwarder_common::MAX_ROUTES`]); only takes
    /// effect when the map is created, not when a pinned one is adopted.
    pub max_routes: Option<u32>,
}

/// The loaded programs and maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Ports this Dataplane attached, and the link its program holds for each, if any (a
    /// link that lives only in its pin is not held here).
    attached: std::collections::HashMap<String, (PortRole, Option<XdpLinkId>)>,
    /// The capture ring buffer, lent to a capture while one runs.
    capture_ring: std::os::fd::OwnedFd,
    /// A capture has the ring buffer.
    capture_lent: bool,
}

impl Dataplane {
    /// Makes `dir` a directory on a bpf filesystem (mounting one on /sys/fs/bpf if the host
    /// has none), so it can be locked before anything is loaded.
    pub fn prepare_pin_dir(dir: &Path) -> Result<(), Error> {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })
    }

    /// Loads the embedded object: maps created or (when pinned) re-adopted, programs
    /// verified. Nothing is attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = match &options.pin_dir {
            Some(dir) => {
                ensure_bpffs(dir)?;
                let maps = dir.join("maps");
                fs::create_dir_all(&maps).map_err(|source| Error::Io {
                    path: maps.clone(),
                    source,
                })?;
                PINNED_MAPS
                    .iter()
                    .map(|name| (*name, maps.join(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        // Every map is checked before any is replaced: a refusal leaves the pins as they were.
        let mut replace = Vec::new();
        for (name, path) in &map_paths {
            if check_pinned_shape(name, path)? {
                replace.push(path);
            }
        }
        for path in replace {
            fs::remove_file(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        }
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(max) = options.max_routes {
            loader.map_max_entries(MAP_ROUTES, max);
            loader.map_max_entries(
                MAP_ROUTES24,
                max.saturating_mul(forwarder_common::ROUTES24_PER_ROUTE),
            );
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|source| Error::Load {
            pin_dir: options.pin_dir.clone(),
            source: Box::new(source),
        })?;
        for name in PROGRAMS {
            let program = xdp_program(&mut ebpf, name)?;
            program.load().map_err(|source| Error::Program {
                name,
                source: Box::new(source),
            })?;
        }
        // Kept as a descriptor: a ring buffer is mapped (and counts in RSS, 8 MiB) only
        // while a capture reads it.
        let capture_ring = match ebpf.take_map(MAP_CAPTURE_RING) {
            Some(Map::RingBuf(data)) => std::os::fd::AsFd::as_fd(data.fd())
                .try_clone_to_owned()
                .map_err(|source| Error::Io {
                    path: MAP_CAPTURE_RING.into(),
                    source,
                })?,
            _ => return Err(Error::MissingMap(MAP_CAPTURE_RING)),
        };
        Ok(Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
            attached: std::collections::HashMap::new(),
            capture_ring,
            capture_lent: false,
        })
    }

    /// The underlying object, for tests and diagnostics.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the program for `role` to `ifname` in the calling thread's network namespace
    /// and adds the port to the TX map. With a pin directory, an existing pinned link for the
    /// port is re-adopted and its program replaced atomically (no moment without XDP);
    /// otherwise a new link is made and pinned.
    pub fn attach(&mut self, ifname: &str, role: PortRole, mode: XdpMode) -> Result<u32, Error> {
        let ifindex = if_index(ifname)?;
        let name = role.program();
        let program = xdp_program(&mut self.ebpf, name)?;
        let attach_err = |source| Error::Attach {
            ifname: ifname.to_owned(),
            source: Box::new(source),
        };
        let held = match &self.pin_dir {
            None => Some(
                program
                    .attach_to_if_index(ifindex, mode)
                    .map_err(attach_err)?,
            ),
            Some(dir) => {
                let links = dir.join("links");
                fs::create_dir_all(&links).map_err(|source| Error::Io {
                    path: links.clone(),
                    source,
                })?;
                let path = links.join(ifname);
                let readopted = if path.exists() {
                    readopt(program, &path)?
                } else {
                    None
                };
                if readopted.is_none() {
                    let id = program
                        .attach_to_if_index(ifindex, mode)
                        .map_err(attach_err)?;
                    let link = program.take_link(id).map_err(attach_err)?;
                    let fd_link = FdLink::try_from(link).map_err(|source| Error::Link {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                    // The pin keeps the link (and XDP on the port) alive after we exit.
                    fd_link.pin(&path).map_err(|source| Error::Pin {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                }
                readopted
            }
        };
        self.attached.insert(ifname.to_owned(), (role, held));
        self.add_tx_port(ifindex)?;
        Ok(ifindex)
    }

    /// Ports with a pinned link under the pin directory.
    pub fn pinned_ports(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else {
            return Vec::new();
        };
        fs::read_dir(dir.join("links"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes XDP from `ifname` (its pinned link too) and the port from the TX map.
    pub fn detach(&mut self, ifname: &str) -> Result<(), Error> {
        if let Some((role, Some(id))) = self.attached.remove(ifname) {
            let name = role.program();
            let program = xdp_program(&mut self.ebpf, name)?;
            program.detach(id).map_err(|source| Error::Attach {
                ifname: ifname.to_owned(),
                source: Box::new(source),
            })?;
        }
        if let Some(dir) = &self.pin_dir {
            let path = dir.join("links").join(ifname);
            if path.exists() {
                let link = PinnedLink::from_pin(&path).map_err(|source| Error::Link {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
                // Unpinning and dropping the last fd detaches the program.
                drop(link.unpin().map_err(|source| Error::Io { path, source })?);
            }
        }
        if let Ok(ifindex) = if_index(ifname) {
            let mut tx =
                DevMapHash::try_from(self.map_mut(MAP_TX_PORTS)?).map_err(map_err(MAP_TX_PORTS))?;
            ignore_missing(tx.remove(ifindex), MAP_TX_PORTS)?;
        }
        Ok(())
    }

    /// Allows redirects to `ifindex`. A port already there is left alone: replacing a
    /// devmap entry removes it for an instant.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut tx =
            DevMapHash::try_from(self.map_mut(MAP_TX_PORTS)?).map_err(map_err(MAP_TX_PORTS))?;
        if tx.get(ifindex, 0).is_ok_and(|v| v.if_index == ifindex) {
            return Ok(());
        }
        tx.insert(ifindex, ifindex, None, 0)
            .map_err(|source| Error::TxPort {
                ifindex,
                source: Box::new(source),
            })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, Error> {
        self.ebpf.map(name).ok_or(Error::MissingMap(name))
    }

    fn array<T: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, T>, Error> {
        Array::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, Error> {
        HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn routes_mut(&mut self) -> Result<LpmTrie<&mut MapData, RouteKey, u32>, Error> {
        LpmTrie::try_from(self.map_mut(MAP_ROUTES)?).map_err(map_err(MAP_ROUTES))
    }

    fn routes6_mut(&mut self) -> Result<LpmTrie<&mut MapData, RouteKey6, u32>, Error> {
        LpmTrie::try_from(self.map_mut(MAP_ROUTES6)?).map_err(map_err(MAP_ROUTES6))
    }

    /// Creates or replaces a VIF: its table entry, its (port, VLAN) key, its control port.
    pub fn upsert_vif(&mut self, spec: &VifSpec) -> Result<(), Error> {
        // Policy, addresses and table entry first: the key never points to a stale entry.
        self.set_vif_policy(spec.id, spec.policy)?;
        self.set_vif_addrs6(spec.id, spec.addrs6)?;
        self.set_vif_slot(spec.id, spec.entry())?;
        self.set_vif_key(spec.key(), spec.id)?;
        if spec.control_ifindex != 0 {
            self.set_control_port(spec.control_ifindex, spec.id)?;
            self.add_tx_port(spec.control_ifindex)?;
        }
        Ok(())
    }

    /// Writes VIF table slot `id`.
    pub fn set_vif_slot(&mut self, id: u32, vif: Vif) -> Result<(), Error> {
        check_id("VIF", id, forwarder_common::MAX_VIFS)?;
        self.array(MAP_VIF_TABLE)?
            .set(id, vif, 0)
            .map_err(map_err(MAP_VIF_TABLE))
    }

    /// Writes VIF `id`'s policy (MTU, source check, control-path rate limit).
    pub fn set_vif_policy(&mut self, id: u32, policy: VifPolicy) -> Result<(), Error> {
        check_id("VIF", id, MAX_VIFS)?;
        self.array(MAP_VIF_POLICY)?
            .set(id, policy, 0)
            .map_err(map_err(MAP_VIF_POLICY))
    }

    /// Writes VIF `id`'s IPv6 interconnect addresses.
    pub fn set_vif_addrs6(&mut self, id: u32, addrs: VifAddrs6) -> Result<(), Error> {
        check_id("VIF", id, MAX_VIFS)?;
        self.array(MAP_VIF_ADDRS6)?
            .set(id, addrs, 0)
            .map_err(map_err(MAP_VIF_ADDRS6))
    }

    /// Every non-empty IPv6 address slot.
    pub fn vif_addrs6_entries(&self) -> Result<Vec<(u32, VifAddrs6)>, Error> {
        let map: Array<&MapData, VifAddrs6> =
            Array::try_from(self.map(MAP_VIF_ADDRS6)?).map_err(map_err(MAP_VIF_ADDRS6))?;
        let mut out = Vec::new();
        for (id, a) in map.iter().enumerate() {
            let a = a.map_err(map_err(MAP_VIF_ADDRS6))?;
            if a != VifAddrs6::default() {
                out.push((id as u32, a));
            }
        }
        Ok(out)
    }

    /// VIF `id`'s IPv6 interconnect addresses as the data plane has them.
    pub fn vif_addrs6(&self, id: u32) -> Result<VifAddrs6, Error> {
        let map: Array<&MapData, VifAddrs6> =
            Array::try_from(self.map(MAP_VIF_ADDRS6)?).map_err(map_err(MAP_VIF_ADDRS6))?;
        map.get(&id, 0).map_err(map_err(MAP_VIF_ADDRS6))
    }

    /// Every non-empty VIF policy slot.
    pub fn vif_policies(&self) -> Result<Vec<(u32, VifPolicy)>, Error> {
        let map: Array<&MapData, VifPolicy> =
            Array::try_from(self.map(MAP_VIF_POLICY)?).map_err(map_err(MAP_VIF_POLICY))?;
        let mut out = Vec::new();
        for (id, p) in map.iter().enumerate() {
            let p = p.map_err(map_err(MAP_VIF_POLICY))?;
            if p != VifPolicy::default() {
                out.push((id as u32, p));
            }
        }
        Ok(out)
    }

    /// VIF `id`'s own drop counters, summed over CPUs.
    pub fn vif_drops(&self, id: u32) -> Result<VifDrops, Error> {
        let map: PerCpuArray<&MapData, VifDrops> =
            PerCpuArray::try_from(self.map(MAP_VIF_DROPS)?).map_err(map_err(MAP_VIF_DROPS))?;
        let per_cpu = map.get(&id, 0).map_err(map_err(MAP_VIF_DROPS))?;
        Ok(per_cpu.iter().fold(VifDrops::default(), |s, c| VifDrops {
            control_limited: s.control_limited + c.control_limited,
            source_check: s.source_check + c.source_check,
            too_big: s.too_big + c.too_big,
            _reserved: 0,
        }))
    }

    /// Has the data plane answer a BFD session while the agent is away.
    pub fn set_bfd_answer(&mut self, key: BfdKey, answer: BfdAnswer) -> Result<(), Error> {
        self.hash::<BfdKey, BfdAnswer>(MAP_BFD_ANSWER)?
            .insert(key, answer, 0)
            .map_err(map_err(MAP_BFD_ANSWER))
    }

    /// Every BFD session the data plane answers.
    pub fn bfd_answers(&self) -> Result<Vec<(BfdKey, BfdAnswer)>, Error> {
        let map: HashMap<&MapData, BfdKey, BfdAnswer> =
            HashMap::try_from(self.map(MAP_BFD_ANSWER)?).map_err(map_err(MAP_BFD_ANSWER))?;
        map.iter()
            .map(|e| e.map_err(map_err(MAP_BFD_ANSWER)))
            .collect()
    }

    /// The agent's own BFD session takes over.
    pub fn remove_bfd_answer(&mut self, key: BfdKey) -> Result<(), Error> {
        ignore_missing(
            self.hash::<BfdKey, BfdAnswer>(MAP_BFD_ANSWER)?.remove(&key),
            MAP_BFD_ANSWER,
        )
    }

    /// Points a (port, VLAN) key at VIF `id`.
    pub fn set_vif_key(&mut self, key: VifKey, id: u32) -> Result<(), Error> {
        self.hash::<VifKey, u32>(MAP_VIFS)?
            .insert(key, id, 0)
            .map_err(map_err(MAP_VIFS))
    }

    /// Marks `ifindex` as VIF `id`'s control port.
    pub fn set_control_port(&mut self, ifindex: u32, id: u32) -> Result<(), Error> {
        self.hash::<u32, u32>(MAP_CONTROL_PORTS)?
            .insert(ifindex, id, 0)
            .map_err(map_err(MAP_CONTROL_PORTS))
    }

    /// Changes only a VIF's state (one map write).
    pub fn set_vif_state(&mut self, id: u32, state: u32) -> Result<(), Error> {
        check_id("VIF", id, forwarder_common::MAX_VIFS)?;
        let mut table = self.array::<Vif>(MAP_VIF_TABLE)?;
        let mut vif = table.get(&id, 0).map_err(map_err(MAP_VIF_TABLE))?;
        vif.state = state;
        table.set(id, vif, 0).map_err(map_err(MAP_VIF_TABLE))
    }

    /// Removes a VIF: its key first (no new frames reach it), then its table entry.
    pub fn remove_vif(&mut self, spec: &VifSpec) -> Result<(), Error> {
        let key = VifKey {
            ifindex: spec.port_ifindex,
            vlan: spec.vlan,
            _pad: 0,
        };
        ignore_missing(self.hash::<VifKey, u32>(MAP_VIFS)?.remove(&key), MAP_VIFS)?;
        if spec.control_ifindex != 0 {
            ignore_missing(
                self.hash::<u32, u32>(MAP_CONTROL_PORTS)?
                    .remove(&spec.control_ifindex),
                MAP_CONTROL_PORTS,
            )?;
        }
        self.array(MAP_VIF_TABLE)?
            .set(spec.id, Vif::default(), 0)
            .map_err(map_err(MAP_VIF_TABLE))?;
        self.set_vif_policy(spec.id, VifPolicy::default())?;
        self.set_vif_addrs6(spec.id, VifAddrs6::default())
    }

    /// Creates or replaces an attachment and its (VNI, remote VTEP) key.
    pub fn upsert_attachment(&mut self, spec: &AttachmentSpec) -> Result<(), Error> {
        self.set_attachment_slot(spec.id, spec.entry())?;
        self.set_vtep_key(spec.key(), spec.id)
    }

    /// Writes attachment slot `id`.
    pub fn set_attachment_slot(&mut self, id: u32, att: Attachment) -> Result<(), Error> {
        check_id("attachment", id, forwarder_common::MAX_ATTACHMENTS)?;
        self.array(MAP_ATTACHMENTS)?
            .set(id, att, 0)
            .map_err(map_err(MAP_ATTACHMENTS))
    }

    /// The underlay next hop of attachment `id` (`valid` 0: XDP asks the FIB per packet).
    pub fn set_underlay(&mut self, id: u32, hop: UnderlayHop) -> Result<(), Error> {
        check_id("attachment", id, forwarder_common::MAX_ATTACHMENTS)?;
        self.array(MAP_UNDERLAY)?
            .set(id, hop, 0)
            .map_err(map_err(MAP_UNDERLAY))
    }

    /// The underlay next hop of attachment `id` as the data plane has it.
    pub fn underlay(&self, id: u32) -> Result<UnderlayHop, Error> {
        let map: Array<&MapData, UnderlayHop> =
            Array::try_from(self.map(MAP_UNDERLAY)?).map_err(map_err(MAP_UNDERLAY))?;
        map.get(&id, 0).map_err(map_err(MAP_UNDERLAY))
    }

    /// Points a (VNI, remote VTEP) key at attachment `id`.
    pub fn set_vtep_key(&mut self, key: VtepKey, id: u32) -> Result<(), Error> {
        self.hash::<VtepKey, u32>(MAP_VTEPS)?
            .insert(key, id, 0)
            .map_err(map_err(MAP_VTEPS))
    }

    pub fn remove_attachment(&mut self, spec: &AttachmentSpec) -> Result<(), Error> {
        let key = VtepKey {
            vni: spec.vni,
            remote_vtep: spec.remote_vtep.octets(),
        };
        ignore_missing(
            self.hash::<VtepKey, u32>(MAP_VTEPS)?.remove(&key),
            MAP_VTEPS,
        )?;
        self.array(MAP_ATTACHMENTS)?
            .set(spec.id, Attachment::default(), 0)
            .map_err(map_err(MAP_ATTACHMENTS))?;
        self.set_underlay(spec.id, UnderlayHop::default())
    }

    /// Writes next hop `id`. Every route pointing to `id` follows in the same write: this is
    /// how a failed group member leaves all its routes at once.
    pub fn set_next_hop(&mut self, id: u32, spec: &NextHopSpec) -> Result<(), Error> {
        check_id("next hop", id, forwarder_common::MAX_NEXT_HOPS)?;
        let mut nh = NextHop::default();
        match spec {
            NextHopSpec::Attachment(att) => {
                nh.kind = next_hop_kind::ATTACHMENT;
                nh.target = *att;
            }
            NextHopSpec::Vif { vif, mac } => {
                nh.kind = next_hop_kind::VIF;
                nh.target = *vif;
                nh.mac = *mac;
            }
            NextHopSpec::Group(members) => {
                if members.is_empty() || members.len() > MAX_GROUP_MEMBERS {
                    return Err(Error::GroupSize {
                        id,
                        count: members.len(),
                    });
                }
                nh.kind = next_hop_kind::GROUP;
                nh.member_count = members.len() as u16;
                nh.members[..members.len()].copy_from_slice(members);
            }
        }
        self.array(MAP_NEXT_HOPS)?
            .set(id, nh, 0)
            .map_err(map_err(MAP_NEXT_HOPS))
    }

    pub fn clear_next_hop(&mut self, id: u32) -> Result<(), Error> {
        check_id("next hop", id, forwarder_common::MAX_NEXT_HOPS)?;
        self.array(MAP_NEXT_HOPS)?
            .set(id, NextHop::default(), 0)
            .map_err(map_err(MAP_NEXT_HOPS))
    }

    /// Installs or replaces a route of border gateway `gateway_id` (IPv4 or IPv6: each family
    /// has its own map). A full map is [`Error::RouteMapFull`].
    pub fn upsert_route(
        &mut self,
        gateway_id: u32,
        prefix: impl Into<IpNet>,
        next_hop: u32,
    ) -> Result<(), Error> {
        let (result, name) = match prefix.into() {
            IpNet::V4(p) => (
                self.routes_mut()?
                    .insert(&route_key(gateway_id, p), next_hop, 0),
                MAP_ROUTES,
            ),
            IpNet::V6(p) => (
                self.routes6_mut()?
                    .insert(&route_key6(gateway_id, p), next_hop, 0),
                MAP_ROUTES6,
            ),
        };
        result.map_err(|e| route_write_error(name, e))
    }

    /// The number of entries map `name` really holds (an adopted pinned map keeps the size
    /// it was created with).
    pub fn capacity(&self, name: &'static str) -> Result<u32, Error> {
        let data: &MapData = match self.map(name)? {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LpmTrie(d)
            | Map::PerCpuArray(d)
            | Map::DevMapHash(d) => d,
            _ => return Err(Error::MissingMap(name)),
        };
        Ok(data.info().map_err(map_err(name))?.max_entries())
    }

    /// Captures VIF `vif`'s frames into the ring buffer (0: no capture).
    pub fn set_capture(&mut self, vif: u32) -> Result<(), Error> {
        self.array(MAP_CAPTURE)?
            .set(0, vif, 0)
            .map_err(map_err(MAP_CAPTURE))
    }

    /// The VIF being captured (0: none).
    pub fn capture(&self) -> Result<u32, Error> {
        let map: Array<&MapData, u32> =
            Array::try_from(self.map(MAP_CAPTURE)?).map_err(map_err(MAP_CAPTURE))?;
        map.get(&0, 0).map_err(map_err(MAP_CAPTURE))
    }

    /// Lends the capture ring buffer, mapped (None while a capture has it).
    pub fn take_capture_ring(&mut self) -> Result<Option<RingBuf<MapData>>, Error> {
        if self.capture_lent {
            return Ok(None);
        }
        let copy = self.capture_ring.try_clone().map_err(|source| Error::Io {
            path: MAP_CAPTURE_RING.into(),
            source,
        })?;
        let data = MapData::from_fd(copy).map_err(map_err(MAP_CAPTURE_RING))?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(map_err(MAP_CAPTURE_RING))?;
        self.capture_lent = true;
        Ok(Some(ring))
    }

    /// Takes the capture ring buffer back (unmapped).
    pub fn return_capture_ring(&mut self, ring: RingBuf<MapData>) {
        drop(ring);
        self.capture_lent = false;
    }

    /// Every VIF table slot in use: (id, entry).
    pub fn vif_entries(&self) -> Result<Vec<(u32, Vif)>, Error> {
        let map: Array<&MapData, Vif> =
            Array::try_from(self.map(MAP_VIF_TABLE)?).map_err(map_err(MAP_VIF_TABLE))?;
        let mut out = Vec::new();
        for (id, entry) in map.iter().enumerate() {
            let vif = entry.map_err(map_err(MAP_VIF_TABLE))?;
            if vif.state != forwarder_common::vif_state::ABSENT {
                out.push((id as u32, vif));
            }
        }
        Ok(out)
    }

    /// Every attachment slot in use: (id, entry).
    pub fn attachment_entries(&self) -> Result<Vec<(u32, Attachment)>, Error> {
        let map: Array<&MapData, Attachment> =
            Array::try_from(self.map(MAP_ATTACHMENTS)?).map_err(map_err(MAP_ATTACHMENTS))?;
        let mut out = Vec::new();
        for (id, entry) in map.iter().enumerate() {
            let att = entry.map_err(map_err(MAP_ATTACHMENTS))?;
            if att.state != 0 {
                out.push((id as u32, att));
            }
        }
        Ok(out)
    }

    /// Every control port: (ifindex, VIF id).
    pub fn control_ports(&self) -> Result<Vec<(u32, u32)>, Error> {
        let map: HashMap<&MapData, u32, u32> =
            HashMap::try_from(self.map(MAP_CONTROL_PORTS)?).map_err(map_err(MAP_CONTROL_PORTS))?;
        map.iter()
            .map(|e| e.map_err(map_err(MAP_CONTROL_PORTS)))
            .collect()
    }

    /// Installs many routes, [`ROUTE_BATCH`] to a system call; stops at the first failure.
    pub fn upsert_routes<P: Into<IpNet> + Copy>(
        &mut self,
        routes: &[(u32, P, u32)],
    ) -> Result<(), Error> {
        let routes: Vec<(u32, IpNet, u32)> = routes
            .iter()
            .map(|(g, p, nh)| (*g, (*p).into(), *nh))
            .collect();
        self.upsert_route_batch(&routes).1
    }

    /// Writes `routes` in order with one `BPF_MAP_UPDATE_BATCH` per [`ROUTE_BATCH`] routes
    /// of one family (the kernel writes each as `upsert_route` would, without a system call
    /// each). Returns how many were written: all, or those before the first that failed, with
    /// its error ([`Error::RouteMapFull`] on a full map).
    pub fn upsert_route_batch(
        &mut self,
        routes: &[(u32, IpNet, u32)],
    ) -> (usize, Result<(), Error>) {
        let mut written = 0;
        for run in routes.chunk_by(|a, b| a.1.addr().is_ipv6() == b.1.addr().is_ipv6()) {
            let v6 = run[0].1.addr().is_ipv6();
            let name = if v6 { MAP_ROUTES6 } else { MAP_ROUTES };
            let data = match self.lpm_data(name) {
                Ok(d) => d,
                Err(e) => return (written, Err(e)),
            };
            for chunk in run.chunks(ROUTE_BATCH) {
                let values: Vec<u32> = chunk.iter().map(|r| r.2).collect();
                let (done, result) = if v6 {
                    let keys: Vec<Key<RouteKey6>> = chunk
                        .iter()
                        .filter_map(|(g, p, _)| match p {
                            IpNet::V6(p) => Some(route_key6(*g, *p)),
                            IpNet::V4(_) => None,
                        })
                        .collect();
                    update_batch(data, &keys, &values)
                } else {
                    let keys: Vec<Key<RouteKey>> = chunk
                        .iter()
                        .filter_map(|(g, p, _)| match p {
                            IpNet::V4(p) => Some(route_key(*g, *p)),
                            IpNet::V6(_) => None,
                        })
                        .collect();
                    update_batch(data, &keys, &values)
                };
                written += done;
                if let Err(e) = result {
                    return (written, Err(route_write_error(name, e)));
                }
            }
        }
        (written, Ok(()))
    }

    fn routes24_data(&self) -> Result<&MapData, Error> {
        match self.map(MAP_ROUTES24)? {
            Map::HashMap(d) => Ok(d),
            _ => Err(Error::MissingMap(MAP_ROUTES24)),
        }
    }

    fn lpm_data(&self, name: &'static str) -> Result<&MapData, Error> {
        match self.map(name)? {
            Map::LpmTrie(d) => Ok(d),
            _ => Err(Error::MissingMap(name)),
        }
    }

    /// Writes /24 shortcuts ((gateway id, /24 first address, next hop), see
    /// [`crate::routes24`]) and removes others ((gateway id, /24); one not there is not an
    /// error), [`ROUTE_BATCH`] to a system call. A shortcut that finds the map full is left
    /// out (the trie answers for its /24, as it would without it); returns how many were.
    pub fn write_routes24(
        &mut self,
        writes: &[(u32, u32, u32)],
        removals: &[(u32, u32)],
    ) -> Result<usize, Error> {
        let key = |g: u32, net: u32| RouteKey::slash24(g, net.to_be_bytes());
        let data = self.routes24_data()?;
        let mut left_out = 0;
        for chunk in writes.chunks(ROUTE_BATCH) {
            let keys: Vec<RouteKey> = chunk.iter().map(|(g, n, _)| key(*g, *n)).collect();
            let values: Vec<u32> = chunk.iter().map(|w| w.2).collect();
            let mut at = 0;
            while at < keys.len() {
                let (done, result) = update_batch(data, &keys[at..], &values[at..]);
                at += done;
                if result.is_ok() {
                    break;
                }
                // A full map (replacing a key never needs room: this /24 had no shortcut)
                // or a failed allocation: the /24 is left to the trie, which answers the
                // same. A shortcut that could not be removed either might be stale.
                if let Err(e) = result {
                    // A kernel that failed before counting says all were done: which one
                    // failed is not known, so nothing is left out on a guess.
                    let Some(failed) = keys.get(at..=at) else {
                        return Err(route_write_error(MAP_ROUTES24, e));
                    };
                    let (_, removed) = delete_batch(data, failed);
                    if let Err(MapError::SyscallError(d)) = &removed
                        && d.io_error.raw_os_error() != Some(libc::ENOENT)
                    {
                        return Err(route_write_error(MAP_ROUTES24, e));
                    }
                }
                left_out += 1;
                at += 1;
            }
        }
        for chunk in removals.chunks(ROUTE_BATCH) {
            let keys: Vec<RouteKey> = chunk.iter().map(|(g, n)| key(*g, *n)).collect();
            let mut at = 0;
            while at < keys.len() {
                let (done, result) = delete_batch(data, &keys[at..]);
                at += done;
                match result {
                    Ok(()) => break,
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        at += 1;
                    }
                    Err(e) => return Err(map_err(MAP_ROUTES24)(e)),
                }
            }
        }
        Ok(left_out)
    }

    /// Every /24 shortcut: (gateway id, /24 first address, next hop). The agent reads this
    /// once at start and puts right what a killed agent left half written.
    pub fn routes24(&self) -> Result<Vec<(u32, u32, u32)>, Error> {
        let entries: Vec<(RouteKey, u32)> =
            lookup_batch(self.routes24_data()?).map_err(map_err(MAP_ROUTES24))?;
        Ok(entries
            .into_iter()
            .map(|(k, nh)| {
                (
                    u32::from_be_bytes(k.gateway_be),
                    u32::from_be_bytes(k.addr),
                    nh,
                )
            })
            .collect())
    }

    /// Removes a route; a route that is not there is not an error.
    pub fn remove_route(&mut self, gateway_id: u32, prefix: impl Into<IpNet>) -> Result<(), Error> {
        match prefix.into() {
            IpNet::V4(p) => ignore_missing(
                self.routes_mut()?.remove(&route_key(gateway_id, p)),
                MAP_ROUTES,
            ),
            IpNet::V6(p) => ignore_missing(
                self.routes6_mut()?.remove(&route_key6(gateway_id, p)),
                MAP_ROUTES6,
            ),
        }
    }

    pub fn remove_routes<P: Into<IpNet> + Copy>(
        &mut self,
        routes: &[(u32, P)],
    ) -> Result<(), Error> {
        for (gateway_id, prefix) in routes {
            self.remove_route(*gateway_id, *prefix)?;
        }
        Ok(())
    }

    /// What the data plane answers for `addr` in gateway `gateway_id`: the next-hop id of the
    /// longest matching prefix in the address's family.
    pub fn lookup(&self, gateway_id: u32, addr: impl Into<IpAddr>) -> Result<Option<u32>, Error> {
        let (result, name) = match addr.into() {
            IpAddr::V4(a) => {
                // As the programs do: the /24 shortcut first, then the trie.
                let front: HashMap<&MapData, RouteKey, u32> =
                    HashMap::try_from(self.map(MAP_ROUTES24)?).map_err(map_err(MAP_ROUTES24))?;
                match front.get(&RouteKey::slash24(gateway_id, a.octets()), 0) {
                    Ok(nh) => return Ok(Some(nh)),
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(MAP_ROUTES24)(e)),
                }
                let map: LpmTrie<&MapData, RouteKey, u32> =
                    LpmTrie::try_from(self.map(MAP_ROUTES)?).map_err(map_err(MAP_ROUTES))?;
                let key = Key::new(RouteKey::lpm_len(32), RouteKey::new(gateway_id, a.octets()));
                (map.get(&key, 0), MAP_ROUTES)
            }
            IpAddr::V6(a) => {
                let map: LpmTrie<&MapData, RouteKey6, u32> =
                    LpmTrie::try_from(self.map(MAP_ROUTES6)?).map_err(map_err(MAP_ROUTES6))?;
                let key = Key::new(
                    RouteKey::lpm_len(128),
                    RouteKey6::new(gateway_id, a.octets()),
                );
                (map.get(&key, 0), MAP_ROUTES6)
            }
        };
        match result {
            Ok(nh) => Ok(Some(nh)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Every route in both maps: (gateway id, prefix, next-hop id). The agent reads this once
    /// when it re-adopts pinned maps, then diffs against it.
    pub fn routes(&self) -> Result<Vec<(u32, IpNet, u32)>, Error> {
        let bad = |len: u32| Error::OutOfRange {
            what: "route prefix length",
            id: len,
            max: 160,
        };
        let mut out = Vec::new();
        let map: LpmTrie<&MapData, RouteKey, u32> =
            LpmTrie::try_from(self.map(MAP_ROUTES)?).map_err(map_err(MAP_ROUTES))?;
        for entry in map.iter() {
            let (key, nh) = entry.map_err(map_err(MAP_ROUTES))?;
            let data = key.data();
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(u8::MAX);
            let prefix =
                Ipv4Net::new(Ipv4Addr::from(data.addr), len).map_err(|_| bad(key.prefix_len()))?;
            out.push((u32::from_be_bytes(data.gateway_be), prefix.into(), nh));
        }
        let map: LpmTrie<&MapData, RouteKey6, u32> =
            LpmTrie::try_from(self.map(MAP_ROUTES6)?).map_err(map_err(MAP_ROUTES6))?;
        for entry in map.iter() {
            let (key, nh) = entry.map_err(map_err(MAP_ROUTES6))?;
            let data = key.data();
            let len = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(u8::MAX);
            let prefix =
                Ipv6Net::new(Ipv6Addr::from(data.addr), len).map_err(|_| bad(key.prefix_len()))?;
            out.push((u32::from_be_bytes(data.gateway_be), prefix.into(), nh));
        }
        Ok(out)
    }

    /// Next-hop slot `id` as the data plane has it.
    pub fn next_hop(&self, id: u32) -> Result<NextHop, Error> {
        let map: Array<&MapData, NextHop> =
            Array::try_from(self.map(MAP_NEXT_HOPS)?).map_err(map_err(MAP_NEXT_HOPS))?;
        map.get(&id, 0).map_err(map_err(MAP_NEXT_HOPS))
    }

    /// Non-empty next-hop slots: (id, entry).
    pub fn next_hops(&self) -> Result<Vec<(u32, NextHop)>, Error> {
        let map: Array<&MapData, NextHop> =
            Array::try_from(self.map(MAP_NEXT_HOPS)?).map_err(map_err(MAP_NEXT_HOPS))?;
        let mut out = Vec::new();
        for (id, entry) in map.iter().enumerate() {
            let nh = entry.map_err(map_err(MAP_NEXT_HOPS))?;
            if nh.kind != next_hop_kind::NONE {
                out.push((id as u32, nh));
            }
        }
        Ok(out)
    }

    /// The VIF table entry `id` as the data plane has it.
    pub fn vif(&self, id: u32) -> Result<Vif, Error> {
        let map: Array<&MapData, Vif> =
            Array::try_from(self.map(MAP_VIF_TABLE)?).map_err(map_err(MAP_VIF_TABLE))?;
        map.get(&id, 0).map_err(map_err(MAP_VIF_TABLE))
    }

    /// Every (port, VLAN) → VIF id key.
    pub fn vif_keys(&self) -> Result<Vec<(VifKey, u32)>, Error> {
        let map: HashMap<&MapData, VifKey, u32> =
            HashMap::try_from(self.map(MAP_VIFS)?).map_err(map_err(MAP_VIFS))?;
        map.iter().map(|e| e.map_err(map_err(MAP_VIFS))).collect()
    }

    /// Removes a (port, VLAN) key, whatever VIF it pointed to (stale state).
    pub fn remove_vif_key(&mut self, key: VifKey) -> Result<(), Error> {
        ignore_missing(self.hash::<VifKey, u32>(MAP_VIFS)?.remove(&key), MAP_VIFS)
    }

    /// Empties VIF table slot `id` (after its keys are gone).
    pub fn clear_vif(&mut self, id: u32) -> Result<(), Error> {
        check_id("VIF", id, forwarder_common::MAX_VIFS)?;
        self.array(MAP_VIF_TABLE)?
            .set(id, Vif::default(), 0)
            .map_err(map_err(MAP_VIF_TABLE))
    }

    /// Every (VNI, remote VTEP) → attachment id key.
    pub fn vtep_keys(&self) -> Result<Vec<(VtepKey, u32)>, Error> {
        let map: HashMap<&MapData, VtepKey, u32> =
            HashMap::try_from(self.map(MAP_VTEPS)?).map_err(map_err(MAP_VTEPS))?;
        map.iter().map(|e| e.map_err(map_err(MAP_VTEPS))).collect()
    }

    /// Removes a (VNI, remote VTEP) key, whatever attachment it pointed to.
    pub fn remove_vtep_key(&mut self, key: VtepKey) -> Result<(), Error> {
        ignore_missing(
            self.hash::<VtepKey, u32>(MAP_VTEPS)?.remove(&key),
            MAP_VTEPS,
        )
    }

    /// Empties attachment slot `id` (after its key is gone).
    pub fn clear_attachment(&mut self, id: u32) -> Result<(), Error> {
        check_id("attachment", id, forwarder_common::MAX_ATTACHMENTS)?;
        self.array(MAP_ATTACHMENTS)?
            .set(id, Attachment::default(), 0)
            .map_err(map_err(MAP_ATTACHMENTS))?;
        self.set_underlay(id, UnderlayHop::default())
    }

    /// Removes a VIF's control port from the control-port map.
    pub fn remove_control_port(&mut self, ifindex: u32) -> Result<(), Error> {
        ignore_missing(
            self.hash::<u32, u32>(MAP_CONTROL_PORTS)?.remove(&ifindex),
            MAP_CONTROL_PORTS,
        )
    }

    pub fn vif_counters(&self, id: u32) -> Result<TrafficCounters, Error> {
        self.traffic(MAP_VIF_STATS, id)
    }

    pub fn attachment_counters(&self, id: u32) -> Result<TrafficCounters, Error> {
        self.traffic(MAP_ATTACHMENT_STATS, id)
    }

    fn traffic(&self, name: &'static str, id: u32) -> Result<TrafficCounters, Error> {
        let map: PerCpuArray<&MapData, TrafficCounters> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let per_cpu = map.get(&id, 0).map_err(map_err(name))?;
        Ok(per_cpu
            .iter()
            .fold(TrafficCounters::default(), |s, c| TrafficCounters {
                rx_packets: s.rx_packets + c.rx_packets,
                rx_bytes: s.rx_bytes + c.rx_bytes,
                tx_packets: s.tx_packets + c.tx_packets,
                tx_bytes: s.tx_bytes + c.tx_bytes,
            }))
    }

    /// Drops by reason (index = [`forwarder_common::drop_reason`]), summed over CPUs.
    pub fn drops(&self) -> Result<[u64; drop_reason::COUNT as usize], Error> {
        let mut out = [0; drop_reason::COUNT as usize];
        self.sum_into(MAP_DROPS, &mut out)?;
        Ok(out)
    }

    /// Frames passed to the host or a control plane (index = [`forwarder_common::pass_reason`]).
    pub fn passes(&self) -> Result<[u64; pass_reason::COUNT as usize], Error> {
        let mut out = [0; pass_reason::COUNT as usize];
        self.sum_into(MAP_PASSES, &mut out)?;
        Ok(out)
    }

    /// The non-zero drop and pass counters by name, e.g. `drops: [no_route=3] passes:
    /// [host=1]`, for logs and test output.
    pub fn counter_summary(&self) -> Result<String, Error> {
        let named = |names: &[&str], values: &[u64]| {
            names
                .iter()
                .zip(values)
                .filter(|(_, v)| **v != 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Ok(format!(
            "drops: [{}] passes: [{}]",
            named(&drop_reason::NAMES, &self.drops()?),
            named(&pass_reason::NAMES, &self.passes()?)
        ))
    }

    fn sum_into(&self, name: &'static str, out: &mut [u64]) -> Result<(), Error> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        for (index, slot) in out.iter_mut().enumerate() {
            *slot = map
                .get(&(index as u32), 0)
                .map_err(map_err(name))?
                .iter()
                .sum();
        }
        Ok(())
    }
}

/// Checks that the map pinned at `path` (if any) has the shape this build's programs use:
/// `true` for a counters-only map of another shape, to be unpinned so that the loader makes
/// a new one; an error for any other map of another shape.
fn check_pinned_shape(name: &str, path: &Path) -> Result<bool, Error> {
    if !path.exists() {
        return Ok(false);
    }
    let Some(&(name, key, value, entries)) = MAP_SHAPES.iter().find(|s| s.0 == name) else {
        return Ok(false);
    };
    let info = aya::maps::MapInfo::from_pin(path).map_err(|source| Error::Map {
        name,
        source: Box::new(source),
    })?;
    let found = (
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
    );
    if found.0 == key && found.1 == value && (entries == 0 || found.2 == entries) {
        return Ok(false);
    }
    let describe =
        |(k, v, n): (usize, usize, u32)| format!("{k}-byte keys, {v}-byte values, {n} entries");
    if REPLACEABLE_MAPS.contains(&name) {
        tracing::warn!(
            map = name,
            found = %describe(found),
            wanted = %describe((key, value, entries)),
            "a pinned map of an older shape is replaced by an empty one: counts start from \
             zero, and what the agent writes at start is written again"
        );
        return Ok(true);
    }
    Err(Error::MapShape {
        path: path.to_owned(),
        found: describe(found),
        wanted: describe((key, value, entries)),
    })
}

/// Replaces the program behind the pinned link at `path`. `false` if the link is defunct
/// (its interface went away): the caller attaches afresh. The program holds the re-adopted
/// link; its pin stays.
fn readopt(program: &mut Xdp, path: &Path) -> Result<Option<XdpLinkId>, Error> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| Error::Link {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let fd_link: FdLink = pinned.into();
    let link = XdpLink::try_from(fd_link).map_err(|source| Error::Link {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    match program.attach_to_link(link) {
        Ok(id) => Ok(Some(id)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "pinned XDP link is stale; attaching afresh");
            fs::remove_file(path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
            Ok(None)
        }
    }
}

fn is_bpffs(path: &Path) -> Result<bool, Error> {
    crate::netns::is_bpffs(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Pins need a bpf filesystem. Under /sys/fs/bpf one is mounted if the host has none yet (as
/// systemd would); any other pin directory must already be on one.
fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    let root = Path::new("/sys/fs/bpf");
    let mount_point = if dir.starts_with(root) {
        root
    } else {
        dir.ancestors().find(|p| p.exists()).unwrap_or(dir)
    };
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    if mount_point != root {
        return Err(Error::NotBpffs(dir.to_owned()));
    }
    tracing::info!("mounting a bpf filesystem on /sys/fs/bpf");
    // SAFETY: constant NUL-terminated strings; mount(2) has no memory preconditions.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            path: root.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The XDP program `name` of the object.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program {
            name,
            source: Box::new(source),
        })
}

/// Routes written by one `BPF_MAP_UPDATE_BATCH` call: 1M routes in about a thousand calls
/// instead of a million, with a buffer of 16 KiB of keys.
pub const ROUTE_BATCH: usize = 1024;

/// A failed route write; a full map (the kernel says ENOSPC, or E2BIG on older kernels) is
/// [`Error::RouteMapFull`], which the caller handles by eviction or by leaving it pending.
fn route_write_error(name: &'static str, e: MapError) -> Error {
    match e {
        MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) =>
        {
            Error::RouteMapFull
        }
        e => map_err(name)(e),
    }
}

/// `BPF_MAP_UPDATE_BATCH` (the kernel's generic batch: each element as by
/// `BPF_MAP_UPDATE_ELEM`, in order, stopping at the first error); aya has no call for it.
/// Returns how many elements were written, and the error that stopped it.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> (usize, Result<(), MapError>) {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let count = keys.len().min(values.len());
    if count == 0 {
        return (0, Ok(()));
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: map_fd(map),
        elem_flags: 0, // BPF_ANY
        flags: 0,
    };
    match batch_call(BPF_MAP_UPDATE_BATCH, &mut attr, "bpf_map_update_batch") {
        Ok(()) => (count, Ok(())),
        Err(e) => ((attr.count as usize).min(count), Err(e)),
    }
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs batch command `cmd` on `attr`; the kernel's error, if any.
fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr, call: &'static str) -> Result<(), MapError> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` of the size passed; each caller makes its
    // pointers refer to buffers of `count` elements of the map's key and value sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    Err(MapError::SyscallError(aya::sys::SyscallError {
        call,
        io_error: std::io::Error::last_os_error(),
    }))
}

fn map_fd(map: &MapData) -> u32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    map.fd().as_fd().as_raw_fd() as u32
}

/// `BPF_MAP_DELETE_BATCH` of a hash map: removes `keys` in order, stopping at the first
/// error (ENOENT for a key that is not there). Returns how many were removed, and the error.
fn delete_batch<K: aya::Pod>(map: &MapData, keys: &[K]) -> (usize, Result<(), MapError>) {
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    if keys.is_empty() {
        return (0, Ok(()));
    }
    let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: 0,
        count,
        map_fd: map_fd(map),
        elem_flags: 0,
        flags: 0,
    };
    match batch_call(BPF_MAP_DELETE_BATCH, &mut attr, "bpf_map_delete_batch") {
        Ok(()) => (keys.len(), Ok(())),
        Err(e) => ((attr.count as usize).min(keys.len()), Err(e)),
    }
}

/// Every entry of a hash map by `BPF_MAP_LOOKUP_BATCH`, 4096 to a system call (aya reads
/// a map two system calls per entry).
fn lookup_batch<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Vec<(K, V)>, MapError> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 4096;
    // SAFETY: Pod types are plain data, valid for any bytes, zero included.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    // SAFETY: as above.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; CHUNK];
    let mut out = Vec::new();
    // The hash map's position token (a bucket index, 4 bytes); 8 to spare.
    let mut position: u64 = 0;
    let mut next: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &position as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map_fd(map),
            elem_flags: 0,
            flags: 0,
        };
        let result = batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr, "bpf_map_lookup_batch");
        let got = (attr.count as usize).min(CHUNK);
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        match result {
            Ok(()) => {}
            // The end of the map.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        position = next;
        first = false;
    }
}

fn route_key6(gateway_id: u32, prefix: Ipv6Net) -> Key<RouteKey6> {
    let prefix = prefix.trunc();
    Key::new(
        RouteKey::lpm_len(prefix.prefix_len()),
        RouteKey6::new(gateway_id, prefix.addr().octets()),
    )
}

fn route_key(gateway_id: u32, prefix: Ipv4Net) -> Key<RouteKey> {
    let prefix = prefix.trunc();
    Key::new(
        RouteKey::lpm_len(prefix.prefix_len()),
        RouteKey::new(gateway_id, prefix.addr().octets()),
    )
}

fn check_id(what: &'static str, id: u32, max: u32) -> Result<(), Error> {
    if id >= max {
        return Err(Error::OutOfRange {
            what,
            id,
            max: max - 1,
        });
    }
    Ok(())
}

/// Removing what is not there is not an error (aya reports it as `KeyNotFound` or as the
/// syscall's ENOENT, depending on the map type).
fn ignore_missing(result: Result<(), MapError>, name: &'static str) -> Result<(), Error> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// `if_nametoindex` in the calling thread's network namespace.
pub fn if_index(ifname: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(ifname).map_err(|_| Error::NoInterface(ifname.to_owned()))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::NoInterface(ifname.to_owned()));
    }
    Ok(index)
}

/// Loads the embedded object into the kernel without attaching anything (used by the
/// foundation smoke test for the `vlan_count` diagnostic program).
pub fn load() -> Result<Ebpf, Error> {
    Ebpf::load(EBPF_OBJECT).map_err(|source| Error::Load {
        pin_dir: None,
        source: Box::new(source),
    })
}

/// Packets and bytes counted by `vlan_count` for one VLAN id (`None`: untagged), summed over
/// all CPUs.
pub fn vlan_counter(ebpf: &Ebpf, vlan: Option<u16>) -> Result<PacketCounter, Error> {
    let map = ebpf
        .map(VLAN_COUNTERS)
        .ok_or(Error::MissingMap(VLAN_COUNTERS))?;
    let counters =
        PerCpuArray::<_, PacketCounter>::try_from(map).map_err(map_err(VLAN_COUNTERS))?;
    let slot = vlan.map_or(VLAN_UNTAGGED_SLOT, u32::from);
    let per_cpu = counters.get(&slot, 0).map_err(map_err(VLAN_COUNTERS))?;
    Ok(per_cpu
        .iter()
        .fold(PacketCounter::default(), |sum, c| PacketCounter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
}

/// Host settings a port needs before XDP can work on it, in the calling thread's network
/// namespace (see docs/decisions.md):
/// - connection ports: `rxvlan off txvlan off` with `ethtool` (a one-shot setting of a few
///   configured ports), so XDP sees 802.1Q tags inline;
/// - every port: GRO on (a veth only accepts XDP redirects when its peer runs XDP or GRO);
/// - the underlay: IPv4 forwarding on (`bpf_fib_lookup` refuses interfaces without it).
///
/// Offload toggles a device does not support are not fatal: the frame path still works on
/// NICs that deliver tags inline.
pub fn prepare_port(ifname: &str, role: PortRole) -> Result<(), Error> {
    if role != PortRole::Control
        && let Err(e) =
            crate::host::run("ethtool", &["-K", ifname, "rxvlan", "off", "txvlan", "off"])
    {
        tracing::warn!(port = ifname, error = %e, "could not turn VLAN offload off");
    }
    if let Err(e) = netlink::set_offload(ifname, netlink::Offload::Gro, true) {
        tracing::warn!(port = ifname, error = %e, "could not turn GRO on");
    }
    if role == PortRole::Underlay {
        netlink::sysctl(&format!("net/ipv4/conf/{ifname}/forwarding"), "1")?;
    }
    Ok(())
}

/// Keeps the kernel's neighbour entry for the underlay next hop toward `remote_vtep`
/// resolved (a `managed` neighbour, Linux >= 5.16), so `bpf_fib_lookup` finds a MAC without
/// waiting for traffic the host itself would send.
pub fn track_vtep(remote_vtep: Ipv4Addr) -> Result<(), Error> {
    let mut nl = netlink::Netlink::open()?;
    let hop = nl.route_get(remote_vtep, None)?;
    nl.managed_neighbour(hop.oif, hop.gateway.unwrap_or(remote_vtep).into())?;
    Ok(())
}
