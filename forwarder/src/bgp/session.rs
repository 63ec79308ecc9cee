//! One session's task: the RFC 4271 state machine over up to a few TCP connections at once
//! (we listen and connect, so both may race; §6.8 collision resolution picks one). Each
//! connection has a reader task (framing, decoding) and a writer task, so sending a large
//! export never stops us from reading a large import. The writer owns the keepalive timer
//! (keepalives go out whatever the session task is waiting for), its queue is bounded in
//! bytes, and a peer that reads nothing for a hold time is dropped (send hold timer,
//! RFC 9687).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ipnet::IpNet;
use rustbgpd_wire::{Message, Safi};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::{AbortHandle, JoinHandle},
    time::{Instant, sleep_until},
};
use tracing::Instrument;

use crate::timer::sleep_until_or_never;

use super::{
    Command, Error, Event, Held, SessionConfig, SessionState, SharedRef, lock,
    policy::{ImportPolicy, Reject, Verdict},
    socket::{self, SocketSpec},
    wire::{self, ExportAttrs, LocalRestart, LocalSide, Negotiated, Notification, code, subcode},
};

/// RFC 4271 §8: the hold timer while waiting for the peer's OPEN.
const OPEN_HOLD: Duration = Duration::from_secs(240);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a closing connection may take to flush its last NOTIFICATION.
const FLUSH: Duration = Duration::from_secs(2);
/// Bytes a connection may have queued for the peer. A full export of 100k prefixes is
/// about 0.5 MiB; more than this means the peer does not read.
pub(super) const MAX_QUEUED: usize = 4 << 20;
/// Send hold time without a hold time (negotiated 0): RFC 9687's suggested 8 minutes.
const SEND_HOLD_NO_HOLD: Duration = Duration::from_secs(480);
/// Prefixes encoded per step of a large export (other tasks run in between).
const EXPORT_CHUNK: usize = 4096;

/// What a connection's reader reports.
#[derive(Debug)]
enum Inbound {
    Msg(Message),
    /// The stream broke the protocol; send this and close.
    Bad(Notification),
    /// EOF or a read error.
    Closed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    OpenSent,
    OpenConfirm(Negotiated),
    Established(Negotiated),
}

/// What a connection's writer is given.
#[derive(Debug)]
enum Out {
    Msg(Bytes),
    /// Everything before this is written: publish `n` as written.
    Mark(u64),
}

/// What the session and a connection's writer share.
#[derive(Debug, Default)]
struct WriterShared {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Keepalive interval in milliseconds (0: none yet, or hold time 0).
    keepalive_ms: AtomicU64,
    /// Send hold time in milliseconds (0: none yet).
    send_hold_ms: AtomicU64,
    /// The last [`Out::Mark`] written.
    written_mark: AtomicU64,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    outbound: bool,
    tx: mpsc::UnboundedSender<Out>,
    out: Arc<WriterShared>,
    reader: AbortHandle,
    writer: JoinHandle<()>,
    phase: Phase,
    hold_deadline: Option<Instant>,
    /// The queue went over [`MAX_QUEUED`]: closed by the session at its next step.
    overflow: AtomicBool,
    /// The mark queued after the last full export sent for a ROUTE-REFRESH.
    refresh_mark: u64,
    /// The session's next connection id when this one entered OpenConfirm (our KEEPALIVE
    /// sent): connections with smaller ids sent their OPEN before that KEEPALIVE, and are
    /// this one's collision twins.
    twins_below: u64,
    /// The session's next connection id when this one became Established: a connection
    /// with a larger id opened after that (a restarted peer's new connection may).
    established_below: u64,
    /// Established and something other than a KEEPALIVE came over it: the peer has it
    /// Established too.
    heard: bool,
    /// The session moved to this connection from an Established one that lost a collision:
    /// losing this one before it is Established takes the session down.
    inherits: bool,
}

impl Conn {
    /// A connection in OpenSent, its reader and writer already running.
    fn new(
        id: u64,
        outbound: bool,
        tx: mpsc::UnboundedSender<Out>,
        out: Arc<WriterShared>,
        reader: AbortHandle,
        writer: JoinHandle<()>,
    ) -> Self {
        Self {
            id,
            outbound,
            tx,
            out,
            reader,
            writer,
            phase: Phase::OpenSent,
            hold_deadline: Some(Instant::now() + OPEN_HOLD),
            overflow: AtomicBool::new(false),
            refresh_mark: 0,
            twins_below: 0,
            established_below: 0,
            heard: false,
            inherits: false,
        }
    }

    fn send(&self, bytes: Bytes) {
        let queued = self.out.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if queued > MAX_QUEUED {
            self.overflow.store(true, Ordering::Relaxed);
        }
        // A failed writer shows up as a read error or a hold timer soon enough.
        self.tx.send(Out::Msg(bytes)).ok();
    }

    fn mark(&self, n: u64) {
        self.tx.send(Out::Mark(n)).ok();
    }

    /// Starts the keepalive and send hold timers once the hold time is known.
    fn set_timers(&self, hold_time: u16) {
        let hold = Duration::from_secs(u64::from(hold_time));
        let (keepalive, send_hold) = if hold_time == 0 {
            (Duration::ZERO, SEND_HOLD_NO_HOLD)
        } else {
            (hold / 3, hold)
        };
        self.out
            .keepalive_ms
            .store(keepalive.as_millis() as u64, Ordering::Relaxed);
        self.out
            .send_hold_ms
            .store(send_hold.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sends `notification` (if any) and closes, leaving the writer a moment to flush.
    fn close(self, notification: Option<&Notification>) {
        if let Some(n) = notification {
            self.send(n.encode());
        }
        self.reader.abort();
        drop(self.tx);
        let writer = self.writer;
        tokio::spawn(async move {
            let abort = writer.abort_handle();
            if tokio::time::timeout(FLUSH, writer).await.is_err() {
                abort.abort();
            }
        });
    }

    fn negotiated(&self) -> Option<Negotiated> {
        match self.phase {
            Phase::OpenSent => None,
            Phase::OpenConfirm(n) | Phase::Established(n) => Some(n),
        }
    }
}

/// How a connection ends, for the session's bookkeeping.
enum Close {
    /// TCP lost (EOF, read error), or replaced by a new connection of a restarting peer:
    /// with graceful restart, the peer's routes are kept.
    Lost(String),
    /// We send this NOTIFICATION.
    Notify(Notification),
    /// The peer sent a NOTIFICATION, or we close without one for another reason.
    Other(String),
}

pub(super) struct Session {
    cfg: SessionConfig,
    /// Instance number stamped on every event ([`super::Speaker::is_current`]).
    instance: u64,
    spec: SocketSpec,
    local: LocalSide,
    policy: ImportPolicy,
    events: mpsc::Sender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: SharedRef,
    inbound_tx: mpsc::Sender<(u64, Inbound)>,
    inbound_rx: mpsc::Receiver<(u64, Inbound)>,
    conns: Vec<Conn>,
    next_id: u64,
    listener: Option<TcpListener>,
    listen_at: Option<Instant>,
    connecting: Option<JoinHandle<Result<TcpStream, Error>>>,
    connect_at: Option<Instant>,
    /// Failed connection attempts since the last Established (backoff).
    failures: u32,
    /// Idle hold after a max-prefix teardown: no connections either way until then.
    idle_until: Option<Instant>,
    /// What the agent wants advertised.
    export: BTreeSet<IpNet>,
    rng: u64,
    /// The first OPEN says we restarted with the forwarding state kept (R and F bits).
    restarted: bool,
    /// Established and our End-of-RIB not sent yet (it follows the first full export).
    eor_to_send: bool,
    /// Established and the peer's table not complete yet ([`Event::EndOfRib`] not sent).
    eor_to_receive: bool,
    next_mark: u64,
    /// The session's BFD, when configured, and whether it was Up (its going down from Up
    /// takes the session down; a BFD that never came up changes nothing).
    bfd: Option<watch::Receiver<crate::bfd::Status>>,
    bfd_up: bool,
    bfd_task: Option<JoinHandle<()>>,
    /// What the data plane answered for our BFD while the agent restarted.
    bfd_resume: Option<forwarder_common::BfdAnswer>,
    /// Stopping because the agent restarts: BFD stops without AdminDown (the next agent's
    /// data plane answers for it).
    restarting: bool,
}

/// The next change of the session's BFD state; never without BFD.
async fn bfd_changed(bfd: &mut Option<watch::Receiver<crate::bfd::Status>>) -> Option<()> {
    match bfd {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

async fn accept(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn connected(
    task: &mut Option<JoinHandle<Result<TcpStream, Error>>>,
) -> Result<TcpStream, Error> {
    match task {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(Error::Thread(std::io::Error::other(e)))),
        None => std::future::pending().await,
    }
}

async fn read_loop(id: u64, mut rd: OwnedReadHalf, tx: mpsc::Sender<(u64, Inbound)>) {
    let mut framer = wire::Framer::default();
    loop {
        loop {
            let inbound = match framer.next_message() {
                Ok(Some(msg)) => Inbound::Msg(msg),
                Ok(None) => break,
                Err(n) => Inbound::Bad(n),
            };
            let fatal = matches!(inbound, Inbound::Bad(_));
            if tx.send((id, inbound)).await.is_err() || fatal {
                return;
            }
        }
        framer.buffer().reserve(64 * 1024);
        let closed = match rd.read_buf(framer.buffer()).await {
            Ok(0) => "connection closed by peer".to_string(),
            Ok(_) => continue,
            Err(e) => format!("read: {e}"),
        };
        tx.send((id, Inbound::Closed(closed))).await.ok();
        return;
    }
}

/// Writes `bytes`; an error text if the peer took nothing for the send hold time.
async fn write_out(
    wr: &mut OwnedWriteHalf,
    bytes: &[u8],
    shared: &WriterShared,
) -> Result<(), String> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let hold = shared.send_hold_ms.load(Ordering::Relaxed);
        let n = if hold == 0 {
            wr.write(rest).await
        } else {
            let limit = Duration::from_millis(hold);
            tokio::time::timeout(limit, wr.write(rest))
                .await
                .map_err(|_| {
                    format!(
                        "send hold timer expired: the peer read nothing for {} s (RFC 9687)",
                        limit.as_secs()
                    )
                })?
        };
        match n {
            Ok(0) => return Err("write: connection closed".into()),
            Ok(n) => rest = &rest[n..],
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

/// The connection's writer: the queue in order, a KEEPALIVE whenever nothing else went out
/// for a keepalive interval, and the send hold timer. A failure is reported as `Closed`.
async fn write_loop(
    id: u64,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    shared: Arc<WriterShared>,
    inbound: mpsc::Sender<(u64, Inbound)>,
) {
    enum Next {
        Queued(Out),
        Keepalive,
        Done,
    }
    let mut last_write = Instant::now();
    loop {
        let keepalive = shared.keepalive_ms.load(Ordering::Relaxed);
        let next_keepalive = (keepalive > 0).then(|| last_write + Duration::from_millis(keepalive));
        let next = tokio::select! {
            out = rx.recv() => out.map_or(Next::Done, Next::Queued),
            () = sleep_until_or_never(next_keepalive) => Next::Keepalive,
        };
        let result = match next {
            Next::Done => break,
            Next::Queued(Out::Mark(n)) => {
                shared.written_mark.store(n, Ordering::Relaxed);
                continue;
            }
            Next::Queued(Out::Msg(bytes)) => {
                let result = write_out(&mut wr, &bytes, &shared).await;
                shared.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                result
            }
            Next::Keepalive => write_out(&mut wr, &wire::keepalive(), &shared).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "BGP write failed");
            inbound.send((id, Inbound::Closed(e))).await.ok();
            return;
        }
        last_write = Instant::now();
    }
    if let Err(e) = wr.shutdown().await {
        tracing::debug!(error = %e, "BGP shutdown failed");
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

enum Wake {
    Command(Option<Command>),
    Inbound(u64, Inbound),
    Accepted(std::io::Result<(TcpStream, SocketAddr)>),
    Connected(Result<TcpStream, Error>),
    Bfd,
    Timer,
}

impl Session {
    pub(super) fn new(
        cfg: SessionConfig,
        instance: u64,
        restarted: bool,
        vpc_cidrs: Vec<IpNet>,
        events: mpsc::Sender<Event>,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: SharedRef,
    ) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (match cfg.local_addr {
                IpAddr::V4(a) => u64::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a) as u64,
            } << 16)
            ^ cfg.peer_index as u64;
        Self {
            instance,
            spec: SocketSpec {
                netns: cfg.netns.clone(),
                local: cfg.local_addr,
                remote: cfg.remote_addr,
                port: cfg.port,
                password: cfg.password.clone(),
                ttl_security: cfg.ttl_security,
            },
            local: LocalSide {
                family: wire::Family::of(cfg.remote_addr),
                asn: cfg.local_asn,
                hold_time: cfg.hold_time,
                router_id: cfg.router_id,
                graceful_restart: cfg.graceful_restart.map(|restart_time| LocalRestart {
                    restart_time,
                    restarted,
                }),
                allow_hold_time_zero: cfg.allow_hold_time_zero,
            },
            policy: ImportPolicy {
                accept_default: cfg.accept_default,
                vpc_cidrs,
                max_prefix_len: cfg.max_prefix_len,
                allowed: cfg.allowed_prefixes.clone(),
            },
            cfg,
            events,
            commands,
            shared,
            inbound_tx,
            inbound_rx,
            conns: Vec::new(),
            next_id: 0,
            listener: None,
            listen_at: Some(Instant::now()),
            connecting: None,
            connect_at: None,
            failures: 0,
            idle_until: None,
            export: BTreeSet::new(),
            rng: seed | 1,
            restarted,
            eor_to_send: false,
            eor_to_receive: false,
            next_mark: 0,
            bfd: None,
            bfd_up: false,
            bfd_task: None,
            bfd_resume: None,
            restarting: false,
        }
    }

    /// Goes on with a BFD session the data plane kept Up while the agent restarted.
    pub(super) fn resume_bfd(mut self, answer: Option<forwarder_common::BfdAnswer>) -> Self {
        self.bfd_resume = answer;
        self
    }

    pub(super) async fn run(mut self) {
        let span = tracing::info_span!("bgp", vif = %self.cfg.vif, peer = self.cfg.peer_index);
        async move {
            // A random first delay keeps two speakers started together from both connecting.
            let first = self.cfg.connect_retry / 4;
            self.connect_at = Some(Instant::now() + self.jitter(first, 0.0));
            // BFD runs over IPv4 (the agent asks for none on an IPv6 session).
            if let Some(b) = self.cfg.bfd
                && let (IpAddr::V4(local), IpAddr::V4(remote)) =
                    (self.cfg.local_addr, self.cfg.remote_addr)
            {
                let spec = crate::bfd::Spec {
                    netns: self.cfg.netns.clone(),
                    local,
                    remote,
                    interval: b.interval,
                    detect_mult: b.detect_mult,
                    discriminator: b.discriminator,
                    resume: self.bfd_resume.take(),
                };
                let initial = crate::bfd::Session::new(b.discriminator, b.interval, b.detect_mult);
                let (tx, rx) = watch::channel(initial.status());
                lock(&self.shared).status.bfd = Some(initial.status());
                // It ends when this session (the receiver) is gone.
                let task = tokio::spawn(crate::bfd::run(spec, tx).in_current_span());
                lock(&self.shared).bfd_task = Some(task.abort_handle());
                self.bfd_task = Some(task);
                self.bfd = Some(rx);
            }
            loop {
                if self.step().await == Flow::Stop {
                    // BFD says AdminDown (the peer must not take that for a failure,
                    // RFC 5882 §3.2) once its status has no reader.
                    // When the agent restarts, BFD just stops: the data plane answers for it.
                    self.bfd = None;
                    if let Some(task) = self.bfd_task.take() {
                        if self.restarting {
                            task.abort();
                        } else if tokio::time::timeout(Duration::from_millis(500), task)
                            .await
                            .is_err()
                        {
                            tracing::warn!("BFD did not stop in time");
                        }
                    }
                    return;
                }
                self.publish_state();
            }
        }
        .instrument(span)
        .await;
    }

    /// Uniform in `[d * low, d]`.
    fn jitter(&mut self, d: Duration, low: f64) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(low + (1.0 - low) * unit)
    }

    fn retry_delay(&mut self) -> Duration {
        let base = self.cfg.connect_retry.max(Duration::from_millis(100));
        let backoff = base
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_RETRY.max(base));
        // RFC 4271 §10: jitter of 0.75..1.0.
        self.jitter(backoff, 0.75)
    }

    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(3600);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.idle_until);
        if self.listener.is_none() {
            consider(self.listen_at);
        }
        if self.conns.is_empty() && self.connecting.is_none() && self.idle_until.is_none() {
            consider(self.connect_at);
        }
        for c in &self.conns {
            consider(c.hold_deadline);
        }
        next
    }

    /// Waits for one thing to happen and handles it.
    async fn step(&mut self) -> Flow {
        let deadline = self.next_deadline();
        let wake = tokio::select! {
            cmd = self.commands.recv() => Wake::Command(cmd),
            Some((id, inbound)) = self.inbound_rx.recv() => Wake::Inbound(id, inbound),
            res = accept(&self.listener) => Wake::Accepted(res),
            res = connected(&mut self.connecting) => Wake::Connected(res),
            Some(()) = bfd_changed(&mut self.bfd) => Wake::Bfd,
            () = sleep_until(deadline) => Wake::Timer,
        };
        match wake {
            Wake::Command(None) => {
                self.shutdown(false);
                return Flow::Stop;
            }
            Wake::Command(Some(Command::Shutdown { restarting })) => {
                self.shutdown(restarting);
                return Flow::Stop;
            }
            Wake::Command(Some(Command::Export(set))) => {
                self.set_export(set).await;
                if self.eor_to_send
                    && let Some(i) = self.established()
                {
                    self.eor_to_send = false;
                    self.conns[i].send(wire::end_of_rib(self.local.family));
                    tracing::debug!("End-of-RIB sent");
                }
            }
            Wake::Command(Some(Command::ExportDelta(announce, withdraw))) => {
                self.change_export(announce, withdraw).await;
            }
            Wake::Command(Some(Command::VpcCidrs(cidrs))) => {
                self.policy.vpc_cidrs = cidrs;
                self.rejudge().await;
            }
            Wake::Inbound(id, inbound) => self.on_inbound(id, inbound).await,
            Wake::Bfd => self.on_bfd().await,
            Wake::Accepted(Ok((stream, from))) => self.on_accept(stream, from),
            Wake::Accepted(Err(e)) => {
                tracing::warn!(error = %e, "BGP accept failed");
                // Typically out of descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Wake::Connected(res) => {
                self.connecting = None;
                self.on_connected(res);
            }
            Wake::Timer => self.on_timers().await,
        }
        // A connection whose peer stopped reading: its queue went over the bound.
        while let Some(i) = self
            .conns
            .iter()
            .position(|c| c.overflow.load(Ordering::Relaxed))
        {
            let text = format!(
                "send queue over {} MiB: the peer does not read",
                MAX_QUEUED >> 20
            );
            self.drop_conn(i, Close::Other(text)).await;
        }
        Flow::Continue
    }

    fn publish_state(&self) {
        let state = if self.idle_until.is_some() {
            SessionState::Idle
        } else if self.established().is_some() {
            SessionState::Established
        } else if self
            .conns
            .iter()
            .any(|c| matches!(c.phase, Phase::OpenConfirm(_)))
        {
            SessionState::OpenConfirm
        } else if !self.conns.is_empty() {
            SessionState::OpenSent
        } else if self.connecting.is_some() {
            SessionState::Connect
        } else if self.listener.is_some() {
            SessionState::Active
        } else {
            SessionState::Idle
        };
        let mut shared = lock(&self.shared);
        shared.status.state = state;
        let neg = self
            .established()
            .map(|i| &self.conns[i])
            .and_then(Conn::negotiated);
        shared.status.remote_id = neg.map(|n| n.remote_id);
        shared.status.hold_time = neg.map(|n| n.hold_time);
        shared.status.graceful_restart = neg.is_some_and(|n| n.peer_restart.is_some());
    }

    fn established(&self) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| matches!(c.phase, Phase::Established(_)))
    }

    fn record_error(&self, error: String) {
        lock(&self.shared).status.last_error = Some(error);
    }

    fn record_connect_error(&self, error: String) {
        lock(&self.shared).status.last_connect_error = Some(error);
    }

    async fn emit(&self, event: Event) {
        if self.events.send(event).await.is_err() {
            tracing::debug!("BGP event receiver is gone");
        }
    }

    /// Closes every connection: Cease / Administrative Shutdown, or, when the agent
    /// restarts and the session has graceful restart, nothing (the peer keeps our routes).
    fn shutdown(&mut self, restarting: bool) {
        self.restarting = restarting;
        let n = Notification::new(
            code::CEASE,
            subcode::ADMINISTRATIVE_SHUTDOWN,
            if restarting {
                "agent stopping"
            } else {
                "session removed"
            },
        );
        for conn in self.conns.drain(..) {
            let graceful =
                restarting && conn.negotiated().is_some_and(|n| n.peer_restart.is_some());
            conn.close((!graceful).then_some(&n));
        }
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        let mut shared = lock(&self.shared);
        shared.status.state = SessionState::Idle;
        shared.established_at = None;
        tracing::info!("BGP session stopped");
    }

    fn start_conn(&mut self, stream: TcpStream, outbound: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Arc::new(WriterShared::default());
        let reader = tokio::spawn(read_loop(id, rd, self.inbound_tx.clone()).in_current_span());
        let writer = tokio::spawn(
            write_loop(id, wr, rx, out.clone(), self.inbound_tx.clone()).in_current_span(),
        );
        let conn = Conn::new(id, outbound, tx, out, reader.abort_handle(), writer);
        match wire::open(&self.local) {
            Ok(bytes) => conn.send(bytes),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode OPEN");
                conn.close(None);
                return;
            }
        }
        tracing::debug!(conn = id, outbound, "connection up, OPEN sent");
        self.conns.push(conn);
    }

    fn on_accept(&mut self, stream: TcpStream, from: SocketAddr) {
        if from.ip() != self.cfg.remote_addr {
            tracing::warn!(from = %from, "BGP connection from a stranger refused");
            return;
        }
        if self.idle_until.is_some() {
            tracing::debug!(from = %from, "BGP connection refused while idle");
            return;
        }
        if let Err(e) = socket::accepted(&stream, self.cfg.ttl_security) {
            tracing::warn!(error = %e, "accepted BGP socket");
        }
        // A newer inbound attempt replaces one still waiting for its OPEN.
        if let Some(i) = self
            .conns
            .iter()
            .position(|c| !c.outbound && c.phase == Phase::OpenSent)
        {
            self.conns.remove(i).close(None);
        }
        self.start_conn(stream, false);
    }

    fn on_connected(&mut self, res: Result<TcpStream, Error>) {
        match res {
            Ok(stream) if self.idle_until.is_none() => self.start_conn(stream, true),
            Ok(_) => {}
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let delay = self.retry_delay();
                tracing::debug!(error = %format!("{e:#}"), retry_in = ?delay, "BGP connect failed");
                self.record_connect_error(error_chain(&e));
                self.connect_at = Some(Instant::now() + delay);
            }
        }
    }

    fn index(&self, id: u64) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    /// Closes connection `i`; a lost Established session goes Down (keeping its routes
    /// stale when the peer has graceful restart and the connection was merely lost).
    async fn drop_conn(&mut self, i: usize, how: Close) {
        let conn = self.conns.remove(i);
        let was_up = matches!(conn.phase, Phase::Established(_)) || conn.inherits;
        let got_open = conn.negotiated().is_some();
        let peer_restart = conn.negotiated().and_then(|n| n.peer_restart);
        let (error, notification, lost) = match how {
            Close::Lost(text) => (text, None, true),
            Close::Notify(n) => (format!("sent NOTIFICATION {n}"), Some(n), false),
            Close::Other(text) => (text, None, false),
        };
        conn.close(notification.as_ref());
        if was_up || got_open || notification.is_some() || error.contains("NOTIFICATION") {
            tracing::warn!(error = %error, "BGP connection closed");
            self.record_error(error.clone());
        } else {
            tracing::debug!(error = %error, "BGP connection closed before OPEN");
            self.record_connect_error(error.clone());
        }
        if was_up {
            // RFC 4724 §4.2: the routes of a peer that keeps forwarding across its restart
            // stay (stale) for its restart time.
            let retain = peer_restart
                .filter(|r| lost && r.listed && r.restart_time > 0)
                .map(|r| Duration::from_secs(u64::from(r.restart_time)));
            self.session_down(error, retain).await;
        }
        if self.conns.is_empty() && self.connect_at.is_none_or(|t| t < Instant::now()) {
            let delay = self.retry_delay();
            self.connect_at = Some(Instant::now() + delay);
        }
    }

    /// BFD changed state: recorded for `bgp neighbors`; from Up to anything else, every
    /// connection is closed (Cease / BFD Down, RFC 9384) and the session is down at once,
    /// its routes withdrawn (no graceful restart: the path is what failed).
    async fn on_bfd(&mut self) {
        let Some(status) = self.bfd.as_mut().map(|rx| rx.borrow_and_update().clone()) else {
            return;
        };
        let up = status.state == crate::bfd::State::Up;
        let why = status.last_down.unwrap_or("down");
        let admin_down = status.remote_state == Some(crate::bfd::State::AdminDown);
        lock(&self.shared).status.bfd = Some(status);
        if up {
            self.bfd_up = true;
            return;
        }
        if !std::mem::take(&mut self.bfd_up) {
            return;
        }
        if admin_down {
            // The peer turned its BFD off: not a failure of the path (RFC 5882 §3.2).
            tracing::info!("the peer's BFD is administratively down; the BGP session stays");
            return;
        }
        tracing::warn!(reason = why, "BFD went down: closing the BGP session");
        while !self.conns.is_empty() {
            let n = Notification::new(code::CEASE, subcode::BFD_DOWN, format!("BFD {why}"));
            self.drop_conn(0, Close::Notify(n)).await;
        }
    }

    async fn session_down(&mut self, reason: String, retain: Option<Duration>) {
        self.eor_to_send = false;
        self.eor_to_receive = false;
        {
            let mut shared = lock(&self.shared);
            shared.established_at = None;
            shared.received.clear();
            shared.advertised.clear();
            shared.status.prefixes_received = 0;
            shared.status.prefixes_accepted = 0;
            shared.status.prefixes_advertised = 0;
        }
        if let Some(t) = retain {
            tracing::info!(keep_for = ?t, "the peer restarts gracefully: its routes stay, stale");
        }
        self.emit(Event::Down {
            vif: self.cfg.vif.clone(),
            peer_index: self.cfg.peer_index,
            session: self.instance,
            reason,
            retain,
        })
        .await;
    }

    async fn on_inbound(&mut self, id: u64, inbound: Inbound) {
        let Some(i) = self.index(id) else { return };
        match inbound {
            Inbound::Closed(why) => self.drop_conn(i, Close::Lost(why)).await,
            Inbound::Bad(n) => self.drop_conn(i, Close::Notify(n)).await,
            Inbound::Msg(msg) => {
                let conn = &mut self.conns[i];
                conn.hold_deadline = match conn.phase {
                    Phase::OpenSent => conn.hold_deadline,
                    Phase::OpenConfirm(n) | Phase::Established(n) => hold_deadline(n.hold_time),
                };
                self.on_message(i, msg).await;
            }
        }
    }

    async fn fsm_error(&mut self, i: usize, sub: u8, msg: &Message) {
        let n = Notification::new(code::FSM, sub, format!("unexpected {}", msg.message_type()));
        self.drop_conn(i, Close::Notify(n)).await;
    }

    async fn on_message(&mut self, i: usize, msg: Message) {
        if let Message::Notification(n) = &msg {
            let n = Notification::from_message(n);
            self.drop_conn(i, Close::Other(format!("received NOTIFICATION {n}")))
                .await;
            return;
        }
        if matches!(self.conns[i].phase, Phase::Established(_))
            && !matches!(msg, Message::Keepalive)
        {
            self.conns[i].heard = true;
        }
        match (self.conns[i].phase, msg) {
            (Phase::OpenSent, Message::Open(open)) => {
                match wire::check_open(&open, &self.local, self.cfg.remote_asn) {
                    Ok(neg) => self.open_received(i, neg).await,
                    Err(n) => self.drop_conn(i, Close::Notify(n)).await,
                }
            }
            (Phase::OpenSent, msg) => {
                self.fsm_error(i, subcode::FSM_UNEXPECTED_IN_OPEN_SENT, &msg)
                    .await;
            }
            (Phase::OpenConfirm(neg), Message::Keepalive) => self.established_on(i, neg).await,
            (Phase::OpenConfirm(_), msg) => {
                self.fsm_error(i, subcode::FSM_UNEXPECTED_IN_OPEN_CONFIRM, &msg)
                    .await;
            }
            (Phase::Established(neg), Message::Keepalive) => {
                // A peer without graceful restart sends no End-of-RIB: its first KEEPALIVE
                // after the session came up follows its initial UPDATEs.
                if neg.peer_restart.is_none() && self.eor_to_receive {
                    self.end_of_rib("first KEEPALIVE").await;
                }
            }
            (Phase::Established(neg), Message::Update(update)) => {
                match wire::parse_update_for(
                    &update,
                    neg.four_octet,
                    self.cfg.remote_asn,
                    self.local.family,
                ) {
                    Ok(received) if received.end_of_rib => self.end_of_rib("End-of-RIB").await,
                    Ok(received) => self.import(received).await,
                    Err(n) => self.drop_conn(i, Close::Notify(n)).await,
                }
            }
            (Phase::Established(_), Message::RouteRefresh(rr)) => {
                if rr.afi() == Some(self.local.family.afi()) && rr.safi() == Some(Safi::Unicast) {
                    self.route_refresh(i).await;
                }
            }
            (Phase::Established(_), msg) => {
                self.fsm_error(i, subcode::FSM_UNEXPECTED_IN_ESTABLISHED, &msg)
                    .await;
            }
        }
    }

    /// ROUTE-REFRESH: the whole export again, unless the copy sent for the previous
    /// request is still queued (then that copy answers this one too).
    async fn route_refresh(&mut self, i: usize) {
        let conn = &self.conns[i];
        let pending = conn.refresh_mark > conn.out.written_mark.load(Ordering::Relaxed);
        if pending {
            lock(&self.shared).status.refreshes_coalesced += 1;
            tracing::debug!("route refresh coalesced with the one still queued");
            return;
        }
        tracing::info!("route refresh: sending the full export again");
        lock(&self.shared).status.refreshes += 1;
        let all: Vec<IpNet> = lock(&self.shared).advertised.iter().copied().collect();
        self.send_updates(&all, &[]).await;
        self.next_mark += 1;
        let mark = self.next_mark;
        if let Some(i) = self.established() {
            self.conns[i].refresh_mark = mark;
            self.conns[i].mark(mark);
        }
    }

    async fn end_of_rib(&mut self, what: &str) {
        if !self.eor_to_receive {
            return;
        }
        self.eor_to_receive = false;
        tracing::info!(marker = what, "the peer's table is complete");
        self.emit(Event::EndOfRib {
            vif: self.cfg.vif.clone(),
            peer_index: self.cfg.peer_index,
            session: self.instance,
        })
        .await;
    }

    /// A valid OPEN on connection `i`: §6.8 collision detection, then OpenConfirm.
    async fn open_received(&mut self, i: usize, neg: Negotiated) {
        let this_id = self.conns[i].id;
        if let Some(other) = self
            .conns
            .iter()
            .position(|c| c.id != this_id && c.negotiated().is_some())
        {
            let collision = Notification::new(
                code::CEASE,
                subcode::COLLISION_RESOLUTION,
                "connection collision",
            );
            let other_phase = self.conns[other].phase;
            let other_conn = &self.conns[other];
            // Our OPEN on this connection went out before our KEEPALIVE on the other (a
            // twin): the peer had that one in OpenConfirm at most when it read this OPEN, so
            // it decides by identifiers (below), as we must, or the two sides close different
            // ones; unless something came over the other one since (the peer has it
            // Established). Our OPEN here went out after that KEEPALIVE: the peer read the
            // KEEPALIVE first, has the other one Established and keeps it (RFC 4271 §6.8).
            let twin = this_id < other_conn.twins_below;
            let other_up = matches!(other_phase, Phase::Established(_));
            let restarted = matches!(other_phase, Phase::Established(old) if old.peer_restart.is_some())
                && this_id >= other_conn.established_below
                && !self.conns[i].outbound;
            let other_stays = !twin || (other_up && other_conn.heard);
            if restarted {
                // RFC 4724 §4.2: a peer with graceful restart that opens a new connection
                // after the session came up, while it still looks Established, has
                // restarted; the old one goes (its routes kept stale), the new one carries on.
                tracing::info!(
                    "the peer restarted: its new connection replaces the established one"
                );
                self.drop_conn(
                    other,
                    Close::Lost("replaced by the peer's new connection (it restarted)".into()),
                )
                .await;
                let Some(j) = self.index(this_id) else { return };
                return self.enter_open_confirm(j, neg);
            }
            // Otherwise the connection opened by the side with the higher BGP identifier
            // survives (ASN breaks a tie, RFC 6286 §2.3).
            let we_win = (u32::from(self.local.router_id), self.local.asn)
                > (u32::from(neg.remote_id), neg.remote_asn);
            let loser = if other_stays || self.conns[i].outbound == self.conns[other].outbound {
                i
            } else if self.conns[i].outbound == we_win {
                other
            } else {
                i
            };
            // An Established loser: the peer never had it Established, so the session moves
            // to this connection without going down, and the agent sends its export again
            // when this one is Established (or hears of a Down if it fails first).
            let inherits = loser == other && other_up;
            tracing::info!(
                keep = self.conns[if loser == i { other } else { i }].id,
                inherits,
                "BGP connection collision"
            );
            let survivor = if loser == i { None } else { Some(this_id) };
            // The other connection carries on: a normal event, not the session's last error.
            let conn = self.conns.remove(loser);
            conn.close(Some(&collision));
            self.record_connect_error(format!("sent NOTIFICATION {collision}"));
            let Some(id) = survivor else { return };
            let Some(j) = self.index(id) else { return };
            self.conns[j].inherits = inherits;
            return self.enter_open_confirm(j, neg);
        }
        self.enter_open_confirm(i, neg);
    }

    fn enter_open_confirm(&mut self, i: usize, neg: Negotiated) {
        let next_id = self.next_id;
        let conn = &mut self.conns[i];
        conn.phase = Phase::OpenConfirm(neg);
        conn.twins_below = next_id;
        conn.hold_deadline = hold_deadline(neg.hold_time);
        conn.send(wire::keepalive());
        conn.set_timers(neg.hold_time);
        tracing::debug!(conn = conn.id, hold = neg.hold_time, "OPEN accepted");
    }

    async fn established_on(&mut self, i: usize, neg: Negotiated) {
        self.conns[i].phase = Phase::Established(neg);
        self.conns[i].established_below = self.next_id;
        self.failures = 0;
        // Our R and F bits were for the first session after the restart only.
        if self.restarted {
            self.restarted = false;
            if let Some(gr) = &mut self.local.graceful_restart {
                gr.restarted = false;
            }
        }
        self.eor_to_send = neg.peer_restart.is_some();
        self.eor_to_receive = true;
        {
            let mut shared = lock(&self.shared);
            shared.established_at = Some(std::time::Instant::now());
            shared.status.established_count += 1;
            shared.received.clear();
            shared.advertised.clear();
        }
        tracing::info!(
            remote_id = %neg.remote_id,
            hold = neg.hold_time,
            graceful_restart = neg.peer_restart.is_some(),
            "BGP session established"
        );
        self.emit(Event::Established {
            vif: self.cfg.vif.clone(),
            peer_index: self.cfg.peer_index,
            session: self.instance,
            peer_restart: neg.peer_restart,
        })
        .await;
        // Nothing is announced until the agent sends the whole export: it does once the
        // VIF takes traffic in the data plane, so that the router never sends us traffic
        // (to routes it has just learnt) that the gateway would still drop.
    }

    fn export_attrs(&self, neg: Negotiated) -> ExportAttrs {
        ExportAttrs {
            local_asn: self.cfg.local_asn,
            next_hop: self.cfg.local_addr,
            four_octet: neg.four_octet,
            prepend: self.cfg.as_path_prepend,
        }
    }

    /// Queues UPDATEs on the established connection (no-op without one), a few thousand
    /// prefixes at a time with other tasks running in between: a large export does not
    /// hold up the other sessions.
    async fn send_updates(&self, announce: &[IpNet], withdraw: &[IpNet]) {
        let Some(id) = self.established().map(|i| self.conns[i].id) else {
            return;
        };
        let large = announce.len() + withdraw.len() > EXPORT_CHUNK;
        for (a, w) in announce
            .chunks(EXPORT_CHUNK)
            .map(|a| (a, &[][..]))
            .chain(withdraw.chunks(EXPORT_CHUNK).map(|w| (&[][..], w)))
        {
            let Some(conn) = self.index(id).map(|i| &self.conns[i]) else {
                return;
            };
            let Some(neg) = conn.negotiated() else { return };
            match wire::updates(a, w, &self.export_attrs(neg)) {
                Ok(msgs) => msgs.into_iter().for_each(|m| conn.send(m)),
                Err(e) => tracing::error!(error = %e, "cannot encode UPDATE"),
            }
            if conn.overflow.load(Ordering::Relaxed) {
                return;
            }
            if large {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn set_export(&mut self, set: BTreeSet<IpNet>) {
        self.export = set;
        if self.established().is_none() {
            return;
        }
        let (announce, withdraw) = {
            let mut shared = lock(&self.shared);
            let announce: Vec<IpNet> = self
                .export
                .difference(&shared.advertised)
                .copied()
                .collect();
            let withdraw: Vec<IpNet> = shared
                .advertised
                .difference(&self.export)
                .copied()
                .collect();
            shared.advertised = self.export.clone();
            shared.status.prefixes_advertised = shared.advertised.len();
            (announce, withdraw)
        };
        if !announce.is_empty() || !withdraw.is_empty() {
            tracing::debug!(
                announce = announce.len(),
                withdraw = withdraw.len(),
                "export changed"
            );
            self.send_updates(&announce, &withdraw).await;
        }
    }

    /// Announces and withdraws what changed, without comparing the whole export.
    async fn change_export(&mut self, announce: Vec<IpNet>, withdraw: Vec<IpNet>) {
        for p in &withdraw {
            self.export.remove(p);
        }
        self.export.extend(announce.iter().copied());
        if self.established().is_none() {
            return;
        }
        let (announce, withdraw) = {
            let mut shared = lock(&self.shared);
            let announce: Vec<IpNet> = announce
                .into_iter()
                .filter(|p| shared.advertised.insert(*p))
                .collect();
            let withdraw: Vec<IpNet> = withdraw
                .into_iter()
                .filter(|p| shared.advertised.remove(p))
                .collect();
            shared.status.prefixes_advertised = shared.advertised.len();
            (announce, withdraw)
        };
        if !announce.is_empty() || !withdraw.is_empty() {
            self.send_updates(&announce, &withdraw).await;
        }
    }

    fn judge(&self, prefix: &IpNet, received: &wire::Received) -> Verdict {
        if let Some(m) = &received.malformed {
            Verdict::Rejected(Reject::TreatAsWithdraw(m.clone()))
        } else if received.as_path.contains(&self.cfg.local_asn) {
            Verdict::Rejected(Reject::AsPathLoop(self.cfg.local_asn))
        } else {
            self.policy.judge(prefix)
        }
    }

    /// One UPDATE into the Adj-RIB-In. Every prefix held counts toward `max_prefixes`,
    /// accepted or not: past the limit the rest of the UPDATE is not even looked at.
    async fn import(&mut self, received: wire::Received) {
        if let Some(m) = &received.malformed {
            tracing::warn!(error = %m, prefixes = received.announced.len(), "malformed UPDATE: treat-as-withdraw");
        }
        let limit = self.cfg.max_prefixes.map_or(usize::MAX, |m| m as usize);
        let info = super::policy::path_info(
            &received.communities,
            received.as_path_len,
            received.first_as,
            received.med,
            self.cfg.local_asn,
            self.cfg.remote_asn,
        );
        let mut announced = Vec::new();
        let mut withdrawn = Vec::new();
        let mut newly = 0usize;
        let mut over = None;
        {
            let mut shared = lock(&self.shared);
            for prefix in &received.withdrawn {
                if shared
                    .received
                    .remove(prefix)
                    .is_some_and(|h| h.verdict.is_accepted())
                {
                    withdrawn.push(*prefix);
                }
            }
            for prefix in &received.announced {
                let verdict = self.judge(prefix, &received);
                let now = verdict.is_accepted();
                if shared.received.len() >= limit && !shared.received.contains_key(prefix) {
                    over = Some(shared.received.len() + 1);
                    break;
                }
                let old = shared.received.insert(
                    *prefix,
                    Held {
                        verdict,
                        path: info,
                    },
                );
                let before = old.as_ref().is_some_and(|h| h.verdict.is_accepted());
                let changed = old.is_none_or(|h| h.path != info);
                match (before, now) {
                    (false, true) => {
                        newly += 1;
                        announced.push((*prefix, info));
                    }
                    // Announced again with other attributes: the gateway ranks it again.
                    (true, true) if changed => announced.push((*prefix, info)),
                    (true, false) => withdrawn.push(*prefix),
                    _ => {}
                }
            }
            let accepted = shared.status.prefixes_accepted + newly;
            // Withdrawn ones were all accepted before.
            shared.status.prefixes_accepted = accepted.saturating_sub(withdrawn.len());
            shared.status.prefixes_received = shared.received.len();
        }
        if let Some(received) = over {
            self.over_limit(received).await;
            return;
        }
        self.emit_routes(announced, withdrawn).await;
    }

    async fn emit_routes(
        &self,
        announced: Vec<(IpNet, crate::rib::PathInfo)>,
        withdrawn: Vec<IpNet>,
    ) {
        if announced.is_empty() && withdrawn.is_empty() {
            return;
        }
        self.emit(Event::Routes {
            vif: self.cfg.vif.clone(),
            peer_index: self.cfg.peer_index,
            session: self.instance,
            announced,
            withdrawn,
        })
        .await;
    }

    /// The peer sent prefix number `received` past `max_prefixes`: Cease / Maximum Number
    /// of Prefixes Reached, Down (its routes go), Idle for a while.
    async fn over_limit(&mut self, received: usize) {
        let Some(max) = self.cfg.max_prefixes else {
            return;
        };
        let Some(i) = self.established() else {
            return;
        };
        let mut n = Notification::max_prefixes(max);
        n.detail = format!("{}: prefix {received} refused", n.detail);
        tracing::warn!(
            received,
            max,
            "maximum number of prefixes exceeded, closing the session"
        );
        self.idle_until = Some(Instant::now() + self.cfg.idle_after_max_prefix);
        self.drop_conn(i, Close::Notify(n.clone())).await;
        for conn in self.conns.drain(..) {
            conn.close(Some(&n));
        }
    }

    /// The VPC CIDRs changed: judge every held route again.
    async fn rejudge(&mut self) {
        let mut announced = Vec::new();
        let mut withdrawn = Vec::new();
        {
            let mut shared = lock(&self.shared);
            for (prefix, held) in shared.received.iter_mut() {
                // Verdicts that do not come from the policy stay.
                if matches!(
                    held.verdict,
                    Verdict::Rejected(Reject::TreatAsWithdraw(_) | Reject::AsPathLoop(_))
                ) {
                    continue;
                }
                let new = self.policy.judge(prefix);
                match (held.verdict.is_accepted(), new.is_accepted()) {
                    (false, true) => announced.push((*prefix, held.path)),
                    (true, false) => withdrawn.push(*prefix),
                    _ => {}
                }
                held.verdict = new;
            }
            let accepted = shared
                .received
                .values()
                .filter(|h| h.verdict.is_accepted())
                .count();
            shared.status.prefixes_accepted = accepted;
        }
        if self.established().is_none() {
            return;
        }
        self.emit_routes(announced, withdrawn).await;
    }

    /// For the fuzz targets: one inbound connection without a socket, fed `input` as what
    /// the peer sent, with `export` set once Established; `drain` empties the event queue
    /// after every message. The hold timer is checked once at the end.
    pub(super) async fn fuzz(
        mut self,
        input: &[u8],
        export: BTreeSet<IpNet>,
        mut drain: impl FnMut(),
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
        let out = Arc::new(WriterShared::default());
        let writer_out = out.clone();
        let writer = tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                match o {
                    Out::Msg(bytes) => {
                        writer_out.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                    }
                    Out::Mark(n) => writer_out.written_mark.store(n, Ordering::Relaxed),
                }
            }
        });
        let reader = tokio::spawn(std::future::pending::<()>());
        self.conns
            .push(Conn::new(0, false, tx, out, reader.abort_handle(), writer));
        // No real sockets: nothing is listened on or connected to.
        self.listen_at = None;
        self.connect_at = None;
        let mut framer = wire::Framer::default();
        framer.buffer().extend_from_slice(input);
        let mut exported = false;
        loop {
            let inbound = match framer.next_message() {
                Ok(Some(msg)) => Inbound::Msg(msg),
                Ok(None) => Inbound::Closed("end of input".into()),
                Err(n) => Inbound::Bad(n),
            };
            let last = !matches!(inbound, Inbound::Msg(_));
            self.on_inbound(0, inbound).await;
            drain();
            if !exported && self.established().is_some() {
                exported = true;
                self.set_export(export.clone()).await;
            }
            if last || self.conns.is_empty() {
                break;
            }
        }
        self.connect_at = None;
        self.on_timers().await;
        self.shutdown(false);
        reader.abort();
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        if self.idle_until.is_some_and(|t| t <= now) {
            tracing::info!("idle hold over, connecting again");
            self.idle_until = None;
            self.connect_at = Some(now);
        }
        if self.listener.is_none() && self.listen_at.is_some_and(|t| t <= now) {
            match socket::listen(&self.spec).await {
                Ok(l) => {
                    tracing::debug!(port = self.cfg.port, "listening");
                    self.listener = Some(l);
                    self.listen_at = None;
                }
                Err(e) => {
                    let text = error_chain(&e);
                    tracing::warn!(error = %text, "cannot listen for BGP");
                    self.record_connect_error(text);
                    self.listen_at = Some(Instant::now() + self.cfg.connect_retry);
                }
            }
        }
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].hold_deadline.is_some_and(|t| t <= now) {
                let hold = self.conns[i]
                    .negotiated()
                    .map_or(OPEN_HOLD.as_secs(), |n| u64::from(n.hold_time));
                let n = Notification::new(
                    code::HOLD_TIMER_EXPIRED,
                    0,
                    format!("hold timer expired: nothing heard for {hold} s"),
                );
                self.drop_conn(i, Close::Notify(n)).await;
                continue;
            }
            i += 1;
        }
        if self.conns.is_empty()
            && self.connecting.is_none()
            && self.idle_until.is_none()
            && self.connect_at.is_some_and(|t| t <= now)
        {
            self.connect_at = None;
            let spec = self.spec.clone();
            let timeout = self.cfg.connect_retry.max(Duration::from_secs(1));
            self.connecting = Some(tokio::spawn(async move {
                socket::connect(&spec, timeout).await
            }));
        }
    }
}

fn hold_deadline(hold_time: u16) -> Option<Instant> {
    (hold_time > 0).then(|| Instant::now() + Duration::from_secs(u64::from(hold_time)))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
