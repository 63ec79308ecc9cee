//! The customer-router daemon harness (`forwarder_tests::daemons`) checked against itself:
//! BIRD, FRR and GoBGP peer with each other across a veth between two namespaces,
//!
//! ```text
//!  a: eth0 10.255.0.1/30 (AS 65001) ── b: eth0 10.255.0.2/30 (AS 65002)
//! ```
//!
//! announce, withdraw, shut sessions down, and use TCP MD5.
//!
//! Needs root and the Debian packages bird2, frr and gobgpd.

use std::{
    net::Ipv4Addr,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use forwarder_tests::{
    NetNs,
    daemons::{Kind, PeerSpec, RouterDaemon, poll_until},
    veth,
};
use ipnet::Ipv4Net;

const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const A_ASN: u32 = 65001;
const B_ASN: u32 = 65002;
const TIMEOUT: Duration = Duration::from_secs(15);

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test prefix")
}

/// Two namespaces joined by a veth, `eth0` on both sides.
struct Link {
    a: NetNs,
    b: NetNs,
}

fn link() -> Result<Link> {
    let a = NetNs::new("bgpa")?;
    let b = NetNs::new("bgpb")?;
    veth(&a, "eth0", &b, "eth0")?;
    a.exec(&["ip", "addr", "add", "10.255.0.1/30", "dev", "eth0"])?;
    b.exec(&["ip", "addr", "add", "10.255.0.2/30", "dev", "eth0"])?;
    Ok(Link { a, b })
}

fn peer_a(password: Option<&str>) -> PeerSpec {
    PeerSpec {
        password: password.map(str::to_owned),
        ..PeerSpec::new(A_ADDR, B_ADDR, A_ASN, B_ASN)
    }
}

fn peer_b(password: Option<&str>) -> PeerSpec {
    PeerSpec {
        password: password.map(str::to_owned),
        ..PeerSpec::new(B_ADDR, A_ADDR, B_ASN, A_ASN)
    }
}

/// Waits until `d`'s session with `neighbor` is not Established.
fn wait_down(d: &RouterDaemon<'_>, neighbor: Ipv4Addr) -> Result<()> {
    poll_until(TIMEOUT, || {
        Ok((!d.session_established(neighbor)?).then_some(()))
    })
    .with_context(|| format!("{} session with {neighbor} still up", d.kind()))
}

/// Both sides establish and learn each other's prefix, follow announcements and withdrawals
/// of both sides, and drop the session while either side has it shut down.
fn exchange(ka: Kind, kb: Kind) -> Result<()> {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1}s] {ka}-{kb}: {what}", t0.elapsed().as_secs_f32());
    let link = link()?;
    let a = RouterDaemon::start(ka, &link.a, A_ADDR, &[peer_a(None)], &[net("192.0.2.0/24")])?;
    let b = RouterDaemon::start(
        kb,
        &link.b,
        B_ADDR,
        &[peer_b(None)],
        &[net("198.51.100.0/24")],
    )?;
    step("started");
    a.wait_established(B_ADDR, TIMEOUT)?;
    b.wait_established(A_ADDR, TIMEOUT)?;
    step("established");
    a.wait_received(B_ADDR, &[net("198.51.100.0/24")], TIMEOUT)?;
    b.wait_received(A_ADDR, &[net("192.0.2.0/24")], TIMEOUT)?;
    step("initial routes exchanged");

    // Announce and withdraw on both sides.
    b.announce(&[net("203.0.113.0/24")])?;
    a.wait_received(
        B_ADDR,
        &[net("198.51.100.0/24"), net("203.0.113.0/24")],
        TIMEOUT,
    )?;
    b.withdraw(&[net("198.51.100.0/24")])?;
    a.wait_received(B_ADDR, &[net("203.0.113.0/24")], TIMEOUT)?;
    a.announce(&[net("192.0.2.128/25")])?;
    b.wait_received(
        A_ADDR,
        &[net("192.0.2.0/24"), net("192.0.2.128/25")],
        TIMEOUT,
    )?;
    a.withdraw(&[net("192.0.2.0/24")])?;
    b.wait_received(A_ADDR, &[net("192.0.2.128/25")], TIMEOUT)?;
    ensure!(a.announced()? == [net("192.0.2.128/25")]);
    step("announcements and withdrawals followed");

    // Shut down on a: both sides see it go down, and it stays down.
    a.shutdown_peer(B_ADDR)?;
    wait_down(&b, A_ADDR)?;
    wait_down(&a, B_ADDR)?;
    step("down after a's shutdown");
    // An announcement while shut down (BIRD: a reconfiguration) does not re-enable it, and
    // nothing else does.
    a.announce(&[net("192.0.2.64/26")])?;
    sleep(Duration::from_secs(2));
    ensure!(
        !a.session_established(B_ADDR)? && !b.session_established(A_ADDR)?,
        "the session came back while {ka} had it shut down"
    );
    let a_state = a.session_state(B_ADDR)?;
    let b_error = b.last_error(A_ADDR)?;
    eprintln!("{ka} shut down: {ka} state {a_state:?}; {kb} last error {b_error:?}");
    ensure!(
        !b_error.is_empty(),
        "{kb} recorded no error after {ka} shut the session down"
    );

    a.enable_peer(B_ADDR)?;
    step("a enabled");
    a.wait_established(B_ADDR, TIMEOUT)?;
    b.wait_established(A_ADDR, TIMEOUT)?;
    step("re-established");
    b.wait_received(
        A_ADDR,
        &[net("192.0.2.64/26"), net("192.0.2.128/25")],
        TIMEOUT,
    )?;
    a.wait_received(B_ADDR, &[net("203.0.113.0/24")], TIMEOUT)?;

    // The same from b's side.
    b.shutdown_peer(A_ADDR)?;
    wait_down(&a, B_ADDR)?;
    step("down after b's shutdown");
    let a_error = a.last_error(B_ADDR)?;
    eprintln!("{kb} shut down: {ka} last error {a_error:?}");
    ensure!(
        !a_error.is_empty(),
        "{ka} recorded no error after {kb} shut the session down"
    );
    a.wait_received(B_ADDR, &[], TIMEOUT)?;
    b.enable_peer(A_ADDR)?;
    step("b enabled");
    a.wait_established(B_ADDR, TIMEOUT)?;
    a.wait_received(B_ADDR, &[net("203.0.113.0/24")], TIMEOUT)?;
    step("done");
    Ok(())
}

/// With the same MD5 key on both sides (and a passive), the session comes up and routes flow.
fn md5(ka: Kind, kb: Kind) -> Result<()> {
    let link = link()?;
    let key = "fwt-md5.Key";
    let a = RouterDaemon::start(
        ka,
        &link.a,
        A_ADDR,
        &[peer_a(Some(key)).passive()],
        &[net("192.0.2.0/24")],
    )?;
    let b = RouterDaemon::start(
        kb,
        &link.b,
        B_ADDR,
        &[peer_b(Some(key))],
        &[net("198.51.100.0/24")],
    )?;
    a.wait_established(B_ADDR, TIMEOUT)?;
    b.wait_established(A_ADDR, TIMEOUT)?;
    a.wait_received(B_ADDR, &[net("198.51.100.0/24")], TIMEOUT)?;
    b.wait_received(A_ADDR, &[net("192.0.2.0/24")], TIMEOUT)?;
    Ok(())
}

/// BIRD with one key, the peer with another: never Established.
fn wrong_password(kb: Kind) -> Result<()> {
    let link = link()?;
    let a = RouterDaemon::start(
        Kind::Bird,
        &link.a,
        A_ADDR,
        &[peer_a(Some("right-key"))],
        &[net("192.0.2.0/24")],
    )?;
    let b = RouterDaemon::start(
        kb,
        &link.b,
        B_ADDR,
        &[peer_b(Some("wrong-key"))],
        &[net("198.51.100.0/24")],
    )?;
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        let (sa, sb) = (a.session_state(B_ADDR)?, b.session_state(A_ADDR)?);
        ensure!(
            !sa.eq_ignore_ascii_case("established") && !sb.eq_ignore_ascii_case("established"),
            "established despite different MD5 keys (BIRD {sa}, {kb} {sb})"
        );
        sleep(Duration::from_millis(200));
    }
    ensure!(a.received_prefixes(B_ADDR)?.is_empty());
    eprintln!(
        "BIRD vs {kb} with different keys: BIRD {}, {kb} {}",
        a.session_state(B_ADDR)?,
        b.session_state(A_ADDR)?
    );
    Ok(())
}

#[test]
fn bird_and_frr_exchange_announce_withdraw_and_shut_down() -> Result<()> {
    exchange(Kind::Bird, Kind::Frr)
}

#[test]
fn bird_and_gobgp_exchange_announce_withdraw_and_shut_down() -> Result<()> {
    exchange(Kind::Bird, Kind::Gobgp)
}

#[test]
fn frr_and_gobgp_exchange_announce_withdraw_and_shut_down() -> Result<()> {
    exchange(Kind::Frr, Kind::Gobgp)
}

#[test]
fn gobgp_and_bird_exchange_announce_withdraw_and_shut_down() -> Result<()> {
    exchange(Kind::Gobgp, Kind::Bird)
}

#[test]
fn bird_passive_and_frr_establish_with_md5() -> Result<()> {
    md5(Kind::Bird, Kind::Frr)
}

#[test]
fn bird_passive_and_gobgp_establish_with_md5() -> Result<()> {
    md5(Kind::Bird, Kind::Gobgp)
}

#[test]
fn frr_passive_and_gobgp_establish_with_md5() -> Result<()> {
    md5(Kind::Frr, Kind::Gobgp)
}

#[test]
fn gobgp_passive_and_frr_establish_with_md5() -> Result<()> {
    md5(Kind::Gobgp, Kind::Frr)
}

#[test]
fn bird_never_establishes_with_a_wrong_md5_key_against_gobgp() -> Result<()> {
    wrong_password(Kind::Gobgp)
}

#[test]
fn bird_never_establishes_with_a_wrong_md5_key_against_frr() -> Result<()> {
    wrong_password(Kind::Frr)
}

/// BIRD's `protocol kernel` and FRR's zebra put what they learned into their namespace's
/// routing table (not BIRD's own blackholes), traffic follows it, and dropping the daemons
/// leaves no process behind.
#[test]
fn learned_routes_reach_the_kernel_and_drop_stops_the_daemons() -> Result<()> {
    let link = link()?;
    // Something to reach behind each router: a loopback address inside the announced prefix.
    link.a
        .exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"])?;
    link.b
        .exec(&["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])?;
    let a = RouterDaemon::start(
        Kind::Bird,
        &link.a,
        A_ADDR,
        &[peer_a(None)],
        &[net("192.0.2.0/24")],
    )?;
    let b = RouterDaemon::start(
        Kind::Frr,
        &link.b,
        B_ADDR,
        &[peer_b(None)],
        &[net("198.51.100.0/24")],
    )?;
    a.wait_received(B_ADDR, &[net("198.51.100.0/24")], TIMEOUT)?;
    b.wait_received(A_ADDR, &[net("192.0.2.0/24")], TIMEOUT)?;

    let route = |ns: &NetNs, prefix: &str, proto: &str| -> Result<Option<String>> {
        let out = ns.exec(&["ip", "-4", "route", "show", "exact", prefix])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(text.contains(proto).then_some(text))
    };
    let bird_route = poll_until(TIMEOUT, || route(&link.a, "198.51.100.0/24", "proto bird"))
        .context("BIRD did not install 198.51.100.0/24")?;
    ensure!(
        bird_route.contains("via 10.255.0.2 dev eth0"),
        "BIRD's kernel route: {bird_route}"
    );
    let frr_route = poll_until(TIMEOUT, || route(&link.b, "192.0.2.0/24", "proto bgp"))
        .context("FRR did not install 192.0.2.0/24")?;
    ensure!(
        frr_route.contains("via 10.255.0.1 dev eth0"),
        "FRR's kernel route: {frr_route}"
    );
    let own = link
        .a
        .exec(&["ip", "-4", "route", "show", "exact", "192.0.2.0/24"])?;
    ensure!(
        own.stdout.is_empty(),
        "BIRD exported its own announcement to the kernel: {}",
        String::from_utf8_lossy(&own.stdout)
    );
    // Traffic follows the learned routes both ways.
    link.a.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-I",
        "192.0.2.1",
        "198.51.100.1",
    ])?;

    let pids: Vec<(&str, u32)> = a.pids().into_iter().chain(b.pids()).collect();
    ensure!(pids.len() == 3, "expected bird, zebra and bgpd: {pids:?}");
    for (name, pid) in &pids {
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{name} ({pid}) not running"
        );
    }
    let a_dir = a.dir().to_owned();
    let b_dir = b.dir().to_owned();
    drop(a);
    drop(b);
    for (name, pid) in &pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} ({pid}) still running after drop"
        );
        let crashlog = format!("/var/tmp/frr/{name}.{pid}");
        ensure!(!Path::new(&crashlog).exists(), "{crashlog} left behind");
    }
    ensure!(
        !a_dir.exists() && !b_dir.exists(),
        "daemon dirs left behind"
    );
    // zebra removed its routes on the way out.
    let gone = link
        .b
        .exec(&["ip", "-4", "route", "show", "exact", "192.0.2.0/24"])?;
    ensure!(
        gone.stdout.is_empty(),
        "FRR's route outlived zebra: {}",
        String::from_utf8_lossy(&gone.stdout)
    );
    Ok(())
}

/// FRR enforcing a prefix limit on BIRD's announcements: BIRD's `last_error` is the
/// notification it received, FRR's names the limit.
#[test]
fn last_error_reports_a_prefix_limit_notification() -> Result<()> {
    let link = link()?;
    let a = RouterDaemon::start(
        Kind::Bird,
        &link.a,
        A_ADDR,
        &[peer_a(None)],
        &[net("192.0.2.0/25"), net("192.0.2.128/25")],
    )?;
    let b = RouterDaemon::start(Kind::Frr, &link.b, B_ADDR, &[peer_b(None)], &[])?;
    b.wait_received(
        A_ADDR,
        &[net("192.0.2.0/25"), net("192.0.2.128/25")],
        TIMEOUT,
    )?;
    b.control(&[
        "configure terminal",
        &format!("router bgp {B_ASN}"),
        "address-family ipv4 unicast",
        &format!("neighbor {A_ADDR} maximum-prefix 1"),
    ])?;
    wait_down(&a, B_ADDR)?;
    let a_error = poll_until(TIMEOUT, || {
        let e = a.last_error(B_ADDR)?;
        Ok((!e.is_empty()).then_some(e))
    })?;
    let b_error = b.last_error(A_ADDR)?;
    eprintln!("BIRD: {a_error:?}; FRR: {b_error:?}");
    ensure!(
        a_error == "Received: Maximum number of prefixes reached",
        "BIRD's last error: {a_error:?}"
    );
    ensure!(
        b_error.contains("Maximum Number of Prefixes Reached"),
        "FRR's last error: {b_error:?}"
    );
    Ok(())
}
