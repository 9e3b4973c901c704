//! The agent's part in fault handling (issue 14), beside the report loop:
//!
//! - **heartbeats** every [`FaultConfig::heartbeat`] (100 ms): the
//!   controller's liveness signal, with the NIC's link state and MAC; a
//!   task of its own, so that a slow report or share never delays one;
//! - **probes** the controller asks for in heartbeat replies (is a silent
//!   gateway still serving?), run at once, their results sent in an extra
//!   heartbeat as soon as they are in;
//! - **self-probes** of the addresses it holds every
//!   [`FaultConfig::self_probe`] (2 s): a second MAC answering is a
//!   duplicate owner, logged with both MACs, reported in every heartbeat
//!   while it lasts, and — for an address the controller assigned to this
//!   gateway — answered with announcements again each round, so that hosts'
//!   neighbour entries end here;
//! - **release orders** in heartbeat replies: an address the controller
//!   assigned to another gateway that this NIC holds without sanlb's marker
//!   is removed ([`AddressOwner::remove_unmanaged`], logged loudly);
//! - **hand-off** on stop ([`OnStop::Handoff`]): the agent drains its own
//!   gateway through the controller and stops once it holds nothing (see
//!   `Agent::run`).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle};

use super::Client;
use crate::{
    enforce::{AddressOwner, EnforceError, LinkState, ProbeSpec},
    proto::{Conflict, Heartbeat, MacAddr, ProbeRequest, ProbeResult},
};

/// Most held addresses one self-probe round covers (every address is an ARP
/// broadcast or a multicast solicitation on the storage segment): larger
/// sets are covered over several rounds.
pub const SELF_PROBE_BATCH: usize = 256;

/// What the agent does on SIGTERM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Leave the addresses on the NIC (fail-static): the gateway keeps
    /// serving them while no agent runs, and the controller, finding it
    /// silent but serving, moves nothing.
    #[default]
    Keep,
    /// Drain the gateway through the controller first and stop once it
    /// holds nothing (or after [`FaultConfig::handoff_timeout`]).
    Handoff,
}

/// How an agent takes part in fault handling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// Heartbeat period; zero sends none.
    pub heartbeat: Duration,
    /// Self-probe period; zero never probes.
    pub self_probe: Duration,
    /// How long a probe collects answers (each of its phases).
    pub probe_window: Duration,
    /// The storage service's TCP port that probes of other gateways check.
    pub service_port: Option<u16>,
    /// What SIGTERM does.
    pub on_stop: OnStop,
    /// Longest hand-off.
    pub handoff_timeout: Duration,
}

impl Default for FaultConfig {
    /// 100 ms heartbeats, 2 s self-probes, 100 ms windows, port 3260, keep
    /// on stop, 30 s hand-off.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            self_probe: Duration::from_secs(2),
            probe_window: Duration::from_millis(100),
            service_port: Some(sanlb_common::DEFAULT_ISCSI_PORT),
            on_stop: OnStop::Keep,
            handoff_timeout: Duration::from_secs(30),
        }
    }
}

/// State the fault tasks and the report loop share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Conflicts of the last self-probes, by address.
    conflicts: Mutex<BTreeMap<IpAddr, Vec<MacAddr>>>,
    /// Probe results not sent yet.
    results: Mutex<Vec<ProbeResult>>,
    /// The addresses of the last share applied completely (`None`: none
    /// applied since start): only those are announced again on a conflict.
    assigned: Mutex<Option<BTreeSet<IpAddr>>>,
    /// Sends a heartbeat now.
    kick: Notify,
    /// Reports now (the report loop waits on it): the controller is heard
    /// again, or the NIC came back up. Its reply carries the share, so a
    /// gateway whose addresses failed over while it was cut off releases
    /// them within a round trip instead of at its next report.
    pub(super) report_now: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn set_assigned(&self, addrs: BTreeSet<IpAddr>) {
        *lock(&self.assigned) = Some(addrs);
    }

    fn assigned(&self, addr: IpAddr) -> bool {
        lock(&self.assigned)
            .as_ref()
            .is_some_and(|s| s.contains(&addr))
    }
}

/// The running fault tasks; dropping it stops them.
#[derive(Debug)]
pub(super) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the heartbeat and self-probe tasks.
pub(super) fn spawn<A: AddressOwner + 'static>(
    owner: Arc<A>,
    client: Client,
    gateway: String,
    boot_id: String,
    cfg: FaultConfig,
    shared: Arc<Shared>,
) -> Tasks {
    let mut tasks = Vec::new();
    if !cfg.heartbeat.is_zero() {
        tasks.push(tokio::spawn(heartbeats(
            Arc::clone(&owner),
            client,
            gateway,
            boot_id,
            cfg.clone(),
            Arc::clone(&shared),
        )));
    }
    if !cfg.self_probe.is_zero() {
        tasks.push(tokio::spawn(self_probes(owner, cfg, shared)));
    }
    Tasks(tasks)
}

/// How long one heartbeat may take: a few periods, within [300 ms, 5 s].
fn heartbeat_timeout(period: Duration) -> Duration {
    (period * 3).clamp(Duration::from_millis(300), Duration::from_secs(5))
}

async fn heartbeats<A: AddressOwner + 'static>(
    owner: Arc<A>,
    client: Client,
    gateway: String,
    boot_id: String,
    cfg: FaultConfig,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = heartbeat_timeout(cfg.heartbeat);
    let mut seq = 0u64;
    // Probes started, so that one delivered twice runs once.
    let mut started: VecDeque<u64> = VecDeque::new();
    let mut failing = false;
    let mut last_link: Option<bool> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.kick.notified() => {}
        }
        let link = owner.link().await.unwrap_or(LinkState {
            up: false,
            mac: None,
        });
        if last_link != Some(link.up) {
            if last_link.is_some() || !link.up {
                if link.up {
                    shared.report_now.notify_one();
                    tracing::info!(%gateway, "host-facing link up");
                } else {
                    tracing::warn!(%gateway, "host-facing link down");
                }
            }
            last_link = Some(link.up);
        }
        let probes = std::mem::take(&mut *lock(&shared.results));
        let conflicts = lock(&shared.conflicts)
            .iter()
            .map(|(a, m)| Conflict {
                address: *a,
                macs: m.clone(),
            })
            .collect();
        let hb = Heartbeat {
            gateway: gateway.clone(),
            boot_id: boot_id.clone(),
            seq,
            link_up: link.up,
            mac: link.mac,
            probes,
            conflicts,
        };
        seq += 1;
        let reply = match client.heartbeat(&hb, timeout).await {
            Ok(r) => {
                if failing {
                    tracing::info!("heartbeats answered again: reporting now");
                    failing = false;
                    shared.report_now.notify_one();
                }
                r
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %crate::error_chain(&e), "heartbeat not answered");
                    failing = true;
                }
                continue;
            }
        };
        for req in reply.probes {
            if started.contains(&req.id) {
                continue;
            }
            started.push_back(req.id);
            if started.len() > 64 {
                started.pop_front();
            }
            tokio::spawn(run_probe(
                Arc::clone(&owner),
                req,
                cfg.probe_window,
                cfg.service_port,
                Arc::clone(&shared),
            ));
        }
        for order in reply.release {
            tracing::error!(
                address = %order.address,
                owner = %order.owner,
                "the controller orders this gateway to remove an address assigned to another gateway (a duplicate owner)"
            );
            if let Err(e) = owner.remove_unmanaged(order.address).await {
                tracing::error!(address = %order.address, error = %crate::error_chain(&e), "not removed");
            }
        }
    }
}

/// Runs one probe the controller asked for; the result goes with the next
/// heartbeat, which it sends at once.
async fn run_probe<A: AddressOwner>(
    owner: Arc<A>,
    req: ProbeRequest,
    window: Duration,
    service_port: Option<u16>,
    shared: Arc<Shared>,
) {
    let spec = ProbeSpec {
        addrs: req.addresses.clone(),
        window,
        service_port,
    };
    let result = match owner.probe(&spec).await {
        Ok(addresses) => ProbeResult {
            id: req.id,
            addresses,
            failed: false,
        },
        Err(e) => {
            tracing::warn!(id = req.id, error = %crate::error_chain(&e), "probe not sent");
            ProbeResult {
                id: req.id,
                addresses: Vec::new(),
                failed: true,
            }
        }
    };
    tracing::debug!(id = req.id, ?result, "probe done");
    lock(&shared.results).push(result);
    shared.kick.notify_one();
}

async fn self_probes<A: AddressOwner + 'static>(
    owner: Arc<A>,
    cfg: FaultConfig,
    shared: Arc<Shared>,
) {
    let start = tokio::time::Instant::now() + cfg.self_probe;
    let mut tick = tokio::time::interval_at(start, cfg.self_probe);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    loop {
        tick.tick().await;
        let Ok(owned) = owner.owned().await else {
            continue;
        };
        let all: Vec<IpAddr> = owned.iter().copied().collect();
        // Forget conflicts over addresses no longer held.
        lock(&shared.conflicts).retain(|a, _| owned.contains(a));
        if all.is_empty() {
            continue;
        }
        let batch: Vec<IpAddr> = (0..all.len().min(SELF_PROBE_BATCH))
            .map(|i| all[(next + i) % all.len()])
            .collect();
        next = (next + batch.len()) % all.len();
        let own = owner.link().await.ok().and_then(|l| l.mac);
        let spec = ProbeSpec {
            addrs: batch,
            window: cfg.probe_window,
            service_port: None,
        };
        let probed = match owner.probe(&spec).await {
            Ok(p) => p,
            Err(EnforceError::Unsupported(_)) => return,
            Err(e) => {
                tracing::debug!(error = %crate::error_chain(&e), "self-probe not sent");
                continue;
            }
        };
        let mut fresh = false;
        for p in probed {
            let others: Vec<MacAddr> = p
                .answers
                .iter()
                .map(|a| a.mac)
                .filter(|m| Some(*m) != own)
                .collect();
            let was = lock(&shared.conflicts).get(&p.address).cloned();
            let mine = shared.assigned(p.address);
            match (was, others.is_empty()) {
                (None, true) => continue,
                (Some(_), true) => {
                    tracing::info!(address = %p.address, "address conflict cleared");
                    lock(&shared.conflicts).remove(&p.address);
                }
                (was, false) => {
                    if was.as_ref() != Some(&others) {
                        let list: Vec<String> = others.iter().map(ToString::to_string).collect();
                        tracing::warn!(
                            address = %p.address,
                            ours = %own.map_or_else(|| "?".into(), |m| m.to_string()),
                            others = %list.join(", "),
                            assigned_here = mine,
                            "address conflict: another station answers for an address this gateway holds"
                        );
                        fresh = true;
                    }
                    lock(&shared.conflicts).insert(p.address, others);
                }
            }
            // The owner the controller chose announces again, so that the
            // hosts' entries come back (and stay) here; one more time when
            // the conflict clears.
            if mine && let Err(e) = owner.reannounce(p.address).await {
                tracing::warn!(address = %p.address, error = %crate::error_chain(&e), "announcing again failed");
            }
        }
        if fresh {
            shared.kick.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_wait_a_few_periods() {
        assert_eq!(
            heartbeat_timeout(Duration::from_millis(100)),
            Duration::from_millis(300)
        );
        assert_eq!(
            heartbeat_timeout(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert_eq!(
            heartbeat_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
