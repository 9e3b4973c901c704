//! Incremental evaluation shared by the solvers: the cost change of moving one
//! route or swapping two is computed in O(1) from the running sums
//! `s1 = Σ u_g` and `s2 = Σ u_g²` over the live gateways, since
//! `var_norm = n·s2/s1² − 1`.

use std::time::{Duration, Instant};

use super::Compiled;

/// Tolerance of cost comparisons: relative, plus a floor far below anything an
/// operator could observe (a var_norm of 1e-12 is a coefficient of variation
/// of 1e-6).
pub(crate) const REL_TOL: f64 = 1e-9;
/// Absolute floor of [`REL_TOL`].
pub(crate) const ABS_TOL: f64 = 1e-12;

/// The comparison slack around a cost.
pub(crate) fn tol(cost: f64) -> f64 {
    cost.abs() * REL_TOL + ABS_TOL
}

/// `d` is an improvement of a solution of cost `cost` worth making: above
/// rounding noise (`n·s2/s1²` is about 1, so its error is about 1e-16) and
/// not negligible against the cost.
pub(crate) fn improves(d: f64, cost: f64) -> bool {
    d < -(cost.abs() * 1e-10 + 1e-15)
}

/// The problem as the solvers see it.
pub(crate) struct Model<'a> {
    pub c: &'a Compiled,
    /// 1/capacity of live gateways, 0 for drained ones.
    pub inv: Vec<f64>,
    /// Number of live gateways, as a float.
    pub n: f64,
    /// A lower bound of the cost (−∞ until set): searches stop on reaching it.
    pub floor: f64,
}

impl<'a> Model<'a> {
    pub fn new(c: &'a Compiled) -> Self {
        let inv: Vec<f64> = c
            .capacity
            .iter()
            .map(|&cap| if cap > 0.0 { 1.0 / cap } else { 0.0 })
            .collect();
        let n = inv.iter().filter(|&&i| i > 0.0).count() as f64;
        Self {
            c,
            inv,
            n,
            floor: f64::NEG_INFINITY,
        }
    }

    /// `cost` is the lower bound, up to [`tol`]: nothing can do better.
    pub fn at_floor(&self, cost: f64) -> bool {
        cost <= self.floor + tol(self.floor)
    }

    pub fn routes(&self) -> usize {
        self.c.rate.len()
    }

    pub fn gateways(&self) -> usize {
        self.c.capacity.len()
    }

    /// Whether putting route `r` on `g` counts as a move.
    pub fn moved(&self, r: usize, g: usize) -> bool {
        self.c.current[r].is_some_and(|cur| cur != g)
    }

    /// The gateway route `r` keeps when moves are to be avoided: its current
    /// one if it may stay there, else its first allowed one.
    pub fn home(&self, r: usize) -> usize {
        match self.c.current[r] {
            Some(g) if self.allowed(r, g) => g,
            _ => self.c.allowed[r][0],
        }
    }

    pub fn allowed(&self, r: usize, g: usize) -> bool {
        self.c.allowed[r].binary_search(&g).is_ok()
    }

    /// Every route may use every live gateway.
    pub fn unrestricted(&self) -> bool {
        let live = self.n as usize;
        self.c.allowed.iter().all(|a| a.len() == live)
    }

    /// Normalised variance from the running sums.
    pub fn var(&self, s1: f64, s2: f64) -> f64 {
        if s1 <= 0.0 {
            0.0
        } else {
            (self.n * s2 / (s1 * s1) - 1.0).max(0.0)
        }
    }

    /// Change of var_norm when the utilisation of `a` changes by `da` and that
    /// of `b` by `db` (`a != b`), written to avoid cancellation between the
    /// old and new `s2/s1²`.
    fn delta_var(&self, s1: f64, s2: f64, ua: f64, da: f64, ub: f64, db: f64) -> f64 {
        let ds1 = da + db;
        let ds2 = da * (2.0 * ua + da) + db * (2.0 * ub + db);
        let t1 = s1 + ds1;
        if s1 <= 0.0 || t1 <= 0.0 {
            return self.var(t1, s2 + ds2) - self.var(s1, s2);
        }
        self.n * (ds2 * s1 * s1 - s2 * ds1 * (2.0 * s1 + ds1)) / (s1 * s1 * t1 * t1)
    }
}

/// An assignment with its running sums.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub assign: Vec<usize>,
    /// Utilisation per gateway (0 for drained ones).
    pub util: Vec<f64>,
    pub s1: f64,
    pub s2: f64,
    pub moves: usize,
    /// Updates since the sums were last recomputed.
    updates: u32,
}

impl State {
    pub fn new(m: &Model, assign: Vec<usize>) -> Self {
        let mut st = Self {
            assign,
            util: vec![0.0; m.gateways()],
            s1: 0.0,
            s2: 0.0,
            moves: 0,
            updates: 0,
        };
        st.resync(m);
        st
    }

    /// Recomputes the sums from the assignment, dropping rounding drift.
    pub fn resync(&mut self, m: &Model) {
        let mut load = vec![0.0; m.gateways()];
        self.moves = 0;
        for (r, &g) in self.assign.iter().enumerate() {
            load[g] += m.c.rate[r];
            if m.moved(r, g) {
                self.moves += 1;
            }
        }
        for (u, (l, inv)) in self.util.iter_mut().zip(load.iter().zip(&m.inv)) {
            *u = l * inv;
        }
        self.s1 = self.util.iter().sum();
        self.s2 = self.util.iter().map(|u| u * u).sum();
        self.updates = 0;
    }

    fn touched(&mut self, m: &Model) {
        self.updates += 1;
        if self.updates >= 1 << 16 {
            self.resync(m);
        }
    }

    pub fn var(&self, m: &Model) -> f64 {
        m.var(self.s1, self.s2)
    }

    pub fn cost(&self, m: &Model) -> f64 {
        m.c.w_var * self.var(m) + m.c.w_change * self.moves as f64
    }

    /// Cost change of moving route `r` to gateway `b` (0 if it is there).
    pub fn delta_move(&self, m: &Model, r: usize, b: usize) -> f64 {
        let a = self.assign[r];
        if a == b {
            return 0.0;
        }
        let x = m.c.rate[r];
        let dv = m.delta_var(
            self.s1,
            self.s2,
            self.util[a],
            -x * m.inv[a],
            self.util[b],
            x * m.inv[b],
        );
        let dm = m.moved(r, b) as i32 - m.moved(r, a) as i32;
        m.c.w_var * dv + m.c.w_change * f64::from(dm)
    }

    pub fn apply_move(&mut self, m: &Model, r: usize, b: usize) {
        let a = self.assign[r];
        if a == b {
            return;
        }
        let x = m.c.rate[r];
        let (ua, ub) = (self.util[a], self.util[b]);
        let (na, nb) = (ua - x * m.inv[a], ub + x * m.inv[b]);
        self.s1 += (na - ua) + (nb - ub);
        self.s2 += (na * na - ua * ua) + (nb * nb - ub * ub);
        self.util[a] = na;
        self.util[b] = nb;
        self.moves = self.moves + m.moved(r, b) as usize - m.moved(r, a) as usize;
        self.assign[r] = b;
        self.touched(m);
    }

    /// Cost change of exchanging the gateways of routes `r` and `s`, which
    /// must be on different gateways, each allowed on the other's.
    pub fn delta_swap(&self, m: &Model, r: usize, s: usize) -> f64 {
        let (a, b) = (self.assign[r], self.assign[s]);
        debug_assert_ne!(a, b);
        let d = m.c.rate[r] - m.c.rate[s];
        let dv = m.delta_var(
            self.s1,
            self.s2,
            self.util[a],
            -d * m.inv[a],
            self.util[b],
            d * m.inv[b],
        );
        let dm = m.moved(r, b) as i32 + m.moved(s, a) as i32
            - m.moved(r, a) as i32
            - m.moved(s, b) as i32;
        m.c.w_var * dv + m.c.w_change * f64::from(dm)
    }

    pub fn apply_swap(&mut self, m: &Model, r: usize, s: usize) {
        let (a, b) = (self.assign[r], self.assign[s]);
        self.apply_move(m, r, b);
        self.apply_move(m, s, a);
    }
}

/// The end of a time budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub fn after(limit: Duration) -> Self {
        Self(Instant::now().checked_add(limit))
    }

    pub fn passed(&self) -> bool {
        self.0.is_some_and(|end| Instant::now() >= end)
    }

    /// A deadline `share` of the way from now to this one.
    pub fn share(&self, share: f64) -> Self {
        match self.0 {
            Some(end) => {
                let now = Instant::now();
                Self(Some(
                    now + end.saturating_duration_since(now).mul_f64(share),
                ))
            }
            None => *self,
        }
    }
}

/// Local search to a local optimum: best single moves of every route, then
/// swaps between the most utilised gateway and the least utilised ones, until
/// neither improves, `max_passes` passes are done or the deadline passes.
pub(crate) fn descend(m: &Model, st: &mut State, max_passes: usize, deadline: &Deadline) {
    descend_routes(m, st, 0..m.routes(), max_passes, deadline);
}

/// [`descend`] with the single moves limited to `routes`.
pub(crate) fn descend_routes(
    m: &Model,
    st: &mut State,
    routes: impl Iterator<Item = usize> + Clone,
    max_passes: usize,
    deadline: &Deadline,
) {
    let done = |st: &State| deadline.passed() || m.at_floor(st.cost(m));
    for _ in 0..max_passes {
        if done(st) {
            break;
        }
        let moved = move_pass(m, st, routes.clone());
        // Swaps are cheap next to a pass of moves: make them while they help.
        let mut swapped = 0;
        while swapped < m.routes() && !done(st) && swap_pass(m, st) {
            swapped += 1;
        }
        if !moved && swapped == 0 {
            break;
        }
    }
    st.resync(m);
}

/// Moves each route to the gateway that lowers the cost most; true if any did.
fn move_pass(m: &Model, st: &mut State, routes: impl Iterator<Item = usize>) -> bool {
    let mut any = false;
    for r in routes {
        let a = st.assign[r];
        let cost = st.cost(m);
        let mut best = (0.0, a);
        for &b in &m.c.allowed[r] {
            if b != a {
                let d = st.delta_move(m, r, b);
                if improves(d, cost) && d < best.0 {
                    best = (d, b);
                }
            }
        }
        if best.1 != a {
            st.apply_move(m, r, best.1);
            any = true;
        }
    }
    any
}

/// Live gateways by utilisation, ascending.
pub(crate) fn by_util(m: &Model, st: &State) -> Vec<usize> {
    let mut gws: Vec<usize> = (0..m.gateways()).filter(|&g| m.inv[g] > 0.0).collect();
    gws.sort_by(|&a, &b| st.util[a].total_cmp(&st.util[b]).then(a.cmp(&b)));
    gws
}

/// Looks for an improving swap between the most utilised gateway and each of
/// the others (least utilised first), applies the best one found with the
/// first partner that has one; true if it did.
fn swap_pass(m: &Model, st: &mut State) -> bool {
    let gws = by_util(m, st);
    let Some(&top) = gws.last() else {
        return false;
    };
    let mut members = vec![Vec::new(); m.gateways()];
    for (r, &g) in st.assign.iter().enumerate() {
        if m.c.rate[r] > 0.0 {
            members[g].push(r);
        }
    }
    let by_rate =
        |list: &mut Vec<usize>| list.sort_by(|&x, &y| m.c.rate[x].total_cmp(&m.c.rate[y]));
    by_rate(&mut members[top]);
    for &other in gws.iter().take(gws.len() - 1) {
        by_rate(&mut members[other]);
        if let Some((r, s)) = best_swap(m, st, &members[top], top, &members[other], other) {
            st.apply_swap(m, r, s);
            return true;
        }
    }
    false
}

/// The best improving swap of a route of gateway `a` with one of `b` (both
/// lists sorted by rate): for each route of `a`, the partners whose rates are
/// nearest the one that would even the two gateways out.
fn best_swap(
    m: &Model,
    st: &State,
    on_a: &[usize],
    a: usize,
    on_b: &[usize],
    b: usize,
) -> Option<(usize, usize)> {
    let cost = st.cost(m);
    // Moving t from a to b evens them out when u_a − t/c_a = u_b + t/c_b.
    let even = (st.util[a] - st.util[b]) / (m.inv[a] + m.inv[b]);
    let mut best: Option<(f64, usize, usize)> = None;
    for &r in on_a {
        if !m.allowed(r, b) {
            continue;
        }
        let ideal = m.c.rate[r] - even;
        let at = on_b.partition_point(|&s| m.c.rate[s] < ideal);
        for &s in &on_b[at.saturating_sub(3)..(at + 3).min(on_b.len())] {
            if !m.allowed(s, a) {
                continue;
            }
            let d = st.delta_swap(m, r, s);
            if improves(d, cost) && best.is_none_or(|(bd, _, _)| d < bd) {
                best = Some((d, r, s));
            }
        }
    }
    best.map(|(_, r, s)| (r, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::{Compiled, Gateway, Problem, Route};

    fn compiled(rates: &[f64], caps: &[f64], w_change: f64) -> Compiled {
        let p = Problem {
            gateways: caps
                .iter()
                .enumerate()
                .map(|(i, &capacity)| Gateway {
                    name: format!("gw{i}"),
                    capacity,
                })
                .collect(),
            routes: rates
                .iter()
                .enumerate()
                .map(|(i, &rate)| Route {
                    target: std::net::IpAddr::from([198, 18, 1, i as u8]),
                    host: None,
                    rate,
                    current: Some(format!("gw{}", i % caps.len())),
                    allowed: None,
                })
                .collect(),
            w_var: 1.0,
            w_change,
        };
        Compiled::new(&p).unwrap()
    }

    #[test]
    fn deltas_match_full_evaluation() {
        let c = compiled(&[5.0, 3.0, 2.5, 1.0, 0.0, 7.0], &[1.0, 2.0, 0.5], 0.1);
        let m = Model::new(&c);
        let assign = vec![0, 1, 2, 0, 1, 2];
        let st = State::new(&m, assign.clone());
        assert!((st.cost(&m) - c.evaluate(&assign).cost).abs() < 1e-12);
        for r in 0..6 {
            for b in 0..3 {
                let mut moved = assign.clone();
                moved[r] = b;
                let want = c.evaluate(&moved).cost - c.evaluate(&assign).cost;
                assert!(
                    (st.delta_move(&m, r, b) - want).abs() < 1e-12,
                    "move {r}→{b}"
                );
                let mut applied = st.clone();
                applied.apply_move(&m, r, b);
                assert!((applied.cost(&m) - c.evaluate(&moved).cost).abs() < 1e-12);
            }
            for s in 0..6 {
                if assign[r] != assign[s] {
                    let mut swapped = assign.clone();
                    swapped.swap(r, s);
                    let want = c.evaluate(&swapped).cost - c.evaluate(&assign).cost;
                    assert!(
                        (st.delta_swap(&m, r, s) - want).abs() < 1e-12,
                        "swap {r}↔{s}"
                    );
                }
            }
        }
    }

    #[test]
    fn deltas_handle_all_zero_rates() {
        let c = compiled(&[0.0, 0.0], &[1.0, 1.0], 0.5);
        let m = Model::new(&c);
        let st = State::new(&m, vec![0, 1]);
        assert_eq!(st.delta_move(&m, 0, 1), 0.5);
        assert_eq!(st.delta_swap(&m, 0, 1), 1.0);
    }
}
