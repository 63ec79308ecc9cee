//! What the BGP tests share: the VIF with one or two sessions on VLAN 100 and how to look at
//! its sessions and routes.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use forwarder_tests::daemons::{Kind, PeerSpec, RouterDaemon};
use ipnet::Ipv4Net;

use super::{Agent, Topology, cli_json};

pub const CLOUD1: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);
pub const CLIENT1: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);
pub const CLOUD2: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 1);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 2);

/// The customer router (`kind`) in the topology's router namespace with one session,
/// CLIENT1 (AS 65001) → CLOUD1 (AS 64512), which `peer` may adjust (`|p| p.bfd()`),
/// announcing `announce`; returned once the router says the session is Established (the
/// error carries the agent's log).
pub fn customer_router<'t>(
    t: &'t Topology,
    agent: &Agent,
    kind: Kind,
    peer: impl FnOnce(PeerSpec) -> PeerSpec,
    announce: &[Ipv4Net],
) -> Result<RouterDaemon<'t>> {
    let router = RouterDaemon::start(
        kind,
        &t.rtr,
        CLIENT1,
        &[peer(PeerSpec::new(CLIENT1, CLOUD1, 65001, 64512))],
        announce,
    )?;
    router
        .wait_established(CLOUD1, Duration::from_secs(30))
        .with_context(|| agent.log_text())?;
    Ok(router)
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().expect("prefix")
}

/// A BGP VIF on VLAN 100 with one or two sessions, plus extra `[[vif]]` keys.
pub fn vif_config(two_peers: bool, extra: &str) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        r#"
[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "bgp"
client_asn = 65001
{extra}

  [[vif.peer]]
  client_address = "{CLIENT1}"
  cloud_address = "{CLOUD1}"
  prefix_len = 30
"#
    ));
    if two_peers {
        text.push_str(&format!(
            r#"
  [[vif.peer]]
  client_address = "{CLIENT2}"
  cloud_address = "{CLOUD2}"
  prefix_len = 30
"#
        ));
    }
    text
}

/// Short BGP timers for tests (the defaults are 90 s hold, 5 s retry).
pub const FAST_TIMERS: &str =
    "bgp_hold_time = 9\nbgp_connect_retry = 1\nbgp_max_prefix_restart = 5\n";

pub fn write_config(t: &Topology, vif: &str) -> Result<()> {
    t.write_config(vif)?;
    // The topology's [agent] table gets the fast timers.
    let path = t.config_path();
    let text = std::fs::read_to_string(&path)?.replacen(
        "[agent]\n",
        &format!("[agent]\n{FAST_TIMERS}"),
        1,
    );
    std::fs::write(&path, text)?;
    Ok(())
}

pub fn neighbor(t: &Topology, peer: usize) -> Result<serde_json::Value> {
    let all = cli_json(&t.socket(), &["bgp", "neighbors"])?;
    all.as_array()
        .and_then(|a| {
            a.iter()
                .find(|n| n["vif"] == "vif-100" && n["peer"] == peer)
                .cloned()
        })
        .with_context(|| format!("no session {peer} in {all}"))
}

pub fn established(t: &Topology, peer: usize) -> bool {
    neighbor(t, peer).is_ok_and(|n| n["state"] == "Established")
}

pub fn lookup(t: &Topology, addr: &str) -> Result<serde_json::Value> {
    cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", addr])
}
