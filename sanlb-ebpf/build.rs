//! Link settings of the counting programs, and a rebuild when `bpf-linker`
//! changes (the link step depends on it, but cargo cannot express a
//! dependency on a binary on PATH).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
    // Header fields sit at odd offsets (the IP header at 14). Without this
    // LLVM reads a 4-byte address as four byte loads, shifts and ors; with it
    // one load. The kernel allows misaligned packet access wherever the
    // architecture has efficient unaligned access (x86-64, arm64, ...).
    // Needs bpf-linker built against LLVM 22 (what `cargo xtask setup` installs).
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
