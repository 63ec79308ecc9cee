//! The border gateways' route tables as the agent keeps them: every candidate route of every
//! prefix (propagated VPC CIDRs, static routes, BGP routes), kept up to date change by change,
//! with an index from each VIF to the prefixes that have a candidate toward it (so a VIF
//! going down re-selects only its own prefixes). Selection is in `plan`. Pure data: no maps,
//! no I/O.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use smallvec::SmallVec;

use crate::{
    FastSet,
    ids::{AttachmentId, GatewayId, NextHopKey, VifId},
};

/// Where a route came from. The order is the preference when one prefix has several: a VPC
/// attachment's own CIDR beats a static route, which beats BGP (administrative distance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Propagated,
    Static,
    Bgp,
}

impl Source {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Propagated => "propagated",
            Self::Static => "static",
            Self::Bgp => "bgp",
        }
    }
}

/// What a route points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Encapsulate toward this VPC attachment.
    Attachment(AttachmentId),
    /// Send to the client router(s) of this VIF's IPv4 pairs.
    Vif(VifId),
    /// Send to the client router(s) of this VIF's IPv6 pairs.
    Vif6(VifId),
    /// Send to the client routers of this VIF's BGP sessions in the mask (bit i = peer i):
    /// the sessions that announced the prefix.
    VifPeers(VifId, u8),
    /// Equal best BGP paths on several VIFs (multipath): a set the plan keeps
    /// ([`crate::plan::Desired::multipath`]). Only selected routes have it, never the rib.
    Multipath(MultipathId),
}

/// A multipath set's number in the plan (not kept across restarts: the set itself is the
/// next hop's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MultipathId(pub u32);

impl Target {
    /// The VIF this target sends to, if it is one.
    pub fn vif(self) -> Option<VifId> {
        match self {
            Self::Vif(v) | Self::Vif6(v) | Self::VifPeers(v, _) => Some(v),
            Self::Attachment(_) | Self::Multipath(_) => None,
        }
    }

    /// The next-hop object routes toward this target point to (a multipath set's is the
    /// plan's: [`crate::plan::Desired::next_hop_key`]).
    /// The target a route to `prefix` takes: a VIF's client routers of the prefix's family.
    pub fn for_prefix(self, prefix: IpNet) -> Self {
        match (self, prefix) {
            (Self::Vif(v), IpNet::V6(_)) => Self::Vif6(v),
            (Self::Vif6(v), IpNet::V4(_)) => Self::Vif(v),
            (t, _) => t,
        }
    }

    pub fn next_hop(self) -> Option<NextHopKey> {
        Some(match self {
            Self::Attachment(attachment) => NextHopKey::Attachment { attachment },
            Self::Vif(vif) => NextHopKey::Vif { vif },
            Self::Vif6(vif) => NextHopKey::Vif6 { vif },
            Self::VifPeers(vif, mask) => NextHopKey::VifPeers { vif, mask },
            Self::Multipath(_) => return None,
        })
    }
}

/// LOCAL_PREF of a BGP route without a preference community (the "medium" of
/// `LOCAL_ASN:7200`).
pub const MEDIUM_PREF: u32 = 200;

/// How a BGP path ranks among the paths of one prefix, in the order of BGP's decision
/// process as far as it applies here: higher local preference (from the customer's
/// communities), then shorter AS_PATH, then — between paths from the same neighbouring AS
/// only — lower MED. The derived order is that order (smaller is better); between
/// different neighbouring ASes the lower ASN comes first, which only breaks ties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    inv_local_pref: u32,
    pub as_path_len: u16,
    pub neighbor_as: u32,
    pub med: u32,
}

impl Rank {
    pub const fn new(local_pref: u32, as_path_len: u16, neighbor_as: u32, med: u32) -> Self {
        Self {
            inv_local_pref: u32::MAX - local_pref,
            as_path_len,
            neighbor_as,
            med,
        }
    }

    pub const fn local_pref(self) -> u32 {
        u32::MAX - self.inv_local_pref
    }

    /// Why `self` beats `other` (which it sorts before), in words.
    pub fn beats(self, other: Self) -> &'static str {
        if self.inv_local_pref != other.inv_local_pref {
            "higher local preference"
        } else if self.as_path_len != other.as_path_len {
            "shorter AS_PATH"
        } else if self.neighbor_as != other.neighbor_as {
            "lower neighbour AS (MED not comparable)"
        } else if self.med != other.med {
            "lower MED"
        } else {
            "equal path, lower VIF id (multipath off)"
        }
    }
}

impl Default for Rank {
    fn default() -> Self {
        Self::new(MEDIUM_PREF, 0, 0, 0)
    }
}

/// What the gateway keeps of a BGP path's attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathInfo {
    pub rank: Rank,
    /// NO_EXPORT or NO_ADVERTISE: not advertised to the gateway's other VIFs.
    pub no_export: bool,
}

/// One candidate route of a prefix. Candidates order by preference: source, then (BGP)
/// rank, then target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Candidate {
    pub source: Source,
    pub rank: Rank,
    pub target: Target,
    /// Not advertised to the gateway's other VIFs (NO_EXPORT / NO_ADVERTISE).
    pub no_export: bool,
}

impl Candidate {
    /// A route that is not from BGP.
    pub fn new(source: Source, target: Target) -> Self {
        Self {
            source,
            rank: Rank::default(),
            target,
            no_export: false,
        }
    }

    /// A BGP route with its path's attributes.
    pub fn bgp(target: Target, path: PathInfo) -> Self {
        Self {
            source: Source::Bgp,
            rank: path.rank,
            target,
            no_export: path.no_export,
        }
    }
}

impl Candidate {
    /// The VIF's BGP paths this candidate stands for, if it is `vif`'s BGP candidate.
    pub fn vif_paths(&self, vif: VifId) -> Option<VifPaths> {
        match self.target {
            Target::VifPeers(v, mask) if v == vif && self.source == Source::Bgp => Some(VifPaths {
                mask,
                path: PathInfo {
                    rank: self.rank,
                    no_export: self.no_export,
                },
            }),
            _ => None,
        }
    }
}

/// A VIF's BGP paths to one prefix: the sessions (bit i = peer i) whose path ranks best
/// within the VIF, and that path. The rib holds it as the VIF's one BGP candidate for the
/// prefix; nothing else keeps it (with a full table that is a million entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifPaths {
    pub mask: u8,
    pub path: PathInfo,
}

impl VifPaths {
    /// The candidate of `vif` these paths make.
    pub fn candidate(self, vif: VifId) -> Candidate {
        Candidate::bgp(Target::VifPeers(vif, self.mask), self.path)
    }
}

type Candidates = SmallVec<[Candidate; 1]>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rib {
    tables: BTreeMap<GatewayId, BTreeMap<IpNet, Candidates>>,
    toward: HashMap<VifId, FastSet<IpNet>>,
    len: usize,
}

impl Rib {
    /// A rib of `candidates` (duplicates count once), the way `insert` one by one would
    /// make it. Its tables are built in bulk: B-tree nodes full, where inserts in prefix
    /// order leave each about half full (1M static routes: some 50 MB less).
    pub fn from_candidates(
        candidates: impl IntoIterator<Item = (GatewayId, IpNet, Candidate)>,
    ) -> Self {
        let mut all: Vec<(GatewayId, IpNet, Candidate)> = candidates.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        let mut rib = Self {
            len: all.len(),
            ..Self::default()
        };
        for (_, prefix, candidate) in &all {
            if let Some(vif) = candidate.target.vif() {
                rib.toward.entry(vif).or_default().insert(*prefix);
            }
        }
        for by_gateway in all.chunk_by(|a, b| a.0 == b.0) {
            let table: BTreeMap<IpNet, Candidates> = by_gateway
                .chunk_by(|a, b| a.1 == b.1)
                .map(|by_prefix| (by_prefix[0].1, by_prefix.iter().map(|c| c.2).collect()))
                .collect();
            rib.tables.insert(by_gateway[0].0, table);
        }
        rib
    }

    /// Adds a candidate; false if it was there.
    pub fn insert(&mut self, gateway: GatewayId, prefix: IpNet, candidate: Candidate) -> bool {
        let list = self
            .tables
            .entry(gateway)
            .or_default()
            .entry(prefix)
            .or_default();
        match list.binary_search(&candidate) {
            Ok(_) => false,
            Err(at) => {
                list.insert(at, candidate);
                if let Some(vif) = candidate.target.vif() {
                    self.toward.entry(vif).or_default().insert(prefix);
                }
                self.len += 1;
                true
            }
        }
    }

    /// Removes a candidate; false if it was not there.
    pub fn remove(&mut self, gateway: GatewayId, prefix: IpNet, candidate: Candidate) -> bool {
        let Some(table) = self.tables.get_mut(&gateway) else {
            return false;
        };
        let Some(list) = table.get_mut(&prefix) else {
            return false;
        };
        let Ok(at) = list.binary_search(&candidate) else {
            return false;
        };
        list.remove(at);
        self.len -= 1;
        if let Some(vif) = candidate.target.vif()
            && !list.iter().any(|c| c.target.vif() == Some(vif))
            && let Some(set) = self.toward.get_mut(&vif)
        {
            set.remove(&prefix);
            if set.is_empty() {
                self.toward.remove(&vif);
            }
        }
        if list.is_empty() {
            table.remove(&prefix);
        }
        true
    }

    /// The candidates of a prefix, most preferred first.
    pub fn candidates(&self, gateway: GatewayId, prefix: IpNet) -> &[Candidate] {
        self.tables
            .get(&gateway)
            .and_then(|t| t.get(&prefix))
            .map_or(&[], |c| c.as_slice())
    }

    /// `vif`'s BGP candidate for `prefix`, if it has one (a VIF has at most one).
    pub fn vif_paths(&self, gateway: GatewayId, prefix: IpNet, vif: VifId) -> Option<VifPaths> {
        self.candidates(gateway, prefix)
            .iter()
            .find_map(|c| c.vif_paths(vif))
    }

    /// Makes `new` `vif`'s BGP candidate for `prefix` (`None`: it has none); returns what
    /// it was.
    pub fn set_vif_paths(
        &mut self,
        gateway: GatewayId,
        prefix: IpNet,
        vif: VifId,
        new: Option<VifPaths>,
    ) -> Option<VifPaths> {
        let old = self.vif_paths(gateway, prefix, vif);
        if old != new {
            if let Some(o) = old {
                self.remove(gateway, prefix, o.candidate(vif));
            }
            if let Some(n) = new {
                self.insert(gateway, prefix, n.candidate(vif));
            }
        }
        old
    }

    /// Every VIF's BGP candidate of every prefix, as (gateway, VIF, prefix, paths): what a
    /// rebuilt rib carries over.
    pub fn learned(&self) -> impl Iterator<Item = (GatewayId, VifId, IpNet, VifPaths)> + '_ {
        self.tables.iter().flat_map(|(gateway, table)| {
            table.iter().flat_map(move |(prefix, candidates)| {
                candidates.iter().filter_map(move |c| match c.target {
                    Target::VifPeers(vif, _) => {
                        c.vif_paths(vif).map(|p| (*gateway, vif, *prefix, p))
                    }
                    _ => None,
                })
            })
        })
    }

    /// The prefixes with a candidate toward `vif`.
    pub fn toward(&self, vif: VifId) -> impl Iterator<Item = IpNet> + '_ {
        self.toward.get(&vif).into_iter().flatten().copied()
    }

    /// Every (gateway, prefix) with at least one candidate.
    pub fn prefixes(&self) -> impl Iterator<Item = (GatewayId, IpNet)> + '_ {
        self.tables
            .iter()
            .flat_map(|(g, t)| t.keys().map(move |p| (*g, *p)))
    }

    /// One gateway's prefixes and their candidates, in prefix order.
    pub fn table(&self, gateway: GatewayId) -> impl Iterator<Item = (IpNet, &[Candidate])> {
        self.tables
            .get(&gateway)
            .into_iter()
            .flatten()
            .map(|(p, c)| (*p, c.as_slice()))
    }

    /// Number of prefixes of a gateway with at least one candidate.
    pub fn prefix_count(&self, gateway: GatewayId) -> usize {
        self.tables.get(&gateway).map_or(0, BTreeMap::len)
    }

    /// Number of candidates in all tables.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    #[test]
    fn candidates_stay_ordered_by_preference_and_the_vif_index_follows() {
        let mut rib = Rib::default();
        let (g, p) = (GatewayId(1), net("192.168.50.0/24"));
        let bgp = Candidate::bgp(Target::VifPeers(VifId(1), 3), PathInfo::default());
        let stat = Candidate::new(Source::Static, Target::Vif(VifId(2)));
        assert!(rib.insert(g, p, bgp));
        assert!(rib.insert(g, p, stat));
        assert!(!rib.insert(g, p, stat));
        assert_eq!(rib.candidates(g, p), &[stat, bgp]);
        assert_eq!(rib.toward(VifId(1)).collect::<Vec<_>>(), vec![p]);
        assert_eq!(rib.len(), 2);
        assert!(rib.remove(g, p, bgp));
        assert!(!rib.remove(g, p, bgp));
        assert_eq!(rib.toward(VifId(1)).count(), 0);
        assert!(rib.remove(g, p, stat));
        assert!(rib.candidates(g, p).is_empty());
        assert_eq!(rib.prefixes().count(), 0);
        assert!(rib.is_empty());
    }

    #[test]
    fn a_vifs_bgp_paths_are_its_one_candidate_and_carry_into_a_rebuild() {
        let mut rib = Rib::default();
        let (g, p, vif) = (GatewayId(1), net("10.9.0.0/16"), VifId(4));
        let stat = Candidate::new(Source::Static, Target::Vif(vif));
        rib.insert(g, p, stat);
        let first = VifPaths {
            mask: 1,
            path: PathInfo::default(),
        };
        let better = VifPaths {
            mask: 3,
            path: PathInfo {
                rank: Rank::new(MEDIUM_PREF + 10, 1, 65000, 0),
                no_export: true,
            },
        };
        assert_eq!(rib.set_vif_paths(g, p, vif, Some(first)), None);
        assert_eq!(rib.set_vif_paths(g, p, vif, Some(better)), Some(first));
        // One BGP candidate for the VIF, beside its static route, which it does not count.
        assert_eq!(rib.candidates(g, p), &[stat, better.candidate(vif)]);
        assert_eq!(rib.vif_paths(g, p, vif), Some(better));
        assert_eq!(rib.vif_paths(g, p, VifId(5)), None);
        assert_eq!(rib.learned().collect::<Vec<_>>(), vec![(g, vif, p, better)]);
        assert_eq!(rib.set_vif_paths(g, p, vif, None), Some(better));
        assert_eq!(rib.candidates(g, p), &[stat]);
        assert_eq!(rib.learned().count(), 0);
        // The static route still points the index at the VIF.
        assert_eq!(rib.toward(vif).collect::<Vec<_>>(), vec![p]);
    }
}
