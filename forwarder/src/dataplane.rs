//! The XDP data plane as the agent sees it: the embedded eBPF object, loading it, and typed
//! access to its maps. Map names and value types come from `forwarder-common` only.

use aya::{
    Ebpf,
    maps::{MapError, PerCpuArray},
};
use forwarder_common::{PacketCounter, VLAN_COUNTERS, VLAN_UNTAGGED_SLOT};

/// The eBPF object built by `build.rs` from `forwarder-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("map {0} not found in the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Loads the embedded object into the kernel (programs verified, maps created, nothing attached).
pub fn load() -> Result<Ebpf, Error> {
    Ebpf::load(EBPF_OBJECT).map_err(Error::Load)
}

/// Packets and bytes counted by `vlan_count` for one VLAN id (`None`: untagged), summed over
/// all CPUs.
pub fn vlan_counter(ebpf: &Ebpf, vlan: Option<u16>) -> Result<PacketCounter, Error> {
    let map = ebpf
        .map(VLAN_COUNTERS)
        .ok_or(Error::MissingMap(VLAN_COUNTERS))?;
    let counters = PerCpuArray::<_, PacketCounter>::try_from(map).map_err(|source| Error::Map {
        name: VLAN_COUNTERS,
        source,
    })?;
    let slot = vlan.map_or(VLAN_UNTAGGED_SLOT, u32::from);
    let per_cpu = counters.get(&slot, 0).map_err(|source| Error::Map {
        name: VLAN_COUNTERS,
        source,
    })?;
    Ok(per_cpu
        .iter()
        .fold(PacketCounter::default(), |sum, c| PacketCounter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
}
