//! Greedy: up to three starts, each polished by local search, best kept.
//! - change-aware LPT: routes by rate, largest first, each to the gateway
//!   where it adds least to the final variance plus the price of a move;
//! - the map in force: every route stays where it is (if it may), the others
//!   are placed as in LPT — wins when moves are expensive; from there also a
//!   steepest descent (`steepest.rs`), which spends each move where it pays
//!   most — wins with many routes to move and a small move cost;
//! - Karmarkar–Karp largest differencing, when every route may use every live
//!   gateway of equal capacity and there are few routes per gateway (where
//!   LPT is weakest); its parts go to the gateways they overlap most.

use std::{cmp::Ordering, collections::BinaryHeap};

use super::{
    state::{Deadline, Model, State, descend},
    steepest,
};

/// Passes of local search after each start.
const POLISH_PASSES: usize = 64;
/// Moves of the steepest descent, at most, per route.
const STEEPEST_STEPS_PER_ROUTE: usize = 2;
/// KK is tried up to this many routes per live gateway.
const KK_MAX_ROUTES_PER_GATEWAY: usize = 16;

/// The best of the greedy starts after local search.
pub(crate) fn solve(m: &Model, deadline: &Deadline) -> State {
    let mut best: Option<State> = None;
    let mut consider = |assign: Vec<usize>| {
        let st = polished(m, assign, deadline);
        if best.as_ref().is_none_or(|b| st.cost(m) < b.cost(m)) {
            best = Some(st);
        }
    };
    // With a map in force and a move cost, the starts from it come first:
    // they are the ones a short time limit must not cut.
    if m.c.w_change > 0.0 && m.c.current.iter().any(Option::is_some) {
        let in_force = lpt(m, Some(stay(m)));
        let mut st = State::new(m, in_force.clone());
        steepest::descend(m, &mut st, STEEPEST_STEPS_PER_ROUTE * m.routes(), deadline);
        consider(st.assign);
        consider(in_force);
    }
    consider(lpt(m, None));
    let live = m.n as usize;
    if m.routes() <= KK_MAX_ROUTES_PER_GATEWAY * live
        && m.unrestricted()
        && equal_live_capacities(m)
    {
        consider(karmarkar_karp(m));
    }
    best.expect("at least the LPT start")
}

fn polished(m: &Model, assign: Vec<usize>, deadline: &Deadline) -> State {
    let mut st = State::new(m, assign);
    descend(m, &mut st, POLISH_PASSES, deadline);
    st
}

fn equal_live_capacities(m: &Model) -> bool {
    let mut live = m.inv.iter().filter(|&&i| i > 0.0);
    let first = live.next().copied();
    live.all(|&i| Some(i) == first)
}

/// Routes that stay on their current gateway (`Some`) and the others (`None`).
fn stay(m: &Model) -> Vec<Option<usize>> {
    (0..m.routes())
        .map(|r| m.c.current[r].filter(|&g| m.allowed(r, g)))
        .collect()
}

/// Change-aware LPT. Routes fixed in `preset` are placed first; the others by
/// rate, largest first, each to the allowed gateway that minimises its
/// contribution to the final variance (the increase of Σu², normalised by
/// the Σu of a perfect balance) plus `w_change` if it is a move. Zero-rate
/// routes stay home.
pub(crate) fn lpt(m: &Model, preset: Option<Vec<Option<usize>>>) -> Vec<usize> {
    let c = m.c;
    let mut assign = vec![usize::MAX; m.routes()];
    let mut util = vec![0.0; m.gateways()];
    let mut order = Vec::with_capacity(m.routes());
    for r in 0..m.routes() {
        let fixed = match &preset {
            Some(p) => p[r],
            None => None,
        };
        match fixed {
            Some(g) => {
                assign[r] = g;
                util[g] += c.rate[r] * m.inv[g];
            }
            None if c.rate[r] == 0.0 => assign[r] = m.home(r),
            None => order.push(r),
        }
    }
    order.sort_by(|&a, &b| c.rate[b].total_cmp(&c.rate[a]).then(a.cmp(&b)));
    let total: f64 = c.rate.iter().sum();
    let live_capacity: f64 = c.capacity.iter().filter(|&&cap| cap > 0.0).sum();
    let s1 = m.n * total / live_capacity;
    let scale = if s1 > 0.0 {
        c.w_var * m.n / (s1 * s1)
    } else {
        0.0
    };
    for r in order {
        let x = c.rate[r];
        let mut best = (f64::INFINITY, usize::MAX);
        for &g in &c.allowed[r] {
            let d = x * m.inv[g];
            let cost =
                scale * d * (2.0 * util[g] + d) + if m.moved(r, g) { c.w_change } else { 0.0 };
            if cost < best.0 {
                best = (cost, g);
            }
        }
        // Costs are finite (see `Compiled`); should one not be, the route
        // still gets a gateway it may use.
        let g = if best.1 == usize::MAX {
            c.allowed[r][0]
        } else {
            best.1
        };
        assign[r] = g;
        util[g] += x * m.inv[g];
    }
    assign
}

/// One partial solution of KK: the sums of its `k` parts, largest first, and
/// each part's routes as a linked list (`head`/`tail` into `next`).
struct Part {
    sums: Vec<f64>,
    head: Vec<usize>,
    tail: Vec<usize>,
}

impl Part {
    fn spread(&self) -> f64 {
        self.sums[0] - self.sums[self.sums.len() - 1]
    }
}

impl PartialEq for Part {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Part {}
impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Part {
    fn cmp(&self, other: &Self) -> Ordering {
        self.spread()
            .total_cmp(&other.spread())
            .then_with(|| other.head[0].cmp(&self.head[0]))
    }
}

const NIL: usize = usize::MAX;

/// Karmarkar–Karp largest differencing for equal live gateways with no
/// reachability limits: the two partial solutions of largest spread are
/// merged, largest part with smallest, until one is left. Its parts then go
/// to the live gateways greedily by how many of their routes are already
/// there. Zero-rate routes stay home.
fn karmarkar_karp(m: &Model) -> Vec<usize> {
    let c = m.c;
    let live: Vec<usize> = (0..m.gateways()).filter(|&g| m.inv[g] > 0.0).collect();
    let k = live.len();
    let mut assign: Vec<usize> = (0..m.routes()).map(|r| m.home(r)).collect();
    let mut next = vec![NIL; m.routes()];
    let mut heap: BinaryHeap<Part> = (0..m.routes())
        .filter(|&r| c.rate[r] > 0.0)
        .map(|r| {
            let mut sums = vec![0.0; k];
            sums[0] = c.rate[r];
            let mut head = vec![NIL; k];
            head[0] = r;
            Part {
                sums,
                tail: head.clone(),
                head,
            }
        })
        .collect();
    while heap.len() > 1 {
        let (Some(a), Some(b)) = (heap.pop(), heap.pop()) else {
            unreachable!("the heap has two parts")
        };
        let mut merged: Vec<(f64, usize, usize)> = (0..k)
            .map(|i| {
                let j = k - 1 - i;
                let (head, tail) = match (a.head[i], b.head[j]) {
                    (NIL, _) => (b.head[j], b.tail[j]),
                    (_, NIL) => (a.head[i], a.tail[i]),
                    (ha, hb) => {
                        next[a.tail[i]] = hb;
                        (ha, b.tail[j])
                    }
                };
                (a.sums[i] + b.sums[j], head, tail)
            })
            .collect();
        merged.sort_by(|x, y| y.0.total_cmp(&x.0));
        heap.push(Part {
            sums: merged.iter().map(|p| p.0).collect(),
            head: merged.iter().map(|p| p.1).collect(),
            tail: merged.iter().map(|p| p.2).collect(),
        });
    }
    let Some(part) = heap.pop() else {
        return assign;
    };
    // overlap[i][g]: routes of part i whose current gateway is live[g].
    let mut members = vec![Vec::new(); k];
    for (i, list) in members.iter_mut().enumerate() {
        let mut r = part.head[i];
        while r != NIL {
            list.push(r);
            r = next[r];
        }
    }
    let mut pairs = Vec::with_capacity(k * k);
    for (i, list) in members.iter().enumerate() {
        for (gi, &g) in live.iter().enumerate() {
            let stay = list.iter().filter(|&&r| c.current[r] == Some(g)).count();
            pairs.push((stay, i, gi));
        }
    }
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let (mut part_done, mut gw_done) = (vec![false; k], vec![false; k]);
    for (_, i, gi) in pairs {
        if !part_done[i] && !gw_done[gi] {
            part_done[i] = true;
            gw_done[gi] = true;
            for &r in &members[i] {
                assign[r] = live[gi];
            }
        }
    }
    assign
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::{Compiled, Gateway, Problem, Route};

    #[test]
    fn karmarkar_karp_beats_lpt_and_search_finds_the_perfect_split() {
        // LPT: {8,5,4} {7,6} = 17/13; KK: 16/14; perfect: {8,7} {6,5,4}.
        let p = Problem {
            gateways: ["a", "b"]
                .iter()
                .map(|n| Gateway {
                    name: (*n).into(),
                    capacity: 1.0,
                })
                .collect(),
            routes: [8.0, 7.0, 6.0, 5.0, 4.0]
                .iter()
                .enumerate()
                .map(|(i, &rate)| Route {
                    target: std::net::IpAddr::from([198, 18, 1, i as u8]),
                    host: None,
                    rate,
                    current: None,
                    allowed: None,
                })
                .collect(),
            w_var: 1.0,
            w_change: 0.0,
        };
        let c = Compiled::new(&p).unwrap();
        let m = Model::new(&c);
        let spread = |assign: Vec<usize>| {
            let loads = c.evaluate(&assign).loads;
            (loads[0] - loads[1]).abs()
        };
        assert_eq!(spread(lpt(&m, None)), 4.0);
        assert_eq!(spread(karmarkar_karp(&m)), 2.0);
        let st = solve(&m, &Deadline::after(std::time::Duration::from_secs(5)));
        assert_eq!(st.var(&m), 0.0);
    }
}
