//! Tabu search from the greedy solution.
//!
//! Each iteration evaluates (in O(1) each) a candidate list: every allowed
//! move of the routes on the most utilised gateway (a window of them when
//! there are many), every allowed move of a few random routes, and swaps
//! between routes of the most and the least utilised gateways; it then makes
//! the best admissible one even if it raises the cost. A route that moved
//! may not move again for a few iterations (its tenure) unless that would
//! give a new best (aspiration). It stops after a fixed number of iterations
//! or when the best has not improved for a while; the best map is polished.

use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};

use super::{
    anneal::mobile,
    state::{Deadline, Model, State, by_util, descend, improves},
};

/// Delta evaluations to spend, across all iterations.
const EVALUATIONS: u64 = 2_000_000;
/// Bounds of the number of iterations.
const MIN_ITERATIONS: u64 = 50;
const MAX_ITERATIONS: u64 = 5_000;
/// Iterations without a new best before giving up.
const STALL: u64 = 300;
/// Routes of the top gateway examined per iteration, at most.
const TOP_WINDOW: usize = 128;
/// Random routes examined per iteration.
const RANDOM_ROUTES: usize = 32;
/// Routes of the top and bottom gateways paired for swaps, at most.
const SWAP_WINDOW: usize = 16;
/// Passes of local search at the end.
const POLISH_PASSES: usize = 64;

/// Up to `n` items of `list`, a contiguous window from a random place.
fn window<'a>(
    list: &'a [usize],
    n: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> impl Iterator<Item = usize> + 'a {
    let start = if list.len() > n {
        rng.random_range(0..list.len())
    } else {
        0
    };
    (0..n.min(list.len())).map(move |i| list[(start + i) % list.len()])
}

#[derive(Clone, Copy)]
enum Change {
    Move(usize, usize),
    Swap(usize, usize),
}

/// Mobile routes per gateway, kept up to date as routes move.
struct Members {
    of: Vec<Vec<usize>>,
    pos: Vec<usize>,
}

impl Members {
    fn new(m: &Model, st: &State, mobile: &[usize]) -> Self {
        let mut of = vec![Vec::new(); m.gateways()];
        let mut pos = vec![usize::MAX; m.routes()];
        for &r in mobile {
            let g = st.assign[r];
            pos[r] = of[g].len();
            of[g].push(r);
        }
        Self { of, pos }
    }

    fn relocate(&mut self, r: usize, from: usize, to: usize) {
        let i = self.pos[r];
        self.of[from].swap_remove(i);
        if let Some(&moved) = self.of[from].get(i) {
            self.pos[moved] = i;
        }
        self.pos[r] = self.of[to].len();
        self.of[to].push(r);
    }
}

/// Tabu search from `start`; returns the best map found (never worse).
pub(crate) fn solve(m: &Model, start: &State, seed: u64, deadline: &Deadline) -> State {
    let mobile = mobile(m);
    if mobile.is_empty() || m.n < 2.0 {
        return start.clone();
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x7ab0_5ea7);
    let k = m.gateways();
    let per_iteration = ((TOP_WINDOW.min(mobile.len() / k + 1) + RANDOM_ROUTES) * k
        + SWAP_WINDOW * SWAP_WINDOW) as u64;
    let iterations = (EVALUATIONS / per_iteration).clamp(MIN_ITERATIONS, MAX_ITERATIONS);
    let max_tenure = (mobile.len() as u64 / 2).max(1);
    let mut st = start.clone();
    let mut members = Members::new(m, &st, &mobile);
    let mut tabu_until = vec![0u64; m.routes()];
    let mut best = st.clone();
    let mut best_cost = best.cost(m);
    let mut last_best = 0;
    let mut top_routes = Vec::new();
    let mut bottom_routes = Vec::new();
    let mut random_routes = Vec::new();
    for it in 1..=iterations {
        if (it.is_multiple_of(16) && deadline.passed()) || m.at_floor(best_cost) {
            break;
        }
        let cost = st.cost(m);
        let gws = by_util(m, &st);
        let (bottom, top) = (gws[0], gws[gws.len() - 1]);
        let admissible =
            |r: usize, d: f64| tabu_until[r] <= it || improves(cost + d - best_cost, best_cost);
        let mut choice: Option<(f64, Change)> = None;
        let mut consider = |d: f64, change: Change| {
            if choice.is_none_or(|(bd, _)| d < bd) {
                choice = Some((d, change));
            }
        };
        top_routes.clear();
        top_routes.extend(window(&members.of[top], TOP_WINDOW, &mut rng));
        random_routes.clear();
        random_routes.extend((0..RANDOM_ROUTES).map(|_| mobile[rng.random_range(0..mobile.len())]));
        for &r in top_routes.iter().chain(&random_routes) {
            for &b in &m.c.allowed[r] {
                if b != st.assign[r] {
                    let d = st.delta_move(m, r, b);
                    if admissible(r, d) {
                        consider(d, Change::Move(r, b));
                    }
                }
            }
        }
        bottom_routes.clear();
        bottom_routes.extend(window(&members.of[bottom], SWAP_WINDOW, &mut rng));
        for &r in top_routes.iter().take(SWAP_WINDOW) {
            for &s in &bottom_routes {
                if m.allowed(r, bottom) && m.allowed(s, top) {
                    let d = st.delta_swap(m, r, s);
                    if admissible(r, d) && admissible(s, d) {
                        consider(d, Change::Swap(r, s));
                    }
                }
            }
        }
        let Some((_, change)) = choice else {
            break;
        };
        let tenure = it + 1 + rng.random_range(0..max_tenure.min(8)) + max_tenure.min(4);
        match change {
            Change::Move(r, b) => {
                members.relocate(r, st.assign[r], b);
                st.apply_move(m, r, b);
                tabu_until[r] = tenure;
            }
            Change::Swap(r, s) => {
                let (a, b) = (st.assign[r], st.assign[s]);
                members.relocate(r, a, b);
                members.relocate(s, b, a);
                st.apply_swap(m, r, s);
                tabu_until[r] = tenure;
                tabu_until[s] = tenure;
            }
        }
        let cost = st.cost(m);
        if improves(cost - best_cost, best_cost) {
            best.clone_from(&st);
            best_cost = cost;
            last_best = it;
        } else if it - last_best > STALL {
            break;
        }
    }
    descend(m, &mut best, POLISH_PASSES, deadline);
    best
}
