//! The agent's rules, with an in-memory owner: exact-set reconcile (release
//! before acquire), monotonic generations, no acknowledgement after a
//! failed release, fail-static when the controller is unreachable.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::fakes::{TOKEN, World, target};
use sanlb::{
    agent::{Agent, AgentConfig, AgentError, Client, CounterSource},
    enforce::{AddressOwner, EnforceError},
    proto::{Flow, Share},
};

fn cfg() -> AgentConfig {
    AgentConfig {
        gateway: "gw1".into(),
        capacity: 1.0,
        interval: Duration::from_millis(50),
        long_poll: Duration::from_millis(200),
    }
}

/// A controller address nothing listens on.
fn dead_client() -> Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Client::new(
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        Duration::from_millis(200),
    )
    .unwrap()
}

fn share(generation: u64, addrs: Option<&[u8]>) -> Share {
    Share {
        gateway: "gw1".into(),
        generation,
        addresses: addrs.map(|a| a.iter().map(|i| target(*i)).collect()),
        pairs: None,
    }
}

/// Records every operation in order.
#[derive(Clone, Default)]
struct Recorder {
    held: Arc<Mutex<BTreeSet<IpAddr>>>,
    ops: Arc<Mutex<Vec<String>>>,
}

impl AddressOwner for Recorder {
    async fn owned(&self) -> Result<BTreeSet<IpAddr>, EnforceError> {
        Ok(self.held.lock().unwrap().clone())
    }
    async fn acquire(&self, addr: IpAddr) -> Result<(), EnforceError> {
        self.ops.lock().unwrap().push(format!("+{addr}"));
        self.held.lock().unwrap().insert(addr);
        Ok(())
    }
    async fn release(&self, addr: IpAddr) -> Result<(), EnforceError> {
        self.ops.lock().unwrap().push(format!("-{addr}"));
        self.held.lock().unwrap().remove(&addr);
        Ok(())
    }
}

struct NoCounters;

impl CounterSource for NoCounters {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        Ok(vec![])
    }
}

#[tokio::test]
async fn a_share_is_applied_as_an_exact_set_releases_first() {
    let owner = Recorder::default();
    owner.held.lock().unwrap().extend([target(1), target(2)]);
    let mut agent = Agent::new(cfg(), dead_client(), NoCounters, owner.clone());
    assert!(agent.apply(&share(4, Some(&[2, 3]))).await);
    assert_eq!(
        *owner.held.lock().unwrap(),
        BTreeSet::from([target(2), target(3)])
    );
    assert_eq!(
        *owner.ops.lock().unwrap(),
        vec!["-198.18.1.1", "+198.18.1.3"]
    );
    assert_eq!(agent.applied(), 4);
    // The same generation again changes nothing and acknowledges nothing new.
    assert!(!agent.apply(&share(4, Some(&[2, 3]))).await);
    assert_eq!(owner.ops.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn older_shares_and_shares_without_addresses_change_nothing() {
    let owner = Recorder::default();
    let mut agent = Agent::new(cfg(), dead_client(), NoCounters, owner.clone());
    assert!(agent.apply(&share(7, Some(&[1]))).await);
    assert!(
        !agent.apply(&share(6, Some(&[2]))).await,
        "older generation applied"
    );
    assert!(!agent.apply(&share(9, None)).await);
    assert_eq!(*owner.held.lock().unwrap(), BTreeSet::from([target(1)]));
    assert_eq!(agent.applied(), 7);
}

#[tokio::test]
async fn a_failed_release_is_not_acknowledged() {
    let world = World::default();
    let owner = world.owner("gw1");
    owner.acquire(target(1)).await.unwrap();
    world.set_failing("gw1", true);
    let mut agent = Agent::new(cfg(), dead_client(), world.counters("gw1"), owner);
    assert!(!agent.apply(&share(3, Some(&[]))).await);
    assert_eq!(
        agent.applied(),
        0,
        "acknowledged a generation it did not apply"
    );
    assert!(world.held("gw1").contains(&target(1)));
    world.set_failing("gw1", false);
    assert!(agent.apply(&share(3, Some(&[]))).await);
    assert_eq!(agent.applied(), 3);
    assert!(world.held("gw1").is_empty());
}

/// Counts its reads, so the test sees the agent keep counting.
struct CountingReads(Arc<Mutex<u64>>);

impl CounterSource for CountingReads {
    fn flows(&mut self) -> Result<Vec<Flow>, AgentError> {
        *self.0.lock().unwrap() += 1;
        Ok(vec![])
    }
}

#[tokio::test]
async fn without_a_controller_the_agent_keeps_what_it_holds_and_keeps_counting() {
    let owner = Recorder::default();
    owner.held.lock().unwrap().extend([target(1), target(2)]);
    let reads = Arc::new(Mutex::new(0));
    let mut agent = Agent::new(
        cfg(),
        dead_client(),
        CountingReads(reads.clone()),
        owner.clone(),
    );
    assert!(matches!(agent.cycle().await, Err(AgentError::Client(_))));
    // Run the loop for a while against nothing.
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        agent
            .run(async {
                let _ = rx.await;
            })
            .await;
        agent
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.send(()).unwrap();
    let agent = run.await.unwrap();
    assert!(
        *reads.lock().unwrap() >= 5,
        "stopped counting: {} reads",
        reads.lock().unwrap()
    );
    assert!(
        owner.ops.lock().unwrap().is_empty(),
        "changed addresses: {:?}",
        owner.ops.lock().unwrap()
    );
    assert_eq!(
        *owner.held.lock().unwrap(),
        BTreeSet::from([target(1), target(2)])
    );
    assert_eq!(agent.applied(), 0);
}

/// Cannot list its addresses.
struct BlindOwner;

impl AddressOwner for BlindOwner {
    async fn owned(&self) -> Result<BTreeSet<IpAddr>, EnforceError> {
        Err(EnforceError::NoSuchInterface("gone0".into()))
    }
    async fn acquire(&self, _: IpAddr) -> Result<(), EnforceError> {
        unreachable!("nothing is applied without knowing what is held")
    }
    async fn release(&self, _: IpAddr) -> Result<(), EnforceError> {
        unreachable!("nothing is applied without knowing what is held")
    }
}

#[tokio::test]
async fn no_report_when_the_held_addresses_are_unknown() {
    // An empty `owned` would acknowledge releases that did not happen.
    let mut agent = Agent::new(cfg(), dead_client(), NoCounters, BlindOwner);
    assert!(matches!(agent.cycle().await, Err(AgentError::Owned(_))));
    assert!(!agent.apply(&share(2, Some(&[1]))).await);
    assert_eq!(agent.applied(), 0);
}
