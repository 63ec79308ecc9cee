//! Foundation proof: the embedded XDP object loads, attaches in native (driver) mode to a veth
//! inside a namespace, and counts frames sent from the peer namespace per VLAN id.

use aya::programs::{Xdp, XdpMode};
use etherparse::{PacketBuilder, VlanId};
use forwarder::dataplane;
use forwarder_tests::{NetNs, send_frames, veth};

const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn udp_frame(vlan: Option<u16>, payload_len: usize) -> Vec<u8> {
    let payload = vec![0xab; payload_len];
    let eth = PacketBuilder::ethernet2(SRC, DST);
    let mut frame = Vec::new();
    match vlan {
        Some(vid) => eth
            .single_vlan(VlanId::try_new(vid).expect("valid vlan id"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(40000, 9)
            .write(&mut frame, &payload),
        None => eth
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(40000, 9)
            .write(&mut frame, &payload),
    }
    .expect("frame builds");
    frame
}

#[test]
fn xdp_on_veth_counts_frames_per_vlan() -> anyhow::Result<()> {
    let gw = NetNs::new("gw")?;
    let cust = NetNs::new("cust")?;
    veth(&gw, "trunk", &cust, "cust0")?;
    // XDP must see the tag inline, not lifted into skb metadata.
    gw.exec(&["ethtool", "-K", "trunk", "rxvlan", "off"])?;

    let mut ebpf = dataplane::load()?;
    let program: &mut Xdp = ebpf
        .program_mut("vlan_count")
        .expect("vlan_count in the object")
        .try_into()?;
    program.load()?;
    gw.enter(|| {
        program.attach("trunk", XdpMode::Driver)?;
        Ok(())
    })?;
    let mode = gw.exec(&["ip", "-d", "link", "show", "trunk"])?;
    let mode = String::from_utf8_lossy(&mode.stdout);
    assert!(
        mode.contains("xdp "),
        "trunk should show native `xdp`, got: {mode}"
    );

    let mut frames = Vec::new();
    frames.extend((0..3).map(|_| udp_frame(Some(100), 20)));
    frames.extend((0..5).map(|_| udp_frame(Some(200), 100)));
    frames.extend((0..2).map(|_| udp_frame(None, 50)));
    frames.push(udp_frame(Some(4094), 0));
    send_frames(&cust, "cust0", &frames)?;

    let expect = [
        (Some(100), 3, 3 * frames[0].len()),
        (Some(200), 5, 5 * frames[3].len()),
        (None, 2, 2 * frames[8].len()),
        (Some(4094), 1, frames[10].len()),
        (Some(300), 0, 0),
    ];
    // The veth delivers asynchronously (NAPI); give it a moment, then demand exact counts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let seen: Vec<_> = expect
            .iter()
            .map(|(vlan, _, _)| dataplane::vlan_counter(&ebpf, *vlan))
            .collect::<Result<_, _>>()?;
        let done = seen
            .iter()
            .zip(&expect)
            .all(|(c, (_, p, _))| c.packets >= *p as u64);
        if done || std::time::Instant::now() > deadline {
            for (counter, (vlan, packets, bytes)) in seen.iter().zip(&expect) {
                println!(
                    "vlan {vlan:?}: {} packets, {} bytes",
                    counter.packets, counter.bytes
                );
                assert_eq!(counter.packets, *packets as u64, "packets on vlan {vlan:?}");
                assert_eq!(counter.bytes, *bytes as u64, "bytes on vlan {vlan:?}");
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
