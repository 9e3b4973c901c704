//! The controller at 1,000 gateways × 1,000 routes.
//!
//! - `controller/loopback_ingest`: reports over real HTTP on loopback from
//!   8 concurrent clients, each report 1,000 flows; prints reports/s and the
//!   p50/p99 latency seen by the clients (client and server share the CPUs).
//! - `controller/loopback_gateways`: 200 simulated gateways on loopback,
//!   each with its own client (connection), reporting 200 flows once a
//!   second for 10 s, spread over the second as real agents are; prints the
//!   p50/p99/max latency the gateways see (client and server share the
//!   CPUs).
//! - `controller/router_ingest`: the same reports, pre-serialised, through
//!   the axum router in-process one at a time (JSON parsing, validation,
//!   ingest, reply; no client, no socket): what one server core sustains.
//! - `controller/ingest_1000_flows` (criterion): one report through
//!   `Controller::ingest`, no HTTP.
//! - `controller/rebalance_1000x1000` (criterion): plan + solve of the map.

use std::{
    hint::black_box,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use sanlb::{
    agent::Client,
    controller::{Config, Controller, Trigger, server::Server},
    optimize::{Options, Solver},
    proto::{EnforceCounters, Flow, Mode, Report},
};

const GATEWAYS: usize = 1000;
const ROUTES: usize = 1000;
const TOKEN: &str = "bench-token";

fn target(i: usize) -> IpAddr {
    IpAddr::from([198, 18, 4 + (i / 250) as u8, (i % 250) as u8 + 1])
}

fn host(i: usize) -> IpAddr {
    IpAddr::from([198, 18, (i / 250) as u8, (i % 250) as u8 + 1])
}

fn config() -> Config {
    Config {
        // Timers out of the way: only ingest is measured.
        interval: Duration::from_secs(3600),
        window: 6,
        w_var: 1.0,
        w_change: 0.01,
        min_gain: 0.02,
        lease: Duration::from_secs(3600),
        forget_after: Duration::from_secs(3600),
        mode: Mode::Target,
        storage: vec!["198.18.0.0/15".parse().unwrap()],
        targets: vec![],
        traffic: None,
        pairs: Default::default(),
        traffic_replace: false,
        solver: Options {
            solver: Solver::Auto,
            time_limit: Duration::from_secs(10),
            seed: 1,
        },
        advise: false,
        move_cooldown: Duration::ZERO,
    }
}

/// Report `seq` of gateway `g`: 1,000 flows (one per route, from one host
/// per gateway), skewed rates, cumulative counters.
fn report(g: usize, seq: u64) -> Report {
    Report {
        gateway: format!("gw{g:04}"),
        boot_id: format!("boot-{g}"),
        seq,
        uptime_ms: seq * 1000,
        capacity: 1.0,
        applied: 0,
        owned: if seq == 0 && g < ROUTES {
            vec![target(g)]
        } else {
            vec![]
        },
        enforce: EnforceCounters::default(),
        flows: (0..ROUTES)
            .map(|r| {
                let rate = 1000 + (r as u64 * 7919 + g as u64 * 104_729) % 100_000;
                Flow {
                    initiator: host(g),
                    target: target(r),
                    to_target_bytes: rate * seq,
                    to_initiator_bytes: rate * seq / 2,
                }
            })
            .collect(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn loopback_ingest() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Controller::new(config(), None, Instant::now()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(c, TOKEN.into(), listener).unwrap();
        let url = format!("http://{}", server.addr());
        let rounds = 3u64;
        let mut all = Vec::new();
        let mut wall = Duration::ZERO;
        for seq in 0..rounds {
            let next = Arc::new(AtomicUsize::new(0));
            let t = Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let next = next.clone();
                    let client = Client::new(&url, TOKEN, Duration::from_secs(30)).unwrap();
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        loop {
                            let g = next.fetch_add(1, Ordering::Relaxed);
                            if g >= GATEWAYS {
                                return lat;
                            }
                            let r = report(g, seq);
                            let t = Instant::now();
                            client.report(&r).await.expect("report accepted");
                            lat.push(t.elapsed());
                        }
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            // Round 0 is the baselines; rounds 1.. count deltas.
            if seq > 0 {
                wall += t.elapsed();
                all.extend(lat);
            }
        }
        all.sort();
        println!(
            "controller/loopback_ingest: {GATEWAYS} gateways × {ROUTES} flows/report, 8 clients: {:.0} reports/s, latency p50 {:.2} ms, p99 {:.2} ms ({} reports)",
            all.len() as f64 / wall.as_secs_f64(),
            percentile(&all, 0.50).as_secs_f64() * 1000.0,
            percentile(&all, 0.99).as_secs_f64() * 1000.0,
            all.len()
        );
        server.stop().await;
    });
}

fn loopback_gateways() {
    const GWS: usize = 200;
    const FLOWS: usize = 200;
    const SECONDS: u64 = 10;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Controller::new(config(), None, Instant::now()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(c, TOKEN.into(), listener).unwrap();
        let url = format!("http://{}", server.addr());
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let tasks: Vec<_> = (0..GWS)
            .map(|g| {
                let client = Client::new(&url, TOKEN, Duration::from_secs(30)).unwrap();
                tokio::spawn(async move {
                    // Each gateway's second starts at its own offset.
                    let offset = Duration::from_micros((g as u64 * 1_000_000) / GWS as u64);
                    let mut lat = Vec::new();
                    for seq in 0..=SECONDS {
                        tokio::time::sleep_until(start + offset + Duration::from_secs(seq)).await;
                        let mut r = report(g, seq);
                        r.flows.truncate(FLOWS);
                        let t = Instant::now();
                        client.report(&r).await.expect("report accepted");
                        // The first is a baseline (and a new connection).
                        if seq > 0 {
                            lat.push(t.elapsed());
                        }
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        println!(
            "controller/loopback_gateways: {GWS} gateways × {FLOWS} flows, one report/s each for {SECONDS} s: latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} reports)",
            percentile(&all, 0.50).as_secs_f64() * 1000.0,
            percentile(&all, 0.99).as_secs_f64() * 1000.0,
            all.last().unwrap().as_secs_f64() * 1000.0,
            all.len()
        );
        server.stop().await;
    });
}

fn router_ingest() {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), None, t0).unwrap();
        for g in 0..GATEWAYS {
            c.ingest(&report(g, 0), t0).unwrap();
        }
        let state = sanlb::controller::http::AppState::new(c, TOKEN.into());
        let app = sanlb::controller::http::app(state);
        let mut lat = Vec::with_capacity(2 * GATEWAYS);
        let mut total = Duration::ZERO;
        for seq in 1..3 {
            let bodies: Vec<Vec<u8>> = (0..GATEWAYS).map(|g| serde_json::to_vec(&report(g, seq)).unwrap()).collect();
            for body in bodies {
                let req = Request::post("/v1/report")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Body::from(body))
                    .unwrap();
                let t = Instant::now();
                let resp = app.clone().oneshot(req).await.unwrap();
                assert!(resp.status().is_success());
                let took = t.elapsed();
                total += took;
                lat.push(took);
            }
        }
        lat.sort();
        println!(
            "controller/router_ingest: {GATEWAYS} gateways × {ROUTES} flows/report, one core: {:.0} reports/s, latency p50 {:.2} ms, p99 {:.2} ms ({} reports)",
            lat.len() as f64 / total.as_secs_f64(),
            percentile(&lat, 0.50).as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.len()
        );
    });
}

/// A controller that has heard from every gateway twice and closed an
/// interval: ready to rebalance 1,000 routes over 1,000 gateways.
fn loaded() -> Controller {
    let mut cfg = config();
    cfg.lease = Duration::from_millis(1);
    let t0 = Instant::now();
    let mut c = Controller::new(cfg, None, t0).unwrap();
    for seq in 0..2 {
        for g in 0..GATEWAYS {
            c.ingest(&report(g, seq), t0).unwrap();
        }
    }
    c.close_interval();
    // Past the grace, every gateway heard from "now".
    c.expire(t0 + Duration::from_millis(1));
    for g in 0..GATEWAYS {
        c.ingest(&report(g, 2), t0 + Duration::from_millis(1))
            .unwrap();
    }
    c
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("controller");
    group.sample_size(10);
    let mut ctl = loaded();
    let mut seq = 3;
    group.throughput(Throughput::Elements(1));
    group.bench_function("ingest_1000_flows", |b| {
        b.iter_custom(|iters| {
            let rs: Vec<Report> = (0..iters)
                .map(|i| report(i as usize % GATEWAYS, seq + i / GATEWAYS as u64))
                .collect();
            seq += iters / GATEWAYS as u64 + 1;
            let now = Instant::now();
            let t = Instant::now();
            for r in &rs {
                black_box(ctl.ingest(r, now).unwrap());
            }
            t.elapsed()
        })
    });
    let mut ctl = loaded();
    let job = ctl.start_rebalance(Trigger::Failover).expect("a rebalance");
    assert_eq!(
        (job.problem.gateways.len(), job.problem.routes.len()),
        (GATEWAYS, ROUTES)
    );
    group.throughput(Throughput::Elements(ROUTES as u64));
    group.bench_function("rebalance_1000x1000", |b| {
        b.iter(|| black_box(job.solve().unwrap()))
    });
    group.finish();
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter
        .as_deref()
        .is_none_or(|f| "controller/loopback_ingest".contains(f))
    {
        loopback_ingest();
    }
    if filter
        .as_deref()
        .is_none_or(|f| "controller/loopback_gateways".contains(f))
    {
        loopback_gateways();
    }
    if filter
        .as_deref()
        .is_none_or(|f| "controller/router_ingest".contains(f))
    {
        router_ingest();
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
