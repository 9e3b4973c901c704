//! The iSNS mode against a real open-isns server (Debian `open-isns-server`)
//! started on loopback with its own configuration and database, the hosts'
//! view taken independently with `isnsadm` (open-isns-utils) under each
//! host's identity — the DevAttrQry open-iscsi's `iscsiadm -m discovery -t
//! isns` sends — and bad replies from a fake server.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::TcpListener,
    time::{Duration, Instant},
};

use sanlb::isns::{
    ClientConfig, ClientError, Desired, IsnsError, Portal, Reconciler, ReconcilerConfig,
    client::Client,
    codec::{Attr, Function, Request, tag},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod isnsd;

use isnsd::{CONTROL, Isnsd};

fn p(s: &str) -> Portal {
    s.parse().unwrap()
}

const T1: &str = "iqn.2024-01.test:disk1";
const T2: &str = "iqn.2024-01.test:disk2";
const H1: &str = "iqn.2024-01.test:host1";
const H2: &str = "iqn.2024-01.test:host2";
const H3: &str = "iqn.2024-01.test:host3";
const HX: &str = "iqn.2024-01.test:stranger";

/// Two gateways (198.18.0.1, .2); each (target, gateway) its own portal:
/// port 3261 for disk1, 3262 for disk2.
fn portal(target: &str, gw: u8) -> Portal {
    let port = if target == T1 { 3261 } else { 3262 };
    p(&format!("198.18.0.{gw}:{port}"))
}

fn base_map() -> Desired {
    let mut d = Desired::new();
    d.add_target(T1, [portal(T1, 1), portal(T1, 2)])
        .add_target(T2, [portal(T2, 1), portal(T2, 2)])
        .assign(H1, T1, portal(T1, 1))
        .assign(H1, T2, portal(T2, 2))
        .assign(H2, T1, portal(T1, 2))
        .assign(H2, T2, portal(T2, 2))
        .assign(H3, T2, portal(T2, 1));
    d
}

/// What each host of the map must be told.
fn expected(d: &Desired, host: &str) -> BTreeMap<String, BTreeSet<Portal>> {
    d.hosts
        .get(host)
        .map(|a| {
            a.iter()
                .map(|(t, p)| (t.clone(), BTreeSet::from([*p])))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_views(s: &Isnsd, d: &Desired, hosts: &[&str]) {
    for h in hosts {
        assert_eq!(s.view(h), expected(d, h), "view of {h}");
    }
}

#[tokio::test]
async fn publishes_the_map_and_follows_changes() {
    let s = Isnsd::start();
    let mut r = s.reconciler();
    let mut map = base_map();
    let report = r.sync(&map).await.unwrap();
    assert!(report.ambiguous.is_empty());
    assert!(report.added > 0 && report.removed == 0, "{report:?}");
    assert_views(&s, &map, &[H1, H2, H3, HX]);
    assert!(s.view(HX).is_empty());

    let again = r.sync(&map).await.unwrap();
    assert_eq!(
        (again.added, again.removed, again.rounds),
        (0, 0, 1),
        "{again:?}"
    );

    // Move host1's disk1 to the other gateway, drop host3, add the stranger.
    map.assign(H1, T1, portal(T1, 2));
    map.hosts.remove(H3);
    map.assign(HX, T1, portal(T1, 1));
    let report = r.sync(&map).await.unwrap();
    assert!(report.added > 0 && report.removed > 0, "{report:?}");
    assert_views(&s, &map, &[H1, H2, H3, HX]);
    assert!(s.view(H3).is_empty());

    // Latency: from the reconcile call to the new answer seen by isnsadm.
    let mut latencies = Vec::new();
    let mut syncs = Vec::new();
    let mut requests = Vec::new();
    for i in 0..10u8 {
        let gw = if i % 2 == 0 { 1 } else { 2 };
        map.assign(H1, T1, portal(T1, gw));
        let want = expected(&map, H1);
        let t0 = Instant::now();
        let report = r.sync(&map).await.unwrap();
        syncs.push(t0.elapsed());
        requests.push(report.requests);
        let mut seen = false;
        for _ in 0..50 {
            if s.view(H1) == want {
                seen = true;
                break;
            }
        }
        assert!(seen, "host1 never saw {want:?}");
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    syncs.sort();
    requests.sort();
    eprintln!(
        "isns latency (reconcile call -> isnsadm sees the move), 10 runs: median {:?}, min {:?}, max {:?}; \
         sync alone median {:?}; requests per sync median {}",
        latencies[5], latencies[0], latencies[9], syncs[5], requests[5]
    );
    assert_eq!(r.counters().snapshot().failures, 0);
}

#[tokio::test]
async fn hand_edits_are_put_right_at_the_next_sync() {
    let s = Isnsd::start();
    let mut r = s.reconciler();
    let map = base_map();
    r.sync(&map).await.unwrap();
    let dd_of = |state: &sanlb::isns::ServerState, name: &str| -> u32 {
        *state
            .dds
            .iter()
            .find(|(_, d)| d.name.as_deref() == Some(name))
            .unwrap()
            .0
    };
    let state = r.read_state().await.unwrap();
    let h1_t1 = dd_of(&state, &format!("sanlb:dd:{H1}|{T1}"));
    let admin = "iqn.2024-01.test:admin";

    // (a) A stray portal member in a sanlb domain: host1 then sees disk1
    //     through both gateways (the mapped form names sanlb's portal).
    s.isnsadm(
        admin,
        &[
            "--dd-register",
            &format!("dd-id={h1_t1}"),
            "member-addr=::ffff:198.18.0.2",
            "member-port=3261",
        ],
    );
    assert_eq!(
        s.view(H1)[T1],
        BTreeSet::from([portal(T1, 1), portal(T1, 2)]),
        "the stray member must be visible before the sync"
    );
    // (b) A hand-made domain giving the stranger disk2 through a gateway.
    let out = s.isnsadm(admin, &["--dd-register", "dd-name=handmade"]);
    let id: u32 = out
        .lines()
        .find(|l| l.contains("DD ID"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    s.isnsadm(
        admin,
        &[
            "--dd-register",
            &format!("dd-id={id}"),
            &format!("member-name={HX}"),
            &format!("member-name={T2}"),
            "member-addr=::ffff:198.18.0.1",
            "member-port=3262",
        ],
    );
    assert_eq!(
        s.view(HX),
        BTreeMap::from([(T2.to_string(), BTreeSet::from([portal(T2, 1)]))])
    );
    // (c) A portal registered by hand into sanlb's entity of disk1, (d) a
    //     domain under sanlb's name that the map does not have.
    s.isnsadm(
        admin,
        &[
            "--register",
            "entity=sanlb:target:iqn.2024-01.test:disk1",
            &format!("target,iscsi-name={T1}"),
            "portal,portal-addr=::ffff:198.18.0.9,portal-port=3261",
        ],
    );
    s.isnsadm(
        admin,
        &["--dd-register", &format!("dd-name=sanlb:dd:{HX}|{T1}")],
    );
    let before = r.read_state().await.unwrap();
    assert!(
        before
            .portals
            .keys()
            .any(|q| q.to_string() == "198.18.0.9:3261")
    );

    let report = r.sync(&map).await.unwrap();
    assert!(report.removed >= 4, "{report:?}");
    assert_views(&s, &map, &[H1, H2, H3, HX]);
    let after = r.read_state().await.unwrap();
    assert!(
        !after
            .portals
            .keys()
            .any(|q| q.to_string() == "198.18.0.9:3261")
    );
    assert!(
        after
            .dds
            .values()
            .all(|d| d.name.as_deref() != Some(&format!("sanlb:dd:{HX}|{T1}")))
    );
    assert!(
        after
            .dds
            .values()
            .any(|d| d.name.as_deref() == Some("handmade")),
        "foreign domains stay"
    );
    // The control node's list of portals (isnsadm, not sanlb's reader).
    let listed = s.isnsadm(CONTROL, &["--list", "portals"]);
    assert!(!listed.contains("198.18.0.9"), "{listed}");
    assert_eq!(listed.matches("Portal IP address").count(), 4, "{listed}");
    let again = r.sync(&map).await.unwrap();
    assert_eq!((again.added, again.removed), (0, 0));
}

#[tokio::test]
async fn server_away_is_an_error_and_its_return_a_full_resync() {
    let mut s = Isnsd::start();
    let mut r = s.reconciler();
    let mut map = base_map();
    r.sync(&map).await.unwrap();

    s.stop();
    let err = r.sync(&map).await.unwrap_err();
    assert!(
        matches!(err, IsnsError::Client(ClientError::Connect { .. })),
        "{err}"
    );
    assert_eq!(r.counters().snapshot().failures, 1);

    // While it is away the map changes; it comes back with its old database.
    map.assign(H1, T1, portal(T1, 2));
    map.hosts.remove(H2);
    map.add_target("iqn.2024-01.test:disk3", [p("198.18.0.1:3263")]);
    map.assign(H2, "iqn.2024-01.test:disk3", p("198.18.0.1:3263"));
    s.spawn();
    let report = r.sync(&map).await.unwrap();
    assert!(report.added > 0 && report.removed > 0, "{report:?}");
    assert_views(&s, &map, &[H1, H2, H3, HX]);
    let state = r.read_state().await.unwrap();
    let ours: BTreeSet<&str> = state
        .dds
        .values()
        .filter_map(|d| d.name.as_deref())
        .filter(|n| n.starts_with("sanlb:"))
        .collect();
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert_eq!(state.portals.len(), 5);

    // And with an empty database: everything registered again.
    s.stop();
    s.wipe_db();
    s.spawn();
    assert!(s.view(H1).is_empty());
    let report = r.sync(&map).await.unwrap();
    assert!(report.added > 0, "{report:?}");
    assert_views(&s, &map, &[H1, H2, H3, HX]);
    assert_eq!(r.counters().snapshot().failures, 1);
    assert_eq!(r.counters().snapshot().syncs, 3);
}

#[tokio::test]
async fn shared_portals_are_reported_as_open_isns_shows_them() {
    let s = Isnsd::start();
    let mut r = s.reconciler();
    let (g1, g2) = (p("198.18.0.1:3260"), p("198.18.0.2:3260"));
    let mut map = Desired::new();
    // disk1 through both gateways, disk2 through gateway 2 only: one entity,
    // with a NULL portal group (disk2, gateway 1).
    map.add_target(T1, [g1, g2])
        .add_target(T2, [g2])
        .assign(H1, T1, g1)
        .assign(H1, T2, g2)
        .assign(H2, T1, g1);
    let report = r.sync(&map).await.unwrap();
    let pairs: Vec<(&str, &str)> = report
        .ambiguous
        .iter()
        .map(|a| (a.host.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(pairs, [(H1, T1)]);
    // host1 sees disk1 through both gateways (open-isns' union of domains),
    // disk2 only through gateway 2 (the NULL group holds); host2 is exact.
    assert_eq!(
        s.view(H1),
        BTreeMap::from([
            (T1.to_string(), BTreeSet::from([g1, g2])),
            (T2.to_string(), BTreeSet::from([g2]))
        ])
    );
    assert_eq!(s.view(H2), expected(&map, H2));
}

/// A one-connection fake server: reads a request, answers with `reply(req
/// header)`.
async fn fake(
    reply: impl Fn([u8; 12]) -> Vec<u8> + Send + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            loop {
                let mut head = [0u8; 12];
                if c.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u16::from_be_bytes([head[4], head[5]]) as usize;
                let mut body = vec![0; len];
                if c.read_exact(&mut body).await.is_err() {
                    break;
                }
                let out = reply(head);
                if out.is_empty() {
                    break; // close without answering
                }
                if c.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
    });
    (addr, task)
}

/// A reply PDU: header for the request's function and xid, then `payload`.
fn pdu(req: [u8; 12], flags: u16, xid_delta: u16, payload: &[u8]) -> Vec<u8> {
    let function = u16::from_be_bytes([req[2], req[3]]) | 0x8000;
    let xid = u16::from_be_bytes([req[8], req[9]]).wrapping_add(xid_delta);
    let mut v = Vec::new();
    for w in [1u16, function, payload.len() as u16, flags, xid, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn query() -> Request {
    Request::new(
        Function::DevAttrQry,
        CONTROL,
        vec![Attr::nil(tag::ISCSI_NAME)],
        vec![],
    )
}

#[tokio::test]
async fn bad_replies_are_errors() {
    const OK: u16 = 0x4c00;
    type Reply = Box<dyn Fn([u8; 12]) -> Vec<u8> + Send>;
    let cases: Vec<(&str, Reply)> = vec![
        ("xid", Box::new(|h| pdu(h, OK, 1, &[0; 4]))),
        (
            "function",
            Box::new(|mut h| {
                h[3] ^= 1;
                pdu(h, OK, 0, &[0; 4])
            }),
        ),
        (
            "authentication block",
            Box::new(|h| pdu(h, OK | 0x2000, 0, &[0; 4])),
        ),
        ("segmented", Box::new(|h| pdu(h, 0x4400, 0, &[0; 4]))),
        ("sender flags", Box::new(|h| pdu(h, 0x8c00, 0, &[0; 4]))),
        (
            "exceeds",
            Box::new(|h| pdu(h, OK, 0, &[0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 1, 0])),
        ),
        (
            "not a multiple of 4",
            Box::new(|h| pdu(h, OK, 0, &[0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 3])),
        ),
        (
            "terminating nul",
            Box::new(|h| {
                pdu(
                    h,
                    OK,
                    0,
                    &[0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 4, b'a', b'b', b'c', b'd'],
                )
            }),
        ),
        (
            "status",
            Box::new(|h| pdu(h, OK, 0, &[0, 0, 0, 0]).split_at(14).0.to_vec()),
        ),
        ("eof", Box::new(|_| Vec::new())),
    ];
    for (what, reply) in cases {
        let (addr, task) = fake(reply).await;
        let mut cfg = ClientConfig::new(addr, CONTROL);
        cfg.call_timeout = Duration::from_secs(2);
        let mut c = Client::new(cfg);
        let err = c.call(&query()).await.unwrap_err();
        let msg = err.to_string();
        match what {
            "status" => assert!(
                matches!(
                    err,
                    ClientError::Timeout { .. }
                        | ClientError::Codec { .. }
                        | ClientError::Io { .. }
                ),
                "{what}: {msg}"
            ),
            "eof" => assert!(matches!(err, ClientError::Io { .. }), "{what}: {msg}"),
            _ => assert!(msg.contains(what), "{what}: {msg}"),
        }
        assert!(!c.is_connected(), "{what}: the connection must be dropped");
        task.abort();
    }

    // No answer at all: a timeout; nobody listening: a connect error.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = ClientConfig::new(l.local_addr().unwrap().to_string(), CONTROL);
    cfg.call_timeout = Duration::from_millis(300);
    let mut c = Client::new(cfg.clone());
    let keep = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
        std::thread::sleep(Duration::from_millis(800));
        let _ = s.write_all(b"late");
    });
    assert!(matches!(
        c.call(&query()).await.unwrap_err(),
        ClientError::Timeout { .. }
    ));
    keep.join().unwrap();
    assert!(matches!(
        c.call(&query()).await.unwrap_err(),
        ClientError::Connect { .. }
    ));

    // A good answer after a bad one: the client reconnects and goes on.
    let (addr, task) = fake({
        let n = std::sync::atomic::AtomicU32::new(0);
        move |h| {
            if n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                pdu(h, OK, 7, &[0; 4])
            } else {
                pdu(h, OK, 0, &[0, 0, 0, 9])
            }
        }
    })
    .await;
    let mut c = Client::new(ClientConfig::new(addr, CONTROL));
    assert!(matches!(
        c.call(&query()).await.unwrap_err(),
        ClientError::Mismatch { .. }
    ));
    let ok = c.call(&query()).await.unwrap();
    assert_eq!(ok.status, sanlb::isns::Status::NO_SUCH_ENTRY);
    task.abort();

    // The reconciler over a server that lists the same object forever.
    let (addr, task) = fake(|h| {
        let f = u16::from_be_bytes([h[2], h[3]]);
        if f == Function::DevGetNext.id() {
            let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4];
            body.extend_from_slice(b"abc\0");
            pdu(h, OK, 0, &body)
        } else {
            pdu(h, OK, 0, &[0; 4])
        }
    })
    .await;
    let mut r = Reconciler::new(
        ClientConfig::new(addr, CONTROL),
        ReconcilerConfig::default(),
    )
    .unwrap();
    let err = r.sync(&base_map()).await.unwrap_err();
    assert!(err.to_string().contains("again"), "{err}");
    assert_eq!(r.counters().snapshot().failures, 1);
    task.abort();
}
