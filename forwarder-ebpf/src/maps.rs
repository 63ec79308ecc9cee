//! Every map of the data plane. Names, key and value types and capacities come from
//! `forwarder-common`; the agent may pin them (maps are created unpinned here and pinned by
//! path at load time) and may resize `ROUTES` (and `ROUTES24` with it) at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use forwarder_common::{
    Attachment, BfdAnswer, BfdKey, CAPTURE_RING_BYTES, ControlBuckets, DROP_SLOTS, MAX_ATTACHMENTS,
    MAX_BFD_ANSWERS, MAX_NEXT_HOPS, MAX_PORTS, MAX_ROUTES, MAX_ROUTES6, MAX_VIFS, NextHop,
    PASS_SLOTS, ROUTES24_PER_ROUTE, RouteKey, RouteKey6, TrafficCounters, UnderlayHop, Vif,
    VifAddrs6, VifDrops, VifKey, VifPolicy, VtepKey,
};

#[map(name = "VIFS")]
pub static VIFS: HashMap<VifKey, u32> = HashMap::with_max_entries(MAX_VIFS, 0);

#[map(name = "VIF_TABLE")]
pub static VIF_TABLE: Array<Vif> = Array::with_max_entries(MAX_VIFS, 0);

#[map(name = "CONTROL_PORTS")]
pub static CONTROL_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VIFS, 0);

#[map(name = "ATTACHMENTS")]
pub static ATTACHMENTS: Array<Attachment> = Array::with_max_entries(MAX_ATTACHMENTS, 0);

#[map(name = "UNDERLAY")]
pub static UNDERLAY: Array<UnderlayHop> = Array::with_max_entries(MAX_ATTACHMENTS, 0);

#[map(name = "VTEPS")]
pub static VTEPS: HashMap<VtepKey, u32> = HashMap::with_max_entries(MAX_ATTACHMENTS, 0);

#[map(name = "ROUTES")]
pub static ROUTES: LpmTrie<RouteKey, u32> =
    LpmTrie::with_max_entries(MAX_ROUTES, BPF_F_NO_PREALLOC);

#[map(name = "ROUTES24")]
pub static ROUTES24: HashMap<RouteKey, u32> =
    HashMap::with_max_entries(ROUTES24_PER_ROUTE * MAX_ROUTES, BPF_F_NO_PREALLOC);

#[map(name = "ROUTES6")]
pub static ROUTES6: LpmTrie<RouteKey6, u32> =
    LpmTrie::with_max_entries(MAX_ROUTES6, BPF_F_NO_PREALLOC);

#[map(name = "VIF_ADDRS6")]
pub static VIF_ADDRS6: Array<VifAddrs6> = Array::with_max_entries(MAX_VIFS, 0);

#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(MAX_NEXT_HOPS, 0);

#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

#[map(name = "VIF_STATS")]
pub static VIF_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_VIFS, 0);

#[map(name = "ATTACHMENT_STATS")]
pub static ATTACHMENT_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_ATTACHMENTS, 0);

#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

#[map(name = "PASSES")]
pub static PASSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PASS_SLOTS, 0);

#[map(name = "VIF_POLICY")]
pub static VIF_POLICY: Array<VifPolicy> = Array::with_max_entries(MAX_VIFS, 0);

#[map(name = "CONTROL_BUCKETS")]
pub static CONTROL_BUCKETS: PerCpuArray<ControlBuckets> =
    PerCpuArray::with_max_entries(MAX_VIFS, 0);

#[map(name = "VIF_DROPS")]
pub static VIF_DROPS: PerCpuArray<VifDrops> = PerCpuArray::with_max_entries(MAX_VIFS, 0);

#[map(name = "BFD_ANSWER")]
pub static BFD_ANSWER: HashMap<BfdKey, BfdAnswer> = HashMap::with_max_entries(MAX_BFD_ANSWERS, 0);

#[map(name = "ICMP_BUCKET")]
pub static ICMP_BUCKET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "CAPTURE")]
pub static CAPTURE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "CAPTURE_RING")]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);
