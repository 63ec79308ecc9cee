//! Import policy: the verdict on every prefix a client announces. Pure functions of the
//! prefix and the session's settings, so a change of VPC CIDRs can re-judge what is held.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};

/// Why a received prefix is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Customer segments must not overlap the gateway's VPC segments (either way round).
    OverlapsVpc(IpNet),
    /// `0.0.0.0/0` or `::/0` from a VIF without `accept_default`.
    DefaultRoute,
    /// Overlaps a martian range either way round: inside one, or covering one
    /// (128.0.0.0/1 covers 224/4). IPv4: 0/8, 127/8, 169.254/16, 224/4, 240/4. IPv6: ::/8
    /// (unspecified, loopback, IPv4-mapped and -compatible), fe80::/10 (link-local), ff00::/8
    /// (multicast). Documentation (2001:db8::/32) and unique local (fc00::/7) prefixes are
    /// accepted: private networks use them, as they use RFC 1918 space.
    Martian(IpNet),
    /// Longer than the VIF's `max_prefix_len`.
    TooLong(u8),
    /// Not within any of the VIF's `allowed_prefixes`.
    NotAllowed,
    /// The AS path already holds our own ASN.
    AsPathLoop(u32),
    /// The UPDATE carried a malformed attribute (RFC 7606 treat-as-withdraw); the text is
    /// shared by every prefix of that UPDATE.
    TreatAsWithdraw(Arc<str>),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::OverlapsVpc(cidr) => write!(f, "overlaps VPC CIDR {cidr}"),
            Reject::DefaultRoute => f.write_str("default route"),
            Reject::Martian(range) => write!(f, "martian (overlaps {range})"),
            Reject::TooLong(max) => write!(f, "longer than max_prefix_len /{max}"),
            Reject::NotAllowed => f.write_str("not within allowed_prefixes"),
            Reject::AsPathLoop(asn) => write!(f, "AS path contains local ASN {asn}"),
            Reject::TreatAsWithdraw(detail) => write!(f, "treat-as-withdraw: {detail}"),
        }
    }
}

impl Serialize for Reject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The verdict on one received prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected(Reject),
}

impl Verdict {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Verdict::Accepted)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accepted => f.write_str("accepted"),
            Verdict::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// What the import filter needs to know about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPolicy {
    pub accept_default: bool,
    pub vpc_cidrs: Vec<IpNet>,
    /// Longer prefixes are rejected (32 for IPv4 or 128 for IPv6: none are).
    pub max_prefix_len: u8,
    /// When it lists prefixes of a route's family, the route must lie within one of them.
    pub allowed: Vec<IpNet>,
}

impl Default for ImportPolicy {
    fn default() -> Self {
        Self {
            accept_default: false,
            vpc_cidrs: Vec::new(),
            max_prefix_len: 32,
            allowed: Vec::new(),
        }
    }
}

const MARTIANS: [(Ipv4Addr, u8); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    // The interconnect itself is link-local too; it is still never a customer route.
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

const MARTIANS6: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::UNSPECIFIED, 8),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// The martian range `prefix` overlaps, inside it or covering it.
fn martian(prefix: &IpNet) -> Option<IpNet> {
    let v4 = MARTIANS
        .iter()
        .filter_map(|&(addr, len)| Ipv4Net::new(addr, len).ok().map(IpNet::V4));
    let v6 = MARTIANS6
        .iter()
        .filter_map(|&(addr, len)| Ipv6Net::new(addr, len).ok().map(IpNet::V6));
    v4.chain(v6).find(|martian| overlaps(martian, prefix))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

impl ImportPolicy {
    /// The verdict on `prefix` (host bits are expected to be zero, as decoded NLRI are).
    pub fn judge(&self, prefix: &IpNet) -> Verdict {
        if prefix.prefix_len() == 0 {
            // An accepted default covers every VPC CIDR by definition; longest match keeps
            // the VPC routes preferred, so the overlap rule does not apply to it.
            return if self.accept_default {
                Verdict::Accepted
            } else {
                Verdict::Rejected(Reject::DefaultRoute)
            };
        }
        if let Some(range) = martian(prefix) {
            return Verdict::Rejected(Reject::Martian(range));
        }
        if prefix.prefix_len() > self.max_prefix_len {
            return Verdict::Rejected(Reject::TooLong(self.max_prefix_len));
        }
        let same_family = |a: &&IpNet| a.addr().is_ipv6() == prefix.addr().is_ipv6();
        if self.allowed.iter().any(|a| same_family(&a))
            && !self
                .allowed
                .iter()
                .filter(same_family)
                .any(|a| a.contains(prefix))
        {
            return Verdict::Rejected(Reject::NotAllowed);
        }
        if let Some(cidr) = self.vpc_cidrs.iter().find(|c| overlaps(c, prefix)) {
            return Verdict::Rejected(Reject::OverlapsVpc(*cidr));
        }
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn policy(accept_default: bool) -> ImportPolicy {
        ImportPolicy {
            accept_default,
            vpc_cidrs: vec![net("10.0.0.0/16"), net("10.1.0.0/16")],
            ..ImportPolicy::default()
        }
    }

    #[test]
    fn default_route() {
        assert_eq!(
            policy(false).judge(&net("0.0.0.0/0")),
            Verdict::Rejected(Reject::DefaultRoute)
        );
        assert_eq!(policy(true).judge(&net("0.0.0.0/0")), Verdict::Accepted);
    }

    #[test]
    fn overlap_both_ways() {
        let p = policy(false);
        assert_eq!(
            p.judge(&net("10.0.5.0/24")),
            Verdict::Rejected(Reject::OverlapsVpc(net("10.0.0.0/16")))
        );
        assert_eq!(
            p.judge(&net("10.0.0.0/8")),
            Verdict::Rejected(Reject::OverlapsVpc(net("10.0.0.0/16")))
        );
        assert_eq!(
            p.judge(&net("10.1.0.0/16")).to_string(),
            "rejected: overlaps VPC CIDR 10.1.0.0/16"
        );
        assert_eq!(p.judge(&net("10.2.0.0/16")), Verdict::Accepted);
    }

    #[test]
    fn martians() {
        let p = policy(true);
        for m in [
            "0.0.0.0/8",
            "0.1.0.0/16",
            "127.0.0.1/32",
            "169.254.10.0/30",
            "224.0.0.0/4",
            "239.1.1.0/24",
            "240.0.0.0/4",
            "255.255.255.255/32",
            // Covering ones.
            "128.0.0.0/1",
            "0.0.0.0/5",
            "224.0.0.0/3",
            "127.0.0.0/7",
            "169.0.0.0/8",
        ] {
            assert!(
                matches!(p.judge(&net(m)), Verdict::Rejected(Reject::Martian(_))),
                "{m}"
            );
        }
        assert_eq!(
            p.judge(&net("128.0.0.0/1")).to_string(),
            "rejected: martian (overlaps 169.254.0.0/16)"
        );
        for ok in [
            "100.64.0.0/10",
            "192.168.50.0/24",
            "172.16.0.0/12",
            "1.0.0.0/8",
            "16.0.0.0/4",
            "0.0.0.0/0",
        ] {
            assert_eq!(p.judge(&net(ok)), Verdict::Accepted, "{ok}");
        }
    }

    #[test]
    fn maximum_length_and_allowed_prefixes() {
        let mut p = policy(false);
        p.max_prefix_len = 24;
        assert_eq!(p.judge(&net("192.168.1.0/24")), Verdict::Accepted);
        assert_eq!(
            p.judge(&net("192.168.1.0/25")),
            Verdict::Rejected(Reject::TooLong(24))
        );
        p.allowed = vec![net("192.168.0.0/16"), net("172.20.0.0/16")];
        assert_eq!(p.judge(&net("172.20.5.0/24")), Verdict::Accepted);
        assert_eq!(p.judge(&net("192.168.0.0/16")), Verdict::Accepted);
        assert_eq!(
            p.judge(&net("192.0.0.0/8")),
            Verdict::Rejected(Reject::NotAllowed)
        );
        assert_eq!(
            p.judge(&net("100.64.0.0/24")).to_string(),
            "rejected: not within allowed_prefixes"
        );
    }
}

/// Well-known communities (RFC 1997).
const NO_EXPORT: u32 = 0xffff_ff01;
const NO_ADVERTISE: u32 = 0xffff_ff02;
const NO_EXPORT_SUBCONFED: u32 = 0xffff_ff03;

/// The preference communities a customer attaches: `LOCAL_ASN:7100`, `:7200`, `:7300` for
/// low, medium and high (as AWS's 7224:7100–7300), as LOCAL_PREF 100, 200 and 300.
pub const PREFERENCE_COMMUNITIES: [(u16, u32); 3] = [(7100, 100), (7200, 200), (7300, 300)];

/// What the gateway keeps of a path: its rank among the paths of a prefix (local
/// preference from the customer's communities — the highest one given wins, medium
/// without — AS_PATH length, neighbouring AS and MED), and whether it may be advertised to
/// the gateway's other VIFs (not with NO_EXPORT or NO_ADVERTISE).
pub fn path_info(
    communities: &[u32],
    as_path_len: u16,
    first_as: Option<u32>,
    med: Option<u32>,
    local_asn: u32,
    peer_asn: u32,
) -> crate::rib::PathInfo {
    let mut local_pref = None;
    if let Ok(ours) = u16::try_from(local_asn) {
        for c in communities {
            let (asn, value) = ((c >> 16) as u16, (c & 0xffff) as u16);
            if asn != ours {
                continue;
            }
            if let Some((_, pref)) = PREFERENCE_COMMUNITIES.iter().find(|(v, _)| *v == value) {
                local_pref = Some(local_pref.map_or(*pref, |p: u32| p.max(*pref)));
            }
        }
    }
    crate::rib::PathInfo {
        rank: crate::rib::Rank::new(
            local_pref.unwrap_or(crate::rib::MEDIUM_PREF),
            as_path_len,
            first_as.unwrap_or(peer_asn),
            med.unwrap_or(0),
        ),
        no_export: communities
            .iter()
            .any(|c| matches!(*c, NO_EXPORT | NO_ADVERTISE | NO_EXPORT_SUBCONFED)),
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    fn c(asn: u16, value: u16) -> u32 {
        u32::from(asn) << 16 | u32::from(value)
    }

    #[test]
    fn preference_communities_set_the_local_preference() {
        let info = |cs: &[u32]| path_info(cs, 1, Some(65001), None, 64512, 65001);
        assert_eq!(info(&[]).rank.local_pref(), 200);
        assert_eq!(info(&[c(64512, 7100)]).rank.local_pref(), 100);
        assert_eq!(info(&[c(64512, 7300)]).rank.local_pref(), 300);
        // The highest given wins; another AS's communities mean nothing here.
        assert_eq!(
            info(&[c(64512, 7100), c(64512, 7300)]).rank.local_pref(),
            300
        );
        assert_eq!(info(&[c(7224, 7300)]).rank.local_pref(), 200);
        assert!(!info(&[c(64512, 7300)]).no_export);
        assert!(info(&[NO_EXPORT]).no_export);
        assert!(info(&[NO_ADVERTISE]).no_export);
    }

    #[test]
    fn the_rank_orders_as_documented() {
        let rank = |pref, len, asn, med| {
            path_info(&[c(64512, pref)], len, Some(asn), Some(med), 64512, asn).rank
        };
        // Local preference first, even against a shorter AS_PATH.
        assert!(rank(7300, 5, 65001, 0) < rank(7200, 1, 65001, 0));
        // Then AS_PATH length (a prepend loses).
        assert!(rank(7200, 1, 65001, 0) < rank(7200, 3, 65001, 0));
        // Then MED within one neighbour AS.
        assert!(rank(7200, 1, 65001, 10) < rank(7200, 1, 65001, 50));
        assert_eq!(
            rank(7200, 1, 65001, 10).beats(rank(7200, 1, 65001, 50)),
            "lower MED"
        );
        assert_eq!(
            rank(7300, 5, 65001, 0).beats(rank(7200, 1, 65001, 0)),
            "higher local preference"
        );
    }

    #[test]
    fn ipv6_martians_default_and_allowed_per_family() {
        let n = |s: &str| -> IpNet { s.parse().expect("prefix") };
        let p = ImportPolicy {
            vpc_cidrs: vec![n("2001:db8:a::/48")],
            max_prefix_len: 128,
            allowed: vec![n("192.168.0.0/16")],
            ..ImportPolicy::default()
        };
        for m in [
            "fe80::/64",
            "ff02::/16",
            "::1/128",
            "::ffff:10.0.0.0/104",
            "::/1",
        ] {
            assert!(
                matches!(p.judge(&n(m)), Verdict::Rejected(Reject::Martian(_))),
                "{m}: {}",
                p.judge(&n(m))
            );
        }
        assert_eq!(p.judge(&n("::/0")), Verdict::Rejected(Reject::DefaultRoute));
        assert_eq!(
            p.judge(&n("2001:db8:a:5::/64")),
            Verdict::Rejected(Reject::OverlapsVpc(n("2001:db8:a::/48")))
        );
        // Documentation and unique local prefixes are a private network's own.
        assert_eq!(p.judge(&n("2001:db8:50::/48")), Verdict::Accepted);
        assert_eq!(p.judge(&n("fd00:1::/48")), Verdict::Accepted);
        // allowed_prefixes lists only IPv4: it does not restrict IPv6.
        assert_eq!(
            p.judge(&n("10.9.0.0/16")),
            Verdict::Rejected(Reject::NotAllowed)
        );
        let p6 = ImportPolicy {
            allowed: vec![n("2001:db8:50::/44")],
            ..p
        };
        assert_eq!(p6.judge(&n("2001:db8:50::/48")), Verdict::Accepted);
        assert_eq!(
            p6.judge(&n("2001:db8:99::/48")),
            Verdict::Rejected(Reject::NotAllowed)
        );
    }
}
