//! Builds the XDP programs of `forwarder-ebpf` for bpfel-unknown-none (release, nightly for
//! `-Z build-std=core`) and leaves the object in OUT_DIR, where `dataplane` embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .context("forwarder/ has no parent directory")?;
    let ebpf_dir = workspace.join("forwarder-ebpf");
    let common_dir = workspace.join("forwarder-common");
    // aya-build watches the eBPF crate; the contract crate it uses must trigger a rebuild too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    // aya-build passes every line the nested cargo prints on stderr ("Compiling …",
    // "Finished …") up as a cargo warning; a quiet nested cargo still reports errors and
    // the compiler's own warnings.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "forwarder-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building forwarder-ebpf (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}
