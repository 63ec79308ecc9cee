//! A probe stream for failover measurements: UDP datagrams carrying a sequence number, sent
//! from one namespace to another at a fixed rate and echoed back. Each end records which
//! sequence numbers it saw, so a window of the stream tells what was lost each way and for how
//! long (lost probes × interval).
//!
//! Three threads: the sender (paced by deadlines, so a late wake-up sends at once rather than
//! skipping), the echo at the far end, the receiver of the echoes at the near end. Sockets are
//! made inside their namespaces and keep them.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::NetNs;

/// Sequence numbers a stream can hold: 70 minutes at 1,000 per second.
const CAPACITY: u64 = 1 << 22;

/// Which sequence numbers were seen.
struct Seen(Vec<AtomicU64>);

impl Seen {
    fn new() -> Self {
        Self((0..CAPACITY / 64).map(|_| AtomicU64::new(0)).collect())
    }

    fn set(&self, seq: u64) {
        if seq < CAPACITY {
            self.0[(seq / 64) as usize].fetch_or(1 << (seq % 64), Ordering::Relaxed);
        }
    }

    fn get(&self, seq: u64) -> bool {
        seq < CAPACITY
            && self.0[(seq / 64) as usize].load(Ordering::Relaxed) & (1 << (seq % 64)) != 0
    }
}

struct Shared {
    stop: AtomicBool,
    /// The next sequence number to send.
    next: AtomicU64,
    at_far: Seen,
    at_near: Seen,
}

/// Losses in a window of the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Probes sent in the window.
    pub sent: u64,
    /// Lost on the way out (never reached the far end).
    pub forward: u64,
    /// Reached the far end, echo lost on the way back.
    pub back: u64,
    /// The longest run of consecutive probes lost on the way out.
    pub forward_run: u64,
}

pub struct Probe {
    shared: Arc<Shared>,
    interval: Duration,
    threads: Vec<JoinHandle<()>>,
}

impl Probe {
    /// Starts `rate` probes per second from `near_addr` in `near` to `far_addr` in `far`,
    /// UDP `port` at both ends.
    pub fn start(
        near: &NetNs,
        near_addr: Ipv4Addr,
        far: &NetNs,
        far_addr: Ipv4Addr,
        rate: u32,
        port: u16,
    ) -> Result<Self> {
        ensure!((1..=100_000).contains(&rate), "probe rate {rate}/s");
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate));
        let near_socket = near.enter(|| Ok(UdpSocket::bind((near_addr, port))?))?;
        let far_socket = far.enter(|| Ok(UdpSocket::bind((far_addr, port))?))?;
        for s in [&near_socket, &far_socket] {
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            next: AtomicU64::new(0),
            at_far: Seen::new(),
            at_near: Seen::new(),
        });
        let mut threads = Vec::new();
        let echo = {
            let shared = shared.clone();
            move || {
                let mut buf = [0u8; 64];
                while !shared.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = far_socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if n == 8 {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                        shared.at_far.set(seq);
                        // An echo that cannot be sent is a probe lost on the way back.
                        far_socket.send_to(&buf[..8], from).ok();
                    }
                }
            }
        };
        threads.push(std::thread::spawn(echo));
        let receiver_socket = near_socket
            .try_clone()
            .context("cloning the probe socket")?;
        let receive = {
            let shared = shared.clone();
            move || {
                let mut buf = [0u8; 64];
                while !shared.stop.load(Ordering::Relaxed) {
                    if let Ok(8) = receiver_socket.recv(&mut buf) {
                        shared
                            .at_near
                            .set(u64::from_be_bytes(buf[..8].try_into().unwrap_or_default()));
                    }
                }
            }
        };
        threads.push(std::thread::spawn(receive));
        let send = {
            let shared = shared.clone();
            let to = SocketAddrV4::new(far_addr, port);
            move || {
                let start = Instant::now();
                let mut seq = 0u64;
                while !shared.stop.load(Ordering::Relaxed) && seq < CAPACITY {
                    let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // A send error (no route for a moment) is a lost probe like any other.
                    near_socket.send_to(&seq.to_be_bytes(), to).ok();
                    seq += 1;
                    shared.next.store(seq, Ordering::Relaxed);
                }
            }
        };
        threads.push(std::thread::spawn(send));
        Ok(Self {
            shared,
            interval,
            threads,
        })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The next sequence number to be sent.
    pub fn next_seq(&self) -> u64 {
        self.shared.next.load(Ordering::Relaxed)
    }

    /// Probes that are surely settled: sent at least `grace` ago (their echo had time to
    /// come back). Returns the end of that settled range.
    pub fn settled(&self, grace: Duration) -> u64 {
        let back = (grace.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        self.next_seq().saturating_sub(back)
    }

    /// Whether every one of the `count` settled probes before `end` came back.
    pub fn all_back(&self, end: u64, count: u64) -> bool {
        end >= count && (end - count..end).all(|s| self.shared.at_near.get(s))
    }

    /// Whether the stream flows both ways: the last `count` settled probes all came back.
    pub fn flowing(&self, count: u64) -> bool {
        self.all_back(self.settled(Duration::from_millis(100)), count)
    }

    /// What was lost among probes `from..to`.
    pub fn losses(&self, from: u64, to: u64) -> Losses {
        let mut l = Losses::default();
        let mut run = 0;
        for seq in from..to {
            l.sent += 1;
            if !self.shared.at_far.get(seq) {
                l.forward += 1;
                run += 1;
                l.forward_run = l.forward_run.max(run);
            } else {
                run = 0;
                if !self.shared.at_near.get(seq) {
                    l.back += 1;
                }
            }
        }
        l
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            // A probe thread that panicked has nothing left to report.
            t.join().ok();
        }
    }
}
