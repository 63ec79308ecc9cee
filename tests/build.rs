//! Builds the test-only TC programs of `forwarder-test-ebpf` (the customer router's VLAN shim)
//! for bpfel-unknown-none (release, nightly for `-Z build-std=core`) and leaves the object in
//! OUT_DIR, where `customer` embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .context("tests/ has no parent directory")?;
    let ebpf_dir = workspace.join("forwarder-test-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "forwarder-test-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building forwarder-test-ebpf (run `cargo xtask setup` if bpf-linker or rust-src is \
         missing)",
    )
}
