//! Entry points for the fuzz targets (`fuzz/`) and the corpus replay test: what a peer's bytes
//! reach, without sockets. Every input must end without a panic, a hang or unbounded memory.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;
use rustbgpd_wire::Message;
use tokio::sync::mpsc;

use super::{
    Event, SessionConfig,
    policy::ImportPolicy,
    session::Session,
    wire::{self, Framer, LocalRestart, LocalSide},
};

const LOCAL: LocalSide = LocalSide {
    family: wire::Family::Ipv4,
    asn: 64512,
    hold_time: 90,
    router_id: Ipv4Addr::new(192, 0, 2, 1),
    graceful_restart: Some(LocalRestart {
        restart_time: 120,
        restarted: false,
    }),
    allow_hold_time_zero: false,
};

/// The message reader: framing, decoding, the OPEN checks, UPDATE parsing with RFC 7606
/// handling and the import filter's verdict on every prefix.
pub fn message(data: &[u8]) {
    let policy = ImportPolicy {
        vpc_cidrs: vec!["10.0.0.0/16".parse().expect("cidr")],
        max_prefix_len: 28,
        allowed: vec!["192.168.0.0/16".parse().expect("cidr")],
        ..ImportPolicy::default()
    };
    let mut framer = Framer::default();
    framer.buffer().extend_from_slice(data);
    loop {
        match framer.next_message() {
            Ok(Some(Message::Open(open))) => {
                for local in [
                    LOCAL,
                    LocalSide {
                        graceful_restart: None,
                        allow_hold_time_zero: true,
                        ..LOCAL
                    },
                ] {
                    if let Err(n) = wire::check_open(&open, &local, 65001) {
                        let _ = n.encode();
                        let _ = n.to_string();
                    }
                }
            }
            Ok(Some(Message::Update(update))) => {
                for four_octet in [true, false] {
                    match wire::parse_update(&update, four_octet, 65001) {
                        Ok(r) => {
                            for p in r.announced.iter().chain(&r.withdrawn) {
                                let _ = policy.judge(p).to_string();
                            }
                        }
                        Err(n) => {
                            let _ = n.encode();
                        }
                    }
                }
            }
            Ok(Some(Message::Notification(n))) => {
                let _ = wire::Notification::from_message(&n).to_string();
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(n) => {
                let _ = n.encode();
                return;
            }
        }
    }
}

/// A session fed `data` as what its peer sent on one connection (after a valid OPEN and
/// KEEPALIVE when the first byte is odd, so UPDATE handling in Established is reached):
/// the state machine, the Adj-RIB-In, max_prefixes, End-of-RIB and ROUTE-REFRESH.
pub fn session(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut cfg = SessionConfig::new(
            "fuzz",
            0,
            Ipv4Addr::new(127, 0, 0, 1).into(),
            Ipv4Addr::new(127, 0, 0, 2).into(),
            64512,
            65001,
            Ipv4Addr::new(192, 0, 2, 1),
        );
        cfg.max_prefixes = Some(50);
        cfg.max_prefix_len = 28;
        let (events_tx, mut events) = mpsc::channel::<Event>(1 << 16);
        let (_commands_tx, commands) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(super::Shared::new(&cfg)));
        let session = Session::new(
            cfg,
            1,
            false,
            vec!["10.0.0.0/16".parse::<IpNet>().expect("cidr")],
            events_tx,
            commands,
            shared,
        );
        let mut input = Vec::new();
        if data.first().is_some_and(|b| b & 1 == 1) {
            let peer = LocalSide {
                asn: 65001,
                router_id: Ipv4Addr::new(10, 0, 0, 2),
                ..LOCAL
            };
            input.extend_from_slice(&wire::open(&peer).expect("open"));
            input.extend_from_slice(&wire::keepalive());
        }
        input.extend_from_slice(data.get(1..).unwrap_or_default());
        let export: BTreeSet<IpNet> = ["10.0.0.0/16", "10.1.0.0/16"]
            .iter()
            .map(|p| p.parse().expect("prefix"))
            .collect();
        session
            .fuzz(&input, export, || while events.try_recv().is_ok() {})
            .await;
    });
}
