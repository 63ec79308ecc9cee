//! The plan without root: VIF states, next hops and groups, selection, exports, the
//! incremental path against the full one, and ids at the maps' full capacity.

use std::collections::{BTreeMap, BTreeSet};

use forwarder_tests::fixture::{Fixture, Vif};
use ipnet::IpNet;

use super::*;
use crate::{
    config,
    ids::{GatewayId, NextHopKey, PathSet, VifId},
    model::Model,
    state::Ids,
};

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// A gateway as the agent would hold it, driven by hand.
struct World {
    model: Model,
    observed: Observed,
    up: BTreeSet<SessionKey>,
    rib: Rib,
    desired: Desired,
}

impl World {
    fn new(fixture: &Fixture) -> Self {
        Self::from_toml(&fixture.toml())
    }

    fn from_toml(toml: &str) -> Self {
        let config = config::parse(toml, "test.toml").expect("valid fixture");
        let mut ids = Ids::default();
        let model = Model::build(&config, &[], &mut ids).expect("ids");
        let rib = build_rib(&model, []);
        Self {
            model,
            observed: Observed::default(),
            up: BTreeSet::new(),
            rib,
            desired: Desired::default(),
        }
    }

    fn vif(&self, name: &str) -> VifId {
        self.model.vif_id(name).expect("vif")
    }

    fn gateway(&self) -> GatewayId {
        self.model.gateway_id("bgw-1").expect("gateway")
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            model: &self.model,
            observed: &self.observed,
            sessions_up: &self.up,
            rib: &self.rib,
        }
    }

    fn update(&mut self, dirty: &Dirty) -> Changes {
        let inputs = Inputs {
            model: &self.model,
            observed: &self.observed,
            sessions_up: &self.up,
            rib: &self.rib,
        };
        self.desired.update(&inputs, dirty)
    }

    /// The plan from scratch (VIF states carry over: `configuring` is history).
    fn full(&self) -> Desired {
        let mut d = Desired {
            vifs: self.desired.vifs.clone(),
            ..Desired::default()
        };
        d.update(&self.inputs(), &Dirty::all());
        d
    }

    fn port(&mut self, name: &str, up: bool) -> Dirty {
        self.observed.links.insert(
            name.to_owned(),
            LinkState {
                index: 7,
                up,
                mtu: 1500,
            },
        );
        Dirty {
            vifs: self.model.vifs_on_port(name).iter().copied().collect(),
            ..Dirty::default()
        }
    }

    fn client(&mut self, vif: VifId, peer: u8, mac: Option<[u8; 6]>) -> Dirty {
        match mac {
            Some(m) => self.observed.clients.insert((vif, peer), m),
            None => self.observed.clients.remove(&(vif, peer)),
        };
        Dirty {
            vifs: [vif].into(),
            ..Dirty::default()
        }
    }

    fn session(&mut self, vif: VifId, peer: u8, up: bool) -> Dirty {
        let mut dirty = Dirty {
            vifs: [vif].into(),
            ..Dirty::default()
        };
        if up {
            self.up.insert((vif, peer));
        } else {
            self.up.remove(&(vif, peer));
            let gateway = self.model.vifs[&vif].gateway;
            let held: Vec<IpNet> = self
                .rib
                .toward(vif)
                .filter(|p| {
                    self.rib
                        .vif_paths(gateway, *p, vif)
                        .is_some_and(|m| m.mask & (1 << peer) != 0)
                })
                .collect();
            for p in held {
                dirty
                    .prefixes
                    .extend(self.announce(vif, peer, p, false).prefixes);
            }
        }
        dirty
    }

    /// Port hc1 up and, for each (VIF, peer), its client router resolved and its session
    /// up: the dirt to plan.
    fn sessions_up(&mut self, sessions: &[(VifId, u8)]) -> Dirty {
        let mut dirty = self.port("hc1", true);
        for &(vif, peer) in sessions {
            dirty.vifs.extend(self.client(vif, peer, Some(MAC_A)).vifs);
            dirty.vifs.extend(self.session(vif, peer, true).vifs);
        }
        dirty
    }

    /// Session (vif, peer) announces or withdraws `prefix`.
    fn announce(&mut self, vif: VifId, peer: u8, prefix: IpNet, on: bool) -> Dirty {
        self.announce_path(vif, peer, prefix, on, crate::rib::PathInfo::default())
    }

    /// The same with the path's attributes (one path per VIF: the VIF's candidate).
    fn announce_path(
        &mut self,
        vif: VifId,
        peer: u8,
        prefix: IpNet,
        on: bool,
        path: crate::rib::PathInfo,
    ) -> Dirty {
        let gateway = self.model.vifs[&vif].gateway;
        let old = self
            .rib
            .vif_paths(gateway, prefix, vif)
            .map_or(0, |m| m.mask);
        let new = if on {
            old | 1 << peer
        } else {
            old & !(1 << peer)
        };
        let paths = (new != 0).then_some(VifPaths { mask: new, path });
        self.rib.set_vif_paths(gateway, prefix, vif, paths);
        Dirty {
            prefixes: [(gateway, prefix)].into_iter().collect(),
            ..Dirty::default()
        }
    }
}

fn one_static_vif() -> Fixture {
    Fixture::design("10.0.1.0/24")
        .vif(
            Vif::static_routed("vif-100", "hc-1", 100, "bgw-1")
                .peer("169.254.10.2", "169.254.10.1"),
        )
        .static_route("bgw-1", "192.168.50.0/24", "vif-100")
}

fn two_bgp_vifs() -> Fixture {
    Fixture::design("10.0.1.0/24")
        .vif(
            Vif::bgp("vif-100", "hc-1", 100, "bgw-1", 65001)
                .peer("169.254.10.2", "169.254.10.1")
                .peer("169.254.20.2", "169.254.20.1"),
        )
        .vif(Vif::bgp("vif-200", "hc-1", 200, "bgw-1", 65002).peer("169.254.30.2", "169.254.30.1"))
}

#[test]
fn a_static_vif_carries_its_routes_while_its_port_is_up_and_a_client_mac_is_known() {
    let mut w = World::new(&one_static_vif());
    let (vif, gw, idc) = (w.vif("vif-100"), w.gateway(), net("192.168.50.0/24"));
    let changes = w.update(&Dirty::all());
    assert_eq!(changes.vifs, vec![(vif, VifState::Configuring)]);
    assert_eq!(
        w.desired.route(gw, idc),
        None,
        "no route before the VIF is up"
    );
    assert!(w.desired.route(gw, net("10.0.1.0/24")).is_some());

    let mut dirty = w.port("hc1", true);
    dirty.vifs.extend(w.client(vif, 0, Some(MAC_A)).vifs);
    let changes = w.update(&dirty);
    assert_eq!(changes.vifs, vec![(vif, VifState::Available)]);
    assert_eq!(
        w.desired
            .next_hops
            .get(&NextHopKey::VifPeer { vif, peer: 0 }),
        Some(&NextHop::Vif { vif, mac: MAC_A })
    );
    assert_eq!(
        w.desired.next_hops.get(&NextHopKey::Vif { vif }),
        Some(&NextHop::Group(vec![NextHopKey::VifPeer { vif, peer: 0 }]))
    );
    // No BGP session groups for a static VIF.
    assert!(
        !w.desired
            .next_hops
            .keys()
            .any(|k| matches!(k, NextHopKey::VifPeers { .. }))
    );
    assert_eq!(
        w.desired.route(gw, idc).map(|c| c.target),
        Some(Target::Vif(vif))
    );
    assert_eq!(changes.routes.len(), 1);

    // A new client MAC rewrites one next hop, no route.
    let changes = {
        let d = w.client(vif, 0, Some(MAC_B));
        w.update(&d)
    };
    assert!(changes.routes.is_empty());
    assert_eq!(
        changes.next_hops,
        [NextHopKey::VifPeer { vif, peer: 0 }].into()
    );

    // The port goes down: unavailable, next hops and the route go.
    let dirty = w.port("hc1", false);
    let changes = w.update(&dirty);
    assert_eq!(changes.vifs, vec![(vif, VifState::Unavailable)]);
    assert_eq!(w.desired.route(gw, idc), None);
    assert!(w.desired.next_hops.keys().all(|k| k.vif().is_none()));
    assert_eq!(w.full(), w.desired);
}

#[test]
fn preference_is_propagated_then_static_then_bgp_and_a_loser_takes_over() {
    let fixture = two_bgp_vifs().static_route("bgw-1", "192.168.50.0/24", "vif-200");
    let mut w = World::new(&fixture);
    let (a, b, gw) = (w.vif("vif-100"), w.vif("vif-200"), w.gateway());
    let idc = net("192.168.50.0/24");
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (a, 1), (b, 0)]);
    dirty.prefixes.extend(w.announce(a, 0, idc, true).prefixes);
    // A customer route overlapping a VPC CIDR loses to the VPC's own.
    dirty
        .prefixes
        .extend(w.announce(a, 0, net("10.0.1.0/24"), true).prefixes);
    w.update(&dirty);
    let route = |w: &World, p| w.desired.route(gw, p).map(|c| (c.source, c.target));
    assert_eq!(route(&w, idc), Some((Source::Static, Target::Vif(b))));
    assert_eq!(
        route(&w, net("10.0.1.0/24")).map(|r| r.0),
        Some(Source::Propagated)
    );
    // vif-200's only session goes: its static route cannot carry traffic, BGP takes over.
    let changes = {
        let d = w.session(b, 0, false);
        w.update(&d)
    };
    assert_eq!(route(&w, idc), Some((Source::Bgp, Target::VifPeers(a, 1))));
    assert_eq!(changes.vifs, vec![(b, VifState::Unavailable)]);
    assert_eq!(w.full(), w.desired);
}

#[test]
fn a_lost_session_leaves_the_shared_group_in_one_write_before_routes_move() {
    let mut w = World::new(&two_bgp_vifs());
    let (a, gw) = (w.vif("vif-100"), w.gateway());
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (a, 1)]);
    let both: Vec<IpNet> = (0..100u32)
        .map(|i| {
            IpNet::new(std::net::Ipv4Addr::from(0xc0a8_0000 + (i << 8)).into(), 24).expect("net")
        })
        .collect();
    for p in &both {
        dirty.prefixes.extend(w.announce(a, 0, *p, true).prefixes);
        dirty.prefixes.extend(w.announce(a, 1, *p, true).prefixes);
    }
    w.update(&dirty);
    let m3 = NextHopKey::VifPeers { vif: a, mask: 3 };
    assert_eq!(
        w.desired.next_hops.get(&m3),
        Some(&NextHop::Group(vec![
            NextHopKey::VifPeer { vif: a, peer: 0 },
            NextHopKey::VifPeer { vif: a, peer: 1 }
        ]))
    );
    assert!(
        both.iter()
            .all(|p| w.desired.route(gw, *p).map(|c| c.target) == Some(Target::VifPeers(a, 3)))
    );
    // Every mask has its group, used or not.
    for mask in 1..=3 {
        assert!(
            w.desired
                .next_hops
                .contains_key(&NextHopKey::VifPeers { vif: a, mask })
        );
    }

    let changes = {
        let d = w.session(a, 0, false);
        w.update(&d)
    };
    // The group of both sessions now lists only peer 1: apply writes groups before routes,
    // so the 100 routes stop using peer 0 with that one write.
    assert_eq!(
        w.desired.next_hops.get(&m3),
        Some(&NextHop::Group(vec![NextHopKey::VifPeer {
            vif: a,
            peer: 1
        }]))
    );
    assert!(changes.next_hops.contains(&m3));
    assert_eq!(changes.routes.len(), 100);
    assert!(
        both.iter()
            .all(|p| w.desired.route(gw, *p).map(|c| c.target) == Some(Target::VifPeers(a, 2)))
    );
    assert!(
        !w.desired
            .next_hops
            .contains_key(&NextHopKey::VifPeer { vif: a, peer: 0 })
    );
    assert_eq!(w.desired.vifs[&a], VifState::Available);
    assert_eq!(w.full(), w.desired);
}

#[test]
fn exports_are_the_gateways_routes_except_the_vifs_own_and_follow_changes() {
    let mut w = World::new(&two_bgp_vifs());
    let (a, b) = (w.vif("vif-100"), w.vif("vif-200"));
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (b, 0)]);
    let (pa, pb) = (net("192.168.1.0/24"), net("192.168.2.0/24"));
    dirty.prefixes.extend(w.announce(a, 0, pa, true).prefixes);
    w.update(&dirty);
    let vpc = net("10.0.1.0/24");
    assert_eq!(w.desired.exports(&w.model, a), [vpc].into());
    assert_eq!(w.desired.exports(&w.model, b), [vpc, pa].into());

    let changes = {
        let d = w.announce(b, 0, pb, true);
        w.update(&d)
    };
    let deltas = w.desired.export_changes(&changes, &w.model, &w.up);
    assert_eq!(
        deltas,
        BTreeMap::from([((a, 0), (vec![pb], vec![]))]),
        "vif-100 learns vif-200's route; vif-200 is not told its own"
    );
    let changes = {
        let d = w.announce(a, 0, pa, false);
        w.update(&d)
    };
    assert_eq!(
        w.desired.export_changes(&changes, &w.model, &w.up),
        BTreeMap::from([((b, 0), (vec![], vec![pa]))])
    );
}

#[test]
fn a_change_to_one_vif_touches_only_that_vif_and_its_prefixes() {
    let fixture =
        Fixture::design("10.0.1.0/24").many_vifs("v", 200, "hc-1", "bgw-1", Some(65001), false);
    let mut w = World::new(&fixture);
    let vifs: Vec<VifId> = w.model.vifs.keys().copied().collect();
    w.update(&Dirty::all());
    let mut dirty = w.port("hc1", true);
    for (n, vif) in vifs.iter().enumerate() {
        dirty.vifs.extend(w.client(*vif, 0, Some(MAC_A)).vifs);
        dirty.vifs.extend(w.session(*vif, 0, true).vifs);
        // 50 prefixes per VIF: 10,000 routes.
        for i in 0..50u32 {
            let p = IpNet::new(
                std::net::Ipv4Addr::from(0xac10_0000 + ((n as u32 * 50 + i) << 8)).into(),
                24,
            )
            .expect("net");
            dirty.prefixes.extend(w.announce(*vif, 0, p, true).prefixes);
        }
    }
    let changes = w.update(&dirty);
    assert_eq!(changes.routes.len(), 200 * 50);

    let one = vifs[17];
    let changes = {
        let d = w.client(one, 0, None);
        w.update(&d)
    };
    assert_eq!(changes.vifs, vec![(one, VifState::Unavailable)]);
    assert_eq!(changes.routes.len(), 50, "only the VIF's own routes move");
    assert!(changes.next_hops.iter().all(|k| k.vif() == Some(one)));
    let changes = {
        let d = w.client(one, 0, Some(MAC_B));
        w.update(&d)
    };
    assert_eq!(changes.routes.len(), 50);
    assert_eq!(w.full(), w.desired);
}

/// A small deterministic generator: the same sequence on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[test]
fn incremental_updates_always_agree_with_a_full_plan() {
    let fixture = two_bgp_vifs()
        .vif(
            Vif::static_routed("vif-300", "hc-2", 300, "bgw-1")
                .peer("169.254.40.2", "169.254.40.1"),
        )
        .connection("hc-2", "hc2")
        .static_route("bgw-1", "192.168.3.0/24", "vif-300")
        .static_route("bgw-1", "192.168.1.0/24", "vif-300");
    let mut w = World::new(&fixture);
    let vifs = [w.vif("vif-100"), w.vif("vif-200"), w.vif("vif-300")];
    let peers = [(vifs[0], 0), (vifs[0], 1), (vifs[1], 0), (vifs[2], 0)];
    let prefixes: Vec<IpNet> = (0..6u32)
        .map(|i| {
            IpNet::new(std::net::Ipv4Addr::from(0xc0a8_0000 + (i << 8)).into(), 24).expect("net")
        })
        .chain([net("10.0.1.0/25")])
        .collect();
    w.update(&Dirty::all());
    let mut rng = Lcg(42);
    let mut available = 0;
    for step in 0..3000 {
        let dirty = match rng.next(5) {
            0 => {
                let port = ["hc1", "hc2"][rng.next(2) as usize];
                let up = rng.next(3) != 0;
                w.port(port, up)
            }
            1 => {
                let (vif, peer) = peers[rng.next(peers.len() as u64) as usize];
                let mac = [None, Some(MAC_A), Some(MAC_B)][rng.next(3) as usize];
                w.client(vif, peer, mac)
            }
            2 => {
                let (vif, peer) = peers[rng.next(3) as usize];
                let up = rng.next(2) == 0;
                w.session(vif, peer, up)
            }
            _ => {
                let (vif, peer) = peers[rng.next(3) as usize];
                let p = prefixes[rng.next(prefixes.len() as u64) as usize];
                let on = rng.next(3) != 0 && w.up.contains(&(vif, peer));
                w.announce(vif, peer, p, on)
            }
        };
        w.update(&dirty);
        assert_eq!(
            w.full(),
            w.desired,
            "step {step}: incremental plan differs from a full one"
        );
        available += w
            .desired
            .vifs
            .values()
            .filter(|s| **s == VifState::Available)
            .count();
    }
    // The walk spends real time with VIFs up (it is not 3,000 steps of nothing).
    assert!(available > 1500, "{available}");
}

#[test]
fn every_vif_the_maps_hold_gets_its_next_hop_ids() {
    // 16,383 BGP VIFs (the VIF table's 16,384 slots less the reserved 0) with two sessions
    // each, on five connections: every next hop of every VIF, groups included, gets an id.
    let capacity = forwarder_common::MAX_VIFS - 1;
    let mut fixture = Fixture::design("10.0.1.0/24");
    let mut left = capacity;
    for c in 1..=5 {
        let count = left.min(4094);
        left -= count;
        if c > 1 {
            fixture = fixture.connection(&format!("hc-{c}"), &format!("hc{c}"));
        }
        fixture = fixture.many_vifs(
            &format!("c{c}-"),
            count,
            &format!("hc-{c}"),
            "bgw-1",
            Some(65001),
            true,
        );
    }
    let config = config::parse(&fixture.toml(), "test.toml").expect("valid");
    let mut ids = Ids::default();
    let model = Model::build(&config, &[], &mut ids).expect("VIF ids");
    assert_eq!(model.vifs.len() as u32, capacity);
    let mut observed = Observed::default();
    let mut up = BTreeSet::new();
    for c in 1..=5 {
        observed.links.insert(
            format!("hc{c}"),
            LinkState {
                index: c,
                up: true,
                mtu: 1500,
            },
        );
    }
    for vif in model.vifs.keys() {
        for peer in 0..2 {
            observed.clients.insert((*vif, peer), MAC_A);
            up.insert((*vif, peer));
        }
    }
    let rib = build_rib(&model, []);
    let inputs = Inputs {
        model: &model,
        observed: &observed,
        sessions_up: &up,
        rib: &rib,
    };
    let mut desired = Desired::default();
    desired.update(&inputs, &Dirty::all());
    // Two client routers, their group and three session groups per VIF, one attachment.
    assert_eq!(desired.next_hops.len() as u32, capacity * 6 + 1);
    for key in desired.next_hops.keys() {
        ids.next_hops
            .allocate(key)
            .expect("a next-hop id for every key");
    }
    assert!((ids.next_hops.len() as u32) < forwarder_common::MAX_NEXT_HOPS);

    // One VIF more than the table holds is a clear error, not a wrapped id.
    let config = config::parse(
        &fixture
            .clone()
            .connection("hc-6", "hc6")
            .vif(
                Vif::static_routed("one-too-many", "hc-6", 1, "bgw-1").peer("10.9.9.2", "10.9.9.1"),
            )
            .toml(),
        "test.toml",
    )
    .expect("valid");
    let err = Model::build(&config, &[], &mut Ids::default()).expect_err("no VIF id left");
    assert_eq!(
        err.to_string(),
        format!("no free VIF id: all {capacity} slots of the map are in use")
    );
}

#[test]
fn vif_policy_comes_from_the_vif_or_the_agent_defaults() {
    use forwarder_common::{VifPolicy, vif_flags};
    let fixture = Fixture::design("10.0.0.0/16")
        .agent("control_rate_pps", "500")
        .vif(
            Vif::static_routed("jumbo", "hc-1", 10, "bgw-1")
                .peer("10.255.1.2", "10.255.1.1")
                .set("mtu", "9001")
                .set("source_check", "\"strict\""),
        )
        .vif(
            Vif::static_routed("plain", "hc-1", 11, "bgw-1")
                .peer("10.255.2.2", "10.255.2.1")
                .set("control_rate_pps", "0"),
        );
    let config = config::parse(&fixture.toml(), "test.toml").expect("valid fixture");
    let model = Model::build(&config, &[], &mut Ids::default()).expect("ids");
    let policy = |name: &str| model.vifs[&model.vif_id(name).expect("vif")].policy(&config.agent);
    assert_eq!(
        policy("jumbo"),
        VifPolicy {
            mtu: 9001,
            flags: vif_flags::SOURCE_CHECK,
            control_interval_ns: 2_000_000,
            control_burst_ns: 2_000_000 * u64::from(config::DEFAULT_CONTROL_BURST),
        }
    );
    assert_eq!(
        policy("plain"),
        VifPolicy {
            mtu: 1500,
            ..VifPolicy::default()
        }
    );
}

#[test]
fn the_best_path_across_vifs_wins_and_no_export_stays_home() {
    use crate::rib::{PathInfo, Rank};
    let mut w = World::new(&two_bgp_vifs());
    let (a, b) = (w.vif("vif-100"), w.vif("vif-200"));
    w.update(&Dirty::all());
    let dirty = w.sessions_up(&[(a, 0), (b, 0)]);
    w.update(&dirty);
    let p = net("192.168.50.0/24");
    let path = |pref, len, med| PathInfo {
        rank: Rank::new(pref, len, 65001, med),
        no_export: false,
    };
    let selected = |w: &World| w.desired.routes[&w.gateway()][&p].target.vif();
    // Equal paths: both (multipath).
    let d = w.announce_path(a, 0, p, true, path(200, 1, 0));
    w.update(&d);
    let d = w.announce_path(b, 0, p, true, path(200, 1, 0));
    w.update(&d);
    let route = w.desired.routes[&w.gateway()][&p];
    assert_eq!(
        w.desired.paths_of(&route).map(|s| s.as_slice().to_vec()),
        Some(vec![(a, 1), (b, 1)])
    );
    // vif-200 says high preference (LOCAL_ASN:7300): it wins, even with a longer path.
    let d = w.announce_path(b, 0, p, false, path(200, 1, 0));
    w.update(&d);
    let d = w.announce_path(b, 0, p, true, path(300, 4, 0));
    w.update(&d);
    assert_eq!(selected(&w), Some(b));
    // Equal preference: the shorter AS_PATH; then the lower MED.
    let d = w.announce_path(b, 0, p, false, path(300, 4, 0));
    w.update(&d);
    let d = w.announce_path(b, 0, p, true, path(200, 3, 0));
    w.update(&d);
    assert_eq!(selected(&w), Some(a), "a prepended path loses");
    let d = w.announce_path(a, 0, p, false, path(200, 1, 0));
    w.update(&d);
    let d = w.announce_path(a, 0, p, true, path(200, 3, 50));
    w.update(&d);
    assert_eq!(selected(&w), Some(b), "the lower MED from the same AS");

    // NO_EXPORT: used, but not advertised to the other VIF.
    let q = net("192.168.60.0/24");
    let d = w.announce_path(
        a,
        0,
        q,
        true,
        PathInfo {
            no_export: true,
            ..path(200, 1, 0)
        },
    );
    w.update(&d);
    assert_eq!(w.desired.routes[&w.gateway()][&q].target.vif(), Some(a));
    assert!(!w.desired.exports(&w.model, b).contains(&q));
}

#[test]
fn a_gateway_may_keep_its_vifs_routes_from_each_other() {
    let toml = two_bgp_vifs().toml().replacen(
        "[[border_gateway]]\nname = \"bgw-1\"\n",
        "[[border_gateway]]\nname = \"bgw-1\"\nadvertise_between_vifs = false\n",
        1,
    );
    assert!(toml.contains("advertise_between_vifs = false"));
    let mut w = World::from_toml(&toml);
    let (a, b) = (w.vif("vif-100"), w.vif("vif-200"));
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (b, 0)]);
    let pa = net("192.168.1.0/24");
    dirty.prefixes.extend(w.announce(a, 0, pa, true).prefixes);
    let changes = w.update(&dirty);
    let vpc = net("10.0.1.0/24");
    assert_eq!(
        w.desired.exports(&w.model, b),
        [vpc].into(),
        "only the VPC CIDRs"
    );
    assert!(
        w.desired
            .export_changes(&changes, &w.model, &w.up)
            .get(&(b, 0))
            .is_none_or(|(announce, _)| !announce.contains(&pa))
    );
}

#[test]
fn equal_paths_on_two_vifs_share_one_group_that_follows_their_sessions() {
    let fixture = two_bgp_vifs().vif(
        Vif::static_routed("vif-300", "hc-1", 300, "bgw-1").peer("169.254.40.2", "169.254.40.1"),
    );
    let mut w = World::new(&fixture);
    let (a, b, c, gw) = (
        w.vif("vif-100"),
        w.vif("vif-200"),
        w.vif("vif-300"),
        w.gateway(),
    );
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (a, 1), (b, 0)]);
    dirty.vifs.extend(w.client(c, 0, Some(MAC_B)).vifs);
    let prefixes: Vec<IpNet> = (0..20u32)
        .map(|i| {
            IpNet::new(std::net::Ipv4Addr::from(0xc0a8_0000 + (i << 8)).into(), 24).expect("net")
        })
        .collect();
    for p in &prefixes {
        for (vif, peer) in [(a, 0), (a, 1), (b, 0)] {
            dirty
                .prefixes
                .extend(w.announce(vif, peer, *p, true).prefixes);
        }
    }
    w.update(&dirty);
    let both = PathSet::new(&[(a, 3), (b, 1)]).expect("set");
    let key = NextHopKey::Multipath { paths: both };
    let peer = |vif, peer| NextHopKey::VifPeer { vif, peer };
    // One group for all 20 prefixes: vif-100's two routers and vif-200's one.
    assert_eq!(
        w.desired.next_hops.get(&key),
        Some(&NextHop::Group(vec![peer(a, 0), peer(a, 1), peer(b, 0)]))
    );
    for p in &prefixes {
        let route = w.desired.route(gw, *p).expect("route");
        assert_eq!(w.desired.paths_of(&route), Some(both));
        assert_eq!(w.desired.next_hop_key(route.target), Some(key));
    }
    // Advertised to the third VIF, not back to either of its own.
    let p0 = prefixes[0];
    assert!(w.desired.exports(&w.model, c).contains(&p0));
    assert!(!w.desired.exports(&w.model, a).contains(&p0));
    assert!(!w.desired.exports(&w.model, b).contains(&p0));
    assert_eq!(w.full(), w.desired);

    // vif-200's router's MAC is lost (its session is still up): the routes fall back to
    // vif-100 alone and the group goes.
    let changes = {
        let d = w.client(b, 0, None);
        w.update(&d)
    };
    assert!(changes.next_hops.contains(&key));
    assert!(!w.desired.next_hops.contains_key(&key), "unused: gone");
    assert_eq!(changes.routes.len(), 20);
    assert!(
        prefixes
            .iter()
            .all(|p| w.desired.route(gw, *p).map(|c| c.target) == Some(Target::VifPeers(a, 3)))
    );
    assert_eq!(w.full(), w.desired);

    // Back: multipath again. Then vif-100's peer 0 is lost: its set's group loses that
    // router (one write), and the routes move to the set of what is left.
    let d = w.client(b, 0, Some(MAC_A));
    w.update(&d);
    assert!(w.desired.next_hops.contains_key(&key));
    let changes = {
        let d = w.session(a, 0, false);
        w.update(&d)
    };
    let rest = NextHopKey::Multipath {
        paths: PathSet::new(&[(a, 2), (b, 1)]).expect("set"),
    };
    assert!(changes.next_hops.contains(&key) && changes.next_hops.contains(&rest));
    assert_eq!(
        w.desired.next_hops.get(&rest),
        Some(&NextHop::Group(vec![peer(a, 1), peer(b, 0)]))
    );
    assert!(!w.desired.next_hops.contains_key(&key));
    assert_eq!(w.full(), w.desired);

    // A better path on one VIF ends the sharing for that prefix only.
    let better = crate::rib::PathInfo {
        rank: crate::rib::Rank::new(300, 0, 0, 0),
        no_export: false,
    };
    let d = w.announce_path(b, 0, p0, true, better);
    w.update(&d);
    assert_eq!(
        w.desired.route(gw, p0).map(|c| c.target),
        Some(Target::VifPeers(b, 1))
    );
    assert_eq!(
        w.desired
            .route(gw, prefixes[1])
            .and_then(|r| w.desired.paths_of(&r)),
        PathSet::new(&[(a, 2), (b, 1)])
    );
    assert_eq!(w.full(), w.desired);
}

#[test]
fn multipath_off_keeps_one_vif_per_prefix() {
    let toml = two_bgp_vifs().toml().replacen(
        "[[border_gateway]]\nname = \"bgw-1\"\n",
        "[[border_gateway]]\nname = \"bgw-1\"\nmultipath = false\n",
        1,
    );
    assert!(toml.contains("multipath = false"));
    let mut w = World::from_toml(&toml);
    let (a, b) = (w.vif("vif-100"), w.vif("vif-200"));
    w.update(&Dirty::all());
    let mut dirty = w.sessions_up(&[(a, 0), (b, 0)]);
    let p = net("192.168.50.0/24");
    dirty.prefixes.extend(w.announce(a, 0, p, true).prefixes);
    dirty.prefixes.extend(w.announce(b, 0, p, true).prefixes);
    w.update(&dirty);
    assert_eq!(
        w.desired.route(w.gateway(), p).map(|c| c.target),
        Some(Target::VifPeers(a.min(b), 1))
    );
    assert!(
        !w.desired
            .next_hops
            .keys()
            .any(|k| matches!(k, NextHopKey::Multipath { .. }))
    );
}

#[test]
fn a_rebuilt_rib_keeps_the_bgp_routes_of_vifs_that_stayed_and_not_of_one_that_moved() {
    let vif = |gateway: &str| {
        Vif::bgp("vif-100", "hc-1", 100, gateway, 65001)
            .peer("169.254.10.2", "169.254.10.1")
            .peer("169.254.20.2", "169.254.20.1")
    };
    let other =
        Vif::bgp("vif-200", "hc-1", 200, "bgw-1", 65002).peer("169.254.30.2", "169.254.30.1");
    let fixture = |gateway: &str| {
        Fixture::design("10.0.1.0/24")
            .gateway("bgw-2")
            .vif(vif(gateway))
            .vif(other.clone())
    };
    let mut ids = Ids::default();
    let mut model = |f: Fixture| {
        let config = config::parse(&f.toml(), "test.toml").expect("valid fixture");
        Model::build(&config, &[], &mut ids).expect("ids")
    };
    let before = model(fixture("bgw-1"));
    let after = model(fixture("bgw-2"));
    let (moved, stayed) = (
        before.vif_id("vif-100").expect("vif-100"),
        before.vif_id("vif-200").expect("vif-200"),
    );
    assert_ne!(before.vifs[&moved].gateway, after.vifs[&moved].gateway);
    let mut rib = build_rib(&before, []);
    let p = net("192.168.50.0/24");
    let paths = VifPaths {
        mask: 3,
        path: crate::rib::PathInfo::default(),
    };
    for vif in [moved, stayed] {
        rib.set_vif_paths(before.vifs[&vif].gateway, p, vif, Some(paths));
    }

    // The same model: the same rib.
    assert_eq!(build_rib(&before, rib.learned()), rib);
    // Moved to bgw-2: its sessions start again and bring their routes; none carry over.
    let rebuilt = build_rib(&after, rib.learned());
    let gateway = after.vifs[&stayed].gateway;
    assert_eq!(rebuilt.vif_paths(gateway, p, stayed), Some(paths));
    assert_eq!(
        rebuilt.learned().map(|(_, v, _, _)| v).collect::<Vec<_>>(),
        vec![stayed]
    );
}
