//! The HA control plane's consensus layer against a real etcd (Debian
//! `etcd-server`, one member on loopback per test, removed at the end):
//! election, failover after a kill, a paused leader, etcd down and back,
//! refused values, prefixes.
//!
//! Child processes (a leader killed with SIGKILL, a leader stopped with
//! SIGSTOP) are this test binary run again by rusty-fork: the parent
//! signals them and reads what they printed.

use std::{
    cell::OnceCell,
    io::{Read as _, Seek as _},
    net::IpAddr,
    time::{Duration, Instant},
};

use sanlb::{
    cluster::{ClusterError, Elector, ElectorConfig, Etcd, Role, StateStore},
    controller::store::{Saved, SavedGateway, SavedRoute, VERSION},
    proto::{Mode, Ownership},
};
use sanlb_test::etcd::EtcdServer;
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(1);
/// How long a failover may take: the lease, etcd's expiry sweep (every
/// 500 ms), a watch event and two requests, with room for a loaded machine.
const FAILOVER: Duration = Duration::from_secs(5);
/// The child learns etcd's endpoint from the parent through this.
const ENDPOINT_ENV: &str = "SANLB_TEST_ETCD_ENDPOINT";
const CHILD_URL: &str = "http://127.0.0.1:17001";

fn url(n: u16) -> String {
    format!("http://127.0.0.1:{}", 7300 + n)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(endpoint: &str, prefix: &str) -> Etcd {
    Etcd::connect(&[endpoint.to_owned()], prefix, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

fn elector(etcd: &Etcd, advertise: &str) -> Elector {
    let mut cfg = ElectorConfig::new(advertise);
    cfg.ttl = TTL;
    Elector::start(etcd, cfg).unwrap()
}

fn saved(generation: u64) -> Saved {
    Saved {
        version: VERSION,
        mode: Mode::Target,
        generation,
        gateways: ["gw1", "gw2"]
            .map(|name| SavedGateway {
                name: name.into(),
                capacity: 1.0,
                alive: true,
            })
            .to_vec(),
        routes: vec![
            SavedRoute {
                host: None,
                target: IpAddr::from([198, 18, 1, 1]),
                ownership: Ownership::Moving {
                    from: "gw1".into(),
                    to: "gw2".into(),
                    release: generation,
                },
                changed: generation,
            },
            SavedRoute {
                host: None,
                target: IpAddr::from([198, 18, 1, 2]),
                ownership: Ownership::Owned {
                    gateway: "gw2".into(),
                },
                changed: 1,
            },
        ],
        rates: vec![(
            IpAddr::from([198, 18, 0, 10]),
            IpAddr::from([198, 18, 1, 1]),
            1e6,
        )],
        history: vec![],
        data_addresses: vec![],
        controls: Default::default(),
    }
}

/// Waits until `pred` holds for the role `rx` publishes; panics naming
/// `what` and the last role after `within`.
async fn wait_role(
    rx: &mut watch::Receiver<Role>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&Role) -> bool,
) -> Role {
    let found = match tokio::time::timeout(within, rx.wait_for(pred)).await {
        Ok(Ok(r)) => Some(r.clone()),
        Ok(Err(_)) => panic!("{what}: the elector is gone"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| panic!("{what}: not within {within:?}; role {}", *rx.borrow()))
}

/// Waits until exactly one elector leads and every other follows it;
/// returns the leader's index.
async fn settled(electors: &[&Elector], urls: &[String], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let roles: Vec<Role> = electors.iter().map(|e| e.role()).collect();
        let leaders: Vec<usize> = (0..roles.len()).filter(|&i| roles[i].is_leader()).collect();
        if let [l] = leaders[..]
            && roles.iter().enumerate().all(|(i, r)| {
                i == l || matches!(r, Role::Follower { leader, .. } if *leader == urls[l])
            })
        {
            return l;
        }
        assert!(
            start.elapsed() < within,
            "not settled within {within:?}: {}",
            roles
                .iter()
                .map(Role::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of this test.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_an_error_naming_every_endpoint() {
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("http://127.0.0.1:{port}")
        })
        .collect();
    let start = Instant::now();
    let e = Etcd::connect(&closed, "/sanlb/", TIMEOUT)
        .await
        .unwrap_err();
    let text = sanlb::error_chain(&e);
    eprintln!("{text}");
    assert!(
        matches!(e, ClusterError::Timeout { .. } | ClusterError::Etcd { .. }),
        "{text}"
    );
    for endpoint in &closed {
        assert!(text.contains(endpoint.as_str()), "{text}");
    }
    assert!(start.elapsed() < TIMEOUT * 3, "{:?}", start.elapsed());
    let e = Etcd::connect(&["127.0.0.1:2379".into()], "/sanlb/", TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"127.0.0.1:2379\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_three_electors_exactly_one_leads() {
    let server = EtcdServer::start();
    let etcd = connect(&server.endpoint(), "/three/").await;
    let urls: Vec<String> = (1..=3).map(url).collect();
    let electors: Vec<Elector> = urls.iter().map(|u| elector(&etcd, u)).collect();
    let refs: Vec<&Elector> = electors.iter().collect();
    let l = settled(&refs, &urls, Duration::from_secs(10)).await;
    assert_eq!(
        etcd.leader().await.unwrap().map(|r| r.advertise),
        Some(urls[l].clone())
    );
    // For three lease lifetimes, never two leaders, always the same one.
    let start = Instant::now();
    while start.elapsed() < TTL * 3 {
        let leaders: Vec<usize> = (0..3).filter(|&i| electors[i].role().is_leader()).collect();
        assert_eq!(leaders, vec![l]);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for e in electors {
        e.resign().await;
    }
    assert_eq!(
        etcd.leader().await.unwrap(),
        None,
        "resigning removed the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_is_replaced_within_its_lease_a_resigned_one_at_once() {
    let server = EtcdServer::start();
    let etcd = connect(&server.endpoint(), "/drop/").await;
    let urls: Vec<String> = (1..=3).map(url).collect();
    let mut electors: Vec<Option<Elector>> = urls.iter().map(|u| Some(elector(&etcd, u))).collect();
    let refs: Vec<&Elector> = electors.iter().flatten().collect();
    let first = settled(&refs, &urls, Duration::from_secs(10)).await;
    let mut rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();

    // Dropped without resigning: as with SIGKILL, the lease runs out.
    let killed = Instant::now();
    drop(electors[first].take());
    let refs: Vec<&Elector> = rest
        .iter()
        .map(|&i| electors[i].as_ref().unwrap())
        .collect();
    let rest_urls: Vec<String> = rest.iter().map(|&i| urls[i].clone()).collect();
    let second = rest[settled(&refs, &rest_urls, FAILOVER).await];
    let after_kill = killed.elapsed();
    eprintln!("dropped leader replaced after {after_kill:?}");
    assert!(
        after_kill >= TTL / 2,
        "not before its lease ran out: {after_kill:?}"
    );

    // Resigned: the key goes with the lease, the last one leads at once.
    rest.retain(|&i| i != second);
    let third = rest[0];
    let mut role = electors[third].as_ref().unwrap().subscribe();
    let resigned = Instant::now();
    electors[second].take().unwrap().resign().await;
    wait_role(
        &mut role,
        FAILOVER,
        "the last elector leads",
        Role::is_leader,
    )
    .await;
    let after_resign = resigned.elapsed();
    eprintln!("resigned leader replaced after {after_resign:?}");
    assert!(after_resign < TTL / 2, "{after_resign:?}");
}

/// A leader process killed with SIGKILL: another controller leads within
/// the lease and carries on from the state it wrote.
#[test]
fn a_killed_leader_process_is_replaced_and_its_state_continues() {
    let server = OnceCell::new();
    rusty_fork::fork(
        rusty_fork::rusty_fork_test_name!(
            a_killed_leader_process_is_replaced_and_its_state_continues
        ),
        rusty_fork::rusty_fork_id!(),
        |cmd| {
            let s: &EtcdServer = server.get_or_init(EtcdServer::start);
            cmd.env(ENDPOINT_ENV, s.endpoint());
        },
        |child, _output| {
            let endpoint = server.get().unwrap().endpoint();
            runtime().block_on(async {
                let etcd = connect(&endpoint, "/kill/").await;
                let store = StateStore::new(&etcd);
                // The child leads and wrote its state.
                let start = Instant::now();
                while store.read().await.unwrap() != Some(saved(41)) {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "the child never wrote"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(etcd.leader().await.unwrap().unwrap().advertise, CHILD_URL);
                let me = elector(&etcd, &url(1));
                let mut role = me.subscribe();
                wait_role(
                    &mut role,
                    Duration::from_secs(10),
                    "following the child",
                    |r| matches!(r, Role::Follower { leader, .. } if leader == CHILD_URL),
                )
                .await;
                signal(child.id(), libc::SIGKILL);
                let killed = Instant::now();
                let role =
                    wait_role(&mut role, FAILOVER, "leads after the kill", Role::is_leader).await;
                let term = role.term().unwrap();
                // The generation, the map and the move in flight continue.
                assert_eq!(store.load(term).await.unwrap(), Some(saved(41)));
                store.save(term, &saved(42)).await.unwrap();
                let writing = killed.elapsed();
                eprintln!("killed leader process replaced, first write after {writing:?}");
                assert_eq!(store.read().await.unwrap(), Some(saved(42)));
                assert!(child.wait().unwrap().unix_signal() == Some(libc::SIGKILL));
                me.resign().await;
            });
        },
        || {
            let endpoint = std::env::var(ENDPOINT_ENV).unwrap();
            runtime().block_on(async {
                let etcd = connect(&endpoint, "/kill/").await;
                let me = elector(&etcd, CHILD_URL);
                let mut role = me.subscribe();
                let role = wait_role(
                    &mut role,
                    Duration::from_secs(10),
                    "child leads",
                    Role::is_leader,
                )
                .await;
                StateStore::new(&etcd)
                    .save(role.term().unwrap(), &saved(41))
                    .await
                    .unwrap();
                // Lead until killed (bounded).
                tokio::time::sleep(Duration::from_secs(60)).await;
                panic!("never killed");
            });
        },
    )
    .unwrap();
}

/// A leader stopped (SIGSTOP) beyond its lease, then continued: another
/// controller led meanwhile; the old one cannot write, knows it does not
/// lead as soon as it runs, and follows the new one.
#[test]
fn a_paused_leader_cannot_write_and_follows_the_new_one() {
    let server = OnceCell::new();
    rusty_fork::fork(
        rusty_fork::rusty_fork_test_name!(a_paused_leader_cannot_write_and_follows_the_new_one),
        rusty_fork::rusty_fork_id!(),
        |cmd| {
            let s: &EtcdServer = server.get_or_init(EtcdServer::start);
            cmd.env(ENDPOINT_ENV, s.endpoint());
        },
        |child, output| {
            let endpoint = server.get().unwrap().endpoint();
            runtime().block_on(async {
                let etcd = connect(&endpoint, "/pause/").await;
                let store = StateStore::new(&etcd);
                let start = Instant::now();
                while store.read().await.unwrap() != Some(saved(1)) {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "the child never wrote"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let me = elector(&etcd, &url(1));
                let mut role = me.subscribe();
                wait_role(
                    &mut role,
                    Duration::from_secs(10),
                    "following the child",
                    |r| matches!(r, Role::Follower { leader, .. } if leader == CHILD_URL),
                )
                .await;
                signal(child.id(), libc::SIGSTOP);
                let stopped = Instant::now();
                let role = wait_role(
                    &mut role,
                    FAILOVER,
                    "leads while the child is stopped",
                    Role::is_leader,
                )
                .await;
                eprintln!("stopped leader replaced after {:?}", stopped.elapsed());
                let term = role.term().unwrap();
                assert_eq!(store.load(term).await.unwrap(), Some(saved(1)));
                store.save(term, &saved(100)).await.unwrap();
                // Stopped beyond its lease by half a lease more.
                let beyond = TTL + TTL / 2;
                if let Some(left) = beyond.checked_sub(stopped.elapsed()) {
                    tokio::time::sleep(left).await;
                }
                signal(child.id(), libc::SIGCONT);
                let start = Instant::now();
                while child.try_wait().unwrap().is_none() {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "the child did not finish"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                let mut text = String::new();
                output.rewind().unwrap();
                output.read_to_string(&mut text).unwrap();
                let status = child.wait().unwrap();
                assert!(status.success(), "child failed ({status:?}):\n{text}");
                assert!(text.contains("RESUMED valid=false leads=false"), "{text}");
                assert!(text.contains("SAVE not the leader: term"), "{text}");
                assert!(text.contains(&format!("FOLLOWS {}", url(1))), "{text}");
                assert_eq!(
                    store.read().await.unwrap(),
                    Some(saved(100)),
                    "the child wrote nothing"
                );
                assert!(me.role().is_leader());
                me.resign().await;
            });
        },
        || {
            let endpoint = std::env::var(ENDPOINT_ENV).unwrap();
            runtime().block_on(async {
                let etcd = connect(&endpoint, "/pause/").await;
                let store = StateStore::new(&etcd);
                let me = elector(&etcd, CHILD_URL);
                let mut role = me.subscribe();
                let led = wait_role(
                    &mut role,
                    Duration::from_secs(10),
                    "child leads",
                    Role::is_leader,
                )
                .await;
                let term = led.term().unwrap().clone();
                store.save(&term, &saved(1)).await.unwrap();
                // Notice the pause by the gap it leaves in a 10 ms loop,
                // then, before anything else of ours runs, try to write.
                let start = Instant::now();
                let mut last = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if last.elapsed() > TTL / 2 {
                        break;
                    }
                    last = Instant::now();
                    assert!(start.elapsed() < Duration::from_secs(30), "never paused");
                }
                println!(
                    "RESUMED valid={} leads={}",
                    term.is_valid(),
                    me.role().is_leader()
                );
                match store.save(&term, &saved(2)).await {
                    Ok(rev) => println!("SAVE written at {rev}"),
                    Err(e) => println!("SAVE {e}"),
                }
                let follows = wait_role(&mut role, Duration::from_secs(10), "child follows", |r| {
                    matches!(r, Role::Follower { .. })
                })
                .await;
                if let Role::Follower { leader, .. } = follows {
                    println!("FOLLOWS {leader}");
                }
                drop(me);
            });
        },
    )
    .unwrap();
}

/// etcd killed: the leader steps down before its lease could expire and
/// nobody leads; etcd back: a leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_nobody_leads_and_with_it_back_someone_does() {
    let mut server = EtcdServer::start();
    let etcd = connect(&server.endpoint(), "/down/").await;
    let urls: Vec<String> = (1..=2).map(url).collect();
    let electors: Vec<Elector> = urls.iter().map(|u| elector(&etcd, u)).collect();
    let refs: Vec<&Elector> = electors.iter().collect();
    let l = settled(&refs, &urls, Duration::from_secs(10)).await;
    let term = electors[l].role().term().unwrap().clone();

    server.kill();
    let killed = Instant::now();
    let mut role = electors[l].subscribe();
    wait_role(&mut role, TTL, "steps down", |r| !r.is_leader()).await;
    let stepped = killed.elapsed();
    eprintln!("etcd killed: leader stepped down after {stepped:?}");
    assert!(!term.is_valid());
    // Nobody leads while etcd is away (for more than a lease), and nobody
    // claims to know who does.
    while killed.elapsed() < TTL * 2 {
        for e in &electors {
            assert!(!e.role().is_leader());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in &electors {
        let r = e.role();
        assert!(matches!(r, Role::Unknown { .. }), "{r}");
    }

    server.restart();
    let back = Instant::now();
    let l2 = settled(&refs, &urls, Duration::from_secs(15)).await;
    eprintln!("etcd back: leader after {:?}", back.elapsed());
    let term2 = electors[l2].role().term().unwrap().clone();
    assert!(term2.revision() > term.revision());
    let store = StateStore::new(&etcd);
    store.save(&term2, &saved(3)).await.unwrap();
    assert!(store.save(&term, &saved(4)).await.is_err());
    assert_eq!(store.read().await.unwrap(), Some(saved(3)));
}

/// etcd hung (SIGSTOP): no keep-alive is answered; the leader steps down
/// at ttl/2 after the last answered one, before the lease could expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_etcd_makes_the_leader_step_down_at_half_its_ttl() {
    let server = EtcdServer::start();
    let etcd = connect(&server.endpoint(), "/hung/").await;
    let me = elector(&etcd, &url(1));
    let mut role = me.subscribe();
    wait_role(&mut role, Duration::from_secs(10), "leads", Role::is_leader).await;
    server.pause();
    let paused = Instant::now();
    let r = wait_role(&mut role, TTL, "steps down", |r| !r.is_leader()).await;
    let stepped = paused.elapsed();
    eprintln!("etcd hung: leader stepped down after {stepped:?} ({r})");
    // The last answered keep-alive was sent at most ttl/6 before the pause.
    assert!(
        stepped >= TTL / 2 - TTL / 6 - Duration::from_millis(50),
        "{stepped:?}"
    );
    assert!(
        matches!(r, Role::Unknown { ref reason } if reason.contains("ttl/2")),
        "{r}"
    );
    server.resume();
    wait_role(
        &mut role,
        Duration::from_secs(15),
        "leads again",
        Role::is_leader,
    )
    .await;
    me.resign().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_values_are_refused_naming_the_key() {
    let server = EtcdServer::start();
    let etcd = connect(&server.endpoint(), "/bad/").await;
    let mut kv = etcd.client().kv_client();

    // A corrupt state: refused whole, to a reader and to a leader.
    kv.put("/bad/state", "{\"version\":1,\"generation\":", None)
        .await
        .unwrap();
    let store = StateStore::new(&etcd);
    let e = store.read().await.unwrap_err().to_string();
    assert!(
        e.starts_with("/bad/state: not a sanlb controller state"),
        "{e}"
    );
    let me = elector(&etcd, &url(1));
    let mut role = me.subscribe();
    let led = wait_role(&mut role, Duration::from_secs(10), "leads", Role::is_leader).await;
    let e = store
        .load(led.term().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/bad/state: "), "{e}");
    // Another version's.
    kv.put("/bad/state", "{\"version\":2,\"whatever\":[]}", None)
        .await
        .unwrap();
    let e = store.read().await.unwrap_err().to_string();
    assert!(e.starts_with("/bad/state: state format version 2"), "{e}");
    me.resign().await;

    // A foreign key under the prefix: refused at connection.
    kv.put("/bad/config", "x", None).await.unwrap();
    let e = Etcd::connect(&[server.endpoint()], "/bad/", TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/bad/config: not a key of sanlb"), "{e}");

    // A leader key that is not sanlb's: nobody leads, the role says why.
    kv.put("/worse/leader", "{\"holder\":\"someone else\"}", None)
        .await
        .unwrap();
    let worse = connect(&server.endpoint(), "/worse/").await;
    let me = elector(&worse, &url(2));
    let mut role = me.subscribe();
    let r = wait_role(&mut role, Duration::from_secs(10), "refuses the key", |r| {
        matches!(r, Role::Unknown { reason } if reason.starts_with("/worse/leader: not a sanlb leader record"))
    })
    .await;
    eprintln!("{r}");
    tokio::time::sleep(TTL).await;
    assert!(!me.role().is_leader());
    let e = worse.leader().await.unwrap_err().to_string();
    assert!(
        e.starts_with("/worse/leader: not a sanlb leader record"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_are_two_independent_clusters() {
    let server = EtcdServer::start();
    let a = connect(&server.endpoint(), "/two/a").await;
    let b = connect(&server.endpoint(), "/two/b/").await;
    let urls_a = vec![url(1), url(2)];
    let urls_b = vec![url(3), url(4)];
    let ea: Vec<Elector> = urls_a.iter().map(|u| elector(&a, u)).collect();
    let eb: Vec<Elector> = urls_b.iter().map(|u| elector(&b, u)).collect();
    let la = settled(
        &ea.iter().collect::<Vec<_>>(),
        &urls_a,
        Duration::from_secs(10),
    )
    .await;
    let lb = settled(
        &eb.iter().collect::<Vec<_>>(),
        &urls_b,
        Duration::from_secs(10),
    )
    .await;
    let (ta, tb) = (
        ea[la].role().term().unwrap().clone(),
        eb[lb].role().term().unwrap().clone(),
    );
    let (sa, sb) = (StateStore::new(&a), StateStore::new(&b));
    sa.save(&ta, &saved(7)).await.unwrap();
    sb.save(&tb, &saved(70)).await.unwrap();
    assert_eq!(sa.read().await.unwrap(), Some(saved(7)));
    assert_eq!(sb.read().await.unwrap(), Some(saved(70)));
    // One cluster's leader cannot write the other's state.
    let e = sb.save(&ta, &saved(8)).await.unwrap_err().to_string();
    assert!(e.starts_with("not the leader: etcd refused"), "{e}");
    assert_eq!(sb.read().await.unwrap(), Some(saved(70)));
    // Killing one cluster's leader leaves the other's alone.
    drop(ea);
    tokio::time::sleep(TTL * 2).await;
    assert!(eb[lb].role().is_leader());
    assert_eq!(eb[lb].role().term(), Some(&tb));
    // A prefix holding the other two is refused.
    let e = Etcd::connect(&[server.endpoint()], "/two/", TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/two/a/") && e.contains(": not a key of sanlb under the prefix /two/"),
        "{e}"
    );
}
