//! What the agent observes of the host without asking: rtnetlink link events in its own
//! namespace, neighbour events in each VIF control namespace, and removals under
//! `/run/netns` (inotify). Each monitor is a task that turns kernel notifications into
//! [`NetEvent`]s for the owner loop; when the kernel drops notifications (ENOBUFS, the socket
//! could not keep up) the monitor says [`NetEvent::Resync`] and the owner reads the state
//! again. Nothing here polls.

use std::{
    io,
    os::fd::{AsRawFd as _, RawFd},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::AbortHandle};

use crate::{
    ids::VifId,
    netlink::{Link, Neighbour},
};

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
/// Generous receive buffers: a burst of link or neighbour changes should not overflow.
const RCVBUF: usize = 4 << 20;

/// Which namespace a [`NetEvent`] or a resync concerns. VIF monitors carry the generation of
/// the control plane they watch, so events of a replaced one are recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Host,
    Vif(VifId, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A link of the agent's namespace appeared or changed.
    Link(Link),
    /// A link of the agent's namespace was deleted.
    LinkGone { index: u32, name: String },
    /// A neighbour entry of the agent's namespace changed (the underlay's next hops).
    HostNeighbour(Neighbour),
    /// An IPv4 route of the agent's namespace was added, changed or removed.
    HostRoute,
    /// A neighbour entry of a VIF control namespace changed (mac None: unresolved or gone).
    Neighbour {
        vif: VifId,
        generation: u64,
        neighbour: Neighbour,
    },
    /// Notifications were lost: read the state of this scope again.
    Resync(Scope),
    /// `/run/netns/NAME` was removed.
    NetnsGone(String),
}

/// An event with the time it arrived (the event-to-map latency starts there).
pub type Stamped = (tokio::time::Instant, NetEvent);

/// A running monitor; dropping it stops it.
#[derive(Debug)]
pub struct Monitor(AbortHandle);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A netlink socket subscribed to `groups`, in the calling thread's namespace. Open it on a
/// thread that has entered the namespace to watch; it can be used from anywhere after.
pub fn subscribe(groups: &[u32]) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    for group in groups {
        socket.add_membership(*group)?;
    }
    set_rcvbuf(socket.as_raw_fd(), RCVBUF);
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Subscribes to link, neighbour and IPv4 route events of the calling thread's namespace
/// (the agent's: ports, and the underlay's next hops).
pub fn link_socket() -> io::Result<Socket> {
    subscribe(&[
        RTNLGRP_LINK,
        RTNLGRP_NEIGH,
        RTNLGRP_IPV4_ROUTE,
        RTNLGRP_IPV4_RULE,
    ])
}

/// Subscribes to neighbour events of the calling thread's namespace.
pub fn neighbour_socket() -> io::Result<Socket> {
    subscribe(&[RTNLGRP_NEIGH])
}

fn set_rcvbuf(fd: RawFd, size: usize) {
    let size = size as libc::c_int;
    // SAFETY: `fd` is an open socket; the option value is a c_int that outlives the call.
    // SO_RCVBUFFORCE (root) goes past rmem_max; the plain one is the fallback.
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Starts the task that reads `socket` and sends what it sees for `scope`. Must be called
/// inside the runtime.
pub fn spawn(socket: Socket, scope: Scope, tx: mpsc::Sender<Stamped>) -> io::Result<Monitor> {
    // SAFETY: the socket owns its descriptor and is moved into the AsyncFd, which keeps it
    // open (and the same) until it is dropped.
    let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| io::Error::other(e.to_string()))?;
    let task = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(?scope, error = %e, "netlink monitor stopped");
                    return;
                }
            };
            buf.clear();
            match guard.try_io(|inner| inner.get_ref().recv(&mut buf, 0)) {
                Err(_would_block) => continue,
                Ok(Ok(_)) => {
                    let arrived = tokio::time::Instant::now();
                    for event in decode(&buf, scope) {
                        if tx.send((arrived, event)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(
                        ?scope,
                        "netlink notifications lost; reading the state again"
                    );
                    let event = (tokio::time::Instant::now(), NetEvent::Resync(scope));
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(?scope, error = %e, "netlink monitor stopped");
                    return;
                }
            }
        }
    });
    Ok(Monitor(task.abort_handle()))
}

fn decode(buf: &[u8], scope: Scope) -> Vec<NetEvent> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..]) else {
            tracing::debug!("undecodable netlink notification");
            break;
        };
        let len = msg.header.length as usize;
        if len == 0 {
            break;
        }
        offset += (len + 3) & !3;
        let NetlinkPayload::InnerMessage(inner) = msg.payload else {
            continue;
        };
        match (scope, inner) {
            (Scope::Host, RouteNetlinkMessage::NewLink(l)) => {
                out.extend(Link::from_message(&l).map(NetEvent::Link));
            }
            (Scope::Host, RouteNetlinkMessage::DelLink(l)) => {
                out.extend(Link::from_message(&l).map(|link| NetEvent::LinkGone {
                    index: link.index,
                    name: link.name,
                }));
            }
            (Scope::Host, RouteNetlinkMessage::NewNeighbour(n)) => {
                out.extend(Neighbour::from_message(&n, false).map(NetEvent::HostNeighbour));
            }
            (Scope::Host, RouteNetlinkMessage::DelNeighbour(n)) => {
                out.extend(Neighbour::from_message(&n, true).map(NetEvent::HostNeighbour));
            }
            (
                Scope::Host,
                RouteNetlinkMessage::NewRoute(_)
                | RouteNetlinkMessage::DelRoute(_)
                | RouteNetlinkMessage::NewRule(_)
                | RouteNetlinkMessage::DelRule(_),
                // One per message batch is enough: every attachment is resolved again.
            ) if out.last() != Some(&NetEvent::HostRoute) => {
                out.push(NetEvent::HostRoute);
            }
            (Scope::Vif(vif, generation), RouteNetlinkMessage::NewNeighbour(n)) => {
                out.extend(Neighbour::from_message(&n, false).map(|neighbour| {
                    NetEvent::Neighbour {
                        vif,
                        generation,
                        neighbour,
                    }
                }));
            }
            (Scope::Vif(vif, generation), RouteNetlinkMessage::DelNeighbour(n)) => {
                out.extend(Neighbour::from_message(&n, true).map(|neighbour| {
                    NetEvent::Neighbour {
                        vif,
                        generation,
                        neighbour,
                    }
                }));
            }
            _ => {}
        }
    }
    out
}

/// Watches `/run/netns` for removed entries (someone ran `ip netns del` on a control
/// namespace). Must be called inside the runtime.
pub fn netns_dir(tx: mpsc::Sender<Stamped>) -> io::Result<Monitor> {
    use futures_util::StreamExt as _;
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()?;
    inotify
        .watches()
        .add(crate::netns::RUN_DIR, WatchMask::DELETE)?;
    let mut stream = inotify.into_event_stream(vec![0u8; 4096])?;
    let task = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let Some(name) = event.name.and_then(|n| n.to_str().map(str::to_owned)) else {
                        continue;
                    };
                    let event = (tokio::time::Instant::now(), NetEvent::NetnsGone(name));
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "watching /run/netns stopped");
                    return;
                }
            }
        }
    });
    Ok(Monitor(task.abort_handle()))
}
