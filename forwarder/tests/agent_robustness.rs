//! The agent against what happens to a gateway host (issue: the agent for hundreds of
//! customers): started under `ip netns exec` and killed, a stale namespace entry, a port
//! deleted and recreated, a second agent, a state file of the previous version, control
//! clients that are not allowed, idle, oversized or not UTF-8.

mod common;

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use common::{Topology, VPC_HOST, cli, cli_json, sh, wait_for};
use forwarder_tests::{fixture::Vif, run, topology::Launch};

fn vif_100() -> Vif {
    Vif::static_routed("vif-100", "hc-1", 100, "bgw-1").peer("169.254.10.2", "169.254.10.1")
}

fn write_static(t: &Topology) -> Result<()> {
    t.write_fixture(&t.static_fixture())?;
    Ok(())
}

fn vif_state(t: &Topology) -> String {
    cli_json(&t.socket(), &["vif", "show", "vif-100"])
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn wait_available(t: &Topology, log: &str) -> Result<()> {
    t.wait_available(common::bin(), "vif-100")
        .with_context(|| log.to_owned())
}

#[test]
fn started_by_ip_netns_exec_and_killed_it_comes_back_without_losing_a_ping() -> Result<()> {
    let t = Topology::new("ipnsexec")?;
    let _customer = t.customer_router()?;
    write_static(&t)?;
    let mut agent = t.start_agent_via(common::bin(), Launch::IpNetnsExec)?;
    wait_available(&t, &agent.log_text())?;
    ensure!(
        agent.log_text().contains("joined the parent's"),
        "the agent did not leave ip netns exec's private mount namespace:\n{}",
        agent.log_text()
    );
    let mut before_restart = 0;
    let ((sent, received), ()) = t.ping_during(80, || {
        agent.kill()?;
        std::thread::sleep(Duration::from_secs(1));
        before_restart = agent.log_text().len();
        // Every map write logged: a restart that finds the maps right writes none.
        agent = t.start_agent_logging(
            common::bin(),
            Launch::IpNetnsExec,
            "info,forwarder::apply=trace",
        )?;
        Ok(())
    })?;
    println!("ping across SIGKILL and restart under ip netns exec: {received}/{sent}");
    ensure!(
        sent == 80 && received == sent,
        "lost {} of {sent} pings; drops {}\n{}\n{}",
        sent - received,
        cli_json(&t.socket(), &["stats"])?["drops"],
        t.diagnostics(),
        agent.log_text()
    );
    let restart_log = agent.log_text().split_off(before_restart);
    let writes: Vec<&str> = restart_log
        .lines()
        .filter(|l| l.contains("written"))
        .collect();
    ensure!(
        writes.is_empty(),
        "the restarted agent rewrote maps that were right:\n{}",
        writes.join("\n")
    );
    // The control namespace is a real one, seen from here (not an empty file).
    let netns = cli_json(&t.socket(), &["vif", "show", "vif-100"])?["control_netns"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    run("ip", &["netns", "exec", &netns, "true"]).context("control namespace usable")?;
    ensure!(
        !agent.log_text().contains("RTNETLINK answers"),
        "{}",
        agent.log_text()
    );
    Ok(())
}

#[test]
fn a_stale_run_netns_entry_is_replaced() -> Result<()> {
    let t = Topology::new("stalens")?;
    let _customer = t.customer_router()?;
    write_static(&t)?;
    // What an agent whose mount namespace died leaves: an empty file, not a namespace.
    let tag = t.gw.name().replace("fwt-gw-", "");
    let stale = format!("/run/netns/fwt-{tag}-vif-100");
    std::fs::create_dir_all("/run/netns")?;
    std::fs::write(&stale, b"")?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t, &agent.log_text())?;
    ensure!(
        agent
            .log_text()
            .contains("control namespace entry was not a namespace: replaced"),
        "{}",
        agent.log_text()
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(received == sent, "ping {received}/{sent}");
    Ok(())
}

#[test]
fn a_port_deleted_and_recreated_is_attached_again() -> Result<()> {
    let t = Topology::new("portre")?;
    let customer = t.customer_router()?;
    write_static(&t)?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t, &agent.log_text())?;

    // The connection's veth goes away (both ends), then comes back with a new ifindex.
    drop(customer);
    sh(&t.gw, "ip link del hc1")?;
    ensure!(
        wait_for(Duration::from_secs(5), || vif_state(&t) == "unavailable"),
        "VIF still {} without its port",
        vif_state(&t)
    );
    run(
        "ip",
        &[
            "link",
            "add",
            "hc1",
            "netns",
            t.gw.name(),
            "type",
            "veth",
            "peer",
            "name",
            "trunk0",
            "netns",
            t.rtr.name(),
        ],
    )?;
    let recreated = Instant::now();
    let ifindex = t.gw.ifindex("hc1")?;
    sh(&t.gw, "ip link set hc1 up")?;
    sh(&t.rtr, "ip link set trunk0 up")?;
    let attached = || {
        cli_json(&t.socket(), &["status"]).is_ok_and(|s| {
            s["ports"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["name"] == "hc1" && p["ifindex"] == ifindex)
            })
        })
    };
    ensure!(
        wait_for(Duration::from_secs(5), attached),
        "hc1 (ifindex {ifindex}) not attached again:\n{}",
        agent.log_text()
    );
    println!(
        "port recreated: XDP on the new hc1 after {:.0} ms",
        recreated.elapsed().as_secs_f64() * 1000.0
    );
    let _customer = t.customer_router()?;
    // The customer's new interface has a new MAC; its ARP for the cloud address tells us.
    ensure!(
        wait_for(Duration::from_secs(10), || t
            .ping(VPC_HOST, 1, "0.2")
            .is_ok_and(|(s, r)| s == r)),
        "no traffic through the recreated port:\n{}",
        agent.log_text()
    );
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    ensure!(received == sent, "ping {received}/{sent}");
    ensure!(vif_state(&t) == "available", "{}", vif_state(&t));
    Ok(())
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_running() -> Result<()> {
    let t = Topology::new("second")?;
    let _customer = t.customer_router()?;
    write_static(&t)?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t, &agent.log_text())?;
    let pid = agent.child.as_ref().map(|c| c.id()).unwrap_or_default();

    let second = t
        .spawn_agent(common::bin(), Launch::Nsenter)?
        .wait_with_output()?;
    ensure!(!second.status.success(), "a second agent started");
    let log = agent.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("another forwarder agent"))
        .context("no refusal in the log")?;
    println!("second agent: {refusal}");
    ensure!(
        refusal.contains(&format!("(pid {pid})")) && refusal.contains("state_dir"),
        "{refusal}"
    );

    // Another state directory and pin directory, the same control socket: refused too, the
    // live socket is not replaced, and the refused agent leaves nothing on the bpf filesystem.
    let other_pins = std::path::Path::new("/sys/fs/bpf/fwt-other-pins");
    // What an older build's run of this test left.
    if other_pins.exists() {
        std::fs::remove_dir(other_pins)?;
    }
    let other = t
        .fixture()
        .agent(
            "state_dir",
            &format!("\"{}\"", t.dir.0.join("state2").display()),
        )
        .agent("pin_dir", "\"/sys/fs/bpf/fwt-other-pins\"")
        .vif(vif_100());
    let path = t.dir.0.join("other.toml");
    std::fs::write(&path, other.toml())?;
    let out = std::process::Command::new(common::bin())
        .args(["agent", "--config"])
        .arg(&path)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("same socket: {}", err.lines().last().unwrap_or_default());
    ensure!(
        !out.status.success() && err.contains("control_socket"),
        "{err}"
    );
    ensure!(
        !other_pins.exists(),
        "the refused agent created its pin_dir {}",
        other_pins.display()
    );
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(
        received == sent,
        "the first agent's traffic: {received}/{sent}"
    );
    ensure!(
        cli(&t.socket(), &["status"])?.status.success(),
        "the first agent no longer answers"
    );
    Ok(())
}

#[test]
fn a_state_file_of_the_previous_version_loads() -> Result<()> {
    let t = Topology::new("statev1")?;
    let _customer = t.customer_router()?;
    write_static(&t)?;
    // As the version before typed next-hop keys wrote it, with ids the new one must keep.
    let dir = t.dir.0.join("state");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("state.json"),
        r#"{
  "ids": {
    "gateways": { "bgw-1": 3 },
    "vifs": { "vif-100": 7 },
    "attachments": { "att-a": 2 },
    "next_hops": { "att:att-a": 11, "vif:vif-100": 14, "vif:vif-100:0": 12 }
  },
  "routes": [ { "gateway": "bgw-1", "prefix": "192.168.60.0/24", "via": "vif-100" } ]
}"#,
    )?;
    let agent = t.start_agent(common::bin())?;
    wait_available(&t, &agent.log_text())?;
    let vif = cli_json(&t.socket(), &["vif", "show", "vif-100"])?;
    ensure!(vif["id"] == 7, "VIF id not kept: {vif}");
    let lookup = cli_json(
        &t.socket(),
        &["lookup", "--gateway", "bgw-1", "192.168.60.1"],
    )?;
    ensure!(
        lookup["next_hop_id"] == 14 && lookup["next_hop"] == "vif vif-100",
        "CLI route or next-hop id not kept: {lookup}"
    );
    let lookup = cli_json(&t.socket(), &["lookup", "--gateway", "bgw-1", VPC_HOST])?;
    ensure!(lookup["next_hop_id"] == 11, "{lookup}");
    let saved = std::fs::read_to_string(dir.join("state.json"))?;
    ensure!(saved.contains("\"version\": 2"), "{saved}");
    let (sent, received) = t.ping(VPC_HOST, 3, "0.2")?;
    ensure!(received == sent, "ping {received}/{sent}");
    Ok(())
}

/// Sends `bytes` on the control socket (then half-closes unless `keep_open`), returns the
/// agent's answer.
fn raw_request(t: &Topology, bytes: &[u8], keep_open: bool) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(t.socket())?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(bytes)?;
    if !keep_open {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(serde_json::from_str(answer.trim())?)
}

#[test]
fn control_clients_are_checked_and_bad_requests_answered() -> Result<()> {
    let t = Topology::new("ctlsock")?;
    let _customer = t.customer_router()?;
    t.write_fixture(
        &t.fixture()
            .agent("control_group", "\"nogroup\"")
            .vif(vif_100()),
    )?;
    let agent = t.start_agent(common::bin())?;

    let started = Instant::now();
    let idle = raw_request(&t, b"", true)?;
    println!(
        "idle client: {idle} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        idle["ok"] == false && idle["error"] == "no complete request within 5 s",
        "{idle}"
    );
    let big = raw_request(&t, &vec![b'x'; 100_000], false)?;
    ensure!(big["error"] == "request longer than 65536 bytes", "{big}");
    let latin1 = raw_request(&t, b"{\"command\": \"st\xe4tus\"}\n", false)?;
    ensure!(latin1["error"] == "request is not UTF-8", "{latin1}");
    let garbage = raw_request(&t, b"hello\n", false)?;
    ensure!(
        garbage["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("malformed request")),
        "{garbage}"
    );

    // The socket belongs to the control group: its members may use it...
    let mode = std::fs::metadata(t.socket()).map(|m| {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        (m.permissions().mode() & 0o777, m.gid())
    })?;
    ensure!(mode == (0o660, 65534), "socket mode/group {mode:?}");
    let as_user = |user: &str| {
        std::process::Command::new("runuser")
            .args(["-u", user, "--"])
            .arg(common::bin())
            .arg("--socket")
            .arg(t.socket())
            .args(["vif", "list"])
            .output()
    };
    let out = as_user("nobody")?;
    ensure!(
        out.status.success(),
        "nobody (group nogroup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...others may not, even when someone opened up the file mode.
    std::fs::set_permissions(
        t.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    let out = as_user("daemon")?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("daemon: {}", err.trim());
    ensure!(
        out.status.code() == Some(1)
            && err.contains(
                "permission denied: uid 1 is not root and not in the agent's control_group"
            ),
        "{err}"
    );
    ensure!(
        cli(&t.socket(), &["status"])?.status.success(),
        "{}",
        agent.log_text()
    );
    Ok(())
}
