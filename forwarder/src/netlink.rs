//! The host layer: links, addresses, managed neighbours, veth pairs into namespaces and route
//! lookups over rtnetlink (messages from `netlink-packet-route`), sysctls written to procfs,
//! and the two offload switches a control veth needs through the ethtool ioctl. Everything
//! acts in the network namespace of the socket, which is the one of the thread that opened it.
//!
//! Requests are synchronous: the agent's owner thread makes them, never a runtime worker.
//! Events (the monitor side) are in `observe`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A kernel that does not answer within this is treated as an error, not waited for.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct Error {
    pub op: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn new(op: impl Into<String>, source: io::Error) -> Self {
        Self {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A link as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up and operationally up (carrier, or a veth whose peer is up).
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    /// `veth`, `bridge`, ... (None for devices without a kind, such as physical NICs).
    pub kind: Option<String>,
    /// The link's MTU (0 if the kernel did not say).
    pub mtu: u32,
}

impl Link {
    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut oper = State::Unknown;
        let mut mac = None;
        let mut kind = None;
        let mut mtu = 0;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::OperState(s) => oper = *s,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    mac = Some(m);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        let flags = msg.header.flags;
        let up = flags.contains(LinkFlags::Up)
            && (oper == State::Up
                || (oper == State::Unknown && flags.contains(LinkFlags::LowerUp)));
        Some(Self {
            index: msg.header.index,
            name: name?,
            up,
            mac,
            kind,
            mtu,
        })
    }
}

/// A neighbour entry: the MAC when the entry holds a usable one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub managed: bool,
}

impl Neighbour {
    /// IPv4 (ARP) and IPv6 (Neighbor Discovery) entries; `deleted` for RTM_DELNEIGH (the MAC
    /// is gone whatever it says).
    pub fn from_message(msg: &NeighbourMessage, deleted: bool) -> Option<Self> {
        if !matches!(
            msg.header.family,
            AddressFamily::Inet | AddressFamily::Inet6
        ) {
            return None;
        }
        let mut addr = None;
        let mut lladdr = None;
        let mut managed = false;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    addr = Some(IpAddr::V4(*a));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    addr = Some(IpAddr::V6(*a));
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    lladdr = Some(m);
                }
                NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
                _ => {}
            }
        }
        let usable = matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        Some(Self {
            ifindex: msg.header.ifindex,
            addr: addr?,
            mac: if usable && !deleted { lladdr } else { None },
            managed,
        })
    }
}

/// Where the kernel sends packets for a destination (`ip route get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHop {
    pub oif: u32,
    /// The gateway, or None for a directly connected destination.
    pub gateway: Option<Ipv4Addr>,
}

/// The routing table's entry that matches a destination (`ip route get fibmatch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibEntry {
    /// More than one next hop (ECMP): the kernel picks one per flow.
    pub multipath: bool,
    /// The route's own MTU (`ip route ... mtu N`), if it has one.
    pub mtu: Option<u32>,
    /// The route points to a nexthop object (`ip route ... nhid N`), whose members the
    /// answer does not list.
    pub nexthop_object: bool,
}

/// A request socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Self, Error> {
        let op = |e| Error::new("opening a netlink socket", e);
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(op)?;
        socket.bind_auto().map_err(op)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(op)?;
        set_timeout(socket.as_raw_fd(), TIMEOUT).map_err(op)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// Sends one request and collects the answers: the messages of a dump until DONE, or the
    /// kernel's ACK (or error) for anything else.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| Error::new(op(), e))?;
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            self.socket
                .recv(&mut self.buf, 0)
                .map_err(|e| Error::new(op(), e))?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| Error::new(op(), io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    // The late answer of a request that timed out.
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(Error::new(op(), e.to_io())),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            || "listing links".into(),
        )?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Link::from_message(l),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, or None.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("looking up link {name}")
        }) {
            Ok(answers) => Ok(answers.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Link::from_message(l),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A veth pair: `name` here, `peer` in the namespace `peer_netns` refers to.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> Result<(), Error> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.exchange(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("creating veth pair {name}/{peer}"),
        )
        .map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.exchange(RouteNetlinkMessage::NewLink(msg), 0, || {
            format!("setting link {index} up")
        })
        .map(drop)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.exchange(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("deleting link {index}")
        }) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }

    /// IPv4 and IPv6 addresses of link `index`: (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, Error> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Unspec;
        let answers = self.exchange(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, || {
            format!("listing addresses of link {index}")
        })?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|attr| match attr {
                        // IPv4 says Local (Address is the peer's on point-to-point links);
                        // IPv6 says Address only.
                        AddressAttribute::Local(ip @ IpAddr::V4(_)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        AddressAttribute::Address(ip @ IpAddr::V6(_)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        msg
    }

    /// Adds an address; an IPv6 one without duplicate address detection (`nodad`: the pair
    /// is the operator's, and a session should not wait a second for DAD).
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<(), Error> {
        let mut msg = Self::address_message(index, addr, prefix_len);
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        self.exchange(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("adding {addr}/{prefix_len} to link {index}"),
        )
        .map(drop)
    }

    pub fn delete_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let msg = Self::address_message(index, addr, prefix_len);
        self.exchange(RouteNetlinkMessage::DelAddress(msg), 0, || {
            format!("removing {addr}/{prefix_len} from link {index}")
        })
        .map(drop)
    }

    /// IPv4 and IPv6 neighbour entries of link `index`.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Unspec;
        let answers = self.exchange(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP, || {
            format!("listing neighbours of link {index}")
        })?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Neighbour::from_message(n, false),
                _ => None,
            })
            .filter(|n| n.ifindex == index)
            .collect())
    }

    /// A `managed` neighbour entry (Linux ≥ 5.16): the kernel keeps it resolved without
    /// traffic, so the MAC is known before the first packet needs it. An entry that is
    /// already managed is left alone (replacing it would drop its MAC until ARP answers).
    pub fn managed_neighbour(&mut self, index: u32, addr: IpAddr) -> Result<(), Error> {
        if self
            .neighbours(index)?
            .iter()
            .any(|n| n.addr == addr && n.managed)
        {
            return Ok(());
        }
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::None;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(addr)));
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("adding a managed neighbour {addr} on link {index}"),
        )
        .map(drop)
    }

    /// Asks the kernel to resolve `addr` on link `index` now (`NTF_USE`): an entry that failed
    /// while its link was down probes again at once instead of at its next timer.
    pub fn resolve_neighbour(&mut self, index: u32, addr: IpAddr) -> Result<(), Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(addr)));
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("resolving the neighbour {addr} on link {index}"),
        )
        .map(drop)
    }

    /// Removes the neighbour entry of `addr` on link `index`, if there is one.
    pub fn delete_neighbour(&mut self, index: u32, addr: IpAddr) -> Result<(), Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(addr)));
        match self.exchange(RouteNetlinkMessage::DelNeighbour(msg), 0, || {
            format!("removing the neighbour {addr} on link {index}")
        }) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The routing table's entry that matches `dst` from `src` (`ip route get fibmatch
    /// DST from SRC`: rules on the source apply).
    pub fn route_fib_match(&mut self, dst: Ipv4Addr, src: Ipv4Addr) -> Result<FibEntry, Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.header.source_prefix_length = 32;
        msg.header.flags = RouteFlags::FibMatch;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        msg.attributes
            .push(RouteAttribute::Source(RouteAddress::Inet(src)));
        let what = || format!("looking up the routing table's entry for {dst}");
        let answers = self.exchange(RouteNetlinkMessage::GetRoute(msg), 0, what)?;
        let route = answers
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| Error::new(what(), io::Error::other("no answer")))?;
        let mut entry = FibEntry {
            multipath: false,
            mtu: None,
            nexthop_object: false,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::MultiPath(hops) => entry.multipath = hops.len() > 1,
                RouteAttribute::NhId(_) => entry.nexthop_object = true,
                RouteAttribute::Metrics(metrics) => {
                    entry.mtu = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(entry)
    }

    /// The kernel's route toward `dst` (`ip route get`), from `src` if given.
    pub fn route_get(&mut self, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> Result<RouteHop, Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        if let Some(src) = src {
            msg.header.source_prefix_length = 32;
            msg.attributes
                .push(RouteAttribute::Source(RouteAddress::Inet(src)));
        }
        let answers = self.exchange(RouteNetlinkMessage::GetRoute(msg), 0, || {
            format!("looking up the route to {dst}")
        })?;
        let route = answers
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    format!("looking up the route to {dst}"),
                    io::Error::other("no answer"),
                )
            })?;
        let mut hop = RouteHop {
            oif: 0,
            gateway: None,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => hop.oif = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop.gateway = Some(*g),
                _ => {}
            }
        }
        Ok(hop)
    }
}

fn set_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: `fd` is an open socket; `tv` is a valid timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace, e.g.
/// `net/ipv4/conf/ul0/forwarding`.
pub fn sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value)
        .map_err(|e| Error::new(format!("writing {value} to {}", path.display()), e))
}

/// Offload switches of the legacy ethtool ioctl (`<linux/ethtool.h>`).
#[derive(Clone, Copy, Debug)]
pub enum Offload {
    /// `ethtool -K DEV gro on|off`: a veth only takes XDP redirects when its receiving side
    /// runs XDP or GRO.
    Gro,
    /// `ethtool -K DEV tx on|off`: TCP sent from a namespace through an XDP redirect needs
    /// its checksum done in software.
    TxChecksum,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Turns an offload of `ifname` (in the calling thread's namespace) on or off.
pub fn set_offload(ifname: &str, offload: Offload, on: bool) -> Result<(), Error> {
    let op = || {
        format!(
            "ethtool {ifname} {offload:?} {}",
            if on { "on" } else { "off" }
        )
    };
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(Error::new(op(), io::ErrorKind::InvalidInput.into()));
    }
    let mut value = EthtoolValue {
        cmd: match offload {
            Offload::Gro => ETHTOOL_SGRO,
            Offload::TxChecksum => ETHTOOL_STXCSUM,
        },
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut value).cast(),
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a plain datagram socket, closed below; the ioctl reads `req` and `value`, which
    // outlive the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::new(op(), io::Error::last_os_error()));
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &raw mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(Error::new(op(), err));
        }
    }
    Ok(())
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}
