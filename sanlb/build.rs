//! Builds the eBPF programs (sanlb-ebpf) with aya-build: `rustup run nightly
//! cargo build -Z build-std=core --target bpfel-unknown-none`, then copies the
//! objects into OUT_DIR where `dataplane` embeds them. `AYA_BUILD_SKIP=1` skips
//! this for check-only builds (the embedded objects are then empty).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    commit();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sanlb-ebpf")
        .ok_or_else(|| anyhow!("sanlb-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let skip = matches!(
        std::env::var("AYA_BUILD_SKIP").as_deref(),
        Ok("1") | Ok("true")
    );
    // aya-build forwards every stderr line of the cargo it runs as a
    // build-script warning; a quiet inner cargo leaves only its errors and
    // real warnings (compiler diagnostics come through its JSON output).
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
    if skip {
        // Keep include_bytes! compiling; loading an empty object fails clearly.
        let path = out_dir.join("sanlb");
        if !path.exists() {
            std::fs::write(&path, b"")?;
        }
    }
    Ok(())
}

/// `SANLB_COMMIT`, the commit `sanlb --version` names: the short hash, or
/// `unknown` outside a git checkout. Rebuilt when HEAD moves.
fn commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SANLB_COMMIT={hash}");
    // HEAD names the branch; the branch's ref (or packed-refs) its commit.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for w in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
            let p = std::path::Path::new(&p);
            if p.exists() {
                // Relative paths are relative to the package (the cwd).
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
