//! What the commands that ask a controller share (`status`, `drain`,
//! `undrain`, `pause`, `resume`, `pin`, `unpin`): which controllers, the
//! client, the runtime.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use sanlb::agent::Client;

use crate::bad_input;

/// The controllers to ask: the flag's, else the config file's `[section]`
/// ones; every controller of a cluster may be given (the leader is found).
pub fn controllers(flag: &[String], file: &[String], section: &str) -> anyhow::Result<Vec<String>> {
    let urls = if flag.is_empty() { file } else { flag };
    if urls.is_empty() {
        return Err(bad_input(anyhow::anyhow!(
            "give --controller (or controller in [{section}])"
        )));
    }
    Ok(urls.to_vec())
}

/// A client of `urls`, 5 s per request; a bad URL or CA file is bad input.
pub fn client(urls: &[String], token: &str, ca: Option<&Path>) -> anyhow::Result<Client> {
    Client::cluster(urls, token, Duration::from_secs(5), ca).map_err(bad_input)
}

/// The single-threaded runtime a command's requests run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}
