//! Link settings of the floors, the same as the counting programs' (see
//! `sanlb-ebpf/build.rs`: one load per misaligned header field), and a
//! rebuild when `bpf-linker` changes: the link step depends on it, but cargo
//! cannot express a dependency on a binary on PATH.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
