//! The /24 shortcut in front of the IPv4 route trie (`ROUTES24`): which /24s a route can
//! change the entry of, and what a /24's entry must be given the routes in the trie. Pure,
//! so that the agent (one route at a time) and a whole-table load share it.
//!
//! A /24's entry is the next hop of the longest route of [`ROUTES24_SHORTEST`]..=24 bits
//! holding it, and only while no longer route splits the /24; otherwise it has none and the
//! data plane asks the trie. So an entry never answers differently from the trie.

use std::net::Ipv4Addr;

use forwarder_common::ROUTES24_SHORTEST;
use ipnet::Ipv4Net;

use crate::{FastMap, FastSet};

/// The /24s (first address, as a number) whose entry a route of `prefix` can change: every
/// /24 of a prefix of [`ROUTES24_SHORTEST`]..=24 bits, the one /24 holding a longer prefix,
/// none for a shorter one (the trie alone answers for it).
pub fn touched(prefix: Ipv4Net) -> impl Iterator<Item = u32> {
    let len = prefix.prefix_len();
    let first = u32::from(prefix.network()) & !0xff;
    let count: u32 = match len {
        l if l < ROUTES24_SHORTEST => 0,
        l if l <= 24 => 1 << (24 - l),
        _ => 1,
    };
    (0..count).map(move |i| first + (i << 8))
}

/// Whether `prefix` splits a /24 (is longer than 24 bits).
pub fn splits(prefix: Ipv4Net) -> bool {
    prefix.prefix_len() > 24
}

/// The entry /24 `net` must have: `route` answers which next hop the trie holds for a
/// prefix (of one gateway); `split` says a longer prefix lies inside the /24.
pub fn entry(net: u32, split: bool, route: impl Fn(Ipv4Net) -> Option<u32>) -> Option<u32> {
    if split {
        return None;
    }
    (ROUTES24_SHORTEST..=24).rev().find_map(|len| {
        let prefix = Ipv4Net::new(Ipv4Addr::from(net), len).ok()?.trunc();
        route(prefix)
    })
}

/// Every entry of a whole table of (gateway id, prefix, next hop): (gateway id, /24, next
/// hop), in no particular order.
pub fn build(routes: &[(u32, Ipv4Net, u32)]) -> Vec<(u32, u32, u32)> {
    let mut by_prefix: FastMap<(u32, Ipv4Net), u32> = FastMap::default();
    let mut split: FastSet<(u32, u32)> = FastSet::default();
    let mut nets: FastSet<(u32, u32)> = FastSet::default();
    for (gateway, prefix, nh) in routes {
        let prefix = prefix.trunc();
        by_prefix.insert((*gateway, prefix), *nh);
        if splits(prefix) {
            split.extend(touched(prefix).map(|n| (*gateway, n)));
        }
        nets.extend(touched(prefix).map(|n| (*gateway, n)));
    }
    nets.into_iter()
        .filter_map(|(gateway, net)| {
            let nh = entry(net, split.contains(&(gateway, net)), |p| {
                by_prefix.get(&(gateway, p)).copied()
            })?;
            Some((gateway, net, nh))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Net {
        s.parse().expect("prefix")
    }

    fn n(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().expect("address"))
    }

    #[test]
    fn a_prefix_touches_its_24s_a_longer_one_its_24_a_shorter_one_none() {
        let t: Vec<u32> = touched(p("192.0.2.0/24")).collect();
        assert_eq!(t, vec![n("192.0.2.0")]);
        let t: Vec<u32> = touched(p("198.18.8.0/21")).collect();
        assert_eq!(t.len(), 8);
        assert_eq!(t[0], n("198.18.8.0"));
        assert_eq!(t[7], n("198.18.15.0"));
        let t: Vec<u32> = touched(p("192.0.2.77/32")).collect();
        assert_eq!(t, vec![n("192.0.2.0")]);
        assert_eq!(touched(p("198.18.0.0/20")).count(), 0);
        assert_eq!(touched(p("0.0.0.0/0")).count(), 0);
    }

    #[test]
    fn the_longest_covering_prefix_wins_and_a_split_24_has_no_entry() {
        let routes = [
            (1, p("198.18.8.0/21"), 10),
            (1, p("198.18.10.0/23"), 11),
            (1, p("198.18.11.0/24"), 12),
            (1, p("198.18.12.128/25"), 13),
            (1, p("198.18.0.0/16"), 14),
            (2, p("198.18.9.0/24"), 20),
        ];
        let mut got = build(&routes);
        got.sort_unstable();
        let want = vec![
            (1, n("198.18.8.0"), 10),
            (1, n("198.18.9.0"), 10),
            (1, n("198.18.10.0"), 11),
            (1, n("198.18.11.0"), 12),
            // 198.18.12.0/24 is split by the /25: the trie answers.
            (1, n("198.18.13.0"), 10),
            (1, n("198.18.14.0"), 10),
            (1, n("198.18.15.0"), 10),
            (2, n("198.18.9.0"), 20),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_entry_follows_the_routes_it_is_made_of() {
        let mut table: FastMap<Ipv4Net, u32> = FastMap::default();
        let net = n("203.0.113.0");
        let lookup = |t: &FastMap<Ipv4Net, u32>| entry(net, false, |q| t.get(&q).copied());
        assert_eq!(lookup(&table), None);
        table.insert(p("203.0.112.0/21"), 1);
        assert_eq!(lookup(&table), Some(1));
        table.insert(p("203.0.113.0/24"), 2);
        assert_eq!(lookup(&table), Some(2));
        table.remove(&p("203.0.113.0/24"));
        assert_eq!(lookup(&table), Some(1));
        assert_eq!(entry(net, true, |q| table.get(&q).copied()), None);
    }
}
