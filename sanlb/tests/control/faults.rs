//! Issue 14 on loopback: a real controller and real agents whose addresses
//! and data path live in the fake world (probes answer from what each
//! gateway holds there). A killed agent's gateway keeps serving and keeps
//! its addresses; a gateway whose service died, or whose link went down,
//! loses them; drains and hand-offs move addresses break-before-make;
//! duplicates are reported and resolved; the new endpoints refuse bad
//! input.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use sanlb::{
    agent::{FaultConfig, OnStop},
    controller::{
        Controller,
        http::{AppState, app},
        server::Server,
    },
    proto::{DrainKind, DrainRequest, GatewayState, MacAddr, Ownership, Status},
};
use tower::ServiceExt as _;

use crate::fakes::*;

const GWS: [&str; 3] = ["gw1", "gw2", "gw3"];

/// Agents of these tests: self-probes every 300 ms, short probe windows.
fn quick() -> FaultConfig {
    FaultConfig {
        self_probe: Duration::from_millis(300),
        probe_window: Duration::from_millis(20),
        ..FaultConfig::default()
    }
}

fn demand() -> Vec<(IpAddr, f64)> {
    [30, 20, 15, 10, 8, 5]
        .iter()
        .enumerate()
        .map(|(i, r)| (target(i as u8 + 1), f64::from(*r) * 10_000.0))
        .collect()
}

struct Lab {
    world: World,
    server: Server,
    agents: BTreeMap<String, RunningAgent>,
    targets: Vec<IpAddr>,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// Only failovers change the map once it is placed (no periodic
    /// rebalance gains enough), so that every move seen is the fault's.
    async fn start() -> Self {
        Self::start_with(&[], false).await
    }

    /// Gateways named in `handoff` hand off on stop; with `balancing` the
    /// periodic rebalances act as usual.
    async fn start_with(handoff: &[&str], balancing: bool) -> Self {
        let world = World::default();
        world.set_demand(&demand());
        let targets: Vec<IpAddr> = demand().iter().map(|d| d.0).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(&targets);
        if !balancing {
            cfg.min_gain = 1e9;
        }
        let server = start(cfg, &dir.path().join("state.json"), 0).await;
        let mut lab = Self {
            world,
            server,
            agents: BTreeMap::new(),
            targets,
            _dir: dir,
        };
        for g in GWS {
            let mut f = quick();
            if handoff.contains(&g) {
                f.on_stop = OnStop::Handoff;
            }
            lab.spawn(g, f);
        }
        lab.placed().await;
        lab
    }

    fn spawn(&mut self, gw: &str, f: FaultConfig) {
        let port = self.server.addr().port();
        let a = spawn_agent_with(&self.world, gw, port, f);
        self.agents.insert(gw.into(), a);
    }

    async fn kill(&mut self, gw: &str) {
        self.agents.remove(gw).unwrap().kill().await;
    }

    fn status(&self) -> Status {
        status(&self.server)
    }

    fn state(&self, gw: &str) -> GatewayState {
        self.status()
            .gateways
            .into_iter()
            .find(|g| g.name == gw)
            .unwrap()
            .health
            .state
    }

    /// Owner of every route.
    fn assigned(&self) -> BTreeMap<IpAddr, Option<String>> {
        self.status()
            .map
            .into_iter()
            .map(|m| (m.target, m.ownership.assigned().map(str::to_owned)))
            .collect()
    }

    /// Waits until every route is owned and held once among `among`.
    async fn placed_among(&self, among: &[&str]) {
        eventually(
            Duration::from_secs(15),
            "every address owned and held once",
            || {
                self.status()
                    .map
                    .iter()
                    .all(|m| matches!(m.ownership, Ownership::Owned { .. }))
                    && held_once(&self.world, among, &self.targets)
            },
        )
        .await;
    }

    async fn placed(&self) {
        self.placed_among(&GWS).await;
    }

    /// A gateway the map gives routes, and one address of it.
    fn busy(&self) -> (String, IpAddr) {
        self.assigned()
            .into_iter()
            .find_map(|(t, g)| g.map(|g| (g, t)))
            .unwrap()
    }

    async fn stop(self) {
        for (_, a) in self.agents {
            a.kill().await;
        }
        self.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_1_a_killed_agent_keeps_its_addresses_while_its_gateway_serves() {
    let mut lab = Lab::start().await;
    let (gw, _) = lab.busy();
    let before = lab.assigned();
    let held = lab.world.all_held();
    let moves = lab.server.state().lock().events().moves;
    // kill -9 of the agent alone: the gateway holds and serves on.
    lab.kill(&gw).await;
    let killed = Instant::now();
    eventually(
        Duration::from_secs(5),
        "agent silent, gateway serving",
        || lab.state(&gw) == GatewayState::Serving,
    )
    .await;
    eprintln!(
        "{gw} judged serving {:?} after its agent died",
        killed.elapsed()
    );
    // Several leases and re-probes later nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lab.state(&gw), GatewayState::Serving);
    assert_eq!(lab.assigned(), before);
    assert_eq!(lab.world.all_held(), held);
    assert_eq!(lab.server.state().lock().events().moves, moves);
    assert_eq!(lab.server.state().lock().events().deaths, 0);
    let st = lab.status();
    let g = st.gateways.iter().find(|g| g.name == gw).unwrap();
    assert!(!g.alive && !g.health.serving.is_empty(), "{g:?}");
    // Its agent comes back: up, nothing moves.
    lab.spawn(&gw, quick());
    eventually(Duration::from_secs(3), "up again", || {
        lab.state(&gw) == GatewayState::Up
    })
    .await;
    assert_eq!(lab.assigned(), before);
    assert!(
        lab.world.violations().is_empty(),
        "{:?}",
        lab.world.violations()
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_1_a_gateway_whose_service_died_fails_over_and_the_duplicate_is_reported() {
    let mut lab = Lab::start().await;
    let (gw, addr) = lab.busy();
    // Every process of the gateway dies: agent and storage service; its
    // kernel still answers for its addresses.
    lab.kill(&gw).await;
    lab.world.stop_service(&gw);
    eventually(Duration::from_secs(5), "declared dead", || {
        lab.state(&gw) == GatewayState::Dead
    })
    .await;
    eventually(Duration::from_secs(5), "its routes owned elsewhere", || {
        lab.assigned()
            .values()
            .all(|g| g.as_deref() != Some(gw.as_str()))
    })
    .await;
    // The new owner of `addr` hears the old one: a conflict, reported with
    // the old gateway's name, and announced over.
    let owner = lab.assigned()[&addr].clone().unwrap();
    eventually(Duration::from_secs(5), "the conflict reported", || {
        lab.status().gateways.iter().any(|g| {
            g.name == owner
                && g.health
                    .conflicts
                    .iter()
                    .any(|c| c.address == addr && c.others == [(mac_of(&gw), Some(gw.clone()))])
        })
    })
    .await;
    eventually(Duration::from_secs(3), "announced again", || {
        lab.world.reannounced().contains(&(owner.clone(), addr))
    })
    .await;
    // The machine goes away: the conflict clears.
    lab.world.crash(&gw);
    eventually(Duration::from_secs(5), "the conflict cleared", || {
        lab.status()
            .gateways
            .iter()
            .all(|g| g.health.conflicts.is_empty())
    })
    .await;
    assert!(lab.server.state().lock().events().faults.conflicts >= 1);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_2_a_link_down_moves_the_addresses_at_once() {
    let lab = Lab::start().await;
    let (gw, _) = lab.busy();
    let down = Instant::now();
    lab.world.set_link(&gw, false);
    let others: Vec<&str> = GWS.iter().copied().filter(|g| *g != gw).collect();
    lab.placed_among(&others).await;
    let took = down.elapsed();
    eprintln!("link down to every address held elsewhere: {took:?}");
    assert_eq!(lab.state(&gw), GatewayState::LinkDown);
    // Its agent released them (its share lacks them).
    eventually(
        Duration::from_secs(3),
        "released by the link-down gateway",
        || lab.world.held(&gw).is_empty(),
    )
    .await;
    // The only overlap ever seen was with the link-down gateway, which
    // could not answer for them.
    assert!(
        lab.world
            .violations()
            .iter()
            .all(|(_, _, other)| *other == gw),
        "{:?}",
        lab.world.violations()
    );
    lab.world.set_link(&gw, true);
    eventually(Duration::from_secs(3), "up again", || {
        lab.state(&gw) == GatewayState::Up
    })
    .await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_3_drain_and_undrain_move_break_before_make() {
    let lab = Lab::start_with(&[], true).await;
    let (gw, _) = lab.busy();
    let c = client(lab.server.addr().port());
    let req = DrainRequest {
        gateway: gw.clone(),
        boot_id: None,
    };
    let r = c.drain(&req).await.unwrap();
    assert_eq!(r.drained, Some(DrainKind::Operator));
    let others: Vec<&str> = GWS.iter().copied().filter(|g| *g != gw).collect();
    lab.placed_among(&others).await;
    assert!(lab.world.held(&gw).is_empty());
    assert!(
        lab.assigned()
            .values()
            .all(|g| g.as_deref() != Some(gw.as_str()))
    );
    // It stays empty.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lab.world.held(&gw).is_empty());
    let st = lab.status();
    let g = st.gateways.iter().find(|g| g.name == gw).unwrap();
    assert_eq!(g.health.drained, Some(DrainKind::Operator));
    assert!(
        sanlb::controller::metrics::render(&lab.server.state().lock(), Instant::now())
            .contains(&format!("sanlb_gateway_drained{{gateway=\"{gw}\"}} 1"))
    );
    let r = c.undrain(&req).await.unwrap();
    assert_eq!(r.drained, None);
    eventually(
        Duration::from_secs(20),
        "routes again after the undrain",
        || !lab.world.held(&gw).is_empty(),
    )
    .await;
    assert!(
        lab.world.violations().is_empty(),
        "{:?}",
        lab.world.violations()
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_3_an_agent_that_hands_off_stops_empty() {
    let mut lab = Lab::start_with(&GWS, false).await;
    let (gw, _) = lab.busy();
    let stopping = Instant::now();
    lab.kill(&gw).await;
    eprintln!("hand-off took {:?}", stopping.elapsed());
    assert!(
        lab.world.held(&gw).is_empty(),
        "stopped holding {:?}",
        lab.world.held(&gw)
    );
    let others: Vec<&str> = GWS.iter().copied().filter(|g| *g != gw).collect();
    lab.placed_among(&others).await;
    let st = lab.status();
    let g = st.gateways.iter().find(|g| g.name == gw).unwrap();
    assert_eq!(g.health.drained, Some(DrainKind::Handoff));
    // Silent and holding nothing: dead, nothing to probe.
    eventually(Duration::from_secs(5), "dead", || {
        lab.state(&gw) == GatewayState::Dead
    })
    .await;
    // The next run ends the hand-off drain.
    lab.spawn(&gw, quick());
    eventually(Duration::from_secs(5), "the hand-off drain ended", || {
        lab.status()
            .gateways
            .iter()
            .any(|g| g.name == gw && g.alive && g.health.drained.is_none())
    })
    .await;
    assert!(
        lab.world.violations().is_empty(),
        "{:?}",
        lab.world.violations()
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_4_an_address_added_by_hand_on_another_gateway_is_removed() {
    let lab = Lab::start().await;
    let (owner, addr) = lab.busy();
    let intruder = GWS.iter().find(|g| **g != owner).unwrap().to_string();
    let added = Instant::now();
    lab.world.add_by_hand(&intruder, addr);
    eventually(Duration::from_secs(5), "the conflict reported", || {
        lab.status().gateways.iter().any(|g| {
            g.name == owner
                && g.health.conflicts.iter().any(|c| {
                    c.address == addr && c.others == [(mac_of(&intruder), Some(intruder.clone()))]
                })
        })
    })
    .await;
    eprintln!("duplicate reported after {:?}", added.elapsed());
    eventually(
        Duration::from_secs(5),
        "removed on the controller's order",
        || lab.world.by_hand(&intruder).is_empty(),
    )
    .await;
    eventually(Duration::from_secs(5), "the conflict cleared", || {
        lab.status()
            .gateways
            .iter()
            .all(|g| g.health.conflicts.is_empty())
    })
    .await;
    eprintln!("duplicate resolved after {:?}", added.elapsed());
    assert!(lab.world.reannounced().contains(&(owner.clone(), addr)));
    let ev = lab.server.state().lock().events().faults.clone();
    assert!(ev.conflicts >= 1 && ev.release_orders >= 1, "{ev:?}");
    // The owner kept it.
    assert!(lab.world.held(&owner).contains(&addr));
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_4_a_foreign_station_is_announced_over_until_it_leaves() {
    let lab = Lab::start().await;
    let (owner, addr) = lab.busy();
    let foreign = MacAddr([0x02, 0xee, 0, 0, 0, 1]);
    lab.world.set_foreign(addr, Some(foreign));
    eventually(Duration::from_secs(5), "the conflict reported", || {
        lab.status().gateways.iter().any(|g| {
            g.name == owner
                && g.health
                    .conflicts
                    .iter()
                    .any(|c| c.address == addr && c.others == [(foreign, None)])
        })
    })
    .await;
    // Announced again every self-probe round while it lasts.
    eventually(Duration::from_secs(5), "announced again and again", || {
        lab.world
            .reannounced()
            .iter()
            .filter(|r| **r == (owner.clone(), addr))
            .count()
            >= 3
    })
    .await;
    assert_eq!(lab.server.state().lock().events().faults.release_orders, 0);
    lab.world.set_foreign(addr, None);
    eventually(Duration::from_secs(5), "the conflict cleared", || {
        lab.status()
            .gateways
            .iter()
            .all(|g| g.health.conflicts.is_empty())
    })
    .await;
    assert!(lab.world.held(&owner).contains(&addr));
    lab.stop().await;
}

async fn call(
    state: &Arc<AppState>,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app(state.clone())
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn regression_14_the_new_endpoints_refuse_bad_input_and_change_nothing() {
    let c = Controller::new(config(&[target(1)]), None, Instant::now()).unwrap();
    let state = AppState::new(c, TOKEN.into());
    let report = r#"{"gateway":"gw1","boot_id":"b1","seq":0,"uptime_ms":0,"applied":0,"owned":[],"flows":[]}"#;
    let mut req = Request::post("/v1/report").header(header::CONTENT_TYPE, "application/json");
    req = req.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let resp = app(state.clone())
        .oneshot(req.body(Body::from(report)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let before = state.lock().status(Instant::now());
    let ok = Some(TOKEN);
    for (uri, token, body, want, reason) in [
        (
            "/v1/heartbeat",
            None,
            r#"{"gateway":"gw1","boot_id":"b1","seq":1,"link_up":false}"#,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "/v1/heartbeat",
            Some("wrong"),
            r#"{}"#,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "/v1/heartbeat",
            ok,
            "{",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/heartbeat",
            ok,
            r#"["gw1","b1",1,false]"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "/v1/heartbeat",
            ok,
            r#"{"gateway":"gw1","boot_id":"b1","seq":1,"link_up":false,"x":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "/v1/heartbeat",
            ok,
            r#"{"gateway":"g w","boot_id":"b1","seq":1,"link_up":false}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "gateway",
        ),
        (
            "/v1/heartbeat",
            ok,
            r#"{"gateway":"gw1","boot_id":"b1","seq":1,"link_up":false,"mac":"ff:ff:ff:ff:ff:ff"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "mac",
        ),
        (
            "/v1/heartbeat",
            ok,
            r#"{"gateway":"gw1","boot_id":"b2","seq":1,"link_up":false}"#,
            StatusCode::CONFLICT,
            "boot_conflict",
        ),
        (
            "/v1/drain",
            ok,
            r#"{"gateway":"gw9"}"#,
            StatusCode::NOT_FOUND,
            "drain_unknown_gateway",
        ),
        (
            "/v1/drain",
            ok,
            r#"{"gateway":"gw1","boot_id":"b2"}"#,
            StatusCode::CONFLICT,
            "boot_conflict",
        ),
        (
            "/v1/drain",
            ok,
            r#"{"gateway":"gw1","by":"me"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "/v1/undrain",
            ok,
            r#"{"gateway":""}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "gateway",
        ),
    ] {
        let errors = |s: &Status| {
            s.report_errors
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n)
        };
        let was = errors(&state.lock().status(Instant::now()));
        let (status, body) = call(&state, uri, token, body).await;
        assert_eq!(status, want, "{uri} {body}");
        assert_eq!(
            errors(&state.lock().status(Instant::now())),
            was + 1,
            "{uri}: counted as {reason}"
        );
    }
    let after = state.lock().status(Instant::now());
    let (mut a, mut b) = (
        after.gateways[0].health.clone(),
        before.gateways[0].health.clone(),
    );
    (a.state_ms, b.state_ms) = (0, 0);
    assert_eq!(a, b);
    assert_eq!(after.generation, before.generation);
    // A good heartbeat and a drain by the operator.
    let (status, body) = call(
        &state,
        "/v1/heartbeat",
        ok,
        r#"{"gateway":"gw1","boot_id":"b1","seq":1,"link_up":true,"mac":"02:00:00:00:00:01"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""known":true"#), "{body}");
    let (status, body) = call(&state, "/v1/drain", ok, r#"{"gateway":"gw1"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""drained":"operator""#), "{body}");
}
