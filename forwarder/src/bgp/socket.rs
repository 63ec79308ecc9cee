//! A session's TCP sockets: created inside the VIF's network namespace (a socket keeps the
//! namespace it was born in), bound to the cloud address, TTL 1 (single-hop eBGP) or, with
//! TTL security (GTSM, RFC 5082), TTL 255 and nothing accepted below 255, and, with a
//! password, TCP MD5 (RFC 2385) keyed to the client address on listening and connecting
//! sockets alike — a peer without the right key never gets a SYN-ACK.

use std::{
    fs::File,
    io, mem,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::Error;

/// Where and how a session's sockets are made.
#[derive(Clone, Debug)]
pub struct SocketSpec {
    pub netns: Option<PathBuf>,
    /// Both of one family: the session's.
    pub local: IpAddr,
    pub remote: IpAddr,
    pub port: u16,
    pub password: Option<String>,
    /// GTSM: TTL 255 out, only TTL 255 in.
    pub ttl_security: bool,
}

const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` of `<linux/tcp.h>` (libc does not define it).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

const _: () = assert!(mem::size_of::<TcpMd5Sig>() == 216);

/// Installs the MD5 key for `peer` on `socket`.
fn set_md5(socket: &Socket, peer: IpAddr, password: &str) -> Result<(), Error> {
    let key = password.as_bytes();
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(Error::Md5KeyTooLong(key.len()));
    }
    // SAFETY: `TcpMd5Sig` is plain old data; all-zero is a valid value of every field.
    let mut sig: TcpMd5Sig = unsafe { mem::zeroed() };
    match peer {
        IpAddr::V4(peer) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(peer).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            unsafe {
                std::ptr::write((&raw mut sig.addr).cast::<libc::sockaddr_in>(), sin);
            }
        }
        IpAddr::V6(peer) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: peer.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in6`.
            unsafe {
                std::ptr::write((&raw mut sig.addr).cast::<libc::sockaddr_in6>(), sin6);
            }
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: the fd is a live socket owned by `socket`; the option value points to a
    // properly sized, initialised `tcp_md5sig` that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast::<libc::c_void>(),
            mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Socket("TCP_MD5SIG", io::Error::last_os_error()));
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<(), Error> {
    let file = File::open(path).map_err(|e| Error::Netns(path.to_path_buf(), e))?;
    // SAFETY: `file` is an open namespace file descriptor for the duration of the call;
    // setns only changes this (dedicated, short-lived) thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Netns(path.to_path_buf(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `make` in the namespace `netns` (or here for `None`). A namespace switch happens on
/// a thread of its own that ends right after, never on a runtime or blocking-pool thread.
async fn in_netns<T, F>(netns: Option<PathBuf>, make: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let Some(path) = netns else {
        return make();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bgp-netns".into())
        .spawn(move || {
            let result = enter_netns(&path).and_then(|()| make());
            // The receiver only goes away when the session was dropped meanwhile.
            if tx.send(result).is_err() {
                tracing::debug!("socket made for a session that is gone");
            }
        })
        .map_err(Error::Thread)?;
    rx.await
        .map_err(|_| Error::Thread(io::Error::other("netns thread died")))?
}

fn base_socket(spec: &SocketSpec) -> Result<Socket, Error> {
    let domain = if spec.local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::Socket("socket", e))?;
    if spec.local.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|e| Error::Socket("IPV6_V6ONLY", e))?;
    }
    socket
        .set_reuse_address(true)
        .map_err(|e| Error::Socket("SO_REUSEADDR", e))?;
    set_ttl(&socket, spec.ttl_security)?;
    if let Some(password) = &spec.password {
        set_md5(&socket, spec.remote, password)?;
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| Error::Socket("O_NONBLOCK", e))?;
    Ok(socket)
}

/// Single-hop eBGP: TTL 1, so nothing of ours leaves the interconnect; or GTSM: TTL 255 and
/// IP_MINTTL 255, so nothing from further away than the interconnect gets in. IPv6: the hop
/// limit and IPV6_MINHOPCOUNT, the same way.
fn set_ttl(socket: &Socket, ttl_security: bool) -> Result<(), Error> {
    if socket.domain().is_ok_and(|d| d == Domain::IPV6) {
        let hops = if ttl_security { 255 } else { 1 };
        socket
            .set_unicast_hops_v6(hops)
            .map_err(|e| Error::Socket("IPV6_UNICAST_HOPS", e))?;
        if ttl_security {
            set_option(
                socket,
                libc::IPPROTO_IPV6,
                libc::IPV6_MINHOPCOUNT,
                "IPV6_MINHOPCOUNT",
                255,
            )?;
        }
        return Ok(());
    }
    if !ttl_security {
        return socket.set_ttl_v4(1).map_err(|e| Error::Socket("IP_TTL", e));
    }
    socket
        .set_ttl_v4(255)
        .map_err(|e| Error::Socket("IP_TTL", e))?;
    set_ip_option(socket, libc::IP_MINTTL, "IP_MINTTL", 255)
}

/// An IPPROTO_IP socket option socket2 has no setter for.
fn set_ip_option(
    socket: &Socket,
    option: libc::c_int,
    name: &'static str,
    value: libc::c_int,
) -> Result<(), Error> {
    set_option(socket, libc::IPPROTO_IP, option, name, value)
}

/// A c_int socket option of `level`.
fn set_option(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    name: &'static str,
    value: libc::c_int,
) -> Result<(), Error> {
    // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int that
    // outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const value).cast::<libc::c_void>(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Socket(name, io::Error::last_os_error()));
    }
    Ok(())
}

/// The passive side: `local:port`, MD5 keyed to the peer.
pub async fn listen(spec: &SocketSpec) -> Result<TcpListener, Error> {
    let spec2 = spec.clone();
    let socket = in_netns(spec.netns.clone(), move || {
        let socket = base_socket(&spec2)?;
        // The agent may add the cloud address after the session starts.
        match spec2.local {
            IpAddr::V4(_) => socket
                .set_freebind_v4(true)
                .map_err(|e| Error::Socket("IP_FREEBIND", e))?,
            IpAddr::V6(_) => socket
                .set_freebind_v6(true)
                .map_err(|e| Error::Socket("IPV6_FREEBIND", e))?,
        }
        let addr = SocketAddr::new(spec2.local, spec2.port);
        socket
            .bind(&addr.into())
            .map_err(|e| Error::Bind(addr, e))?;
        socket.listen(8).map_err(|e| Error::Socket("listen", e))?;
        Ok(socket)
    })
    .await?;
    TcpListener::from_std(socket.into()).map_err(|e| Error::Socket("listener", e))
}

/// The active side: from `local` (ephemeral port) to `remote:port`, within `timeout` (a
/// SYN that a wrong MD5 key makes the peer drop would otherwise retry for minutes).
pub async fn connect(spec: &SocketSpec, timeout: Duration) -> Result<TcpStream, Error> {
    let spec2 = spec.clone();
    let socket = in_netns(spec.netns.clone(), move || {
        let socket = base_socket(&spec2)?;
        let addr = SocketAddr::new(spec2.local, 0);
        socket
            .bind(&addr.into())
            .map_err(|e| Error::Bind(addr, e))?;
        Ok(socket)
    })
    .await?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let remote = SocketAddr::new(spec.remote, spec.port);
    let stream = tokio::time::timeout(timeout, socket.connect(remote))
        .await
        .map_err(|_| Error::Connect(remote, io::ErrorKind::TimedOut.into()))?
        .map_err(|e| Error::Connect(remote, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::Socket("TCP_NODELAY", e))?;
    Ok(stream)
}

/// Settings of an accepted connection (the rest is inherited from the listener).
pub fn accepted(stream: &TcpStream, ttl_security: bool) -> Result<(), Error> {
    let sock = SockRef::from(stream);
    sock.set_tcp_nodelay(true)
        .map_err(|e| Error::Socket("TCP_NODELAY", e))?;
    set_ttl(&sock, ttl_security)
}

/// BFD's two UDP sockets in the session's namespace (RFC 5881 §4–5): one receiving on
/// `local:3784` with the TTL of each datagram reported (IP_RECVTTL), one sending from
/// `local` (a source port from 49152 up, starting at `source_port`) to `remote:3784` with
/// TTL 255. Both non-blocking.
pub async fn bfd_sockets(
    netns: Option<PathBuf>,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    source_port: u16,
) -> Result<(std::net::UdpSocket, std::net::UdpSocket), Error> {
    in_netns(netns, move || {
        let udp = || {
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .map_err(|e| Error::Socket("socket", e))
        };
        let rx = udp()?;
        rx.set_reuse_address(true)
            .map_err(|e| Error::Socket("SO_REUSEADDR", e))?;
        set_ip_option(&rx, libc::IP_RECVTTL, "IP_RECVTTL", 1)?;
        let at = SocketAddr::V4(SocketAddrV4::new(local, crate::bfd::PORT));
        rx.bind(&at.into()).map_err(|e| Error::Bind(at, e))?;
        rx.set_nonblocking(true)
            .map_err(|e| Error::Socket("O_NONBLOCK", e))?;

        let tx = udp()?;
        tx.set_ttl_v4(255).map_err(|e| Error::Socket("IP_TTL", e))?;
        let mut bound = None;
        for offset in 0..64u16 {
            let port = 49152 + (source_port.wrapping_sub(49152).wrapping_add(offset) % 16384);
            let from = SocketAddr::V4(SocketAddrV4::new(local, port));
            match tx.bind(&from.into()) {
                Ok(()) => {
                    bound = Some(from);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(Error::Bind(from, e)),
            }
        }
        let Some(from) = bound else {
            let from = SocketAddr::V4(SocketAddrV4::new(local, source_port));
            return Err(Error::Bind(from, io::ErrorKind::AddrInUse.into()));
        };
        let to = crate::bfd::destination(remote);
        tx.connect(&to.into()).map_err(|e| Error::Connect(to, e))?;
        tx.set_nonblocking(true)
            .map_err(|e| Error::Socket("O_NONBLOCK", e))?;
        tracing::debug!(%from, %to, "BFD sockets ready");
        Ok((rx.into(), tx.into()))
    })
    .await
}
