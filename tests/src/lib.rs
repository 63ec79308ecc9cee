//! Helpers for forwarder's integration tests: network namespaces that clean up after
//! themselves, running code inside a namespace, and sending raw frames.
//!
//! Every test here needs root (XDP, BPF maps, namespaces). CI runs as root; run elsewhere, a
//! test stops at its first privileged step with an error that says so.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail, ensure};

pub mod arp;
pub mod bench;
pub mod customer;
pub mod daemons;
pub mod fixture;
pub mod probe;
pub mod speaker;
pub mod topology;
pub use customer::{CustomerRouter, ShimCounters, SubInterface};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message when the test is not running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load XDP programs and \
         create network namespaces); run it through `sudo cargo xtask test`"
    );
    Ok(())
}

/// Runs a command and fails, with its stderr, if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A network namespace named uniquely for this process, deleted (with every link inside it)
/// when dropped, also while unwinding from a failed assertion.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `role` is a short word that shows up in `ip netns list` while the test runs.
    pub fn new(role: &str) -> Result<Self> {
        require_root()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("fwt-{role}-{}-{id}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        // No IPv6 autoconfiguration noise (router solicitations, MLD) in tests that count frames.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Turns IPv6 back on for `interfaces` (and for interfaces made from now on), without
    /// router advertisements or address autoconfiguration.
    pub fn enable_ipv6(&self, interfaces: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["sysctl".to_owned(), "-qw".to_owned()];
        for conf in ["all", "default"].iter().chain(interfaces) {
            args.push(format!("net.ipv6.conf.{conf}.accept_ra=0"));
            args.push(format!("net.ipv6.conf.{conf}.autoconf=0"));
            args.push(format!("net.ipv6.conf.{conf}.disable_ipv6=0"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec(&args)?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> Result<R> + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                    // SAFETY: the fd is valid for the duration of the call; setns only changes
                    // this thread's network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("setns into {}", self.name));
                    }
                    f()
                })
                .join()
                .map_err(|panic| {
                    anyhow::anyhow!("thread in netns {} panicked: {panic:?}", self.name)
                })?
        })
    }

    /// The ifindex of `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let name = ifname.to_owned();
        self.enter(move || if_index(&name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: could not remove netns {}: {e:#}", self.name);
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            "name",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.exec(&["ip", "link", "set", a_if, "up"])?;
    b.exec(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// `if_nametoindex` in the calling thread's namespace.
pub fn if_index(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname).context("interface name contains NUL")?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {ifname}"));
    }
    Ok(index)
}

/// An AF_PACKET socket sending whole frames (Ethernet header included, an inline 802.1Q tag
/// stays inline) out of one interface of the namespace the calling thread is in.
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
    addr: libc::sockaddr_ll,
}

impl RawSender {
    /// Opens the socket on `ifname`, in the calling thread's namespace (the socket keeps it).
    pub fn open(ifname: &str) -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        let ifindex = if_index(ifname)?;
        // SAFETY: plain socket(2) call; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Ok(Self { fd, addr })
    }

    /// Sends `frame` as it is.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sendto(AF_PACKET)");
        }
        ensure!(
            sent as usize == frame.len(),
            "short send: {sent} of {}",
            frame.len()
        );
        Ok(())
    }
}

/// Sends each frame as-is out of `ifname` in `ns`.
pub fn send_frames(ns: &NetNs, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    ns.enter(move || {
        let mut sender = RawSender::open(ifname)?;
        for frame in frames {
            sender.send(frame)?;
        }
        Ok(())
    })
}

/// Sends `frame` out of `ifname` in `ns` over and over, paced to `pps` frames a second, for
/// `duration` (a flood); returns how many were sent. A generator that cannot keep up sends
/// what it can: the caller reports the rate it got.
pub fn flood(
    ns: &NetNs,
    ifname: &str,
    frame: &[u8],
    pps: u64,
    duration: std::time::Duration,
) -> Result<u64> {
    ns.enter(move || {
        let mut sender = RawSender::open(ifname)?;
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= duration {
                return Ok(sent);
            }
            let due = (elapsed.as_nanos() as u64).saturating_mul(pps) / 1_000_000_000;
            if sent >= due {
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
            for _ in 0..(due - sent).min(256) {
                sender.send(frame)?;
                sent += 1;
            }
        }
    })
}

/// Slots `0..count` of a per-CPU `u64` array map of `ebpf`, each summed over all CPUs
/// (`names` label the slots in errors).
pub fn per_cpu_sums<const N: usize>(
    ebpf: &aya::Ebpf,
    map: &str,
    names: &[&str; N],
) -> Result<[u64; N]> {
    let map = ebpf
        .map(map)
        .with_context(|| format!("map {map} missing"))?;
    let counters: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
    let mut sums = [0u64; N];
    for (slot, sum) in sums.iter_mut().enumerate() {
        *sum = counters
            .get(&(slot as u32), 0)
            .with_context(|| format!("slot {}", names[slot]))?
            .iter()
            .sum();
    }
    Ok(sums)
}

/// "median (min–max)" of benchmark figures with `digits` decimals ("—" for none): how the
/// benches report a figure over their rounds.
pub fn median_min_max(mut v: Vec<f64>, digits: usize) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "{median:.digits$} ({:.digits$}–{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}
