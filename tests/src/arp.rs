//! An XDP ARP responder on a customer trunk (`xdp_arp_reply` of `forwarder-test-ebpf`): it
//! answers every 802.1Q-tagged ARP request that reaches the trunk, on behalf of a client router
//! with MAC `02:cc:00:00:HI:LO` on VLAN HI:LO ([`arp_reply_mac`]). One program stands in for
//! the client routers of any number of VLANs, so a test can bring up a thousand static VIFs
//! without a thousand sub-interfaces.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
pub use forwarder_test_ebpf::arp_reply_mac;
use forwarder_test_ebpf::{MAP_ARP_COUNTERS, PROG_ARP_REPLY, arp_counter};

use crate::{NetNs, customer::SHIM_OBJECT};

/// The responder's counters, summed over CPUs (see `forwarder_test_ebpf::arp_counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpCounters {
    /// Requests answered with XDP_TX.
    pub replied: u64,
    /// Frames that were not tagged ARP requests.
    pub passed: u64,
    /// Probes and announcements, which get no answer.
    pub not_answered: u64,
}

/// The responder attached (native XDP) to one interface in a namespace; dropping it detaches
/// the program. The namespace it borrows outlives it.
pub struct ArpResponder<'ns> {
    ns: &'ns NetNs,
    ifname: String,
    /// `Some` from attach until drop, which closes it inside the namespace.
    ebpf: Option<Ebpf>,
}

impl<'ns> ArpResponder<'ns> {
    /// Loads the program and attaches it to `ifname` in `ns` in native mode. On a veth, the
    /// replies (XDP_TX) reach the peer only if the peer runs XDP or has GRO on.
    pub fn attach(ns: &'ns NetNs, ifname: &str) -> Result<Self> {
        let ebpf = load()?;
        let mut responder = Self {
            ns,
            ifname: ifname.to_owned(),
            ebpf: None,
        };
        let ebpf = responder.ebpf.insert(ebpf);
        let name = ifname.to_owned();
        ns.enter(move || {
            program(ebpf)?
                .attach(&name, XdpMode::Driver)
                .with_context(|| format!("attaching {PROG_ARP_REPLY} to {name}"))?;
            Ok(())
        })?;
        Ok(responder)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The counters, summed over all CPUs.
    pub fn counters(&self) -> Result<ArpCounters> {
        counters(self.ebpf.as_ref().context("responder not loaded")?)
    }
}

impl Drop for ArpResponder<'_> {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // An XDP link detaches when its fd closes; the netlink fallback of older kernels
            // detaches by ifindex in the closing thread's namespace, so close it inside ours.
            if let Err(e) = self.ns.enter(move || {
                drop(ebpf);
                Ok(())
            }) {
                eprintln!(
                    "warning: detaching the ARP responder from {} in {}: {e:#}",
                    self.ifname,
                    self.ns.name()
                );
            }
        }
    }
}

/// The test object with [`PROG_ARP_REPLY`] loaded into the kernel, not attached: for
/// BPF_PROG_TEST_RUN, or to attach with [`program`].
pub fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(SHIM_OBJECT).context("loading the test eBPF object")?;
    program(&mut ebpf)?
        .load()
        .with_context(|| format!("loading {PROG_ARP_REPLY}"))?;
    Ok(ebpf)
}

/// The responder program of an object from [`load`].
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(PROG_ARP_REPLY)
        .with_context(|| format!("program {PROG_ARP_REPLY} missing from the test object"))?;
    Ok(program.try_into()?)
}

/// The counters of a loaded test object, summed over all CPUs.
pub fn counters(ebpf: &Ebpf) -> Result<ArpCounters> {
    let sums = crate::per_cpu_sums(ebpf, MAP_ARP_COUNTERS, &arp_counter::NAMES)?;
    let [replied, passed, not_answered] = sums;
    Ok(ArpCounters {
        replied,
        passed,
        not_answered,
    })
}
