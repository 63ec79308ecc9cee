//! Builds the test-only programs of `forwarder-test-ebpf` (the customer router's VLAN shim, the
//! ARP responder) for bpfel-unknown-none (release, nightly for `-Z build-std=core`) and leaves
//! the object in OUT_DIR, where `customer` embeds it (and `arp` uses it from there).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .context("tests/ has no parent directory")?;
    let ebpf_dir = workspace.join("forwarder-test-ebpf");
    // aya-build passes every line the nested cargo prints on stderr ("Compiling …",
    // "Finished …") up as a cargo warning; a quiet nested cargo still reports errors and
    // the compiler's own warnings.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
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
