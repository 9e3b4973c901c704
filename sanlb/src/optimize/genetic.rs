//! A steady-state genetic (memetic) algorithm.
//!
//! A genome is an assignment, so every gene is an allowed gateway and no child
//! is ever invalid. The population starts from the greedy solution, the map
//! in force (when there is one) and mutants of the greedy solution. Each
//! child takes every route's gateway from one of two parents chosen by
//! 3-way tournaments (uniform crossover), gets a few random moves (mutation)
//! and a short local search (which repairs the balance crossover upsets),
//! and replaces the worst member if it is better and not a duplicate. The
//! number of children is fixed by the problem's size, so the same seed gives
//! the same result.

use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};

use super::{
    anneal::mobile,
    state::{Deadline, Model, State, descend, descend_routes, tol},
};

/// Route-gateway pairs examined by local search, in total (the population's
/// first local search covers every route; a child's only the routes its
/// parents disagree on or mutation touched). Sets the population size and
/// the number of children.
const WORK: u64 = 4_000_000;
/// Bounds of the population size.
const MIN_POPULATION: u64 = 4;
const MAX_POPULATION: u64 = 24;
/// Bounds of the number of children.
const MIN_CHILDREN: u64 = 16;
const MAX_CHILDREN: u64 = 500;
/// Local search passes per member.
const MEMBER_PASSES: usize = 2;
/// Passes of local search for the winner.
const POLISH_PASSES: usize = 64;

/// `count` random moves of mobile routes, noted in `touched`.
fn mutate(
    m: &Model,
    st: &mut State,
    mobile: &[usize],
    count: usize,
    touched: &mut Vec<usize>,
    rng: &mut Xoshiro256PlusPlus,
) {
    for _ in 0..count {
        let r = mobile[rng.random_range(0..mobile.len())];
        let allowed = &m.c.allowed[r];
        st.apply_move(m, r, allowed[rng.random_range(0..allowed.len())]);
        touched.push(r);
    }
}

/// Evolves a population seeded with `start`; returns the best map (never
/// worse than `start`).
pub(crate) fn solve(m: &Model, start: &State, seed: u64, deadline: &Deadline) -> State {
    let mobile = mobile(m);
    if mobile.is_empty() || m.n < 2.0 {
        return start.clone();
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6e6e_7e71);
    let pass = (m.routes() * m.gateways()) as u64 * MEMBER_PASSES as u64;
    let size = (WORK / 2 / pass).clamp(MIN_POPULATION, MAX_POPULATION) as usize;
    // A child costs about 20·N: crossover, its sums, a local search on the
    // routes it changed and the swaps that follow.
    let children = (WORK / 2 / (20 * m.routes() as u64).max(1)).clamp(MIN_CHILDREN, MAX_CHILDREN);
    let strength = (mobile.len() / 10).max(1);
    let mut touched = Vec::new();

    let mut pop: Vec<(f64, State)> = vec![(start.cost(m), start.clone())];
    if m.c.current.iter().any(Option::is_some) {
        let mut stay = State::new(m, (0..m.routes()).map(|r| m.home(r)).collect());
        descend(m, &mut stay, MEMBER_PASSES, deadline);
        pop.push((stay.cost(m), stay));
    }
    while pop.len() < size && !deadline.passed() {
        let mut st = start.clone();
        mutate(m, &mut st, &mobile, strength, &mut touched, &mut rng);
        descend(m, &mut st, MEMBER_PASSES, deadline);
        pop.push((st.cost(m), st));
    }
    let tournament = |pop: &[(f64, State)], rng: &mut Xoshiro256PlusPlus| {
        (0..3)
            .map(|_| rng.random_range(0..pop.len()))
            .min_by(|&a, &b| pop[a].0.total_cmp(&pop[b].0))
            .unwrap_or(0)
    };
    let mut genes = vec![0; m.routes()];
    for _ in 0..children {
        if deadline.passed() || pop.iter().any(|(c, _)| m.at_floor(*c)) {
            break;
        }
        let (a, b) = (tournament(&pop, &mut rng), tournament(&pop, &mut rng));
        let (pa, pb) = (&pop[a].1.assign, &pop[b].1.assign);
        touched.clear();
        for (r, gene) in genes.iter_mut().enumerate() {
            *gene = if pa[r] == pb[r] {
                pa[r]
            } else {
                touched.push(r);
                if rng.random_bool(0.5) { pa[r] } else { pb[r] }
            };
        }
        let mut child = State::new(m, genes.clone());
        let count = rng.random_range(0..=3);
        mutate(m, &mut child, &mobile, count, &mut touched, &mut rng);
        descend_routes(
            m,
            &mut child,
            touched.iter().copied(),
            MEMBER_PASSES,
            deadline,
        );
        let cost = child.cost(m);
        let worst = (0..pop.len())
            .max_by(|&x, &y| pop[x].0.total_cmp(&pop[y].0))
            .unwrap_or(0);
        let duplicate = pop.iter().any(|(c, _)| (c - cost).abs() <= tol(cost));
        if cost < pop[worst].0 && !duplicate {
            pop[worst] = (cost, child);
        }
    }
    let mut best = pop
        .into_iter()
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .map(|(_, st)| st)
        .unwrap_or_else(|| start.clone());
    descend(m, &mut best, POLISH_PASSES, deadline);
    best
}
