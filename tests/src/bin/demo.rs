//! `cargo xtask demo`: the gateway running in network namespaces, as DESIGN §6 draws it: an
//! IDC host behind a customer router on VLAN 100 of a hosted connection, the `forwarder`
//! agent with its XDP data plane, and a VPC whose host sits behind the kernel's own VXLAN
//! device. Shows the operator's view (status, VIF, routes), then traffic (ping, a TCP
//! transfer) and the counters it moved. Everything is removed at the end.
//!
//! Usage: demo PATH_TO_FORWARDER_BINARY

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, ensure};
use forwarder_tests::topology::{Topology, VPC_HOST, cli, tcp_transfer, wait_for};

const CONFIG: &str = r#"
[[vif]]
name = "vif-100"
connection = "hc-1"
vlan = 100
border_gateway = "bgw-1"
routing = "static"

  [[vif.peer]]
  client_address = "169.254.10.2"
  cloud_address = "169.254.10.1"
  prefix_len = 30

[[static_route]]
border_gateway = "bgw-1"
prefix = "192.168.50.0/24"
via = "vif-100"
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
    let _customer = t.customer_router()?;
    t.write_config(CONFIG)?;
    println!(
        "demo: starting `forwarder agent --config {}`",
        t.config_path().display()
    );
    let agent = t.start_agent(&forwarder)?;
    let available = wait_for(Duration::from_secs(15), || {
        cli(&forwarder, &t.socket(), &["vif", "list"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("available"))
    });
    ensure!(
        available,
        "vif-100 did not become available:\n{}",
        agent.log_text()
    );
    show(&forwarder, &t, &["status"])?;
    show(&forwarder, &t, &["vif", "show", "vif-100"])?;
    show(&forwarder, &t, &["route", "list"])?;

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
