//! Sessions over loopback: two speakers talking to each other, or one speaker and a scripted
//! peer built from the same codec. Each test has its own 127.0.N.0 addresses.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use ipnet::IpNet;
use rustbgpd_wire::{Message, OpenMessage};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
    time::{Instant, timeout},
};

use super::{
    Event, NeighborStatus, Reject, SessionConfig, SessionState, Speaker, Verdict,
    wire::{self, Framer, LocalSide},
};

const PORT: u16 = 11179;
const LOCAL_ASN: u32 = 64512;
const CLIENT_ASN: u32 = 65001;

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn addr(n: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, n, host)
}

/// The gateway side of test `n`: 127.0.n.1, AS 64512, router id 192.0.2.1.
fn gateway(n: u8) -> SessionConfig {
    let mut cfg = SessionConfig::new(
        "vif-test",
        0,
        addr(n, 1).into(),
        addr(n, 2).into(),
        LOCAL_ASN,
        CLIENT_ASN,
        Ipv4Addr::new(192, 0, 2, 1),
    );
    cfg.port = PORT;
    cfg.connect_retry = Duration::from_secs(1);
    cfg.idle_after_max_prefix = Duration::from_secs(3);
    cfg
}

/// The client side of test `n` as a second speaker: 127.0.n.2, AS 65001.
fn client(n: u8) -> SessionConfig {
    let mut cfg = gateway(n);
    cfg.vif = "client".into();
    cfg.local_addr = addr(n, 2).into();
    cfg.remote_addr = addr(n, 1).into();
    cfg.local_asn = CLIENT_ASN;
    cfg.remote_asn = LOCAL_ASN;
    cfg.router_id = Ipv4Addr::new(10, 255, 0, 2);
    cfg
}

fn speaker() -> (Speaker, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(1024);
    (Speaker::new(tx), rx)
}

/// The next event satisfying `pred` within `within`, skipping others.
async fn wait_for(
    rx: &mut mpsc::Receiver<Event>,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return Some(ev),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

fn is_established(ev: &Event) -> bool {
    matches!(ev, Event::Established { .. })
}

fn one_status(s: &Speaker) -> NeighborStatus {
    s.status().into_iter().next().expect("one session")
}

/// Waits until `check` holds for the status of `s`'s only session.
async fn until_status(
    s: &Speaker,
    within: Duration,
    check: impl Fn(&NeighborStatus) -> bool,
) -> NeighborStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = one_status(s);
        if check(&st) || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepted routes as the agent would hold them, from `Routes` events.
#[derive(Default)]
struct Held(BTreeSet<IpNet>);

impl Held {
    async fn until(
        &mut self,
        rx: &mut mpsc::Receiver<Event>,
        within: Duration,
        want: &BTreeSet<IpNet>,
    ) -> bool {
        let deadline = Instant::now() + within;
        while &self.0 != want {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Routes {
                    announced,
                    withdrawn,
                    ..
                })) => {
                    for p in withdrawn {
                        self.0.remove(&p);
                    }
                    self.0.extend(announced.into_iter().map(|(p, _)| p));
                }
                Ok(Some(Event::Down { .. })) => self.0.clear(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }
}

fn set(prefixes: &[&str]) -> BTreeSet<IpNet> {
    prefixes.iter().map(|p| net(p)).collect()
}

#[tokio::test]
async fn two_speakers_establish_exchange_and_withdraw() {
    let (mut gw, mut gw_rx) = speaker();
    let (mut cl, mut cl_rx) = speaker();
    gw.add_session(gateway(1), vec![net("10.0.0.0/16")]);
    cl.add_session(client(1), vec![]);
    let t = Duration::from_secs(5);
    assert!(
        wait_for(&mut gw_rx, t, is_established).await.is_some(),
        "{:?}",
        one_status(&gw)
    );
    assert!(
        wait_for(&mut cl_rx, t, is_established).await.is_some(),
        "{:?}",
        one_status(&cl)
    );

    // The client announces two IDC segments; the gateway exports its VPC CIDR.
    cl.set_export("client", 0, set(&["192.168.50.0/24", "192.168.51.0/24"]));
    gw.set_export("vif-test", 0, set(&["10.0.0.0/16"]));
    let mut gw_held = Held::default();
    assert!(
        gw_held
            .until(&mut gw_rx, t, &set(&["192.168.50.0/24", "192.168.51.0/24"]))
            .await
    );
    let mut cl_held = Held::default();
    assert!(cl_held.until(&mut cl_rx, t, &set(&["10.0.0.0/16"])).await);

    // One goes away.
    cl.set_export("client", 0, set(&["192.168.51.0/24"]));
    assert!(
        gw_held
            .until(&mut gw_rx, t, &set(&["192.168.51.0/24"]))
            .await
    );

    let st = one_status(&gw);
    assert_eq!(st.state, SessionState::Established);
    assert_eq!(
        (
            st.prefixes_received,
            st.prefixes_accepted,
            st.prefixes_advertised
        ),
        (1, 1, 1)
    );
    assert_eq!(st.remote_id, Some(Ipv4Addr::new(10, 255, 0, 2)));
    assert_eq!(st.hold_time, Some(90));
    assert!(st.uptime_seconds.is_some());
    assert_eq!(st.established_count, 1, "no flap: {st:?}");
    assert_eq!(gw.advertised("vif-test"), vec![(0, net("10.0.0.0/16"))]);
    assert_eq!(
        gw.received("vif-test")
            .into_iter()
            .map(|r| (r.prefix, r.verdict))
            .collect::<Vec<_>>(),
        vec![(net("192.168.51.0/24"), Verdict::Accepted)]
    );
    let json = serde_json::to_value(gw.status()).expect("json");
    assert_eq!(json[0]["state"], "Established");
    assert_eq!(json[0]["peer"], 0);

    // Removing the session sends Cease/administrative shutdown to the client.
    gw.remove_session("vif-test", 0);
    let down = wait_for(&mut cl_rx, t, |e| matches!(e, Event::Down { .. })).await;
    let Some(Event::Down { reason, .. }) = down else {
        panic!("client saw no Down")
    };
    assert!(reason.contains("received NOTIFICATION 6/2"), "{reason}");
    assert!(gw.status().is_empty());
}

#[tokio::test]
async fn import_verdicts_and_vpc_cidr_updates() {
    let (mut gw, mut gw_rx) = speaker();
    let (mut cl, mut cl_rx) = speaker();
    gw.add_session(gateway(2), vec![net("10.0.0.0/16")]);
    cl.add_session(client(2), vec![]);
    let t = Duration::from_secs(5);
    assert!(wait_for(&mut gw_rx, t, is_established).await.is_some());
    assert!(wait_for(&mut cl_rx, t, is_established).await.is_some());
    cl.set_export(
        "client",
        0,
        set(&[
            "0.0.0.0/0",
            "10.0.5.0/24",
            "169.254.10.0/30",
            "127.0.0.0/8",
            "224.1.0.0/16",
            "192.168.50.0/24",
        ]),
    );
    let mut held = Held::default();
    assert!(held.until(&mut gw_rx, t, &set(&["192.168.50.0/24"])).await);
    let st = until_status(&gw, t, |s| s.prefixes_received == 6).await;
    assert_eq!((st.prefixes_received, st.prefixes_accepted), (6, 1));
    let verdicts: Vec<(IpNet, String)> = gw
        .received("vif-test")
        .into_iter()
        .map(|r| (r.prefix, r.verdict.to_string()))
        .collect();
    let expect = |p: &str, v: &str| (net(p), v.to_string());
    assert_eq!(
        verdicts,
        vec![
            expect("0.0.0.0/0", "rejected: default route"),
            expect("10.0.5.0/24", "rejected: overlaps VPC CIDR 10.0.0.0/16"),
            expect("127.0.0.0/8", "rejected: martian (overlaps 127.0.0.0/8)"),
            expect(
                "169.254.10.0/30",
                "rejected: martian (overlaps 169.254.0.0/16)"
            ),
            expect("192.168.50.0/24", "accepted"),
            expect("224.1.0.0/16", "rejected: martian (overlaps 224.0.0.0/4)"),
        ]
    );
    let json = serde_json::to_value(gw.received("vif-test")).expect("json");
    assert_eq!(json[1]["reason"], "overlaps VPC CIDR 10.0.0.0/16");
    assert_eq!(json[1]["accepted"], false);

    // The VPC moves: the held route is judged again and now accepted, the other withdrawn.
    gw.set_vpc_cidrs("vif-test", 0, vec![net("192.168.50.0/23")]);
    assert!(held.until(&mut gw_rx, t, &set(&["10.0.5.0/24"])).await);
    assert_eq!(
        gw.received("vif-test")[4].verdict,
        Verdict::Rejected(Reject::OverlapsVpc(net("192.168.50.0/23")))
    );
}

#[tokio::test]
async fn max_prefixes_cease_then_idle_then_back() {
    let (mut gw, mut gw_rx) = speaker();
    let (mut cl, mut cl_rx) = speaker();
    let mut cfg = gateway(3);
    cfg.max_prefixes = Some(2);
    gw.add_session(cfg, vec![]);
    cl.add_session(client(3), vec![]);
    let t = Duration::from_secs(5);
    assert!(wait_for(&mut gw_rx, t, is_established).await.is_some());
    assert!(wait_for(&mut cl_rx, t, is_established).await.is_some());
    cl.set_export(
        "client",
        0,
        set(&["192.168.1.0/24", "192.168.2.0/24", "192.168.3.0/24"]),
    );

    let down = wait_for(&mut gw_rx, t, |e| matches!(e, Event::Down { .. })).await;
    let Some(Event::Down { reason, .. }) = down else {
        panic!("no Down: {:?}", one_status(&gw))
    };
    assert!(reason.contains("sent NOTIFICATION 6/1"), "{reason}");
    let Some(Event::Down { reason, .. }) =
        wait_for(&mut cl_rx, t, |e| matches!(e, Event::Down { .. })).await
    else {
        panic!("client saw no Down")
    };
    assert!(reason.contains("received NOTIFICATION 6/1"), "{reason}");
    assert!(
        reason.contains("Maximum Number of Prefixes Reached"),
        "{reason}"
    );
    let st = one_status(&cl);
    let last = st.last_error.unwrap_or_default();
    assert!(last.contains("received NOTIFICATION 6/1"), "{last}");
    assert_eq!(one_status(&gw).state, SessionState::Idle);

    // After the idle hold (3 s) the session comes back by itself (and goes down again).
    let again = wait_for(&mut gw_rx, Duration::from_secs(8), is_established).await;
    assert!(again.is_some(), "{:?}", one_status(&gw));
}

#[tokio::test]
async fn md5_wrong_key_never_establishes_right_key_does() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root (TCP MD5 keys on loopback): run the tests as root"
    );
    let (mut gw, mut gw_rx) = speaker();
    let (mut cl, _cl_rx) = speaker();
    let mut a = gateway(4);
    a.password = Some("s3cret".into());
    let mut b = client(4);
    b.password = Some("wrong".into());
    gw.add_session(a.clone(), vec![]);
    cl.add_session(b.clone(), vec![]);
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(4), is_established)
            .await
            .is_none()
    );
    assert_ne!(one_status(&gw).state, SessionState::Established);
    assert_ne!(one_status(&cl).state, SessionState::Established);

    // No key at all on one side: still nothing.
    b.password = None;
    cl.add_session(b.clone(), vec![]);
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_none()
    );

    b.password = Some("s3cret".into());
    cl.add_session(b, vec![]);
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(8), is_established)
            .await
            .is_some(),
        "{:?}",
        one_status(&gw)
    );
}

#[tokio::test]
async fn large_import_and_export_flow_both_ways() {
    let (mut gw, mut gw_rx) = speaker();
    let (mut cl, mut cl_rx) = speaker();
    gw.add_session(gateway(5), vec![]);
    cl.add_session(client(5), vec![]);
    let t = Duration::from_secs(5);
    assert!(wait_for(&mut gw_rx, t, is_established).await.is_some());
    assert!(wait_for(&mut cl_rx, t, is_established).await.is_some());
    let many = |first: u8| -> BTreeSet<IpNet> {
        (0..100_000u32)
            .map(|i| {
                IpNet::new(
                    Ipv4Addr::from((u32::from(first) << 24) + (i << 8)).into(),
                    24,
                )
                .expect("net")
            })
            .collect()
    };
    let (to_gw, to_cl) = (many(20), many(40));
    cl.set_export("client", 0, to_gw.clone());
    gw.set_export("vif-test", 0, to_cl.clone());
    let (mut a, mut b) = (Held::default(), Held::default());
    let (ra, rb) = tokio::join!(
        a.until(&mut gw_rx, Duration::from_secs(20), &to_gw),
        b.until(&mut cl_rx, Duration::from_secs(20), &to_cl)
    );
    assert!(
        ra && rb,
        "gateway got {}, client got {}",
        a.0.len(),
        b.0.len()
    );
    assert_eq!(one_status(&gw).prefixes_advertised, 100_000);
}

/// A scripted client router.
struct Fake {
    stream: TcpStream,
    framer: Framer,
}

impl Fake {
    /// Connects from `from` to the speaker at `to:PORT`, retrying while it starts listening.
    async fn connect(from: Ipv4Addr, to: Ipv4Addr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))
                .expect("bind");
            match socket
                .connect(SocketAddr::V4(SocketAddrV4::new(to, PORT)))
                .await
            {
                Ok(stream) => {
                    return Self {
                        stream,
                        framer: Framer::default(),
                    };
                }
                Err(e) if Instant::now() > deadline => panic!("cannot reach the speaker: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next message, `None` on EOF or after 6 s of silence.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(msg) = self
                .framer
                .next_message()
                .expect("speaker sends valid messages")
            {
                return Some(msg);
            }
            let read = timeout(
                Duration::from_secs(6),
                self.stream.read_buf(self.framer.buffer()),
            );
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// The next NOTIFICATION (skipping other messages) as (code, subcode).
    async fn notification(&mut self) -> Option<(u8, u8)> {
        loop {
            match self.recv().await? {
                Message::Notification(n) => return Some((n.code.as_u8(), n.subcode)),
                _ => continue,
            }
        }
    }

    fn open(hold: u16, asn: u32, id: Ipv4Addr) -> bytes::Bytes {
        wire::open(&LocalSide {
            family: wire::Family::Ipv4,
            asn,
            hold_time: hold,
            router_id: id,
            graceful_restart: None,
            allow_hold_time_zero: false,
        })
        .expect("open")
    }

    /// OPEN exchange up to Established.
    async fn establish(&mut self, hold: u16, id: Ipv4Addr) -> OpenMessage {
        self.send(&Self::open(hold, CLIENT_ASN, id)).await;
        let Some(Message::Open(open)) = self.recv().await else {
            panic!("no OPEN")
        };
        assert_eq!(self.recv().await, Some(Message::Keepalive));
        self.send(&wire::keepalive()).await;
        open
    }
}

fn client_id() -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, 2)
}

#[tokio::test]
async fn hold_timer_expiry_sends_notification_and_goes_down() {
    let (mut gw, mut gw_rx) = speaker();
    let mut cfg = gateway(6);
    cfg.hold_time = 3;
    gw.add_session(cfg, vec![]);
    let mut fake = Fake::connect(addr(6, 2), addr(6, 1)).await;
    let open = fake.establish(90, client_id()).await;
    assert_eq!(open.hold_time, 3);
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    // The fake stays silent: 3 s later the speaker gives up.
    let started = Instant::now();
    assert_eq!(fake.notification().await, Some((4, 0)));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let Some(Event::Down { reason, .. }) = wait_for(&mut gw_rx, Duration::from_secs(2), |e| {
        matches!(e, Event::Down { .. })
    })
    .await
    else {
        panic!("no Down")
    };
    assert!(reason.contains("hold timer expired"), "{reason}");
}

#[tokio::test]
async fn keepalives_keep_a_short_hold_time_alive() {
    let (mut gw, mut gw_rx) = speaker();
    let mut cfg = gateway(7);
    cfg.hold_time = 3;
    gw.add_session(cfg, vec![]);
    let mut fake = Fake::connect(addr(7, 2), addr(7, 1)).await;
    fake.establish(3, client_id()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    // Keepalives every second from the speaker; we answer each.
    let until = Instant::now() + Duration::from_secs(5);
    let mut keepalives = 0;
    while Instant::now() < until {
        match fake.recv().await {
            Some(Message::Keepalive) => {
                keepalives += 1;
                fake.send(&wire::keepalive()).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(keepalives >= 3, "{keepalives}");
    assert_eq!(one_status(&gw).state, SessionState::Established);
}

#[tokio::test]
async fn open_errors_get_the_right_notification() {
    let (mut gw, _rx) = speaker();
    gw.add_session(gateway(8), vec![]);
    let cases: [(bytes::Bytes, (u8, u8)); 4] = [
        (Fake::open(1, CLIENT_ASN, client_id()), (2, 6)),
        (Fake::open(2, CLIENT_ASN, client_id()), (2, 6)),
        (Fake::open(90, 65002, client_id()), (2, 2)),
        (Fake::open(90, CLIENT_ASN, Ipv4Addr::UNSPECIFIED), (2, 3)),
    ];
    for (open, want) in cases {
        let mut fake = Fake::connect(addr(8, 2), addr(8, 1)).await;
        fake.send(&open).await;
        assert_eq!(fake.notification().await, Some(want));
        assert_eq!(fake.recv().await, None, "closed after the NOTIFICATION");
    }
    // Framing garbage: Connection Not Synchronized.
    let mut fake = Fake::connect(addr(8, 2), addr(8, 1)).await;
    fake.send(&[0u8; 40]).await;
    assert_eq!(fake.notification().await, Some((1, 1)));
    // An UPDATE before OPEN: FSM error in OpenSent.
    let mut fake = Fake::connect(addr(8, 2), addr(8, 1)).await;
    fake.send(&wire::keepalive()).await;
    assert_eq!(fake.notification().await, Some((5, 1)));
    let last = one_status(&gw).last_error.unwrap_or_default();
    assert!(last.contains("sent NOTIFICATION 5/1"), "{last}");
}

#[tokio::test]
async fn route_refresh_and_malformed_update() {
    let (mut gw, mut gw_rx) = speaker();
    gw.add_session(gateway(9), vec![]);
    let mut fake = Fake::connect(addr(9, 2), addr(9, 1)).await;
    fake.establish(90, client_id()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    let export = set(&["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"]);
    gw.set_export("vif-test", 0, export.clone());

    async fn announced(fake: &mut Fake, n: usize) -> BTreeSet<IpNet> {
        let mut got = BTreeSet::new();
        while got.len() < n {
            match fake.recv().await {
                Some(Message::Update(u)) => {
                    let r = wire::parse_update(&u, true, LOCAL_ASN).expect("valid UPDATE");
                    assert_eq!(r.malformed, None);
                    got.extend(r.announced);
                }
                Some(Message::Keepalive) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }
    assert_eq!(announced(&mut fake, 3).await, export);
    fake.send(&wire::route_refresh()).await;
    assert_eq!(announced(&mut fake, 3).await, export);

    // ORIGIN 7 is malformed: the route is treat-as-withdraw, the session stays up.
    let attrs = [
        [0x40u8, 1, 1, 7].as_slice(),
        &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9],
        &[0x40, 3, 4, 127, 0, 9, 2],
    ]
    .concat();
    let mut body = vec![0u8, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[24, 192, 168, 77]);
    let mut msg = vec![0xffu8; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(&body);
    fake.send(&msg).await;
    let st = until_status(&gw, Duration::from_secs(3), |s| s.prefixes_received == 1).await;
    assert_eq!((st.prefixes_received, st.prefixes_accepted), (1, 0));
    assert_eq!(st.state, SessionState::Established);
    let r = &gw.received("vif-test")[0];
    assert!(
        matches!(r.verdict, Verdict::Rejected(Reject::TreatAsWithdraw(_))),
        "{r:?}"
    );
}

/// A session of `gateway(n)` and its own connection (it connects within connect_retry/4),
/// past the speaker's OPEN.
async fn outbound_connected(n: u8) -> (Speaker, mpsc::Receiver<Event>, Fake) {
    let listener = TcpListener::bind(SocketAddrV4::new(addr(n, 2), PORT))
        .await
        .expect("listen");
    let (mut gw, gw_rx) = speaker();
    gw.add_session(gateway(n), vec![]);
    let (out_stream, _) = timeout(Duration::from_secs(3), listener.accept())
        .await
        .expect("speaker connects")
        .expect("accept");
    let mut outbound = Fake {
        stream: out_stream,
        framer: Framer::default(),
    };
    let Some(Message::Open(_)) = outbound.recv().await else {
        panic!("no OPEN")
    };
    (gw, gw_rx, outbound)
}

/// A client connection to the speaker of `gateway(n)`, past the speaker's OPEN.
async fn inbound_connected(n: u8) -> Fake {
    let mut inbound = Fake::connect(addr(n, 2), addr(n, 1)).await;
    let Some(Message::Open(_)) = inbound.recv().await else {
        panic!("no OPEN")
    };
    inbound
}

/// A session of `gateway(n)` with two connections, each past the speaker's OPEN: its own
/// and one from the client.
async fn both_connected(n: u8) -> (Speaker, mpsc::Receiver<Event>, Fake, Fake) {
    let (gw, gw_rx, outbound) = outbound_connected(n).await;
    (gw, gw_rx, outbound, inbound_connected(n).await)
}

/// The client's KEEPALIVE on `fake` (in OpenConfirm): the session is Established.
async fn keepalive_to_established(fake: &mut Fake, gw: &Speaker, rx: &mut mpsc::Receiver<Event>) {
    fake.send(&wire::keepalive()).await;
    assert!(
        wait_for(rx, Duration::from_secs(3), is_established)
            .await
            .is_some(),
        "{:?}",
        one_status(gw)
    );
}

/// `loser` gets Cease / Connection Collision Resolution; the session stays Established.
async fn closed_as_collision_loser(loser: &mut Fake, gw: &Speaker, rx: &mut mpsc::Receiver<Event>) {
    assert_eq!(loser.notification().await, Some((6, 7)), "collision loser");
    let down = wait_for(rx, Duration::from_millis(500), is_down).await;
    assert!(down.is_none(), "the session went down: {down:?}");
    assert_eq!(one_status(gw).state, SessionState::Established);
}

/// The session moved from `from` (Cease / collision) to `to` (our KEEPALIVE: OpenConfirm).
async fn moved_to(to: &mut Fake, from: &mut Fake) {
    assert_eq!(from.notification().await, Some((6, 7)), "collision loser");
    assert_eq!(to.recv().await, Some(Message::Keepalive));
}

/// A client identifier below ours (our connection wins a collision by identifiers) and one
/// above it.
const COLLISION_IDS: [(Ipv4Addr, bool); 2] = [
    (Ipv4Addr::new(10, 0, 0, 1), true),
    (Ipv4Addr::new(203, 0, 113, 9), false),
];

/// We connect out while the client connects in; both OPENs arrive. The connection opened by
/// the side with the higher BGP identifier survives, the other gets Cease / collision.
#[tokio::test]
async fn collision_keeps_the_higher_identifiers_connection() {
    for (client_id, outbound_survives) in COLLISION_IDS {
        let n = if outbound_survives { 10 } else { 11 };
        let (gw, mut gw_rx, mut outbound, mut inbound) = both_connected(n).await;

        outbound.send(&Fake::open(90, CLIENT_ASN, client_id)).await;
        assert_eq!(outbound.recv().await, Some(Message::Keepalive));
        inbound.send(&Fake::open(90, CLIENT_ASN, client_id)).await;
        let (winner, mut loser) = if outbound_survives {
            (outbound, inbound)
        } else {
            (inbound, outbound)
        };
        let mut winner = winner;
        assert_eq!(loser.notification().await, Some((6, 7)), "collision loser");
        if !outbound_survives {
            assert_eq!(winner.recv().await, Some(Message::Keepalive));
        }
        keepalive_to_established(&mut winner, &gw, &mut gw_rx).await;
        assert_eq!(one_status(&gw).remote_id, Some(client_id));
    }
}

/// Both sides connect at once, and the peer (with graceful restart, as BIRD by default)
/// answers our connection first: it is Established here while the peer, which still had it
/// in OpenConfirm, resolves the collision by identifiers. Its OPEN on its own connection is
/// not taken for a restart: the side with the higher identifier keeps its connection as the
/// peer does; when that is the peer's, the session moves to it without going down.
#[tokio::test]
async fn a_collision_with_a_just_established_connection_is_resolved_by_identifiers() {
    for (client_id, outbound_survives) in COLLISION_IDS {
        let n = if outbound_survives { 18 } else { 19 };
        let (gw, mut gw_rx, mut outbound, mut inbound) = both_connected(n).await;
        // Our connection comes up first...
        outbound.open_gr_confirmed(client_id).await;
        keepalive_to_established(&mut outbound, &gw, &mut gw_rx).await;
        // ...then the OPEN the peer sent on its own before it saw ours up.
        inbound
            .send(&Fake::open_gr(90, client_id, 120, false))
            .await;
        if outbound_survives {
            closed_as_collision_loser(&mut inbound, &gw, &mut gw_rx).await;
        } else {
            moved_to(&mut inbound, &mut outbound).await;
            inbound.send(&wire::keepalive()).await;
            // Established again over the peer's connection, without a Down between: the
            // agent keeps the peer's routes and sends its export again.
            let mut before = Vec::new();
            while let Ok(Some(ev)) = timeout(Duration::from_secs(3), gw_rx.recv()).await {
                if is_established(&ev) {
                    break;
                }
                before.push(ev);
            }
            assert!(before.iter().all(|e| !is_down(e)), "{before:?}");
            assert_eq!(one_status(&gw).state, SessionState::Established);
            assert_eq!(one_status(&gw).established_count, 2);
        }
        assert_eq!(one_status(&gw).remote_id, Some(client_id));
    }
}

/// The peer connects after our KEEPALIVE went out on our connection (and before its
/// KEEPALIVE made that one Established here): it reads our KEEPALIVE before our OPEN on its
/// connection, has ours Established, and keeps it whatever the identifiers; so do we, and
/// that late OPEN is no restart either.
#[tokio::test]
async fn a_connection_opened_while_ours_was_confirming_loses_to_the_established_one() {
    let (gw, mut gw_rx, mut outbound) = outbound_connected(20).await;
    // A higher identifier than ours: by identifiers, the peer's connection would win.
    let client_id = Ipv4Addr::new(203, 0, 113, 9);
    outbound.open_gr_confirmed(client_id).await;
    let mut inbound = inbound_connected(20).await;
    keepalive_to_established(&mut outbound, &gw, &mut gw_rx).await;
    inbound
        .send(&Fake::open_gr(90, client_id, 120, false))
        .await;
    closed_as_collision_loser(&mut inbound, &gw, &mut gw_rx).await;
}

/// Twin connections, the peer's identifier higher. Routes already came over ours: the peer
/// has it Established and keeps it, so do we. Nothing came yet: the session moves to the
/// peer's connection, and losing that one before it is Established is a Down.
#[tokio::test]
async fn a_collision_twin_after_routes_loses_and_a_lost_successor_is_a_down() {
    let client_id = COLLISION_IDS[1].0;
    for (n, routes_first) in [(21, true), (22, false)] {
        let (gw, mut gw_rx, mut outbound, mut inbound) = both_connected(n).await;
        outbound.open_gr_confirmed(client_id).await;
        keepalive_to_established(&mut outbound, &gw, &mut gw_rx).await;
        if routes_first {
            outbound.announce(&[net("192.168.77.0/24")]).await;
            until_status(&gw, Duration::from_secs(3), |s| s.prefixes_received == 1).await;
        }
        inbound
            .send(&Fake::open_gr(90, client_id, 120, false))
            .await;
        if routes_first {
            closed_as_collision_loser(&mut inbound, &gw, &mut gw_rx).await;
            assert_eq!(one_status(&gw).prefixes_received, 1);
        } else {
            moved_to(&mut inbound, &mut outbound).await;
            drop(inbound);
            let down = wait_for(&mut gw_rx, Duration::from_secs(3), is_down).await;
            assert!(down.is_some(), "no Down: {:?}", one_status(&gw));
        }
    }
}

impl Fake {
    /// OPEN with graceful restart (IPv4 unicast, F bit = `restarted`).
    fn open_gr(hold: u16, id: Ipv4Addr, restart_time: u16, restarted: bool) -> bytes::Bytes {
        wire::open(&LocalSide {
            family: wire::Family::Ipv4,
            asn: CLIENT_ASN,
            hold_time: hold,
            router_id: id,
            graceful_restart: Some(wire::LocalRestart {
                restart_time,
                restarted,
            }),
            allow_hold_time_zero: false,
        })
        .expect("open")
    }

    /// Our side of an OPEN exchange with graceful restart as `id`, up to the speaker's
    /// KEEPALIVE (OpenConfirm).
    async fn open_gr_confirmed(&mut self, id: Ipv4Addr) {
        self.send(&Self::open_gr(90, id, 120, false)).await;
        assert_eq!(self.recv().await, Some(Message::Keepalive));
    }

    /// OPEN exchange up to Established, with graceful restart.
    async fn establish_gr(&mut self, restart_time: u16) -> OpenMessage {
        self.send(&Self::open_gr(90, client_id(), restart_time, false))
            .await;
        let Some(Message::Open(open)) = self.recv().await else {
            panic!("no OPEN")
        };
        assert_eq!(self.recv().await, Some(Message::Keepalive));
        self.send(&wire::keepalive()).await;
        open
    }

    /// UPDATEs announcing `prefixes` from AS 65001.
    async fn announce(&mut self, prefixes: &[IpNet]) {
        let attrs = wire::ExportAttrs {
            local_asn: CLIENT_ASN,
            next_hop: Ipv4Addr::new(127, 0, 0, 2).into(),
            four_octet: true,
            prepend: 0,
        };
        for msg in wire::updates(prefixes, &[], &attrs).expect("encode") {
            self.send(&msg).await;
        }
    }
}

fn is_down(ev: &Event) -> bool {
    matches!(ev, Event::Down { .. })
}

fn is_end_of_rib(ev: &Event) -> bool {
    matches!(ev, Event::EndOfRib { .. })
}

/// A peer with graceful restart whose connection is lost: its routes are to be kept for
/// its restart time; the same peer closing with a NOTIFICATION: not. Its End-of-RIB is
/// reported, and ours follows our first full export.
#[tokio::test]
async fn graceful_restart_helper_keeps_routes_of_a_lost_connection_only() {
    let (mut gw, mut gw_rx) = speaker();
    gw.add_session(gateway(12), vec![]);
    let mut fake = Fake::connect(addr(12, 2), addr(12, 1)).await;
    let open = fake.establish_gr(77).await;
    let gr = open.capabilities.iter().find_map(|c| match c {
        rustbgpd_wire::Capability::GracefulRestart {
            restart_time,
            restart_state,
            ..
        } => Some((*restart_time, *restart_state)),
        _ => None,
    });
    assert_eq!(gr, Some((120, false)), "our capability: {open:?}");
    let Some(Event::Established { peer_restart, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established).await
    else {
        panic!("not established")
    };
    assert_eq!(
        peer_restart.map(|r| (r.restart_time, r.listed)),
        Some((77, true))
    );
    assert!(one_status(&gw).graceful_restart);

    // Our export, then our End-of-RIB.
    gw.set_export("vif-test", 0, set(&["10.0.0.0/16"]));
    let mut saw_route = false;
    loop {
        match fake.recv().await {
            Some(Message::Update(u)) => {
                let r = wire::parse_update(&u, true, LOCAL_ASN).expect("valid");
                if r.end_of_rib {
                    break;
                }
                saw_route |= r.announced == vec![net("10.0.0.0/16")];
            }
            Some(Message::Keepalive) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_route, "End-of-RIB before the export");

    // Their routes, then their End-of-RIB.
    fake.announce(&[net("192.168.60.0/24")]).await;
    fake.send(&wire::end_of_rib(wire::Family::Ipv4)).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_end_of_rib)
            .await
            .is_some()
    );

    // The connection is lost: keep the routes for 77 s.
    drop(fake);
    let Some(Event::Down { retain, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(3), is_down).await
    else {
        panic!("no Down")
    };
    assert_eq!(retain, Some(Duration::from_secs(77)));

    // Back, then closed with a NOTIFICATION: nothing kept.
    let mut fake = Fake::connect(addr(12, 2), addr(12, 1)).await;
    fake.establish_gr(77).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    fake.send(&wire::Notification::new(6, 2, "").encode()).await;
    let Some(Event::Down { retain, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(3), is_down).await
    else {
        panic!("no Down")
    };
    assert_eq!(retain, None);
}

/// A peer without graceful restart sends no End-of-RIB: its first KEEPALIVE after the
/// session came up stands for it.
#[tokio::test]
async fn first_keepalive_of_a_peer_without_graceful_restart_ends_its_table() {
    let (mut gw, mut gw_rx) = speaker();
    gw.add_session(gateway(13), vec![]);
    let mut fake = Fake::connect(addr(13, 2), addr(13, 1)).await;
    fake.establish(90, client_id()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    fake.announce(&[net("192.168.61.0/24")]).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_millis(500), is_end_of_rib)
            .await
            .is_none(),
        "End-of-RIB before any KEEPALIVE"
    );
    fake.send(&wire::keepalive()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_end_of_rib)
            .await
            .is_some()
    );
}

/// RFC 4724 §4.2: a new connection of a graceful-restart peer while its old session looks
/// Established replaces it (the rebooted router is not locked out until the hold timer).
#[tokio::test]
async fn a_restarted_peers_new_connection_replaces_the_established_one() {
    let (mut gw, mut gw_rx) = speaker();
    gw.add_session(gateway(14), vec![]);
    let mut old = Fake::connect(addr(14, 2), addr(14, 1)).await;
    old.establish_gr(120).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    // The old connection stays open (a rebooted router never closed it).
    let mut new = Fake::connect(addr(14, 2), addr(14, 1)).await;
    new.send(&Fake::open_gr(90, client_id(), 120, true)).await;
    let Some(Event::Down { retain, reason, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(3), is_down).await
    else {
        panic!("the old session was not replaced")
    };
    assert_eq!(retain, Some(Duration::from_secs(120)), "{reason}");
    let Some(Message::Open(_)) = new.recv().await else {
        panic!("no OPEN")
    };
    assert_eq!(new.recv().await, Some(Message::Keepalive));
    new.send(&wire::keepalive()).await;
    let Some(Event::Established { peer_restart, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established).await
    else {
        panic!("the new connection did not come up")
    };
    assert_eq!(peer_restart.map(|r| r.preserved), Some(true));
    drop(old);
}

/// Every prefix held counts toward max_prefixes, rejected ones too; the UPDATE that goes
/// over is not even read to its end.
#[tokio::test]
async fn rejected_prefixes_count_toward_max_prefixes() {
    let (mut gw, mut gw_rx) = speaker();
    let mut cfg = gateway(15);
    cfg.max_prefixes = Some(100);
    cfg.max_prefix_len = 24;
    gw.add_session(cfg, vec![]);
    let mut fake = Fake::connect(addr(15, 2), addr(15, 1)).await;
    fake.establish(90, client_id()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    // 5,000 /32s: all too long.
    let hosts: Vec<IpNet> = (0..5000u32)
        .map(|i| IpNet::new(Ipv4Addr::from(0xc0a8_0000 + i).into(), 32).expect("prefix"))
        .collect();
    let writer = tokio::spawn(async move {
        fake.announce(&hosts).await;
        fake.notification().await
    });
    let Some(Event::Down { reason, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(5), is_down).await
    else {
        panic!("no Down: {:?}", one_status(&gw))
    };
    assert!(reason.contains("sent NOTIFICATION 6/1"), "{reason}");
    assert!(reason.contains("prefix 101 refused"), "{reason}");
    let seen = timeout(Duration::from_secs(5), writer)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    assert_eq!(seen, Some((6, 1)));
}

/// Keepalives come from the connection's writer: a session stuck handing events to a busy
/// agent still keeps its peer's hold timer happy.
#[tokio::test]
async fn keepalives_go_out_while_the_event_queue_is_full() {
    // Nobody reads the events: the session blocks on its second one.
    let (tx, _rx) = mpsc::channel(1);
    let mut gw = Speaker::new(tx);
    let mut cfg = gateway(16);
    cfg.hold_time = 3;
    gw.add_session(cfg, vec![]);
    let mut fake = Fake::connect(addr(16, 2), addr(16, 1)).await;
    fake.establish(3, client_id()).await;
    for i in 0..20u32 {
        let p = IpNet::new(Ipv4Addr::from(0xc0a8_0000 + (i << 8)).into(), 24).expect("prefix");
        fake.announce(&[p]).await;
    }
    // 7 s of a 3 s hold time: a keepalive every second or so, the session never drops.
    let until = Instant::now() + Duration::from_secs(7);
    let mut keepalives = 0;
    while Instant::now() < until {
        match timeout(Duration::from_millis(2500), fake.recv()).await {
            Ok(Some(Message::Keepalive)) => {
                keepalives += 1;
                fake.send(&wire::keepalive()).await;
            }
            Ok(Some(Message::Notification(n))) => panic!("session dropped: {n:?}"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("no keepalive for 2.5 s (after {keepalives})"),
        }
    }
    assert!(keepalives >= 4, "{keepalives}");
}

/// A peer that reads nothing and asks for ROUTE-REFRESH over and over: the requests are
/// coalesced while a copy is queued, and the connection is closed once the peer has read
/// nothing for the hold time (send hold timer) or the queue is full.
#[tokio::test]
async fn a_peer_that_does_not_read_is_dropped_and_refreshes_coalesce() {
    let (mut gw, mut gw_rx) = speaker();
    let mut cfg = gateway(17);
    cfg.hold_time = 3;
    gw.add_session(cfg, vec![]);
    let mut fake = Fake::connect(addr(17, 2), addr(17, 1)).await;
    fake.establish(3, client_id()).await;
    assert!(
        wait_for(&mut gw_rx, Duration::from_secs(3), is_established)
            .await
            .is_some()
    );
    // A 50k-prefix export.
    let export: BTreeSet<IpNet> = (0..50_000u32)
        .map(|i| IpNet::new(Ipv4Addr::from(0x6400_0000 + (i << 8)).into(), 24).expect("prefix"))
        .collect();
    gw.set_export("vif-test", 0, export);
    // From now on, only write: refreshes and keepalives, never read.
    let (_rd, mut wr) = fake.stream.into_split();
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        for _ in 0..10_000 {
            if wr.write_all(&wire::route_refresh()).await.is_err() {
                return;
            }
            if wr.write_all(&wire::keepalive()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    let Some(Event::Down { reason, .. }) =
        wait_for(&mut gw_rx, Duration::from_secs(10), is_down).await
    else {
        panic!("a peer that reads nothing was kept: {:?}", one_status(&gw))
    };
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        reason.contains("send hold timer") || reason.contains("send queue"),
        "{reason}"
    );
    let st = one_status(&gw);
    // Copies go out only as fast as the socket takes them; the rest are coalesced.
    assert!(st.refreshes_coalesced > 10 * st.refreshes, "{st:?}");
    flood.abort();
}
