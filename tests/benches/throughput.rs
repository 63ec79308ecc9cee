//! Zero-loss throughput (RFC 2544 style) and CPU time per forwarded packet: forwarder against
//! a kernel-parts reference gateway built in the same topology, tagged 64-byte and 1400-byte
//! IPv4 frames, IDC → VPC and VPC → IDC.
//!
//! Each gateway gets three namespaces of its own: the customer side (`c0`), the gateway (its
//! connection port and underlay port), the VPC side (`v0`). Forwarder is the `forwarder agent`
//! binary under test with DESIGN's static VIF (VLAN 100) and attachment (VNI 1001). The
//! reference is what Linux offers without forwarder: a VLAN pop on the connection port's TC
//! ingress and a push on its egress, kernel routing, the kernel's VXLAN device. (This kernel
//! has no `act_vlan` and no 802.1Q module, so pop and push are two-helper cls_bpf programs
//! of the test object, `ref_vlan_pop` and `ref_vlan_push`: `bpf_skb_vlan_pop`/`_push` are the
//! functions `act_vlan` calls.) A third gateway is the floor: `xdp_redirect_floor` on both
//! ports, every frame out of the other port unchanged; it gets the overload and CPU trials
//! only, to price forwarder's path against the cheapest XDP forwarding between the same ports.
//!
//! Generator ([`Generator`]): a few frames circulate between the two ends of a veth pair in
//! XDP; each pass is a time slot, and a frame whose time has come is counted and a copy of it
//! redirected out of `c0` or `v0`. So the stream is paced frame by frame and the frames enter
//! the gateway's port as a NIC's would, without a socket or an skb on the sending side. (It
//! replaced BPF_PROG_TEST_RUN with live frames, which kernel 6.18.44-fc-v1300 refuses with
//! EPERM.) It runs on CPU 0. Sink: an XDP program on `c0` and `v0` that counts and drops
//! the forwarded frames and answers (or passes) ARP. Every port's NAPI is threaded at
//! SCHED_FIFO: the gateway's two ports on CPU 1, the sinks' on CPU 0; so everything the
//! gateway does per packet (forwarder's XDP, or the kernel's receive, routing, TC and VXLAN)
//! runs on CPU 1 and nothing else of the bench does.
//!
//! Zero-loss rate: a binary search on the offered rate for ≤ 0.1 % loss (sent by the generator
//! minus counted at the sink), trials of [`TRIAL`]; CPU per packet: CPU 1's system + irq +
//! softirq time over a trial at one rate that both gateways carry without loss, minus the same
//! window with no traffic, divided by the frames forwarded. Rounds alternate the gateways.
//!
//! Environment: `FORWARDER_BIN` (required), `FORWARDER_BENCH_THROUGHPUT_ROUNDS` (5),
//! `FORWARDER_BENCH_QUICK` (set: 1 round, 1 s trials, a coarser search). Prints a Markdown
//! section on stdout (BENCHMARKS.md), progress on stderr. Needs root and 2 CPUs.

use std::{
    cell::RefCell,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, TcError},
    },
};
use etherparse::{PacketBuilder, VlanId};
use forwarder_test_ebpf::{MAP_SINK_COUNTERS, PROG_SINK, sink_counter};
use forwarder_tests::{
    NetNs, RawSender,
    bench::{kill_agent, private_agent, spawn_agent},
    customer::{SHIM_OBJECT, interface_mac},
    fixture::{Fixture, Vif},
    median_min_max, per_cpu_sums, require_root,
    topology::{TempDir, cli_json, sh, wait_for},
    veth,
};

/// Loss allowed at the zero-loss rate (RFC 2544 asks for none; 0.1 % forgives a frame lost to
/// the shared machine in a trial of millions).
const MAX_LOSS: f64 = 0.001;
/// Frame sizes on the customer port (tagged, without FCS).
const SIZES: [usize; 2] = [64, 1400];
/// The rate of the CPU-time trials, frames per second.
const CPU_RATE: f64 = 150_000.0;
const VNI: u32 = 1001;
/// The MAC of the VPC's side of the VXLAN segment (inner destination of VPC → IDC frames).
const VPC_GW_MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 0xfe];
/// The attachment's `router_mac` (Fixture): the VPC host's inner MAC.
const VPC_HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 0x01];
/// The client router's MAC on VLAN 100, as the sink's ARP responder answers.
const CLIENT_MAC: [u8; 6] = forwarder_test_ebpf::arp_reply_mac(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    Forwarder,
    Kernel,
    /// The floor: a bare XDP redirect between the same two ports, frames left unchanged.
    Floor,
}

impl Gateway {
    fn name(self) -> &'static str {
        match self {
            Self::Forwarder => "forwarder",
            Self::Kernel => "kernel reference",
            Self::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Tagged frames into the connection port, VXLAN out of the underlay.
    IdcToVpc,
    /// VXLAN into the underlay port, tagged frames out of the connection port.
    VpcToIdc,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::IdcToVpc => "IDC → VPC",
            Self::VpcToIdc => "VPC → IDC",
        }
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::IdcToVpc, Direction::VpcToIdc];

struct Knobs {
    rounds: usize,
    trial: Duration,
    steps: usize,
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `sched_setaffinity` of `tid` (0: the calling thread) to one CPU.
fn pin(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    ensure!(
        rc == 0,
        "sched_setaffinity({tid}, CPU {cpu}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Real-time priority of every NAPI thread of the bench (gateways' and sinks'): a veth ring
/// holds 256 frames, so a NAPI thread that waits behind the generator (or anything else on
/// its CPU) for a fraction of a millisecond loses frames that no gateway could have saved.
const NAPI_PRIORITY: i32 = 50;

/// `gro_flush_timeout` of the bench's ports: 20 µs, within the range of NICs' receive
/// interrupt moderation (`rx-usecs`). Without it a NAPI thread that keeps up wakes once per
/// frame: the CPU per frame at a moderate rate measures wake-ups (2.2–2.6 µs for forwarder at
/// 150 kpps, against 250–330 ns per frame under load), and each wake-up on the other CPU is
/// an interprocessor interrupt, which on this VM stalls long enough to overrun a ring.
const COALESCE_NS: u32 = 20_000;

/// Interrupt moderation, [`COALESCE_NS`], on the gateway's two ports and on the sinks' (a
/// NIC's transmit does not wake a thread on another CPU per frame, and a sink woken per frame
/// bills that wake-up, about 1 µs, to the gateway's CPU), for every trial.
fn moderation(side: &Side) -> Result<()> {
    let (timeout, defer) = (COALESCE_NS, 2);
    let ports = [
        (&side.gw, side.ports[0]),
        (&side.gw, side.ports[1]),
        (&side.cust, "c0"),
        (&side.vpc, "v0"),
    ];
    for (ns, port) in ports {
        sh(
            ns,
            &format!(
                "echo {timeout} > /sys/class/net/{port}/gro_flush_timeout \
                 && echo {defer} > /sys/class/net/{port}/napi_defer_hard_irqs"
            ),
        )?;
    }
    Ok(())
}

/// Turns on GRO (which gives a veth its NAPI when no XDP program does) and threaded NAPI on
/// `ifname` in `ns`, and pins its NAPI threads to `cpu`, at SCHED_FIFO [`NAPI_PRIORITY`] if
/// `fifo`. (Another namespace's NAPI threads of an interface of the same name are pinned
/// too: the bench gives same-named interfaces the same CPU and priority.)
fn threaded_napi(ns: &NetNs, ifname: &str, cpu: usize, fifo: bool) -> Result<()> {
    sh(
        ns,
        &format!(
            "ethtool -K {ifname} gro on >/dev/null && echo 1 > /sys/class/net/{ifname}/threaded"
        ),
    )?;

    let prefix = format!("napi/{ifname}-");
    let mut found = 0;
    let started = Instant::now();
    while found == 0 && started.elapsed() < Duration::from_secs(5) {
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(&prefix) {
                pin(pid, cpu)?;
                found += 1;
                if !fifo {
                    continue;
                }
                let param = libc::sched_param {
                    sched_priority: NAPI_PRIORITY,
                };
                // SAFETY: `param` is a valid sched_param.
                let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
                ensure!(
                    rc == 0,
                    "SCHED_FIFO for {comm}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if found == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    ensure!(found > 0, "no NAPI thread for {ifname} in {}", ns.name());
    Ok(())
}

/// The sink attached to `ifname` in `ns`.
struct Sink {
    ebpf: Ebpf,
    ns: String,
    ifname: String,
}

impl Sink {
    fn attach(ns: &NetNs, ifname: &str) -> Result<Self> {
        let name = ifname.to_owned();
        let ebpf = ns.enter(move || {
            let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the test object")?;
            let prog: &mut Xdp = ebpf.program_mut(PROG_SINK).context(PROG_SINK)?.try_into()?;
            prog.load()?;
            prog.attach(&name, XdpMode::Driver)
                .with_context(|| format!("attaching {PROG_SINK} to {name}"))?;
            Ok(ebpf)
        })?;
        Ok(Self {
            ebpf,
            ns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
        })
    }

    fn counters(&self) -> Result<[u64; sink_counter::COUNT as usize]> {
        per_cpu_sums(&self.ebpf, MAP_SINK_COUNTERS, &sink_counter::NAMES)
            .with_context(|| format!("the sink's counters on {} in {}", self.ifname, self.ns))
    }
}

/// The generator: a loop of frames between the two ends of a veth pair in the sending
/// namespace, `g0` (the test object's `xdp_loop_bounce`) and `g1` (`xdp_loop_gen`), which
/// sends a copy out of the port toward the gateway each time a frame is due and counts it in
/// `GEN_PACE[2]`. The copies reach the gateway's port as an XDP redirect, as a NIC driver's
/// frames do: as `xdp_frame`s, with no skb until the gateway's side builds one.
struct Generator {
    _ebpf: Ebpf,
    pace: RefCell<Array<MapData, u64>>,
    /// An AF_PACKET socket on `g0`: the frames that start the loop.
    seeder: RefCell<RawSender>,
}

/// Frames circulating in the loop: enough for NAPI batches of a useful size (unpaced into a
/// bare sink, 64 make 3.2 Mpps where 8 make 1.6), few against a veth ring's 256.
const LOOP_FRAMES: usize = 64;

impl Generator {
    fn new(ns: &NetNs, ifname: &str) -> Result<Self> {
        sh(
            ns,
            "ip link add g0 type veth peer name g1 && ip link set g0 up && ip link set g1 up",
        )?;
        let name = ifname.to_owned();
        let (mut ebpf, seeder) = ns.enter(move || {
            let port = forwarder_tests::if_index(&name)?;
            let g1 = forwarder_tests::if_index("g1")?;
            let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the test object")?;
            // Device map entries are looked up in the namespace of the writer: write here.
            let mut ports = DevMapHash::try_from(ebpf.map_mut("LOOP_PORTS").context("map")?)?;
            ports.insert(port, port, None, 0)?;
            ports.insert(g1, g1, None, 0)?;
            for (program, dev) in [("xdp_loop_gen", "g1"), ("xdp_loop_bounce", "g0")] {
                let prog: &mut Xdp = ebpf.program_mut(program).context(program)?.try_into()?;
                prog.load()?;
                prog.attach(dev, XdpMode::Driver)
                    .with_context(|| format!("attaching {program} to {dev}"))?;
            }
            Ok((ebpf, RawSender::open("g0")?))
        })?;
        // The loop runs on CPU 0 at normal priority: below the sinks' NAPI threads.
        threaded_napi(ns, "g0", 0, false)?;
        threaded_napi(ns, "g1", 0, false)?;
        let pace = Array::try_from(ebpf.take_map("GEN_PACE").context("GEN_PACE")?)?;
        Ok(Self {
            _ebpf: ebpf,
            pace: RefCell::new(pace),
            seeder: RefCell::new(seeder),
        })
    }

    /// Sends `frame` at `rate` frames/s (`None`: as fast as it can) for `duration`; returns
    /// (frames sent, seconds taken).
    fn send(&self, frame: &[u8], rate: Option<f64>, duration: Duration) -> Result<(u64, f64)> {
        let mut pace = self.pace.borrow_mut();
        pace.set(0, rate.map_or(0, |r| (1e9 / r) as u64), 0)?;
        pace.set(1, 0, 0)?;
        pace.set(3, 1, 0)?;
        let sent_before = pace.get(&2, 0)?;
        let started = Instant::now();
        let mut seeder = self.seeder.borrow_mut();
        for _ in 0..LOOP_FRAMES {
            seeder.send(frame)?;
        }
        std::thread::sleep(duration);
        pace.set(3, 0, 0)?;
        let seconds = started.elapsed().as_secs_f64();
        // The loop empties within microseconds, and nothing is counted once it stops.
        std::thread::sleep(Duration::from_millis(10));
        let sent = pace.get(&2, 0)? - sent_before;
        Ok((sent, seconds))
    }
}

/// One gateway with its two neighbours, generators and sinks.
struct Side {
    gateway: Gateway,
    /// The gateway's connection port and underlay port.
    ports: [&'static str; 2],
    cust: NetNs,
    gw: NetNs,
    vpc: NetNs,
    agent: Option<(Child, TempDir, PathBuf)>,
    /// The reference gateway's VLAN pop and push (TC programs), or the floor's redirects:
    /// attached while they live.
    _programs: Vec<Ebpf>,
    /// Sinks on c0 (customer side) and v0 (VPC side).
    cust_sink: Sink,
    vpc_sink: Sink,
    cust_gen: Generator,
    vpc_gen: Generator,
    /// Destination MACs: the VIF's (or the connection port's) and the underlay port's.
    port_mac: [u8; 6],
    underlay_mac: [u8; 6],
    v0_mac: [u8; 6],
}

impl Side {
    /// A gateway whose ports are set up, with its sinks (on `c0` and `v0`), its generators
    /// and their NAPI layout: the gateway's two ports on CPU 1, the sinks' and the
    /// generators' on CPU 0. Customer frames go to `port_mac`, or to the connection port's
    /// own MAC.
    fn assemble(
        gateway: Gateway,
        ports: [&'static str; 2],
        (cust, gw, vpc): (NetNs, NetNs, NetNs),
        [cust_sink, vpc_sink]: [Sink; 2],
        agent: Option<(Child, TempDir, PathBuf)>,
        programs: Vec<Ebpf>,
        port_mac: Option<[u8; 6]>,
    ) -> Result<Self> {
        let side = Self {
            gateway,
            ports,
            port_mac: match port_mac {
                Some(mac) => mac,
                None => interface_mac(&gw, ports[0])?,
            },
            underlay_mac: interface_mac(&gw, ports[1])?,
            v0_mac: interface_mac(&vpc, "v0")?,
            cust_gen: Generator::new(&cust, "c0")?,
            vpc_gen: Generator::new(&vpc, "v0")?,
            cust,
            gw,
            vpc,
            agent,
            _programs: programs,
            cust_sink,
            vpc_sink,
        };
        threaded_napi(&side.gw, ports[0], 1, true)?;
        threaded_napi(&side.gw, ports[1], 1, true)?;
        threaded_napi(&side.cust, "c0", 0, true)?;
        threaded_napi(&side.vpc, "v0", 0, true)?;
        Ok(side)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some((mut child, _, pin_dir)) = self.agent.take() {
            let tag = pin_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            kill_agent(&mut child, &tag, &["vif-100"], &pin_dir);
        }
    }
}

fn namespaces(short: &str, port: &str, underlay: &str) -> Result<(NetNs, NetNs, NetNs)> {
    let cust = NetNs::new(&format!("{short}cust"))?;
    let gw = NetNs::new(&format!("{short}gw"))?;
    let vpc = NetNs::new(&format!("{short}vpc"))?;
    veth(&gw, port, &cust, "c0")?;
    veth(&gw, underlay, &vpc, "v0")?;
    sh(&vpc, "ip addr add 172.31.0.2/24 dev v0")?;
    sh(&gw, &format!("ip addr add 172.31.0.1/24 dev {underlay}"))?;
    Ok((cust, gw, vpc))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn forwarder_side(bin: &Path) -> Result<Side> {
    let (cust, gw, vpc) = namespaces("tpf", "hc1", "ul0")?;
    let v0_mac = interface_mac(&vpc, "v0")?;
    // The sink drops what the VTEP would answer ARP for only after the first frames: keep the
    // underlay neighbour fixed so it never expires under the flood (both gateways alike).
    sh(
        &gw,
        &format!(
            "ip neigh replace 172.31.0.2 lladdr {} dev ul0 nud permanent",
            mac_text(v0_mac)
        ),
    )?;
    let cust_sink = Sink::attach(&cust, "c0")?;
    let vpc_sink = Sink::attach(&vpc, "v0")?;
    let dir = TempDir::new("throughput")?;
    let tag = format!("tp{}", std::process::id());
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let socket = dir.0.join("sock");
    let fixture = private_agent(Fixture::design("10.0.1.0/24"), &dir.0, &pin_dir, &tag)
        .vif(
            Vif::static_routed("vif-100", "hc-1", 100, "bgw-1")
                .peer("169.254.10.2", "169.254.10.1"),
        )
        .static_route("bgw-1", "192.168.50.0/24", "vif-100");
    let config = dir.0.join("forwarder.toml");
    std::fs::write(&config, fixture.toml())?;
    let log = std::fs::File::create(dir.0.join("agent.log"))?;
    let child = spawn_agent(bin, &gw, &config, log.into())?;
    let mut side_agent = Some((child, dir, pin_dir));
    let ready = wait_for(Duration::from_secs(30), || {
        let vif = cli_json(bin, &socket, &["vif", "show", "vif-100"]).ok();
        let status = cli_json(bin, &socket, &["status"]).ok();
        vif.is_some_and(|v| v["state"] == "available")
            && status.is_some_and(|s| s["attachments"][0]["underlay"] == "resolved")
    });
    if !ready {
        let (mut child, dir, pin_dir) = side_agent.take().expect("agent");
        kill_agent(&mut child, &tag, &["vif-100"], &pin_dir);
        bail!(
            "the agent never had vif-100 available with the underlay resolved; its log:\n{}",
            std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default()
        );
    }
    let vif = cli_json(bin, &socket, &["vif", "show", "vif-100"])?;
    let port_mac =
        forwarder_tests::customer::parse_mac(vif["mac"].as_str().context("vif show: mac")?)?;
    Side::assemble(
        Gateway::Forwarder,
        ["hc1", "ul0"],
        (cust, gw, vpc),
        [cust_sink, vpc_sink],
        side_agent,
        Vec::new(),
        Some(port_mac),
    )
}

fn kernel_side() -> Result<Side> {
    let (cust, gw, vpc) = namespaces("tpk", "khc1", "kul0")?;
    let v0_mac = interface_mac(&vpc, "v0")?;
    sh(
        &gw,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
             && ip addr add 169.254.10.1/30 dev khc1 && ethtool -K khc1 txvlan off >/dev/null \
             && ip route add 192.168.50.0/24 via 169.254.10.2 dev khc1 \
             && ip neigh replace 169.254.10.2 lladdr {} dev khc1 nud permanent \
             && ip neigh replace 172.31.0.2 lladdr {} dev kul0 nud permanent \
             && ip link add vx0 address {} type vxlan id {VNI} local 172.31.0.1 remote 172.31.0.2 dstport 4789 dev kul0 \
             && ip link set vx0 up && ip route add 10.0.1.0/24 dev vx0 \
             && ip neigh replace 10.0.1.10 lladdr {} dev vx0 nud permanent",
            mac_text(CLIENT_MAC),
            mac_text(v0_mac),
            mac_text(VPC_GW_MAC),
            mac_text(VPC_HOST_MAC),
        ),
    )?;
    let vlan_tc = gw.enter(|| {
        let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the test object")?;
        let mut vlan: Array<_, u32> =
            Array::try_from(ebpf.map_mut("REF_VLAN").context("REF_VLAN")?)?;
        vlan.set(0, 100, 0)?;
        match tc::qdisc_add_clsact("khc1") {
            Ok(()) | Err(TcError::AlreadyAttached) => {}
            Err(e) => return Err(e).context("adding clsact to khc1"),
        }
        for (name, hook) in [
            ("ref_vlan_pop", TcAttachType::Ingress),
            ("ref_vlan_push", TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            prog.load()?;
            prog.attach("khc1", hook)
                .with_context(|| format!("attaching {name} to khc1"))?;
        }
        Ok(ebpf)
    })?;
    let sinks = [Sink::attach(&cust, "c0")?, Sink::attach(&vpc, "v0")?];
    Side::assemble(
        Gateway::Kernel,
        ["khc1", "kul0"],
        (cust, gw, vpc),
        sinks,
        None,
        vec![vlan_tc],
        None,
    )
}

/// The floor: the test object's `xdp_redirect_floor` on both ports, each sending every frame
/// unchanged out of the other, through a device map as forwarder's frames are; the cheapest
/// forwarding XDP can do between these ports.
fn floor_side() -> Result<Side> {
    let (cust, gw, vpc) = namespaces("tpr", "rhc1", "rul0")?;
    let programs = gw.enter(|| {
        let mut programs = Vec::new();
        for (from, to) in [("rhc1", "rul0"), ("rul0", "rhc1")] {
            let ifindex = forwarder_tests::if_index(to)?;
            let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the test object")?;
            // Device map entries are looked up in the namespace of the writer: write here.
            let mut ports = DevMapHash::try_from(ebpf.map_mut("FLOOR_PORTS").context("map")?)?;
            ports.insert(ifindex, ifindex, None, 0)?;
            let mut out: Array<_, u32> =
                Array::try_from(ebpf.map_mut("FLOOR_TO").context("FLOOR_TO")?)?;
            out.set(0, ifindex, 0)?;
            let prog: &mut Xdp = ebpf
                .program_mut("xdp_redirect_floor")
                .context("xdp_redirect_floor")?
                .try_into()?;
            prog.load()?;
            prog.attach(from, XdpMode::Driver)
                .with_context(|| format!("attaching xdp_redirect_floor to {from}"))?;
            programs.push(ebpf);
        }
        Ok(programs)
    })?;
    let sinks = [Sink::attach(&cust, "c0")?, Sink::attach(&vpc, "v0")?];
    Side::assemble(
        Gateway::Floor,
        ["rhc1", "rul0"],
        (cust, gw, vpc),
        sinks,
        None,
        programs,
        None,
    )
}

/// What the ports and the agent counted, for a bench that could not start.
fn diagnostics(side: &Side, bin: &Path) -> String {
    let mut out = String::new();
    for (ns, cmd) in [
        (
            &side.gw,
            "ip -s link; ethtool -S hc1 2>/dev/null; ethtool -S khc1 2>/dev/null; ethtool -S ul0 2>/dev/null; ethtool -S kul0 2>/dev/null; nstat -az 2>/dev/null | grep -v ' 0 '",
        ),
        (&side.cust, "ethtool -S c0"),
        (&side.vpc, "ethtool -S v0"),
    ] {
        out.push_str(&format!(
            "\n--- {}: {cmd}\n{}",
            ns.name(),
            sh(ns, cmd).unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    if let Some((_, dir, _)) = &side.agent {
        out.push_str(&format!(
            "\n--- forwarder stats\n{}",
            cli_json(bin, &dir.0.join("sock"), &["stats"])
                .map(|v| v.to_string())
                .unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    out
}

/// A tagged IDC → VPC frame of `size` bytes toward the gateway's port MAC.
fn customer_frame(side: &Side, size: usize) -> Result<Vec<u8>> {
    let payload = vec![0x5a; size - 14 - 4 - 20 - 8];
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, side.port_mac)
        .single_vlan(VlanId::try_new(100)?)
        .ipv4([192, 168, 50, 10], [10, 0, 1, 10], 64)
        .udp(1024, 5001);
    let mut frame = Vec::with_capacity(size);
    builder.write(&mut frame, &payload)?;
    ensure!(
        frame.len() == size,
        "built {} bytes, not {size}",
        frame.len()
    );
    Ok(frame)
}

/// A VXLAN frame into the underlay port whose inner packet leaves the connection port as a
/// tagged frame of `size` bytes.
fn underlay_frame(side: &Side, size: usize) -> Result<Vec<u8>> {
    let payload = vec![0x5a; size - 14 - 4 - 20 - 8];
    let inner_builder = PacketBuilder::ethernet2(VPC_HOST_MAC, VPC_GW_MAC)
        .ipv4([10, 0, 1, 10], [192, 168, 50, 10], 64)
        .udp(5001, 1024);
    let mut inner = Vec::new();
    inner_builder.write(&mut inner, &payload)?;
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&(VNI << 8).to_be_bytes());
    vxlan.extend_from_slice(&inner);
    let outer = PacketBuilder::ethernet2(side.v0_mac, side.underlay_mac)
        .ipv4([172, 31, 0, 2], [172, 31, 0, 1], 64)
        .udp(49152, 4789);
    let mut frame = Vec::new();
    outer.write(&mut frame, &vxlan)?;
    ensure!(frame.len() == size + 46, "built {} bytes", frame.len());
    Ok(frame)
}

thread_local! {
    /// CPU 1's steal time over each trial, as a share of the trial.
    static STEAL: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// One trial's outcome.
#[derive(Clone, Copy, Debug)]
struct Trial {
    offered: f64,
    seconds: f64,
    sent: u64,
    received: u64,
    /// CPU 1's busy seconds over the trial (system + irq + softirq).
    cpu1: f64,
}

impl Trial {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    fn passed(&self) -> bool {
        self.loss() <= MAX_LOSS
    }

    /// Frames per second that reached the sink.
    fn delivered(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    /// CPU 1's busy time per frame delivered, in ns.
    fn cpu_ns(&self, idle: f64) -> f64 {
        (self.cpu1 - idle).max(0.0) * 1e9 / self.received.max(1) as f64
    }
}

/// CPU 1's system + irq + softirq time so far, in seconds.
fn cpu1_busy() -> Result<f64> {
    Ok(cpu1_times()?.0)
}

/// CPU 1's (system + irq + softirq, steal) time so far, in seconds: steal is time the
/// hypervisor gave the virtual CPU's host CPU to something else.
fn cpu1_times() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu1 "))
        .context("no cpu1 in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let ticks = fields[2] + fields[5] + fields[6];
    let steal = fields.get(7).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks as f64 / hz, steal as f64 / hz))
}

/// The frames of the trial's kind counted at the far sink: VXLAN toward the VPC and tagged
/// frames toward the IDC, or, through the floor, the frames as they were sent.
fn received(side: &Side, direction: Direction) -> Result<u64> {
    let floor = side.gateway == Gateway::Floor;
    Ok(match direction {
        Direction::IdcToVpc => {
            let kind = if floor {
                sink_counter::TAGGED
            } else {
                sink_counter::VXLAN
            };
            side.vpc_sink.counters()?[kind as usize]
        }
        Direction::VpcToIdc => {
            let kind = if floor {
                sink_counter::VXLAN
            } else {
                sink_counter::TAGGED
            };
            side.cust_sink.counters()?[kind as usize]
        }
    })
}

fn trial(
    side: &Side,
    direction: Direction,
    frame: &[u8],
    rate: Option<f64>,
    duration: Duration,
) -> Result<Trial> {
    let generator = match direction {
        Direction::IdcToVpc => &side.cust_gen,
        Direction::VpcToIdc => &side.vpc_gen,
    };
    let before = received(side, direction)?;
    let (cpu_before, steal_before) = cpu1_times()?;
    // From this thread: the generator's maps and socket already belong to its namespace.
    let (sent, seconds) = generator.send(frame, rate, duration)?;
    // Let the rings drain before counting.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu_after, steal_after) = cpu1_times()?;
    let cpu1 = cpu_after - cpu_before;
    let received = received(side, direction)? - before;
    STEAL.with(|s| {
        s.borrow_mut()
            .push((steal_after - steal_before) / (seconds + 0.2))
    });
    Ok(Trial {
        offered: sent as f64 / seconds,
        seconds,
        sent,
        received,
        cpu1,
    })
}

/// The highest offered rate with ≤ 0.1 % loss: an overload trial first (as fast as the
/// generator goes), then a binary search below the rate delivered under overload.
fn zero_loss(
    side: &Side,
    direction: Direction,
    frame: &[u8],
    knobs: &Knobs,
) -> Result<(f64, Trial)> {
    let overload = trial(side, direction, frame, None, knobs.trial)?;
    if overload.passed() {
        // The generator is the limit: report what it offered.
        return Ok((overload.offered, overload));
    }
    let delivered = overload.delivered();
    let (mut lo, mut hi) = (0.0f64, (delivered * 1.2).min(overload.offered));
    for _ in 0..knobs.steps {
        let rate = (lo + hi) / 2.0;
        let t = trial(side, direction, frame, Some(rate), knobs.trial)?;
        if t.passed() {
            lo = t.offered.min(rate);
        } else {
            hi = rate;
        }
    }
    Ok((lo, overload))
}

/// One configuration's results over the rounds.
#[derive(Default)]
struct Results {
    zero_loss: Vec<f64>,
    overload_offered: Vec<f64>,
    overload_delivered: Vec<f64>,
    overload_cpu_ns: Vec<f64>,
    cpu_ns: Vec<f64>,
    cpu_loss: Vec<f64>,
}

fn bench() -> Result<()> {
    require_root()?;
    ensure!(
        std::thread::available_parallelism()?.get() >= 2,
        "the throughput bench needs 2 CPUs (generator and sinks on CPU 0, the gateway on CPU 1)"
    );
    let bin = PathBuf::from(std::env::var("FORWARDER_BIN").context("FORWARDER_BIN is not set")?);
    let quick = std::env::var_os("FORWARDER_BENCH_QUICK").is_some();
    let knobs = Knobs {
        rounds: match std::env::var("FORWARDER_BENCH_THROUGHPUT_ROUNDS") {
            Ok(v) => v.parse().context("FORWARDER_BENCH_THROUGHPUT_ROUNDS")?,
            Err(_) if quick => 1,
            Err(_) => 5,
        },
        trial: if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        },
        steps: if quick { 4 } else { 5 },
    };
    // This thread only sleeps through a trial; it stays off the gateway's CPU, and so does the
    // agent it spawns (which inherits the affinity and does nothing per packet).
    pin(0, 0)?;
    let sides = [forwarder_side(&bin)?, kernel_side()?, floor_side()?];
    for side in &sides {
        moderation(side)?;
    }
    // Both paths carry a first few frames end to end, or nothing below would mean anything.
    for side in &sides {
        for size in SIZES {
            for direction in DIRECTIONS {
                let frame = match direction {
                    Direction::IdcToVpc => customer_frame(side, size)?,
                    Direction::VpcToIdc => underlay_frame(side, size)?,
                };
                let t = trial(
                    side,
                    direction,
                    &frame,
                    Some(10_000.0),
                    Duration::from_millis(300),
                )?;
                ensure!(
                    t.received == t.sent,
                    "{} {} {size} B: {} of {} frames arrived at 10k/s (sinks: customer side {:?}, VPC side {:?}, slots {:?}){}",
                    side.gateway.name(),
                    direction.name(),
                    t.received,
                    t.sent,
                    side.cust_sink.counters()?,
                    side.vpc_sink.counters()?,
                    sink_counter::NAMES,
                    diagnostics(side, &bin),
                );
            }
        }
    }
    let mut cells: Vec<Vec<Vec<Results>>> = (0..sides.len())
        .map(|_| {
            (0..SIZES.len())
                .map(|_| (0..2).map(|_| Results::default()).collect())
                .collect()
        })
        .collect();
    let mut idle_cpu = Vec::new();
    for round in 0..knobs.rounds {
        // Rotate which gateway goes first.
        let order: Vec<usize> = (0..sides.len())
            .map(|g| (g + round) % sides.len())
            .collect();
        for (s, size) in SIZES.iter().enumerate() {
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                for &g in &order {
                    let side = &sides[g];
                    let frame = match direction {
                        Direction::IdcToVpc => customer_frame(side, *size)?,
                        Direction::VpcToIdc => underlay_frame(side, *size)?,
                    };
                    // The floor's zero-loss rate would say nothing the overload trial does not.
                    let (rate, overload) = if side.gateway == Gateway::Floor {
                        let overload = trial(side, *direction, &frame, None, knobs.trial)?;
                        (None, overload)
                    } else {
                        let (rate, overload) = zero_loss(side, *direction, &frame, &knobs)?;
                        (Some(rate), overload)
                    };
                    let cpu = trial(side, *direction, &frame, Some(CPU_RATE), knobs.trial)?;
                    // CPU 1 without traffic, for 1 s, scaled to a trial (and its drain).
                    let idle_before = cpu1_busy()?;
                    std::thread::sleep(Duration::from_secs(1));
                    let idle = (cpu1_busy()? - idle_before) * (cpu.seconds + 0.2);
                    idle_cpu.push(idle);
                    let cpu_ns = cpu.cpu_ns(idle);
                    let overload_idle = idle / (cpu.seconds + 0.2) * (overload.seconds + 0.2);
                    let overload_ns = overload.cpu_ns(overload_idle);
                    eprintln!(
                        "throughput bench: round {} {} {size} B {}: zero-loss {} kpps; overload offered {:.0} delivered {:.0} kpps, CPU {:.0} ns/packet; CPU {:.0} ns/packet at {:.0} kpps (loss {:.4} %, idle CPU {:.3} s)",
                        round + 1,
                        side.gateway.name(),
                        direction.name(),
                        rate.map_or("-".to_owned(), |r| format!("{:.0}", r / 1e3)),
                        overload.offered / 1e3,
                        overload.delivered() / 1e3,
                        overload_ns,
                        cpu_ns,
                        cpu.offered / 1e3,
                        cpu.loss() * 100.0,
                        idle,
                    );
                    let cell = &mut cells[g][s][d];
                    cell.zero_loss.extend(rate);
                    cell.overload_offered.push(overload.offered);
                    cell.overload_delivered.push(overload.delivered());
                    cell.overload_cpu_ns.push(overload_ns);
                    cell.cpu_ns.push(cpu_ns);
                    cell.cpu_loss.push(cpu.loss());
                }
            }
        }
    }
    print!("{}", report(&cells, &knobs, &idle_cpu)?);
    Ok(())
}

fn kpps(v: &[f64]) -> Vec<f64> {
    v.iter().map(|r| r / 1e3).collect()
}

/// Per round, one gateway's figure over another's.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// A table's rows, one per frame size and direction: the cells that `row` makes of the
/// results of forwarder, the kernel reference and the floor.
fn rows(
    out: &mut String,
    cells: &[Vec<Vec<Results>>],
    row: impl Fn(&Results, &Results, &Results) -> Vec<String>,
) -> Result<()> {
    for (s, size) in SIZES.iter().enumerate() {
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            let row = row(&cells[0][s][d], &cells[1][s][d], &cells[2][s][d]);
            writeln!(
                out,
                "| {size} B | {} | {} |",
                direction.name(),
                row.join(" | ")
            )?;
        }
    }
    Ok(())
}

fn report(cells: &[Vec<Vec<Results>>], knobs: &Knobs, idle_cpu: &[f64]) -> Result<String> {
    let mut out = String::from(
        "## Throughput: forwarder against the kernel's own parts (zero-loss rate, CPU per packet)\n\n",
    );
    out.push_str("| frame | direction | zero-loss kpps, forwarder | zero-loss kpps, kernel reference | forwarder / kernel | CPU ns/packet, forwarder | CPU ns/packet, kernel | kernel / forwarder |\n|---:|---|---:|---:|---:|---:|---:|---:|\n");
    rows(&mut out, cells, |f, k, _| {
        vec![
            median_min_max(kpps(&f.zero_loss), 0),
            median_min_max(kpps(&k.zero_loss), 0),
            median_min_max(ratios(&f.zero_loss, &k.zero_loss), 2),
            median_min_max(f.cpu_ns.clone(), 0),
            median_min_max(k.cpu_ns.clone(), 0),
            median_min_max(ratios(&k.cpu_ns, &f.cpu_ns), 2),
        ]
    })?;
    out.push_str("\nUnder overload (the generator as fast as it goes), what each gateway delivered, and CPU 1's time per frame delivered (the gateway's cost per packet with its NAPI batches full):\n\n| frame | direction | offered kpps (forwarder's trials) | delivered kpps, forwarder | offered kpps (kernel's trials) | delivered kpps, kernel | forwarder / kernel | CPU ns/packet, forwarder | CPU ns/packet, kernel | kernel / forwarder |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    rows(&mut out, cells, |f, k, _| {
        vec![
            median_min_max(kpps(&f.overload_offered), 0),
            median_min_max(kpps(&f.overload_delivered), 0),
            median_min_max(kpps(&k.overload_offered), 0),
            median_min_max(kpps(&k.overload_delivered), 0),
            median_min_max(ratios(&f.overload_delivered, &k.overload_delivered), 2),
            median_min_max(f.overload_cpu_ns.clone(), 0),
            median_min_max(k.overload_cpu_ns.clone(), 0),
            median_min_max(ratios(&k.overload_cpu_ns, &f.overload_cpu_ns), 2),
        ]
    })?;
    out.push_str("\nForwarder against the floor, a bare XDP redirect between the same two ports (`xdp_redirect_floor` on both, frames unchanged: the cheapest forwarding XDP can do here), in the same rounds; CPU 1's time per packet at the CPU trials' rate and under overload:\n\n| frame | direction | CPU ns/packet, floor | forwarder / floor | CPU ns/packet under overload, floor | forwarder / floor, under overload | delivered kpps under overload, floor |\n|---:|---|---:|---:|---:|---:|---:|\n");
    rows(&mut out, cells, |f, _, r| {
        vec![
            median_min_max(r.cpu_ns.clone(), 0),
            median_min_max(ratios(&f.cpu_ns, &r.cpu_ns), 2),
            median_min_max(r.overload_cpu_ns.clone(), 0),
            median_min_max(ratios(&f.overload_cpu_ns, &r.overload_cpu_ns), 2),
            median_min_max(kpps(&r.overload_delivered), 0),
        ]
    })?;
    let worst_cpu_loss = cells
        .iter()
        .flatten()
        .flatten()
        .flat_map(|c| c.cpu_loss.iter().copied())
        .fold(0.0f64, f64::max);
    writeln!(
        out,
        "\nMedian (min–max) over {} rounds; each round measures every cell, the three gateways in turn (which goes first rotates). Ratios are taken within a round.\n",
        knobs.rounds
    )?;
    writeln!(
        out,
        "- Zero-loss rate: the highest offered rate with ≤ {} % loss (frames the generator sent minus frames counted at the sink), by binary search: a first trial at overload, then {} trials between 0 and 1.2 × what was delivered under overload; trials of {} s.",
        MAX_LOSS * 100.0,
        knobs.steps,
        knobs.trial.as_secs()
    )?;
    writeln!(
        out,
        "- CPU per packet: CPU 1's system + irq + softirq time (`/proc/stat`) over a {} s trial at {} kpps, with interrupt moderation as in every trial (below), minus CPU 1's time without traffic right after it (1 s, scaled to the trial: median {:.3} s), divided by the frames forwarded; worst loss in those trials {:.3} %.",
        knobs.trial.as_secs(),
        CPU_RATE / 1e3,
        {
            let mut v = idle_cpu.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        },
        worst_cpu_loss * 100.0
    )?;
    let mut steal = STEAL.with(|s| s.borrow().clone());
    steal.sort_by(f64::total_cmp);
    writeln!(
        out,
        "- CPU 1's steal time (`/proc/stat`: the hypervisor ran something else on the host CPU behind it) over the {} trials: median {:.2} %, 90th percentile {:.2} %, max {:.2} % of the trial.",
        steal.len(),
        steal.get(steal.len() / 2).copied().unwrap_or(0.0) * 100.0,
        steal.get(steal.len() * 9 / 10).copied().unwrap_or(0.0) * 100.0,
        steal.last().copied().unwrap_or(0.0) * 100.0,
    )?;
    out.push_str("- Frames: 802.1Q-tagged (VLAN 100) IPv4 UDP of 64 and 1400 bytes on the customer port (without FCS), 192.168.50.10 ↔ 10.0.1.10, one flow; toward the VPC they leave as VXLAN (VNI 1001, 46 bytes more), and VPC → IDC frames enter as that VXLAN.\n");
    out.push_str("- Generator: 64 frames circulate between the two ends of a veth pair on CPU 0 (the test object's `xdp_loop_bounce` sends each back with XDP_TX; `xdp_loop_gen` on the other end treats each pass as a time slot): a frame whose time has come (`bpf_ktime_get_ns`, one interval after the last; at most 32 back to back after a delay, later slots are skipped) is counted and broadcast through a device map, a copy out of the veth facing the gateway's port and the frame back into the loop; the others go straight back. So the stream is paced frame by frame, and it reaches the gateway's port as an XDP redirect, as a NIC driver's frames do (`xdp_frame`s, no skb on the sending side). Unpaced into a bare XDP sink on CPU 1 it offers about 3 Mpps. The offered rate is the frames counted over the trial. The loop's NAPI threads are on CPU 0 at normal priority, below the sinks'.");
    out.push_str(" Sink: an XDP program on the far veth that counts and drops the forwarded frames and answers ARP. Every port's NAPI is threaded at SCHED_FIFO 50: the gateway's two ports pinned to CPU 1, the sinks' to CPU 0; interrupt moderation on all four in every trial (`gro_flush_timeout` 20 µs, `napi_defer_hard_irqs` 2, as a NIC's `rx-usecs`: without it a NAPI thread that keeps up is woken per frame, the CPU figure measures wake-ups, and a sink's wake-ups, about 1 µs each, are billed to the gateway's CPU); so CPU 1 does the gateway's work and nothing else of the bench. A veth ring holds 256 frames: at 1 Mpps a stall of a quarter millisecond anywhere loses frames, so on this shared VM the zero-loss rate is bounded by scheduling jitter as much as by the gateway's cost, and the overload table shows what each gateway can carry. Underlay neighbours are permanent entries in both gateways.\n");
    out.push_str("- Forwarder: the `forwarder agent` binary, DESIGN's static VIF (VLAN 100, 169.254.10.1/30) and attachment (VNI 1001), started with `nsenter`; the underlay next hop resolved by the agent. Kernel reference: the connection port with a TC VLAN pop on ingress and a push of VLAN 100 on egress (cls_bpf programs calling `bpf_skb_vlan_pop`/`bpf_skb_vlan_push`, what `act_vlan` does: this kernel has neither `act_vlan` nor the 802.1Q module), `ip_forward`, a route to the IDC via the client address, a VXLAN device (VNI 1001, same VTEPs) with the VPC route; GRO on both ports (it is what gives a veth without XDP its NAPI).\n");
    Ok(out)
}
