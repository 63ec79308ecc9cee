//! The control socket: one JSON request per connection, one JSON response back, both a single
//! line. The CLI is its only client; `--json` prints the response's `data` unchanged, so the
//! shapes below are the stable, documented output (README "Control CLI").

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

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
        prefix: Ipv4Net,
        via: String,
    },
    RouteDel {
        gateway: String,
        prefix: Ipv4Net,
    },
    Lookup {
        gateway: String,
        address: Ipv4Addr,
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
    pub routes: usize,
    pub installed: usize,
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
    pub prefix: Ipv4Net,
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub gateway: String,
    pub address: Ipv4Addr,
    /// The data plane's answer: next-hop id of the longest match, null if none.
    pub next_hop_id: Option<u32>,
    /// What that next hop is, as the agent programmed it.
    pub next_hop: Option<String>,
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

/// Sends one request and waits for its answer (blocking; the CLI has no runtime).
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
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
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io)?;
    Ok(serde_json::from_str(&answer)?)
}

// ---- server ----------------------------------------------------------------------------

/// Binds the socket (mode 0600, parent directory created, a stale socket file replaced).
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request from `stream`, answers it with `handle`.
pub async fn serve_one<F>(stream: tokio::net::UnixStream, handle: F) -> std::io::Result<()>
where
    F: AsyncFnOnce(Request) -> Response,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is small; a client that sends more is cut off rather than buffered.
    let mut reader = BufReader::new(read.take(64 * 1024));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request).await,
        Err(e) => Response::err(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_string(&response)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"encoding the answer: {e}\"}}"));
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

use tokio::io::AsyncReadExt as _;
