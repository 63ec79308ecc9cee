//! Thin glue over the `rustbgpd_wire` codec: the messages this speaker builds, the checks it
//! makes on OPENs and UPDATEs it receives, and stream framing. Every path from received bytes
//! to a decision runs through here, so tests can feed it garbage.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustbgpd_wire::{
    Afi, Capability, DecodeError, EncodeError, GracefulRestartFamily, Ipv4UnicastMode, Message,
    NotificationCode, NotificationMessage, OpenMessage, Safi, UpdateMessage,
    attribute::{
        AsPath, AsPathSegment, MpReachNlri, MpUnreachNlri, Origin, PathAttribute, RawAttribute,
    },
    decode_message, encode_message,
    nlri::{Ipv4NlriEntry, Ipv4Prefix, Ipv6Prefix, NlriEntry, Prefix},
    notification::description,
    peek_message_length,
    validate::{ErrorDisposition, validate_update_attributes},
};

/// No Extended Messages capability is offered: every message fits RFC 4271's 4096 bytes.
pub const MAX_MESSAGE_LEN: u16 = 4096;
const HEADER_LEN: usize = 19;
const AS_TRANS: u16 = 23456;
const MIN_HOLD_TIME: u16 = 3;
const AS4_PATH: u8 = 17;

pub mod code {
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
}

pub mod subcode {
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    pub const MISSING_WELL_KNOWN: u8 = 3;
    /// RFC 6608 FSM error subcodes.
    pub const FSM_UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    /// RFC 4486 Cease subcodes.
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const COLLISION_RESOLUTION: u8 = 7;
    /// RFC 9384: the session's BFD went down.
    pub const BFD_DOWN: u8 = 10;
}

/// A NOTIFICATION, sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Bytes,
    /// Why we send it (empty for received ones): goes to logs and status, not on the wire.
    pub detail: String,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, detail: impl Into<String>) -> Self {
        Self {
            code,
            subcode,
            data: Bytes::new(),
            detail: detail.into(),
        }
    }

    pub fn with_data(mut self, data: impl Into<Bytes>) -> Self {
        self.data = data.into();
        self
    }

    /// The NOTIFICATION RFC 4271 / RFC 7606 prescribe for a decoding error.
    pub fn from_decode(error: &DecodeError) -> Self {
        let (code, subcode, data) = error.to_notification();
        Self {
            code: code.as_u8(),
            subcode,
            data,
            detail: error.to_string(),
        }
    }

    pub fn from_message(msg: &NotificationMessage) -> Self {
        Self {
            code: msg.code.as_u8(),
            subcode: msg.subcode,
            data: msg.data.clone(),
            detail: String::new(),
        }
    }

    /// Cease / Maximum Number of Prefixes Reached, data = AFI, SAFI, limit (RFC 4486 §4).
    pub fn max_prefixes(limit: u32) -> Self {
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.push(1);
        data.extend_from_slice(&limit.to_be_bytes());
        Self::new(
            code::CEASE,
            subcode::MAX_PREFIXES,
            format!("more than {limit} prefixes received"),
        )
        .with_data(data)
    }

    pub fn encode(&self) -> Bytes {
        // Data that would not fit in one message is cut; the code and subcode always go out.
        let room = usize::from(MAX_MESSAGE_LEN) - HEADER_LEN - 2;
        let data = self.data.slice(..self.data.len().min(room));
        let msg =
            NotificationMessage::new(NotificationCode::from_u8(self.code), self.subcode, data);
        encode(&Message::Notification(msg)).unwrap_or_default()
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = NotificationCode::from_u8(self.code);
        write!(
            f,
            "{}/{} ({} / {})",
            self.code,
            self.subcode,
            code,
            description(code, self.subcode)
        )?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

fn encode(msg: &Message) -> Result<Bytes, EncodeError> {
    encode_message(msg).map(BytesMut::freeze)
}

pub fn keepalive() -> Bytes {
    encode(&Message::Keepalive).unwrap_or_default()
}

/// ROUTE-REFRESH for IPv4 unicast.
#[cfg(test)]
pub fn route_refresh() -> Bytes {
    encode(&Message::RouteRefresh(
        rustbgpd_wire::RouteRefreshMessage::new(Afi::Ipv4, Safi::Unicast),
    ))
    .unwrap_or_default()
}

/// The address family a session carries: the family of its interconnect pair (IPv4 unicast
/// over IPv4, IPv6 unicast with MP-BGP, RFC 4760, over IPv6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    pub const fn afi(self) -> Afi {
        match self {
            Self::Ipv4 => Afi::Ipv4,
            Self::Ipv6 => Afi::Ipv6,
        }
    }

    /// Whether `prefix` is of this family.
    pub const fn holds(self, prefix: &IpNet) -> bool {
        matches!(
            (self, prefix),
            (Self::Ipv4, IpNet::V4(_)) | (Self::Ipv6, IpNet::V6(_))
        )
    }

    fn capability(self) -> Capability {
        Capability::MultiProtocol {
            afi: self.afi(),
            safi: Safi::Unicast,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4 unicast",
            Self::Ipv6 => "IPv6 unicast",
        }
    }
}

/// What we say about ourselves in OPEN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSide {
    /// The one family the session negotiates.
    pub family: Family,
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// Graceful restart (RFC 4724), if offered.
    pub graceful_restart: Option<LocalRestart>,
    /// Accept a peer's hold time of 0 (no keepalives, no hold timer at all).
    pub allow_hold_time_zero: bool,
}

/// Our Graceful Restart capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRestart {
    /// How long the peer should keep our routes while we are away, seconds (≤ 4095).
    pub restart_time: u16,
    /// R bit: we restarted (the first session after the restart only). The F bit is always
    /// set: the pinned XDP maps keep forwarding whatever the agent or a session does, so the
    /// forwarding state is preserved across every session reset, not only our restarts. A
    /// peer that sees F clear deletes our routes at once (FRR does, after a connection
    /// collision replaced the first session after a restart).
    pub restarted: bool,
}

/// The peer's Graceful Restart capability, as its OPEN carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRestart {
    /// Seconds the peer asks us to keep its routes while it restarts.
    pub restart_time: u16,
    /// R bit: the peer has restarted.
    pub restarted: bool,
    /// The session's family is listed: the peer can keep forwarding across its restart.
    pub listed: bool,
    /// F bit of the session's family: the peer kept forwarding across the restart just done.
    pub preserved: bool,
}

/// OPEN with multiprotocol for the session's family, route refresh and 4-octet AS; a
/// 4-octet ASN goes as AS_TRANS in the 2-octet field (RFC 6793).
pub fn open(local: &LocalSide) -> Result<Bytes, EncodeError> {
    encode(&Message::Open(OpenMessage {
        version: 4,
        my_as: u16::try_from(local.asn).unwrap_or(AS_TRANS),
        hold_time: local.hold_time,
        bgp_identifier: local.router_id,
        capabilities: {
            let mut caps = vec![
                local.family.capability(),
                Capability::RouteRefresh,
                Capability::FourOctetAs { asn: local.asn },
            ];
            if let Some(gr) = local.graceful_restart {
                caps.push(Capability::GracefulRestart {
                    restart_state: gr.restarted,
                    notification: false,
                    restart_time: gr.restart_time.min(4095),
                    families: vec![GracefulRestartFamily {
                        afi: local.family.afi(),
                        safi: Safi::Unicast,
                        forwarding_preserved: true,
                    }],
                });
            }
            caps
        },
    }))
}

/// End-of-RIB (RFC 4724 §2): for IPv4 unicast an UPDATE with nothing in it, for another
/// family an UPDATE with only an empty MP_UNREACH_NLRI of it.
pub fn end_of_rib(family: Family) -> Bytes {
    let msg = match family {
        Family::Ipv4 => Ok(UpdateMessage {
            withdrawn_routes: Bytes::new(),
            path_attributes: Bytes::new(),
            nlri: Bytes::new(),
        }),
        Family::Ipv6 => build(&[], &[], &[mp_unreach(Vec::new())], true),
    };
    msg.and_then(|m| encode(&Message::Update(m)))
        .unwrap_or_default()
}

fn mp_unreach(withdrawn: Vec<NlriEntry>) -> PathAttribute {
    PathAttribute::MpUnreachNlri(Box::new(MpUnreachNlri {
        afi: Afi::Ipv6,
        safi: Safi::Unicast,
        withdrawn,
        flowspec_withdrawn: Vec::new(),
        evpn_withdrawn: Vec::new(),
        bgpls_withdrawn: Vec::new(),
        vpn_withdrawn: Vec::new(),
        labeled_withdrawn: Vec::new(),
        rtc_withdrawn: Vec::new(),
    }))
}

fn mp_reach(next_hop: IpAddr, announced: Vec<NlriEntry>) -> PathAttribute {
    PathAttribute::MpReachNlri(Box::new(MpReachNlri {
        afi: Afi::Ipv6,
        safi: Safi::Unicast,
        next_hop,
        link_local_next_hop: None,
        announced,
        flowspec_announced: Vec::new(),
        evpn_announced: Vec::new(),
        bgpls_announced: Vec::new(),
        vpn_announced: Vec::new(),
        labeled_announced: Vec::new(),
        rtc_announced: Vec::new(),
    }))
}

/// What an accepted OPEN settles for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The smaller of both offers; 0 = no keepalives, no hold timer.
    pub hold_time: u16,
    pub four_octet: bool,
    pub remote_id: Ipv4Addr,
    pub remote_asn: u32,
    /// Graceful restart, when both sides offered it: what the peer said.
    pub peer_restart: Option<PeerRestart>,
}

/// RFC 4271 §6.2 checks of a received OPEN.
pub fn check_open(
    open: &OpenMessage,
    local: &LocalSide,
    remote_asn: u32,
) -> Result<Negotiated, Notification> {
    let four_octet = open
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::FourOctetAs { .. }));
    let peer_as = open.four_byte_as();
    if peer_as != remote_asn {
        return Err(Notification::new(
            code::OPEN,
            subcode::BAD_PEER_AS,
            format!("peer AS {peer_as}, expected {remote_asn}"),
        )
        .with_data(Bytes::copy_from_slice(&open.my_as.to_be_bytes())));
    }
    if open.hold_time > 0 && open.hold_time < MIN_HOLD_TIME {
        return Err(Notification::new(
            code::OPEN,
            subcode::UNACCEPTABLE_HOLD_TIME,
            format!("hold time {} s", open.hold_time),
        ));
    }
    // A session without keepalives never notices a dead peer: refused unless allowed.
    if open.hold_time == 0 && local.hold_time != 0 && !local.allow_hold_time_zero {
        return Err(Notification::new(
            code::OPEN,
            subcode::UNACCEPTABLE_HOLD_TIME,
            "hold time 0 (no keepalives) is not accepted on this VIF",
        ));
    }
    let id = open.bgp_identifier;
    if id.is_unspecified()
        || id.is_multicast()
        || id.is_broadcast()
        || (id == local.router_id && peer_as == local.asn)
    {
        return Err(Notification::new(
            code::OPEN,
            subcode::BAD_BGP_IDENTIFIER,
            format!("BGP identifier {id}"),
        )
        .with_data(Bytes::copy_from_slice(&id.octets())));
    }
    let families: Vec<&Capability> = open
        .capabilities
        .iter()
        .filter(|c| matches!(c, Capability::MultiProtocol { .. }))
        .collect();
    let wanted = local.family.capability();
    // No multiprotocol capability at all means plain IPv4 unicast (RFC 4760 §8).
    let offered = if families.is_empty() {
        local.family == Family::Ipv4
    } else {
        families.iter().any(|c| **c == wanted)
    };
    if !offered {
        let mut data = BytesMut::new();
        // The capability we need and the peer lacks (RFC 5492 §3).
        let encoded = wanted.encode(&mut data);
        return Err(Notification::new(
            code::OPEN,
            subcode::UNSUPPORTED_CAPABILITY,
            format!("peer does not offer {}", local.family.name()),
        )
        .with_data(if encoded.is_ok() {
            data.freeze()
        } else {
            Bytes::new()
        }));
    }
    let peer_restart = open.capabilities.iter().find_map(|c| match c {
        Capability::GracefulRestart {
            restart_state,
            restart_time,
            families,
            ..
        } => {
            let mine = families
                .iter()
                .find(|f| f.afi == local.family.afi() && f.safi == Safi::Unicast);
            Some(PeerRestart {
                restart_time: *restart_time,
                restarted: *restart_state,
                listed: mine.is_some(),
                preserved: mine.is_some_and(|f| f.forwarding_preserved),
            })
        }
        _ => None,
    });
    Ok(Negotiated {
        hold_time: local.hold_time.min(open.hold_time),
        four_octet,
        remote_id: id,
        remote_asn: peer_as,
        // Only what both sides offered is negotiated.
        peer_restart: peer_restart.filter(|_| local.graceful_restart.is_some()),
    })
}

/// Path attributes of everything we advertise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportAttrs {
    pub local_asn: u32,
    /// Our interconnect address: NEXT_HOP (IPv4), or the next hop of MP_REACH_NLRI (IPv6).
    pub next_hop: IpAddr,
    pub four_octet: bool,
    /// Extra copies of our ASN on the AS_PATH (the VIF's `as_path_prepend`).
    pub prepend: u8,
}

impl ExportAttrs {
    fn attributes(&self) -> Vec<PathAttribute> {
        let mut attrs = vec![
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(AsPath {
                segments: vec![AsPathSegment::AsSequence(vec![
                    self.local_asn;
                    1 + usize::from(self.prepend)
                ])],
            }),
        ];
        if let IpAddr::V4(next_hop) = self.next_hop {
            attrs.push(PathAttribute::NextHop(next_hop));
        }
        if !self.four_octet && self.local_asn > u32::from(u16::MAX) {
            // A 2-octet peer sees AS_TRANS in AS_PATH; the real ASN travels in AS4_PATH.
            let mut data = vec![2, 1];
            data.extend_from_slice(&self.local_asn.to_be_bytes());
            attrs.push(PathAttribute::Unknown(RawAttribute {
                flags: 0xc0,
                type_code: AS4_PATH,
                data: Bytes::from(data),
            }));
        }
        attrs
    }
}

fn nlri_len<P: Copy + Into<IpNet>>(prefix: &P) -> usize {
    1 + usize::from((*prefix).into().prefix_len().div_ceil(8))
}

fn entry(prefix: &Ipv4Net) -> Ipv4NlriEntry {
    Ipv4NlriEntry {
        path_id: 0,
        prefix: Ipv4Prefix::new(prefix.network(), prefix.prefix_len()),
    }
}

fn entry6(prefix: &Ipv6Net) -> NlriEntry {
    NlriEntry {
        path_id: 0,
        prefix: Prefix::V6(Ipv6Prefix::new(prefix.network(), prefix.prefix_len())),
    }
}

/// Splits `prefixes` into runs whose NLRI encoding fits in `room` bytes.
fn chunks<P: Copy + Into<IpNet>>(prefixes: &[P], room: usize) -> Vec<&[P]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let len = nlri_len(p);
        if used + len > room && i > start {
            out.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += len;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// UPDATEs announcing `announce` and withdrawing `withdraw`, as many NLRI per message as
/// 4096 bytes allow: IPv4 in the UPDATE's own fields, IPv6 in MP_REACH_NLRI and
/// MP_UNREACH_NLRI (RFC 4760). Each family's prefixes go to a session of that family only.
pub fn updates(
    announce: &[IpNet],
    withdraw: &[IpNet],
    attrs: &ExportAttrs,
) -> Result<Vec<Bytes>, EncodeError> {
    let v4 = |list: &[IpNet]| -> Vec<Ipv4Net> {
        list.iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(*p),
                IpNet::V6(_) => None,
            })
            .collect()
    };
    let v6 = |list: &[IpNet]| -> Vec<Ipv6Net> {
        list.iter()
            .filter_map(|p| match p {
                IpNet::V6(p) => Some(*p),
                IpNet::V4(_) => None,
            })
            .collect()
    };
    let mut out = updates_v4(&v4(announce), &v4(withdraw), attrs)?;
    out.extend(updates_v6(&v6(announce), &v6(withdraw), attrs)?);
    Ok(out)
}

/// Bytes of an MP_REACH_NLRI around its NLRI: attribute header with extended length (4),
/// AFI, SAFI, next-hop length, a 16-byte next hop, reserved (22); MP_UNREACH_NLRI's is less.
const MP_REACH_OVERHEAD: usize = 4 + 22;

/// An UPDATE of IPv4 NLRI and attributes (the codec's builder, RFC 4271 layout).
fn build(
    announced: &[Ipv4NlriEntry],
    withdrawn: &[Ipv4NlriEntry],
    attributes: &[PathAttribute],
    four_octet: bool,
) -> Result<UpdateMessage, EncodeError> {
    UpdateMessage::try_build(
        announced,
        withdrawn,
        attributes,
        four_octet,
        false,
        Ipv4UnicastMode::Body,
    )
}

fn updates_v6(
    announce: &[Ipv6Net],
    withdraw: &[Ipv6Net],
    attrs: &ExportAttrs,
) -> Result<Vec<Bytes>, EncodeError> {
    let mut out = Vec::new();
    let fixed = HEADER_LEN + 4 + MP_REACH_OVERHEAD;
    for run in chunks(withdraw, usize::from(MAX_MESSAGE_LEN) - fixed) {
        let msg = build(
            &[],
            &[],
            &[mp_unreach(run.iter().map(entry6).collect())],
            attrs.four_octet,
        )?;
        out.push(encode(&Message::Update(msg))?);
    }
    if announce.is_empty() {
        return Ok(out);
    }
    let attributes = attrs.attributes();
    let bare = build(&[], &[], &attributes, attrs.four_octet)?;
    let room = usize::from(MAX_MESSAGE_LEN) - fixed - bare.path_attributes.len();
    for run in chunks(announce, room) {
        let mut with_nlri = attributes.clone();
        with_nlri.push(mp_reach(attrs.next_hop, run.iter().map(entry6).collect()));
        let msg = build(&[], &[], &with_nlri, attrs.four_octet)?;
        out.push(encode(&Message::Update(msg))?);
    }
    Ok(out)
}

fn updates_v4(
    announce: &[Ipv4Net],
    withdraw: &[Ipv4Net],
    attrs: &ExportAttrs,
) -> Result<Vec<Bytes>, EncodeError> {
    let mut out = Vec::new();
    let fixed = HEADER_LEN + 4;
    for run in chunks(withdraw, usize::from(MAX_MESSAGE_LEN) - fixed) {
        let entries: Vec<Ipv4NlriEntry> = run.iter().map(entry).collect();
        let msg = build(&[], &entries, &[], attrs.four_octet)?;
        out.push(encode(&Message::Update(msg))?);
    }
    if !announce.is_empty() {
        let attributes = attrs.attributes();
        let bare = build(&[], &[], &attributes, attrs.four_octet)?;
        let room = usize::from(MAX_MESSAGE_LEN) - fixed - bare.path_attributes.len();
        for run in chunks(announce, room) {
            let entries: Vec<Ipv4NlriEntry> = run.iter().map(entry).collect();
            let msg = UpdateMessage {
                withdrawn_routes: Bytes::new(),
                path_attributes: bare.path_attributes.clone(),
                nlri: build(&entries, &[], &[], false)?.nlri,
            };
            out.push(encode(&Message::Update(msg))?);
        }
    }
    Ok(out)
}

/// The content of one received UPDATE for the session's family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub withdrawn: Vec<IpNet>,
    pub announced: Vec<IpNet>,
    /// Set when the announced routes are to be treated as withdrawn (RFC 7606).
    pub malformed: Option<Arc<str>>,
    /// Every ASN of AS_PATH, for loop detection.
    pub as_path: Vec<u32>,
    /// AS_PATH length as BGP's decision process counts it (an AS_SET counts one) and its
    /// first AS (the neighbouring one).
    pub as_path_len: u16,
    pub first_as: Option<u32>,
    /// RFC 1997 COMMUNITIES (high 16 bits ASN, low 16 bits value).
    pub communities: Vec<u32>,
    pub med: Option<u32>,
    /// The UPDATE was the End-of-RIB marker of the session's family.
    pub end_of_rib: bool,
}

fn to_net(p: &Ipv4Prefix) -> Option<IpNet> {
    Ipv4Net::new(p.addr, p.len).ok().map(IpNet::V4)
}

fn to_net_mp(p: &Prefix) -> Option<IpNet> {
    match p {
        Prefix::V4(p) => to_net(p),
        Prefix::V6(p) => Ipv6Net::new(p.addr, p.len).ok().map(IpNet::V6),
    }
}

fn unicast_of(family: Family, afi: Afi, safi: Safi) -> bool {
    afi == family.afi() && safi == Safi::Unicast
}

/// [`parse_update_for`] an IPv4 unicast session.
pub fn parse_update(
    msg: &UpdateMessage,
    four_octet: bool,
    peer_asn: u32,
) -> Result<Received, Notification> {
    parse_update_for(msg, four_octet, peer_asn, Family::Ipv4)
}

/// Decodes an UPDATE from an external peer with RFC 7606 error handling: `Err` only for
/// errors that reset the session. Routes of a family the session did not negotiate are
/// left out (an IPv6 session takes no IPv4 body NLRI).
pub fn parse_update_for(
    msg: &UpdateMessage,
    four_octet: bool,
    peer_asn: u32,
    family: Family,
) -> Result<Received, Notification> {
    if msg.withdrawn_routes.is_empty() && msg.path_attributes.is_empty() && msg.nlri.is_empty() {
        return Ok(Received {
            end_of_rib: family == Family::Ipv4,
            ..Received::default()
        });
    }
    let parsed = msg
        .parse_revised(four_octet, false, false, &[])
        .map_err(|e| Notification::from_decode(&e))?;
    let body = family == Family::Ipv4;
    let mut out = Received {
        withdrawn: parsed
            .update
            .withdrawn
            .iter()
            .filter(|_| body)
            .filter_map(|e| to_net(&e.prefix))
            .collect(),
        announced: parsed
            .update
            .announced
            .iter()
            .filter(|_| body)
            .filter_map(|e| to_net(&e.prefix))
            .collect(),
        ..Received::default()
    };
    let has_body_nlri = !out.announced.is_empty();
    let mut mp_next_hop = None;
    let mut next_hop = None;
    let mut others = Vec::with_capacity(parsed.update.attributes.len());
    for attr in &parsed.update.attributes {
        match attr {
            PathAttribute::MpReachNlri(mp) if unicast_of(family, mp.afi, mp.safi) => {
                out.announced.extend(
                    mp.announced
                        .iter()
                        .filter_map(|e| to_net_mp(&e.prefix))
                        .filter(|p| family.holds(p)),
                );
                mp_next_hop = Some(mp.next_hop);
            }
            PathAttribute::MpUnreachNlri(mp) if unicast_of(family, mp.afi, mp.safi) => {
                // MP_UNREACH_NLRI with nothing in it, alone: End-of-RIB in MP form.
                out.end_of_rib = mp.withdrawn.is_empty()
                    && parsed.update.attributes.len() == 1
                    && out.withdrawn.is_empty()
                    && out.announced.is_empty();
                out.withdrawn.extend(
                    mp.withdrawn
                        .iter()
                        .filter_map(|e| to_net_mp(&e.prefix))
                        .filter(|p| family.holds(p)),
                );
            }
            PathAttribute::AsPath(path) => {
                let mut len = 0usize;
                for s in &path.segments {
                    match s {
                        AsPathSegment::AsSequence(a) => {
                            len += a.len();
                            if out.first_as.is_none() {
                                out.first_as = a.first().copied();
                            }
                        }
                        AsPathSegment::AsSet(_) => len += 1,
                    }
                }
                out.as_path_len = u16::try_from(len).unwrap_or(u16::MAX);
                out.as_path = path
                    .segments
                    .iter()
                    .flat_map(|s| match s {
                        AsPathSegment::AsSequence(a) | AsPathSegment::AsSet(a) => a.iter().copied(),
                    })
                    .collect();
            }
            PathAttribute::NextHop(nh) => next_hop = Some(*nh),
            PathAttribute::Communities(c) | PathAttribute::CommunitiesPartial(c) => {
                out.communities.clone_from(c);
            }
            PathAttribute::Med(m) => out.med = Some(*m),
            _ => {}
        }
        if !matches!(attr, PathAttribute::NextHop(_)) {
            others.push(attr.clone());
        }
    }
    if let Some(worst) = parsed.malformed.iter().max_by_key(|m| m.disposition) {
        match worst.disposition {
            ErrorDisposition::SessionReset => return Err(Notification::from_decode(&worst.error)),
            ErrorDisposition::TreatAsWithdraw => {
                out.malformed = Some(worst.error.to_string().into());
            }
            _ => {}
        }
    }
    if out.announced.is_empty() || out.malformed.is_some() {
        return Ok(out);
    }
    // The codec's NEXT_HOP check refuses loopback next hops; the gateway never forwards to
    // the BGP next hop (it uses the interconnect's client address), so only the attribute's
    // presence and plain nonsense values matter here.
    if let Err(e) = validate_update_attributes(&others, true, false, false) {
        let n = Notification::new(
            code::UPDATE,
            e.subcode,
            format!("invalid attribute list (subcode {})", e.subcode),
        )
        .with_data(e.data);
        match e.disposition {
            ErrorDisposition::SessionReset => return Err(n),
            ErrorDisposition::TreatAsWithdraw => out.malformed = Some(n.to_string().into()),
            _ => {}
        }
        return Ok(out);
    }
    match next_hop {
        None if has_body_nlri => {
            out.malformed = Some(
                format!(
                    "missing NEXT_HOP (UPDATE error {}/{})",
                    code::UPDATE,
                    subcode::MISSING_WELL_KNOWN
                )
                .into(),
            );
        }
        Some(nh) if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() => {
            out.malformed = Some(format!("invalid NEXT_HOP {nh}").into());
        }
        _ => {}
    }
    if out.malformed.is_none()
        && family == Family::Ipv6
        && let Some(nh) = mp_next_hop
        && (nh.is_unspecified() || nh.is_multicast() || nh.is_ipv4())
    {
        out.malformed = Some(format!("invalid MP_REACH_NLRI next hop {nh}").into());
    }
    if out.malformed.is_none() && out.as_path.first() != Some(&peer_asn) {
        out.malformed =
            Some(format!("AS_PATH does not start with the peer's AS {peer_asn}").into());
    }
    Ok(out)
}

/// Cuts a TCP byte stream into BGP messages.
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the NOTIFICATION
    /// a broken header or body calls for (after which the stream is unusable).
    pub fn next_message(&mut self) -> Result<Option<Message>, Notification> {
        let len = match peek_message_length(&self.buf, MAX_MESSAGE_LEN) {
            Ok(Some(len)) => usize::from(len),
            Ok(None) => return Ok(None),
            Err(e) => return Err(Notification::from_decode(&e)),
        };
        if self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            return Ok(None);
        }
        let mut bytes = self.buf.split_to(len).freeze();
        decode_message(&mut bytes, MAX_MESSAGE_LEN)
            .map(Some)
            .map_err(|e| Notification::from_decode(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn decode_one(bytes: &Bytes) -> Message {
        let mut f = Framer::default();
        f.buffer().extend_from_slice(bytes);
        let msg = f.next_message().expect("decodes").expect("complete");
        assert!(f.buffer().is_empty());
        msg
    }

    const LOCAL: LocalSide = LocalSide {
        family: Family::Ipv4,
        asn: 64512,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        graceful_restart: None,
        allow_hold_time_zero: false,
    };

    #[test]
    fn open_round_trip() {
        let bytes = open(&LOCAL).expect("encodes");
        let Message::Open(o) = decode_one(&bytes) else {
            panic!("not an OPEN")
        };
        assert_eq!(o.my_as, 64512);
        assert_eq!(o.hold_time, 90);
        assert!(o.capabilities.contains(&Family::Ipv4.capability()));
        assert!(o.capabilities.contains(&Capability::RouteRefresh));
        assert!(
            o.capabilities
                .contains(&Capability::FourOctetAs { asn: 64512 })
        );
        // As seen by a peer configured for AS 64512.
        let peer = LocalSide {
            asn: 65001,
            hold_time: 30,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            ..LOCAL
        };
        let n = check_open(&o, &peer, 64512).expect("acceptable");
        assert_eq!(n.hold_time, 30);
        assert!(n.four_octet);
        assert_eq!(n.remote_id, LOCAL.router_id);
        assert_eq!(n.peer_restart, None);
    }

    #[test]
    fn graceful_restart_capability() {
        let restarted = LocalSide {
            graceful_restart: Some(LocalRestart {
                restart_time: 120,
                restarted: true,
            }),
            ..LOCAL
        };
        let Message::Open(o) = decode_one(&open(&restarted).expect("encodes")) else {
            panic!("not an OPEN")
        };
        let peer = LocalSide {
            asn: 65001,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            graceful_restart: Some(LocalRestart {
                restart_time: 90,
                restarted: false,
            }),
            ..LOCAL
        };
        let n = check_open(&o, &peer, 64512).expect("acceptable");
        assert_eq!(
            n.peer_restart,
            Some(PeerRestart {
                restart_time: 120,
                restarted: true,
                listed: true,
                preserved: true,
            })
        );
        // Not restarted: R clear, F still set (the data plane forwards across any reset).
        let Message::Open(o2) = decode_one(&open(&peer).expect("encodes")) else {
            panic!("not an OPEN")
        };
        assert_eq!(
            check_open(&o2, &restarted, 65001)
                .expect("acceptable")
                .peer_restart,
            Some(PeerRestart {
                restart_time: 90,
                restarted: false,
                listed: true,
                preserved: true,
            })
        );
        // Offered by one side only: not negotiated.
        let plain = LocalSide {
            graceful_restart: None,
            ..peer
        };
        assert_eq!(
            check_open(&o, &plain, 64512).expect("ok").peer_restart,
            None
        );
        // End-of-RIB: an empty UPDATE, told apart from every other.
        let Message::Update(u) = decode_one(&end_of_rib(Family::Ipv4)) else {
            panic!("not an UPDATE")
        };
        assert!(parse_update(&u, true, 65001).expect("parses").end_of_rib);
    }

    #[test]
    fn open_four_octet_asn_uses_as_trans() {
        let local = LocalSide {
            asn: 4_200_000_000,
            ..LOCAL
        };
        let Message::Open(o) = decode_one(&open(&local).expect("encodes")) else {
            panic!("not an OPEN")
        };
        assert_eq!(o.my_as, AS_TRANS);
        assert_eq!(o.four_byte_as(), 4_200_000_000);
    }

    fn their_open(asn: u16, hold: u16, id: Ipv4Addr, caps: Vec<Capability>) -> OpenMessage {
        OpenMessage {
            version: 4,
            my_as: asn,
            hold_time: hold,
            bgp_identifier: id,
            capabilities: caps,
        }
    }

    #[test]
    fn open_checks() {
        let id = Ipv4Addr::new(10, 0, 0, 2);
        let err = |o: OpenMessage| {
            check_open(&o, &LOCAL, 65001)
                .map(|_| ())
                .expect_err("rejected")
        };
        let e = err(their_open(65002, 90, id, vec![]));
        assert_eq!((e.code, e.subcode), (2, subcode::BAD_PEER_AS));
        for hold in [1, 2] {
            let e = err(their_open(65001, hold, id, vec![]));
            assert_eq!((e.code, e.subcode), (2, subcode::UNACCEPTABLE_HOLD_TIME));
        }
        let e = err(their_open(65001, 90, Ipv4Addr::UNSPECIFIED, vec![]));
        assert_eq!((e.code, e.subcode), (2, subcode::BAD_BGP_IDENTIFIER));
        let v6 = Capability::MultiProtocol {
            afi: Afi::Ipv6,
            safi: Safi::Unicast,
        };
        let e = err(their_open(65001, 90, id, vec![v6]));
        assert_eq!((e.code, e.subcode), (2, subcode::UNSUPPORTED_CAPABILITY));
        // Hold time 0 (no keepalives, a dead peer never noticed): refused unless allowed.
        let e = err(their_open(65001, 0, id, vec![]));
        assert_eq!((e.code, e.subcode), (2, subcode::UNACCEPTABLE_HOLD_TIME));
        let allowing = LocalSide {
            allow_hold_time_zero: true,
            ..LOCAL
        };
        // No capabilities: a plain IPv4 speaker.
        let n = check_open(&their_open(65001, 0, id, vec![]), &allowing, 65001).expect("ok");
        assert_eq!(n.hold_time, 0);
        assert!(!n.four_octet);
        let n = check_open(&their_open(65001, 3, id, vec![]), &LOCAL, 65001).expect("ok");
        assert_eq!(n.hold_time, 3);
    }

    #[test]
    fn notification_round_trip() {
        let sent = Notification::max_prefixes(100);
        let Message::Notification(n) = decode_one(&sent.encode()) else {
            panic!("not a NOTIFICATION")
        };
        let got = Notification::from_message(&n);
        assert_eq!((got.code, got.subcode), (6, 1));
        assert_eq!(&got.data[..], &[0, 1, 1, 0, 0, 0, 100]);
        assert_eq!(
            got.to_string(),
            "6/1 (Cease / Maximum Number of Prefixes Reached)"
        );
    }

    #[test]
    fn keepalive_and_route_refresh_round_trip() {
        assert_eq!(decode_one(&keepalive()), Message::Keepalive);
        let Message::RouteRefresh(rr) = decode_one(&route_refresh()) else {
            panic!("not RR")
        };
        assert_eq!(
            (rr.afi(), rr.safi()),
            (Some(Afi::Ipv4), Some(Safi::Unicast))
        );
    }

    fn many(n: u32) -> Vec<IpNet> {
        (0..n)
            .map(|i| IpNet::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)).into(), 24).expect("net"))
            .collect()
    }

    #[test]
    fn update_packs_many_nlri_and_round_trips() {
        let attrs = ExportAttrs {
            local_asn: 64512,
            next_hop: Ipv4Addr::new(169, 254, 10, 1).into(),
            four_octet: true,
            prepend: 0,
        };
        let prefixes = many(3000);
        let msgs = updates(&prefixes, &[], &attrs).expect("encodes");
        // 4 bytes per /24: ~1000 per message.
        assert!(msgs.len() <= 4, "{} messages", msgs.len());
        let mut f = Framer::default();
        let mut seen = Vec::new();
        for m in &msgs {
            assert!(m.len() <= 4096);
            f.buffer().extend_from_slice(m);
        }
        while let Some(msg) = f.next_message().expect("decodes") {
            let Message::Update(u) = msg else {
                panic!("not an UPDATE")
            };
            let r = parse_update(&u, true, 64512).expect("valid");
            assert_eq!(r.malformed, None);
            assert_eq!(r.as_path, vec![64512]);
            seen.extend(r.announced);
        }
        assert_eq!(seen, prefixes);

        let withdraw = many(2000);
        let msgs = updates(&[], &withdraw, &attrs).expect("encodes");
        assert_eq!(msgs.len(), 2);
        let mut back = Vec::new();
        for m in &msgs {
            let Message::Update(u) = decode_one(m) else {
                panic!("not an UPDATE")
            };
            let r = parse_update(&u, true, 64512).expect("valid");
            assert!(r.announced.is_empty());
            back.extend(r.withdrawn);
        }
        assert_eq!(back, withdraw);
    }

    /// IPv6 prefixes travel in MP_REACH_NLRI / MP_UNREACH_NLRI with our IPv6 address as next
    /// hop, packed under 4096 bytes, and come back through the IPv6 session's parser only.
    #[test]
    fn ipv6_updates_use_mp_reach_and_round_trip() {
        let next_hop: IpAddr = "2001:db8:ff::1".parse().expect("addr");
        let attrs = ExportAttrs {
            local_asn: 64512,
            next_hop,
            four_octet: true,
            prepend: 0,
        };
        let prefixes: Vec<IpNet> = (0..2000u32)
            .map(|i| {
                let a = std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    (i >> 8) as u16,
                    (i & 0xff) as u16,
                    0,
                    0,
                    0,
                    0,
                );
                IpNet::new(a.into(), 64).expect("net")
            })
            .collect();
        let msgs = updates(&prefixes, &[], &attrs).expect("encodes");
        assert!(msgs.len() > 1 && msgs.len() <= 5, "{} messages", msgs.len());
        let mut seen = Vec::new();
        for m in &msgs {
            assert!(m.len() <= 4096, "{} bytes", m.len());
            let Message::Update(u) = decode_one(m) else {
                panic!("not an UPDATE")
            };
            assert!(u.nlri.is_empty(), "no IPv4 NLRI in the body");
            let r = parse_update_for(&u, true, 64512, Family::Ipv6).expect("valid");
            assert_eq!(r.malformed, None);
            assert_eq!(r.as_path, vec![64512]);
            seen.extend(r.announced);
            // An IPv4 session takes none of it.
            let v4 = parse_update(&u, true, 64512).expect("valid");
            assert!(v4.announced.is_empty());
        }
        assert_eq!(seen, prefixes);
        let msgs = updates(&[], &prefixes[..10], &attrs).expect("encodes");
        let Message::Update(u) = decode_one(&msgs[0]) else {
            panic!("not an UPDATE")
        };
        let r = parse_update_for(&u, true, 64512, Family::Ipv6).expect("valid");
        assert_eq!(r.withdrawn, prefixes[..10]);
        // End-of-RIB of IPv6 unicast: an empty MP_UNREACH_NLRI, seen only by an IPv6 session.
        let Message::Update(eor) = decode_one(&end_of_rib(Family::Ipv6)) else {
            panic!("not an UPDATE")
        };
        assert!(
            parse_update_for(&eor, true, 64512, Family::Ipv6)
                .expect("valid")
                .end_of_rib
        );
        assert!(!parse_update(&eor, true, 64512).expect("valid").end_of_rib);
    }

    /// An IPv6 session offers IPv6 unicast and refuses a peer that does not offer it.
    #[test]
    fn an_ipv6_session_negotiates_ipv6_unicast() {
        let gr = Some(LocalRestart {
            restart_time: 120,
            restarted: false,
        });
        let local = LocalSide {
            family: Family::Ipv6,
            graceful_restart: gr,
            ..LOCAL
        };
        let Message::Open(o) = decode_one(&open(&local).expect("open")) else {
            panic!("not an OPEN")
        };
        assert!(o.capabilities.contains(&Family::Ipv6.capability()));
        assert!(!o.capabilities.contains(&Family::Ipv4.capability()));
        let peer = LocalSide {
            asn: 65001,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            graceful_restart: gr,
            ..LOCAL
        };
        let Message::Open(v4_only) = decode_one(&open(&peer).expect("open")) else {
            panic!("not an OPEN")
        };
        let e = check_open(&v4_only, &local, 65001).expect_err("IPv4-only peer");
        assert_eq!(
            (e.code, e.subcode),
            (code::OPEN, subcode::UNSUPPORTED_CAPABILITY)
        );
        let Message::Open(v6) = decode_one(
            &open(&LocalSide {
                family: Family::Ipv6,
                ..peer
            })
            .expect("open"),
        ) else {
            panic!("not an OPEN")
        };
        let neg = check_open(&v6, &local, 65001).expect("IPv6 peer");
        assert!(neg.peer_restart.is_some_and(|r| r.listed));
    }

    #[test]
    fn update_two_octet_peer_gets_as_trans_and_as4_path() {
        let attrs = ExportAttrs {
            local_asn: 4_200_000_000,
            next_hop: Ipv4Addr::new(10, 0, 0, 1).into(),
            four_octet: false,
            prepend: 0,
        };
        let msgs = updates(&[net("10.9.0.0/16")], &[], &attrs).expect("encodes");
        let Message::Update(u) = decode_one(&msgs[0]) else {
            panic!("not an UPDATE")
        };
        // The codec folds AS4_PATH back into the real path.
        let r = parse_update(&u, false, 4_200_000_000).expect("valid");
        assert_eq!(r.as_path, vec![4_200_000_000]);
        assert_eq!(r.malformed, None);
    }

    fn raw_update(attrs: &[u8], nlri: &[u8]) -> UpdateMessage {
        UpdateMessage {
            withdrawn_routes: Bytes::new(),
            path_attributes: Bytes::copy_from_slice(attrs),
            nlri: Bytes::copy_from_slice(nlri),
        }
    }

    const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
    const AS_PATH_65001: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
    const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 10, 0, 0, 2];
    const NLRI: [u8; 4] = [24, 192, 168, 50];

    #[test]
    fn malformed_attributes_are_treat_as_withdraw() {
        let good = [ORIGIN_IGP.as_slice(), &AS_PATH_65001, &NEXT_HOP].concat();
        let r = parse_update(&raw_update(&good, &NLRI), true, 65001).expect("valid");
        assert_eq!(r.announced, vec![net("192.168.50.0/24")]);
        assert_eq!(r.malformed, None);

        // ORIGIN value 7 is invalid: treat-as-withdraw (RFC 7606 §7.1).
        let bad_origin = [[0x40, 1, 1, 7].as_slice(), &AS_PATH_65001, &NEXT_HOP].concat();
        let r = parse_update(&raw_update(&bad_origin, &NLRI), true, 65001).expect("no reset");
        assert!(r.malformed.is_some());
        assert_eq!(r.announced, vec![net("192.168.50.0/24")]);

        // Missing NEXT_HOP.
        let no_nh = [ORIGIN_IGP.as_slice(), &AS_PATH_65001].concat();
        let r = parse_update(&raw_update(&no_nh, &NLRI), true, 65001).expect("no reset");
        assert!(
            r.malformed
                .as_deref()
                .is_some_and(|m| m.contains("NEXT_HOP")),
            "{r:?}"
        );

        // Missing AS_PATH.
        let no_path = [ORIGIN_IGP.as_slice(), &NEXT_HOP].concat();
        let r = parse_update(&raw_update(&no_path, &NLRI), true, 65001).expect("no reset");
        assert!(r.malformed.is_some());

        // AS_PATH not starting with the peer's AS.
        let r = parse_update(&raw_update(&good, &NLRI), true, 65002).expect("no reset");
        assert!(r.malformed.is_some());

        // NLRI length 33: the NLRI cannot be trusted, session reset 3/10.
        let e =
            parse_update(&raw_update(&good, &[33, 1, 2, 3, 4, 5]), true, 65001).expect_err("reset");
        assert_eq!((e.code, e.subcode), (3, 10));
    }

    #[test]
    fn framing_errors_map_to_header_notifications() {
        let mut f = Framer::default();
        f.buffer().extend_from_slice(&[0u8; 19]);
        let e = f.next_message().expect_err("bad marker");
        assert_eq!((e.code, e.subcode), (1, 1));

        let mut f = Framer::default();
        let mut msg = keepalive().to_vec();
        msg[16..18].copy_from_slice(&5000u16.to_be_bytes());
        f.buffer().extend_from_slice(&msg);
        let e = f.next_message().expect_err("bad length");
        assert_eq!((e.code, e.subcode), (1, 2));

        let mut f = Framer::default();
        let mut msg = keepalive().to_vec();
        msg[18] = 9;
        f.buffer().extend_from_slice(&msg);
        let e = f.next_message().expect_err("bad type");
        assert_eq!((e.code, e.subcode), (1, 3));
    }

    /// Random bytes, truncated and bit-flipped valid messages: decoding must never panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let attrs = ExportAttrs {
            local_asn: 64512,
            next_hop: Ipv4Addr::new(10, 0, 0, 1).into(),
            four_octet: true,
            prepend: 0,
        };
        let mut valid: Vec<Bytes> = vec![open(&LOCAL).expect("open"), keepalive(), route_refresh()];
        valid.extend(updates(&many(40), &many(5), &attrs).expect("updates"));
        valid.push(Notification::max_prefixes(5).encode());
        let feed = |bytes: &[u8]| {
            let mut f = Framer::default();
            f.buffer().extend_from_slice(bytes);
            while let Ok(Some(msg)) = f.next_message() {
                match msg {
                    Message::Update(u) => {
                        for four_octet in [true, false] {
                            if let Ok(r) = parse_update(&u, four_octet, 65001) {
                                assert!(r.announced.len() + r.withdrawn.len() <= 4096);
                            }
                        }
                    }
                    Message::Open(o) => {
                        if let Ok(n) = check_open(&o, &LOCAL, 65001) {
                            assert!(!matches!(n.hold_time, 1 | 2));
                        }
                    }
                    _ => {}
                }
            }
        };
        for _ in 0..20_000 {
            let len = (rnd() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Half the time a valid-looking header, so bodies get exercised.
            if rnd() % 2 == 0 && len >= 19 {
                bytes[..16].fill(0xff);
                bytes[16..18].copy_from_slice(&(len as u16).to_be_bytes());
                bytes[18] = (rnd() % 6) as u8;
            }
            feed(&bytes);
        }
        for msg in &valid {
            for cut in 0..msg.len() {
                feed(&msg[..cut]);
            }
            for _ in 0..2_000 {
                let mut bytes = msg.to_vec();
                for _ in 0..(1 + rnd() % 4) {
                    let i = 19 + (rnd() as usize) % (bytes.len().saturating_sub(19).max(1));
                    if i < bytes.len() {
                        bytes[i] ^= 1 << (rnd() % 8);
                    }
                }
                feed(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod prepend_tests {
    use super::*;

    #[test]
    fn a_prepend_repeats_our_asn_on_the_path() {
        let attrs = ExportAttrs {
            local_asn: 64512,
            next_hop: Ipv4Addr::new(10, 0, 0, 1).into(),
            four_octet: true,
            prepend: 2,
        };
        let msgs = updates(&["10.9.0.0/16".parse().expect("net")], &[], &attrs).expect("encodes");
        let mut f = Framer::default();
        f.buffer().extend_from_slice(&msgs[0]);
        let Some(Message::Update(u)) = f.next_message().expect("decodes") else {
            panic!("not an UPDATE")
        };
        let r = parse_update(&u, true, 64512).expect("valid");
        assert_eq!(r.as_path, vec![64512, 64512, 64512]);
        assert_eq!(r.as_path_len, 3);
    }
}
