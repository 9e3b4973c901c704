//! The optimiser against a brute-force oracle on small random problems, and
//! its edge cases.

use std::{net::IpAddr, time::Duration};

use proptest::prelude::*;
use sanlb::optimize::{
    Compiled, Gateway, OptimizeError, Options, Problem, Route, Solution, Solver, evaluate, solve,
};

const HEURISTICS: [Solver; 5] = [
    Solver::Greedy,
    Solver::Anneal,
    Solver::Genetic,
    Solver::Tabu,
    Solver::Auto,
];

/// The least cost over every valid assignment, by enumeration; `None` if
/// some route has no allowed live gateway.
fn oracle(p: &Problem) -> Option<f64> {
    let c = match Compiled::new(p) {
        Ok(c) => c,
        Err(OptimizeError::Infeasible(_)) => return None,
        Err(e) => panic!("generated an invalid problem: {e}"),
    };
    let n = p.routes.len();
    let mut idx = vec![0usize; n];
    let mut assign: Vec<usize> = (0..n).map(|r| c.allowed[r][0]).collect();
    let mut best = f64::INFINITY;
    loop {
        best = best.min(c.evaluate(&assign).cost);
        // Odometer over the allowed sets.
        let mut r = 0;
        loop {
            if r == n {
                return Some(best);
            }
            idx[r] += 1;
            if idx[r] < c.allowed[r].len() {
                assign[r] = c.allowed[r][idx[r]];
                break;
            }
            idx[r] = 0;
            assign[r] = c.allowed[r][0];
            r += 1;
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-8 * a.abs().max(b.abs()) + 1e-10
}

fn options(solver: Solver, seed: u64) -> Options {
    Options {
        solver,
        time_limit: Duration::from_secs(20),
        seed,
    }
}

fn route(i: usize, rate: f64, current: Option<&str>, allowed: Option<&[&str]>) -> Route {
    Route {
        target: IpAddr::from([198, 18, 1, i as u8]),
        host: None,
        rate,
        current: current.map(str::to_owned),
        allowed: allowed.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
    }
}

fn gateways(caps: &[f64]) -> Vec<Gateway> {
    caps.iter()
        .enumerate()
        .map(|(i, &capacity)| Gateway {
            name: format!("gw{i}"),
            capacity,
        })
        .collect()
}

/// The solution is valid for `p` and reports the figures of its assignment.
fn check_consistent(p: &Problem, s: &Solution) {
    let e = evaluate(p, &s.assignment).expect("a valid assignment");
    assert_eq!(s.cost, e.cost);
    assert_eq!(s.var_norm, e.var_norm);
    assert_eq!(s.moves, e.moves);
    assert_eq!(s.loads, e.loads);
}

fn arb_problem() -> impl Strategy<Value = Problem> {
    let caps = prop::collection::vec(
        prop_oneof![
            3 => Just(1.0),
            1 => Just(0.0),
            1 => Just(0.5),
            1 => Just(2.0),
            1 => Just(3.0),
        ],
        1..=4,
    );
    caps.prop_flat_map(|caps| {
        let k = caps.len();
        let rate = prop_oneof![
            1 => Just(0.0),
            3 => (1u32..10).prop_map(f64::from),
            2 => 0.0..1000.0f64,
        ];
        let current = prop::option::weighted(0.7, 0..k);
        // A bit mask of allowed gateways; None = all.
        let allowed = prop::option::weighted(0.3, 1u32..(1 << k));
        let routes = prop::collection::vec((rate, current, allowed), 0..=7);
        let w_var = prop_oneof![Just(0.0), Just(1.0), Just(2.5), 0.0..5.0f64];
        let w_change = prop_oneof![Just(0.0), Just(0.01), Just(0.3), Just(5.0), 0.0..1.0f64];
        (Just(caps), routes, w_var, w_change)
    })
    .prop_map(|(caps, routes, w_var, w_change)| Problem {
        routes: routes
            .into_iter()
            .enumerate()
            .map(|(i, (rate, current, mask))| Route {
                target: IpAddr::from([198, 18, 1, i as u8]),
                host: None,
                rate,
                current: current.map(|g| format!("gw{g}")),
                allowed: mask.map(|mask| {
                    (0..caps.len())
                        .filter(|g| mask & (1 << g) != 0)
                        .map(|g| format!("gw{g}"))
                        .collect()
                }),
            })
            .collect(),
        gateways: gateways(&caps),
        w_var,
        w_change,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn exact_equals_the_oracle_and_heuristics_never_beat_it(p in arb_problem(), seed in any::<u64>()) {
        let Some(best) = oracle(&p) else {
            let err = solve(&p, &options(Solver::Exact, seed)).unwrap_err();
            prop_assert!(matches!(err, OptimizeError::Infeasible(_)), "{err}");
            return Ok(());
        };
        let exact = solve(&p, &options(Solver::Exact, seed)).unwrap();
        check_consistent(&p, &exact);
        prop_assert!(exact.optimal);
        prop_assert_eq!(exact.solver, Solver::Exact);
        prop_assert!(close(exact.cost, best), "exact {} vs oracle {}", exact.cost, best);
        for solver in HEURISTICS {
            let s = solve(&p, &options(solver, seed)).unwrap();
            check_consistent(&p, &s);
            prop_assert!(s.cost >= best - 1e-8 * best.abs() - 1e-10,
                "{solver}: {} below the optimum {}", s.cost, best);
            if s.optimal {
                prop_assert!(close(s.cost, best), "{solver} claims optimal: {} vs {}", s.cost, best);
            }
        }
        // On problems this small `auto` proves its answer.
        let auto = solve(&p, &options(Solver::Auto, seed)).unwrap();
        prop_assert!(auto.optimal);
        prop_assert!(close(auto.cost, best), "auto {} vs oracle {}", auto.cost, best);
    }

    #[test]
    fn the_lower_bound_is_below_the_optimum(p in arb_problem()) {
        if let Some(best) = oracle(&p) {
            let lb = Compiled::new(&p).unwrap().lower_bound();
            prop_assert!(lb <= best + 1e-9 * best.abs() + 1e-12, "bound {lb} above optimum {best}");
        }
    }

    #[test]
    fn same_seed_same_map(p in arb_problem(), seed in any::<u64>()) {
        if Compiled::new(&p).is_ok() {
            for solver in [Solver::Anneal, Solver::Genetic, Solver::Tabu, Solver::Auto] {
                let a = solve(&p, &options(solver, seed)).unwrap();
                let b = solve(&p, &options(solver, seed)).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }
}

/// Every solver, on a problem whose optimum is known.
fn all_solvers(p: &Problem, want_cost: f64) -> Vec<Solution> {
    [Solver::Exact]
        .into_iter()
        .chain(HEURISTICS)
        .map(|solver| {
            let s = solve(p, &options(solver, 7)).unwrap();
            check_consistent(p, &s);
            assert!(
                close(s.cost, want_cost),
                "{solver}: {} vs {want_cost}",
                s.cost
            );
            s
        })
        .collect()
}

#[test]
fn one_gateway_takes_everything() {
    let p = Problem {
        gateways: gateways(&[2.0]),
        routes: (0..5).map(|i| route(i, i as f64, None, None)).collect(),
        w_var: 1.0,
        w_change: 0.01,
    };
    for s in all_solvers(&p, 0.0) {
        assert_eq!(s.assignment, vec![0; 5]);
        assert!(s.optimal);
    }
}

#[test]
fn all_rates_zero_moves_nothing() {
    let p = Problem {
        gateways: gateways(&[1.0, 1.0, 1.0]),
        routes: (0..6)
            .map(|i| route(i, 0.0, Some(["gw0", "gw1", "gw2"][i % 3]), None))
            .collect(),
        w_var: 1.0,
        w_change: 0.0,
    };
    for s in all_solvers(&p, 0.0) {
        assert_eq!(s.assignment, vec![0, 1, 2, 0, 1, 2], "{}", s.solver);
        assert_eq!(s.var_norm, 0.0);
        assert!(s.optimal);
    }
}

#[test]
fn without_a_price_on_moves_only_balance_counts() {
    // Everything is on gw0; 20 splits 10/10 only as {6,4} {5,3,2}: optimal
    // however many routes that moves.
    let p = Problem {
        gateways: gateways(&[1.0, 1.0]),
        routes: [6.0, 5.0, 4.0, 3.0, 2.0]
            .iter()
            .enumerate()
            .map(|(i, &rate)| route(i, rate, Some("gw0"), None))
            .collect(),
        w_var: 1.0,
        w_change: 0.0,
    };
    for s in all_solvers(&p, 0.0) {
        assert_eq!(s.loads, vec![10.0, 10.0], "{}", s.solver);
        assert!(s.optimal);
    }
}

#[test]
fn a_huge_price_on_moves_keeps_the_map() {
    let current = ["gw0", "gw0", "gw0", "gw1"];
    let p = Problem {
        gateways: gateways(&[1.0, 1.0]),
        routes: [5.0, 4.0, 3.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &rate)| route(i, rate, Some(current[i]), None))
            .collect(),
        w_var: 1.0,
        w_change: 1e6,
    };
    // Loads 12/1: mean 6.5, variance 30.25, var_norm 30.25/42.25.
    let stay = 30.25 / 42.25;
    for s in all_solvers(&p, stay) {
        assert_eq!(s.assignment, vec![0, 0, 0, 1], "{}", s.solver);
        assert_eq!(s.moves, 0);
    }
}

#[test]
fn pinned_routes_stay_pinned() {
    let p = Problem {
        gateways: gateways(&[1.0, 1.0, 1.0]),
        routes: vec![
            route(0, 9.0, Some("gw1"), Some(&["gw0"])),
            route(1, 1.0, None, Some(&["gw0"])),
            route(2, 2.0, Some("gw2"), Some(&["gw2"])),
        ],
        w_var: 1.0,
        w_change: 0.01,
    };
    let want = evaluate(&p, &[0, 0, 2]).unwrap().cost;
    for s in all_solvers(&p, want) {
        assert_eq!(s.assignment, vec![0, 0, 2], "{}", s.solver);
        assert_eq!(s.moves, 1);
        assert!(s.optimal);
    }
}

#[test]
fn drained_gateways_are_emptied_and_ignored() {
    // gw1 is drained: its routes must leave, and it does not count in var_norm.
    let p = Problem {
        gateways: gateways(&[1.0, 0.0, 1.0]),
        routes: vec![
            route(0, 4.0, Some("gw1"), None),
            route(1, 4.0, Some("gw1"), None),
            route(2, 4.0, Some("gw0"), None),
            route(3, 4.0, Some("gw2"), None),
        ],
        w_var: 1.0,
        w_change: 0.01,
    };
    for s in all_solvers(&p, 0.02) {
        assert_eq!(s.loads, vec![8.0, 0.0, 8.0], "{}", s.solver);
        assert_eq!(s.moves, 2);
        assert!(s.optimal);
    }
}

#[test]
fn an_unreachable_route_is_named() {
    let p = Problem {
        gateways: gateways(&[1.0, 0.0]),
        routes: vec![route(7, 1.0, None, Some(&["gw1"]))],
        w_var: 1.0,
        w_change: 0.01,
    };
    let err = solve(&p, &Options::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "route 198.18.1.7: no allowed gateway with capacity > 0"
    );
}

#[test]
fn exact_proves_ten_routes_on_four_unequal_gateways() {
    let rates = [90.0, 75.5, 60.0, 44.0, 41.0, 30.0, 22.5, 9.0, 3.5, 1.0];
    let names = ["gw0", "gw1", "gw2", "gw3"];
    let p = Problem {
        gateways: gateways(&[1.0, 1.0, 2.0, 0.5]),
        routes: rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| route(i, rate, Some(names[i % 3]), None))
            .collect(),
        w_var: 1.0,
        w_change: 0.001,
    };
    let s = solve(&p, &options(Solver::Exact, 0)).unwrap();
    assert!(s.optimal);
    let best = oracle(&p).unwrap();
    assert!(close(s.cost, best), "{} vs {best}", s.cost);
}

/// Magnitudes from the smallest subnormal to f64::MAX.
fn extreme() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(5e-324),
        Just(1e-300),
        Just(1e-160),
        Just(1e-6),
        Just(1.0),
        Just(1e6),
        Just(1e160),
        Just(1e200),
        Just(1e300),
        Just(f64::MAX),
        (1e-9f64..1e9),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Issue 11, item 7: extreme numbers broke the optimiser (capacity
    /// 5e-324 indexed usize::MAX; capacities {1e200, 1} and rates 1e-160 or
    /// ≥ 1e160 panicked or gave NaN costs reported as optimal). Every
    /// accepted problem now has a finite cost, and a refused one is refused
    /// with its reason; nothing panics.
    #[test]
    fn regression_11_7_extreme_magnitudes_give_finite_costs_or_a_clear_refusal(
        caps in prop::collection::vec(prop_oneof![Just(0.0), extreme()], 1..5),
        rates in prop::collection::vec(prop_oneof![Just(0.0), extreme()], 1..7),
        current in prop::collection::vec(any::<Option<prop::sample::Index>>(), 7),
        w_change in prop_oneof![Just(0.0), Just(0.01), extreme()],
        solver in prop::sample::select(vec![Solver::Auto, Solver::Exact, Solver::Greedy, Solver::Tabu, Solver::Anneal, Solver::Genetic]),
    ) {
        let gws = gateways(&caps);
        let names: Vec<String> = gws.iter().map(|g| g.name.clone()).collect();
        let p = Problem {
            routes: rates
                .iter()
                .enumerate()
                .map(|(i, &r)| {
                    let cur = current[i].map(|ix| names[ix.index(names.len())].as_str());
                    route(i, r, cur, None)
                })
                .collect(),
            gateways: gws,
            w_var: 1.0,
            w_change,
        };
        let o = Options { solver, time_limit: Duration::from_secs(5), seed: 1 };
        match solve(&p, &o) {
            Ok(s) => {
                prop_assert!(s.cost.is_finite() && s.var_norm.is_finite(), "{s:?}");
                prop_assert!(s.var_norm >= 0.0);
                prop_assert!(s.loads.iter().all(|l| !l.is_nan()), "{s:?}");
                let e = evaluate(&p, &s.assignment).unwrap();
                prop_assert!(close(e.cost, s.cost), "{} vs {}", e.cost, s.cost);
                let f = sanlb::optimize::in_force(&p);
                prop_assert!(f.var_norm.is_finite() && f.cost.is_finite());
            }
            Err(e) => prop_assert!(
                matches!(e, OptimizeError::CapacitySpan { .. } | OptimizeError::Infeasible(_))
                    || matches!(e, OptimizeError::InvalidWeight { value, .. } if value > sanlb::optimize::MAX_WEIGHT),
                "{e}"
            ),
        }
    }
}
