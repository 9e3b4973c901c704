//! When and whether the controller adopts a new map: the problem it hands
//! the optimiser (built off the lock, solved off the timer), and the
//! decision on the proposal (adopt, keep, or drop as superseded), with its
//! reason kept for status.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::{
    Controller,
    controls::{self, Verdict},
    ownership::RouteKey,
};
use crate::{
    optimize::{self, Gateway, OptimizeError, Options, Problem, Route, Solution},
    proto::{Mode, RebalanceRecord},
};

/// Rebalance decisions kept for status.
pub(super) const HISTORY: usize = 32;

/// Why a rebalance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic one.
    Interval,
    /// Routes sit on dead gateways (or nowhere).
    Failover,
    /// A pin is not met: only pinned routes move.
    Pin,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Failover => "failover",
            Self::Pin => "pin",
        }
    }
}

/// A rebalance under way: the problem to solve outside the controller's
/// lock, and what it was built from.
#[derive(Debug, Clone)]
pub struct Rebalance {
    /// The optimisation problem.
    pub problem: Problem,
    /// Options for the solver.
    pub options: Options,
    keys: Vec<RouteKey>,
    epoch: u64,
    trigger: Trigger,
}

impl Rebalance {
    /// Why it runs.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// Runs the optimiser (CPU-bound: call it off the async workers) and
    /// times it.
    pub fn solve(&self) -> Result<(Solution, Duration), OptimizeError> {
        let t = Instant::now();
        let s = optimize::solve(&self.problem, &self.options)?;
        Ok((s, t.elapsed()))
    }
}

impl Controller {
    /// The map in force as an optimisation problem: every route with its
    /// rate and the gateway it is assigned to, dead gateways drained (not
    /// removed, so that moving off them counts and `current` still names
    /// them). Dead gateways that carry nothing are left out unless
    /// `all_gateways` (status shows them; a solve need not see them). Route
    /// `i` is `keys[i]`. In pair mode the routes are the pairs (portals are
    /// placed by their own rule), each allowed only on gateways with a data
    /// address for its entity; a pair no alive gateway can carry is left
    /// out and stays where it is.
    pub(super) fn problem(&self, all_gateways: bool) -> (Problem, Vec<RouteKey>) {
        let rates = self.rates();
        let gateways = self
            .gateways
            .iter()
            .filter(|(n, g)| all_gateways || g.alive || self.routes.involves(n))
            .map(|(n, g)| Gateway {
                name: n.clone(),
                capacity: if g.alive { g.capacity } else { 0.0 },
            })
            .collect();
        let pair = self.cfg.mode == Mode::Pair;
        let (keys, routes): (Vec<RouteKey>, Vec<Route>) = self
            .routes
            .iter()
            .filter(|(k, _)| !pair || (k.0.is_some() && self.placeable(k)))
            .map(|(k, r)| {
                let route = Route {
                    target: k.1,
                    host: k.0,
                    rate: rates.get(k).copied().unwrap_or(0.0),
                    current: r.ownership.assigned().map(str::to_owned),
                    allowed: if pair { self.pair_allowed(k) } else { None },
                };
                (*k, route)
            })
            .unzip();
        let problem = Problem {
            gateways,
            routes,
            w_var: self.cfg.w_var,
            w_change: self.cfg.w_change,
        };
        (problem, keys)
    }

    /// The problem for a rebalance, or `None` when there is nothing to do:
    /// grace not over, no alive gateway, no route, or (periodic only) moves
    /// still in flight or fewer than `window` intervals since the last
    /// adopted map.
    pub fn start_rebalance(&mut self, trigger: Trigger) -> Option<Rebalance> {
        self.start_rebalance_at(trigger, Instant::now())
    }

    /// [`Controller::start_rebalance`] at `now` (the cool-downs' clock).
    /// Pins and cool-downs restrict the routes (`controls.rs`); in advise
    /// mode a failover or pin decision is computed once per state.
    pub fn start_rebalance_at(&mut self, trigger: Trigger, now: Instant) -> Option<Rebalance> {
        if !self.ready || self.routes.is_empty() || !self.gateways.any_alive() {
            return None;
        }
        if trigger == Trigger::Interval
            && (self.routes.moves_in_flight() > 0 || self.settled < self.cfg.window)
        {
            return None;
        }
        if trigger != Trigger::Interval && !self.forced_due() {
            return None;
        }
        let (mut problem, keys) = self.problem(false);
        self.constrain(&mut problem, &keys, trigger, now);
        Some(Rebalance {
            problem,
            options: self.cfg.solver.clone(),
            keys,
            epoch: self.epoch,
            trigger,
        })
    }

    /// Adopts `solution` of `job` if it is still current and, for a
    /// periodic rebalance, gains at least `min_gain`.
    pub fn finish_rebalance(
        &mut self,
        job: &Rebalance,
        solution: &Solution,
        solve_time: Duration,
        now: Instant,
    ) -> RebalanceRecord {
        self.events.last_solve_s = solve_time.as_secs_f64();
        self.events.solve_times.observe(solve_time.as_secs_f64());
        self.seen(now);
        let in_force = optimize::in_force(&job.problem);
        let before = in_force.complete().then_some(&in_force);
        let gain = before.map_or(f64::INFINITY, |b| b.cost - solution.cost);
        // A route whose gateway its `allowed` set excludes (a pin not met)
        // must move whatever the gain.
        let forced = job.problem.routes.iter().any(|r| {
            r.allowed
                .as_ref()
                .zip(r.current.as_ref())
                .is_some_and(|(a, c)| !a.contains(c))
        });
        let (changes, moved) = controls::changes(&job.problem, &job.keys, &solution.assignment);
        let mut record = RebalanceRecord {
            at_ms: controls::unix_ms(),
            generation: self.generation,
            trigger: job.trigger.label().into(),
            adopted: false,
            result: String::new(),
            reason: String::new(),
            cost_before: before.map(|b| b.cost),
            cost_after: solution.cost,
            var_norm_before: before.map(|b| b.var_norm),
            var_norm_after: solution.var_norm,
            moves: solution.moves,
            duration_ms: solve_time.as_secs_f64() * 1000.0,
            solver: solution.solver,
            changes,
        };
        let keep = if before.is_some() && solution.moves == 0 {
            Some("no better map".to_owned())
        } else if before.is_some()
            && job.trigger == Trigger::Interval
            && !forced
            && gain < self.cfg.min_gain
        {
            Some(format!("gain {gain:.4} < min-gain {}", self.cfg.min_gain))
        } else {
            None
        };
        let why = || {
            if before.is_none() {
                "routes on dead gateways or on none".to_owned()
            } else if job.trigger == Trigger::Pin || forced {
                format!("pins not met (gain {gain:.4})")
            } else {
                format!("gain {gain:.4}")
            }
        };
        let forced_trigger = job.trigger != Trigger::Interval;
        let result = if job.epoch != self.epoch {
            record.reason = "state changed while solving: retry next time".into();
            "superseded"
        } else {
            // Advise mode and pause record every decision as theirs, with
            // what it would have been.
            match (self.verdict(job.trigger), keep) {
                (Verdict::Adopt, Some(reason)) => {
                    record.reason = reason;
                    "kept"
                }
                (Verdict::Adopt, None) => {
                    record.reason = why();
                    self.apply(job, solution, now);
                    self.moved(&moved, now);
                    record.adopted = true;
                    record.generation = self.generation;
                    "adopted"
                }
                (verdict, keep) => {
                    let (label, result) = match verdict {
                        Verdict::Advise => ("advise mode", "advised"),
                        _ => ("paused", "paused"),
                    };
                    let keeps = keep.is_some();
                    record.reason = match keep {
                        Some(reason) => format!("{label}: would keep the map ({reason})"),
                        None => format!("{label}: would adopt ({})", why()),
                    };
                    let would_move = if keeps { 0 } else { solution.moves };
                    if keeps {
                        record.changes.clear();
                    }
                    self.withheld(job.epoch, forced_trigger, would_move);
                    result
                }
            }
        };
        record.result = result.into();
        if !record.adopted && result != "superseded" {
            for c in &record.changes {
                tracing::info!(
                    target = %c.target,
                    from = c.from.as_deref().unwrap_or("-"),
                    to = %c.to,
                    result,
                    "would move"
                );
            }
        }
        *self.events.rebalances.entry(result).or_default() += 1;
        tracing::info!(
            trigger = job.trigger.label(),
            result,
            reason = %record.reason,
            generation = self.generation,
            moves = solution.moves,
            var_norm = solution.var_norm,
            solve_ms = record.duration_ms,
            "rebalance"
        );
        // The same decision repeated (keeping the map, or the same advice)
        // is one entry: the newest.
        if !record.adopted
            && self.history.back().is_some_and(|h| {
                !h.adopted && h.result == record.result && h.changes == record.changes
            })
        {
            self.history.pop_back();
        }
        self.history.push_back(record.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.flush();
        record
    }

    /// Gives every route the gateway `solution` assigns it, in a new
    /// generation; address ownership breaks before it makes.
    fn apply(&mut self, job: &Rebalance, solution: &Solution, now: Instant) {
        let g = self.bump();
        self.settled = 0;
        let alive: BTreeSet<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| g.alive)
            .map(|(n, _)| n.clone())
            .collect();
        for (key, &gi) in job.keys.iter().zip(&solution.assignment) {
            let to = &job.problem.gateways[gi].name;
            let moved = match self.cfg.mode {
                Mode::Target => self
                    .routes
                    .assign(key, to, |n| alive.contains(n), true, g, now),
                Mode::Pair => self
                    .routes
                    .assign_pair(key, to, |n| alive.contains(n), g, now),
            };
            if moved {
                self.events.moves += 1;
            }
        }
    }
}
