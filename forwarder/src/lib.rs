//! forwarder: a border gateway for hosted and dedicated direct connections.
//!
//! The library holds everything; the `forwarder` binary is a thin command line over it.
//! `dataplane` owns the XDP programs and their maps.

pub mod dataplane;
