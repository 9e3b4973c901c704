//! The load history the status page charts: one sample per interval of
//! every gateway's load and utilisation under the map in force, kept in
//! memory (it is a view, not state: a restart starts it afresh).

use std::collections::VecDeque;

use super::{Controller, controls::unix_ms, view::utilisation};
use crate::{
    optimize,
    proto::{GatewayLoad, History, HistorySample},
};

/// Samples kept: ten minutes at the default 5 s interval.
const SAMPLES: usize = 120;
/// Most (sample, gateway) entries kept, whatever the number of gateways.
const ENTRIES: usize = 1 << 16;

/// The history.
#[derive(Debug, Default)]
pub(super) struct Trend {
    samples: VecDeque<HistorySample>,
}

impl Controller {
    /// Takes one sample (at the end of an interval).
    pub(super) fn sample_trend(&mut self) {
        let (problem, _) = self.problem(true);
        let f = optimize::in_force(&problem);
        let caps: Vec<(f64, bool)> = self
            .gateways
            .iter()
            .map(|(_, g)| (g.capacity, g.alive))
            .collect();
        let u = utilisation(&f.loads, &caps);
        let gateways: Vec<GatewayLoad> = self
            .gateways
            .iter()
            .zip(f.loads.iter().zip(&u))
            .map(|((name, g), (&load, &utilisation))| GatewayLoad {
                name: name.clone(),
                alive: g.alive,
                load,
                utilisation,
            })
            .collect();
        let keep = SAMPLES.min(ENTRIES / gateways.len().max(1)).max(1);
        let t = &mut self.trend.samples;
        t.push_back(HistorySample {
            at_ms: unix_ms(),
            generation: self.generation,
            var_norm: f.var_norm,
            gateways,
        });
        while t.len() > keep {
            t.pop_front();
        }
    }

    /// `GET /v1/history`.
    pub fn history(&self) -> History {
        History {
            interval_ms: self.cfg.interval.as_millis() as u64,
            samples: self.trend.samples.iter().cloned().collect(),
        }
    }
}
