//! A VIF's control plane (DESIGN §4): a network namespace of its own holding the cloud
//! interconnect address(es) on `vif0`, one end of a veth pair whose host end (`fwc<ID>`) runs
//! `xdp_control`. The customer's ARP, BGP and ICMP for the cloud address arrive there
//! untagged; what the namespace sends is tagged by XDP. Works without the 802.1Q module and
//! lets two VIFs on different connections use the same /30. The client router's MAC is read
//! from the namespace's neighbour table, kept resolved by a `managed` neighbour entry.
//!
//! Namespaces outlive the agent (like the pinned maps): a restarted agent finds them, keeps
//! their addresses and sockets, and only fixes what differs.

use std::net::Ipv4Addr;

use crate::host::{self, Error};

/// The interface inside the namespace.
pub const INNER_IF: &str = "vif0";

/// Names of one VIF's control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// Network namespace, e.g. `fwv-vif-100`.
    pub netns: String,
    /// Host end of the veth pair, e.g. `fwc3` (ifnames are at most 15 bytes, VIF names 32).
    pub host_if: String,
}

/// One /30 of the VIF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cloud: Ipv4Addr,
    pub client: Ipv4Addr,
    pub prefix_len: u8,
}

impl ControlPlane {
    pub fn new(netns_prefix: &str, vif_name: &str, vif_id: u32) -> Self {
        Self {
            netns: format!("{netns_prefix}{vif_name}"),
            host_if: format!("fwc{vif_id}"),
        }
    }

    fn in_ns(&self, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["netns", "exec", self.netns.as_str()];
        full.extend_from_slice(args);
        host::run("ip", &full)
    }

    fn netns_exists(&self) -> Result<bool, Error> {
        let list = host::run("ip", &["netns", "list"])?;
        Ok(list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(self.netns.as_str())))
    }

    /// Creates what is missing and corrects what differs; leaves a correct control plane
    /// untouched (its BGP sockets keep running). Returns the MAC of `vif0`, which is the MAC
    /// the customer sees for the cloud addresses, and whether the veth pair was (re)created
    /// (then the host end needs XDP again and sockets in the namespace are gone).
    pub fn ensure(&self, pairs: &[Pair]) -> Result<([u8; 6], bool), Error> {
        if !self.netns_exists()? {
            host::run("ip", &["netns", "add", &self.netns])?;
        }
        let host_end = host::ip_json(&["link", "show", "dev", &self.host_if]).is_ok();
        let inner_end =
            host::ip_json(&["-n", &self.netns, "link", "show", "dev", INNER_IF]).is_ok();
        let recreated = !(host_end && inner_end);
        if recreated {
            // Half a pair is useless: start over with both ends.
            if host_end {
                host::run("ip", &["link", "del", "dev", &self.host_if])?;
            }
            if inner_end {
                host::run("ip", &["-n", &self.netns, "link", "del", "dev", INNER_IF])?;
            }
            host::run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &self.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    INNER_IF,
                    "netns",
                    &self.netns,
                ],
            )?;
        }
        // No IPv6 chatter on the customer link; the kernel answers ARP and ICMP for us.
        self.in_ns(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        self.in_ns(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        host::run("ip", &["-n", &self.netns, "link", "set", "dev", "lo", "up"])?;
        host::run(
            "ip",
            &["-n", &self.netns, "link", "set", "dev", INNER_IF, "up"],
        )?;
        host::run("ip", &["link", "set", "dev", &self.host_if, "up"])?;
        // XDP redirects into vif0 need GRO there; TCP from vif0 through XDP needs its
        // checksums done in software.
        self.in_ns(&["ethtool", "-K", INNER_IF, "gro", "on", "tx", "off"])?;

        let wanted: Vec<String> = pairs
            .iter()
            .map(|p| format!("{}/{}", p.cloud, p.prefix_len))
            .collect();
        let present = self.addresses()?;
        for addr in present.iter().filter(|a| !wanted.contains(a)) {
            host::run(
                "ip",
                &["-n", &self.netns, "addr", "del", addr, "dev", INNER_IF],
            )?;
        }
        for addr in wanted.iter().filter(|a| !present.contains(a)) {
            host::run(
                "ip",
                &["-n", &self.netns, "addr", "add", addr, "dev", INNER_IF],
            )?;
        }
        for pair in pairs {
            host::run(
                "ip",
                &[
                    "-n",
                    &self.netns,
                    "neigh",
                    "replace",
                    &pair.client.to_string(),
                    "dev",
                    INNER_IF,
                    "managed",
                ],
            )?;
        }
        Ok((host::link_mac(Some(&self.netns), INNER_IF)?, recreated))
    }

    fn addresses(&self) -> Result<Vec<String>, Error> {
        let links = host::ip_json(&["-n", &self.netns, "-4", "addr", "show", "dev", INNER_IF])?;
        Ok(links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect())
    }

    /// The client routers' MACs, as far as ARP has resolved them, in `clients` order.
    pub fn client_macs(&self, clients: &[Ipv4Addr]) -> Result<Vec<Option<[u8; 6]>>, Error> {
        let known = host::neighbours(&self.netns, INNER_IF)?;
        Ok(clients
            .iter()
            .map(|c| {
                known
                    .iter()
                    .find(|(addr, _)| addr == c)
                    .map(|(_, mac)| *mac)
            })
            .collect())
    }

    /// Removes the namespace (and with it both ends of the veth pair).
    pub fn destroy(&self) -> Result<(), Error> {
        if self.netns_exists()? {
            host::run("ip", &["netns", "del", &self.netns])?;
        }
        Ok(())
    }
}
