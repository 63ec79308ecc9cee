//! Forwarding outlives the agent: maps and XDP links pinned under a directory stay in the
//! kernel when the `Dataplane` is dropped, and a new `Dataplane` re-adopts them (same routes,
//! same counters, the program replaced in place).

use std::{net::Ipv4Addr, path::PathBuf};

use etherparse::{PacketBuilder, VlanId};
use forwarder::dataplane::{Dataplane, LoadOptions, NextHopSpec, PortRole, VifSpec};
use forwarder_common::vif_state;
use forwarder_tests::{NetNs, run, send_frames, veth};
use ipnet::Ipv4Net;

/// A bpffs directory unique to this test run, removed (with every pin in it) on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        Self::named("readopt")
    }

    fn named(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/forwarder-test-{tag}-{}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

fn xdp_prog_id(gw: &NetNs) -> anyhow::Result<Option<u32>> {
    let out = gw.exec(&["ip", "-d", "link", "show", "trunk"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    Ok(id.and_then(|id| id.parse().ok()))
}

fn frame_for_vlan_100() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .single_vlan(VlanId::try_new(100).expect("vlan"))
        .ipv4([192, 168, 50, 10], [10, 0, 1, 10], 64)
        .udp(1, 2)
        .write(&mut frame, b"after the agent left")
        .expect("frame");
    frame
}

#[test]
fn pinned_state_survives_the_dataplane_and_is_readopted() -> anyhow::Result<()> {
    let gw = NetNs::new("pingw")?;
    let cust = NetNs::new("pincust")?;
    veth(&gw, "trunk", &cust, "cust0")?;
    let pins = PinDir::new();
    let options = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        max_routes: None,
    };
    let prefix: Ipv4Net = "10.0.0.0/16".parse()?;

    let first = gw.enter(|| {
        forwarder::dataplane::prepare_port("trunk", PortRole::Connection)?;
        let mut dp = Dataplane::load(&options)?;
        let trunk = dp.attach(
            "trunk",
            PortRole::Connection,
            aya::programs::XdpMode::Driver,
        )?;
        dp.upsert_vif(&VifSpec {
            id: 1,
            port_ifindex: trunk,
            vlan: 100,
            gateway_id: 1,
            // Not available: frames are counted on the VIF, then dropped.
            state: vif_state::CONFIGURING,
            control_ifindex: 0,
            cloud_addrs: [Some(Ipv4Addr::new(169, 254, 10, 1)), None],
            addrs6: Default::default(),
            mac: [2, 0, 0, 0, 0, 2],
            policy: Default::default(),
        })?;
        dp.set_next_hop(1, &NextHopSpec::Attachment(1))?;
        dp.upsert_route(1, prefix, 1)?;
        Ok(dp)
    })?;
    let first_prog = xdp_prog_id(&gw)?.expect("XDP attached");
    drop(first);

    // No Dataplane in this process now: the pinned link keeps XDP on the port, and frames are
    // still handled (counted on VIF 1).
    assert_eq!(
        xdp_prog_id(&gw)?,
        Some(first_prog),
        "XDP left the port with the agent"
    );
    send_frames(
        &cust,
        "cust0",
        &[frame_for_vlan_100(), frame_for_vlan_100()],
    )?;
    for name in ["ROUTES", "VIF_TABLE", "VIF_STATS"] {
        assert!(pins.0.join("maps").join(name).exists(), "map {name} pinned");
    }

    let mut second = gw.enter(|| {
        let mut dp = Dataplane::load(&options)?;
        dp.attach(
            "trunk",
            PortRole::Connection,
            aya::programs::XdpMode::Driver,
        )?;
        Ok(dp)
    })?;
    let second_prog = xdp_prog_id(&gw)?.expect("XDP attached after re-adoption");
    assert_ne!(
        second_prog, first_prog,
        "the new program replaced the old one in the same link"
    );
    assert_eq!(
        second.lookup(1, Ipv4Addr::new(10, 0, 3, 4))?,
        Some(1),
        "route re-adopted"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while second.vif_counters(1)?.rx_packets < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        second.vif_counters(1)?.rx_packets,
        2,
        "frames counted while no agent ran"
    );

    gw.enter(|| Ok(second.detach("trunk")?))?;
    assert_eq!(xdp_prog_id(&gw)?, None, "detach removes XDP and its pin");
    assert!(!pins.0.join("links").join("trunk").exists());
    Ok(())
}

/// An upgrade whose maps changed: a pinned counters map of another shape is replaced, any
/// other map of another shape stops the load with its name, instead of new programs running
/// on old maps.
#[test]
fn pinned_maps_of_another_shape_are_replaced_or_refused() -> anyhow::Result<()> {
    let pins = PinDir::named("shape");
    let maps = pins.0.join("maps");
    Dataplane::prepare_pin_dir(&pins.0)?;
    std::fs::create_dir_all(&maps)?;
    let options = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        max_routes: None,
    };
    let create = |name: &str, kind: &str, value: &str, entries: &str| {
        let path = maps.join(name);
        run(
            "bpftool",
            &[
                "map",
                "create",
                path.to_str().expect("utf-8 path"),
                "type",
                kind,
                "key",
                "4",
                "value",
                value,
                "entries",
                entries,
                "name",
                name,
            ],
        )
    };
    // DROPS as it was before it had spare slots.
    create("DROPS", "percpu_array", "8", "15")?;
    let dp = Dataplane::load(&options)?;
    dp.drops()?;
    drop(dp);
    let shown = run(
        "bpftool",
        &[
            "map",
            "show",
            "pinned",
            maps.join("DROPS").to_str().expect("utf-8"),
        ],
    )?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains(&format!("max_entries {}", forwarder_common::DROP_SLOTS)),
        "DROPS was not replaced: {shown}"
    );

    // A VIF table with 24-byte values is not something to forward with.
    std::fs::remove_file(maps.join("VIF_TABLE"))?;
    create("VIF_TABLE", "array", "24", "16384")?;
    let error = match Dataplane::load(&options) {
        Ok(_) => anyhow::bail!("a VIF table of another shape was adopted"),
        Err(e) => e.to_string(),
    };
    for needle in ["VIF_TABLE", "24-byte values", "32-byte values", "remove"] {
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    Ok(())
}
