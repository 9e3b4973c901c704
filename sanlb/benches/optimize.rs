//! Time and quality of the optimiser's solvers (docs/optimiser.md).
//!
//! Before criterion times each solver, a quality table is printed to stderr:
//! per N × k and solver, one run's time, max/mean utilisation against the
//! bound max(1, largest route / mean load), var_norm and cost; then the exact
//! search's proof times on random problems with N ≤ 12, k ≤ 4; then a
//! rebalancing run (a map in force, drifted rates, default weights); then
//! the "crowded" table: thousands of routes on a few gateways with a small
//! move cost, `auto` at 100 ms and at its default 1 s against a plain
//! steepest descent from the map in force (the baseline it must not lose to).
//! Rates are Pareto-distributed (shape 1.5: the top 1 % of routes carry about a fifth of the traffic), scale 1.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};
use sanlb::optimize::{Gateway, Options, Problem, Route, Solution, Solver, solve};

const SIZES: [usize; 3] = [100, 1_000, 10_000];
const GATEWAYS: [usize; 3] = [4, 16, 64];
const SOLVERS: [Solver; 5] = [
    Solver::Greedy,
    Solver::Tabu,
    Solver::Anneal,
    Solver::Genetic,
    Solver::Auto,
];
const PARETO_SHAPE: f64 = 1.5;

fn pareto(rng: &mut Xoshiro256PlusPlus) -> f64 {
    // Inverse transform; 1 − U is in (0, 1], so the rate is finite.
    (1.0 - rng.random::<f64>()).powf(-1.0 / PARETO_SHAPE)
}

fn target(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
    ))
}

/// N routes with Pareto rates, k equal gateways, no map in force.
fn problem(n: usize, k: usize, seed: u64) -> Problem {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    Problem {
        gateways: (0..k)
            .map(|g| Gateway {
                name: format!("gw{g}"),
                capacity: 1.0,
            })
            .collect(),
        routes: (0..n)
            .map(|i| Route {
                target: target(i),
                host: None,
                rate: pareto(&mut rng),
                current: None,
                allowed: None,
            })
            .collect(),
        w_var: 1.0,
        w_change: 0.01,
    }
}

fn options(solver: Solver) -> Options {
    Options {
        solver,
        time_limit: Duration::from_secs(10),
        seed: 1,
    }
}

/// max/mean utilisation and the bound max(1, largest route / mean load).
fn balance(p: &Problem, s: &Solution) -> (f64, f64) {
    let mean = s.loads.iter().sum::<f64>() / s.loads.len() as f64;
    let max = s.loads.iter().copied().fold(0.0, f64::max);
    let largest = p.routes.iter().map(|r| r.rate).fold(0.0, f64::max);
    (max / mean, (largest / mean).max(1.0))
}

fn quality_table() {
    eprintln!(
        "\n| N | k | solver | time (one run) | max/mean | bound | excess over bound | var_norm |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for n in SIZES {
        for k in GATEWAYS {
            let p = problem(n, k, 42);
            for solver in SOLVERS {
                let t = Instant::now();
                let s = solve(&p, &options(solver)).expect("a valid problem");
                let dt = t.elapsed();
                let (ratio, bound) = balance(&p, &s);
                eprintln!(
                    "| {n} | {k} | {solver}{} | {:.2} ms | {ratio:.6} | {bound:.6} | {:.4} % | {:.3e} |",
                    if solver == Solver::Auto {
                        format!(" ({})", s.solver)
                    } else {
                        String::new()
                    },
                    dt.as_secs_f64() * 1e3,
                    (ratio / bound - 1.0) * 100.0,
                    s.var_norm,
                );
            }
        }
    }
}

/// Random problems with a map in force, reachability limits and unequal
/// capacities, as hard for the exact search as this size gets.
fn exact_problem(n: usize, k: usize, seed: u64) -> Problem {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut p = problem(n, k, seed);
    for g in &mut p.gateways {
        g.capacity = [1.0, 1.0, 2.0, 0.5][rng.random_range(0..4)];
    }
    for r in &mut p.routes {
        r.current = Some(format!("gw{}", rng.random_range(0..k)));
        if rng.random_bool(0.2) {
            let keep: Vec<String> = (0..k)
                .filter(|_| rng.random_bool(0.7))
                .map(|g| format!("gw{g}"))
                .collect();
            if !keep.is_empty() {
                r.allowed = Some(keep);
            }
        }
    }
    p
}

fn exact_table() {
    const INSTANCES: u64 = 20;
    eprintln!("\n| N | k | instances | proven | worst time | mean time |");
    eprintln!("|---|---|---|---|---|---|");
    for n in [4, 8, 10, 12] {
        for k in [2, 3, 4] {
            let (mut worst, mut total, mut proven) = (Duration::ZERO, Duration::ZERO, 0);
            for seed in 0..INSTANCES {
                let p = exact_problem(n, k, seed);
                let t = Instant::now();
                let s = solve(&p, &options(Solver::Exact)).expect("a valid problem");
                let dt = t.elapsed();
                worst = worst.max(dt);
                total += dt;
                proven += usize::from(s.optimal);
            }
            eprintln!(
                "| {n} | {k} | {INSTANCES} | {proven} | {:.2} ms | {:.2} ms |",
                worst.as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3 / INSTANCES as f64
            );
        }
    }
}

/// Yesterday's optimal map, today's rates drifted by up to ±30 %.
fn rebalance_problem(n: usize, k: usize) -> Problem {
    let mut p = problem(n, k, 7);
    let s = solve(&p, &options(Solver::Greedy)).expect("a valid problem");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
    for (r, &g) in p.routes.iter_mut().zip(&s.assignment) {
        r.current = Some(format!("gw{g}"));
        r.rate *= rng.random_range(0.7..1.3);
    }
    p
}

fn rebalance_table() {
    eprintln!(
        "\n| N | k | solver | time | var_norm before | after | moves | cost before | after |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for (n, k) in [(100, 4), (1_000, 16), (10_000, 64)] {
        let p = rebalance_problem(n, k);
        let before = sanlb::optimize::Compiled::new(&p).expect("a valid problem");
        let stay: Vec<usize> = before
            .current
            .iter()
            .map(|c| c.expect("a current map"))
            .collect();
        let e = before.evaluate(&stay);
        for solver in SOLVERS {
            let t = Instant::now();
            let s = solve(&p, &options(solver)).expect("a valid problem");
            eprintln!(
                "| {n} | {k} | {solver}{} | {:.2} ms | {:.3e} | {:.3e} | {} | {:.4} | {:.4} |",
                if solver == Solver::Auto {
                    format!(" ({})", s.solver)
                } else {
                    String::new()
                },
                t.elapsed().as_secs_f64() * 1e3,
                e.var_norm,
                s.var_norm,
                s.moves,
                e.cost,
                s.cost,
            );
        }
    }
}

/// Thousands of routes all on the first `on` of k gateways, a small move
/// cost: the case where a change-aware solver must move many routes but
/// should pick the ones that pay most.
fn crowded_problem(n: usize, k: usize, on: usize, w_change: f64) -> Problem {
    let mut p = problem(n, k, 11);
    for (i, r) in p.routes.iter_mut().enumerate() {
        r.current = Some(format!("gw{}", i % on));
    }
    p.w_change = w_change;
    p
}

/// The baseline `auto` must never lose to: plain steepest descent from the
/// map in force — apply the single move that lowers the cost most, until
/// none does (equal capacities, no reachability limits: what
/// `crowded_problem` builds). Returns the cost and the moves.
fn steepest_descent(p: &Problem) -> (f64, usize) {
    let k = p.gateways.len();
    let n = p.routes.len();
    let rate: Vec<f64> = p.routes.iter().map(|r| r.rate).collect();
    let home: Vec<usize> = p
        .routes
        .iter()
        .map(|r| {
            r.current.as_deref().expect("a current map")[2..]
                .parse()
                .expect("gwN")
        })
        .collect();
    let mut assign = home.clone();
    let mut load = vec![0.0; k];
    for (r, &g) in assign.iter().enumerate() {
        load[g] += rate[r];
    }
    let total: f64 = rate.iter().sum();
    let mean = total / k as f64;
    // var_norm = (Σu²/k − mean²)/mean²; a move of x from a to b changes Σu²
    // by 2x(u_b − u_a) + 2x².
    let scale = p.w_var / (k as f64 * mean * mean);
    loop {
        let mut best = (-1e-12, usize::MAX, 0);
        for r in 0..n {
            let a = assign[r];
            for b in 0..k {
                if b == a {
                    continue;
                }
                let x = rate[r];
                let dvar = scale * (2.0 * x * (load[b] - load[a]) + 2.0 * x * x);
                let dmove = match (a == home[r], b == home[r]) {
                    (true, false) => p.w_change,
                    (false, true) => -p.w_change,
                    _ => 0.0,
                };
                if dvar + dmove < best.0 {
                    best = (dvar + dmove, r, b);
                }
            }
        }
        if best.1 == usize::MAX {
            break;
        }
        let (_, r, b) = best;
        load[assign[r]] -= rate[r];
        load[b] += rate[r];
        assign[r] = b;
    }
    let var: f64 = load.iter().map(|l| (l / mean - 1.0).powi(2)).sum::<f64>() / k as f64;
    let moves = assign.iter().zip(&home).filter(|(a, h)| a != h).count();
    (p.w_var * var + p.w_change * moves as f64, moves)
}

fn crowded_table() {
    eprintln!(
        "\n| N | k | on | w_change | steepest descent cost (moves) | auto 100 ms cost (moves, time) | auto 1 s | ratio auto/steepest |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for (n, k, on, w) in [
        (2_000, 16, 2, 1e-5),
        (5_000, 16, 2, 1e-5),
        (5_000, 64, 4, 1e-6),
        (10_000, 32, 2, 1e-6),
    ] {
        let p = crowded_problem(n, k, on, w);
        let (sd, sd_moves) = steepest_descent(&p);
        let run = |limit: Duration| {
            let t = Instant::now();
            let s = solve(
                &p,
                &Options {
                    solver: Solver::Auto,
                    time_limit: limit,
                    seed: 1,
                },
            )
            .expect("a valid problem");
            (s, t.elapsed())
        };
        let (fast, fast_t) = run(Duration::from_millis(100));
        let (full, full_t) = run(Duration::from_secs(1));
        eprintln!(
            "| {n} | {k} | {on} | {w:e} | {sd:.6} ({sd_moves}) | {:.6} ({}, {:.0} ms) | {:.6} ({}, {:.0} ms) | {:.4} / {:.4} |",
            fast.cost,
            fast.moves,
            fast_t.as_secs_f64() * 1e3,
            full.cost,
            full.moves,
            full_t.as_secs_f64() * 1e3,
            fast.cost / sd,
            full.cost / sd,
        );
    }
}

fn bench(c: &mut Criterion) {
    if std::env::var_os("CROWDED_ONLY").is_some() {
        crowded_table();
        return;
    }
    quality_table();
    exact_table();
    rebalance_table();
    crowded_table();
    let mut group = c.benchmark_group("optimize");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        for k in GATEWAYS {
            let p = problem(n, k, 42);
            for solver in SOLVERS {
                group.bench_with_input(
                    BenchmarkId::new(solver.to_string(), format!("N{n}_k{k}")),
                    &p,
                    |b, p| b.iter(|| solve(black_box(p), &options(solver))),
                );
            }
        }
    }
    for (n, k) in [(8, 4), (12, 3), (12, 4)] {
        let p = exact_problem(n, k, 0);
        group.bench_with_input(
            BenchmarkId::new("exact", format!("N{n}_k{k}")),
            &p,
            |b, p| b.iter(|| solve(black_box(p), &options(Solver::Exact))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
