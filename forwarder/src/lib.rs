//! forwarder: a border gateway for hosted and dedicated direct connections.
//!
//! The library holds everything; the `forwarder` binary is a thin command line over it.
//! `dataplane` owns the XDP programs and their maps.

pub mod agent;
pub mod apply;
pub mod bfd;
pub mod bgp;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
pub mod ids;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod observe;
pub mod plan;
pub mod rib;
pub mod routes24;
pub mod state;
pub mod timer;
pub mod underlay;
pub mod vifcp;

/// A hash map for the tables that grow with the routes (a million entries): foldhash instead
/// of SipHash, seeded per process. Keys are the agent's own (prefixes, ids), never a peer's
/// choice of hash input in bulk beyond what `max_prefixes` bounds.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
