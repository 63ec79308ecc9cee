//! A customer router's 802.1Q sub-interfaces inside a test namespace, on a kernel without the
//! 8021q module: per VLAN a veth pair `vNNN` (the router's interface, with its address) ↔
//! `vNNNp`, and the TC programs of `forwarder-test-ebpf` tagging what leaves `vNNN` onto the
//! trunk and untagging what arrives on the trunk into `vNNN`. Real stacks and daemons in the
//! namespace (ping, TCP, BGP speakers) then talk over VLAN NNN by using `vNNN`.

use std::collections::HashSet;

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::HashMap,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, TcError},
    },
};
use forwarder_test_ebpf::{
    MAP_COUNTERS, MAP_SUBIFS, MAP_VLANS, PROG_EGRESS, PROG_INGRESS, SubIf, TrunkVlan, counter,
};

use crate::NetNs;

/// The shim's TC programs, built by `build.rs` from `forwarder-test-ebpf`.
pub static SHIM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder-test-ebpf"));

/// One emulated sub-interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubInterface {
    pub vlan: u16,
    /// The router's interface (`v100`): bind sockets and daemons here, `ping -I v100`.
    pub name: String,
    /// The shim end of the pair (`v100p`), where the tag is pushed.
    pub shim: String,
    /// The router's address on this VLAN, as given (`169.254.10.2/30`).
    pub address: String,
    /// MAC of `name`: the next-hop MAC the gateway must use toward this VLAN.
    pub mac: [u8; 6],
}

/// The shim's counters, summed over CPUs (see `forwarder_test_ebpf::counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShimCounters {
    pub to_trunk: u64,
    pub from_trunk: u64,
    pub unknown_subif: u64,
    pub not_tagged: u64,
    pub unknown_vlan: u64,
    pub stacked_tags: u64,
    pub helper_failed: u64,
}

impl ShimCounters {
    /// Every frame the shim dropped, whatever the reason.
    pub fn drops(&self) -> u64 {
        self.unknown_subif
            + self.not_tagged
            + self.unknown_vlan
            + self.stacked_tags
            + self.helper_failed
    }
}

/// The sub-interfaces and the loaded shim. Dropping it detaches the programs and deletes the
/// `vNNN`/`vNNNp` pairs; the namespace it borrows outlives it.
pub struct CustomerRouter<'ns> {
    ns: &'ns NetNs,
    trunk: String,
    subifs: Vec<SubInterface>,
    /// `Some` from load until drop, which closes it inside the namespace.
    ebpf: Option<Ebpf>,
}

impl<'ns> CustomerRouter<'ns> {
    /// Creates `v{vlan}` (holding `address`, e.g. `"169.254.10.2/30"`) and `v{vlan}p` for each
    /// VLAN in `ns`, and joins them to `trunk_if` (an existing interface in `ns`, typically one
    /// end of a veth toward the gateway) through the shim. Names are per namespace: two
    /// routers in one namespace need disjoint VLAN lists.
    ///
    /// Sets on the trunk: `txvlan off` (the pushed tag is written inline, as the gateway's XDP
    /// needs), `rxvlan off`, `tx off` (checksums of everything the router sends or forwards
    /// are complete before a gateway's XDP sees them; XDP redirect loses a pending
    /// checksum-offload state) and `gro on` (a veth accepts XDP redirects from its peer only
    /// with GRO or XDP on).
    pub fn new(ns: &'ns NetNs, trunk_if: &str, vlans: &[(u16, &str)]) -> Result<Self> {
        let mut seen = HashSet::new();
        for (vlan, _) in vlans {
            ensure!(
                (1..=4094).contains(vlan),
                "VLAN id {vlan} is outside 1..=4094"
            );
            ensure!(seen.insert(*vlan), "VLAN {vlan} is listed twice");
        }
        let trunk_ifindex = ns
            .ifindex(trunk_if)
            .with_context(|| format!("trunk {trunk_if} in {}", ns.name()))?;
        ns.exec(&[
            "ethtool", "-K", trunk_if, "txvlan", "off", "rxvlan", "off", "tx", "off", "gro", "on",
        ])?;

        // From here on, Drop removes whatever was created if a later step fails.
        let mut router = Self {
            ns,
            trunk: trunk_if.to_owned(),
            subifs: Vec::with_capacity(vlans.len()),
            ebpf: None,
        };
        for (vlan, address) in vlans {
            router.subifs.push(create_pair(ns, *vlan, address)?);
        }

        let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the VLAN shim object")?;
        {
            let mut subif_map: HashMap<_, u32, SubIf> = HashMap::try_from(
                ebpf.map_mut(MAP_SUBIFS)
                    .with_context(|| format!("map {MAP_SUBIFS} missing"))?,
            )?;
            let mut shim_ifindexes = Vec::with_capacity(router.subifs.len());
            for s in &router.subifs {
                let shim_ifindex = ns.ifindex(&s.shim)?;
                let value = SubIf {
                    vlan: u32::from(s.vlan),
                    trunk_ifindex,
                };
                subif_map
                    .insert(shim_ifindex, value, 0)
                    .with_context(|| format!("{MAP_SUBIFS}[{}]", s.shim))?;
                shim_ifindexes.push(shim_ifindex);
            }
            let mut vlan_map: HashMap<_, TrunkVlan, u32> = HashMap::try_from(
                ebpf.map_mut(MAP_VLANS)
                    .with_context(|| format!("map {MAP_VLANS} missing"))?,
            )?;
            for (s, shim_ifindex) in router.subifs.iter().zip(shim_ifindexes) {
                let key = TrunkVlan {
                    trunk_ifindex,
                    vlan: u32::from(s.vlan),
                };
                vlan_map
                    .insert(key, shim_ifindex, 0)
                    .with_context(|| format!("{MAP_VLANS}[{trunk_if}, {}]", s.vlan))?;
            }
        }
        for name in [PROG_EGRESS, PROG_INGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        let ebpf = router.ebpf.insert(ebpf);
        let shims: Vec<String> = router.subifs.iter().map(|s| s.shim.clone()).collect();
        ns.enter(move || {
            attach(ebpf, PROG_INGRESS, trunk_if)?;
            for shim in &shims {
                attach(ebpf, PROG_EGRESS, shim)?;
            }
            Ok(())
        })?;
        Ok(router)
    }

    pub fn ns(&self) -> &NetNs {
        self.ns
    }

    pub fn trunk(&self) -> &str {
        &self.trunk
    }

    pub fn sub_interfaces(&self) -> &[SubInterface] {
        &self.subifs
    }

    /// The sub-interface of `vlan`.
    pub fn sub_interface(&self, vlan: u16) -> Result<&SubInterface> {
        self.subifs
            .iter()
            .find(|s| s.vlan == vlan)
            .with_context(|| format!("no sub-interface for VLAN {vlan}"))
    }

    /// The partner's layer-2 network loses VLAN `vlan` silently: every frame of it is
    /// dropped by the shim both ways (counted as unknown VLAN / sub-interface) while every
    /// link stays up, as when the far side of a hosted connection dies.
    pub fn cut(&mut self, vlan: u16) -> Result<()> {
        self.set_carried(vlan, false)
    }

    /// Undoes [`Self::cut`].
    pub fn mend(&mut self, vlan: u16) -> Result<()> {
        self.set_carried(vlan, true)
    }

    fn set_carried(&mut self, vlan: u16, carried: bool) -> Result<()> {
        let trunk_ifindex = self.ns.ifindex(&self.trunk)?;
        let shim = self.sub_interface(vlan)?.shim.clone();
        let shim_ifindex = self.ns.ifindex(&shim)?;
        let ebpf = self.ebpf.as_mut().context("shim not loaded")?;
        let key = TrunkVlan {
            trunk_ifindex,
            vlan: u32::from(vlan),
        };
        {
            let mut vlans: HashMap<_, TrunkVlan, u32> = HashMap::try_from(
                ebpf.map_mut(MAP_VLANS)
                    .with_context(|| format!("map {MAP_VLANS} missing"))?,
            )?;
            if carried {
                vlans.insert(key, shim_ifindex, 0)?;
            } else {
                vlans.remove(&key)?;
            }
        }
        let mut subifs: HashMap<_, u32, SubIf> = HashMap::try_from(
            ebpf.map_mut(MAP_SUBIFS)
                .with_context(|| format!("map {MAP_SUBIFS} missing"))?,
        )?;
        if carried {
            subifs.insert(
                shim_ifindex,
                SubIf {
                    vlan: u32::from(vlan),
                    trunk_ifindex,
                },
                0,
            )?;
        } else {
            subifs.remove(&shim_ifindex)?;
        }
        Ok(())
    }

    /// The shim's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<ShimCounters> {
        shim_counters(self.ebpf.as_ref().context("shim not loaded")?)
    }
}

/// The counters of a loaded shim object, summed over all CPUs.
pub fn shim_counters(ebpf: &Ebpf) -> Result<ShimCounters> {
    let sums = crate::per_cpu_sums(ebpf, MAP_COUNTERS, &counter::NAMES)?;
    let [
        to_trunk,
        from_trunk,
        unknown_subif,
        not_tagged,
        unknown_vlan,
        stacked_tags,
        helper_failed,
    ] = sums;
    Ok(ShimCounters {
        to_trunk,
        from_trunk,
        unknown_subif,
        not_tagged,
        unknown_vlan,
        stacked_tags,
        helper_failed,
    })
}

impl Drop for CustomerRouter<'_> {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // TCX links (Linux ≥ 6.6) detach when their fds close, wherever that happens; the
            // netlink filters of older kernels are removed by ifindex in the closing thread's
            // namespace, so close everything inside ours.
            if let Err(e) = self.ns.enter(move || {
                drop(ebpf);
                Ok(())
            }) {
                eprintln!(
                    "warning: closing the VLAN shim in {}: {e:#}",
                    self.ns.name()
                );
            }
        }
        for s in &self.subifs {
            if let Err(e) = self.ns.exec(&["ip", "link", "del", &s.name]) {
                eprintln!("warning: removing {} in {}: {e:#}", s.name, self.ns.name());
            }
        }
    }
}

/// `v{vlan}` with its address, and `v{vlan}p`, both up.
fn create_pair(ns: &NetNs, vlan: u16, address: &str) -> Result<SubInterface> {
    let name = format!("v{vlan}");
    let shim = format!("v{vlan}p");
    ns.exec(&[
        "ip", "link", "add", &name, "type", "veth", "peer", "name", &shim,
    ])?;
    ns.exec(&["ip", "addr", "add", address, "dev", &name])?;
    ns.exec(&["ip", "link", "set", &name, "up"])?;
    ns.exec(&["ip", "link", "set", &shim, "up"])?;
    let mac = interface_mac(ns, &name)?;
    Ok(SubInterface {
        vlan,
        name,
        shim,
        address: address.to_owned(),
        mac,
    })
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the shim object"))?;
    Ok(program.try_into()?)
}

/// Attaches `program` to TC ingress of `ifname` in the calling thread's namespace.
fn attach(ebpf: &mut Ebpf, program: &str, ifname: &str) -> Result<()> {
    // aya attaches through TCX links where the kernel has them (≥ 6.6) and needs no qdisc
    // there; clsact is for the netlink (cls_bpf, direct-action) path of older kernels.
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("adding clsact to {ifname}")),
    }
    classifier(ebpf, program)?
        .attach(ifname, TcAttachType::Ingress)
        .with_context(|| format!("attaching {program} to TC ingress of {ifname}"))?;
    Ok(())
}

/// The MAC of `ifname` in `ns`. Read through `ip netns exec`, which mounts the namespace's
/// own /sys (a thread that only called setns still sees the host's).
pub fn interface_mac(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{ifname}/address");
    let out = ns.exec(&["cat", &path])?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_mac(text.trim()).with_context(|| format!("{path} in {}", ns.name()))
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .with_context(|| format!("MAC {text:?} is too short"))?;
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text:?}"))?;
    }
    if parts.next().is_some() {
        bail!("MAC {text:?} is too long");
    }
    Ok(mac)
}

/// Bytes → `aa:bb:cc:dd:ee:ff`, as `ip` and `ethtool` take it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() -> Result<()> {
        let mac = parse_mac("02:00:0a:ff:00:01")?;
        assert_eq!(mac, [2, 0, 0x0a, 0xff, 0, 1]);
        assert_eq!(format_mac(mac), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_err());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_err());
        assert!(parse_mac("02:00:0a:ff:00:zz").is_err());
        Ok(())
    }
}
