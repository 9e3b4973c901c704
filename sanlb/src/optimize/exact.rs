//! Exact search: depth-first branch and bound that proves optimality.
//!
//! - Routes whose place cannot matter are fixed first: a zero-rate route
//!   stays home (it changes no load, and staying saves a move), a route with
//!   one allowed gateway goes there.
//! - The others are branched on largest rate first, each child in the order
//!   of its lower bound, starting from the greedy solution as incumbent.
//! - Lower bound of a node: the moves already made plus the remaining routes
//!   that must move (their current gateway is not allowed), and the least
//!   var_norm of any fractional completion (see [`var_bound`]).
//! - Symmetry: two gateways with equal capacity and load that every remaining
//!   route sees alike (both allowed or not, neither its current one) lead to
//!   mirror-image subtrees, so only the lower-numbered one is branched on;
//!   and consecutive identical routes take non-decreasing gateway numbers.
//!   Both keep the lexicographically smallest optimal assignment reachable,
//!   so pruning by them never loses the optimum.
//!
//! A subtree is pruned when its bound is within [`tol`] of the incumbent: the
//! proven optimum is optimal up to that tolerance (relative 1e-9).

use std::collections::HashMap;

use super::state::{Deadline, Model, State, tol};

/// What the search found.
pub(crate) struct Outcome {
    /// The best assignment seen (the incumbent if nothing beat it).
    pub state: State,
    /// The search finished: `state` is optimal.
    pub proven: bool,
}

/// The search tree of a problem.
struct Search<'a> {
    m: &'a Model<'a>,
    live: Vec<usize>,
    /// Routes to branch on, by rate, largest first.
    order: Vec<usize>,
    /// Σ rate·max(1/capacity over its allowed gateways) of `order[d..]`.
    suffix_mass: Vec<f64>,
    /// Routes of `order[d..]` whose current gateway is not allowed.
    suffix_forced: Vec<usize>,
    /// Gateway equivalence classes with respect to `order[d..]`.
    class: Vec<Vec<u32>>,
    /// `order[d]` is interchangeable with `order[d − 1]`.
    same_as_prev: Vec<bool>,
    /// Working assignment (fixed routes set once).
    assign: Vec<usize>,
    util: Vec<f64>,
    moves: usize,
    best: Vec<usize>,
    best_cost: f64,
    kids: Vec<Vec<(f64, usize)>>,
    scratch: Vec<f64>,
    nodes: u64,
    node_limit: u64,
    deadline: Deadline,
    aborted: bool,
}

impl<'a> Search<'a> {
    fn new(m: &'a Model<'a>, incumbent: &State, deadline: Deadline, node_limit: u64) -> Self {
        let c = m.c;
        let live: Vec<usize> = (0..m.gateways()).filter(|&g| m.inv[g] > 0.0).collect();
        let mut assign = incumbent.assign.clone();
        let mut order = Vec::new();
        let mut util = vec![0.0; m.gateways()];
        let mut moves = 0;
        for (r, slot) in assign.iter_mut().enumerate() {
            let g = if c.rate[r] == 0.0 {
                m.home(r)
            } else if c.allowed[r].len() == 1 {
                c.allowed[r][0]
            } else {
                order.push(r);
                continue;
            };
            *slot = g;
            util[g] += c.rate[r] * m.inv[g];
            moves += usize::from(m.moved(r, g));
        }
        // What about a route matters to the search: its current gateway only
        // if moves cost something and it may stay there.
        let current = |r: usize| c.current[r].filter(|&g| c.w_change > 0.0 && m.allowed(r, g));
        order.sort_by(|&a, &b| {
            c.rate[b]
                .total_cmp(&c.rate[a])
                .then_with(|| c.allowed[a].cmp(&c.allowed[b]))
                .then_with(|| current(a).cmp(&current(b)))
                .then(a.cmp(&b))
        });
        let n = order.len();
        let mut suffix_mass = vec![0.0; n + 1];
        let mut suffix_forced = vec![0; n + 1];
        for d in (0..n).rev() {
            let r = order[d];
            let max_inv = c.allowed[r].iter().map(|&g| m.inv[g]).fold(0.0, f64::max);
            suffix_mass[d] = suffix_mass[d + 1] + c.rate[r] * max_inv;
            let forced = c.current[r].is_some_and(|g| !m.allowed(r, g));
            suffix_forced[d] = suffix_forced[d + 1] + usize::from(forced);
        }
        let same_as_prev = (0..n)
            .map(|d| {
                d > 0 && {
                    let (a, b) = (order[d - 1], order[d]);
                    c.rate[a] == c.rate[b]
                        && c.allowed[a] == c.allowed[b]
                        && current(a) == current(b)
                }
            })
            .collect();
        Self {
            m,
            live,
            order,
            suffix_mass,
            suffix_forced,
            class: Vec::new(),
            same_as_prev,
            best: incumbent.assign.clone(),
            best_cost: incumbent.cost(m),
            assign,
            util,
            moves,
            kids: vec![Vec::new(); n],
            scratch: Vec::new(),
            nodes: 0,
            node_limit,
            deadline,
            aborted: false,
        }
    }

    /// Computes the gateway classes (only the search needs them: O(N·k)).
    fn classify(&mut self) {
        let (m, n) = (self.m, self.order.len());
        let current = |r: usize| m.c.current[r].filter(|&g| m.c.w_change > 0.0 && m.allowed(r, g));
        let mut class = vec![Vec::new(); n + 1];
        let mut caps = HashMap::new();
        class[n] =
            m.c.capacity
                .iter()
                .map(|cap| {
                    let next = caps.len() as u32;
                    *caps.entry(cap.to_bits()).or_insert(next)
                })
                .collect();
        let mut ids = HashMap::new();
        for d in (0..n).rev() {
            let r = self.order[d];
            ids.clear();
            class[d] = class[d + 1]
                .iter()
                .enumerate()
                .map(|(g, &below)| {
                    let key = (below, m.allowed(r, g), current(r) == Some(g));
                    let next = ids.len() as u32;
                    *ids.entry(key).or_insert(next)
                })
                .collect();
        }
        self.class = class;
    }

    /// Lower bound of every completion of the current node at depth `d`.
    fn bound(&mut self, d: usize) -> f64 {
        let c = self.m.c;
        let moves = (self.moves + self.suffix_forced[d]) as f64;
        let var = var_bound(
            &self.util,
            &self.live,
            self.suffix_mass[d],
            &mut self.scratch,
        );
        c.w_var * var + c.w_change * moves
    }

    /// Counts a node; false once the node budget or the deadline is spent.
    fn visit(&mut self) -> bool {
        self.nodes += 1;
        if self.nodes >= self.node_limit
            || (self.nodes.is_multiple_of(1024) && self.deadline.passed())
        {
            self.aborted = true;
        }
        !self.aborted
    }

    /// A complete assignment: keep it if it is the best so far.
    fn leaf(&mut self) {
        let cost = self.bound(self.order.len());
        if cost < self.best_cost {
            self.best_cost = cost;
            self.best.clone_from(&self.assign);
        }
    }

    /// Fills `kids[d]` with the gateways worth trying for `order[d]`, by
    /// lower bound: not excluded by symmetry, bound below the incumbent.
    fn expand(&mut self, d: usize) {
        let m = self.m;
        let r = self.order[d];
        let x = m.c.rate[r];
        let floor = if self.same_as_prev[d] {
            self.assign[self.order[d - 1]]
        } else {
            0
        };
        let mut kids = std::mem::take(&mut self.kids[d]);
        kids.clear();
        let allowed = &m.c.allowed[r];
        for (i, &g) in allowed.iter().enumerate() {
            if g < floor {
                continue;
            }
            let class = &self.class[d];
            let mirrored = allowed[..i]
                .iter()
                .any(|&h| class[h] == class[g] && self.util[h].to_bits() == self.util[g].to_bits());
            if mirrored {
                continue;
            }
            let (old, old_moves) = (self.util[g], self.moves);
            self.util[g] = old + x * m.inv[g];
            self.moves += usize::from(m.moved(r, g));
            let lb = self.bound(d + 1);
            self.util[g] = old;
            self.moves = old_moves;
            if lb < self.best_cost - tol(self.best_cost) {
                kids.push((lb, g));
            }
        }
        // Best bound first; the rest are tried in reverse from the end.
        kids.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        self.kids[d] = kids;
    }

    /// Depth-first search with an explicit stack (the depth is the number of
    /// routes, too deep for the call stack of a small thread): `kids[d]`
    /// holds the children of depth `d` still to try, `undo[d]` what to
    /// restore when leaving the child of depth `d` being explored.
    fn run(&mut self) {
        let n = self.order.len();
        if !self.visit() {
            return;
        }
        if n == 0 {
            self.leaf();
            return;
        }
        let m = self.m;
        let mut undo: Vec<Option<(usize, f64, usize)>> = vec![None; n];
        self.expand(0);
        let mut d = 0;
        loop {
            if let Some((g, old, old_moves)) = undo[d].take() {
                self.util[g] = old;
                self.moves = old_moves;
            }
            let next = self.kids[d].pop();
            let Some((_, g)) =
                next.filter(|&(lb, _)| !self.aborted && lb < self.best_cost - tol(self.best_cost))
            else {
                if d == 0 {
                    return;
                }
                d -= 1;
                continue;
            };
            let r = self.order[d];
            undo[d] = Some((g, self.util[g], self.moves));
            self.util[g] += m.c.rate[r] * m.inv[g];
            self.moves += usize::from(m.moved(r, g));
            self.assign[r] = g;
            if !self.visit() {
                continue;
            }
            if d + 1 == n {
                self.leaf();
            } else {
                d += 1;
                self.expand(d);
            }
        }
    }
}

/// The least var_norm over all ways of adding `mass` (in utilisation units,
/// divisible at will) to the live gateways' utilisations `util`.
///
/// Adding mass M with u ≥ l and Σu = s: the least Σu² is water-filling (raise
/// the lowest utilisations to a common level), and Σu²/s² only falls as s
/// grows, so the largest s a completion can reach (each remaining route on
/// its smallest allowed capacity, which `mass` assumes) gives a bound below
/// every completion. With equal capacities Σu is fixed and the bound is the
/// exact fractional optimum.
pub(crate) fn var_bound(util: &[f64], live: &[usize], mass: f64, scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(live.iter().map(|&g| util[g]));
    scratch.sort_by(f64::total_cmp);
    let n = scratch.len();
    let s: f64 = scratch.iter().sum::<f64>() + mass;
    if n == 0 || s <= 0.0 {
        return 0.0;
    }
    let (mut acc, mut i) = (mass, 0);
    let level = loop {
        acc += scratch[i];
        let level = acc / (i + 1) as f64;
        if i + 1 == n || level <= scratch[i + 1] {
            break level;
        }
        i += 1;
    };
    let h = (i + 1) as f64 * level * level + scratch[i + 1..].iter().map(|u| u * u).sum::<f64>();
    (n as f64 * h / (s * s) - 1.0).max(0.0)
}

/// Branch and bound from `incumbent`, until done, `node_limit` nodes or the
/// deadline.
pub(crate) fn solve(m: &Model, incumbent: &State, deadline: Deadline, node_limit: u64) -> Outcome {
    let mut search = Search::new(m, incumbent, deadline, node_limit);
    search.classify();
    search.run();
    tracing::debug!(
        nodes = search.nodes,
        proven = !search.aborted,
        "exact search"
    );
    let proven = !search.aborted;
    let mut state = State::new(m, search.best);
    if state.cost(m) > incumbent.cost(m) {
        state = incumbent.clone();
    }
    Outcome { state, proven }
}

/// A lower bound of the cost of every assignment (the search's root bound).
pub(crate) fn root_bound(m: &Model) -> f64 {
    let any = State::new(m, (0..m.routes()).map(|r| m.home(r)).collect());
    Search::new(m, &any, Deadline::after(std::time::Duration::ZERO), 0).bound(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::optimize::{Compiled, Gateway, Problem, Route};

    /// Random small problems: capacities in {0, 1, 2}, integer rates (ties
    /// exercise the symmetry rules), currents, reachability, weights.
    fn arb_compiled() -> impl Strategy<Value = Option<Compiled>> {
        (1usize..=4)
            .prop_flat_map(|k| {
                let route = (
                    0u32..6,
                    prop::option::of(0..k),
                    prop::option::weighted(0.3, 1u32..(1 << k)),
                );
                (
                    prop::collection::vec(
                        prop_oneof![3 => Just(1.0), 1 => Just(0.0), 1 => Just(2.0)],
                        k,
                    ),
                    prop::collection::vec(route, 0..=7),
                    prop_oneof![Just(0.0), Just(0.05), Just(0.5)],
                )
            })
            .prop_map(|(caps, routes, w_change)| {
                let name = |g: usize| format!("gw{g}");
                let p = Problem {
                    gateways: caps
                        .iter()
                        .enumerate()
                        .map(|(g, &capacity)| Gateway {
                            name: name(g),
                            capacity,
                        })
                        .collect(),
                    routes: routes
                        .into_iter()
                        .enumerate()
                        .map(|(i, (rate, current, mask))| Route {
                            target: std::net::IpAddr::from([198, 18, 1, i as u8]),
                            host: None,
                            rate: f64::from(rate),
                            current: current.map(name),
                            allowed: mask.map(|mask| {
                                (0..caps.len())
                                    .filter(|g| mask & (1 << g) != 0)
                                    .map(name)
                                    .collect()
                            }),
                        })
                        .collect(),
                    w_var: 1.0,
                    w_change,
                };
                Compiled::new(&p).ok()
            })
    }

    fn brute_force(c: &Compiled, assign: &mut Vec<usize>) -> f64 {
        let r = assign.len();
        if r == c.rate.len() {
            return c.evaluate(assign).cost;
        }
        let mut best = f64::INFINITY;
        for &g in &c.allowed[r] {
            assign.push(g);
            best = best.min(brute_force(c, assign));
            assign.pop();
        }
        best
    }

    proptest! {
        /// The search alone, from the worst start (no help from the greedy
        /// incumbent), finds the optimum.
        #[test]
        fn search_from_a_poor_incumbent_is_exact(c in arb_compiled()) {
            let Some(c) = c else { return Ok(()) };
            let m = Model::new(&c);
            let poor = (0..c.rate.len())
                .map(|r| {
                    let allowed = &c.allowed[r];
                    *allowed.iter().find(|&&g| m.moved(r, g)).unwrap_or(&allowed[0])
                })
                .collect();
            let out = solve(&m, &State::new(&m, poor), Deadline::after(std::time::Duration::from_secs(60)), u64::MAX);
            prop_assert!(out.proven);
            let want = brute_force(&c, &mut Vec::new());
            let got = c.evaluate(&out.state.assign).cost;
            prop_assert!((got - want).abs() <= tol(want), "{got} vs {want}");
        }
    }

    #[test]
    fn water_filling() {
        let mut scratch = Vec::new();
        // (1, 3) + 2 → (3, 3): balanced.
        assert_eq!(var_bound(&[1.0, 3.0], &[0, 1], 2.0, &mut scratch), 0.0);
        // (1, 5) + 2 → (3, 5): mean 4, variance 1.
        let v = var_bound(&[1.0, 5.0], &[0, 1], 2.0, &mut scratch);
        assert!((v - 1.0 / 16.0).abs() < 1e-15);
        // Only live gateways count.
        let v = var_bound(&[1.0, 9.0, 5.0], &[0, 2], 2.0, &mut scratch);
        assert!((v - 1.0 / 16.0).abs() < 1e-15);
        assert_eq!(var_bound(&[0.0, 0.0], &[0, 1], 0.0, &mut scratch), 0.0);
    }
}
