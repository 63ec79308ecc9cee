//! Graceful restart (RFC 4724) with real customer routers: the agent killed or stopped and
//! started again while an IDC host pings the VPC at 10/s, with BIRD at its default setting
//! (a helper) and FRR with graceful restart on, over one and two sessions; BIRD without
//! graceful restart (the loss is measured); and BIRD itself restarting gracefully.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::{
    Topology,
    bgp::{
        CLIENT1, CLIENT2, CLOUD1, CLOUD2, established, lookup, neighbor, net, vif_config,
        write_config,
    },
    cli_json, sh, wait_for,
};
use forwarder_tests::daemons::{GracefulRestart, Kind, PeerSpec, RouterDaemon};

/// The IDC segment the customer router announces (the IDC host is in it).
const IDC_PREFIX: &str = "192.168.50.0/24";

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

struct Setup<'t> {
    t: &'t Topology,
    agent: common::Agent,
    router: RouterDaemon<'t>,
    sessions: usize,
}

/// The agent and the customer router with `sessions` sessions, everything up, routes in
/// the map and in the router's kernel table.
fn setup<'t>(
    t: &'t Topology,
    kind: Kind,
    graceful_restart: GracefulRestart,
    sessions: usize,
) -> Result<Setup<'t>> {
    write_config(t, &vif_config(sessions == 2, ""))?;
    let agent = t.start_agent(common::bin())?;
    let mut peers = vec![PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512)];
    if sessions == 2 {
        peers.push(PeerSpec::new(CLIENT2, CLOUD2, 65001, 64512));
    }
    let router = RouterDaemon::start_with(
        kind,
        &t.rtr,
        CLIENT1,
        &peers,
        &[net(IDC_PREFIX)],
        graceful_restart,
    )?;
    let s = Setup {
        t,
        agent,
        router,
        sessions,
    };
    s.wait_converged("at start")?;
    Ok(s)
}

impl Setup<'_> {
    /// Every session Established on both sides with nothing stale, the IDC prefix in the
    /// map via every session, the VPC CIDR in the router's kernel table.
    fn wait_converged(&self, when: &str) -> Result<()> {
        for (cloud, peer) in [(CLOUD1, 0), (CLOUD2, 1)].into_iter().take(self.sessions) {
            self.router
                .wait_established(cloud, Duration::from_secs(30))
                .with_context(|| format!("{when}: {}", self.agent.log_text()))?;
            ensure!(
                wait_for(Duration::from_secs(20), || established(self.t, peer)
                    && neighbor(self.t, peer).is_ok_and(|n| n["stale_routes"] == 0)),
                "{when}: session {peer} not Established without stale routes: {:?}\n{}",
                neighbor(self.t, peer),
                self.agent.log_text()
            );
        }
        let via = if self.sessions == 2 { "0+1" } else { "0" };
        ensure!(
            wait_for(Duration::from_secs(10), || lookup(self.t, "192.168.50.10")
                .is_ok_and(|l| l["next_hop"]
                    .as_str()
                    .is_some_and(|n| n.contains(via)))),
            "{when}: {IDC_PREFIX} not in the map via {via}: {:?}",
            lookup(self.t, "192.168.50.10")
        );
        ensure!(
            wait_for(Duration::from_secs(10), || sh(
                &self.t.rtr,
                "ip route show 10.0.1.0/24"
            )
            .is_ok_and(|r| !r.trim().is_empty())),
            "{when}: the router has no route to the VPC"
        );
        Ok(())
    }

    /// Stops the agent `how` and starts it again while 80 pings go IDC → VPC at 10/s;
    /// returns (sent, received).
    fn restart_agent(&mut self, how: Stop) -> Result<(u32, u32)> {
        let t = self.t;
        let agent = &mut self.agent;
        let ((sent, received), ()) = t.ping_during(80, || {
            match how {
                Stop::Kill => agent.kill()?,
                Stop::Term => {
                    let status = agent.terminate()?;
                    ensure!(status.success(), "SIGTERM: the agent exited with {status}");
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            *agent = t.start_agent(common::bin())?;
            Ok(())
        })?;
        Ok((sent, received))
    }
}

fn no_loss_across_agent_restarts(
    tag: &str,
    kind: Kind,
    graceful_restart: GracefulRestart,
    sessions: usize,
) -> Result<()> {
    let t = Topology::new(tag)?;
    let _customer = t.customer_router_bgp()?;
    let mut s = setup(&t, kind, graceful_restart, sessions)?;
    for how in [Stop::Kill, Stop::Term] {
        let (sent, received) = s.restart_agent(how)?;
        println!("{kind}, {sessions} session(s), agent {how:?} + restart: {received}/{sent} pings");
        ensure!(
            sent == 80 && received == sent,
            "{kind}, {sessions} session(s): lost {} of {sent} pings across {how:?}\n{}\n{}",
            sent - received,
            t.diagnostics(),
            s.agent.log_text()
        );
        s.wait_converged(&format!("after {how:?}"))?;
        let log = s.agent.log_text();
        ensure!(
            log.contains("kept from the pinned maps"),
            "the restarted agent kept no BGP routes:\n{log}"
        );
    }
    Ok(())
}

#[test]
fn bird_default_one_session_loses_no_ping_across_agent_restarts() -> Result<()> {
    no_loss_across_agent_restarts("grbird1", Kind::Bird, GracefulRestart::Default, 1)
}

#[test]
fn bird_default_two_sessions_lose_no_ping_across_agent_restarts() -> Result<()> {
    no_loss_across_agent_restarts("grbird2", Kind::Bird, GracefulRestart::Default, 2)
}

#[test]
fn frr_one_session_loses_no_ping_across_agent_restarts() -> Result<()> {
    no_loss_across_agent_restarts("grfrr1", Kind::Frr, GracefulRestart::On, 1)
}

#[test]
fn frr_two_sessions_lose_no_ping_across_agent_restarts() -> Result<()> {
    no_loss_across_agent_restarts("grfrr2", Kind::Frr, GracefulRestart::On, 2)
}

/// A router without graceful restart drops our routes when the agent goes: IDC → VPC is
/// lost until the session is back (the README states the figure). The gateway's side keeps
/// the router's routes throughout.
#[test]
fn without_graceful_restart_at_the_peer_the_loss_is_bounded_by_reestablishment() -> Result<()> {
    let t = Topology::new("grnone")?;
    let _customer = t.customer_router_bgp()?;
    let mut s = setup(&t, Kind::Bird, GracefulRestart::Off, 1)?;
    ensure!(
        neighbor(&t, 0)?["graceful_restart"] == false,
        "{:?}",
        neighbor(&t, 0)
    );
    let (sent, received) = s.restart_agent(Stop::Kill)?;
    let lost = sent - received;
    println!("BIRD without graceful restart, agent SIGKILL + restart: {lost} of {sent} pings lost");
    ensure!(
        received > 0 && lost <= 40,
        "lost {lost} of {sent}: more than re-establishment explains\n{}",
        s.agent.log_text()
    );
    s.wait_converged("after the restart")?;
    Ok(())
}

/// BIRD restarting gracefully (`birdc graceful restart`, then `bird -R`): the agent keeps its
/// routes, stale, while it is away, then takes the refreshed ones; no ping lost.
#[test]
fn bird_restarting_gracefully_loses_no_ping() -> Result<()> {
    let t = Topology::new("grhelp")?;
    let _customer = t.customer_router_bgp()?;
    let mut s = setup(&t, Kind::Bird, GracefulRestart::On, 1)?;
    ensure!(neighbor(&t, 0)?["graceful_restart"] == true);
    let router = &mut s.router;
    let socket = t.socket();
    let ((sent, received), stale_seen) = t.ping_during(80, || {
        router.restart_gracefully()?;
        // While BIRD is away or before its End-of-RIB: the route is held stale.
        let stale = cli_json(&socket, &["bgp", "neighbors"])?[0]["stale_routes"].clone();
        Ok(stale)
    })?;
    println!("BIRD graceful restart: {received}/{sent} pings; stale routes seen: {stale_seen}");
    ensure!(
        sent == 80 && received == sent,
        "lost {} of {sent} pings while BIRD restarted gracefully\n{}\n{}",
        sent - received,
        t.diagnostics(),
        s.agent.log_text()
    );
    s.wait_converged("after BIRD's restart")?;
    let log = s.agent.log_text();
    ensure!(
        log.contains("keeping the restarting peer's routes"),
        "the agent did not hold BIRD's routes:\n{log}"
    );
    // Back after the restart (BIRD in recovery may also replace that connection once more).
    ensure!(
        neighbor(&t, 0)?["established_count"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{:?}",
        neighbor(&t, 0)
    );
    let routes = cli_json(&t.socket(), &["route", "list"])?;
    ensure!(
        routes.as_array().is_some_and(|a| a
            .iter()
            .any(|r| r["prefix"] == IDC_PREFIX && r["installed"] == true)),
        "{routes}"
    );
    Ok(())
}
