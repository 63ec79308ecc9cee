//! `cargo xtask demo`: the gateway running in network namespaces, as DESIGN §6 draws it: an
//! IDC host behind a BIRD customer router on VLAN 100 of a hosted connection (two eBGP
//! sessions, one per interconnect /30), the `forwarder` agent with its XDP data plane, and a
//! VPC whose host sits behind the kernel's own VXLAN device. Shows the operator's view
//! (status, BGP neighbors, routes), then traffic (ping, a TCP transfer) and the counters it
//! moved. Everything is removed at the end.
//!
//! Usage: demo PATH_TO_FORWARDER_BINARY

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, ensure};
use std::net::Ipv4Addr;

use forwarder_tests::{
    daemons::{Kind, PeerSpec, RouterDaemon},
    topology::{Topology, VPC_HOST, cli, tcp_transfer, wait_for},
};

const CONFIG: &str = r#"
[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "bgp"
client_asn = 65001
bgp_password = "s3cret"
max_prefixes = 100

  [[vif.peer]]
  client_address = "169.254.10.2"
  cloud_address = "169.254.10.1"
  prefix_len = 30

  [[vif.peer]]
  client_address = "169.254.20.2"
  cloud_address = "169.254.20.1"
  prefix_len = 30
"#;

fn show(forwarder: &std::path::Path, t: &Topology, args: &[&str]) -> Result<()> {
    println!("\n$ forwarder {}", args.join(" "));
    let out = cli(forwarder, &t.socket(), args)?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn run() -> Result<()> {
    let forwarder = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: demo PATH_TO_FORWARDER")?,
    );
    println!("demo: building the DESIGN §6 topology (idc, customer router, gateway, vpc)");
    let t = Topology::new("demo")?;
    let _customer = t.customer_router_bgp()?;
    t.write_config(CONFIG)?;
    println!(
        "demo: starting `forwarder agent --config {}`",
        t.config_path().display()
    );
    let agent = t.start_agent(&forwarder)?;
    println!("demo: starting BIRD as the customer router (AS 65001, two sessions, MD5)");
    let (client1, cloud1) = (
        Ipv4Addr::new(169, 254, 10, 2),
        Ipv4Addr::new(169, 254, 10, 1),
    );
    let (client2, cloud2) = (
        Ipv4Addr::new(169, 254, 20, 2),
        Ipv4Addr::new(169, 254, 20, 1),
    );
    let bird = RouterDaemon::start(
        Kind::Bird,
        &t.rtr,
        client1,
        &[
            PeerSpec::new(client1, cloud1, 65001, 64512).with_password("s3cret"),
            PeerSpec::new(client2, cloud2, 65001, 64512).with_password("s3cret"),
        ],
        &["192.168.50.0/24".parse()?],
    )?;
    bird.wait_established(cloud1, Duration::from_secs(30))?;
    bird.wait_established(cloud2, Duration::from_secs(30))?;
    bird.wait_received(cloud1, &["10.0.1.0/24".parse()?], Duration::from_secs(15))?;
    let available = wait_for(Duration::from_secs(15), || {
        cli(&forwarder, &t.socket(), &["route", "list"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("bgp"))
    });
    ensure!(
        available,
        "vif-100 did not become available:\n{}",
        agent.log_text()
    );
    show(&forwarder, &t, &["status"])?;
    show(&forwarder, &t, &["bgp", "neighbors"])?;
    show(
        &forwarder,
        &t,
        &["bgp", "routes", "--vif", "vif-100", "--received"],
    )?;
    show(&forwarder, &t, &["route", "list"])?;
    let birdc = t.rtr.exec(&[
        "birdc",
        "-s",
        &bird.dir().join("bird.ctl").to_string_lossy(),
        "show",
        "route",
    ]);
    if let Ok(out) = birdc {
        println!(
            "\n$ birdc show route   (on the customer router)\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    println!("\n$ ping -c 5 {VPC_HOST}   (from the IDC host 192.168.50.10)");
    let (sent, received) = t.ping(VPC_HOST, 5, "0.2")?;
    println!("{sent} packets transmitted, {received} received");
    let (bytes, intact, seconds) = tcp_transfer(&t.vpc, VPC_HOST, &t.idc, 64 << 20)?;
    println!(
        "\nTCP idc -> vpc: {bytes} bytes in {seconds:.2} s ({:.0} Mbit/s), sha256 {}",
        bytes as f64 * 8.0 / seconds.max(1e-9) / 1e6,
        if intact { "matches" } else { "DIFFERS" }
    );
    show(&forwarder, &t, &["stats"])?;
    ensure!(received == sent && intact, "traffic did not get through");
    println!("\ndemo: done; tearing the namespaces down");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
