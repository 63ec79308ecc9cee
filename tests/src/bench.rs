//! What the benches that run the `forwarder agent` binary share: starting it in a gateway
//! namespace with a private config, reading its RSS and a pinned map's kernel memory, and
//! clearing what a SIGKILL leaves behind.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{NetNs, fixture::Fixture};

/// `fixture` with the agent's state directory and control socket in `dir`, its pins under
/// `pin_dir`, and VIF control namespaces named `{tag}-VIF`: an agent that shares nothing
/// with another on the host.
pub fn private_agent(fixture: Fixture, dir: &Path, pin_dir: &Path, tag: &str) -> Fixture {
    fixture
        .agent("state_dir", &format!("\"{}\"", dir.join("state").display()))
        .agent(
            "control_socket",
            &format!("\"{}\"", dir.join("sock").display()),
        )
        .agent("pin_dir", &format!("\"{}\"", pin_dir.display()))
        .agent("netns_prefix", &format!("\"{tag}-\""))
}

/// `bin agent --config CONFIG` entered into `gw` with `nsenter` (as an operator's unit
/// would run it), stderr to `stderr`.
pub fn spawn_agent(bin: &Path, gw: &NetNs, config: &Path, stderr: Stdio) -> Result<Child> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", gw.name()))
        .arg(bin)
        .args(["agent", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("spawning the agent")
}

/// Kills the agent and removes what a SIGKILL leaves: the control namespaces of `vifs` and
/// the pins.
pub fn kill_agent(child: &mut Child, tag: &str, vifs: &[&str], pin_dir: &Path) {
    child.kill().ok();
    child.wait().ok();
    for vif in vifs {
        if let Err(e) = Command::new("ip")
            .args(["netns", "del", &format!("{tag}-{vif}")])
            .stderr(Stdio::null())
            .status()
        {
            eprintln!("warning: removing {vif}'s control namespace: {e}");
        }
    }
    if pin_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(pin_dir)
    {
        eprintln!("warning: removing {}: {e}", pin_dir.display());
    }
}

/// Resident memory of a process, in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The IPv4 route maps an agent pinned under `pin_dir`, the trie and its /24 shortcuts, in
/// MiB of the kernel's accounting.
pub fn route_maps_mib(pin_dir: &Path) -> f64 {
    pinned_map_mib(&pin_dir.join("maps/ROUTES")) + pinned_map_mib(&pin_dir.join("maps/ROUTES24"))
}

/// The kernel's accounting of a pinned map (`bpftool map show pinned`: memlock), in MiB.
pub fn pinned_map_mib(pin: &Path) -> f64 {
    Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(pin)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let at = text.find("memlock ")? + "memlock ".len();
            let bytes: String = text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            bytes.parse::<f64>().ok()
        })
        .map_or(0.0, |b| b / (1024.0 * 1024.0))
}
