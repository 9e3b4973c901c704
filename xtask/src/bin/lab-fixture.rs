//! A fixture of `xtask/tests/lab.rs`: builds a lab (1 host, 1 gateway, 1
//! target) named with the prefix it is given, writes the lab's id to the
//! ready file and sleeps until it is killed (at most 60 s, then it cleans up
//! and exits). The test SIGKILLs it to leave what a killed run leaves.
//!
//! Usage: `lab-fixture PREFIX READY_FILE`

use std::{process::ExitCode, time::Duration};

use xtask::lab::Lab;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prefix, ready] = args.as_slice() else {
        eprintln!("usage: lab-fixture PREFIX READY_FILE");
        return ExitCode::from(2);
    };
    let lab = match Lab::builder().prefix(prefix).hosts(1).gateways(1).build() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("lab-fixture: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(ready, lab.id()) {
        eprintln!("lab-fixture: writing {ready}: {e}");
        return ExitCode::FAILURE;
    }
    std::thread::sleep(Duration::from_secs(60));
    ExitCode::SUCCESS
}
