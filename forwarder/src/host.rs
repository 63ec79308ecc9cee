//! The host's own tools: iproute2, ethtool and procfs/sysfs, for the one-shot settings and
//! the state the agent reads (link state, neighbours). Each call says what it ran when it
//! fails.

use std::{net::Ipv4Addr, process::Command};

#[derive(Debug, thiserror::Error)]
#[error("`{command}`: {message}")]
pub struct Error {
    pub command: String,
    pub message: String,
}

/// Runs `program args…`, returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -j …` parsed as JSON (an array of objects).
pub fn ip_json(args: &[&str]) -> Result<Vec<serde_json::Value>, Error> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = run("ip", &full)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| Error {
        command: format!("ip {}", full.join(" ")),
        message: e.to_string(),
    })
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `ifname` exists and is operationally up (in the calling thread's namespace).
pub fn link_up(ifname: &str) -> Result<bool, Error> {
    let links = ip_json(&["link", "show", "dev", ifname])?;
    Ok(links
        .first()
        .and_then(|l| l["operstate"].as_str())
        .is_some_and(|s| s == "UP"))
}

/// The MAC address of `ifname`, in network namespace `netns` (None: the caller's).
pub fn link_mac(netns: Option<&str>, ifname: &str) -> Result<[u8; 6], Error> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", ifname]);
    let links = ip_json(&args)?;
    links
        .first()
        .and_then(|l| l["address"].as_str())
        .and_then(parse_mac)
        .ok_or_else(|| Error {
            command: format!("ip {}", args.join(" ")),
            message: "no MAC address".into(),
        })
}

/// Resolved neighbours on `ifname` in `netns`: (address, MAC) of entries that have a MAC and
/// are not FAILED.
pub fn neighbours(netns: &str, ifname: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>, Error> {
    let entries = ip_json(&["-n", netns, "-4", "neigh", "show", "dev", ifname])?;
    Ok(entries
        .iter()
        .filter(|e| {
            !e["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        })
        .filter_map(|e| {
            let addr = e["dst"].as_str()?.parse().ok()?;
            let mac = parse_mac(e["lladdr"].as_str()?)?;
            Some((addr, mac))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:00:00:00:0a:01"), Some([2, 0, 0, 0, 10, 1]));
        assert_eq!(parse_mac("02:00:00:00:0a"), None);
        assert_eq!(parse_mac("02:00:00:00:0a:01:02"), None);
        assert_eq!(parse_mac("zz:00:00:00:0a:01"), None);
        assert_eq!(format_mac([2, 0, 0, 0, 10, 1]), "02:00:00:00:0a:01");
    }
}
