//! Real BGP speakers from Debian's packages — BIRD 2, FRR (zebra + bgpd) and GoBGP — run as
//! a customer router inside a test namespace, so tests can peer them with our gateway (or with
//! each other) and watch what they learn.
//!
//! Every daemon is isolated: its config, control socket(s), pid file(s) and logs live in a
//! directory of its own under the system temp dir (`/tmp/fwt-bird-PID-N/` …), removed on
//! drop; nothing in `/etc` or `/run` is read for state or written. Dropping a
//! [`RouterDaemon`] stops its processes (SIGTERM, then SIGKILL after
//! 3 s) and waits for them, also while unwinding from a failed assertion, in which case the
//! daemon's log tail is printed to stderr first.
//!
//! Timers are short everywhere (hold 9 s, keepalive 3 s, connect retry 1 s) so sessions come
//! up within a few seconds and a dead peer is noticed quickly.
//!
//! How each daemon runs (`DIR` is the daemon's directory, `NS` the namespace):
//! - BIRD: `ip netns exec NS bird -f -c DIR/bird.conf -s DIR/bird.ctl -P DIR/bird.pid`,
//!   controlled with `birdc -s DIR/bird.ctl`. Announcements are routes of
//!   `protocol static originated` (blackhole), changed by rewriting the config and
//!   `birdc configure`. `protocol kernel` exports every BGP-learned route into the
//!   namespace's main table (`proto bird`), so the router forwards along what it learned.
//! - FRR: `ip netns exec NS /usr/lib/frr/zebra -i DIR/zebra.pid -z DIR/zserv.api
//!   --vty_socket DIR -f DIR/zebra.conf -P 0 --log file:DIR/zebra.log`, then the same for
//!   `bgpd` (`-z` pointing at zebra's socket), both in the foreground, running as the `frr`
//!   user (DIR is chowned to it: as root without the `frrvty` group FRR refuses to start).
//!   Controlled with `vtysh --vty_socket DIR --config_dir DIR`. zebra installs learned routes
//!   (`proto bgp`). Announcements are `network P` statements (with
//!   `no bgp network import-check`). FRR keeps a per-process crash-log buffer in
//!   `/var/tmp/frr/<daemon>.<pid>/` (unique per pid); drop removes it if the daemon did not.
//! - GoBGP: `ip netns exec NS gobgpd -f DIR/gobgpd.toml --api-hosts 127.0.0.1:PORT
//!   --pprof-disable`, PORT a free port on the namespace's loopback, controlled with
//!   `ip netns exec NS gobgp -u 127.0.0.1 -p PORT`. Announcements are `gobgp global rib add`
//!   (next hop 0.0.0.0: the session's local address on export). GoBGP has no FIB
//!   integration here: learned routes stay in its RIB, not in the kernel.
//!
//! One daemon per namespace: FRR's bgpd listens on `0.0.0.0:179`.
//!
//! Behaviour worth knowing when writing tests (seen with BIRD 2.0.12, FRR 8.4.4, GoBGP 3.10):
//! - After an administrative shutdown is lifted, GoBGP stays Idle for about 5 s (it closes
//!   incoming connections meanwhile), and FRR backs off exponentially after repeated session
//!   failures; BIRD waits 1–2 s (`error wait time 1, 2`). Give re-establishment ≥ 10 s.
//! - FRR advertises a peer's own routes back to it; the receiver drops them for the AS loop,
//!   so [`RouterDaemon::received_prefixes`] never shows them (for GoBGP it reads the RIB,
//!   not `adj-in`, which would).
//! - The daemons get SIGTERM (`PR_SET_PDEATHSIG`) when the *thread* that started them exits,
//!   as a safety net should the test process die without unwinding: keep a
//!   [`RouterDaemon`] on the thread that created it. FRR clears this when it switches to the
//!   frr user, so a SIGKILLed test process can leave zebra/bgpd behind.

use std::{
    collections::BTreeSet,
    fmt,
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::NetNs;

/// Hold time (seconds) configured on every session.
pub const HOLD_TIME: u16 = 9;
/// Keepalive interval (seconds) configured on every session.
pub const KEEPALIVE: u16 = 3;
/// Connect retry (seconds) configured on every session.
pub const CONNECT_RETRY: u16 = 1;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 30;
const FRR_SBIN: &str = "/usr/lib/frr";
const FRR_CRASHLOG_DIR: &str = "/var/tmp/frr";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// `writeln!` into a `String` (which cannot fail).
macro_rules! push_line {
    ($buf:expr, $($arg:tt)*) => {{
        $buf.push_str(&format!($($arg)*));
        $buf.push('\n');
    }};
}

/// Which implementation runs the customer router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Bird,
    Frr,
    Gobgp,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Bird, Kind::Frr, Kind::Gobgp];

    fn slug(self) -> &'static str {
        match self {
            Kind::Bird => "bird",
            Kind::Frr => "frr",
            Kind::Gobgp => "gobgp",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Bird => "BIRD",
            Kind::Frr => "FRR",
            Kind::Gobgp => "GoBGP",
        })
    }
}

/// One BGP session of the router: always a single-hop eBGP/iBGP IPv4 unicast session between
/// `local_addr` (an address of the router's namespace) and `neighbor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Both of one family: the session's (IPv6: IPv6 unicast only, BIRD and FRR).
    pub local_addr: IpAddr,
    pub neighbor: IpAddr,
    pub local_asn: u32,
    pub remote_asn: u32,
    /// TCP MD5 signature (RFC 2385) key. Letters, digits and `_.:@+=-` only, 1 to 80 bytes.
    pub password: Option<String>,
    /// Only accept the neighbor's connection, never connect.
    pub passive: bool,
    /// GTSM (RFC 5082): send with TTL 255, accept only TTL 255 (BIRD and FRR).
    pub ttl_security: bool,
    /// BFD for the session (BIRD: `protocol bfd` and `bfd on`; FRR: `bfdd` and
    /// `neighbor X bfd`), 300 ms × 3 (both daemons' defaults).
    pub bfd: bool,
}

impl PeerSpec {
    /// An active session without MD5.
    pub fn new(
        local_addr: impl Into<IpAddr>,
        neighbor: impl Into<IpAddr>,
        local_asn: u32,
        remote_asn: u32,
    ) -> Self {
        Self {
            local_addr: local_addr.into(),
            neighbor: neighbor.into(),
            local_asn,
            remote_asn,
            password: None,
            passive: false,
            ttl_security: false,
            bfd: false,
        }
    }

    pub fn bfd(mut self) -> Self {
        self.bfd = true;
        self
    }

    pub fn with_password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    pub fn ttl_security(mut self) -> Self {
        self.ttl_security = true;
        self
    }

    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    fn validate(&self) -> Result<()> {
        if let Some(password) = &self.password {
            ensure!(
                (1..=80).contains(&password.len())
                    && password
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:@+=-".contains(c)),
                "password for {} must be 1 to 80 characters of [A-Za-z0-9_.:@+=-] (it goes \
                 unquoted or quoted into three config languages)",
                self.neighbor
            );
        }
        ensure!(
            self.local_addr != self.neighbor,
            "peer {}: local address and neighbor are the same",
            self.neighbor
        );
        ensure!(
            self.local_addr.is_ipv6() == self.neighbor.is_ipv6(),
            "peer {}: local address {} is of another family",
            self.neighbor,
            self.local_addr
        );
        ensure!(
            !(self.neighbor.is_ipv6() && self.bfd),
            "peer {}: the harness runs BFD over IPv4 only",
            self.neighbor
        );
        Ok(())
    }
}

/// The router's graceful restart (RFC 4724) setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GracefulRestart {
    /// The daemon's default: BIRD is "aware" (helper only), FRR is a helper, GoBGP has none.
    #[default]
    Default,
    /// Both roles: the router can restart gracefully too (BIRD `graceful restart on` with
    /// its kernel protocol's routes kept, FRR `bgp graceful-restart`).
    On,
    /// None at all (BIRD `graceful restart off`, FRR `bgp graceful-restart-disable`).
    Off,
}

/// What changes after start: kept so regenerated configs (BIRD) stay consistent.
#[derive(Default)]
struct State {
    announced: BTreeSet<IpNet>,
    disabled: BTreeSet<IpAddr>,
    /// Attributes given to announced prefixes on export (BIRD: its export filter).
    paths: std::collections::BTreeMap<Ipv4Net, PathAttrs>,
}

/// Attributes a router gives a prefix it announces (BIRD and FRR).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathAttrs {
    /// Standard communities (ASN, value).
    pub communities: Vec<(u16, u16)>,
    /// NO_EXPORT (65535:65281).
    pub no_export: bool,
    /// How many times the router's own ASN is prepended.
    pub prepend: u8,
    pub med: Option<u32>,
}

struct Proc {
    name: &'static str,
    child: Child,
}

/// A running customer router daemon inside `ns`. See the module docs.
pub struct RouterDaemon<'ns> {
    kind: Kind,
    ns: &'ns NetNs,
    dir: PathBuf,
    router_id: Ipv4Addr,
    peers: Vec<PeerSpec>,
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    /// GoBGP's gRPC port on the namespace's loopback (0 for the others).
    api_port: u16,
    state: Mutex<State>,
    graceful_restart: GracefulRestart,
}

impl<'ns> RouterDaemon<'ns> {
    /// Writes the config, starts the daemon in `ns` and waits until its control interface
    /// answers (not until sessions are up: see [`Self::wait_established`]). `announce` are
    /// prefixes the router originates toward every peer (host bits are cleared).
    ///
    /// FRR needs one `local_asn` for all peers; BIRD and GoBGP take one per peer.
    pub fn start(
        kind: Kind,
        ns: &'ns NetNs,
        router_id: Ipv4Addr,
        peers: &[PeerSpec],
        announce: &[Ipv4Net],
    ) -> Result<Self> {
        Self::start_with(
            kind,
            ns,
            router_id,
            peers,
            announce,
            GracefulRestart::Default,
        )
    }

    /// [`Self::start`] with a graceful restart setting (BIRD and FRR).
    pub fn start_with(
        kind: Kind,
        ns: &'ns NetNs,
        router_id: Ipv4Addr,
        peers: &[PeerSpec],
        announce: &[Ipv4Net],
        graceful_restart: GracefulRestart,
    ) -> Result<Self> {
        ensure!(
            kind != Kind::Gobgp
                || (graceful_restart == GracefulRestart::Default
                    && peers.iter().all(|p| !p.ttl_security)),
            "the GoBGP harness has no graceful restart or TTL security setting"
        );
        ensure!(
            kind != Kind::Gobgp || peers.iter().all(|p| p.neighbor.is_ipv4()),
            "the GoBGP harness is IPv4 only"
        );
        ensure!(!peers.is_empty(), "{kind} router needs at least one peer");
        let mut neighbors = BTreeSet::new();
        for peer in peers {
            peer.validate()?;
            ensure!(
                neighbors.insert(peer.neighbor),
                "neighbor {} is listed twice",
                peer.neighbor
            );
        }
        if kind == Kind::Frr {
            ensure!(
                peers.iter().all(|p| p.local_asn == peers[0].local_asn),
                "the FRR harness runs one `router bgp ASN`: all peers need the same local_asn"
            );
        }

        let id = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fwt-{}-{}-{id}", kind.slug(), std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;

        // From here on, Drop stops whatever started and removes the directory.
        let mut daemon = Self {
            kind,
            ns,
            dir,
            router_id,
            peers: peers.to_vec(),
            procs: Vec::new(),
            api_port: 0,
            state: Mutex::new(State {
                announced: announce.iter().map(|p| IpNet::V4(p.trunc())).collect(),
                disabled: BTreeSet::new(),
                paths: std::collections::BTreeMap::new(),
            }),
            graceful_restart,
        };
        let started = match kind {
            Kind::Bird => daemon.start_bird(),
            Kind::Frr => daemon.start_frr(),
            Kind::Gobgp => daemon.start_gobgp(),
        };
        started.map_err(|e| daemon.annotate(e, "starting"))?;
        Ok(daemon)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn ns(&self) -> &'ns NetNs {
        self.ns
    }

    /// The daemon's private directory (config, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn router_id(&self) -> Ipv4Addr {
        self.router_id
    }

    pub fn peers(&self) -> &[PeerSpec] {
        &self.peers
    }

    /// The daemon's processes (`bird`; `zebra`, `bgpd`; `gobgpd`) and their pids.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs.iter().map(|p| (p.name, p.child.id())).collect()
    }

    /// Prefixes the router currently originates.
    pub fn announced(&self) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .lock()?
            .announced
            .iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(*p),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    /// Starts originating `prefixes` (host bits cleared) toward every peer.
    pub fn announce(&self, prefixes: &[Ipv4Net]) -> Result<()> {
        let all: Vec<IpNet> = prefixes.iter().map(|p| IpNet::V4(p.trunc())).collect();
        self.announce_any(&all)
    }

    /// [`Self::announce`] for IPv6 prefixes (BIRD and FRR), toward the IPv6 sessions.
    pub fn announce6(&self, prefixes: &[Ipv6Net]) -> Result<()> {
        let all: Vec<IpNet> = prefixes.iter().map(|p| IpNet::V6(p.trunc())).collect();
        self.announce_any(&all)
    }

    fn announce_any(&self, prefixes: &[IpNet]) -> Result<()> {
        let prefixes: Vec<IpNet> = prefixes.to_vec();
        self.op("announce", || match self.kind {
            Kind::Bird => self.bird_update(|s| s.announced.extend(&prefixes)),
            Kind::Frr => {
                for (v6, af) in [(false, "ipv4"), (true, "ipv6")] {
                    let lines: Vec<String> = prefixes
                        .iter()
                        .filter(|p| p.addr().is_ipv6() == v6)
                        .map(|p| format!("network {p}"))
                        .collect();
                    if !lines.is_empty() {
                        self.frr_configure_af(af, &lines)?;
                    }
                }
                self.lock()?.announced.extend(&prefixes);
                Ok(())
            }
            Kind::Gobgp => {
                for p in &prefixes {
                    ensure!(p.addr().is_ipv4(), "the GoBGP harness is IPv4 only");
                    self.gobgp(&["global", "rib", "add", &p.to_string(), "-a", "ipv4"])?;
                    self.lock()?.announced.insert(*p);
                }
                Ok(())
            }
        })
    }

    /// Gives the announced `prefix` these attributes toward every peer (replacing what it
    /// had), and has the router send it again (BIRD: reconfigure; FRR: a route-map out and
    /// a soft clear).
    pub fn set_path(&self, prefix: Ipv4Net, attrs: PathAttrs) -> Result<()> {
        let prefix = prefix.trunc();
        self.op("set_path", || match self.kind {
            Kind::Bird => self.bird_update(|s| {
                s.paths.insert(prefix, attrs.clone());
            }),
            Kind::Frr => {
                let paths = {
                    let mut s = self.lock()?;
                    s.paths.insert(prefix, attrs.clone());
                    s.paths.clone()
                };
                let asn = self.frr_asn();
                let mut cmds = vec![
                    "configure terminal".to_owned(),
                    "no route-map FWT-OUT".to_owned(),
                ];
                for (n, (p, a)) in paths.iter().enumerate() {
                    let seq = 10 * (n + 1);
                    cmds.push(format!("no ip prefix-list FWT-P{n}"));
                    cmds.push(format!("ip prefix-list FWT-P{n} seq 5 permit {p}"));
                    cmds.push(format!("route-map FWT-OUT permit {seq}"));
                    cmds.push(format!("match ip address prefix-list FWT-P{n}"));
                    let mut communities: Vec<String> = a
                        .communities
                        .iter()
                        .map(|(x, y)| format!("{x}:{y}"))
                        .collect();
                    if a.no_export {
                        communities.push("no-export".into());
                    }
                    if !communities.is_empty() {
                        cmds.push(format!("set community {}", communities.join(" ")));
                    }
                    if a.prepend > 0 {
                        let asns = vec![asn.to_string(); usize::from(a.prepend)];
                        cmds.push(format!("set as-path prepend {}", asns.join(" ")));
                    }
                    if let Some(med) = a.med {
                        cmds.push(format!("set metric {med}"));
                    }
                    cmds.push("exit".into());
                }
                cmds.push("route-map FWT-OUT permit 10000".into());
                cmds.push("exit".into());
                cmds.push(format!("router bgp {asn}"));
                cmds.push("address-family ipv4 unicast".into());
                for peer in &self.peers {
                    cmds.push(format!("neighbor {} route-map FWT-OUT out", peer.neighbor));
                }
                let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
                self.vtysh(&refs)?;
                self.vtysh(&["clear bgp ipv4 unicast * soft out"])?;
                Ok(())
            }
            Kind::Gobgp => bail!("the GoBGP harness sets no path attributes"),
        })
    }

    /// Stops originating `prefixes` (host bits cleared); unknown prefixes are ignored.
    pub fn withdraw(&self, prefixes: &[Ipv4Net]) -> Result<()> {
        let all: Vec<IpNet> = prefixes.iter().map(|p| IpNet::V4(p.trunc())).collect();
        self.withdraw_any(&all)
    }

    /// [`Self::withdraw`] for IPv6 prefixes.
    pub fn withdraw6(&self, prefixes: &[Ipv6Net]) -> Result<()> {
        let all: Vec<IpNet> = prefixes.iter().map(|p| IpNet::V6(p.trunc())).collect();
        self.withdraw_any(&all)
    }

    fn withdraw_any(&self, prefixes: &[IpNet]) -> Result<()> {
        let prefixes: Vec<IpNet> = prefixes.to_vec();
        self.op("withdraw", || match self.kind {
            Kind::Bird => self.bird_update(|s| {
                for p in &prefixes {
                    s.announced.remove(p);
                }
            }),
            Kind::Frr => {
                let announced = self.lock()?.announced.clone();
                for (v6, af) in [(false, "ipv4"), (true, "ipv6")] {
                    let lines: Vec<String> = prefixes
                        .iter()
                        .filter(|p| announced.contains(p) && p.addr().is_ipv6() == v6)
                        .map(|p| format!("no network {p}"))
                        .collect();
                    if !lines.is_empty() {
                        self.frr_configure_af(af, &lines)?;
                    }
                }
                let mut state = self.lock()?;
                for p in &prefixes {
                    state.announced.remove(p);
                }
                Ok(())
            }
            Kind::Gobgp => {
                for p in &prefixes {
                    if self.lock()?.announced.contains(p) {
                        self.gobgp(&["global", "rib", "del", &p.to_string(), "-a", "ipv4"])?;
                        self.lock()?.announced.remove(p);
                    }
                }
                Ok(())
            }
        })
    }

    /// Whether the session with `neighbor` is Established.
    pub fn session_established(&self, neighbor: impl Into<IpAddr>) -> Result<bool> {
        let neighbor: IpAddr = neighbor.into();
        Ok(self
            .session_state(neighbor)?
            .eq_ignore_ascii_case("established"))
    }

    /// The daemon's own word for the session state: BIRD `Established`/`Active`/`Connect`/
    /// `Idle`/`Down`…, FRR `Established`/`Active`/`Idle`…, GoBGP `ESTABLISHED`/`ACTIVE`/
    /// `IDLE`….
    pub fn session_state(&self, neighbor: impl Into<IpAddr>) -> Result<String> {
        let neighbor: IpAddr = neighbor.into();
        self.op("reading the session state", || self.state_raw(neighbor))
    }

    fn state_raw(&self, neighbor: IpAddr) -> Result<String> {
        self.peer(neighbor)?;
        match self.kind {
            Kind::Bird => {
                let out = self.birdc(&["show", "protocols", "all", &bird_proto(neighbor)])?;
                if let Some(state) = labelled(&out, "BGP state:") {
                    return Ok(state);
                }
                // A disabled protocol has no BGP state line: use the protocol state column.
                bird_proto_row(&out, &bird_proto(neighbor))
                    .and_then(|cols| cols.get(3).map(|s| (*s).to_owned()))
                    .with_context(|| format!("no state for {neighbor} in:\n{out}"))
            }
            Kind::Frr => {
                let json = self.frr_neighbor_json(neighbor)?;
                json.get("bgpState")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .with_context(|| format!("no bgpState for {neighbor} in {json}"))
            }
            Kind::Gobgp => {
                let json = self.gobgp_json(&["neighbor", &neighbor.to_string()])?;
                let state = json
                    .pointer("/state/session_state")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                Ok(match state {
                    1 => "IDLE",
                    2 => "CONNECT",
                    3 => "ACTIVE",
                    4 => "OPENSENT",
                    5 => "OPENCONFIRM",
                    6 => "ESTABLISHED",
                    _ => "UNKNOWN",
                }
                .to_owned())
            }
        }
    }

    /// The prefixes the daemon accepted from `neighbor` (sorted, deduplicated).
    /// The AS_PATH of the router's best route to `prefix`, as its ASNs (BIRD: `birdc show
    /// route for P all`; FRR: `show bgp ipv4 unicast P json`); `None` without a route.
    pub fn as_path(&self, prefix: Ipv4Net) -> Result<Option<Vec<u32>>> {
        let parse = |text: &str| -> Vec<u32> {
            text.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        match self.kind {
            Kind::Bird => {
                let out = self.birdc(&["show", "route", "for", &prefix.to_string(), "all"])?;
                Ok(out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("BGP.as_path:"))
                    .map(parse))
            }
            Kind::Frr => {
                let json = self.vtysh_json(&format!("show bgp ipv4 unicast {prefix} json"))?;
                Ok(json["paths"]
                    .as_array()
                    .and_then(|paths| {
                        paths
                            .iter()
                            .find(|p| p["bestpath"]["overall"] == true)
                            .or_else(|| paths.first())
                    })
                    .and_then(|p| p["aspath"]["string"].as_str())
                    .map(parse))
            }
            Kind::Gobgp => bail!("the GoBGP harness reads no AS_PATH"),
        }
    }

    pub fn received_prefixes(&self, neighbor: impl Into<IpAddr>) -> Result<Vec<Ipv4Net>> {
        let neighbor: IpAddr = neighbor.into();
        let all = self.op("reading received prefixes", || self.received_raw(neighbor))?;
        Ok(all
            .into_iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(p),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    /// [`Self::received_prefixes`] of an IPv6 session.
    pub fn received_prefixes6(&self, neighbor: impl Into<IpAddr>) -> Result<Vec<Ipv6Net>> {
        let neighbor: IpAddr = neighbor.into();
        let all = self.op("reading received prefixes", || self.received_raw(neighbor))?;
        Ok(all
            .into_iter()
            .filter_map(|p| match p {
                IpNet::V6(p) => Some(p),
                IpNet::V4(_) => None,
            })
            .collect())
    }

    fn received_raw(&self, neighbor: IpAddr) -> Result<Vec<IpNet>> {
        self.peer(neighbor)?;
        {
            let mut set = BTreeSet::new();
            match self.kind {
                Kind::Bird => {
                    let out = self.birdc(&["show", "route", "protocol", &bird_proto(neighbor)])?;
                    for line in out.lines() {
                        if let Some(net) = line
                            .split_whitespace()
                            .next()
                            .and_then(|w| w.parse::<IpNet>().ok())
                        {
                            set.insert(net);
                        }
                    }
                }
                Kind::Frr => {
                    let af = if neighbor.is_ipv6() { "ipv6" } else { "ipv4" };
                    let json = self.vtysh_json(&format!(
                        "show bgp {af} unicast neighbors {neighbor} routes json"
                    ))?;
                    if let Some(routes) = json.get("routes").and_then(Value::as_object) {
                        for key in routes.keys() {
                            set.insert(key.parse().with_context(|| {
                                format!("FRR route key {key:?} is not a prefix")
                            })?);
                        }
                    }
                }
                Kind::Gobgp => {
                    // The RIB, not `neighbor X adj-in`: adj-in also lists paths rejected for
                    // an AS loop (FRR sends a router's own routes back to it), and fails
                    // while the session is down.
                    let json = self.gobgp_json(&["global", "rib", "-a", "ipv4"])?;
                    let from = neighbor.to_string();
                    if let Some(routes) = json.as_object() {
                        for (key, paths) in routes {
                            let learned = paths.as_array().is_some_and(|paths| {
                                paths.iter().any(|p| {
                                    p.get("neighbor-ip").and_then(Value::as_str)
                                        == Some(from.as_str())
                                })
                            });
                            if learned {
                                set.insert(key.parse().with_context(|| {
                                    format!("GoBGP route key {key:?} is not an IPv4 prefix")
                                })?);
                            }
                        }
                    }
                }
            }
            Ok(set.into_iter().collect())
        }
    }

    /// The last error the daemon recorded for the session, empty if none. BIRD: its
    /// `Last error:` (e.g. `Received: Maximum number of prefixes reached`); FRR:
    /// `lastResetDueTo`, plus the notification (`lastNotificationReason`…) when there was
    /// one; GoBGP (whose API keeps none): its last log line about a notification or the
    /// peer going down for this neighbor.
    pub fn last_error(&self, neighbor: impl Into<IpAddr>) -> Result<String> {
        let neighbor: IpAddr = neighbor.into();
        self.op("reading the last error", || self.last_error_raw(neighbor))
    }

    fn last_error_raw(&self, neighbor: IpAddr) -> Result<String> {
        self.peer(neighbor)?;
        match self.kind {
            Kind::Bird => {
                let out = self.birdc(&["show", "protocols", "all", &bird_proto(neighbor)])?;
                Ok(labelled(&out, "Last error:").unwrap_or_default())
            }
            Kind::Frr => {
                let json = self.frr_neighbor_json(neighbor)?;
                let mut parts = Vec::new();
                for key in [
                    "lastResetDueTo",
                    "lastNotificationReason",
                    "lastErrorCodeSubcode",
                    "lastShutdownDescription",
                ] {
                    match json.get(key) {
                        Some(Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
                        Some(Value::Number(n)) => parts.push(n.to_string()),
                        _ => {}
                    }
                }
                Ok(parts.join(": "))
            }
            Kind::Gobgp => Ok(self.gobgp_last_error(neighbor)),
        }
    }

    /// Administratively disables the session (BIRD `disable`, FRR `neighbor X shutdown`,
    /// GoBGP `neighbor X disable`); it stays down, also across reconfigurations, until
    /// [`Self::enable_peer`].
    pub fn shutdown_peer(&self, neighbor: impl Into<IpAddr>) -> Result<()> {
        let neighbor: IpAddr = neighbor.into();
        self.peer(neighbor)?;
        self.op("shutting the peer down", || {
            match self.kind {
                Kind::Bird => {
                    // In the config too, or the next `configure` would re-enable it.
                    self.bird_write_conf(|s| {
                        s.disabled.insert(neighbor);
                    })?;
                    let out = self.birdc(&["disable", &bird_proto(neighbor)])?;
                    ensure!(out.contains("disabled"), "birdc disable said: {out}");
                }
                Kind::Frr => {
                    self.frr_configure(false, &[format!("neighbor {neighbor} shutdown")])?;
                }
                Kind::Gobgp => {
                    self.gobgp(&["neighbor", &neighbor.to_string(), "disable"])?;
                }
            }
            self.lock()?.disabled.insert(neighbor);
            Ok(())
        })
    }

    /// Re-enables a session disabled by [`Self::shutdown_peer`].
    pub fn enable_peer(&self, neighbor: impl Into<IpAddr>) -> Result<()> {
        let neighbor: IpAddr = neighbor.into();
        self.peer(neighbor)?;
        self.op("enabling the peer", || {
            match self.kind {
                Kind::Bird => {
                    self.bird_write_conf(|s| {
                        s.disabled.remove(&neighbor);
                    })?;
                    let out = self.birdc(&["enable", &bird_proto(neighbor)])?;
                    ensure!(out.contains("enabled"), "birdc enable said: {out}");
                }
                Kind::Frr => {
                    self.frr_configure(false, &[format!("no neighbor {neighbor} shutdown")])?;
                }
                Kind::Gobgp => {
                    self.gobgp(&["neighbor", &neighbor.to_string(), "enable"])?;
                }
            }
            self.lock()?.disabled.remove(&neighbor);
            Ok(())
        })
    }

    /// Runs a raw control command and returns its output: BIRD `birdc ARGS…`, FRR one
    /// `vtysh -c` per element of `args` (in order, so `["configure terminal", "router bgp
    /// 65001", "neighbor 10.0.0.1 maximum-prefix 1"]` works), GoBGP `gobgp ARGS…`. For what
    /// the typed methods do not cover.
    pub fn control(&self, args: &[&str]) -> Result<String> {
        self.op("a control command", || match self.kind {
            Kind::Bird => self.birdc(args),
            Kind::Frr => self.vtysh(args),
            Kind::Gobgp => self.gobgp(args),
        })
    }

    /// Everything the daemon logged so far (its log files and stdout/stderr), each file under
    /// a `== name ==` header.
    pub fn log(&self) -> String {
        self.log_with_tail(None)
    }

    /// The router's BFD session with `neighbor` as the router shows it: `Up`, `Down`, `Init`
    /// or `AdminDown` (BIRD: `birdc show bfd sessions`; FRR: `show bfd peers json`), `None`
    /// when it lists none.
    pub fn bfd_state(&self, neighbor: impl Into<IpAddr>) -> Result<Option<String>> {
        let neighbor: IpAddr = neighbor.into();
        match self.kind {
            Kind::Bird => {
                let out = self.birdc(&["show", "bfd", "sessions"])?;
                Ok(out
                    .lines()
                    .map(str::split_whitespace)
                    .find_map(|mut words| {
                        (words.next() == Some(&neighbor.to_string()))
                            .then(|| words.nth(1).map(str::to_owned))
                            .flatten()
                    }))
            }
            Kind::Frr => {
                let peers = self.vtysh_json("show bfd peers json")?;
                Ok(peers.as_array().and_then(|a| {
                    a.iter()
                        .find(|p| p["peer"] == neighbor.to_string())
                        .and_then(|p| p["status"].as_str())
                        .map(|s| {
                            let mut c = s.chars();
                            c.next().map_or_else(String::new, |f| {
                                f.to_uppercase().chain(c).collect::<String>()
                            })
                        })
                }))
            }
            Kind::Gobgp => bail!("the GoBGP harness has no BFD"),
        }
    }

    /// Polls until the session with `neighbor` is Established; the error says the last state,
    /// the last error and the log tail.
    pub fn wait_established(&self, neighbor: impl Into<IpAddr>, timeout: Duration) -> Result<()> {
        let neighbor: IpAddr = neighbor.into();
        let mut last = String::new();
        let result = poll_until(timeout, || {
            last = self.state_raw(neighbor)?;
            Ok(last.eq_ignore_ascii_case("established").then_some(()))
        });
        result.map_err(|e| {
            let error = self
                .last_error_raw(neighbor)
                .unwrap_or_else(|e| format!("{e:#}"));
            self.annotate(
                e.context(format!(
                    "session with {neighbor}: state {last:?}, last error {error:?}"
                )),
                "waiting for Established",
            )
        })
    }

    /// Polls until what the daemon accepted from `neighbor` is exactly `expected` (in any
    /// order); `&[]` waits for everything to be withdrawn.
    pub fn wait_received(
        &self,
        neighbor: impl Into<IpAddr>,
        expected: &[Ipv4Net],
        timeout: Duration,
    ) -> Result<()> {
        let want: Vec<IpNet> = expected.iter().map(|p| IpNet::V4(*p)).collect();
        self.wait_received_any(neighbor.into(), &want, timeout)
    }

    /// [`Self::wait_received`] of an IPv6 session.
    pub fn wait_received6(
        &self,
        neighbor: impl Into<IpAddr>,
        expected: &[Ipv6Net],
        timeout: Duration,
    ) -> Result<()> {
        let want: Vec<IpNet> = expected.iter().map(|p| IpNet::V6(*p)).collect();
        self.wait_received_any(neighbor.into(), &want, timeout)
    }

    fn wait_received_any(
        &self,
        neighbor: IpAddr,
        expected: &[IpNet],
        timeout: Duration,
    ) -> Result<()> {
        let want: BTreeSet<IpNet> = expected.iter().copied().collect();
        let mut last = Vec::new();
        let result = poll_until(timeout, || {
            last = self.received_raw(neighbor)?;
            Ok((last.iter().copied().collect::<BTreeSet<_>>() == want).then_some(()))
        });
        result.map_err(|e| {
            let state = self
                .state_raw(neighbor)
                .unwrap_or_else(|e| format!("{e:#}"));
            self.annotate(
                e.context(format!(
                    "from {neighbor}: want {want:?}, have {last:?} (session {state})"
                )),
                "waiting for received prefixes",
            )
        })
    }

    // ---- common plumbing ----

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("daemon state lock poisoned by an earlier panic"))
    }

    fn peer(&self, neighbor: IpAddr) -> Result<&PeerSpec> {
        self.peers
            .iter()
            .find(|p| p.neighbor == neighbor)
            .with_context(|| format!("{} router has no peer {neighbor}", self.kind))
    }

    fn path(&self, file: &str) -> String {
        if file.is_empty() {
            return self.dir.to_string_lossy().into_owned();
        }
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// Runs `f`, adding what failed and the log tail to its error.
    fn op<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        f().map_err(|e| self.annotate(e, what))
    }

    fn annotate(&self, e: anyhow::Error, what: &str) -> anyhow::Error {
        e.context(format!(
            "{} router in {}: {what} failed; log tail:\n{}",
            self.kind,
            self.ns.name(),
            self.log_with_tail(Some(LOG_TAIL_LINES))
        ))
    }

    fn log_with_tail(&self, tail: Option<usize>) -> String {
        let mut files: Vec<PathBuf> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "log" || ext == "out")
                })
                .collect(),
            Err(e) => return format!("(cannot list {}: {e})", self.dir.display()),
        };
        files.sort();
        let mut text = String::new();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let contents = match fs::read_to_string(&file) {
                Ok(c) => c,
                Err(e) => format!("(unreadable: {e})\n"),
            };
            // GoBGP repeats this for every connection attempt to a disabled neighbor.
            let lines: Vec<&str> = contents
                .lines()
                .filter(|l| tail.is_none() || !l.contains("\"msg\":\"invalid peer type\""))
                .collect();
            let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
            push_line!(text, "== {name} ==");
            for line in &lines[skip..] {
                push_line!(text, "{line}");
            }
        }
        text
    }

    /// Starts `program` in the namespace with stdout and stderr to `DIR/<name>.out`.
    fn spawn(&mut self, name: &'static str, program: &str, args: &[String]) -> Result<()> {
        let out_path = self.dir.join(format!("{name}.out"));
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name(), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Safety net for a test process that dies without unwinding: the daemon gets SIGTERM
        // when the thread that started it exits. (`ip netns exec` execs, so this reaches the
        // daemon; FRR's switch to the frr user clears it.)
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning `ip netns exec {} {program}`", self.ns.name()))?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    /// Polls `ready` until it says yes, failing early if a process exits.
    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for proc in &mut self.procs {
                if let Some(status) = proc.child.try_wait()? {
                    bail!("{} exited ({status}) while waiting for {what}", proc.name);
                }
            }
            if ready(self) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{what} not ready within {START_TIMEOUT:?}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    // ---- BIRD ----

    fn start_bird(&mut self) -> Result<()> {
        self.bird_write_conf(|_| {})?;
        self.spawn_bird(false)
    }

    /// Starts `bird` on the written config; `recovering`: `-R`, after a graceful restart.
    fn spawn_bird(&mut self, recovering: bool) -> Result<()> {
        let mut args = vec![
            "-f".to_owned(),
            "-c".to_owned(),
            self.path("bird.conf"),
            "-s".to_owned(),
            self.path("bird.ctl"),
            "-P".to_owned(),
            self.path("bird.pid"),
        ];
        if recovering {
            args.push("-R".to_owned());
        }
        self.spawn("bird", "bird", &args)?;
        self.wait_ready("BIRD control socket", |d| {
            d.birdc(&["show", "status"])
                .is_ok_and(|out| out.contains("Daemon is up and running"))
        })
    }

    fn bird_conf(&self, state: &State) -> String {
        let mut c = String::new();
        push_line!(c, "log \"{}\" all;", self.path("bird.log"));
        push_line!(c, "router id {};", self.router_id);
        push_line!(c, "protocol device {{ }}");
        // Learned routes into the namespace's FIB, so the router forwards along them; not the
        // blackholes behind our own announcements.
        // With graceful restart on, the kernel routes stay while BIRD restarts.
        let kernel_gr = if self.graceful_restart == GracefulRestart::On {
            " graceful restart on;"
        } else {
            ""
        };
        push_line!(
            c,
            "protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }};{kernel_gr} }}"
        );
        let ipv6 = self.peers.iter().any(|p| p.neighbor.is_ipv6());
        if ipv6 {
            push_line!(
                c,
                "protocol kernel kernel6 {{ ipv6 {{ import none; export where source = RTS_BGP; }};{kernel_gr} }}"
            );
        }
        if self.peers.iter().any(|p| p.bfd) {
            push_line!(
                c,
                "protocol bfd {{ interface \"*\" {{ interval 300 ms; multiplier 3; }}; }}"
            );
        }
        push_line!(c, "protocol static originated {{\n  ipv4;");
        for p in state.announced.iter().filter(|p| p.addr().is_ipv4()) {
            push_line!(c, "  route {p} blackhole;");
        }
        push_line!(c, "}}");
        if ipv6 {
            push_line!(c, "protocol static originated6 {{\n  ipv6;");
            for p in state.announced.iter().filter(|p| p.addr().is_ipv6()) {
                push_line!(c, "  route {p} blackhole;");
            }
            push_line!(c, "}}");
        }
        for peer in &self.peers {
            push_line!(c, "protocol bgp {} {{", bird_proto(peer.neighbor));
            if state.disabled.contains(&peer.neighbor) {
                push_line!(c, "  disabled yes;");
            }
            push_line!(c, "  local {} as {};", peer.local_addr, peer.local_asn);
            push_line!(c, "  neighbor {} as {};", peer.neighbor, peer.remote_asn);
            if let Some(password) = &peer.password {
                push_line!(c, "  password \"{password}\";");
            }
            if peer.passive {
                push_line!(c, "  passive on;");
            }
            if peer.ttl_security {
                push_line!(c, "  ttl security on;");
            }
            if peer.bfd {
                push_line!(c, "  bfd on;");
            }
            match self.graceful_restart {
                GracefulRestart::Default => {}
                GracefulRestart::On => push_line!(c, "  graceful restart on;"),
                GracefulRestart::Off => push_line!(c, "  graceful restart off;"),
            }
            push_line!(
                c,
                "  hold time {HOLD_TIME}; keepalive time {KEEPALIVE};\n  \
                 connect delay time 1; connect retry time {CONNECT_RETRY}; \
                 error wait time 1, 2;"
            );
            if peer.neighbor.is_ipv6() {
                // IPv6 unicast only; the path attributes of `set_path` are IPv4's.
                push_line!(
                    c,
                    "  ipv6 {{ import all; export where source = RTS_STATIC; }};\n}}"
                );
            } else if state.paths.is_empty() {
                push_line!(
                    c,
                    "  ipv4 {{ import all; export where source = RTS_STATIC; }};\n}}"
                );
            } else {
                push_line!(
                    c,
                    "  ipv4 {{ import all; export filter {{\n    if source != RTS_STATIC then reject;"
                );
                for (p, a) in &state.paths {
                    push_line!(c, "    if net = {p} then {{");
                    for (x, y) in &a.communities {
                        push_line!(c, "      bgp_community.add(({x}, {y}));");
                    }
                    if a.no_export {
                        push_line!(c, "      bgp_community.add((65535, 65281));");
                    }
                    for _ in 0..a.prepend {
                        push_line!(c, "      bgp_path.prepend({});", peer.local_asn);
                    }
                    if let Some(med) = a.med {
                        push_line!(c, "      bgp_med = {med};");
                    }
                    push_line!(c, "    }}");
                }
                push_line!(c, "    accept;\n  }}; }};\n}}");
            }
        }
        c
    }

    /// Applies `change` to the state and rewrites `bird.conf` (atomically) from it.
    fn bird_write_conf(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.lock()?;
        change(&mut state);
        let conf = self.bird_conf(&state);
        drop(state);
        let tmp = self.dir.join("bird.conf.new");
        fs::write(&tmp, conf).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join("bird.conf")).context("replacing bird.conf")?;
        Ok(())
    }

    /// BIRD restarts gracefully: `birdc graceful restart` (sessions closed without a
    /// NOTIFICATION, kernel routes left in place), then `bird -R` on the same config. Returns
    /// once the new BIRD answers (its sessions come up on their own).
    pub fn restart_gracefully(&mut self) -> Result<()> {
        ensure!(
            self.kind == Kind::Bird && self.graceful_restart == GracefulRestart::On,
            "only a BIRD router with GracefulRestart::On restarts gracefully"
        );
        let out = self.birdc(&["graceful", "restart"])?;
        ensure!(
            out.contains("Graceful restart"),
            "birdc graceful restart said: {out}"
        );
        let mut proc = self.procs.pop().context("BIRD is not running")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while proc.child.try_wait()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "BIRD did not exit after graceful restart"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
        self.spawn_bird(true)
    }

    /// Changes the state, rewrites the config and has BIRD reload it.
    fn bird_update(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        self.bird_write_conf(change)?;
        let out = self.birdc(&["configure"])?;
        ensure!(
            out.contains("Reconfigured") || out.contains("Reconfiguration in progress"),
            "birdc configure said: {out}"
        );
        Ok(())
    }

    fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.path("bird.ctl");
        let output = Command::new("birdc")
            .arg("-s")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("spawning birdc")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "`birdc -s {sock} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        ensure!(
            !stdout.contains("syntax error"),
            "`birdc {}`: {}",
            args.join(" "),
            stdout.trim()
        );
        Ok(stdout)
    }

    // ---- FRR ----

    fn start_frr(&mut self) -> Result<()> {
        let state = self.lock()?;
        let bgpd_conf = self.frr_bgpd_conf(&state);
        drop(state);
        let hostname = format!("fwt-frr-{}", self.router_id);
        fs::write(
            self.dir.join("zebra.conf"),
            format!("hostname {hostname}\n"),
        )?;
        fs::write(self.dir.join("bgpd.conf"), bgpd_conf)?;
        fs::write(self.dir.join("bfdd.conf"), "")?;
        fs::write(self.dir.join("vtysh.conf"), "")?;
        // The daemons drop to the frr user; as root without the frrvty group they refuse to
        // start. So the directory is theirs.
        crate::run("chown", &["-R", "frr:frr", &self.path("")])
            .context("FRR runs as the `frr` user (is the frr package installed?)")?;

        let common = |d: &Self, name: &str| {
            vec![
                "-i".to_owned(),
                d.path(&format!("{name}.pid")),
                "-z".to_owned(),
                d.path("zserv.api"),
                "--vty_socket".to_owned(),
                d.path(""),
                "-f".to_owned(),
                d.path(&format!("{name}.conf")),
                "-P".to_owned(),
                "0".to_owned(),
                "--log".to_owned(),
                format!("file:{}", d.path(&format!("{name}.log"))),
            ]
        };
        let zebra_args = common(self, "zebra");
        self.spawn("zebra", &format!("{FRR_SBIN}/zebra"), &zebra_args)?;
        self.wait_ready("zebra's zserv socket", |d| {
            d.dir.join("zserv.api").exists() && d.dir.join("zebra.vty").exists()
        })?;
        if self.peers.iter().any(|p| p.bfd) {
            let bfdd_args = common(self, "bfdd");
            self.spawn("bfdd", &format!("{FRR_SBIN}/bfdd"), &bfdd_args)?;
            self.wait_ready("bfdd's vty", |d| d.dir.join("bfdd.vty").exists())?;
        }
        let bgpd_args = common(self, "bgpd");
        self.spawn("bgpd", &format!("{FRR_SBIN}/bgpd"), &bgpd_args)?;
        self.wait_ready("bgpd's vty", |d| {
            d.dir.join("bgpd.vty").exists()
                && d.vtysh(&["show bgp summary json"])
                    .is_ok_and(|out| out.contains("ipv4Unicast"))
        })
    }

    fn frr_asn(&self) -> u32 {
        self.peers.first().map_or(0, |p| p.local_asn)
    }

    fn frr_bgpd_conf(&self, state: &State) -> String {
        let mut c = String::new();
        push_line!(c, "hostname fwt-frr-{}", self.router_id);
        push_line!(c, "router bgp {}", self.frr_asn());
        push_line!(c, " bgp router-id {}", self.router_id);
        push_line!(c, " no bgp ebgp-requires-policy");
        push_line!(c, " no bgp network import-check");
        push_line!(c, " timers bgp {KEEPALIVE} {HOLD_TIME}");
        match self.graceful_restart {
            GracefulRestart::Default => {}
            GracefulRestart::On => push_line!(c, " bgp graceful-restart"),
            GracefulRestart::Off => push_line!(c, " bgp graceful-restart-disable"),
        }
        for peer in &self.peers {
            let n = peer.neighbor;
            push_line!(c, " neighbor {n} remote-as {}", peer.remote_asn);
            push_line!(c, " neighbor {n} update-source {}", peer.local_addr);
            push_line!(c, " neighbor {n} timers connect {CONNECT_RETRY}");
            push_line!(c, " neighbor {n} advertisement-interval 0");
            if let Some(password) = &peer.password {
                push_line!(c, " neighbor {n} password {password}");
            }
            if peer.passive {
                push_line!(c, " neighbor {n} passive");
            }
            if peer.ttl_security {
                push_line!(c, " neighbor {n} ttl-security hops 1");
            }
            if peer.bfd {
                push_line!(c, " neighbor {n} bfd");
            }
        }
        push_line!(c, " address-family ipv4 unicast");
        for p in state.announced.iter().filter(|p| p.addr().is_ipv4()) {
            push_line!(c, "  network {p}");
        }
        // An IPv6 session carries IPv6 unicast only.
        for peer in self.peers.iter().filter(|p| p.neighbor.is_ipv6()) {
            push_line!(c, "  no neighbor {} activate", peer.neighbor);
        }
        push_line!(c, " exit-address-family");
        if self.peers.iter().any(|p| p.neighbor.is_ipv6()) {
            push_line!(c, " address-family ipv6 unicast");
            for p in state.announced.iter().filter(|p| p.addr().is_ipv6()) {
                push_line!(c, "  network {p}");
            }
            for peer in self.peers.iter().filter(|p| p.neighbor.is_ipv6()) {
                push_line!(c, "  neighbor {} activate", peer.neighbor);
            }
            push_line!(c, " exit-address-family");
        }
        c
    }

    /// `configure terminal` / `router bgp ASN` / `address-family AF unicast` / lines.
    fn frr_configure_af(&self, af: &str, lines: &[String]) -> Result<()> {
        let mut cmds = vec![
            "configure terminal".to_owned(),
            format!("router bgp {}", self.frr_asn()),
            format!("address-family {af} unicast"),
        ];
        cmds.extend(lines.iter().cloned());
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        self.vtysh(&refs).map(drop)
    }

    /// `configure terminal` / `router bgp ASN` [/ `address-family ipv4 unicast`] / lines.
    fn frr_configure(&self, in_af: bool, lines: &[String]) -> Result<()> {
        let mut cmds = vec![
            "configure terminal".to_owned(),
            format!("router bgp {}", self.frr_asn()),
        ];
        if in_af {
            cmds.push("address-family ipv4 unicast".to_owned());
        }
        cmds.extend(lines.iter().cloned());
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        self.vtysh(&refs).map(drop)
    }

    fn frr_neighbor_json(&self, neighbor: IpAddr) -> Result<Value> {
        let json = self.vtysh_json(&format!("show bgp neighbors {neighbor} json"))?;
        json.get(neighbor.to_string())
            .cloned()
            .with_context(|| format!("no neighbor {neighbor} in FRR's answer {json}"))
    }

    fn vtysh(&self, cmds: &[&str]) -> Result<String> {
        let dir = self.path("");
        let mut cmd = Command::new("vtysh");
        cmd.args(["--vty_socket", &dir, "--config_dir", &dir]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .context("spawning vtysh")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let complaint = stdout
            .lines()
            .chain(stderr.lines())
            .find(|l| l.starts_with('%'));
        if !output.status.success() || complaint.is_some() {
            bail!(
                "`vtysh -c {}` failed ({}): {}{}",
                cmds.join(" -c "),
                output.status,
                stdout.trim(),
                stderr.trim()
            );
        }
        Ok(stdout)
    }

    fn vtysh_json(&self, cmd: &str) -> Result<Value> {
        let out = self.vtysh(&[cmd])?;
        serde_json::from_str(&out).with_context(|| format!("`{cmd}` gave no JSON: {out}"))
    }

    // ---- GoBGP ----

    fn start_gobgp(&mut self) -> Result<()> {
        self.api_port = self.ns.enter(|| {
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
            Ok(listener.local_addr()?.port())
        })?;
        fs::write(self.dir.join("gobgpd.toml"), self.gobgp_conf())?;
        let args = [
            "-f".to_owned(),
            self.path("gobgpd.toml"),
            "--api-hosts".to_owned(),
            format!("127.0.0.1:{}", self.api_port),
            "--pprof-disable".to_owned(),
            "-l".to_owned(),
            "info".to_owned(),
        ];
        // Its log is its stdout: DIR/gobgpd.out.
        self.spawn("gobgpd", "gobgpd", &args)?;
        self.wait_ready("gobgpd's gRPC API", |d| d.gobgp(&["global"]).is_ok())?;
        let announced = self.announced()?;
        for p in announced {
            self.gobgp(&["global", "rib", "add", &p.to_string(), "-a", "ipv4"])?;
        }
        Ok(())
    }

    fn gobgp_conf(&self) -> String {
        let global_asn = self.peers.first().map_or(0, |p| p.local_asn);
        let locals: BTreeSet<String> = self
            .peers
            .iter()
            .map(|p| format!("\"{}\"", p.local_addr))
            .collect();
        let mut c = String::new();
        push_line!(
            c,
            "[global.config]\n  as = {global_asn}\n  router-id = \"{}\"\n  port = 179\n  \
             local-address-list = [{}]\n",
            self.router_id,
            locals.into_iter().collect::<Vec<_>>().join(", ")
        );
        for peer in &self.peers {
            push_line!(
                c,
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    \
                 peer-as = {}",
                peer.neighbor,
                peer.remote_asn
            );
            if peer.local_asn != global_asn {
                push_line!(c, "    local-as = {}", peer.local_asn);
            }
            if let Some(password) = &peer.password {
                push_line!(c, "    auth-password = \"{password}\"");
            }
            push_line!(
                c,
                "  [neighbors.timers.config]\n    connect-retry = {CONNECT_RETRY}\n    \
                 hold-time = {HOLD_TIME}\n    keepalive-interval = {KEEPALIVE}\n    \
                 idle-hold-time-after-reset = 1\n  \
                 [neighbors.transport.config]\n    local-address = \"{}\"\n    \
                 passive-mode = {}\n  \
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
                 afi-safi-name = \"ipv4-unicast\"\n",
                peer.local_addr,
                peer.passive
            );
        }
        c
    }

    fn gobgp(&self, args: &[&str]) -> Result<String> {
        let port = self.api_port.to_string();
        let mut full = vec!["gobgp", "-u", "127.0.0.1", "-p", &port];
        full.extend_from_slice(args);
        let output = self.ns.exec(&full)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn gobgp_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        full.push("-j");
        let out = self.gobgp(&full)?;
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&out)
            .with_context(|| format!("`gobgp {}` gave no JSON: {out}", full.join(" ")))
    }

    fn gobgp_last_error(&self, neighbor: IpAddr) -> String {
        let Ok(log) = fs::read_to_string(self.dir.join("gobgpd.out")) else {
            return String::new();
        };
        let key = neighbor.to_string();
        for line in log.lines().rev() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if entry.get("Key").and_then(Value::as_str) != Some(key.as_str()) {
                continue;
            }
            let msg = entry.get("msg").and_then(Value::as_str).unwrap_or_default();
            if !(msg.contains("notification") || msg == "Peer Down") {
                continue;
            }
            let mut text = msg.to_owned();
            for field in ["Code", "Subcode", "Reason", "Communicated-Reason", "Data"] {
                match entry.get(field) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) if s.is_empty() => {}
                    Some(Value::String(s)) => {
                        text.push_str(&format!(" {field}={s}"));
                    }
                    Some(v) => {
                        text.push_str(&format!(" {field}={v}"));
                    }
                }
            }
            return text;
        }
        String::new()
    }
}

impl Drop for RouterDaemon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} router in {} (dir {}), log tail:\n{}",
                self.kind,
                self.ns.name(),
                self.dir.display(),
                self.log_with_tail(Some(LOG_TAIL_LINES))
            );
        }
        while let Some(mut proc) = self.procs.pop() {
            stop(&mut proc);
            if self.kind == Kind::Frr {
                // Normally removed by the daemon on a clean exit.
                let crashlog =
                    Path::new(FRR_CRASHLOG_DIR).join(format!("{}.{}", proc.name, proc.child.id()));
                if let Err(e) = fs::remove_dir_all(&crashlog)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    eprintln!("warning: could not remove {}: {e}", crashlog.display());
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL; always reaps the child.
fn stop(proc: &mut Proc) {
    if matches!(proc.child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(proc.child.id()) {
        // SAFETY: plain kill(2) on our own child, which is not reaped yet (so the pid is
        // still ours).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(proc.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "warning: {} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
        proc.name,
        proc.child.id()
    );
    if let Err(e) = proc.child.kill() {
        eprintln!("warning: could not kill {}: {e}", proc.name);
    }
    if let Err(e) = proc.child.wait() {
        eprintln!("warning: could not reap {}: {e}", proc.name);
    }
}

/// Calls `probe` every 100 ms until it returns `Some`, or fails after `timeout`. Errors from
/// `probe` end the wait at once.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// BIRD protocol name of the session with `neighbor`: `peer_10_255_0_2`.
fn bird_proto(neighbor: IpAddr) -> String {
    format!("peer_{}", neighbor.to_string().replace(['.', ':'], "_"))
}

/// The value after `label` on the first line that starts (after indentation) with it.
fn labelled(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|v| v.trim().to_owned())
}

/// The columns of `name`'s row in `birdc show protocols`.
fn bird_proto_row<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
}
