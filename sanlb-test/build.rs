//! Builds the test-only eBPF programs (sanlb-test-ebpf: the empty baselines
//! and the benchmark's floors) with aya-build into OUT_DIR, where `testrun` embeds them.
//! `AYA_BUILD_SKIP=1` skips this (the embedded object is then empty).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sanlb-test-ebpf")
        .ok_or_else(|| anyhow!("sanlb-test-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Only errors and real warnings from the inner cargo (see sanlb/build.rs).
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let path = out_dir.join("sanlb-baseline");
    if !path.exists() {
        // AYA_BUILD_SKIP: keep include_bytes! compiling; loading fails clearly.
        std::fs::write(&path, b"")?;
    }
    Ok(())
}
