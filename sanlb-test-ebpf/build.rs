//! Rebuild when `bpf-linker` changes: the link step depends on it, but cargo
//! cannot express a dependency on a binary on PATH.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
