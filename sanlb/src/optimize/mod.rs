//! The optimiser: the gateway map that minimises
//! `w_var · var_norm + w_change · moves` for a traffic matrix.
//!
//! Pure computation: no I/O, no global state; the only outside input is the
//! clock, for time limits. `sanlb plan` and the controller call [`solve`],
//! the one entry point.
//!
//! Definitions (docs/optimiser.md explains them for operators):
//! - load of gateway g = sum of the rates of the routes assigned to g;
//! - u_g = load_g / capacity_g over gateways with capacity > 0 (capacity 0 =
//!   drained: nothing may be assigned to it);
//! - var_norm = population variance of u / mean(u)² (0 when the mean is 0);
//! - moves = routes whose gateway differs from their `current` one;
//! - cost = w_var · var_norm + w_change · moves.

mod anneal;
mod exact;
mod genetic;
mod greedy;
mod state;
mod steepest;
mod tabu;

use std::{fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use self::state::{Deadline, Model, State};

/// A gateway that can carry routes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Unique name.
    pub name: String,
    /// Relative capacity (default 1.0); 0 = drained.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
}

fn default_capacity() -> f64 {
    1.0
}

/// The unit of assignment: a storage entity (target address), or in pair mode
/// a (host, target) pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Storage entity address.
    pub target: IpAddr,
    /// Host address in pair mode, `None` for a whole storage entity.
    #[serde(default)]
    pub host: Option<IpAddr>,
    /// Traffic rate (any unit, the same for all routes), ≥ 0.
    pub rate: f64,
    /// Gateway carrying it now, if any.
    #[serde(default)]
    pub current: Option<String>,
    /// Gateways allowed to carry it (reachability); `None` = all.
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
}

impl Route {
    /// `198.18.1.50` or `198.18.0.10→198.18.1.50`, for messages and tables.
    pub fn label(&self) -> String {
        match self.host {
            Some(h) => format!("{h}→{}", self.target),
            None => self.target.to_string(),
        }
    }
}

/// Weight of the normalised variance when none is given.
pub const DEFAULT_W_VAR: f64 = 1.0;
/// Weight of one move when none is given.
pub const DEFAULT_W_CHANGE: f64 = 0.01;

/// An optimisation problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// The gateways.
    pub gateways: Vec<Gateway>,
    /// The routes, in the order the assignment is returned.
    pub routes: Vec<Route>,
    /// Weight of the normalised variance.
    #[serde(default = "default_w_var")]
    pub w_var: f64,
    /// Weight of one move.
    #[serde(default = "default_w_change")]
    pub w_change: f64,
}

fn default_w_var() -> f64 {
    DEFAULT_W_VAR
}

fn default_w_change() -> f64 {
    DEFAULT_W_CHANGE
}

impl Problem {
    /// Index of each gateway by name (duplicate names, which [`Compiled::new`]
    /// refuses, map to the last one).
    pub fn gateway_index(&self) -> std::collections::HashMap<&str, usize> {
        self.gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i))
            .collect()
    }
}

/// Which algorithm to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Exact while it finishes in the time limit, else the heuristics.
    #[default]
    Auto,
    /// Exhaustive search with pruning; proves optimality.
    Exact,
    /// Change-aware longest-processing-time first.
    Greedy,
    /// Simulated annealing.
    Anneal,
    /// Genetic algorithm.
    Genetic,
    /// Tabu search.
    Tabu,
}

impl fmt::Display for Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Exact => "exact",
            Self::Greedy => "greedy",
            Self::Anneal => "anneal",
            Self::Genetic => "genetic",
            Self::Tabu => "tabu",
        })
    }
}

/// How to solve.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The algorithm.
    pub solver: Solver,
    /// Upper bound of the search time (heuristics stop, exact gives up).
    pub time_limit: Duration,
    /// Seed of the randomised heuristics (same seed, same result).
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            solver: Solver::Auto,
            time_limit: Duration::from_secs(1),
            seed: 0,
        }
    }
}

/// A solved map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Solution {
    /// Index into `Problem::gateways` for each route, in route order.
    pub assignment: Vec<usize>,
    /// The cost of `assignment`.
    pub cost: f64,
    /// Its normalised variance.
    pub var_norm: f64,
    /// Its moves against `current`.
    pub moves: usize,
    /// Proven optimal: the exact search finished, or the cost reached
    /// [`Compiled::lower_bound`] (within a relative 1e-9).
    pub optimal: bool,
    /// The algorithm whose result this is.
    pub solver: Solver,
    /// Load of each gateway, in gateway order.
    pub loads: Vec<f64>,
}

/// Cost terms of one assignment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// `w_var · var_norm + w_change · moves`.
    pub cost: f64,
    /// Normalised variance of utilisation.
    pub var_norm: f64,
    /// Moves against `current`.
    pub moves: usize,
    /// Load of each gateway.
    pub loads: Vec<f64>,
}

/// Why a problem cannot be solved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimizeError {
    /// No gateway at all.
    #[error("no gateways")]
    NoGateways,
    /// Two gateways share a name.
    #[error("duplicate gateway {0:?}")]
    DuplicateGateway(String),
    /// Negative, NaN or infinite capacity.
    #[error("gateway {gateway:?}: invalid capacity {capacity}")]
    InvalidCapacity {
        /// The gateway.
        gateway: String,
        /// The value.
        capacity: f64,
    },
    /// Negative, NaN or infinite rate.
    #[error("route {route}: invalid rate {rate} (must be a finite number ≥ 0)")]
    InvalidRate {
        /// The route label.
        route: String,
        /// The value.
        rate: f64,
    },
    /// The same route twice.
    #[error("route {0}: listed twice")]
    DuplicateRoute(String),
    /// `current` or `allowed` names a gateway that does not exist.
    #[error("route {route}: unknown gateway {gateway:?}")]
    UnknownGateway {
        /// The route label.
        route: String,
        /// The name.
        gateway: String,
    },
    /// No live (capacity > 0) allowed gateway for a route.
    #[error("route {0}: no allowed gateway with capacity > 0")]
    Infeasible(String),
    /// Capacities so far apart that utilisations would overflow.
    #[error(
        "gateway {gateway:?}: capacity {capacity} is more than {MAX_CAPACITY_SPAN:e} times below the largest ({largest})"
    )]
    CapacitySpan {
        /// The gateway.
        gateway: String,
        /// Its capacity.
        capacity: f64,
        /// The largest capacity.
        largest: f64,
    },
    /// A weight is negative, NaN, infinite or above [`MAX_WEIGHT`].
    #[error("invalid weight {name} = {value} (must be a number in [0, {MAX_WEIGHT:e}])")]
    InvalidWeight {
        /// `w_var` or `w_change`.
        name: &'static str,
        /// The value.
        value: f64,
    },
    /// An assignment given for evaluation does not fit the problem.
    #[error("assignment: {0}")]
    InvalidAssignment(String),
}

/// Largest weight: with at most 2⁶⁴ moves and a var_norm of at most the
/// number of gateways, every cost stays finite.
pub const MAX_WEIGHT: f64 = 1e12;

/// Largest ratio between two positive capacities: with rates scaled to at
/// most 1 and capacities to at most 1, every utilisation then stays below
/// 1e12 and every sum of squares finite.
pub const MAX_CAPACITY_SPAN: f64 = 1e12;

/// The problem with names resolved to indices, validated, and scaled:
/// capacities divided by the largest, rates by the largest, so that any
/// accepted magnitudes (1e-300 or 1e300) give finite costs. var_norm and
/// the cost do not change under either scaling; loads are scaled back.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Capacity per gateway, the largest 1 (0 = drained).
    pub capacity: Vec<f64>,
    /// Rate per route, the largest 1.
    pub rate: Vec<f64>,
    /// What the rates were divided by.
    pub rate_scale: f64,
    /// Current gateway per route.
    pub current: Vec<Option<usize>>,
    /// Allowed live gateways per route, ascending (never empty).
    pub allowed: Vec<Vec<usize>>,
    /// Weight of var_norm.
    pub w_var: f64,
    /// Weight of a move.
    pub w_change: f64,
}

impl Compiled {
    /// Validates `p` and resolves names.
    pub fn new(p: &Problem) -> Result<Self, OptimizeError> {
        for (name, value) in [("w_var", p.w_var), ("w_change", p.w_change)] {
            if !(0.0..=MAX_WEIGHT).contains(&value) {
                return Err(OptimizeError::InvalidWeight { name, value });
            }
        }
        if p.gateways.is_empty() {
            return Err(OptimizeError::NoGateways);
        }
        let mut index = std::collections::HashMap::new();
        for (i, g) in p.gateways.iter().enumerate() {
            if !g.capacity.is_finite() || g.capacity < 0.0 {
                return Err(OptimizeError::InvalidCapacity {
                    gateway: g.name.clone(),
                    capacity: g.capacity,
                });
            }
            if index.insert(g.name.as_str(), i).is_some() {
                return Err(OptimizeError::DuplicateGateway(g.name.clone()));
            }
        }
        let lookup = |route: &Route, name: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| OptimizeError::UnknownGateway {
                    route: route.label(),
                    gateway: name.to_owned(),
                })
        };
        let max_cap = p.gateways.iter().map(|g| g.capacity).fold(0.0, f64::max);
        if let Some(g) = p
            .gateways
            .iter()
            .find(|g| g.capacity > 0.0 && g.capacity * MAX_CAPACITY_SPAN < max_cap)
        {
            return Err(OptimizeError::CapacitySpan {
                gateway: g.name.clone(),
                capacity: g.capacity,
                largest: max_cap,
            });
        }
        let mut seen = std::collections::HashSet::new();
        let mut c = Self {
            capacity: p
                .gateways
                .iter()
                .map(|g| {
                    if g.capacity > 0.0 {
                        g.capacity / max_cap
                    } else {
                        0.0
                    }
                })
                .collect(),
            rate: Vec::with_capacity(p.routes.len()),
            rate_scale: 1.0,
            current: Vec::with_capacity(p.routes.len()),
            allowed: Vec::with_capacity(p.routes.len()),
            w_var: p.w_var,
            w_change: p.w_change,
        };
        for r in &p.routes {
            if !r.rate.is_finite() || r.rate < 0.0 {
                return Err(OptimizeError::InvalidRate {
                    route: r.label(),
                    rate: r.rate,
                });
            }
            if !seen.insert((r.host, r.target)) {
                return Err(OptimizeError::DuplicateRoute(r.label()));
            }
            let current = r.current.as_deref().map(|n| lookup(r, n)).transpose()?;
            let mut allowed: Vec<usize> = match &r.allowed {
                Some(names) => names
                    .iter()
                    .map(|n| lookup(r, n))
                    .collect::<Result<_, _>>()?,
                None => (0..p.gateways.len()).collect(),
            };
            allowed.retain(|&g| c.capacity[g] > 0.0);
            allowed.sort_unstable();
            allowed.dedup();
            if allowed.is_empty() {
                return Err(OptimizeError::Infeasible(r.label()));
            }
            c.rate.push(r.rate);
            c.current.push(current);
            c.allowed.push(allowed);
        }
        let max_rate = c.rate.iter().copied().fold(0.0, f64::max);
        if max_rate > 0.0 {
            c.rate_scale = max_rate;
            for r in &mut c.rate {
                *r /= max_rate;
            }
        }
        Ok(c)
    }

    /// Cost terms of `assignment` (which must be valid for this problem).
    pub fn evaluate(&self, assignment: &[usize]) -> Evaluation {
        let mut loads = vec![0.0; self.capacity.len()];
        let mut moves = 0;
        for (r, &g) in assignment.iter().enumerate() {
            loads[g] += self.rate[r];
            if self.current[r].is_some_and(|c| c != g) {
                moves += 1;
            }
        }
        let var_norm = var_norm(&loads, &self.capacity);
        for l in &mut loads {
            *l *= self.rate_scale;
        }
        Evaluation {
            cost: self.w_var * var_norm + self.w_change * moves as f64,
            var_norm,
            moves,
            loads,
        }
    }

    /// A lower bound of the cost of every valid assignment: the moves forced
    /// by reachability plus the least var_norm of a fractional assignment
    /// (see docs/optimiser.md). A solution that reaches it is optimal.
    pub fn lower_bound(&self) -> f64 {
        exact::root_bound(&Model::new(self))
    }

    /// Checks that `assignment` maps every route to one of its allowed gateways.
    pub fn check(&self, assignment: &[usize]) -> Result<(), OptimizeError> {
        if assignment.len() != self.rate.len() {
            return Err(OptimizeError::InvalidAssignment(format!(
                "{} entries for {} routes",
                assignment.len(),
                self.rate.len()
            )));
        }
        for (r, &g) in assignment.iter().enumerate() {
            if self.allowed[r].binary_search(&g).is_err() {
                return Err(OptimizeError::InvalidAssignment(format!(
                    "route #{r} on gateway #{g}, which it may not use"
                )));
            }
        }
        Ok(())
    }
}

/// Population variance of `load/capacity` over gateways with capacity > 0,
/// divided by the squared mean (0 when the mean is 0). Two-pass, so that it
/// stays accurate when the variance is tiny against the mean.
///
/// Utilisations are divided by the largest first, so that extreme
/// magnitudes neither overflow nor underflow the squares; an infinite load
/// (a sum past f64) gives 0 rather than NaN.
pub fn var_norm(loads: &[f64], capacity: &[f64]) -> f64 {
    let raw = || {
        loads
            .iter()
            .zip(capacity)
            .filter(|(_, c)| **c > 0.0)
            .map(|(l, c)| l / c)
    };
    let top = raw().fold(0.0, f64::max);
    if !top.is_finite() || top <= 0.0 {
        return 0.0;
    }
    let utils = || raw().map(|u| u / top);
    let n = utils().count() as f64;
    let sum: f64 = utils().sum();
    if n == 0.0 || sum <= 0.0 {
        return 0.0;
    }
    let mean = sum / n;
    let var = utils().map(|u| (u - mean) * (u - mean)).sum::<f64>() / n;
    var / (mean * mean)
}

/// Evaluates a given assignment of `p`.
pub fn evaluate(p: &Problem, assignment: &[usize]) -> Result<Evaluation, OptimizeError> {
    let c = Compiled::new(p)?;
    c.check(assignment)?;
    Ok(c.evaluate(assignment))
}

/// The map in force of a problem (every route on its `current` gateway):
/// its loads, var_norm and cost. `sanlb plan` prints it as "before", the
/// controller compares a proposal with it and shows it in its status.
#[derive(Clone, Debug, PartialEq)]
pub struct InForce {
    /// Load per gateway (routes on a drained gateway count for it).
    pub loads: Vec<f64>,
    /// Normalised variance over the gateways with capacity > 0.
    pub var_norm: f64,
    /// `w_var · var_norm` (no moves, by definition).
    pub cost: f64,
    /// Routes without a current gateway (not counted in the loads).
    pub unplaced: usize,
    /// Routes whose current gateway is drained (capacity 0: dead or drained).
    pub stranded: usize,
}

impl InForce {
    /// Every route sits on a live gateway: the map in force is a valid
    /// assignment, so its cost can be compared with a proposal's.
    pub fn complete(&self) -> bool {
        self.unplaced == 0 && self.stranded == 0
    }
}

/// The figures of the map in force of `p`.
pub fn in_force(p: &Problem) -> InForce {
    let index = p.gateway_index();
    let mut loads = vec![0.0; p.gateways.len()];
    let (mut unplaced, mut stranded) = (0, 0);
    // Summed in units of the largest rate, so that no sum overflows.
    let scale = p
        .routes
        .iter()
        .map(|r| r.rate)
        .filter(|r| r.is_finite())
        .fold(0.0, f64::max);
    let scale = if scale > 0.0 { scale } else { 1.0 };
    for r in &p.routes {
        match r.current.as_deref().and_then(|c| index.get(c)) {
            Some(&g) => {
                loads[g] += r.rate / scale;
                if p.gateways[g].capacity <= 0.0 {
                    stranded += 1;
                }
            }
            None => unplaced += 1,
        }
    }
    let capacity: Vec<f64> = p.gateways.iter().map(|g| g.capacity).collect();
    let v = var_norm(&loads, &capacity);
    for l in &mut loads {
        *l *= scale;
    }
    InForce {
        loads,
        var_norm: v,
        cost: p.w_var * v,
        unplaced,
        stranded,
    }
}

/// Finds the best map `o` allows for `p`: the one entry point of
/// `sanlb plan` and of the controller, so both return the same map for the
/// same problem.
///
/// When some routes have a current gateway, two candidates are scored on
/// the same objective: the solver started from the map in force, and the
/// solver from scratch (no current gateway), its gateways renamed to
/// overlap the map in force most, whose moves are then counted. A
/// change-aware heuristic stays close to the map it starts from and can
/// settle in a local optimum; the fresh start escapes it when the gain pays
/// for the moves. The cheaper wins (the first on a tie). The start from the
/// map in force comes first with the whole time limit (its solvers stop at a
/// local optimum or a step budget, mostly long before); the fresh start gets
/// what is left, if anything, and none when the first is proven optimal.
pub fn solve(p: &Problem, o: &Options) -> Result<Solution, OptimizeError> {
    let started = std::time::Instant::now();
    let c = Compiled::new(p)?;
    if c.current.iter().all(Option::is_none) {
        return Ok(solve_compiled(&c, o));
    }
    let near = solve_compiled(&c, o);
    let left = o.time_limit.saturating_sub(started.elapsed());
    if near.optimal || left.is_zero() {
        return Ok(near);
    }
    let mut scratch = c.clone();
    scratch.current.iter_mut().for_each(|g| *g = None);
    let rest = Options {
        time_limit: left,
        ..o.clone()
    };
    let mut fresh = solve_compiled(&scratch, &rest);
    relabel(&c, &mut fresh.assignment);
    let scored = c.evaluate(&fresh.assignment);
    if scored.cost < near.cost - 1e-12 {
        Ok(Solution {
            cost: scored.cost,
            var_norm: scored.var_norm,
            moves: scored.moves,
            loads: scored.loads,
            optimal: false,
            ..fresh
        })
    } else {
        Ok(near)
    }
}

/// Renames the gateways of a map made from scratch to keep as many routes
/// as possible where they are: a map from scratch is only defined up to a
/// permutation of gateways of equal capacity, and the permutation that
/// overlaps most with the map in force moves least. Greedy matching by
/// overlap (largest first); loads are only permuted among equal capacities
/// and allowed sets are respected, so the map stays valid and var_norm
/// does not change.
fn relabel(c: &Compiled, assignment: &mut [usize]) {
    let k = c.capacity.len();
    let mut overlap = vec![0usize; k * k];
    for (r, &b) in assignment.iter().enumerate() {
        if let Some(g) = c.current[r] {
            overlap[b * k + g] += 1;
        }
    }
    let same = |a: usize, b: usize| c.capacity[a].to_bits() == c.capacity[b].to_bits();
    let mut pairs: Vec<(usize, usize, usize)> = (0..k)
        .flat_map(|b| (0..k).map(move |g| (b, g)))
        .filter(|&(b, g)| overlap[b * k + g] > 0 && same(b, g))
        .map(|(b, g)| (overlap[b * k + g], b, g))
        .collect();
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut perm: Vec<Option<usize>> = vec![None; k];
    let mut taken = vec![false; k];
    for (_, b, g) in pairs {
        if perm[b].is_none() && !taken[g] {
            perm[b] = Some(g);
            taken[g] = true;
        }
    }
    for (b, slot) in perm.iter_mut().enumerate() {
        if slot.is_none() {
            // A bin's own capacity class always has a free member left.
            let g = (0..k).find(|&g| !taken[g] && same(b, g)).unwrap_or(b);
            *slot = Some(g);
            taken[g] = true;
        }
    }
    let renamed: Vec<usize> = assignment.iter().map(|&a| perm[a].unwrap_or(a)).collect();
    // Reachability is per route: a renaming that breaks an allowed set is
    // not a renaming of the same map; keep the map as solved then.
    if c.check(&renamed).is_ok() {
        assignment.copy_from_slice(&renamed);
    }
}

/// Routes the exact search may be tried on by `auto`, at most (not counting
/// those with a zero rate or a single allowed gateway).
const AUTO_EXACT_MAX_ROUTES: usize = 48;
/// Nodes of the exact search `auto` spends before falling back to the
/// heuristics (a deterministic budget, about 0.1–0.3 s).
const AUTO_EXACT_NODES: u64 = 2_000_000;

/// Movable routes up to which `auto` also runs the genetic algorithm, and up
/// to which it also anneals. Past these sizes they cost far more than they
/// gained in the benchmarks (docs/optimiser.md), where greedy is already
/// within 1e-4 % of the bound.
const AUTO_GENETIC_MAX_ROUTES: usize = 256;
const AUTO_ANNEAL_MAX_ROUTES: usize = 2_000;

/// [`solve`] for an already validated problem.
///
/// Every solver starts from the greedy solution and never returns a worse
/// one. `optimal` is true when the exact search finished, or when the cost
/// reached the lower bound of [`Compiled::lower_bound`] (to a relative 1e-9).
pub fn solve_compiled(c: &Compiled, o: &Options) -> Solution {
    let mut m = Model::new(c);
    m.floor = exact::root_bound(&m);
    let deadline = Deadline::after(o.time_limit);
    let greedy = greedy::solve(&m, &deadline);
    let reaches_bound = |st: &State| m.at_floor(st.cost(&m));
    let (state, solver, proven) = match o.solver {
        Solver::Greedy => (greedy, Solver::Greedy, false),
        Solver::Exact => {
            let out = exact::solve(&m, &greedy, deadline, u64::MAX);
            (out.state, Solver::Exact, out.proven)
        }
        Solver::Anneal | Solver::Tabu | Solver::Genetic => {
            let st = heuristic(o.solver, &m, &greedy, o.seed, &deadline);
            (st, o.solver, false)
        }
        Solver::Auto => auto(&m, greedy, &reaches_bound, o.seed, &deadline),
    };
    let optimal = proven || reaches_bound(&state);
    let e = c.evaluate(&state.assign);
    Solution {
        assignment: state.assign,
        cost: e.cost,
        var_norm: e.var_norm,
        moves: e.moves,
        optimal,
        solver,
        loads: e.loads,
    }
}

fn heuristic(solver: Solver, m: &Model, start: &State, seed: u64, deadline: &Deadline) -> State {
    match solver {
        Solver::Anneal => anneal::solve(m, start, seed, deadline),
        Solver::Tabu => tabu::solve(m, start, seed, deadline),
        Solver::Genetic => genetic::solve(m, start, seed, deadline),
        Solver::Auto | Solver::Exact | Solver::Greedy => start.clone(),
    }
}

/// Greedy; stop if it reaches the lower bound. Then the exact search on small
/// problems, with a node budget and half the time; stop if it finishes. Then
/// tabu, annealing (up to 2,000 movable routes) and the genetic algorithm (up
/// to 256) in turn, each from the best so far, sharing the remaining time;
/// stop as soon as one reaches the bound.
fn auto(
    m: &Model,
    greedy: State,
    reaches_bound: &dyn Fn(&State) -> bool,
    seed: u64,
    deadline: &Deadline,
) -> (State, Solver, bool) {
    let mut best = (greedy, Solver::Greedy);
    if reaches_bound(&best.0) {
        return (best.0, best.1, true);
    }
    let free = (0..m.routes())
        .filter(|&r| m.c.rate[r] > 0.0 && m.c.allowed[r].len() > 1)
        .count();
    if free <= AUTO_EXACT_MAX_ROUTES {
        let out = exact::solve(m, &best.0, deadline.share(0.5), AUTO_EXACT_NODES);
        if out.proven {
            return (out.state, Solver::Exact, true);
        }
        if out.state.cost(m) < best.0.cost(m) {
            best = (out.state, Solver::Exact);
        }
    }
    for (solver, share, max_routes) in [
        (Solver::Tabu, 1.0 / 3.0, usize::MAX),
        (Solver::Anneal, 0.5, AUTO_ANNEAL_MAX_ROUTES),
        (Solver::Genetic, 1.0, AUTO_GENETIC_MAX_ROUTES),
    ] {
        if deadline.passed() || free > max_routes {
            break;
        }
        let st = heuristic(solver, m, &best.0, seed, &deadline.share(share));
        if st.cost(m) < best.0.cost(m) {
            best = (st, solver);
            if reaches_bound(&best.0) {
                return (best.0, best.1, true);
            }
        }
    }
    (best.0, best.1, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(rates: &[f64], gws: usize) -> Problem {
        Problem {
            gateways: (0..gws)
                .map(|i| Gateway {
                    name: format!("gw{}", i + 1),
                    capacity: 1.0,
                })
                .collect(),
            routes: rates
                .iter()
                .enumerate()
                .map(|(i, &rate)| Route {
                    target: IpAddr::from([198, 18, 1, i as u8 + 1]),
                    host: None,
                    rate,
                    current: Some("gw1".into()),
                    allowed: None,
                })
                .collect(),
            w_var: 1.0,
            w_change: 0.0,
        }
    }

    #[test]
    fn var_norm_of_equal_utilisation_is_zero() {
        assert_eq!(var_norm(&[2.0, 4.0], &[1.0, 2.0]), 0.0);
        assert_eq!(var_norm(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        // u = (1, 3): mean 2, variance 1, normalised 1/4.
        assert!((var_norm(&[1.0, 3.0], &[1.0, 1.0]) - 0.25).abs() < 1e-12);
        // Drained gateways do not count.
        assert!((var_norm(&[1.0, 3.0, 0.0], &[1.0, 1.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn greedy_balances_an_easy_case() {
        let s = solve(
            &problem(&[4.0, 3.0, 3.0, 2.0, 2.0, 2.0], 2),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(s.loads, vec![8.0, 8.0]);
        assert_eq!(s.var_norm, 0.0);
    }

    #[test]
    fn bad_input_names_the_route() {
        let mut p = problem(&[1.0], 2);
        p.routes[0].rate = f64::NAN;
        assert!(matches!(
            Compiled::new(&p),
            Err(OptimizeError::InvalidRate { .. })
        ));
        let mut p = problem(&[1.0], 2);
        p.routes[0].current = Some("gw9".into());
        let e = Compiled::new(&p).unwrap_err();
        assert_eq!(e.to_string(), "route 198.18.1.1: unknown gateway \"gw9\"");
        let mut p = problem(&[1.0], 2);
        p.routes[0].allowed = Some(vec!["gw2".into()]);
        p.gateways[1].capacity = 0.0;
        assert_eq!(
            Compiled::new(&p).unwrap_err(),
            OptimizeError::Infeasible("198.18.1.1".into())
        );
    }
}
