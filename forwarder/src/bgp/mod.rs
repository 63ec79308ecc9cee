//! The BGP speaker: one RFC 4271 session per `[[vif.peer]]`, opened inside the VIF's control
//! plane namespace, importing the client's IPv4 unicast routes through the import filter
//! (`policy`) and advertising what the agent exports. The agent talks to it through
//! [`Speaker`] and hears back through [`Event`]s; the CLI reads [`NeighborStatus`] snapshots.
//!
//! `wire` is the glue over the codec crate, `socket` makes namespaced (MD5) sockets,
//! `session` is the per-session task and its state machine.

#[doc(hidden)]
pub mod fuzz;
mod policy;
mod session;
pub(crate) mod socket;
mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::mpsc;

pub use policy::{Reject, Verdict};
pub use wire::{Family, PeerRestart};

/// Everything one session needs. Equal configs mean an unchanged session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// VIF name.
    pub vif: String,
    /// Which `[[vif.peer]]` of the VIF.
    pub peer_index: usize,
    /// The VIF's namespace, e.g. `/run/netns/fwv-vif-100`; `None` = the agent's own.
    pub netns: Option<PathBuf>,
    /// Cloud interconnect address (also the next hop we advertise). Its family is the
    /// session's: IPv4 unicast over IPv4, IPv6 unicast (MP-BGP) over IPv6.
    pub local_addr: IpAddr,
    /// Client interconnect address.
    pub remote_addr: IpAddr,
    pub local_asn: u32,
    pub remote_asn: u32,
    pub router_id: Ipv4Addr,
    /// TCP MD5 key.
    pub password: Option<String>,
    /// More received prefixes (accepted or rejected) than this: Cease / Maximum Number of
    /// Prefixes Reached.
    pub max_prefixes: Option<u32>,
    pub accept_default: bool,
    /// Received prefixes longer than this are rejected.
    pub max_prefix_len: u8,
    /// When not empty, received prefixes must lie within one of these.
    pub allowed_prefixes: Vec<IpNet>,
    /// Hold time we offer (0 = no keepalives; 1 and 2 are invalid).
    pub hold_time: u16,
    /// Accept a peer's offer of hold time 0 (else: OPEN error, unacceptable hold time).
    pub allow_hold_time_zero: bool,
    /// Graceful restart (RFC 4724): the restart time we advertise, seconds; `None`: off.
    pub graceful_restart: Option<u16>,
    /// GTSM (RFC 5082): send with TTL 255, accept only TTL 255.
    pub ttl_security: bool,
    /// Base delay between outgoing connection attempts (backs off up to 60 s).
    pub connect_retry: Duration,
    /// How long a session stays Idle after a max-prefix teardown.
    pub idle_after_max_prefix: Duration,
    /// TCP port of both sides (179).
    pub port: u16,
    /// BFD (RFC 5880/5881) alongside the session: its going down takes the session down.
    pub bfd: Option<BfdConfig>,
    /// Extra copies of our ASN on the AS_PATH of what we advertise.
    pub as_path_prepend: u8,
}

/// A session's BFD settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdConfig {
    /// Desired transmit and required receive interval once Up.
    pub interval: Duration,
    pub detect_mult: u8,
    /// Our discriminator: unique among the agent's sessions, not 0.
    pub discriminator: u32,
}

impl SessionConfig {
    /// A config with the usual timers (hold 90 s, retry 5 s, max-prefix idle 30 s, port 179).
    pub fn new(
        vif: impl Into<String>,
        peer_index: usize,
        local_addr: IpAddr,
        remote_addr: IpAddr,
        local_asn: u32,
        remote_asn: u32,
        router_id: Ipv4Addr,
    ) -> Self {
        Self {
            vif: vif.into(),
            peer_index,
            netns: None,
            local_addr,
            remote_addr,
            local_asn,
            remote_asn,
            router_id,
            password: None,
            max_prefixes: None,
            accept_default: false,
            max_prefix_len: 32,
            allowed_prefixes: Vec::new(),
            hold_time: 90,
            allow_hold_time_zero: false,
            graceful_restart: Some(120),
            ttl_security: false,
            connect_retry: Duration::from_secs(5),
            idle_after_max_prefix: Duration::from_secs(30),
            port: 179,
            bfd: None,
            as_path_prepend: 0,
        }
    }
}

/// What the speaker tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
///
/// `session` identifies the session instance that sent it ([`Speaker::is_current`]): events
/// of a session that was removed or restarted may still be queued and must be ignored.
pub enum Event {
    Established {
        vif: String,
        peer_index: usize,
        session: u64,
        /// The peer's Graceful Restart capability, when both sides offered one.
        peer_restart: Option<PeerRestart>,
    },
    /// An Established session ended; its routes are gone with it (no `Routes` withdrawal
    /// follows), unless `retain` says to keep them (stale) that long: the connection was
    /// lost (not closed by a NOTIFICATION) and the peer said it keeps forwarding across a
    /// restart (RFC 4724 §4.2).
    Down {
        vif: String,
        peer_index: usize,
        session: u64,
        reason: String,
        retain: Option<Duration>,
    },
    /// The peer has sent its whole table since the session came up: End-of-RIB, or for a
    /// peer without graceful restart, its first KEEPALIVE after its UPDATEs began.
    EndOfRib {
        vif: String,
        peer_index: usize,
        session: u64,
    },
    /// Changes of the accepted routes, one event per UPDATE (or per re-evaluation).
    Routes {
        vif: String,
        peer_index: usize,
        session: u64,
        /// With the attributes of their path.
        announced: Vec<(IpNet, crate::rib::PathInfo)>,
        withdrawn: Vec<IpNet>,
    },
}

/// RFC 4271 session states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One session as `forwarder bgp neighbors` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighborStatus {
    pub vif: String,
    /// Index of the `[[vif.peer]]` (0-based).
    #[serde(rename = "peer")]
    pub peer_index: usize,
    pub local_addr: IpAddr,
    pub remote_addr: IpAddr,
    pub local_asn: u32,
    pub remote_asn: u32,
    pub state: SessionState,
    /// Seconds since Established.
    pub uptime_seconds: Option<u64>,
    /// The peer's BGP identifier and the negotiated hold time, once known.
    pub remote_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub prefixes_received: usize,
    pub prefixes_accepted: usize,
    pub prefixes_advertised: usize,
    /// How often the session reached Established.
    pub established_count: u64,
    /// The last protocol error: NOTIFICATION sent or received, hold timer, session lost.
    pub last_error: Option<String>,
    /// The last failure to get a TCP connection going (refused, timed out — e.g. MD5).
    pub last_connect_error: Option<String>,
    /// Graceful restart negotiated on the established connection.
    pub graceful_restart: bool,
    /// ROUTE-REFRESH requests answered with a new copy of the export, and those that came
    /// while the previous copy was still queued (coalesced).
    pub refreshes: u64,
    pub refreshes_coalesced: u64,
    /// Routes kept from before a restart (ours or the peer's) and not announced again yet
    /// (filled in by the agent).
    pub stale_routes: usize,
    /// BFD, when the VIF has `bfd = true`.
    pub bfd: Option<crate::bfd::Status>,
}

/// One prefix the client announced, with the import verdict. JSON: `prefix`, `peer`
/// (0-based index), `verdict` (`"accepted"` or `"rejected: <reason>"`), `accepted` (bool) and
/// `reason` (null when accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRoute {
    pub prefix: IpNet,
    pub peer_index: usize,
    pub verdict: Verdict,
}

impl Serialize for ReceivedRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ReceivedRoute", 5)?;
        st.serialize_field("prefix", &self.prefix)?;
        st.serialize_field("peer", &self.peer_index)?;
        st.serialize_field("verdict", &self.verdict.to_string())?;
        st.serialize_field("accepted", &self.verdict.is_accepted())?;
        let reason = match &self.verdict {
            Verdict::Accepted => None,
            Verdict::Rejected(r) => Some(r.to_string()),
        };
        st.serialize_field("reason", &reason)?;
        st.end()
    }
}

/// Errors of the socket layer (they end a connection attempt, never the agent).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace {}", .0.display())]
    Netns(PathBuf, #[source] io::Error),
    #[error("namespace thread")]
    Thread(#[source] io::Error),
    #[error("{0}")]
    Socket(&'static str, #[source] io::Error),
    #[error("bind {0}")]
    Bind(SocketAddr, #[source] io::Error),
    #[error("connect to {0}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("TCP MD5 key of {0} bytes is longer than 80")]
    Md5KeyTooLong(usize),
}

/// One prefix of a session's Adj-RIB-In.
#[derive(Clone, Debug)]
struct Held {
    verdict: Verdict,
    path: crate::rib::PathInfo,
}

/// What a session task publishes; read by [`Speaker::status`] and friends.
#[derive(Debug)]
struct Shared {
    status: NeighborStatus,
    established_at: Option<Instant>,
    /// Adj-RIB-In: every prefix the peer announced, with its verdict and its path's
    /// attributes (one map: a full table is a million entries).
    received: BTreeMap<IpNet, Held>,
    /// Adj-RIB-Out.
    advertised: BTreeSet<IpNet>,
    /// The session's BFD task, to be stopped at once (no AdminDown) when the agent hands
    /// BFD to the data plane.
    bfd_task: Option<tokio::task::AbortHandle>,
}

impl Shared {
    fn new(cfg: &SessionConfig) -> Self {
        Shared {
            status: NeighborStatus {
                vif: cfg.vif.clone(),
                peer_index: cfg.peer_index,
                local_addr: cfg.local_addr,
                remote_addr: cfg.remote_addr,
                local_asn: cfg.local_asn,
                remote_asn: cfg.remote_asn,
                state: SessionState::Idle,
                uptime_seconds: None,
                remote_id: None,
                hold_time: None,
                prefixes_received: 0,
                prefixes_accepted: 0,
                prefixes_advertised: 0,
                established_count: 0,
                last_error: None,
                last_connect_error: None,
                graceful_restart: false,
                refreshes: 0,
                refreshes_coalesced: 0,
                stale_routes: 0,
                bfd: None,
            },
            established_at: None,
            received: BTreeMap::new(),
            advertised: BTreeSet::new(),
            bfd_task: None,
        }
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    // A panicking session task must not take the CLI down with it.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Command {
    Export(BTreeSet<IpNet>),
    /// Announce these, withdraw those: a change of the export, not the whole of it.
    ExportDelta(Vec<IpNet>, Vec<IpNet>),
    VpcCidrs(Vec<IpNet>),
    /// Stop the session; `restarting`: the agent comes back (no NOTIFICATION when graceful
    /// restart was negotiated).
    Shutdown {
        restarting: bool,
    },
}

#[derive(Debug)]
struct Handle {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    shared: SharedRef,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_err() {
            tracing::warn!("BGP session task is gone");
        }
    }
}

/// Owns the sessions. Every method is cheap and never blocks; must be used inside a tokio
/// runtime (sessions are tasks).
#[derive(Debug)]
pub struct Speaker {
    events: mpsc::Sender<Event>,
    sessions: BTreeMap<(String, usize), Handle>,
    /// Instance number of the next session started.
    next_id: u64,
    /// Sessions started now tell their peers (R and F bits) that we restarted with the
    /// forwarding state kept.
    restarted: bool,
    /// BFD sessions the data plane kept Up across the agent's restart, by (VIF, peer): the
    /// session started for one goes on with it.
    bfd_resume: BTreeMap<(String, usize), forwarder_common::BfdAnswer>,
}

impl Speaker {
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        Self {
            events,
            sessions: BTreeMap::new(),
            next_id: 0,
            restarted: false,
            bfd_resume: BTreeMap::new(),
        }
    }

    /// BFD sessions to go on with (see [`crate::bfd::Session::resume`]).
    pub fn set_bfd_resume(
        &mut self,
        resume: BTreeMap<(String, usize), forwarder_common::BfdAnswer>,
    ) {
        self.bfd_resume = resume;
    }

    /// While true, sessions started say in their first OPEN that we restarted and kept
    /// forwarding (the agent sets it while it starts over pinned maps).
    pub fn set_restarted(&mut self, restarted: bool) {
        self.restarted = restarted;
    }

    /// Starts a session (replacing one with the same VIF and peer index).
    pub fn add_session(&mut self, cfg: SessionConfig, vpc_cidrs: Vec<IpNet>) {
        let key = (cfg.vif.clone(), cfg.peer_index);
        self.remove_session(&key.0, key.1);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(vif = %cfg.vif, peer = cfg.peer_index, "BGP session needs a tokio runtime");
            return;
        };
        let shared = Arc::new(Mutex::new(Shared::new(&cfg)));
        let (tx, rx) = mpsc::unbounded_channel();
        self.next_id += 1;
        let id = self.next_id;
        let resume = self.bfd_resume.remove(&key);
        let task = session::Session::new(
            cfg,
            id,
            self.restarted,
            vpc_cidrs,
            self.events.clone(),
            rx,
            shared.clone(),
        )
        .resume_bfd(resume);
        let task = runtime.spawn(task.run());
        self.sessions.insert(
            key,
            Handle {
                id,
                commands: tx,
                shared,
                task,
            },
        );
    }

    /// Whether `session` is the running instance of (vif, peer_index): events of an earlier
    /// instance are stale.
    pub fn is_current(&self, vif: &str, peer_index: usize, session: u64) -> bool {
        self.sessions
            .get(&(vif.to_string(), peer_index))
            .is_some_and(|h| h.id == session)
    }

    /// Stops a session: Cease / Administrative Shutdown to the peer, then close. No further
    /// events come from it.
    pub fn remove_session(&mut self, vif: &str, peer_index: usize) {
        if let Some(handle) = self.sessions.remove(&(vif.to_string(), peer_index)) {
            handle.send(Command::Shutdown { restarting: false });
        }
    }

    /// The agent is stopping to be started again (SIGTERM, an upgrade): sessions with
    /// graceful restart close their connections without a NOTIFICATION, so that their peers
    /// keep our routes for the restart time; the others send Cease / Administrative
    /// Shutdown.
    /// Stops every session's BFD at once, without AdminDown (the data plane answers for it
    /// from now on), and returns what each said last: (VIF, peer index, status).
    pub fn stop_bfd_for_restart(&mut self) -> Vec<(String, usize, Ipv4Addr, crate::bfd::Status)> {
        let mut out = Vec::new();
        for ((vif, peer), h) in &self.sessions {
            let mut shared = lock(&h.shared);
            if let Some(task) = shared.bfd_task.take() {
                task.abort();
            }
            // BFD runs on IPv4 sessions only.
            if let Some(status) = shared.status.bfd.clone()
                && let IpAddr::V4(remote) = shared.status.remote_addr
            {
                out.push((vif.clone(), *peer, remote, status));
            }
        }
        out
    }

    /// Returns once every session has closed or `within` is over (BFD: see
    /// [`Self::stop_bfd_for_restart`]).
    pub async fn stop_for_restart(&mut self, within: Duration) {
        let handles: Vec<Handle> = std::mem::take(&mut self.sessions).into_values().collect();
        for handle in &handles {
            handle.send(Command::Shutdown { restarting: true });
        }
        let deadline = tokio::time::Instant::now() + within;
        for handle in handles {
            if tokio::time::timeout_at(deadline, handle.task)
                .await
                .is_err()
            {
                tracing::warn!("BGP sessions still closing when the agent stopped");
                return;
            }
        }
    }

    /// The full set the session should advertise; the speaker sends the difference.
    pub fn set_export(&mut self, vif: &str, peer_index: usize, prefixes: BTreeSet<IpNet>) {
        if let Some(handle) = self.sessions.get(&(vif.to_string(), peer_index)) {
            handle.send(Command::Export(prefixes));
        }
    }

    /// A change of what the session advertises: work proportional to the change.
    pub fn update_export(
        &mut self,
        vif: &str,
        peer_index: usize,
        announce: Vec<IpNet>,
        withdraw: Vec<IpNet>,
    ) {
        if let Some(handle) = self.sessions.get(&(vif.to_string(), peer_index)) {
            handle.send(Command::ExportDelta(announce, withdraw));
        }
    }

    /// New VPC CIDRs for the overlap rule; held routes are judged again.
    pub fn set_vpc_cidrs(&mut self, vif: &str, peer_index: usize, cidrs: Vec<IpNet>) {
        if let Some(handle) = self.sessions.get(&(vif.to_string(), peer_index)) {
            handle.send(Command::VpcCidrs(cidrs));
        }
    }

    pub fn status(&self) -> Vec<NeighborStatus> {
        self.sessions
            .values()
            .map(|h| {
                let shared = lock(&h.shared);
                let mut status = shared.status.clone();
                status.uptime_seconds = shared.established_at.map(|t| t.elapsed().as_secs());
                status
            })
            .collect()
    }

    /// The routes the VIF's clients announced, with verdicts, ordered by peer then prefix.
    pub fn received(&self, vif: &str) -> Vec<ReceivedRoute> {
        self.vif_sessions(vif)
            .flat_map(|(peer_index, h)| {
                let shared = lock(&h.shared);
                shared
                    .received
                    .iter()
                    .map(|(prefix, held)| ReceivedRoute {
                        prefix: *prefix,
                        peer_index,
                        verdict: held.verdict.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What each of the VIF's sessions currently advertises: (peer index, prefix).
    pub fn advertised(&self, vif: &str) -> Vec<(usize, IpNet)> {
        self.vif_sessions(vif)
            .flat_map(|(peer_index, h)| {
                let shared = lock(&h.shared);
                shared
                    .advertised
                    .iter()
                    .map(|p| (peer_index, *p))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn vif_sessions<'a>(&'a self, vif: &'a str) -> impl Iterator<Item = (usize, &'a Handle)> {
        self.sessions
            .iter()
            .filter(move |((v, _), _)| v == vif)
            .map(|((_, i), h)| (*i, h))
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for handle in self.sessions.values() {
            // A task that is already gone needs no shutdown.
            handle
                .commands
                .send(Command::Shutdown { restarting: false })
                .ok();
        }
    }
}

#[cfg(test)]
mod tests;
