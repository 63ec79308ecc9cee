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
pub mod state;
pub mod timer;
pub mod underlay;
pub mod vifcp;
