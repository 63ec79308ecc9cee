//! The only contract between the XDP programs and the agent: map names, capacities, the
//! `#[repr(C)]` types stored in the maps, counter indices, and the two pure functions both
//! sides must agree on (the flow hash and the outer IPv4 checksum). Both sides compile this
//! crate; nothing here may depend on `std`.
#![no_std]

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Map names and capacities.

/// `HashMap<VifKey, u32>`: (connection port ifindex, VLAN id) → VIF id.
pub const MAP_VIFS: &str = "VIFS";
/// `Array<Vif>` indexed by VIF id.
pub const MAP_VIF_TABLE: &str = "VIF_TABLE";
/// `HashMap<u32, u32>`: ifindex of a VIF's control veth (host end) → VIF id.
pub const MAP_CONTROL_PORTS: &str = "CONTROL_PORTS";
/// `Array<Attachment>` indexed by attachment id.
pub const MAP_ATTACHMENTS: &str = "ATTACHMENTS";
/// `HashMap<VtepKey, u32>`: (VNI, remote VTEP) → attachment id.
pub const MAP_VTEPS: &str = "VTEPS";
/// `Array<UnderlayHop>` indexed by attachment id: the underlay next hop toward the remote
/// VTEP as the agent resolved it from the kernel's routes and neighbours, so that
/// encapsulation needs no FIB lookup per packet.
pub const MAP_UNDERLAY: &str = "UNDERLAY";
/// `LpmTrie<RouteKey, u32>`: (border gateway id, IPv4 prefix) → next-hop id.
pub const MAP_ROUTES: &str = "ROUTES";
/// `HashMap<RouteKey, u32>`: (border gateway id, IPv4 /24 with its last octet 0) → next-hop id
/// of the longest [`MAP_ROUTES`] prefix of [`ROUTES24_SHORTEST`]..=24 bits covering that /24,
/// for a /24 that no longer prefix splits. The data plane looks here first and walks the
/// trie only on a miss: one hash probe instead of a walk that grows with the table. Written
/// only by the agent, from the routes it wrote to [`MAP_ROUTES`]; a /24 with no entry is
/// answered by the trie alone, so an entry is only ever a shortcut to the trie's answer.
pub const MAP_ROUTES24: &str = "ROUTES24";
/// The shortest prefix length [`MAP_ROUTES24`] holds: a prefix of `len` bits takes up to
/// `2^(24 - len)` entries (8 at most); shorter ones are left to the trie.
pub const ROUTES24_SHORTEST: u8 = 21;
/// `LpmTrie<RouteKey6, u32>`: (border gateway id, IPv6 prefix) → next-hop id. Next hops are
/// shared with [`MAP_ROUTES`]: a VIF next hop of an IPv6 route carries the MAC the client
/// router's IPv6 address resolves to (Neighbor Discovery).
pub const MAP_ROUTES6: &str = "ROUTES6";
/// `Array<VifAddrs6>` indexed by VIF id: a VIF's IPv6 interconnect pairs. A separate map, so
/// that [`MAP_VIF_TABLE`] keeps its layout across upgrades; all zero: the VIF has no IPv6.
pub const MAP_VIF_ADDRS6: &str = "VIF_ADDRS6";
/// `Array<NextHop>` indexed by next-hop id.
pub const MAP_NEXT_HOPS: &str = "NEXT_HOPS";
/// `DevMapHash`: ifindex → ifindex, every port a frame may be redirected to.
pub const MAP_TX_PORTS: &str = "TX_PORTS";
/// `PerCpuArray<TrafficCounters>` indexed by VIF id.
pub const MAP_VIF_STATS: &str = "VIF_STATS";
/// `PerCpuArray<TrafficCounters>` indexed by attachment id.
pub const MAP_ATTACHMENT_STATS: &str = "ATTACHMENT_STATS";
/// `PerCpuArray<u64>` indexed by [`drop_reason`].
pub const MAP_DROPS: &str = "DROPS";
/// `PerCpuArray<u64>` indexed by [`pass_reason`]: frames handed to the host or a control plane.
pub const MAP_PASSES: &str = "PASSES";

/// `Array<VifPolicy>` indexed by VIF id: MTU, source check and the control-path rate limit.
/// A separate map, so that [`MAP_VIF_TABLE`] keeps its layout across upgrades; an all-zero
/// entry (what a new map holds until the agent writes it) checks and limits nothing.
pub const MAP_VIF_POLICY: &str = "VIF_POLICY";
/// `PerCpuArray<ControlBuckets>` indexed by VIF id: the state of each VIF's control-path
/// token buckets on each CPU.
pub const MAP_CONTROL_BUCKETS: &str = "CONTROL_BUCKETS";
/// `PerCpuArray<VifDrops>` indexed by VIF id: drops a single VIF causes (rate limit, source
/// check, too big), so an operator can see which customer it is.
pub const MAP_VIF_DROPS: &str = "VIF_DROPS";
/// `PerCpuArray<u64>` of one entry: the ICMP token bucket (the time the next ICMP error may
/// be sent, ns) of each CPU.
pub const MAP_ICMP_BUCKET: &str = "ICMP_BUCKET";

/// `HashMap<BfdKey, BfdAnswer>`: BFD sessions the data plane answers itself while the agent
/// is away (written by an agent stopping for a restart, removed by the next one as its own
/// BFD sessions take over), so that a restart does not look like a path failure.
pub const MAP_BFD_ANSWER: &str = "BFD_ANSWER";
/// Entries of [`MAP_BFD_ANSWER`]: one per BGP session.
pub const MAX_BFD_ANSWERS: u32 = 2 * MAX_VIFS;
/// UDP port of single-hop BFD control packets (RFC 5881).
pub const BFD_PORT: u16 = 3784;

/// `Array<u32>` of one entry: the VIF whose frames are copied to [`MAP_CAPTURE_RING`]
/// (`forwarder capture`), 0 when no capture runs. One array read per frame otherwise.
pub const MAP_CAPTURE: &str = "CAPTURE";
/// `RingBuf` of [`CaptureRecord`]s, read by the agent while a capture runs.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
/// Bytes of the capture ring buffer (a power of two, a multiple of the page size).
pub const CAPTURE_RING_BYTES: u32 = 4 << 20;
/// Bytes of a frame a capture keeps (longer frames are cut, their length recorded).
pub const CAPTURE_SNAPLEN: usize = 2048;

/// VIF ids are 0..MAX_VIFS (4094 VLANs on each of several connections).
pub const MAX_VIFS: u32 = 16_384;
pub const MAX_ATTACHMENTS: u32 = 4_096;
/// Every VIF the maps hold can have its next hops (at most 6: two client routers, their
/// group and three BGP session groups), plus one per attachment.
pub const MAX_NEXT_HOPS: u32 = 131_072;
pub const MAX_ROUTES: u32 = 1_048_576;
/// Entries of [`MAP_ROUTES24`] for each entry of [`MAP_ROUTES`] (a public IPv4 table of 1M
/// routes needs about 1.6M /24 entries); a /24 that finds no room is left to the trie.
pub const ROUTES24_PER_ROUTE: u32 = 2;
/// IPv6 routes of all border gateways together (the whole IPv6 Internet table is about a
/// fifth of this); entries are allocated as they are used.
pub const MAX_ROUTES6: u32 = 524_288;
pub const MAX_PORTS: u32 = 1_024;
/// Members of one next-hop group (ECMP by flow hash).
pub const MAX_GROUP_MEMBERS: usize = 8;
/// Slots of [`MAP_DROPS`] and [`MAP_PASSES`]: more than there are reasons, so that a new
/// reason does not change a pinned map's size (an upgrade adopts the old map).
pub const DROP_SLOTS: u32 = 64;
pub const PASS_SLOTS: u32 = 16;

/// MTU of a VIF when the config names none, and the largest one allowed (AWS's jumbo MTU for
/// private VIFs).
pub const DEFAULT_VIF_MTU: u16 = 1500;
pub const MAX_VIF_MTU: u16 = 9001;

/// ICMP errors the data plane sends (fragmentation needed), per CPU: one every
/// `ICMP_INTERVAL_NS`, at most `ICMP_BURST` at once. The kernel's default is 1000/s, burst 50.
pub const ICMP_INTERVAL_NS: u64 = 1_000_000;
pub const ICMP_BURST: u64 = 50;

/// Where every program's maps are pinned (maps/) and its links (links/), so that forwarding
/// survives the agent and a new agent re-adopts the state.
pub const PIN_ROOT: &str = "/sys/fs/bpf/forwarder";

// ---------------------------------------------------------------------------------------------
// Wire constants.

pub const VXLAN_PORT: u16 = 4789;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
/// The smallest MTU an IPv6 link may have (RFC 8200 §5): a VIF with IPv6 pairs needs at least
/// this, and an ICMPv6 Packet Too Big never says less.
pub const IPV6_MIN_MTU: u16 = 1280;
/// UDP source ports for VXLAN come from this range (RFC 7348 recommends 49152–65535).
pub const VXLAN_SPORT_BASE: u16 = 49_152;

// ---------------------------------------------------------------------------------------------
// Map types.

/// Key of [`MAP_VIFS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VifKey {
    pub ifindex: u32,
    pub vlan: u16,
    pub _pad: u16,
}

/// VIF states as stored in [`Vif::state`]. `VIF_ABSENT` is an empty array slot.
pub mod vif_state {
    pub const ABSENT: u32 = 0;
    pub const CONFIGURING: u32 = 1;
    pub const AVAILABLE: u32 = 2;
    pub const UNAVAILABLE: u32 = 3;
    pub const DELETING: u32 = 4;
}

/// Value of [`MAP_VIF_TABLE`]. Control traffic passes in every state but `ABSENT` and
/// `DELETING` (BGP must come up while `CONFIGURING`); data only when `AVAILABLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vif {
    pub state: u32,
    pub gateway_id: u32,
    /// Connection port the VIF lives on: where frames toward the customer go.
    pub port_ifindex: u32,
    /// Host end of the VIF's control veth; 0 = no control plane yet.
    pub control_ifindex: u32,
    /// The cloud interconnect addresses (up to two /30 pairs); 0.0.0.0 = unused.
    pub cloud_addrs: [[u8; 4]; 2],
    pub vlan: u16,
    /// Source MAC toward the customer (the MAC the customer resolves the cloud address to).
    pub mac: [u8; 6],
}

/// Bits of [`VifPolicy::flags`].
pub mod vif_flags {
    /// Unicast RPF: a data packet from the customer whose source is not routed back to this
    /// VIF (by a static or BGP route of its border gateway) is dropped.
    pub const SOURCE_CHECK: u16 = 1;
}

/// Classes of control-path traffic, each with its own token bucket per VIF, so that a flood
/// of one class does not starve the others: BGP (TCP port 179 to or from the cloud address),
/// ARP, and everything else (broadcast, multicast, ICMP and other traffic to the cloud
/// address).
pub mod control_class {
    pub const BGP: usize = 0;
    pub const ARP: usize = 1;
    pub const OTHER: usize = 2;
    pub const COUNT: usize = 3;
}

/// Value of [`MAP_VIF_POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifPolicy {
    /// Largest IPv4 packet sent toward the customer (total length); 0 = not checked.
    pub mtu: u16,
    /// [`vif_flags`].
    pub flags: u16,
    /// Control path: nanoseconds per frame of each class on each CPU; 0 = unlimited.
    pub control_interval_ns: u32,
    /// Control path: depth of each bucket, in nanoseconds (burst × interval).
    pub control_burst_ns: u64,
}

/// Value of [`MAP_CONTROL_BUCKETS`], per CPU: for each [`control_class`], the time before
/// which the bucket is empty (a virtual clock: a frame passes when `now >= next − burst` and
/// moves it one interval on).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlBuckets {
    pub next_ns: [u64; control_class::COUNT],
    pub _pad: u64,
}

/// Value of [`MAP_VIF_DROPS`], per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifDrops {
    /// Control frames over the VIF's rate limit.
    pub control_limited: u64,
    /// Data packets failing the source check.
    pub source_check: u64,
    /// Packets too big for the path (an ICMP error went back, or the packet was dropped).
    pub too_big: u64,
    pub _reserved: u64,
}

/// Key of [`MAP_BFD_ANSWER`]: the VIF and the client router's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BfdKey {
    pub vif: u32,
    pub client: [u8; 4],
}

/// Value of [`MAP_BFD_ANSWER`]: what our side of an Up BFD session says (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BfdAnswer {
    pub my_disc: u32,
    /// The peer's discriminator: a packet naming another is not answered.
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub detect_mult: u8,
    pub _pad: u8,
    /// Our UDP source port (RFC 5881: 49152–65535), as the peer knows it.
    pub source_port: u16,
    /// The peer's Required Min RX and Desired Min TX (µs) when the agent stopped, for the
    /// next agent to go on with.
    pub remote_min_rx: u32,
    pub remote_desired_tx: u32,
}

/// Value of [`MAP_ATTACHMENTS`]: everything the encapsulation needs that does not change per
/// packet. `state` 0 is an empty slot, 1 an active attachment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub state: u32,
    pub gateway_id: u32,
    pub vni: u32,
    pub local_vtep: [u8; 4],
    pub remote_vtep: [u8; 4],
    /// Underlay port: where the FIB lookup for the remote VTEP starts.
    pub underlay_ifindex: u32,
    /// [`outer_ipv4_partial_csum`] of (local_vtep, remote_vtep), computed once in userspace.
    pub ip_csum_partial: u32,
    /// Inner destination MAC on the VPC side.
    pub router_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of [`MAP_UNDERLAY`]. `valid` 0: encapsulation asks the kernel's FIB per packet
/// (`bpf_fib_lookup`), as for an underlay route with several next hops (ECMP) or a next
/// hop whose MAC is not known; 1: the frame leaves through `ifindex` from `smac` to `dmac`,
/// and an outer packet above `mtu` bytes is too big.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayHop {
    pub valid: u32,
    pub ifindex: u32,
    pub mtu: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Key of [`MAP_VTEPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VtepKey {
    pub vni: u32,
    pub remote_vtep: [u8; 4],
}

/// Data part of the [`MAP_ROUTES`] LPM key. The gateway id is big-endian so that the trie,
/// which matches bits from the first byte on, keeps gateways apart: the key's prefix length is
/// `32 + prefix length of the route`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub gateway_be: [u8; 4],
    pub addr: [u8; 4],
}

impl RouteKey {
    pub const fn new(gateway_id: u32, addr: [u8; 4]) -> Self {
        Self {
            gateway_be: gateway_id.to_be_bytes(),
            addr,
        }
    }
    /// The [`MAP_ROUTES24`] key of the /24 holding `addr`.
    pub const fn slash24(gateway_id: u32, addr: [u8; 4]) -> Self {
        Self::new(gateway_id, [addr[0], addr[1], addr[2], 0])
    }
    /// LPM prefix length for an IPv4 prefix of `len` bits in this key.
    pub const fn lpm_len(prefix_len: u8) -> u32 {
        32 + prefix_len as u32
    }
}

/// Data part of the [`MAP_ROUTES6`] LPM key: as [`RouteKey`], with a 128-bit address. The
/// key's prefix length is `32 + prefix length of the route`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey6 {
    pub gateway_be: [u8; 4],
    pub addr: [u8; 16],
}

impl RouteKey6 {
    pub const fn new(gateway_id: u32, addr: [u8; 16]) -> Self {
        Self {
            gateway_be: gateway_id.to_be_bytes(),
            addr,
        }
    }
}

/// Value of [`MAP_VIF_ADDRS6`]: up to two IPv6 interconnect pairs of a VIF (`::` = unused).
/// Frames to a cloud address go to the VIF's control plane; the client addresses are the
/// client routers' (the BGP class of the control-path limit, the source check's exception).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifAddrs6 {
    pub cloud: [[u8; 16]; 2],
    pub client: [[u8; 16]; 2],
}

/// Kinds of [`NextHop`].
pub mod next_hop_kind {
    pub const NONE: u32 = 0;
    /// `target` is an attachment id: encapsulate toward the VPC.
    pub const ATTACHMENT: u32 = 1;
    /// `target` is a VIF id, `mac` the client router's MAC on it.
    pub const VIF: u32 = 2;
    /// `members[..member_count]` are next-hop ids (never groups), chosen by flow hash.
    pub const GROUP: u32 = 3;
}

/// Value of [`MAP_NEXT_HOPS`]. Routes point here, so a failed group member is removed from
/// every route behind it by one write of the group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub kind: u32,
    pub target: u32,
    pub mac: [u8; 6],
    pub member_count: u16,
    pub members: [u32; MAX_GROUP_MEMBERS],
}

/// Value of [`MAP_VIF_STATS`] and [`MAP_ATTACHMENT_STATS`], per CPU.
/// VIF: rx = from the customer, tx = toward the customer.
/// Attachment: rx = decapsulated from the VPC, tx = encapsulated toward the VPC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Packets and bytes, one per CPU per slot; the agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Directions of a captured frame ([`CaptureRecord::direction`]).
pub mod capture_direction {
    /// Received from the customer, as it arrived (tagged).
    pub const FROM_CUSTOMER: u32 = 0;
    /// Sent toward the customer, as it leaves (tagged).
    pub const TO_CUSTOMER: u32 = 1;
}

/// One captured frame in [`MAP_CAPTURE_RING`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    /// `bpf_ktime_get_ns` when it was seen (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    pub vif: u32,
    /// One of [`capture_direction`].
    pub direction: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// Bytes of it in `data` (at most [`CAPTURE_SNAPLEN`]).
    pub caplen: u32,
    pub data: [u8; CAPTURE_SNAPLEN],
}

const _: () = assert!(size_of::<CaptureRecord>() == 24 + CAPTURE_SNAPLEN);
const _: () = assert!(size_of::<VifKey>() == 8);
const _: () = assert!(size_of::<Vif>() == 32);
const _: () = assert!(size_of::<Attachment>() == 36);
const _: () = assert!(size_of::<VtepKey>() == 8);
const _: () = assert!(size_of::<UnderlayHop>() == 24);
const _: () = assert!(size_of::<RouteKey>() == 8);
const _: () = assert!(size_of::<NextHop>() == 48);
const _: () = assert!(size_of::<RouteKey6>() == 20);
const _: () = assert!(size_of::<VifAddrs6>() == 64);
const _: () = assert!(size_of::<TrafficCounters>() == 32);
const _: () = assert!(size_of::<PacketCounter>() == 16);
const _: () = assert!(size_of::<VifPolicy>() == 16);
const _: () = assert!(size_of::<BfdKey>() == 8);
const _: () = assert!(size_of::<BfdAnswer>() == 28);
const _: () = assert!(size_of::<ControlBuckets>() == 32);
const _: () = assert!(size_of::<VifDrops>() == 32);
const _: () = assert!(drop_reason::COUNT <= DROP_SLOTS && pass_reason::COUNT <= PASS_SLOTS);

// ---------------------------------------------------------------------------------------------
// Counter indices.

/// Why a frame was dropped: indices of [`MAP_DROPS`].
pub mod drop_reason {
    /// Untagged frame on a connection port.
    pub const NOT_TAGGED: u32 = 0;
    /// An 802.1ad (0x88a8) service tag: not configured on any port.
    pub const SERVICE_TAG: u32 = 1;
    /// (port, VLAN) belongs to no VIF.
    pub const UNKNOWN_VLAN: u32 = 2;
    /// The VIF (or the next hop's VIF) is not `available`.
    pub const VIF_DOWN: u32 = 3;
    /// No route in the border gateway's table, or the route leads nowhere this direction serves.
    pub const NO_ROUTE: u32 = 4;
    /// TTL (IPv4) or hop limit (IPv6) ≤ 1.
    pub const TTL: u32 = 5;
    /// Too big for the next link (underlay MTU − 50 toward the VPC, the VIF's MTU toward
    /// the customer) and not answered with an ICMP error: DF clear (the data plane does not
    /// fragment), or the ICMP rate limit reached.
    pub const MTU: u32 = 6;
    /// Truncated or inconsistent headers.
    pub const MALFORMED: u32 = 7;
    /// VXLAN whose (VNI, outer source) matches no attachment.
    pub const BAD_VXLAN: u32 = 8;
    /// The underlay next hop (or the client router) has no resolved MAC.
    pub const NO_NEIGHBOUR: u32 = 9;
    /// Data frame that is neither IPv4 nor IPv6 (the name predates IPv6 forwarding).
    pub const NOT_IPV4: u32 = 10;
    /// Control frame for a VIF whose control plane is not set up.
    pub const NO_CONTROL_PLANE: u32 = 11;
    /// A route's next hop is empty or a group holds no usable member.
    pub const BAD_NEXT_HOP: u32 = 12;
    /// The output port is not in the TX port map.
    pub const NO_TX_PORT: u32 = 13;
    /// The kernel FIB has no usable route to the remote VTEP.
    pub const UNDERLAY_UNREACHABLE: u32 = 14;
    /// A control frame over its VIF's rate limit (counted per VIF too).
    pub const CONTROL_LIMITED: u32 = 15;
    /// A data packet whose source is not routed to the VIF it came from (`source_check`).
    pub const SOURCE_CHECK: u32 = 16;
    /// An IPv6 data packet with a link-local, unspecified, loopback or multicast source, or a
    /// loopback, unspecified or link-local destination: never forwarded off its link
    /// (RFC 4291 §2.5). Link-local destinations on a VIF go to its control plane instead.
    pub const IPV6_SCOPE: u32 = 17;
    pub const COUNT: u32 = 18;

    /// Names as the CLI and metrics show them, in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "not_tagged",
        "service_tag",
        "unknown_vlan",
        "vif_down",
        "no_route",
        "ttl_exceeded",
        "mtu_exceeded",
        "malformed",
        "bad_vxlan",
        "no_neighbour",
        "not_ipv4",
        "no_control_plane",
        "bad_next_hop",
        "no_tx_port",
        "underlay_unreachable",
        "control_rate_limited",
        "source_check",
        "ipv6_scope",
    ];
}

/// Frames not forwarded by XDP but not dropped either: indices of [`MAP_PASSES`].
pub mod pass_reason {
    /// Underlay traffic that is not VXLAN: the host's own, handed to its stack.
    pub const HOST: u32 = 0;
    /// Customer control frame (ARP, BGP, ICMP to the cloud address) into a VIF's control plane.
    pub const CONTROL_IN: u32 = 1;
    /// Frame from a VIF's control plane, tagged and sent to the customer.
    pub const CONTROL_OUT: u32 = 2;
    /// A packet too big for the next link, answered with ICMP "fragmentation needed" (sent
    /// back out of the port it came in on).
    pub const ICMP_FRAG_NEEDED: u32 = 3;
    /// A BFD control packet answered by the data plane while the agent was away.
    pub const BFD_ANSWERED: u32 = 4;
    /// An IPv6 packet too big for the next link, answered with ICMPv6 Packet Too Big.
    pub const ICMP6_TOO_BIG: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "host",
        "control_in",
        "control_out",
        "icmp_frag_needed",
        "bfd_answered",
        "icmp6_too_big",
    ];
}

// ---------------------------------------------------------------------------------------------
// Functions both sides must compute identically.

/// Flow hash of an IPv4 flow (addresses in network byte order as read from the header, ports
/// 0 when absent). Chooses the VXLAN UDP source port and the member of a next-hop group, so
/// one flow always takes one path.
#[inline(always)]
pub const fn flow_hash(src: u32, dst: u32, proto: u8, sport: u16, dport: u16) -> u32 {
    let mut h = src.wrapping_mul(0x9e37_79b1);
    h ^= dst.rotate_left(13).wrapping_mul(0x85eb_ca6b);
    h ^= ((sport as u32) << 16 | dport as u32).wrapping_mul(0xc2b2_ae35);
    h ^= proto as u32;
    // murmur3 finalizer: every input bit reaches every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Flow hash of an IPv6 flow: each address folded to 32 bits, the flow label mixed into the
/// destination's fold (RFC 6438: a flow label set by the source spreads flows whose ports are
/// hidden behind extension headers), then [`flow_hash`].
#[inline(always)]
pub const fn flow_hash6(
    src: [u8; 16],
    dst: [u8; 16],
    flow_label: u32,
    proto: u8,
    sport: u16,
    dport: u16,
) -> u32 {
    flow_hash(
        fold128(src),
        fold128(dst) ^ flow_label.wrapping_mul(0x27d4_eb2f),
        proto,
        sport,
        dport,
    )
}

#[inline(always)]
const fn fold128(a: [u8; 16]) -> u32 {
    word(a, 0)
        ^ word(a, 4).rotate_left(7)
        ^ word(a, 8).rotate_left(14)
        ^ word(a, 12).rotate_left(21)
}

#[inline(always)]
const fn word(a: [u8; 16], i: usize) -> u32 {
    u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// UDP source port of the VXLAN header for a flow hash.
#[inline(always)]
pub const fn vxlan_source_port(hash: u32) -> u16 {
    VXLAN_SPORT_BASE | (hash & 0x3fff) as u16
}

/// Index into a group's members for a flow hash.
#[inline(always)]
pub const fn group_member(hash: u32, count: u16) -> usize {
    // High bits, so the choice is independent of the source port (low bits).
    ((hash >> 16) % count as u32) as usize
}

/// Ones'-complement sum of the outer IPv4 header the XDP program writes (version 4, IHL 5,
/// TOS 0, ID 0, DF, TTL 64, UDP) with total length and checksum zero. The program adds the
/// total length and folds: the per-packet work is two additions.
pub const fn outer_ipv4_partial_csum(src: [u8; 4], dst: [u8; 4]) -> u32 {
    0x4500
        + 0x4000
        + ((OUTER_TTL as u32) << 8 | 17)
        + ((src[0] as u32) << 8 | src[1] as u32)
        + ((src[2] as u32) << 8 | src[3] as u32)
        + ((dst[0] as u32) << 8 | dst[1] as u32)
        + ((dst[2] as u32) << 8 | dst[3] as u32)
}

/// TTL of the outer IPv4 header.
pub const OUTER_TTL: u8 = 64;

/// Final IPv4 header checksum from a partial sum plus the total length (host order result).
#[inline(always)]
pub const fn finish_ipv4_csum(partial: u32, total_len: u16) -> u16 {
    let mut sum = partial + total_len as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Legacy: frames per VLAN id counted by the `vlan_count` diagnostic program.
pub const VLAN_COUNTERS: &str = "VLAN_COUNTERS";
/// Index of the "untagged frame" slot in [`VLAN_COUNTERS`]: VLAN ids are 0..=4095.
pub const VLAN_UNTAGGED_SLOT: u32 = 4096;
pub const VLAN_COUNTERS_LEN: u32 = VLAN_UNTAGGED_SLOT + 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type here is #[repr(C)], Copy, made only of integers and byte arrays, with
    // no implicit padding (checked by the size assertions above), so any byte pattern is a
    // valid value and no uninitialised byte reaches the kernel.
    unsafe impl aya::Pod for super::VifKey {}
    unsafe impl aya::Pod for super::Vif {}
    unsafe impl aya::Pod for super::Attachment {}
    unsafe impl aya::Pod for super::VtepKey {}
    unsafe impl aya::Pod for super::RouteKey {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::PacketCounter {}
    unsafe impl aya::Pod for super::CaptureRecord {}
    unsafe impl aya::Pod for super::VifPolicy {}
    unsafe impl aya::Pod for super::ControlBuckets {}
    unsafe impl aya::Pod for super::VifDrops {}
    unsafe impl aya::Pod for super::BfdKey {}
    unsafe impl aya::Pod for super::BfdAnswer {}
    unsafe impl aya::Pod for super::UnderlayHop {}
    unsafe impl aya::Pod for super::RouteKey6 {}
    unsafe impl aya::Pod for super::VifAddrs6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_checksum_matches_a_full_header_checksum() {
        let src = [172, 31, 0, 1];
        let dst = [172, 31, 0, 2];
        let total_len: u16 = 134;
        let header: [u8; 20] = [
            0x45,
            0,
            (total_len >> 8) as u8,
            total_len as u8,
            0,
            0,
            0x40,
            0,
            OUTER_TTL,
            17,
            0,
            0,
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
        ];
        let mut sum = 0u32;
        for pair in header.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(
            finish_ipv4_csum(outer_ipv4_partial_csum(src, dst), total_len),
            !(sum as u16)
        );
    }

    #[test]
    fn source_port_stays_in_the_dynamic_range() {
        for i in 0..10_000u32 {
            let port = vxlan_source_port(flow_hash(i, !i, 6, i as u16, 80));
            assert!(port >= VXLAN_SPORT_BASE, "{port}");
        }
    }

    #[test]
    fn flows_spread_over_group_members() {
        let mut seen = [0u32; MAX_GROUP_MEMBERS];
        for i in 0..8_000u32 {
            seen[group_member(flow_hash(0x0a00_0001, 0x0a01_0000 + i, 17, 40000, 53), 8)] += 1;
        }
        // Uniform would be 1000 each; a bad hash leaves members empty.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
