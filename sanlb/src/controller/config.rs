//! How a controller runs, and the checks of those settings.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::pairs::PairSettings;
use crate::{optimize::Options, proto::Mode, traffic::TrafficMatrix};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Rebalance period (and length of one window sample).
    pub interval: Duration,
    /// Samples averaged.
    pub window: usize,
    /// Weight of var_norm.
    pub w_var: f64,
    /// Weight of a move.
    pub w_change: f64,
    /// Smallest fall of the cost that justifies a new map.
    pub min_gain: f64,
    /// Silence after which a gateway is dead; also the start-up grace and
    /// the time an alive owner has to release.
    pub lease: Duration,
    /// Dead gateways that own nothing are forgotten after this long.
    pub forget_after: Duration,
    /// Unit of assignment.
    pub mode: Mode,
    /// Address ranges of storage entities: targets seen inside are routes.
    pub storage: Vec<IpNet>,
    /// Storage addresses known up front.
    pub targets: Vec<IpAddr>,
    /// A-priori traffic matrix (bytes per interval).
    pub traffic: Option<TrafficMatrix>,
    /// Use only the a-priori matrix (else it seeds the window).
    pub traffic_replace: bool,
    /// Optimiser options.
    pub solver: Options,
    /// Pair mode: data addresses, the data port, target names.
    pub pairs: PairSettings,
    /// Advise mode: compute and record every decision, enforce none.
    pub advise: bool,
    /// Minimum time between two moves of the same route (failover
    /// excepted); zero: none.
    pub move_cooldown: Duration,
}

/// A setting with a value the controller cannot run with. `setting` is the
/// setting's name as the command line and the config file spell it, with
/// `_` for `-` (`min_gain`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// One setting is wrong.
    #[error("{setting} {message}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// Neither storage ranges, nor targets, nor a traffic matrix.
    #[error("nothing to manage: give storage ranges, targets or a traffic matrix")]
    NothingToManage,
}

impl Config {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting, message: &str| {
            Err(ConfigError::Invalid {
                setting,
                message: message.to_owned(),
            })
        };
        if self.interval.is_zero() {
            return bad("interval", "must be > 0");
        }
        if self.lease.is_zero() {
            return bad("lease", "must be > 0");
        }
        if self.forget_after < self.lease {
            return bad("forget_after", "must be at least the lease");
        }
        if self.move_cooldown > super::controls::MAX_MOVE_COOLDOWN {
            return bad("move_cooldown", "must be at most 24h");
        }
        if self.window == 0 {
            return bad("window", "must be ≥ 1");
        }
        for (setting, v) in [
            ("w_var", self.w_var),
            ("w_change", self.w_change),
            ("min_gain", self.min_gain),
        ] {
            if !(0.0..=crate::optimize::MAX_WEIGHT).contains(&v) {
                return Err(ConfigError::Invalid {
                    setting,
                    message: format!("must be a number in [0, 1e12], not {v}"),
                });
            }
        }
        if self.storage.is_empty() && self.targets.is_empty() && self.traffic.is_none() {
            return Err(ConfigError::NothingToManage);
        }
        self.pairs.validate(self.mode == Mode::Pair, &self.targets)
    }
}
