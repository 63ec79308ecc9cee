//! `forwarder capture`: the frames of one VIF, both directions, as the data plane classified
//! them, written as pcap (nanosecond timestamps, Ethernet with the 802.1Q tag) that tcpdump
//! and Wireshark read. The agent turns the data plane's capture flag on for the VIF, lends
//! the ring buffer to the connection's task, which streams records to the client until it
//! has enough or goes away; then the flag goes off again.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use forwarder_common::{CAPTURE_SNAPLEN, CaptureRecord};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, unix::AsyncFd},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::mpsc,
};

/// A capture the owner started: what the connection's task streams from.
pub struct Session {
    pub vif: String,
    pub ring: RingBuf<MapData>,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Where the ring buffer goes back when the capture ends.
    pub done: mpsc::Sender<Done>,
}

/// A capture that ended: the ring buffer, back to the owner, which turns the flag off.
pub struct Done {
    pub ring: RingBuf<MapData>,
    pub frames: u64,
}

/// pcap with nanosecond timestamps (libpcap's 0xa1b23c4d), Ethernet link type.
pub const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;

/// The pcap file header.
pub fn file_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&PCAP_MAGIC_NS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone, sigfigs: 0.
    h[16..20].copy_from_slice(&(CAPTURE_SNAPLEN as u32).to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: turns the data plane's timestamps into
/// wall-clock time.
fn realtime_offset_ns() -> i128 {
    let now = |clock| {
        // SAFETY: clock_gettime writes a timespec we own.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(clock, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// A ring-buffer record as a pcap record; None for a record that is not a whole one.
pub fn pcap_record(bytes: &[u8], offset_ns: i128) -> Option<Vec<u8>> {
    if bytes.len() < std::mem::size_of::<CaptureRecord>() {
        return None;
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[0..8]);
    let timestamp = i128::from(u64::from_ne_bytes(ts)) + offset_ns;
    let (len, caplen) = (u32_at(16), u32_at(20).min(CAPTURE_SNAPLEN as u32));
    let data = bytes.get(24..24 + caplen as usize)?;
    let mut out = Vec::with_capacity(16 + data.len());
    let secs = u32::try_from(timestamp.div_euclid(1_000_000_000)).unwrap_or(0);
    let nanos = timestamp.rem_euclid(1_000_000_000) as u32;
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&nanos.to_le_bytes());
    out.extend_from_slice(&caplen.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data);
    Some(out)
}

/// Streams the capture to the client on `write` (pcap), until `count` frames, the client
/// closing its side (`read` ends), or a write failing; then gives the ring back.
pub async fn stream(session: Session, mut read: OwnedReadHalf, mut write: OwnedWriteHalf) {
    let Session {
        vif,
        ring,
        count,
        done,
    } = session;
    let offset = realtime_offset_ns();
    let mut frames = 0u64;
    // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, which keeps
    // it open (and the same) until `into_inner` gives it back.
    let mut ring =
        match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => Some(fd),
            Err(e) => {
                let (ring, error) = e.into_parts();
                tracing::error!(%error, "watching the capture ring");
                if done.send(Done { ring, frames: 0 }).await.is_err() {
                    tracing::warn!("the agent stopped during a capture");
                }
                return;
            }
        };
    let finished = |frames: u64| count.is_some_and(|c| frames >= c);
    if let Some(fd) = ring.as_mut()
        && write.write_all(&file_header()).await.is_ok()
    {
        let mut probe = [0u8; 64];
        'stream: loop {
            // Whatever is already in the ring first.
            let mut batch = Vec::new();
            while let Some(item) = fd.get_mut().next() {
                if let Some(record) = pcap_record(&item, offset) {
                    batch.extend_from_slice(&record);
                    frames += 1;
                    if finished(frames) {
                        break;
                    }
                }
            }
            if !batch.is_empty() && write.write_all(&batch).await.is_err() {
                break;
            }
            if finished(frames) {
                break;
            }
            tokio::select! {
                guard = fd.readable_mut() => match guard {
                    Ok(mut g) => g.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the capture ring");
                        break 'stream;
                    }
                },
                // The client is gone (or sent something it should not have).
                _ = read.read(&mut probe) => break 'stream,
                // Wake up now and then: a ring that missed a wakeup is read anyway.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
    tracing::info!(vif = %vif, frames, "capture ended");
    if let Err(e) = write.shutdown().await {
        tracing::debug!(error = %e, "closing the capture stream");
    }
    if let Some(fd) = ring {
        let ring = fd.into_inner();
        if done.send(Done { ring, frames }).await.is_err() {
            tracing::warn!("the agent stopped during a capture");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_a_pcap_record_with_its_wall_clock_time() {
        let mut raw = vec![0u8; std::mem::size_of::<CaptureRecord>()];
        raw[0..8].copy_from_slice(&1_500_000_000u64.to_ne_bytes());
        raw[16..20].copy_from_slice(&3000u32.to_ne_bytes());
        raw[20..24].copy_from_slice(&4u32.to_ne_bytes());
        raw[24..28].copy_from_slice(&[1, 2, 3, 4]);
        // Monotonic 1.5 s + offset 10 s = 11.5 s.
        let rec = pcap_record(&raw, 10_000_000_000).expect("record");
        assert_eq!(&rec[0..4], &11u32.to_le_bytes());
        assert_eq!(&rec[4..8], &500_000_000u32.to_le_bytes());
        assert_eq!(&rec[8..12], &4u32.to_le_bytes(), "caplen");
        assert_eq!(&rec[12..16], &3000u32.to_le_bytes(), "original length");
        assert_eq!(&rec[16..], &[1, 2, 3, 4]);
        assert!(pcap_record(&raw[..100], 0).is_none());
        let header = file_header();
        assert_eq!(&header[0..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
    }
}
