//! Route tables of the border gateways, as the agent keeps them: every candidate route with
//! its source, the selection of one per prefix, and the difference between what is selected
//! and what the data plane holds. Pure logic: no maps, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where a route came from. The order is the preference when one prefix has several: a VPC
/// attachment's own CIDR beats a static route, which beats BGP (administrative distance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Propagated,
    Static,
    Bgp,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Propagated => "propagated",
            Self::Static => "static",
            Self::Bgp => "bgp",
        })
    }
}

/// What a route points to, by name; the agent maps it to a next-hop object in the data plane.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Target {
    /// Encapsulate toward this VPC attachment.
    Attachment(String),
    /// Send to the client router(s) of this VIF.
    Vif(String),
    /// Send to the client routers of this VIF's BGP sessions in the mask (bit i = peer i):
    /// the sessions that announced the prefix.
    VifPeers(String, u8),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Self::Attachment(n) | Self::Vif(n) | Self::VifPeers(n, _) => n,
        }
    }

    /// The VIF this target sends to, if it is one.
    pub fn vif(&self) -> Option<&str> {
        match self {
            Self::Vif(n) | Self::VifPeers(n, _) => Some(n),
            Self::Attachment(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Attachment(n) => write!(f, "attachment {n}"),
            Self::Vif(n) => write!(f, "vif {n}"),
            Self::VifPeers(n, mask) => {
                let peers: Vec<String> = (0..8)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| i.to_string())
                    .collect();
                write!(f, "vif {n} (bgp peer {})", peers.join("+"))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub prefix: Ipv4Net,
    pub source: Source,
    pub target: Target,
}

/// All candidate routes of one border gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    routes: BTreeSet<Route>,
}

impl Table {
    pub fn insert(&mut self, route: Route) -> bool {
        self.routes.insert(route)
    }

    pub fn remove(&mut self, route: &Route) -> bool {
        self.routes.remove(route)
    }

    /// Removes every route of `source` toward `target` (a VIF going away, a session lost).
    pub fn remove_where(&mut self, keep: impl Fn(&Route) -> bool) {
        self.routes.retain(keep);
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// One route per prefix: the most preferred source; among equals, the first by target
    /// name, so the choice is stable. Routes whose target `usable` rejects are skipped, so a
    /// less preferred route can take over.
    pub fn select(&self, usable: impl Fn(&Target) -> bool) -> BTreeMap<Ipv4Net, &Route> {
        let mut best: BTreeMap<Ipv4Net, &Route> = BTreeMap::new();
        // BTreeSet order is (prefix, source, target): the first usable one per prefix wins.
        for route in self.routes.iter().filter(|r| usable(&r.target)) {
            best.entry(route.prefix).or_insert(route);
        }
        best
    }
}

/// What must change in a map holding `installed` to make it hold `wanted`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Diff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    installed: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let upsert = wanted
        .iter()
        .filter(|(k, v)| installed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = installed
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    Diff { upsert, remove }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, source: Source, target: Target) -> Route {
        Route {
            prefix: prefix.parse().expect("prefix"),
            source,
            target,
        }
    }

    fn vif(n: &str) -> Target {
        Target::Vif(n.to_owned())
    }

    #[test]
    fn preferred_source_wins_and_a_loser_takes_over_when_its_better_goes() {
        let mut t = Table::default();
        t.insert(route("192.168.50.0/24", Source::Bgp, vif("vif-100")));
        t.insert(route("192.168.50.0/24", Source::Static, vif("vif-200")));
        let sel = t.select(|_| true);
        assert_eq!(sel.len(), 1);
        assert_eq!(sel.values().next().map(|r| r.source), Some(Source::Static));
        // The static route's VIF is down: BGP's route is used.
        let sel = t.select(|target| *target != vif("vif-200"));
        assert_eq!(
            sel.values().next().map(|r| &r.target),
            Some(&vif("vif-100"))
        );
        t.remove(&route("192.168.50.0/24", Source::Static, vif("vif-200")));
        assert_eq!(
            t.select(|_| true).values().next().map(|r| r.source),
            Some(Source::Bgp)
        );
    }

    #[test]
    fn remove_where_withdraws_one_vif() {
        let mut t = Table::default();
        t.insert(route("10.1.0.0/16", Source::Static, vif("a")));
        t.insert(route("10.2.0.0/16", Source::Static, vif("b")));
        t.remove_where(|r| r.target != vif("a"));
        assert_eq!(t.routes().count(), 1);
    }

    #[test]
    fn diff_adds_changes_and_removes_only_what_differs() {
        let installed: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let wanted: BTreeMap<u32, u32> = [(1, 10), (2, 21), (4, 40)].into();
        let d = diff(&installed, &wanted);
        assert_eq!(d.upsert, vec![(2, 21), (4, 40)]);
        assert_eq!(d.remove, vec![3]);
        assert!(diff(&wanted, &wanted).is_empty());
    }
}
