//! A transmit-only AF_XDP socket: the throughput bench's packet generator on kernels that
//! refuse BPF_PROG_TEST_RUN with live frames.
//!
//! One UMEM of [`FRAMES`] frames, every frame holding the same packet, a TX ring and a
//! completion ring; the fill ring is sized (the kernel wants one) and never used. Copy mode:
//! a veth has no zero-copy, so each `sendto` makes the kernel build an skb per descriptor and
//! hand it to the device (`xsk_generic_xmit`), up to its batch per call. Nothing here needs
//! an XDP program: the socket only sends.
//!
//! The rings are the kernel's UAPI (`linux/if_xdp.h`): producer and consumer indexes that run
//! freely, masked by the ring size, written with release and read with acquire ordering.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Result, bail, ensure};

/// Frames in the UMEM, and the size of the TX and completion rings.
pub const FRAMES: u32 = 4096;
/// Bytes per UMEM frame (the largest packet is one frame less the kernel's headroom).
const FRAME_SIZE: u32 = 4096;

/// One mapped ring: its indexes, its entries and the mapping to undo.
struct Ring {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    entries: *mut u8,
    map: NonNull<libc::c_void>,
    map_len: usize,
}

impl Ring {
    /// Maps the ring of `size` entries of `entry` bytes at page offset `pgoff` of `fd`.
    fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry: usize,
        pgoff: libc::off_t,
    ) -> Result<Self> {
        let map_len = off.desc as usize + size as usize * entry;
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks length and
        // offset, and failure is MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "mapping an AF_XDP ring (offset {pgoff:#x}): {}",
                std::io::Error::last_os_error()
            );
        }
        let base = addr.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS and lie inside the mapping; the
        // indexes are u32s the kernel updates concurrently, so they are read as atomics.
        unsafe {
            Ok(Self {
                producer: base.add(off.producer as usize).cast(),
                consumer: base.add(off.consumer as usize).cast(),
                entries: base.add(off.desc as usize),
                map: NonNull::new_unchecked(addr),
                map_len,
            })
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: inside the mapping, which lives as long as `self`.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// A bound, transmit-only AF_XDP socket whose frames all hold one packet.
pub struct XskTx {
    tx: Ring,
    completion: Ring,
    /// Descriptors handed to the kernel and not yet completed.
    in_flight: u32,
    /// The next UMEM frame to describe (round robin: every frame holds the same packet).
    next_frame: u32,
    len: u32,
    fd: OwnedFd,
    // Declared after the socket: unmapped once the socket is closed.
    umem: Unmap,
}

/// An anonymous mapping, unmapped when dropped.
struct Unmap(NonNull<libc::c_void>, usize);

impl Drop for Unmap {
    fn drop(&mut self) {
        // SAFETY: a mapping this value owns, unmapped once.
        unsafe { libc::munmap(self.0.as_ptr(), self.1) };
    }
}

// SAFETY: the raw pointers point into mappings this value owns; one thread uses it at a time.
unsafe impl Send for XskTx {}

fn setsockopt<T>(fd: &OwnedFd, name: libc::c_int, value: &T, what: &str) -> Result<()> {
    // SAFETY: `value` is a valid T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "AF_XDP {what}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

impl XskTx {
    /// Binds to queue 0 of `ifindex`, in the calling thread's network namespace (the socket
    /// keeps it: use it from any thread afterwards).
    pub fn bind(ifindex: u32) -> Result<Self> {
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        ensure!(
            raw >= 0,
            "AF_XDP socket: {} (the kernel needs CONFIG_XDP_SOCKETS)",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let umem_len = (FRAMES * FRAME_SIZE) as usize;
        // SAFETY: an anonymous private mapping; failure is MAP_FAILED.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            bail!("mapping the UMEM: {}", std::io::Error::last_os_error());
        }
        // SAFETY: not MAP_FAILED, so not null.
        let umem = unsafe { NonNull::new_unchecked(umem) };
        let umem = Unmap(umem, umem_len);

        let reg = libc::xdp_umem_reg {
            addr: umem.0.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg, "UMEM registration")?;
        setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &FRAMES, "fill ring size")?;
        setsockopt(
            &fd,
            libc::XDP_UMEM_COMPLETION_RING,
            &FRAMES,
            "completion ring size",
        )?;
        setsockopt(&fd, libc::XDP_TX_RING, &FRAMES, "TX ring size")?;

        // SAFETY: zeroed is a valid xdp_mmap_offsets; getsockopt fills it.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of_val(&off) as libc::socklen_t;
        // SAFETY: `off` is writable for `optlen` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        ensure!(
            rc == 0,
            "AF_XDP ring offsets: {}",
            std::io::Error::last_os_error()
        );
        let tx = Ring::map(
            &fd,
            &off.tx,
            FRAMES,
            std::mem::size_of::<libc::xdp_desc>(),
            libc::XDP_PGOFF_TX_RING,
        )?;
        let completion = Ring::map(
            &fd,
            &off.cr,
            FRAMES,
            std::mem::size_of::<u64>(),
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        )?;

        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of_val(&addr) as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "binding the AF_XDP socket to interface {ifindex}, queue 0: {}",
            std::io::Error::last_os_error()
        );
        Ok(Self {
            tx,
            completion,
            in_flight: 0,
            next_frame: 0,
            len: 0,
            fd,
            umem,
        })
    }

    /// Writes `packet` into every frame: what each descriptor sends from now on. Call it
    /// with nothing in flight ([`Self::drain`]).
    pub fn set_packet(&mut self, packet: &[u8]) -> Result<()> {
        ensure!(
            !packet.is_empty() && packet.len() <= FRAME_SIZE as usize - 256,
            "a packet of {} bytes does not fit a frame",
            packet.len()
        );
        ensure!(
            self.in_flight == 0,
            "{} frames still in flight",
            self.in_flight
        );
        for frame in 0..FRAMES as usize {
            // SAFETY: frame * FRAME_SIZE + len is inside the UMEM, which the kernel only
            // reads while a descriptor for it is in flight (none is).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    packet.as_ptr(),
                    self.umem
                        .0
                        .as_ptr()
                        .cast::<u8>()
                        .add(frame * FRAME_SIZE as usize),
                    packet.len(),
                );
            }
        }
        self.len = packet.len() as u32;
        Ok(())
    }

    /// Queues up to `n` descriptors (as many as the ring and the UMEM have room for) and asks
    /// the kernel to send; returns how many were queued. The kernel may take fewer in one call
    /// than were queued: the rest go with the next call.
    pub fn send(&mut self, n: u32) -> u32 {
        self.reap();
        let room = FRAMES - self.in_flight;
        let n = n.min(room);
        if n > 0 {
            let producer = self.tx.producer().load(Ordering::Relaxed);
            let descs = self.tx.entries.cast::<libc::xdp_desc>();
            for i in 0..n {
                let slot = producer.wrapping_add(i) & (FRAMES - 1);
                let desc = libc::xdp_desc {
                    addr: u64::from(self.next_frame * FRAME_SIZE),
                    len: self.len,
                    options: 0,
                };
                // SAFETY: `slot` is below the ring size; the slot is ours (the consumer is at
                // least `in_flight` behind us, and completion follows consumption).
                unsafe { descs.add(slot as usize).write(desc) };
                self.next_frame = (self.next_frame + 1) & (FRAMES - 1);
            }
            self.tx
                .producer()
                .store(producer.wrapping_add(n), Ordering::Release);
            self.in_flight += n;
        }
        self.kick();
        n
    }

    /// The kernel sends from the TX ring only when asked (copy mode).
    fn kick(&self) {
        if self.tx.producer().load(Ordering::Relaxed) == self.tx.consumer().load(Ordering::Acquire)
        {
            return;
        }
        // SAFETY: a zero-length sendto on our socket. EAGAIN, EBUSY and ENOBUFS say the
        // device or the kernel's batch was full: the next call carries on.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }

    /// Takes back what the kernel completed; returns how many.
    fn reap(&mut self) -> u32 {
        let consumer = self.completion.consumer().load(Ordering::Relaxed);
        let producer = self.completion.producer().load(Ordering::Acquire);
        let done = producer.wrapping_sub(consumer);
        if done > 0 {
            // Every frame holds the same packet: the addresses need no bookkeeping.
            self.completion
                .consumer()
                .store(producer, Ordering::Release);
            self.in_flight -= done;
        }
        done
    }

    /// Frames handed to the kernel and not yet sent.
    pub fn in_flight(&mut self) -> u32 {
        self.reap();
        self.in_flight
    }

    /// Sends what is queued until nothing is in flight, or fails after `limit`.
    pub fn drain(&mut self, limit: std::time::Duration) -> Result<()> {
        let started = std::time::Instant::now();
        while self.in_flight() > 0 {
            ensure!(
                started.elapsed() < limit,
                "{} AF_XDP frames never left in {limit:?}",
                self.in_flight
            );
            self.kick();
            std::hint::spin_loop();
        }
        Ok(())
    }
}
