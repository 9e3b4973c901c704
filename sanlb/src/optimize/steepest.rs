//! Steepest descent from the map in force: apply the single move that lowers
//! the cost most, until none does. A greedy start for rebalancing with a move
//! cost: it spends each move where it pays most, where a first-improvement
//! pass in route order spends many moves on small routes (measured in
//! `benches/optimize.rs`, "crowded" table).
//!
//! The best move is found without scanning every (route, gateway): for a
//! pair of gateways (a, b) the change of Σu² of moving a route of rate x is
//! a convex quadratic in x, least at x* = (u_a·i_a − u_b·i_b)/(i_a² + i_b²)
//! (i = 1/capacity), and the move term is constant within three classes of
//! routes on a: at home (+w_change), away with home b (−w_change), away
//! elsewhere (0). So per pair only the routes of each class nearest to x*
//! (kept sorted by rate) are candidates, each scored exactly with
//! [`State::delta_move`]. With equal capacities, Σu is constant and this is
//! exact, and pairs are visited in order of their best possible gain
//! (u_a − u_b)² and pruned once it cannot beat the best move found.

use std::collections::BTreeSet;

use super::state::{Deadline, Model, State, improves};

/// Candidates taken on each side of x* in each class.
const NEIGHBOURS: usize = 2;
/// Routes probed on each side of x* for one that may use the target gateway.
const PROBES: usize = 8;

type Sorted = BTreeSet<(u64, usize)>;

/// Routes on each gateway, by class, sorted by rate (f64 bits order like
/// the non-negative rates).
struct Index {
    k: usize,
    at_home: Vec<Sorted>,
    away: Vec<Sorted>,
    /// `away_home[a * k + h]`: routes on a whose home is h.
    away_home: Vec<Sorted>,
}

impl Index {
    fn new(m: &Model, st: &State) -> Self {
        let k = m.gateways();
        let mut ix = Self {
            k,
            at_home: vec![Sorted::new(); k],
            away: vec![Sorted::new(); k],
            away_home: vec![Sorted::new(); k * k],
        };
        for r in 0..m.routes() {
            if m.c.rate[r] > 0.0 {
                ix.insert(m, r, st.assign[r]);
            }
        }
        ix
    }

    fn key(m: &Model, r: usize) -> (u64, usize) {
        (m.c.rate[r].to_bits(), r)
    }

    fn insert(&mut self, m: &Model, r: usize, a: usize) {
        let key = Self::key(m, r);
        match m.c.current[r] {
            Some(h) if h == a => {
                self.at_home[a].insert(key);
            }
            home => {
                self.away[a].insert(key);
                if let Some(h) = home {
                    self.away_home[a * self.k + h].insert(key);
                }
            }
        }
    }

    fn remove(&mut self, m: &Model, r: usize, a: usize) {
        let key = Self::key(m, r);
        match m.c.current[r] {
            Some(h) if h == a => {
                self.at_home[a].remove(&key);
            }
            home => {
                self.away[a].remove(&key);
                if let Some(h) = home {
                    self.away_home[a * self.k + h].remove(&key);
                }
            }
        }
    }
}

/// Routes of `set` nearest to rate `x` that may use `b`: up to `NEIGHBOURS`
/// on each side, looking at most `PROBES` routes per side.
fn near(m: &Model, set: &Sorted, x: f64, b: usize, out: &mut Vec<usize>) {
    let pivot = (x.max(0.0).to_bits(), 0);
    let mut take = |routes: &mut dyn Iterator<Item = &(u64, usize)>| {
        let mut taken = 0;
        for &(_, r) in routes.take(PROBES) {
            if m.allowed(r, b) {
                out.push(r);
                taken += 1;
                if taken == NEIGHBOURS {
                    break;
                }
            }
        }
    };
    take(&mut set.range(pivot..));
    take(&mut set.range(..pivot).rev());
}

/// Descends from `st` until no single move improves, `max_steps` moves are
/// made or the deadline passes.
pub(crate) fn descend(m: &Model, st: &mut State, max_steps: usize, deadline: &Deadline) {
    let k = m.gateways();
    let live: Vec<usize> = (0..k).filter(|&g| m.inv[g] > 0.0).collect();
    if live.len() < 2 {
        return;
    }
    let equal = live.iter().all(|&g| m.inv[g] == m.inv[live[0]]);
    let mut ix = Index::new(m, st);
    let mut candidates = Vec::new();
    for step in 0..max_steps {
        if step % 64 == 0 && deadline.passed() {
            break;
        }
        let cost = st.cost(m);
        let mut best: Option<(f64, usize, usize)> = None;
        let mut by_util = live.clone();
        by_util.sort_by(|&x, &y| st.util[y].total_cmp(&st.util[x]).then(x.cmp(&y)));
        // With equal capacities, a move on pair (a, b) lowers var_norm by
        // at most n·(u_a − u_b)²/(2·s1²), and saves a move only if a route
        // on a has its home on b.
        let var_gain = |a: usize, b: usize| {
            if !equal || st.s1 <= 0.0 {
                return f64::INFINITY;
            }
            let gap = (st.util[a] - st.util[b]).max(0.0);
            m.c.w_var * m.n * gap * gap / (2.0 * st.s1 * st.s1)
        };
        for &a in &by_util {
            if ix.at_home[a].is_empty() && ix.away[a].is_empty() {
                continue;
            }
            for &b in by_util.iter().rev() {
                if b == a {
                    continue;
                }
                let limit = best.map_or(0.0, |(d, ..)| d);
                let gain = var_gain(a, b);
                let w = m.c.w_change;
                if -gain - w >= limit {
                    // b ascends in utilisation: the next ones gain less.
                    break;
                }
                // Each class only where its best case beats the best move:
                // routes at home pay a move, those going home save one.
                let (ia, ib) = (m.inv[a], m.inv[b]);
                let x = (st.util[a] * ia - st.util[b] * ib) / (ia * ia + ib * ib);
                candidates.clear();
                if -gain + w < limit {
                    near(m, &ix.at_home[a], x, b, &mut candidates);
                }
                if -gain < limit {
                    near(m, &ix.away[a], x, b, &mut candidates);
                }
                near(m, &ix.away_home[a * k + b], x, b, &mut candidates);
                for &r in &candidates {
                    let d = st.delta_move(m, r, b);
                    if improves(d, cost) && best.is_none_or(|(bd, ..)| d < bd) {
                        best = Some((d, r, b));
                    }
                }
            }
        }
        let Some((_, r, b)) = best else { break };
        let a = st.assign[r];
        ix.remove(m, r, a);
        st.apply_move(m, r, b);
        ix.insert(m, r, b);
    }
    st.resync(m);
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};

    use super::*;
    use crate::optimize::{Compiled, Gateway, Problem, Route};

    fn problem(seed: u64, n: usize, k: usize, on: usize, equal: bool) -> Problem {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        Problem {
            gateways: (0..k)
                .map(|g| Gateway {
                    name: format!("gw{g}"),
                    capacity: if equal {
                        1.0
                    } else {
                        rng.random_range(0.5..2.0)
                    },
                })
                .collect(),
            routes: (0..n)
                .map(|i| Route {
                    target: IpAddr::from([198, 18, (i / 256) as u8, (i % 256) as u8]),
                    host: None,
                    rate: (1.0 - rng.random::<f64>()).powf(-1.0 / 1.5),
                    current: Some(format!("gw{}", i % on)),
                    allowed: None,
                })
                .collect(),
            w_var: 1.0,
            w_change: 1e-4,
        }
    }

    /// The plain definition: every (route, gateway), the best one, until none.
    fn naive(m: &Model, st: &mut State) {
        loop {
            let cost = st.cost(m);
            let mut best: Option<(f64, usize, usize)> = None;
            for r in 0..m.routes() {
                for &b in &m.c.allowed[r] {
                    let d = st.delta_move(m, r, b);
                    if improves(d, cost) && best.is_none_or(|(bd, ..)| d < bd) {
                        best = Some((d, r, b));
                    }
                }
            }
            let Some((_, r, b)) = best else { break };
            st.apply_move(m, r, b);
        }
        st.resync(m);
    }

    #[test]
    fn equals_the_plain_steepest_descent_with_equal_capacities() {
        let far = Deadline::after(Duration::from_secs(60));
        for seed in 0..20 {
            let p = problem(seed, 120, 6, 2, true);
            let c = Compiled::new(&p).unwrap();
            let m = Model::new(&c);
            let start: Vec<usize> = c.current.iter().map(|g| g.unwrap()).collect();
            let mut fast = State::new(&m, start.clone());
            descend(&m, &mut fast, usize::MAX, &far);
            let mut plain = State::new(&m, start);
            naive(&m, &mut plain);
            assert!(
                (fast.cost(&m) - plain.cost(&m)).abs() <= 1e-12,
                "seed {seed}: {} vs {}",
                fast.cost(&m),
                plain.cost(&m)
            );
            assert_eq!(fast.moves, plain.moves, "seed {seed}");
        }
    }

    #[test]
    fn never_worse_than_its_start_with_unequal_capacities() {
        let far = Deadline::after(Duration::from_secs(60));
        for seed in 0..20 {
            let p = problem(seed, 80, 5, 2, false);
            let c = Compiled::new(&p).unwrap();
            let m = Model::new(&c);
            let start: Vec<usize> = c.current.iter().map(|g| g.unwrap()).collect();
            let before = State::new(&m, start.clone()).cost(&m);
            let mut st = State::new(&m, start);
            descend(&m, &mut st, usize::MAX, &far);
            assert!(st.cost(&m) < before, "seed {seed}: it found nothing");
            c.check(&st.assign).unwrap();
            let e = c.evaluate(&st.assign);
            assert!((e.cost - st.cost(&m)).abs() < 1e-9, "the sums are exact");
        }
    }
}
