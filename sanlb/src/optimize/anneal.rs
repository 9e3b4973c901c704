//! Simulated annealing from the greedy solution.
//!
//! Each step proposes moving a random route to a random allowed gateway or
//! swapping the gateways of two random routes (half each), evaluated in O(1),
//! and accepts it by the Metropolis rule. The temperature falls geometrically
//! over a fixed number of steps, from a fraction of the typical uphill step
//! measured at the start to a thousandth of that; the best map seen is
//! polished by local search. Same seed, same steps, same result (unless the
//! deadline cuts the schedule short).

use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};

use super::state::{Deadline, Model, State, descend, improves};

/// Steps per movable route, and the bounds of the total.
const STEPS_PER_ROUTE: u64 = 50;
const MIN_STEPS: u64 = 10_000;
const MAX_STEPS: u64 = 100_000;
/// Passes of local search at the end.
const POLISH_PASSES: usize = 64;

/// One random neighbour: a move `(r, b, None)` or a swap `(r, s, Some(()))`
/// with its cost change, or `None` if the draw was not a valid change.
fn propose(
    m: &Model,
    st: &State,
    mobile: &[usize],
    rng: &mut Xoshiro256PlusPlus,
) -> Option<(f64, usize, usize, bool)> {
    let r = mobile[rng.random_range(0..mobile.len())];
    let a = st.assign[r];
    if rng.random_bool(0.5) {
        let allowed = &m.c.allowed[r];
        let b = allowed[rng.random_range(0..allowed.len())];
        (b != a).then(|| (st.delta_move(m, r, b), r, b, false))
    } else {
        let s = mobile[rng.random_range(0..mobile.len())];
        let b = st.assign[s];
        (b != a && m.allowed(r, b) && m.allowed(s, a)).then(|| (st.delta_swap(m, r, s), r, s, true))
    }
}

/// Routes worth moving: positive rate and a choice of gateway.
pub(crate) fn mobile(m: &Model) -> Vec<usize> {
    (0..m.routes())
        .filter(|&r| m.c.rate[r] > 0.0 && m.c.allowed[r].len() > 1)
        .collect()
}

/// Anneals from `start`; returns the best map found (never worse than it).
pub(crate) fn solve(m: &Model, start: &State, seed: u64, deadline: &Deadline) -> State {
    let mobile = mobile(m);
    if mobile.is_empty() {
        return start.clone();
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xa11e_a1a5);
    let mut st = start.clone();
    let mut uphill: Vec<f64> = (0..256)
        .filter_map(|_| propose(m, &st, &mobile, &mut rng))
        .map(|p| p.0)
        .filter(|&d| d > 0.0)
        .collect();
    if uphill.is_empty() {
        return start.clone();
    }
    uphill.sort_by(f64::total_cmp);
    let t0 = 0.3 * uphill[uphill.len() / 2];
    let t_end = t0 * 1e-3;
    let steps = (STEPS_PER_ROUTE * mobile.len() as u64).clamp(MIN_STEPS, MAX_STEPS);
    let mut best = st.clone();
    let mut best_cost = best.cost(m);
    let mut temp = t0;
    for step in 0..steps {
        if step.is_multiple_of(1024) {
            if deadline.passed() || m.at_floor(best_cost) {
                break;
            }
            temp = t0 * (t_end / t0).powf(step as f64 / steps as f64);
            let cost = st.cost(m);
            if improves(cost - best_cost, best_cost) {
                best.clone_from(&st);
                best_cost = cost;
            }
        }
        let Some((d, r, x, swap)) = propose(m, &st, &mobile, &mut rng) else {
            continue;
        };
        if d <= 0.0 || rng.random::<f64>() < (-d / temp).exp() {
            if swap {
                st.apply_swap(m, r, x);
            } else {
                st.apply_move(m, r, x);
            }
        }
    }
    descend(m, &mut st, POLISH_PASSES, deadline);
    if best_cost < st.cost(m) {
        descend(m, &mut best, POLISH_PASSES, deadline);
        if best.cost(m) < st.cost(m) {
            return best;
        }
    }
    st
}
