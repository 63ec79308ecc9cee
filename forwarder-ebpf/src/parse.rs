//! Bounds-checked header access. The verifier needs one explicit `data_end` comparison per
//! header; every read of packet memory goes through [`ptr_at`].

use aya_ebpf::programs::XdpContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_8021Q: u16 = 0x8100;

/// A pointer to a `T` at `offset` bytes into the frame, or `Err` if the frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// The VLAN id of the outer 802.1Q tag, `None` for an untagged frame.
#[inline(always)]
pub fn vlan_id(ctx: &XdpContext) -> Result<Option<u16>, ()> {
    let ethertype: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: ptr_at checked that the two bytes are inside the frame.
    let ethertype = u16::from_be_bytes(unsafe { *ethertype });
    if ethertype != ETH_P_8021Q {
        return Ok(None);
    }
    let tci: *const [u8; 2] = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: as above.
    let tci = u16::from_be_bytes(unsafe { *tci });
    Ok(Some(tci & 0x0fff))
}
