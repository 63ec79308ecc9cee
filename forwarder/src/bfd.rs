//! BFD (RFC 5880) for a BGP session: single hop over UDP (RFC 5881), asynchronous mode, no
//! echo, no demand mode, no authentication. The packet codec and the session's state machine
//! and timers are pure (unit-tested here without sockets); [`run`] drives one session over its
//! sockets inside the VIF's control namespace and publishes its state on a watch channel,
//! which the BGP session task follows (BFD going down takes the BGP session down).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::Duration,
};

use serde::Serialize;
use tokio::{io::Interest, sync::watch, time::Instant};

/// Destination port of single-hop BFD control packets (RFC 5881 §4).
pub const PORT: u16 = 3784;
/// Source ports must come from here (RFC 5881 §4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// A control packet without authentication.
const LEN: usize = 24;
/// While the session is not Up, packets go at most once a second (RFC 5880 §6.8.3).
const SLOW_TX: Duration = Duration::from_secs(1);

/// Session states (RFC 5880 §4.1), as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::AdminDown => "AdminDown",
            Self::Down => "Down",
            Self::Init => "Init",
            Self::Up => "Up",
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1): why the session last left Up.
pub fn diag_name(diag: u8) -> &'static str {
    match diag {
        0 => "no diagnostic",
        1 => "control detection time expired",
        2 => "echo function failed",
        3 => "neighbor signaled session down",
        4 => "forwarding plane reset",
        5 => "path down",
        6 => "concatenated path down",
        7 => "administratively down",
        8 => "reverse concatenated path down",
        _ => "unknown diagnostic",
    }
}

const DIAG_DETECTION_EXPIRED: u8 = 1;
const DIAG_NEIGHBOR_DOWN: u8 = 3;
const DIAG_ADMIN_DOWN: u8 = 7;

/// A control packet (the mandatory section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet was discarded (RFC 5880 §6.8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("shorter than 24 bytes or than its Length field")]
    Short,
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("detect multiplier 0")]
    ZeroMultiplier,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator 0")]
    ZeroDiscriminator,
    #[error("your discriminator 0 in state {0:?}")]
    NoYourDiscriminator(State),
    #[error("your discriminator {0} is not ours")]
    NotOurs(u32),
    #[error("authentication is not configured")]
    Authentication,
    #[error("demand mode is not supported")]
    Demand,
}

impl Packet {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = (self.state as u8) << 6 | u8::from(self.poll) << 5 | u8::from(self.final_) << 4;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }

    /// Decodes and checks a datagram (the checks of §6.8.6 that need no session).
    pub fn decode(b: &[u8]) -> Result<Self, Discard> {
        if b.len() < LEN {
            return Err(Discard::Short);
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(Discard::Version(version));
        }
        let length = usize::from(b[3]);
        if length < LEN || length > b.len() {
            return Err(Discard::Short);
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Self {
            diag: b[0] & 0x1f,
            state: State::from_bits(b[1] >> 6),
            poll: b[1] & 0x20 != 0,
            final_: b[1] & 0x10 != 0,
            detect_mult: b[2],
            my_disc: u32_at(4),
            your_disc: u32_at(8),
            desired_min_tx: u32_at(12),
            required_min_rx: u32_at(16),
            required_min_echo_rx: u32_at(20),
        };
        if b[1] & 0x04 != 0 {
            return Err(Discard::Authentication);
        }
        if b[1] & 0x02 != 0 {
            return Err(Discard::Demand);
        }
        if b[1] & 0x01 != 0 {
            return Err(Discard::Multipoint);
        }
        if p.detect_mult == 0 {
            return Err(Discard::ZeroMultiplier);
        }
        if p.my_disc == 0 {
            return Err(Discard::ZeroDiscriminator);
        }
        if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(Discard::NoYourDiscriminator(p.state));
        }
        Ok(p)
    }
}

/// What `bgp neighbors` shows of a session's BFD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: State,
    /// The peer's state as its last packet said.
    pub remote_state: Option<State>,
    /// Why the session last went down (a diagnostic name), if it ever was Up.
    pub last_down: Option<&'static str>,
    /// Negotiated transmit interval and detection time, milliseconds.
    pub tx_interval_ms: u64,
    pub detect_time_ms: Option<u64>,
    /// How often the session came Up.
    pub up_count: u64,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// While Up: what the data plane needs to answer for us while the agent restarts.
    #[serde(skip)]
    pub handover: Option<forwarder_common::BfdAnswer>,
}

/// One session's protocol state (RFC 5880 §6.8.1), without sockets or clocks of its own.
#[derive(Clone, Debug)]
pub struct Session {
    local_disc: u32,
    remote_disc: u32,
    state: State,
    remote_state: Option<State>,
    diag: u8,
    /// Configured intervals (µs) and multiplier.
    interval: u32,
    detect_mult: u8,
    /// What we currently advertise (µs): the slow rate until Up.
    desired_min_tx: u32,
    /// What the peer asks for and offers (µs), and its multiplier.
    remote_min_rx: u32,
    remote_desired_tx: u32,
    remote_detect_mult: u8,
    /// A Poll Sequence runs (P set until an F comes back); an F is owed to the peer.
    polling: bool,
    send_final: bool,
    last_rx: Option<Instant>,
    up_count: u64,
    last_down: Option<&'static str>,
    /// Our UDP source port, once bound.
    source_port: u16,
}

impl Session {
    /// A session in Down with our discriminator (non-zero), interval and multiplier.
    pub fn new(local_disc: u32, interval: Duration, detect_mult: u8) -> Self {
        let interval = u32::try_from(interval.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            local_disc: local_disc.max(1),
            remote_disc: 0,
            state: State::Down,
            remote_state: None,
            diag: 0,
            interval,
            detect_mult: detect_mult.max(1),
            desired_min_tx: slow(interval),
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_detect_mult: 0,
            polling: false,
            send_final: false,
            last_rx: None,
            up_count: 0,
            last_down: None,
            source_port: 0,
        }
    }

    /// A session the data plane kept Up while the agent was away (`answer` is what it said
    /// for us): Up again at once, the peer's timers assumed slow (1 s × our multiplier) until
    /// its next packet tells them.
    pub fn resume(
        answer: &forwarder_common::BfdAnswer,
        interval: Duration,
        detect_mult: u8,
        now: Instant,
    ) -> Self {
        let mut s = Self::new(answer.my_disc, interval, detect_mult);
        s.state = State::Up;
        s.remote_state = Some(State::Up);
        s.remote_disc = answer.your_disc;
        s.desired_min_tx = s.interval;
        // A changed interval is announced with a Poll Sequence (§6.8.3).
        s.polling = answer.desired_min_tx != s.interval || answer.required_min_rx != s.interval;
        s.remote_min_rx = answer.remote_min_rx;
        s.remote_desired_tx = SLOW_TX.as_micros() as u32;
        s.remote_detect_mult = s.detect_mult;
        s.last_rx = Some(now);
        s.up_count = 1;
        s
    }

    pub fn set_source_port(&mut self, port: u16) {
        self.source_port = port;
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// A received packet (already decoded); returns the new state if it changed.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Result<Option<State>, Discard> {
        if p.your_disc != 0 && p.your_disc != self.local_disc {
            return Err(Discard::NotOurs(p.your_disc));
        }
        self.remote_disc = p.my_disc;
        self.remote_state = Some(p.state);
        self.remote_min_rx = p.required_min_rx;
        self.remote_desired_tx = p.desired_min_tx;
        self.remote_detect_mult = p.detect_mult;
        if p.final_ && self.polling {
            self.polling = false;
        }
        if p.poll {
            self.send_final = true;
        }
        self.last_rx = Some(now);
        let before = self.state;
        match (self.state, p.state) {
            (State::AdminDown, _) => return Ok(None),
            (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) => self.down(DIAG_NEIGHBOR_DOWN),
            (State::Down, State::Down) => self.state = State::Init,
            // In Down only the peer's Init completes the handshake; an Up from before our
            // Down (in flight, or a peer that has not seen our Down yet) is ignored.
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => self.up(),
            (State::Up, State::Down) => self.down(DIAG_NEIGHBOR_DOWN),
            _ => {}
        }
        Ok((self.state != before).then_some(self.state))
    }

    /// Checks the detection timer; returns `Down` if it expired now.
    pub fn check_detection(&mut self, now: Instant) -> Option<State> {
        let deadline = self.detection_deadline()?;
        if now < deadline {
            return None;
        }
        self.remote_disc = 0;
        self.down(DIAG_DETECTION_EXPIRED);
        Some(State::Down)
    }

    /// When the detection time runs out (only while Init or Up).
    pub fn detection_deadline(&self) -> Option<Instant> {
        if !matches!(self.state, State::Init | State::Up) {
            return None;
        }
        Some(self.last_rx? + self.detection_time()?)
    }

    /// The remote's multiplier times the slower of what we accept and it sends (§6.8.4).
    fn detection_time(&self) -> Option<Duration> {
        if self.remote_detect_mult == 0 {
            return None;
        }
        let per = self.interval.max(self.remote_desired_tx);
        Some(Duration::from_micros(
            u64::from(per) * u64::from(self.remote_detect_mult),
        ))
    }

    /// The periodic transmit interval before jitter (§6.8.7); `None`: the peer wants none.
    pub fn tx_interval(&self) -> Option<Duration> {
        if self.remote_min_rx == 0 {
            return None;
        }
        Some(Duration::from_micros(u64::from(
            self.desired_min_tx.max(self.remote_min_rx),
        )))
    }

    /// The jitter floor for the interval (§6.8.7): 75 %, or 75–90 % with a multiplier of 1.
    pub fn jitter_range(&self) -> (f64, f64) {
        if self.detect_mult == 1 {
            (0.75, 0.9)
        } else {
            (0.75, 1.0)
        }
    }

    /// A packet has to go now, not at the next interval (an F is owed).
    pub fn final_owed(&self) -> bool {
        self.send_final
    }

    /// The next packet to send; sending it pays an owed F.
    pub fn packet(&mut self) -> Packet {
        let final_ = std::mem::take(&mut self.send_final);
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            detect_mult: self.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: self.desired_min_tx,
            required_min_rx: self.interval,
            required_min_echo_rx: 0,
        }
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            remote_state: self.remote_state,
            last_down: self.last_down,
            tx_interval_ms: self.tx_interval().map_or(0, |d| d.as_millis() as u64),
            detect_time_ms: self
                .detection_time()
                .filter(|_| matches!(self.state, State::Init | State::Up))
                .map(|d| d.as_millis() as u64),
            up_count: self.up_count,
            local_discriminator: self.local_disc,
            remote_discriminator: self.remote_disc,
            handover: (self.state == State::Up && self.source_port != 0).then_some(
                forwarder_common::BfdAnswer {
                    my_disc: self.local_disc,
                    your_disc: self.remote_disc,
                    desired_min_tx: self.desired_min_tx,
                    required_min_rx: self.interval,
                    detect_mult: self.detect_mult,
                    _pad: 0,
                    source_port: self.source_port,
                    remote_min_rx: self.remote_min_rx,
                    remote_desired_tx: self.remote_desired_tx,
                },
            ),
        }
    }

    /// Administratively down (RFC 5880 §6.8.16): packets say AdminDown, diagnostic 7.
    pub fn admin_down(&mut self) {
        self.state = State::AdminDown;
        self.diag = DIAG_ADMIN_DOWN;
        self.polling = false;
        self.send_final = false;
    }

    fn up(&mut self) {
        self.state = State::Up;
        self.diag = 0;
        self.up_count += 1;
        // Up: the configured rate; a change of rate runs a Poll Sequence (§6.8.3).
        if self.desired_min_tx != self.interval {
            self.desired_min_tx = self.interval;
            self.polling = true;
        }
    }

    fn down(&mut self, diag: u8) {
        if self.state == State::Up {
            self.last_down = Some(diag_name(diag));
        }
        self.state = State::Down;
        self.diag = diag;
        self.desired_min_tx = slow(self.interval);
        self.polling = false;
    }
}

fn slow(interval: u32) -> u32 {
    interval.max(SLOW_TX.as_micros() as u32)
}

/// Where a session runs: the VIF's namespace, our address and the client's.
#[derive(Clone, Debug)]
pub struct Spec {
    pub netns: Option<PathBuf>,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub interval: Duration,
    pub detect_mult: u8,
    /// Our discriminator: unique among the agent's sessions, never 0.
    pub discriminator: u32,
    /// The session the data plane kept Up while the agent restarted, to go on with.
    pub resume: Option<forwarder_common::BfdAnswer>,
}

/// Drives one session until `status` has no receiver left: receives on `local:3784` (only
/// from `remote`, only with TTL 255: RFC 5881 §5), sends from `local:49152+` with TTL 255,
/// and publishes every change of state.
pub async fn run(mut spec: Spec, status: watch::Sender<Status>) {
    loop {
        let result = session(&spec, &status).await;
        // A retry starts from Down: whatever the data plane kept is stale by then.
        spec.resume = None;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(remote = %spec.remote, error = %e, "BFD sockets failed; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = status.closed() => return,
                }
            }
        }
    }
}

async fn session(spec: &Spec, status: &watch::Sender<Status>) -> io::Result<()> {
    let (rx, tx) = crate::bgp::socket::bfd_sockets(
        spec.netns.clone(),
        spec.local,
        spec.remote,
        source_port(spec.discriminator),
    )
    .await
    .map_err(io::Error::other)?;
    let rx = tokio::net::UdpSocket::from_std(rx)?;
    let rx_fd = rx.as_raw_fd();
    let mut s = match &spec.resume {
        Some(answer) => {
            tracing::info!(remote = %spec.remote, "BFD: taking over the session the data plane kept up");
            Session::resume(answer, spec.interval, spec.detect_mult, Instant::now())
        }
        None => Session::new(spec.discriminator, spec.interval, spec.detect_mult),
    };
    s.set_source_port(tx.local_addr()?.port());
    status.send_replace(s.status());
    let mut rng = u64::from(spec.discriminator) | 1;
    let mut next_tx = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        let detection = s.detection_deadline();
        tokio::select! {
            () = status.closed() => {
                // The BGP session is gone (removed, or the agent stops): AdminDown, so that
                // the peer knows it is not a failure of the path.
                s.admin_down();
                send(&tx, &mut s)?;
                return Ok(());
            }
            () = tokio::time::sleep_until(next_tx) => {
                send(&tx, &mut s)?;
                next_tx = Instant::now() + jittered(&s, &mut rng);
            }
            () = crate::timer::sleep_until_or_never(detection) => {
                if let Some(state) = s.check_detection(Instant::now()) {
                    tracing::warn!(remote = %spec.remote, state = state.name(), "BFD: no packet within the detection time");
                    status.send_replace(s.status());
                    // Down goes out at once, then at the slow rate.
                    send(&tx, &mut s)?;
                    next_tx = Instant::now() + jittered(&s, &mut rng);
                }
            }
            received = rx.async_io(Interest::READABLE, || recv_ttl(rx_fd, &mut buf)) => {
                let (len, from, ttl) = received?;
                if from.ip() != &spec.remote || ttl != Some(255) {
                    tracing::debug!(%from, ?ttl, "BFD packet from the wrong source or TTL discarded");
                    continue;
                }
                let changed = match Packet::decode(&buf[..len])
                    .and_then(|p| s.receive(&p, Instant::now()))
                {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "BFD packet discarded");
                        continue;
                    }
                };
                if let Some(state) = changed {
                    tracing::info!(remote = %spec.remote, state = state.name(), "BFD session state");
                    // A new rate applies from the next packet, not after the old interval.
                    let sooner = Instant::now() + jittered(&s, &mut rng);
                    next_tx = next_tx.min(sooner);
                }
                status.send_replace(s.status());
                if s.final_owed() {
                    send(&tx, &mut s)?;
                }
            }
        }
    }
}

/// Sends the session's next packet. A failed send (no route or neighbour while the link is
/// down, a full queue, an ICMP error from a closed port) ends nothing: a lost packet is what
/// BFD detects, at the peer.
fn send(tx: &std::net::UdpSocket, s: &mut Session) -> io::Result<()> {
    if let Err(e) = tx.send(&s.packet().encode()) {
        tracing::debug!(error = %e, "BFD packet not sent");
    }
    Ok(())
}

/// The time to the next periodic packet: the interval with jitter, or (a peer that asks
/// for no packets, Required Min RX 0) an hour, re-evaluated when it says otherwise.
fn jittered(s: &Session, rng: &mut u64) -> Duration {
    let Some(base) = s.tx_interval() else {
        return Duration::from_secs(3600);
    };
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let unit = (*rng >> 11) as f64 / (1u64 << 53) as f64;
    let (low, high) = s.jitter_range();
    base.mul_f64(low + (high - low) * unit)
}

/// `recvmsg` with the IP TTL of the datagram (IP_RECVTTL).
fn recv_ttl(
    socket: std::os::fd::RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Option<u8>)> {
    // SAFETY: every pointer handed to recvmsg points into locals that outlive the call, with
    // their true lengths; the control buffer is aligned for cmsghdr (u64 array).
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(socket, &raw mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ttl = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_TTL {
                let value = libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned();
                ttl = u8::try_from(value).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        let addr = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
            u16::from_be(from.sin_port),
        );
        Ok((n as usize, addr, ttl))
    }
}

/// A source port for our packets (RFC 5881 §4: 49152–65535), from the discriminator.
pub fn source_port(discriminator: u32) -> u16 {
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    SOURCE_PORTS.start() + (discriminator % span) as u16
}

/// The address a session's packets go to.
pub fn destination(remote: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(remote, PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn from_peer(state: State, your_disc: u32) -> Packet {
        Packet {
            diag: 0,
            state,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_disc: 77,
            your_disc,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn packets_round_trip_and_bad_ones_are_discarded() {
        let p = Packet {
            poll: true,
            ..from_peer(State::Up, 5)
        };
        let bytes = p.encode();
        assert_eq!(bytes[0], 0x20, "version 1, no diagnostic");
        assert_eq!(bytes[1], 0xe0, "Up, P");
        assert_eq!(bytes[3], 24);
        assert_eq!(Packet::decode(&bytes), Ok(p));
        let mut v2 = bytes;
        v2[0] = 0x40;
        assert_eq!(Packet::decode(&v2), Err(Discard::Version(2)));
        assert_eq!(Packet::decode(&bytes[..23]), Err(Discard::Short));
        let mut long = bytes;
        long[3] = 30;
        assert_eq!(Packet::decode(&long), Err(Discard::Short));
        let mut auth = bytes;
        auth[1] |= 0x04;
        assert_eq!(Packet::decode(&auth), Err(Discard::Authentication));
        let mut zero_mult = bytes;
        zero_mult[2] = 0;
        assert_eq!(Packet::decode(&zero_mult), Err(Discard::ZeroMultiplier));
        let up_without_your = from_peer(State::Up, 0).encode();
        assert_eq!(
            Packet::decode(&up_without_your),
            Err(Discard::NoYourDiscriminator(State::Up))
        );
    }

    #[test]
    fn three_way_handshake_then_detection_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(9, 300 * MS, 3);
        assert_eq!(s.state(), State::Down);
        // Slow while down.
        assert_eq!(s.packet().desired_min_tx, 1_000_000);
        assert_eq!(
            s.receive(&from_peer(State::Down, 0), t0),
            Ok(Some(State::Init))
        );
        assert_eq!(s.packet().your_disc, 77);
        assert_eq!(s.receive(&from_peer(State::Up, 9), t0), Ok(Some(State::Up)));
        // Up: the configured rate, announced with a Poll Sequence.
        let p = s.packet();
        assert!(p.poll && p.desired_min_tx == 300_000);
        let final_ = Packet {
            final_: true,
            ..from_peer(State::Up, 9)
        };
        assert_eq!(s.receive(&final_, t0), Ok(None));
        assert!(!s.packet().poll, "the Poll Sequence ended with the F");
        assert_eq!(s.tx_interval(), Some(300 * MS));
        // 3 × 300 ms without a packet: down, detection time expired.
        assert_eq!(s.detection_deadline(), Some(t0 + 900 * MS));
        assert_eq!(s.check_detection(t0 + 899 * MS), None);
        assert_eq!(s.check_detection(t0 + 900 * MS), Some(State::Down));
        let p = s.packet();
        assert_eq!((p.state, p.diag, p.your_disc), (State::Down, 1, 0));
        assert_eq!(s.status().last_down, Some("control detection time expired"));
        assert_eq!(s.status().up_count, 1);
    }

    #[test]
    fn the_peer_going_down_takes_us_down_and_polls_get_finals() {
        let t0 = Instant::now();
        let mut s = Session::new(9, 300 * MS, 3);
        s.receive(&from_peer(State::Init, 0), t0).expect("valid");
        assert_eq!(s.state(), State::Up, "Down + Init → Up");
        let poll = Packet {
            poll: true,
            ..from_peer(State::Up, 9)
        };
        s.receive(&poll, t0).expect("valid");
        assert!(s.final_owed());
        let p = s.packet();
        assert!(p.final_ && !p.poll, "an F answers the P");
        assert!(!s.final_owed());
        assert_eq!(
            s.receive(&from_peer(State::Down, 9), t0),
            Ok(Some(State::Down))
        );
        assert_eq!(s.packet().diag, 3);
        assert_eq!(
            s.receive(&from_peer(State::Up, 1234), t0),
            Err(Discard::NotOurs(1234))
        );
        // AdminDown from the peer while Down changes nothing.
        assert_eq!(s.receive(&from_peer(State::AdminDown, 9), t0), Ok(None));
    }

    #[test]
    fn an_up_from_the_peer_does_not_raise_a_down_session() {
        let t0 = Instant::now();
        let mut s = Session::new(9, 300 * MS, 3);
        assert_eq!(s.receive(&from_peer(State::Up, 9), t0), Ok(None));
        assert_eq!(s.state(), State::Down);
    }

    #[test]
    fn a_resumed_session_is_up_and_polls_for_a_changed_interval() {
        let t0 = Instant::now();
        let answer = forwarder_common::BfdAnswer {
            my_disc: 9,
            your_disc: 77,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            detect_mult: 3,
            _pad: 0,
            source_port: 49200,
            remote_min_rx: 500_000,
            remote_desired_tx: 500_000,
        };
        let mut s = Session::resume(&answer, 300 * MS, 5, t0);
        assert_eq!(s.state(), State::Up);
        let p = s.packet();
        assert_eq!((p.your_disc, p.detect_mult, p.poll), (77, 5, false));
        assert_eq!(
            s.tx_interval(),
            Some(500 * MS),
            "the peer's min rx, as the data plane knew it"
        );
        let mut faster = Session::resume(&answer, 100 * MS, 3, t0);
        assert!(
            faster.packet().poll,
            "a new interval is announced with a Poll"
        );
    }

    #[test]
    fn the_slower_side_sets_the_pace() {
        let t0 = Instant::now();
        let mut s = Session::new(9, 100 * MS, 3);
        let slow_peer = Packet {
            desired_min_tx: 500_000,
            required_min_rx: 200_000,
            detect_mult: 5,
            ..from_peer(State::Init, 0)
        };
        s.receive(&slow_peer, t0).expect("valid");
        // We send no faster than it accepts; it sends every 500 ms, five missed is down.
        assert_eq!(s.tx_interval(), Some(200 * MS));
        assert_eq!(s.detection_deadline(), Some(t0 + 2500 * MS));
        // A peer that asks for no packets gets none.
        let quiet = Packet {
            required_min_rx: 0,
            ..from_peer(State::Up, 9)
        };
        s.receive(&quiet, t0).expect("valid");
        assert_eq!(s.tx_interval(), None);
    }

    #[test]
    fn source_ports_are_in_the_range() {
        for d in [0, 1, 16_383, 16_384, u32::MAX] {
            assert!(SOURCE_PORTS.contains(&source_port(d)));
        }
    }
}
