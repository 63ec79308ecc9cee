//! The control socket: one JSON request per connection, one JSON response back, both a single
//! line. The CLI is its only client; `--json` prints the response's `data` unchanged, so the
//! shapes below are the stable, documented output (README "Control CLI").

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    VifList,
    VifShow {
        name: String,
    },
    RouteList {
        gateway: Option<String>,
    },
    RouteAdd {
        gateway: String,
        prefix: IpNet,
        via: String,
    },
    RouteDel {
        gateway: String,
        prefix: IpNet,
    },
    Lookup {
        gateway: String,
        address: IpAddr,
    },
    Stats {
        vif: Option<String>,
        attachment: Option<String>,
    },
    Reload,
    BgpNeighbors,
    /// Routes received from (default) or advertised to the VIF's BGP peers.
    BgpRoutes {
        vif: String,
        advertised: bool,
    },
    /// The frames of a VIF: the answer line is followed by a pcap stream until `count`
    /// frames or the client closes the connection.
    Capture {
        vif: String,
        count: Option<u64>,
    },
}

/// What the agent answers: one JSON line, or one JSON line and then a capture stream.
pub enum Reply {
    Response(Response),
    Capture(crate::capture::Session),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Self::Response(r)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(data) => Self {
                ok: true,
                error: None,
                data,
            },
            Err(e) => Self::err(format!("encoding the answer: {e}")),
        }
    }

    pub fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            data: serde_json::Value::Null,
        }
    }
}

// ---- answers ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub uptime_seconds: u64,
    pub config: PathBuf,
    pub ports: Vec<PortStatus>,
    pub vifs: Vec<VifSummary>,
    pub gateways: Vec<GatewayStatus>,
    /// Occupancy of the maps that bound what the gateway can hold.
    pub maps: MapUsage,
    /// The VIF whose frames are being captured, if any.
    #[serde(default)]
    pub capture: Option<String>,
    /// Each VPC attachment's way into the underlay.
    #[serde(default)]
    pub attachments: Vec<AttachmentStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachmentStatus {
    pub name: String,
    pub remote_vtep: std::net::Ipv4Addr,
    /// `resolved`: encapsulation uses the next hop below without a FIB lookup; `fib`: XDP
    /// asks the kernel's FIB per packet (`fib_reason` says why).
    pub underlay: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fib_reason: Option<String>,
    /// The underlay next hop's address (the route's gateway, or the VTEP itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<std::net::Ipv4Addr>,
    /// The resolved next hop as the data plane holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MapUsage {
    /// IPv4 routes (`ROUTES`).
    pub routes: Usage,
    /// IPv6 routes (`ROUTES6`).
    #[serde(default)]
    pub routes6: Usage,
    /// /24 shortcuts in front of the IPv4 routes (`ROUTES24`).
    #[serde(default)]
    pub routes24: Usage,
    pub next_hops: Usage,
    pub vifs: Usage,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub used: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    /// connection | underlay | control
    pub role: String,
    pub ifindex: u32,
    /// native | skb
    pub xdp_mode: String,
    pub up: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VifSummary {
    pub name: String,
    pub connection: String,
    pub vlan: u16,
    pub border_gateway: String,
    pub routing: String,
    /// configuring | available | unavailable | deleting
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    /// Candidate routes in the table (every source).
    pub routes: usize,
    /// Prefixes with a selected route.
    pub selected: usize,
    /// Routes in the data plane's map.
    pub installed: usize,
    /// Selected routes not in the map (full map, failed write).
    pub not_installed: usize,
    /// Some routes wait for room in the route map (shared by all gateways).
    pub route_map_full: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VifDetail {
    #[serde(flatten)]
    pub summary: VifSummary,
    pub id: u32,
    pub control_netns: String,
    pub control_interface: String,
    /// The MAC the customer sees for the cloud addresses.
    pub mac: String,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub cloud_address: String,
    pub client_address: String,
    /// Learned by ARP in the VIF's control plane; null until resolved.
    pub client_mac: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteEntry {
    pub gateway: String,
    pub prefix: IpNet,
    /// propagated | static | bgp
    pub source: String,
    /// `attachment NAME` or `vif NAME`
    pub next_hop: String,
    /// In the data plane's table right now.
    pub installed: bool,
    /// Why not installed (a better route, the VIF is down, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Added with `forwarder route add` (persisted in the state directory).
    pub cli: bool,
    /// An installed BGP path that shares the prefix's traffic with equal paths of other VIFs
    /// (multipath): the VIFs of the group, this one included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multipath: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub gateway: String,
    pub address: IpAddr,
    /// The data plane's answer: next-hop id of the longest match, null if none.
    pub next_hop_id: Option<u32>,
    /// What that next hop is, as the agent programmed it.
    pub next_hop: Option<String>,
    /// A group's members as the data plane holds them, in its order: a flow takes member
    /// `forwarder_common::group_member(flow_hash, members.len())`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<LookupMember>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookupMember {
    pub next_hop_id: u32,
    pub next_hop: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamedCounters {
    pub name: String,
    #[serde(flatten)]
    pub counters: Counters,
    /// A VIF's own drops (none for attachments).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub vif_drops: Option<VifDropCounters>,
}

/// Drops one VIF caused, summed over CPUs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VifDropCounters {
    /// Control frames over the VIF's rate limit.
    pub control_limited: u64,
    /// Packets failing `source_check`.
    pub source_check_dropped: u64,
    /// Packets too big for the next link (answered with ICMP or dropped).
    pub too_big: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stats {
    pub vifs: Vec<NamedCounters>,
    pub attachments: Vec<NamedCounters>,
    /// Drops by reason, summed over CPUs (every reason listed, zeros included).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Frames handed to the host or a control plane.
    pub passes: std::collections::BTreeMap<String, u64>,
}

// ---- client ----------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the forwarder agent at {path}: {source} (is it running? `systemctl status forwarder`)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends a request whose answer line may be followed by a stream (a capture): the answer
/// and the stream to read the rest from.
pub fn call_stream(
    socket: &Path,
    request: &Request,
) -> Result<(Response, std::io::BufReader<std::os::unix::net::UnixStream>), ClientError> {
    use std::io::{BufRead as _, Write as _};
    let stream =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    // An agent that refuses the request may answer and close before reading all of it:
    // its answer is what matters.
    if let Err(e) = (&stream).write_all(line.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(io(e));
    }
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    Ok((serde_json::from_str(&answer)?, reader))
}

/// Sends one request and waits for its answer (blocking; the CLI has no runtime).
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    call_stream(socket, request).map(|(response, _)| response)
}

// ---- server ----------------------------------------------------------------------------

/// A request is one short line; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client that has not sent its whole request by then is answered and closed.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{}: another agent answers on this socket", .0.display())]
    Live(PathBuf),
    #[error("{}: exists and is not a socket; remove it or choose another control_socket", .0.display())]
    NotSocket(PathBuf),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who may talk to the agent: root, the agent's own user, and members of `group` if set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub group: Option<u32>,
}

/// Whether something answers on the socket at `path`: a non-blocking connect, so a listener
/// with a full backlog counts as alive instead of hanging the caller.
fn answers(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; the path is copied into it within bounds; the
    // socket is closed before returning.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        if bytes.len() >= addr.sun_path.len() {
            return false;
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return false;
        }
        let rc = libc::connect(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error().raw_os_error();
        libc::close(fd);
        rc == 0 || err == Some(libc::EAGAIN)
    }
}

/// Refuses a control socket path another agent answers on, or that is not a socket. Called
/// before anything is programmed, so an agent that cannot serve changes nothing.
pub fn check_free(path: &Path) -> Result<(), BindError> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(BindError::NotSocket(path.to_owned())),
        Ok(_) if answers(path) => Err(BindError::Live(path.to_owned())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BindError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Binds the socket: mode 0600, or 0660 owned by the control group; the parent directory is
/// created. An existing path is replaced only when it is a socket nobody answers on.
pub fn bind(path: &Path, access: Access) -> Result<tokio::net::UnixListener, BindError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    check_free(path)?;
    match std::fs::remove_file(path) {
        // Nobody answers on it: the agent that bound it is gone.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io_err)?;
    let mode = match access.group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(listener)
}

/// The supplementary groups of the peer (`SO_PEERGROUPS`, Linux >= 4.13).
fn peer_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd as _;
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: `groups` has `len` writable bytes; the kernel writes at most that and says how
    // many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// Why this peer may not use the socket, if it may not.
fn refused(stream: &tokio::net::UnixStream, access: Access) -> Option<String> {
    let Ok(cred) = stream.peer_cred() else {
        return Some("permission denied: the peer's credentials are unknown".into());
    };
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == own {
        return None;
    }
    if let Some(gid) = access.group
        && (cred.gid() == gid || peer_groups(stream).contains(&gid))
    {
        return None;
    }
    Some(format!(
        "permission denied: uid {} is not root{}",
        cred.uid(),
        if access.group.is_some() {
            " and not in the agent's control_group"
        } else {
            " (set [agent] control_group to let a group in)"
        }
    ))
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`], UTF-8.
async fn read_request(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "no complete request within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ));
            }
            Ok(Err(e)) => return Err(format!("reading the request: {e}")),
            Ok(Ok(n)) => n,
        };
        let end = chunk[..n].iter().position(|b| *b == b'\n');
        buf.extend_from_slice(&chunk[..end.unwrap_or(n)]);
        if buf.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        if end.is_some() || n == 0 {
            break;
        }
    }
    String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_owned())
}

/// Answers one connection: checks the peer, reads one request, answers it with `handle`.
/// Every refusal is an answer with the reason, then the connection is closed.
pub async fn serve_one<F>(
    stream: tokio::net::UnixStream,
    access: Access,
    handle: F,
) -> std::io::Result<()>
where
    F: AsyncFnOnce(Request) -> Reply,
{
    let refusal = refused(&stream, access);
    let (mut read, mut write) = stream.into_split();
    // The request is read (within the limits) even from a peer that is refused, so that
    // the refusal is what it reads, not a reset connection.
    let request = read_request(&mut read).await;
    let reply = match (refusal, request) {
        (Some(reason), _) | (None, Err(reason)) => Reply::Response(Response::err(reason)),
        (None, Ok(line)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request).await,
            Err(e) => Reply::Response(Response::err(format!("malformed request: {e}"))),
        },
    };
    let (response, capture) = match reply {
        Reply::Response(r) => (r, None),
        Reply::Capture(session) => (
            Response::ok(serde_json::json!({
                "vif": session.vif,
                "snaplen": forwarder_common::CAPTURE_SNAPLEN,
            })),
            Some(session),
        ),
    };
    let mut out = serde_json::to_string(&response)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"encoding the answer: {e}\"}}"));
    out.push('\n');
    if let Some(session) = capture {
        if let Err(e) = write.write_all(out.as_bytes()).await {
            tracing::debug!(error = %e, "capture client gone before the start");
        }
        // The stream gives the ring buffer back whatever happens to the client.
        crate::capture::stream(session, read, write).await;
        return Ok(());
    }
    write.write_all(out.as_bytes()).await?;
    write.shutdown().await?;
    // Closing with unread input resets the connection, and the client would see the reset
    // instead of the answer: read what is left (a little, for a little while) first.
    let mut sink = [0u8; 4096];
    let mut left = DRAIN_LIMIT;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while left > 0 {
        match tokio::time::timeout_at(deadline, read.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
    Ok(())
}

/// What is read after the answer, at most, before the connection is closed.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a connection that will not be served with `reason`, and closes it.
pub async fn refuse(mut stream: tokio::net::UnixStream, reason: &str) -> std::io::Result<()> {
    let mut out = serde_json::to_string(&Response::err(reason))
        .unwrap_or_else(|_| "{\"ok\":false}".to_owned());
    out.push('\n');
    stream.write_all(out.as_bytes()).await
}

use tokio::io::AsyncReadExt as _;
