//! The agent's rules, with an in-memory owner: exact-set reconcile (release
//! before acquire), monotonic generations, no acknowledgement after a
//! failed release, fail-static when the controller is unreachable; pair
//! mode's portal, its director and the connections a share ends.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::fakes::{TOKEN, World, target};
use sanlb::{
    agent::{
        Agent, AgentConfig, AgentError, Client, CounterSource, PairOptions, SessionEnder,
        ShareDirector,
    },
    enforce::{AddressOwner, EnforceError},
    portal::{Portal, PortalConfig},
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

/// Ends "connections" from a list, failing on demand.
#[derive(Debug, Default)]
struct FakeEnder {
    open: Mutex<Vec<(IpAddr, IpAddr)>>,
    ended: Mutex<Vec<(IpAddr, IpAddr)>>,
    failing: std::sync::atomic::AtomicBool,
}

impl SessionEnder for FakeEnder {
    fn connections(
        &self,
        port: u16,
        peers: &[IpAddr],
    ) -> Result<Vec<(IpAddr, IpAddr)>, EnforceError> {
        assert_eq!(port, 3261, "the data port");
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EnforceError::Os {
                what: "dumping TCP sockets".into(),
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(self
            .open
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| peers.contains(p))
            .copied()
            .collect())
    }

    fn end(&self, local: IpAddr, port: u16, peers: &[IpAddr]) -> Result<usize, EnforceError> {
        assert_eq!(port, 3261);
        let mut open = self.open.lock().unwrap();
        let before = open.len();
        open.retain(|c| !(c.0 == local && peers.contains(&c.1)));
        let n = before - open.len();
        for p in peers {
            self.ended.lock().unwrap().push((local, *p));
        }
        Ok(n)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const ENTITY: &str = "198.18.1.1";
const D1: &str = "198.18.2.1";
const D2: &str = "198.18.2.2";
const IQN: &str = "iqn.2026-11.test.sanlb:t1";

/// gw1's share: the entity's portal (at `entity`) and gw1's data address
/// D1, the default; host .3 is sent to gw2 (D2), .4 is held, .5 is evicted
/// from here.
fn pair_share(generation: u64, held_host_goes_to: Option<&str>, portal_here: bool) -> Share {
    pair_share_at(ENTITY, generation, held_host_goes_to, portal_here)
}

fn pair_share_at(
    entity: &str,
    generation: u64,
    held_host_goes_to: Option<&str>,
    portal_here: bool,
) -> Share {
    use sanlb::proto::{Eviction, HostSteer, PairEntity, PairShare};
    let mut addresses = vec![ip(D1)];
    if portal_here {
        addresses.insert(0, ip(entity));
    }
    Share {
        gateway: "gw1".into(),
        generation,
        addresses: Some(addresses),
        pairs: Some(PairShare {
            data_port: 3261,
            entities: vec![PairEntity {
                address: ip(entity),
                targets: vec![IQN.into()],
                data_address: Some(ip(D1)),
                default: Some(ip(D1)),
                hosts: vec![
                    HostSteer {
                        host: ip("127.0.0.3"),
                        redirect: Some(ip(D2)),
                    },
                    HostSteer {
                        host: ip("127.0.0.4"),
                        redirect: held_host_goes_to.map(ip),
                    },
                ],
            }],
            evict: vec![Eviction {
                host: ip("127.0.0.5"),
                data_address: ip(D1),
            }],
        }),
    }
}

/// A normal login from `from` to the portal at `to`: the response.
async fn login(from: &str, to: std::net::SocketAddr, target: &str) -> sanlb::iscsi::LoginResponse {
    use sanlb::iscsi::{Keys, Limits, LoginRequest, Pdu, Stage};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(ip(from), 0)).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let keys: Keys = [
        ("InitiatorName", "iqn.2026-11.test.sanlb:h"),
        ("TargetName", target),
        ("SessionType", "Normal"),
    ]
    .into_iter()
    .collect();
    let req = LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 1],
        1,
        keys.encode(),
    );
    s.write_all(&Pdu::LoginRequest(req).to_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Ok((Pdu::LoginResponse(r), _)) = Pdu::decode(&buf, &Limits::default()) {
            return r;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn redirect_to(r: &sanlb::iscsi::LoginResponse) -> String {
    assert_eq!(
        r.status,
        sanlb::iscsi::LoginStatus::TARGET_MOVED_TEMPORARILY
    );
    String::from_utf8_lossy(&r.data)
        .trim_end_matches('\0')
        .to_owned()
}

#[tokio::test]
async fn a_pair_share_runs_the_portal_and_is_acknowledged_once_its_connections_are_ended() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ender = Arc::new(FakeEnder::default());
    *ender.open.lock().unwrap() = vec![
        (ip(D1), ip("127.0.0.5")), // evicted: its pair moves away
        (ip(D1), ip("127.0.0.3")), // a stray: the map sends .3 to gw2
        (ip(D1), ip("127.0.0.4")), // held: its session runs on meanwhile
        (ip(D1), ip("127.0.0.6")), // a new host, not in the map yet
        (ip(D2), ip("127.0.0.3")), // not this gateway's data address
    ];
    let owner = Recorder::default();
    let options = PairOptions {
        portal: Some(PortalConfig::default()),
        portal_port: port,
        ender: ender.clone(),
        counted_ports: Some(vec![3260, 3261]),
    };
    let mut agent = Agent::new(cfg(), dead_client(), NoCounters, owner.clone()).with_pairs(options);
    let portal_at = std::net::SocketAddr::new(ip(ENTITY), port);

    // The connections cannot be ended: not acknowledged.
    ender
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(!agent.apply(&pair_share(5, None, true)).await);
    assert_eq!(agent.applied(), 0);
    ender
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(agent.apply(&pair_share(5, None, true)).await);
    assert_eq!(agent.applied(), 5);
    assert_eq!(
        *owner.held.lock().unwrap(),
        BTreeSet::from([ip(ENTITY), ip(D1)])
    );
    // The portal listens on the entity's address (bound before it was
    // acquired: IP_FREEBIND).
    assert_eq!(agent.portal_listening(), [portal_at]);
    let mut ended = ender.ended.lock().unwrap().clone();
    ended.sort();
    assert_eq!(
        ended,
        [(ip(D1), ip("127.0.0.3")), (ip(D1), ip("127.0.0.5"))],
        "exactly the evicted pair and the stray"
    );

    // Now .4 is sent to gw2: its connection here is a stray, ended before
    // the next report; the new host's is never touched.
    assert!(agent.apply(&pair_share(6, Some(D2), true)).await);
    agent.cycle().await.unwrap_err(); // no controller: the sweep ran first
    assert!(
        ender
            .ended
            .lock()
            .unwrap()
            .contains(&(ip(D1), ip("127.0.0.4")))
    );
    assert_eq!(
        *ender.open.lock().unwrap(),
        [(ip(D1), ip("127.0.0.6")), (ip(D2), ip("127.0.0.3"))]
    );

    // The portal moves away: released, and it no longer listens there.
    assert!(agent.apply(&pair_share(7, Some(D2), false)).await);
    assert_eq!(*owner.held.lock().unwrap(), BTreeSet::from([ip(D1)]));
    assert!(agent.portal_listening().is_empty());
}

/// The director of the agent's portal, in a real portal on loopback: the
/// default for new hosts, a host's redirect, an unknown target name, a
/// held login answered by the next share.
#[tokio::test]
async fn the_share_director_steers_logins_through_a_portal() {
    let entity = "127.0.0.2";
    let director = Arc::new(ShareDirector::default());
    let share = pair_share_at(entity, 5, None, true);
    director.update(5, share.pairs.as_ref().unwrap());
    let portal = Portal::new(
        PortalConfig {
            hold_timeout: Duration::from_secs(3),
            ..PortalConfig::default()
        },
        director.clone(),
    )
    .unwrap();
    let portal_at = portal
        .listen(std::net::SocketAddr::new(ip(entity), 0))
        .unwrap();
    let r = login("127.0.0.6", portal_at, IQN).await;
    assert_eq!(
        redirect_to(&r),
        format!("TargetAddress={D1}:3261"),
        "the default"
    );
    let r = login("127.0.0.3", portal_at, IQN).await;
    assert_eq!(redirect_to(&r), format!("TargetAddress={D2}:3261"));
    let r = login("127.0.0.6", portal_at, "iqn.2026-11.test.sanlb:other").await;
    assert_eq!(r.status, sanlb::iscsi::LoginStatus::NOT_FOUND);
    let held = tokio::spawn(async move { login("127.0.0.4", portal_at, IQN).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the held login was answered");
    let next = pair_share_at(entity, 6, Some(D2), true);
    director.update(6, next.pairs.as_ref().unwrap());
    let r = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("released by the new share")
        .unwrap();
    assert_eq!(redirect_to(&r), format!("TargetAddress={D2}:3261"));
    let m = portal.metrics();
    assert_eq!((m.logins, m.redirects, m.holds), (4, 3, 1), "{m:#?}");
}

#[tokio::test]
async fn a_pair_share_without_pair_support_is_not_applied() {
    let owner = Recorder::default();
    let mut agent = Agent::new(cfg(), dead_client(), NoCounters, owner.clone());
    assert!(!agent.apply(&pair_share(5, None, true)).await);
    assert_eq!(agent.applied(), 0);
    assert!(owner.ops.lock().unwrap().is_empty());
}
