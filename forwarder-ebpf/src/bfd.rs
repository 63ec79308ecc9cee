//! BFD while the agent is away: for a session the stopping agent handed over (an entry in
//! `BFD_ANSWER`), a control packet from the client router is answered here, in place, with
//! our side's Up packet, so that a restart of the agent does not look like a failure of the
//! path. Anything unexpected (not Up, another discriminator, authentication, options) goes
//! to the control plane as before.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use forwarder_common::{BFD_PORT, BfdAnswer, BfdKey, Vif, capture_direction, pass_reason};

use crate::{
    Drop, capture, icmp,
    maps::BFD_ANSWER,
    parse::{ETH_HLEN, IPPROTO_UDP, Ipv4Hdr, VLAN_HLEN, frame_len, read, write},
    redirect, stats,
};

const L3: usize = ETH_HLEN + VLAN_HLEN;
const UDP: usize = L3 + 20;
const BFD: usize = UDP + 8;
const BFD_LEN: usize = 24;

/// `Some(result)` when the frame was a BFD packet answered here; `None`: not ours to
/// answer, the control plane gets it.
#[inline(always)]
pub fn answer(ctx: &XdpContext, vif_id: u32, vif: &Vif) -> Option<Result<u32, Drop>> {
    let ip: Ipv4Hdr = read(ctx, L3).ok()?;
    if ip.ver_ihl != 0x45 || ip.proto != IPPROTO_UDP || ip.ttl != 255 {
        return None;
    }
    let udp: [u8; 8] = read(ctx, UDP).ok()?;
    if u16::from_be_bytes([udp[2], udp[3]]) != BFD_PORT {
        return None;
    }
    let key = BfdKey {
        vif: vif_id,
        client: ip.src,
    };
    // SAFETY: the value is copied out at once.
    let entry: BfdAnswer = *unsafe { BFD_ANSWER.get(key) }?;
    let rx: [u8; BFD_LEN] = read(ctx, BFD).ok()?;
    // Version 1, exactly 24 bytes (no authentication), from an Up peer, naming us.
    let their_state = rx[1] >> 6;
    let your_disc = u32::from_be_bytes([rx[8], rx[9], rx[10], rx[11]]);
    if rx[0] >> 5 != 1
        || usize::from(rx[3]) != BFD_LEN
        || rx[1] & 0x07 != 0
        || their_state != 3
        || your_disc != entry.my_disc
        || frame_len(ctx) < (BFD + BFD_LEN) as u64
    {
        return None;
    }
    Some(reply(ctx, vif_id, vif, &ip, &rx, &entry))
}

/// Our answers follow the peer's packets, so they come as seldom as it sends: the Detect
/// Mult we give is raised until the peer's detection time for us (our multiplier × the
/// slower of its Required Min RX and our Desired Min TX) spans two of its own intervals.
#[inline(always)]
fn detect_mult(rx: &[u8; BFD_LEN], entry: &BfdAnswer) -> u8 {
    let peer_tx = u32::from_be_bytes([rx[12], rx[13], rx[14], rx[15]]);
    let peer_rx = u32::from_be_bytes([rx[16], rx[17], rx[18], rx[19]]);
    let their_pace = if peer_tx > entry.required_min_rx {
        peer_tx
    } else {
        entry.required_min_rx
    };
    let our_pace = if peer_rx > entry.desired_min_tx {
        peer_rx
    } else {
        entry.desired_min_tx
    };
    if our_pace == 0 {
        return entry.detect_mult;
    }
    let needed = (2 * u64::from(their_pace)).div_ceil(u64::from(our_pace));
    let mult = if needed > u64::from(entry.detect_mult) {
        needed
    } else {
        u64::from(entry.detect_mult)
    };
    if mult > 255 { 255 } else { mult as u8 }
}

#[inline(always)]
fn reply(
    ctx: &XdpContext,
    vif_id: u32,
    vif: &Vif,
    ip: &Ipv4Hdr,
    rx: &[u8; BFD_LEN],
    entry: &BfdAnswer,
) -> Result<u32, Drop> {
    // Trailing bytes (Ethernet padding) go.
    let delta = (BFD + BFD_LEN) as i64 - frame_len(ctx) as i64;
    // SAFETY: shrinking to the headers checked above.
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta as i32) } != 0 {
        return Err(Drop::Malformed);
    }
    let src_mac: [u8; 6] = read(ctx, 6)?;
    write(ctx, 0, src_mac)?;
    write(ctx, 6, vif.mac)?;
    let mut hdr = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0xc0, // network control, as BFD implementations send it
        tot_len: ((20 + 8 + BFD_LEN) as u16).to_be_bytes(),
        id: [0, 0],
        frag_off: [0, 0],
        ttl: 255,
        proto: IPPROTO_UDP,
        check: [0, 0],
        src: ip.dst,
        dst: ip.src,
    };
    hdr.check = icmp::ipv4_checksum(&hdr).to_be_bytes();
    write(ctx, L3, hdr)?;
    let sport = entry.source_port.to_be_bytes();
    let dport = BFD_PORT.to_be_bytes();
    let len = ((8 + BFD_LEN) as u16).to_be_bytes();
    // UDP checksum 0: allowed over IPv4.
    write(
        ctx,
        UDP,
        [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0],
    )?;
    // Up; a Final for their Poll.
    let final_bit = if rx[1] & 0x20 != 0 { 0x10 } else { 0 };
    let mut tx = [0u8; BFD_LEN];
    tx[0] = 1 << 5;
    tx[1] = (3 << 6) | final_bit;
    tx[2] = detect_mult(rx, entry);
    tx[3] = BFD_LEN as u8;
    let put = |tx: &mut [u8; BFD_LEN], at: usize, v: [u8; 4]| {
        tx[at] = v[0];
        tx[at + 1] = v[1];
        tx[at + 2] = v[2];
        tx[at + 3] = v[3];
    };
    put(&mut tx, 4, entry.my_disc.to_be_bytes());
    put(&mut tx, 8, [rx[4], rx[5], rx[6], rx[7]]);
    put(&mut tx, 12, entry.desired_min_tx.to_be_bytes());
    put(&mut tx, 16, entry.required_min_rx.to_be_bytes());
    write(ctx, BFD, tx)?;
    let action = redirect(ctx.ingress_ifindex() as u32)?;
    stats::pass(pass_reason::BFD_ANSWERED);
    stats::vif_tx(vif_id, frame_len(ctx));
    capture::frame(ctx, vif_id, capture_direction::TO_CUSTOMER);
    Ok(action)
}
