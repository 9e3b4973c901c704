//! The redirecting portal's cost.
//!
//! - `portal/redirect` (criterion): logins a portal answers per second on ONE
//!   core: the portal runs on a current-thread runtime of its own thread; an
//!   in-process client on another thread keeps 16 logins in flight over
//!   loopback (connect, send a login, read the redirect, close).
//!   `portal/baseline` is the same client against a server on the same kind
//!   of one-core runtime that reads the PDU by its length and writes a fixed
//!   redirect without parsing anything: the TCP floor. Their ratio is what
//!   the portal's codec, director and close add.
//! - `portal/logins_per_second` (printed): the two servers again in
//!   interleaved rounds, and the ratio round by round, which a shared
//!   machine's drifting load does not skew.
//! - `iscsi/parse_login`, `iscsi/encode_redirect` (criterion): the codec
//!   alone on that login: frame, parse the header and the 19 keys; build and
//!   serialise the redirect.
//! - `portal/redirect_latency` (printed; root only, as it builds a lab with
//!   tgtd): `iscsi-inq` straight to tgtd's data address against `iscsi-inq`
//!   through the portal (one redirect, then the same login), 40 runs of each
//!   interleaved: median, quartiles and range of each, and the difference of
//!   the medians.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use sanlb::{
    iscsi::{
        BHS_LEN, Keys, Limits, LoginRequest, LoginResponse, LoginStatus, Pdu, Stage, padded_len,
    },
    portal::{Portal, PortalConfig, Steer, TableDirector},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket},
    runtime::Handle,
    sync::oneshot,
};

const IN_FLIGHT: u64 = 16;

fn login() -> Vec<u8> {
    // libiscsi's first login of a normal session, in size and keys.
    let keys: Keys = [
        ("InitiatorName", "iqn.2026-11.test.sanlb:h1"),
        ("TargetName", "iqn.2026-11.test.sanlb:t1"),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]
    .into_iter()
    .collect();
    Pdu::LoginRequest(LoginRequest::new(
        Stage::Operational,
        Some(Stage::FullFeature),
        [0x80, 0, 0, 0, 0, 1],
        1,
        keys.encode(),
    ))
    .to_bytes()
}

fn data_addr() -> SocketAddr {
    "198.18.1.101:3261".parse().unwrap()
}

/// A current-thread runtime on a thread of its own: one core's worth of
/// server.
struct OneCore {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl OneCore {
    fn start() -> OneCore {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tx.send(rt.handle().clone()).unwrap();
            let _ = rt.block_on(stopped);
        });
        OneCore {
            handle: rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for OneCore {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// The floor: read one PDU by its length, write a fixed redirect, close.
async fn baseline_server(listener: TcpListener, answer: Arc<Vec<u8>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let answer = Arc::clone(&answer);
        let _ = s.set_nodelay(true); // as the portal does
        tokio::spawn(async move {
            let mut head = [0u8; BHS_LEN];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut rest = vec![0u8; padded_len(len)];
            if s.read_exact(&mut rest).await.is_err() {
                return;
            }
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
        });
    }
}

/// `n` logins against `to`, `IN_FLIGHT` at a time, each from one of many
/// loopback source addresses (so TIME_WAIT never runs out of ports).
async fn logins(to: SocketAddr, n: u64, login: Arc<Vec<u8>>) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..IN_FLIGHT {
        let login = Arc::clone(&login);
        let count = n / IN_FLIGHT + u64::from(w < n % IN_FLIGHT);
        tasks.spawn(async move {
            for i in 0..count {
                let src = Ipv4Addr::new(127, 1, (w + 1) as u8, (i % 250 + 1) as u8);
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
                let mut s = socket.connect(to).await.unwrap();
                s.write_all(&login).await.unwrap();
                let mut buf = Vec::with_capacity(128);
                loop {
                    match Pdu::decode(&buf, &Limits::default()) {
                        Ok((Pdu::LoginResponse(r), _)) => {
                            assert_eq!(r.status, LoginStatus::TARGET_MOVED_TEMPORARILY);
                            break;
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => {}
                    }
                    let mut chunk = [0u8; 256];
                    let k = s.read(&mut chunk).await.unwrap();
                    assert!(k > 0, "closed before the answer");
                    buf.extend_from_slice(&chunk[..k]);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

fn redirect(c: &mut Criterion) {
    let login = Arc::new(login());
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let portal_core = OneCore::start();
    let director = Arc::new(TableDirector::new());
    director.steer_all(Steer::Redirect(data_addr()));
    let portal = Portal::new(PortalConfig::default(), director).unwrap();
    let portal_addr = {
        let _in = portal_core.handle.enter();
        portal.listen("127.0.0.1:0".parse().unwrap()).unwrap()
    };

    let base_core = OneCore::start();
    let req = match Pdu::decode(&login, &Limits::default()).unwrap().0 {
        Pdu::LoginRequest(r) => r,
        _ => unreachable!(),
    };
    let answer =
        Arc::new(Pdu::LoginResponse(LoginResponse::redirect(&req, data_addr())).to_bytes());
    let base_addr = {
        let _in = base_core.handle.enter();
        // The portal's listening options: reuse, backlog 1024.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = socket.listen(1024).unwrap();
        let addr = l.local_addr().unwrap();
        base_core.handle.spawn(baseline_server(l, answer));
        addr
    };

    let mut g = c.benchmark_group("portal");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("baseline", |b| {
        b.iter_custom(|n| client.block_on(logins(base_addr, n, Arc::clone(&login))))
    });
    g.bench_function("redirect", |b| {
        b.iter_custom(|n| client.block_on(logins(portal_addr, n, Arc::clone(&login))))
    });
    g.finish();

    // The same, interleaved: on a shared machine the load drifts between
    // criterion's groups, so the ratio is taken round by round.
    const ROUNDS: usize = 15;
    const PER_ROUND: u64 = 2000;
    let (mut p, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let rate = |to| {
            PER_ROUND as f64
                / client
                    .block_on(logins(to, PER_ROUND, Arc::clone(&login)))
                    .as_secs_f64()
        };
        let (pr, br) = if r % 2 == 0 {
            let br = rate(base_addr);
            (rate(portal_addr), br)
        } else {
            let pr = rate(portal_addr);
            (pr, rate(base_addr))
        };
        p.push(pr);
        b.push(br);
        ratio.push(pr / br);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (pm, pmin, pmax) = median(p);
    let (bm, bmin, bmax) = median(b);
    let (rm, rmin, rmax) = median(ratio);
    println!(
        "portal/logins_per_second: {ROUNDS} interleaved rounds of {PER_ROUND}, {IN_FLIGHT} in flight, one server core"
    );
    println!("  portal    {pm:8.0}/s  ({pmin:.0}..{pmax:.0})");
    println!("  baseline  {bm:8.0}/s  ({bmin:.0}..{bmax:.0})");
    println!("  portal / baseline, median of the rounds: {rm:.2} ({rmin:.2}..{rmax:.2})");

    let m = portal.metrics();
    assert_eq!(m.redirects, m.logins);
    assert_eq!(m.rejects, Default::default(), "{m:#?}");
    drop(portal);
}

fn codec(c: &mut Criterion) {
    let login = login();
    let limits = Limits::default();
    let mut g = c.benchmark_group("iscsi");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_login", |b| {
        b.iter(|| {
            let (pdu, _) = Pdu::decode(std::hint::black_box(&login), &limits).unwrap();
            let Pdu::LoginRequest(req) = pdu else {
                unreachable!()
            };
            let keys = req.keys(&limits).unwrap();
            keys.check_unique().unwrap();
            std::hint::black_box(keys.get("TargetName").is_some())
        })
    });
    let req = match Pdu::decode(&login, &limits).unwrap().0 {
        Pdu::LoginRequest(r) => r,
        _ => unreachable!(),
    };
    let mut out = Vec::with_capacity(128);
    g.bench_function("encode_redirect", |b| {
        b.iter(|| {
            out.clear();
            LoginResponse::redirect(std::hint::black_box(&req), data_addr()).encode(&mut out);
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

/// `iscsi-inq` straight to tgtd and through the portal, in a lab.
fn redirect_latency() {
    use xtask::lab::{Lab, tgtd};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "portal/redirect_latency: skipped, the lab needs root (sudo -E cargo xtask bench portal)"
        );
        return;
    }
    const RUNS: usize = 40;
    let lab = Lab::builder()
        .hosts(1)
        .gateways(1)
        .targets(1)
        .tgtd_iscsi(&format!(
            "{},portal=0.0.0.0:{}",
            tgtd::DEFAULT_ISCSI_OPTIONS,
            data_addr().port()
        ))
        .build()
        .expect("building the lab");
    let IpAddr::V4(data_ip) = data_addr().ip() else {
        unreachable!()
    };
    lab.add_address(data_ip, "gw1", true).unwrap();
    let t = lab.targets()[0].clone();

    // The portal's runtime lives in gw1's namespace.
    let ns = std::fs::File::open(lab.gateways()[0].ns.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns(2) on a namespace descriptor we hold; it changes
            // only this thread's network namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
        })
        .build()
        .unwrap();
    let director = Arc::new(TableDirector::new());
    director.steer_all(Steer::Redirect(data_addr()));
    let d: Arc<dyn sanlb::portal::Director> = director;
    let entity = SocketAddr::new(t.addr.into(), 3260);
    let portal = rt
        .block_on(rt.spawn(async move {
            let p = Portal::new(PortalConfig::default(), d).unwrap();
            p.listen(entity).unwrap();
            p
        }))
        .unwrap();

    let host = &lab.hosts()[0];
    let direct = format!("iscsi://{}/{}/1", data_addr(), t.iqn);
    let via = t.url();
    let inq = |url: &str| {
        let start = Instant::now();
        let out = host
            .ns
            .exec("iscsi-inq", &["-i", &host.initiator, url])
            .unwrap();
        assert!(out.contains("SANLB"), "{out}");
        start.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..3 {
        inq(&direct);
        inq(&via);
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        d.push(inq(&direct));
        p.push(inq(&via));
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        (q(0.5), q(0.25), q(0.75), v[0], v[v.len() - 1])
    };
    let (dm, dq1, dq3, dmin, dmax) = stats(d);
    let (pm, pq1, pq3, pmin, pmax) = stats(p);
    println!("portal/redirect_latency: iscsi-inq, {RUNS} runs each, ms (median [q1, q3] min..max)");
    println!("  direct to tgtd      {dm:7.2} [{dq1:.2}, {dq3:.2}] {dmin:.2}..{dmax:.2}");
    println!("  through the portal  {pm:7.2} [{pq1:.2}, {pq3:.2}] {pmin:.2}..{pmax:.2}");
    println!(
        "  redirect adds       {:7.2} (difference of the medians)",
        pm - dm
    );
    let m = portal.metrics();
    assert_eq!(m.redirects, (RUNS + 3) as u64);
    drop(portal);
    rt.shutdown_timeout(Duration::from_secs(2));
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter
        .as_deref()
        .is_none_or(|f| "portal/redirect_latency".contains(f))
    {
        redirect_latency();
    }
    let mut c = Criterion::default().configure_from_args();
    codec(&mut c);
    if filter
        .as_deref()
        .is_none_or(|f| "portal/redirect".contains(f) || "portal/baseline".contains(f))
    {
        redirect(&mut c);
    }
    c.final_summary();
}
