//! A VIF's control plane (DESIGN §4): a network namespace of its own holding the cloud
//! interconnect address(es) on `vif0`, one end of a veth pair whose host end (`fwc<ID>`) runs
//! `xdp_control`. The customer's ARP, BGP and ICMP for the cloud address arrive there
//! untagged; what the namespace sends is tagged by XDP. Works without the 802.1Q module and
//! lets two VIFs on different connections use the same /30. The client routers' MACs come
//! from the namespace's neighbour table (a `managed` entry per client address keeps them
//! resolved), read once when the control plane is built and then followed by events.
//!
//! Namespaces outlive the agent (like the pinned maps): a restarted agent finds them, keeps
//! their addresses and neighbours, and only fixes what differs. Everything is done over
//! netlink and procfs, no `ip` processes.

use std::{net::IpAddr, os::fd::AsRawFd as _};

use netlink_sys::Socket;

use crate::{
    netlink::{self, Neighbour, Netlink, Offload},
    netns::{self, Found, Namespace},
    observe,
};

/// The interface inside the namespace.
pub const INNER_IF: &str = "vif0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no MAC address")]
    NoMac(&'static str),
}

/// One interconnect pair of the VIF: an IPv4 /30 or an IPv6 /126 or /127.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cloud: IpAddr,
    pub client: IpAddr,
    pub prefix_len: u8,
}

/// What [`ensure`] built or found.
#[derive(Debug)]
pub struct Built {
    /// The namespace, held open: it survives an `ip netns del` while the agent runs, and its
    /// inode says whether it is still the same one.
    pub namespace: Namespace,
    pub found: Found,
    /// The veth pair was (re)made: the host end needs XDP again, connections through the old
    /// `vif0` are gone.
    pub veth_recreated: bool,
    pub host_ifindex: u32,
    /// `vif0` inside: neighbour events of another ifindex are of an older pair.
    pub inner_ifindex: u32,
    /// The MAC the customer sees for the cloud addresses.
    pub mac: [u8; 6],
    /// The client neighbours as they are now.
    pub neighbours: Vec<Neighbour>,
    /// A neighbour-event socket inside the namespace, when asked for.
    pub monitor: Option<Socket>,
}

/// How [`ensure`] goes about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Open a neighbour-event socket inside (a new monitor).
    pub monitor: bool,
    /// Forget the client routers' neighbour entries first (they are other routers now).
    pub reset_neighbours: bool,
}

/// Creates what is missing and corrects what differs; leaves a correct control plane
/// untouched (its BGP sockets keep running). `held` is the namespace the agent already
/// holds for this VIF, if any (a name removed by hand is pointed at it again). `host` is a
/// netlink socket of the agent's own namespace, where the host end lives.
pub fn ensure(
    netns_name: &str,
    host_if: &str,
    pairs: &[Pair],
    held: Option<&Namespace>,
    options: Options,
    host: &mut Netlink,
) -> Result<Built, Error> {
    let (namespace, found) = netns::ensure(netns_name, held)?;
    let host_end = host.link(host_if)?;
    let host_ns = Namespace::current()?;
    let inside = namespace.run(|| -> Result<_, Error> {
        let mut nl = Netlink::open()?;
        let inner = nl.link(INNER_IF)?;
        let recreate = !(host_end
            .as_ref()
            .is_some_and(|l| l.kind.as_deref() == Some("veth"))
            && inner.is_some());
        if recreate {
            // Half a pair is useless: start over with both ends.
            if let Some(l) = &inner {
                nl.delete_link(l.index)?;
            }
            if let Some(l) = &host_end {
                host.delete_link(l.index)?;
            }
            nl.add_veth(INNER_IF, host_if, host_ns.file.as_raw_fd())?;
        }
        // IPv6 only when the VIF has an IPv6 pair: no IPv6 chatter on a customer link that has
        // none. The kernel answers ARP, Neighbor Discovery and ICMP for us; it takes no
        // router advertisements and makes no addresses of its own but the link-local one.
        let ipv6 = pairs.iter().any(|p| p.cloud.is_ipv6());
        let off = if ipv6 { "0" } else { "1" };
        for conf in ["all", "default"] {
            if ipv6 {
                netlink::sysctl(&format!("net/ipv6/conf/{conf}/accept_ra"), "0")?;
                netlink::sysctl(&format!("net/ipv6/conf/{conf}/autoconf"), "0")?;
                netlink::sysctl(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
            netlink::sysctl(&format!("net/ipv6/conf/{conf}/disable_ipv6"), off)?;
        }
        let lo = nl.link("lo")?;
        if let Some(lo) = lo.filter(|l| !l.up) {
            nl.set_up(lo.index)?;
        }
        let inner = nl.link(INNER_IF)?.ok_or_else(|| Error::Io {
            what: format!("{INNER_IF} in {netns_name}"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        // `all` does not reach an interface that existed before it changed.
        netlink::sysctl(&format!("net/ipv6/conf/{INNER_IF}/disable_ipv6"), off)?;
        nl.set_up(inner.index)?;
        // XDP redirects into vif0 need GRO there; TCP from vif0 through XDP needs its
        // checksums done in software.
        netlink::set_offload(INNER_IF, Offload::Gro, true)?;
        netlink::set_offload(INNER_IF, Offload::TxChecksum, false)?;
        let present = nl.addresses(inner.index)?;
        for (addr, len) in &present {
            // The kernel's own link-local address stays.
            if let IpAddr::V6(a) = addr
                && a.segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            if !pairs
                .iter()
                .any(|p| p.cloud == *addr && p.prefix_len == *len)
            {
                nl.delete_address(inner.index, *addr, *len)?;
            }
        }
        for p in pairs {
            if !present.contains(&(p.cloud, p.prefix_len)) {
                nl.add_address(inner.index, p.cloud, p.prefix_len)?;
            }
        }
        // Subscribed before the neighbours are read: no change falls between the two.
        let monitor = if options.monitor {
            Some(observe::neighbour_socket().map_err(|source| Error::Io {
                what: format!("neighbour events of {netns_name}"),
                source,
            })?)
        } else {
            None
        };
        if options.reset_neighbours {
            for p in pairs {
                nl.delete_neighbour(inner.index, p.client)?;
            }
        }
        for p in pairs {
            nl.managed_neighbour(inner.index, p.client)?;
        }
        let neighbours = nl.neighbours(inner.index)?;
        let mac = inner.mac.ok_or(Error::NoMac(INNER_IF))?;
        Ok((recreate, inner.index, mac, neighbours, monitor))
    })??;
    let (veth_recreated, inner_ifindex, mac, neighbours, monitor) = inside;
    let host_end = host.link(host_if)?.ok_or_else(|| Error::Io {
        what: format!("{host_if} after creating it"),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    if !host_end.up {
        host.set_up(host_end.index)?;
    }
    if veth_recreated && let Err(e) = netlink::set_offload(host_if, Offload::Gro, true) {
        tracing::warn!(port = host_if, error = %e, "could not turn GRO on");
    }
    Ok(Built {
        namespace,
        found,
        veth_recreated,
        host_ifindex: host_end.index,
        inner_ifindex,
        mac,
        neighbours,
        monitor,
    })
}

/// Removes a control plane: the host end of its veth (taking the other end with it) and the
/// namespace's name. The namespace itself goes with the last thing holding it.
pub fn destroy(netns_name: &str, host_if: &str, host: &mut Netlink) -> Result<(), Error> {
    if let Some(link) = host.link(host_if)? {
        host.delete_link(link.index)?;
    }
    netns::delete(netns_name)?;
    Ok(())
}

/// Makes the kernel in the namespace resolve `clients` now (their entries may have failed
/// while the connection was down).
pub fn resolve(namespace: &Namespace, clients: &[IpAddr]) -> Result<(), Error> {
    namespace.run(|| -> Result<_, Error> {
        let mut nl = Netlink::open()?;
        if let Some(inner) = nl.link(INNER_IF)? {
            for client in clients {
                nl.resolve_neighbour(inner.index, *client)?;
            }
        }
        Ok(())
    })?
}

/// The current neighbours of `vif0` in the namespace (after lost events).
pub fn neighbours(namespace: &Namespace) -> Result<Vec<Neighbour>, Error> {
    namespace.run(|| -> Result<_, Error> {
        let mut nl = Netlink::open()?;
        let Some(inner) = nl.link(INNER_IF)? else {
            return Ok(Vec::new());
        };
        Ok(nl.neighbours(inner.index)?)
    })?
}
