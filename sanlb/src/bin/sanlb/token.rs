//! `sanlb token FILE`: a new bearer token, 256 random bits as 64 hex
//! digits, in a file only its owner can read.

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    process::ExitCode,
};

use anyhow::Context as _;

use crate::args::TokenArgs;

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = &args.path;
    let mut open = OpenOptions::new();
    open.write(true).mode(0o600);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut f = open.open(path).with_context(|| {
        if path.exists() && !args.force {
            format!("{} exists (give --force to replace it)", path.display())
        } else {
            format!("creating {}", path.display())
        }
    })?;
    // An existing file keeps its mode through truncation: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(format!("{token}\n").as_bytes()))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::debug!(path = %path.display(), "token written");
    Ok(ExitCode::SUCCESS)
}
