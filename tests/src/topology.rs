//! The DESIGN §6 topology for agent tests, with the real `forwarder agent` binary:
//!
//! ```text
//! idc ──veth── rtr (customer router; 802.1Q sub-interfaces by the TC shim) ══trunk══ gw (agent + XDP)
//!                                                                                   │ ul0
//!                                                                                  vpc (kernel VXLAN VNI 1001, 10.0.1.10)
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{NetNs, customer::CustomerRouter, fixture::Fixture, veth};
use anyhow::{Context as _, Result, bail};

pub const VPC_HOST: &str = "10.0.1.10";
pub const IDC_HOST: &str = "192.168.50.10";
pub const VXLAN_MAC: &str = "02:00:00:00:0a:01";
/// The IPv6 side of the topology ([`Topology::ipv6`]): hosts, the VPC's CIDR, the IDC's
/// prefix and VLAN 100's IPv6 interconnect pair (a /126).
pub const VPC6_HOST: &str = "2001:db8:a:1::10";
pub const IDC6_HOST: &str = "2001:db8:50::10";
pub const VPC6_CIDR: &str = "2001:db8:a::/48";
pub const IDC6_PREFIX: &str = "2001:db8:50::/48";
pub const CLIENT6: &str = "2001:db8:ff::2";
pub const CLOUD6: &str = "2001:db8:ff::1";

pub struct Topology {
    pub idc: NetNs,
    pub rtr: NetNs,
    pub gw: NetNs,
    pub vpc: NetNs,
    pub dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fwt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}

pub fn sh(ns: &NetNs, command: &str) -> Result<String> {
    let out = ns.exec(&["sh", "-c", command])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Namespaces, links and addresses; the customer router routes the VPC CIDR to the
    /// cloud interconnect address of VLAN 100; the VPC routes the IDC prefix back through its
    /// VXLAN device toward the gateway's VTEP.
    pub fn new(tag: &str) -> Result<Self> {
        let idc = NetNs::new("idc")?;
        let rtr = NetNs::new("rtr")?;
        let gw = NetNs::new("gw")?;
        let vpc = NetNs::new("vpc")?;
        veth(&idc, "eth0", &rtr, "lan0")?;
        veth(&rtr, "trunk0", &gw, "hc1")?;
        veth(&gw, "ul0", &vpc, "eth0")?;
        sh(
            &idc,
            "ip addr add 192.168.50.10/24 dev eth0 && ip route add default via 192.168.50.1 && ethtool -K eth0 tx off >/dev/null",
        )?;
        sh(
            &rtr,
            "ip addr add 192.168.50.1/24 dev lan0 && sysctl -qw net.ipv4.ip_forward=1 && ethtool -K lan0 tx off >/dev/null",
        )?;
        sh(&gw, "ip addr add 172.31.0.1/24 dev ul0")?;
        vpc_vxlan(&vpc, 1001)?;
        let dir = TempDir::new(tag)?;
        Ok(Self {
            idc,
            rtr,
            gw,
            vpc,
            dir,
        })
    }

    /// The customer router's VLAN 100 sub-interface (169.254.10.2/30) and its route to the VPC
    /// CIDR via the cloud interconnect address. Keep it alive for the test.
    pub fn customer_router(&self) -> Result<CustomerRouter<'_>> {
        let customer = CustomerRouter::new(&self.rtr, "trunk0", &[(100, "169.254.10.2/30")])?;
        sh(&self.rtr, "ip route add 10.0.1.0/24 via 169.254.10.1")?;
        Ok(customer)
    }

    /// IPv6 beside IPv4 (call after [`Self::customer_router`]): the IDC host and its router
    /// on 2001:db8:50::/64, the router's VLAN 100 with the client address of the /126, the
    /// VPC host on `vxlan0` with the IDC prefix routed back through the gateway; with
    /// `static_route`, the router's route to the VPC's CIDR via the cloud address (without,
    /// BGP brings it). Addresses without duplicate detection, so they work at once.
    pub fn ipv6(&self, static_route: bool) -> Result<()> {
        self.idc.enable_ipv6(&["lo", "eth0"])?;
        self.rtr.enable_ipv6(&["lo", "lan0", "v100"])?;
        self.vpc.enable_ipv6(&["lo", "vxlan0"])?;
        sh(
            &self.idc,
            &format!(
                "ip addr add {IDC6_HOST}/64 dev eth0 nodad && ip -6 route add default via 2001:db8:50::1"
            ),
        )?;
        sh(
            &self.rtr,
            &format!(
                "sysctl -qw net.ipv6.conf.all.forwarding=1 && ip addr add 2001:db8:50::1/64 dev lan0 nodad \
                 && ip addr add {CLIENT6}/126 dev v100 nodad"
            ),
        )?;
        if static_route {
            sh(
                &self.rtr,
                &format!("ip -6 route add {VPC6_CIDR} via {CLOUD6}"),
            )?;
        }
        sh(
            &self.vpc,
            &format!(
                "ip addr add {VPC6_HOST}/64 dev vxlan0 nodad && \
                 ip -6 neigh add fe80::fe lladdr 02:00:00:00:0a:fe dev vxlan0 nud permanent && \
                 ip -6 route add {IDC6_PREFIX} via fe80::fe dev vxlan0"
            ),
        )?;
        Ok(())
    }

    /// The customer router for BGP: VLAN 100 carries both interconnect /30s of the VIF
    /// (169.254.10.2/30 and 169.254.20.2/30); routes toward the VPC come from BGP.
    pub fn customer_router_bgp(&self) -> Result<CustomerRouter<'_>> {
        let customer = CustomerRouter::new(&self.rtr, "trunk0", &[(100, "169.254.10.2/30")])?;
        sh(&self.rtr, "ip addr add 169.254.20.2/30 dev v100")?;
        Ok(customer)
    }

    /// A second connection for a customer with two: `hc2` on the gateway, `trunk0` in a
    /// router namespace of its own (returned; keep it for the test).
    pub fn second_connection(&self) -> Result<NetNs> {
        let rtr2 = NetNs::new("rtr2")?;
        veth(&rtr2, "trunk0", &self.gw, "hc2")?;
        Ok(rtr2)
    }

    /// The IDC behind both customer routers (two connections, one site): `eth1` of the IDC to
    /// `lan0` of `rtr2` (192.168.50.2/24), both IDC ports in one bridge that keeps the IDC's
    /// address, default route via `rtr`. `rtr` falls back to `rtr2` for the VPC CIDR (a
    /// floating route, metric 1000) when its own BGP route to it is gone, as a customer's
    /// routers do with iBGP between them; redirects are off so the IDC keeps its first hop.
    pub fn idc_behind_both(&self, rtr2: &NetNs) -> Result<()> {
        veth(&self.idc, "eth1", rtr2, "lan0")?;
        sh(
            &self.idc,
            "ip addr del 192.168.50.10/24 dev eth0 && ip link add br0 type bridge              && ip link set eth0 master br0 && ip link set eth1 master br0              && ip link set br0 up && ip addr add 192.168.50.10/24 dev br0              && ip route add default via 192.168.50.1 && ethtool -K eth1 tx off >/dev/null",
        )?;
        sh(
            rtr2,
            "ip addr add 192.168.50.2/24 dev lan0 && sysctl -qw net.ipv4.ip_forward=1              && ethtool -K lan0 tx off >/dev/null",
        )?;
        sh(
            &self.rtr,
            "sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.lan0.send_redirects=0              && ip route add 10.0.1.0/24 via 192.168.50.2 metric 1000",
        )?;
        Ok(())
    }

    /// Re-creates the VPC's VXLAN device with another VNI (as a VPC moved to another VNI).
    pub fn set_vpc_vni(&self, vni: u32) -> Result<()> {
        sh(&self.vpc, "ip link del vxlan0")?;
        vpc_vxlan(&self.vpc, vni)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("forwarder.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("forwarder.sock")
    }

    /// The config of this topology without VIFs: DESIGN §6's connection, gateway and
    /// attachment, and this test's own state directory, socket, pin directory and namespace
    /// prefix (so tests run side by side).
    pub fn fixture(&self) -> Fixture {
        let tag = self.gw.name().replace("fwt-gw-", "");
        Fixture::design("10.0.1.0/24")
            .agent(
                "state_dir",
                &format!("\"{}\"", self.dir.0.join("state").display()),
            )
            .agent(
                "control_socket",
                &format!("\"{}\"", self.socket().display()),
            )
            .agent("pin_dir", &format!("\"/sys/fs/bpf/fwt-{tag}\""))
            .agent("netns_prefix", &format!("\"fwt-{tag}-\""))
    }

    /// [`Self::fixture`] with DESIGN's static VIF: `vif-100` on VLAN 100 (client
    /// 169.254.10.2, cloud 169.254.10.1) and the IDC prefix 192.168.50.0/24 routed to it.
    pub fn static_fixture(&self) -> Fixture {
        self.static_fixture_with(&[])
    }

    /// [`Self::static_fixture`] with more `key = value` lines (TOML values) in `vif-100`.
    pub fn static_fixture_with(&self, vif_keys: &[(&str, &str)]) -> Fixture {
        let vif = vif_keys.iter().fold(
            crate::fixture::Vif::static_routed("vif-100", "hc-1", 100, "bgw-1")
                .peer("169.254.10.2", "169.254.10.1"),
            |vif, (key, value)| vif.set(key, value),
        );
        self.fixture()
            .vif(vif)
            .static_route("bgw-1", "192.168.50.0/24", "vif-100")
    }

    /// Waits until `vif` is `available`, or says what it is.
    pub fn wait_available(&self, forwarder: &Path, vif: &str) -> Result<()> {
        let state = || {
            cli_json(forwarder, &self.socket(), &["vif", "show", vif])
                .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        if !wait_for(Duration::from_secs(15), || state() == "available") {
            bail!("{vif} never became available: {}", state());
        }
        Ok(())
    }

    /// Writes `fixture` as this topology's config file.
    pub fn write_fixture(&self, fixture: &Fixture) -> Result<PathBuf> {
        let path = self.config_path();
        std::fs::write(&path, fixture.toml())?;
        Ok(path)
    }

    /// The topology's config with `vif_and_routes` (TOML) appended.
    pub fn write_config(&self, vif_and_routes: &str) -> Result<PathBuf> {
        self.write_fixture(&self.fixture().raw(vif_and_routes))
    }

    /// Starts `forwarder agent` inside the gateway namespace (with `nsenter --net`, as the
    /// systemd unit does) and waits for its socket.
    pub fn start_agent(&self, forwarder: &Path) -> Result<Agent> {
        self.start_agent_via(forwarder, Launch::Nsenter)
    }

    /// The agent process, started the way `launch` says, its stderr in `agent.log`
    /// (appended: a restarted agent's log follows the first one's). The log filter is
    /// `FORWARDER_TEST_LOG` (default `info`).
    pub fn spawn_agent(&self, forwarder: &Path, launch: Launch) -> Result<Child> {
        let filter = std::env::var("FORWARDER_TEST_LOG").unwrap_or_else(|_| "info".into());
        self.spawn_agent_logging(forwarder, launch, &filter)
    }

    /// [`Self::spawn_agent`] with the log filter `filter` (`RUST_LOG` syntax).
    pub fn spawn_agent_logging(
        &self,
        forwarder: &Path,
        launch: Launch,
        filter: &str,
    ) -> Result<Child> {
        self.spawn_agent_env(forwarder, launch, filter, &[])
    }

    /// [`Self::spawn_agent_logging`] with more environment variables.
    pub fn spawn_agent_env(
        &self,
        forwarder: &Path,
        launch: Launch,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("agent.log"))?;
        let mut command = match launch {
            // nsenter keeps the caller's mount namespace.
            Launch::Nsenter => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", self.gw.name()));
                c
            }
            // `ip netns exec` gives the agent a private mount namespace and a fresh /sys.
            Launch::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", self.gw.name()]);
                c
            }
        };
        command
            .env("RUST_LOG", filter)
            .envs(env.iter().copied())
            .arg(forwarder)
            .args(["agent", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning the agent")
    }

    /// Starts the agent the way `launch` says and waits until it answers.
    pub fn start_agent_via(&self, forwarder: &Path, launch: Launch) -> Result<Agent> {
        let child = self.spawn_agent(forwarder, launch)?;
        self.wait_agent(forwarder, child)
    }

    /// [`Self::start_agent_via`] with the log filter `filter`.
    pub fn start_agent_logging(
        &self,
        forwarder: &Path,
        launch: Launch,
        filter: &str,
    ) -> Result<Agent> {
        let child = self.spawn_agent_logging(forwarder, launch, filter)?;
        self.wait_agent(forwarder, child)
    }

    /// Waits until the agent `child` answers on its socket.
    pub fn wait_agent(&self, forwarder: &Path, child: Child) -> Result<Agent> {
        let mut agent = Agent {
            child: Some(child),
            log: self.dir.0.join("agent.log"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists()
                && cli(forwarder, &self.socket(), &["status"]).is_ok_and(|o| o.status.success())
            {
                return Ok(agent);
            }
            if let Some(child) = agent.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("agent exited with {status}: {}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("agent did not answer within 20 s: {}", agent.log_text())
    }

    /// Where the agent pins its maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/fwt-{}",
            self.gw.name().replace("fwt-gw-", "")
        ))
    }

    fn netns_prefix(&self) -> String {
        format!("fwt-{}-", self.gw.name().replace("fwt-gw-", ""))
    }

    /// Pings the VPC host from the IDC host `count` times at 10/s while `during` runs (it
    /// starts a second into the pings); returns (sent, received) and what `during` returned.
    pub fn ping_during<T>(
        &self,
        count: u32,
        during: impl FnOnce() -> Result<T>,
    ) -> Result<((u32, u32), T)> {
        self.ping_to_during(VPC_HOST, count, during)
    }

    /// [`Self::ping_during`] toward `target` (an IPv6 host too).
    pub fn ping_to_during<T>(
        &self,
        target: &str,
        count: u32,
        during: impl FnOnce() -> Result<T>,
    ) -> Result<((u32, u32), T)> {
        let mut ping = self.ping_command(target, count, "0.1");
        let pinger = std::thread::spawn(move || ping.output());
        std::thread::sleep(Duration::from_secs(1));
        let result = during();
        let out = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
        Ok((parse_ping(&String::from_utf8_lossy(&out.stdout))?, result?))
    }

    /// `ping` from the IDC host (`ip netns exec`, not NetNs::exec: a ping with losses exits
    /// non-zero and we want its summary).
    fn ping_command(&self, target: &str, count: u32, interval: &str) -> Command {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            self.idc.name(),
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            target,
        ]);
        command
    }

    /// Link counters of every namespace and the customer router's shim filters: what a
    /// failure message needs to say where a packet went.
    pub fn diagnostics(&self) -> String {
        [
            (&self.idc, "ip -s link"),
            (
                &self.rtr,
                "ip -s link; tc -s filter show dev trunk0 ingress",
            ),
            (&self.gw, "ip -s link; ip neigh"),
            (&self.vpc, "ip -s link; ip neigh"),
        ]
        .iter()
        .map(|(ns, cmd)| {
            format!(
                "--- {}: {cmd}\n{}",
                ns.name(),
                sh(ns, cmd).unwrap_or_else(|e| e.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Pings from the IDC host; returns (sent, received).
    pub fn ping(&self, target: &str, count: u32, interval: &str) -> Result<(u32, u32)> {
        let out = self.ping_command(target, count, interval).output()?;
        parse_ping(&String::from_utf8_lossy(&out.stdout))
    }
}

/// A VPC as the kernel builds one: underlay address `underlay`/24 on `eth0`, a VXLAN device
/// `vxlan0` (VNI `vni`, MAC `mac`, peer VTEP `gateway_vtep`) holding the VPC host 10.0.1.10/24,
/// and the IDC prefix 192.168.50.0/24 routed back through the gateway. Checksum offload is off
/// (TCP through an XDP redirect), GRO on (XDP redirects into the veth).
pub fn add_vpc(vpc: &NetNs, underlay: &str, gateway_vtep: &str, vni: u32, mac: &str) -> Result<()> {
    if !sh(vpc, "ip -4 addr show dev eth0")?.contains(underlay) {
        sh(
            vpc,
            &format!(
                "ip addr add {underlay}/24 dev eth0 && ethtool -K eth0 gro on tx off >/dev/null"
            ),
        )?;
    }
    sh(
        vpc,
        &format!(
            "ip link add vxlan0 address {mac} type vxlan id {vni} local {underlay} remote {gateway_vtep} dstport 4789 dev eth0 && \
             ip addr add {VPC_HOST}/24 dev vxlan0 && ip link set vxlan0 up && ethtool -K vxlan0 tx off >/dev/null && \
             ip route add 192.168.50.0/24 via 10.0.1.254 dev vxlan0 onlink && \
             ip neigh add 10.0.1.254 lladdr 02:00:00:00:0a:fe dev vxlan0 nud permanent"
        ),
    )?;
    Ok(())
}

fn vpc_vxlan(vpc: &NetNs, vni: u32) -> Result<()> {
    add_vpc(vpc, "172.31.0.2", "172.31.0.1", vni, VXLAN_MAC)
}

pub fn parse_ping(text: &str) -> Result<(u32, u32)> {
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {text:?}"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [sent, received, ..] => Ok((*sent, *received)),
        _ => bail!("cannot read {line:?}"),
    }
}

/// How the agent is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `nsenter --net=/run/netns/GW forwarder agent ...`
    Nsenter,
    /// `ip netns exec GW forwarder agent ...`
    IpNetnsExec,
}

/// The running agent process; SIGKILLed on drop (what it pinned stays, as in production).
pub struct Agent {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let child = self.child.take().context("agent already stopped")?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut child = child;
        Ok(child.wait()?)
    }

    pub fn log_text(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("warning: stopping the agent: {e}");
        }
    }
}

impl Drop for Topology {
    /// What an agent leaves behind by design (pinned maps and links, VIF control namespaces)
    /// goes with the topology. Agents are dropped (killed) before: they are declared later.
    fn drop(&mut self) {
        let pin_dir = self.pin_dir();
        if pin_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&pin_dir)
        {
            eprintln!("warning: removing {}: {e}", pin_dir.display());
        }
        let prefix = self.netns_prefix();
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().next()
                    && name.starts_with(&prefix)
                    && let Err(e) = Command::new("ip").args(["netns", "del", name]).status()
                {
                    eprintln!("warning: removing netns {name}: {e}");
                }
            }
        }
    }
}

/// Runs the `forwarder` CLI (binary `forwarder`) against `socket`.
pub fn cli(forwarder: &Path, socket: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(forwarder)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?)
}

/// Runs the CLI with `--json` and parses the answer; fails on a non-zero exit.
pub fn cli_json(forwarder: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = cli(forwarder, socket, &full)?;
    if !out.status.success() {
        bail!(
            "forwarder {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `f` every 200 ms until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

const TCP_SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001))
s.listen(1)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest())
"#;

const TCP_CLIENT: &str = r#"
import hashlib, os, socket, sys, time
data = os.urandom(int(sys.argv[2]))
c = socket.create_connection((sys.argv[1], 5001), timeout=20)
t = time.monotonic()
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(len(data), hashlib.sha256(data).hexdigest(), time.monotonic() - t)
"#;

/// Sends `bytes` random bytes over one TCP connection from `client` to `server_addr` (in
/// `server`) and returns (bytes the server received, whether its SHA-256 matches, seconds).
pub fn tcp_transfer(
    server: &NetNs,
    server_addr: &str,
    client: &NetNs,
    bytes: usize,
) -> Result<(u64, bool, f64)> {
    let srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            server.name(),
            "/usr/bin/python3",
            "-c",
            TCP_SERVER,
            server_addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let cl = client.exec(&[
        "/usr/bin/python3",
        "-c",
        TCP_CLIENT,
        server_addr,
        &bytes.to_string(),
    ])?;
    let srv = srv.wait_with_output()?;
    let server_line = String::from_utf8_lossy(&srv.stdout).trim().to_owned();
    let client_line = String::from_utf8_lossy(&cl.stdout).trim().to_owned();
    let (received, server_hash) = server_line.split_once(' ').with_context(|| {
        format!(
            "TCP server said {server_line:?}: {}",
            String::from_utf8_lossy(&srv.stderr)
        )
    })?;
    let mut client_words = client_line.split_whitespace();
    let _sent = client_words.next();
    let client_hash = client_words.next().unwrap_or_default();
    let seconds: f64 = client_words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    Ok((received.parse()?, server_hash == client_hash, seconds))
}
