//! `sanlb plan`: the optimiser on a traffic matrix given by an operator (the
//! a-priori mode of the patent's claim 4).
//!
//! Inputs (docs/optimiser.md has examples):
//! - a problem file: the JSON form of [`Problem`];
//! - or a traffic matrix as CSV: first row the target (storage entity)
//!   addresses after a corner cell, first column the host addresses, cells the
//!   bytes seen in the interval; with a gateways file (JSON array of
//!   `{"name", "capacity"}`) and optionally a current-map file (JSON array of
//!   `{"target", "host", "gateway"}`, or a whole `sanlb plan --json` output,
//!   whose `assignment` is exactly that).
//!
//! The parsers take the text and the path it came from, so every error names
//! the file; [`load`] reads the files.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, ser::SerializeMap as _};

use crate::{
    optimize::{
        Compiled, DEFAULT_W_CHANGE, DEFAULT_W_VAR, Gateway, OptimizeError, Problem, Route,
        Solution, Solver, in_force,
    },
    traffic::{self, TrafficError},
};

/// Why the inputs of a plan are unusable. Every variant is bad input.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse into what it should hold.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The traffic matrix is malformed.
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    /// The current-map file names a route the traffic matrix does not have,
    /// or names one twice.
    #[error("{}: route {route}: {reason}", path.display())]
    Current {
        /// The file.
        path: PathBuf,
        /// The route label.
        route: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The problem is invalid (unknown gateway, bad rate, duplicate route,
    /// unreachable route...).
    #[error("{files}: {source}")]
    Invalid {
        /// The file or files it came from.
        files: String,
        /// What is wrong, naming the route.
        #[source]
        source: OptimizeError,
    },
}

/// Where a problem comes from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A problem in JSON.
    Problem(PathBuf),
    /// A traffic matrix with its gateways and optionally the map in force.
    Traffic {
        /// The CSV matrix.
        traffic: PathBuf,
        /// JSON array of gateways.
        gateways: PathBuf,
        /// The map in force.
        current: Option<PathBuf>,
        /// One route per (host, target) pair instead of per target.
        pairs: bool,
    },
}

/// Weights given on the command line, overriding the file's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Weights {
    /// `--w-var`.
    pub w_var: Option<f64>,
    /// `--w-change`.
    pub w_change: Option<f64>,
}

fn read(path: &Path) -> Result<String, PlanError> {
    std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.to_owned(),
        source,
    })
}

fn json<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, PlanError> {
    serde_json::from_str(text).map_err(|source| PlanError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Reads the inputs into a validated problem, the weights applied.
pub fn load(input: &Input, weights: Weights) -> Result<Problem, PlanError> {
    match input {
        Input::Problem(path) => parse_problem(path, &read(path)?, weights),
        Input::Traffic {
            traffic,
            gateways,
            current,
            pairs,
        } => {
            let current_text = current.as_deref().map(read).transpose()?;
            parse_traffic(
                (traffic, &read(traffic)?),
                (gateways, &read(gateways)?),
                current.as_deref().zip(current_text.as_deref()),
                *pairs,
                weights,
            )
        }
    }
}

fn apply(p: &mut Problem, w: Weights) {
    if let Some(v) = w.w_var {
        p.w_var = v;
    }
    if let Some(v) = w.w_change {
        p.w_change = v;
    }
}

fn validated(p: Problem, files: impl FnOnce() -> String) -> Result<Problem, PlanError> {
    match Compiled::new(&p) {
        Ok(_) => Ok(p),
        Err(source) => Err(PlanError::Invalid {
            files: files(),
            source,
        }),
    }
}

/// A problem file's text.
pub fn parse_problem(path: &Path, text: &str, weights: Weights) -> Result<Problem, PlanError> {
    let mut p: Problem = json(path, text)?;
    apply(&mut p, weights);
    validated(p, || path.display().to_string())
}

/// One entry of a current-map file (the `assignment` entries of the JSON
/// output have this form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Storage entity address.
    pub target: IpAddr,
    /// Host address in pair mode; in a current-map file, `null` in pair mode
    /// stands for every host of the target.
    #[serde(default)]
    pub host: Option<IpAddr>,
    /// Gateway name.
    pub gateway: String,
}

/// A current-map file: the placements, or a whole `--json` output.
#[derive(Deserialize)]
#[serde(untagged)]
enum CurrentFile {
    List(Vec<Placement>),
    Output { assignment: Vec<Placement> },
}

/// A traffic matrix (CSV text), a gateways file and optionally a current-map
/// file (JSON texts), each with its path.
pub fn parse_traffic(
    (traffic_path, traffic): (&Path, &str),
    (gateways_path, gateways): (&Path, &str),
    current: Option<(&Path, &str)>,
    pairs: bool,
    weights: Weights,
) -> Result<Problem, PlanError> {
    let gateways: Vec<Gateway> = json(gateways_path, gateways)?;
    let matrix = traffic::parse_csv(traffic_path, traffic)?;
    let mut routes: Vec<Route> = if pairs {
        matrix
            .hosts
            .iter()
            .zip(&matrix.cells)
            .flat_map(|(&host, row)| {
                matrix
                    .targets
                    .iter()
                    .zip(row)
                    .map(move |(&target, &rate)| Route {
                        target,
                        host: Some(host),
                        rate,
                        current: None,
                        allowed: None,
                    })
            })
            .collect()
    } else {
        matrix
            .targets
            .iter()
            .enumerate()
            .map(|(j, &target)| Route {
                target,
                host: None,
                rate: matrix.cells.iter().map(|row| row[j]).sum(),
                current: None,
                allowed: None,
            })
            .collect()
    };
    if let Some((path, text)) = current {
        let placements = match json(path, text)? {
            CurrentFile::List(list) | CurrentFile::Output { assignment: list } => list,
        };
        let mut map = HashMap::new();
        for pl in placements {
            let label = Route {
                target: pl.target,
                host: pl.host,
                rate: 0.0,
                current: None,
                allowed: None,
            }
            .label();
            let known = if pairs {
                matrix.targets.contains(&pl.target)
                    && pl.host.is_none_or(|h| matrix.hosts.contains(&h))
            } else {
                pl.host.is_none() && matrix.targets.contains(&pl.target)
            };
            if !known {
                let reason = if pl.host.is_some() && !pairs {
                    "has a host, but routes are whole targets (use --pairs)"
                } else {
                    "not in the traffic matrix"
                };
                return Err(PlanError::Current {
                    path: path.to_owned(),
                    route: label,
                    reason,
                });
            }
            if map.insert((pl.host, pl.target), pl.gateway).is_some() {
                return Err(PlanError::Current {
                    path: path.to_owned(),
                    route: label,
                    reason: "listed twice",
                });
            }
        }
        for r in &mut routes {
            r.current = map
                .get(&(r.host, r.target))
                .or_else(|| map.get(&(None, r.target)))
                .cloned();
        }
    }
    let mut p = Problem {
        gateways,
        routes,
        w_var: DEFAULT_W_VAR,
        w_change: DEFAULT_W_CHANGE,
    };
    apply(&mut p, weights);
    validated(p, || {
        let mut files = vec![traffic_path.display(), gateways_path.display()];
        files.extend(current.map(|(p, _)| p.display()));
        files
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" + ")
    })
}

/// The `--json` output.
#[derive(Serialize)]
struct Output<'a> {
    assignment: Vec<Placement>,
    cost: f64,
    var_norm: f64,
    moves: usize,
    optimal: bool,
    solver: Solver,
    loads: Loads<'a>,
}

/// Loads keyed by gateway name, in gateway order.
struct Loads<'a>(&'a [Gateway], &'a [f64]);

impl Serialize for Loads<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (g, l) in self.0.iter().zip(self.1) {
            map.serialize_entry(&g.name, l)?;
        }
        map.end()
    }
}

/// The solution as JSON: the assignment in input order, the figures, the
/// loads by gateway name.
pub fn render_json(p: &Problem, s: &Solution) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&Output {
        assignment: p
            .routes
            .iter()
            .zip(&s.assignment)
            .map(|(r, &g)| Placement {
                target: r.target,
                host: r.host,
                gateway: p.gateways[g].name.clone(),
            })
            .collect(),
        cost: s.cost,
        var_norm: s.var_norm,
        moves: s.moves,
        optimal: s.optimal,
        solver: s.solver,
        loads: Loads(&p.gateways, &s.loads),
    })
}

/// Width of the load bars, in characters.
const BAR: usize = 24;

/// A bar of `BAR` characters for `value` out of `max`, in eighths.
fn bar(value: f64, max: f64) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = if max > 0.0 {
        ((value / max) * (BAR * 8) as f64).round() as usize
    } else {
        0
    };
    let mut s = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        s.push(EIGHTHS[eighths % 8]);
    }
    format!("{s:<BAR$}")
}

/// The plan for a person: loads before and after with bars, the moves, the
/// figures before and after, the solver and whether the result is proven.
pub fn render_table(p: &Problem, s: &Solution) -> String {
    let b = in_force(p);
    let util = |l: f64, c: f64| if c > 0.0 { l / c } else { 0.0 };
    let max_util = p
        .gateways
        .iter()
        .enumerate()
        .flat_map(|(i, g)| [util(b.loads[i], g.capacity), util(s.loads[i], g.capacity)])
        .fold(0.0, f64::max);
    let name_w = p
        .gateways
        .iter()
        .map(|g| g.name.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_w$}  {:>8}  {:>12}  {:<BAR$}  {:>12}  {:<BAR$}",
        "GATEWAY", "CAPACITY", "LOAD BEFORE", "", "LOAD AFTER", ""
    );
    for (i, g) in p.gateways.iter().enumerate() {
        let cap = if g.capacity > 0.0 {
            format!("{}", g.capacity)
        } else {
            "drained".into()
        };
        let _ = writeln!(
            out,
            "{:<name_w$}  {cap:>8}  {:>12.2}  {}  {:>12.2}  {}",
            g.name,
            b.loads[i],
            bar(util(b.loads[i], g.capacity), max_util),
            s.loads[i],
            bar(util(s.loads[i], g.capacity), max_util),
        );
    }
    let moved: Vec<(&Route, &str)> = p
        .routes
        .iter()
        .zip(&s.assignment)
        .filter_map(|(r, &g)| {
            let to = p.gateways[g].name.as_str();
            r.current
                .as_deref()
                .is_some_and(|c| c != to)
                .then_some((r, to))
        })
        .collect();
    let _ = writeln!(out);
    if moved.is_empty() {
        let _ = writeln!(out, "no moves");
    } else {
        let route_w = moved
            .iter()
            .map(|(r, _)| r.label().chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            out,
            "{:<route_w$}  {:>12}  {:<name_w$}  TO",
            "ROUTE", "RATE", "FROM"
        );
        for (r, to) in &moved {
            let _ = writeln!(
                out,
                "{:<route_w$}  {:>12.2}  {:<name_w$}  {to}",
                r.label(),
                r.rate,
                r.current.as_deref().unwrap_or_default(),
            );
        }
    }
    if b.unplaced > 0 {
        let _ = writeln!(
            out,
            "{} routes had no current gateway and were placed",
            b.unplaced
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<9} {:>12}  {:>12}", "", "BEFORE", "AFTER");
    let _ = writeln!(
        out,
        "{:<9} {:>12.6}  {:>12.6}",
        "var_norm", b.var_norm, s.var_norm
    );
    let _ = writeln!(out, "{:<9} {:>12}  {:>12}", "moves", 0, s.moves);
    let _ = writeln!(out, "{:<9} {:>12.6}  {:>12.6}", "cost", b.cost, s.cost);
    let _ = writeln!(
        out,
        "\nsolver {} — {} (w_var {}, w_change {})",
        s.solver,
        if s.optimal {
            "proven optimal"
        } else {
            "not proven optimal"
        },
        p.w_var,
        p.w_change
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GWS: &str = r#"[{"name":"gw1"},{"name":"gw2","capacity":2}]"#;
    const CSV: &str = "host,198.18.1.1,198.18.1.2\n198.18.0.1,10,0\n198.18.0.2,5,7.5\n";

    fn traffic(csv: &str, current: Option<&str>, pairs: bool) -> Result<Problem, PlanError> {
        parse_traffic(
            (Path::new("t.csv"), csv),
            (Path::new("g.json"), GWS),
            current.map(|c| (Path::new("c.json"), c)),
            pairs,
            Weights::default(),
        )
    }

    #[test]
    fn targets_sum_their_column() {
        let p = traffic(CSV, None, false).unwrap();
        let rates: Vec<f64> = p.routes.iter().map(|r| r.rate).collect();
        assert_eq!(rates, vec![15.0, 7.5]);
        assert!(
            p.routes
                .iter()
                .all(|r| r.host.is_none() && r.current.is_none())
        );
        assert_eq!(p.gateways[0].capacity, 1.0);
        assert_eq!(p.gateways[1].capacity, 2.0);
    }

    #[test]
    fn pairs_are_every_cell_and_a_target_wide_current_applies_to_each() {
        let current = r#"[{"target":"198.18.1.1","gateway":"gw2"},
            {"target":"198.18.1.2","host":"198.18.0.2","gateway":"gw1"}]"#;
        let p = traffic(CSV, Some(current), true).unwrap();
        let got: Vec<(String, f64, Option<&str>)> = p
            .routes
            .iter()
            .map(|r| (r.label(), r.rate, r.current.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("198.18.0.1→198.18.1.1".into(), 10.0, Some("gw2")),
                ("198.18.0.1→198.18.1.2".into(), 0.0, None),
                ("198.18.0.2→198.18.1.1".into(), 5.0, Some("gw2")),
                ("198.18.0.2→198.18.1.2".into(), 7.5, Some("gw1")),
            ]
        );
    }

    #[test]
    fn bad_cells_name_file_line_and_route() {
        let e = traffic("h,198.18.1.1\n198.18.0.1,-3\n", None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv: line 2: route 198.18.0.1→198.18.1.1: \"-3\" is not a byte count (a finite number ≥ 0)"
        );
        let e = traffic("h,198.18.1.1\n198.18.0.1,NaN\n", None, false).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.csv: line 2: route 198.18.0.1→198.18.1.1"),
            "{e}"
        );
        let e = traffic("h,198.18.1.1,198.18.1.1\n", None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv: line 1: target 198.18.1.1 listed twice"
        );
        let e = traffic("h,nope\n", None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv: line 1: column 2: \"nope\" is not an IP address"
        );
    }

    #[test]
    fn current_errors_name_the_file_and_route() {
        let e = traffic(
            CSV,
            Some(r#"[{"target":"198.18.1.9","gateway":"gw1"}]"#),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.json: route 198.18.1.9: not in the traffic matrix"
        );
        let e = traffic(
            CSV,
            Some(r#"[{"target":"198.18.1.1","gateway":"gw7"}]"#),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv + g.json + c.json: route 198.18.1.1: unknown gateway \"gw7\""
        );
    }

    #[test]
    fn problem_files_take_weight_overrides_and_name_the_route_on_error() {
        let text = r#"{"gateways":[{"name":"gw1"}],"routes":[{"target":"198.18.1.5","rate":2}],"w_change":0.5}"#;
        let w = Weights {
            w_var: Some(3.0),
            w_change: None,
        };
        let p = parse_problem(Path::new("p.json"), text, w).unwrap();
        assert_eq!((p.w_var, p.w_change), (3.0, 0.5));
        let dup = r#"{"gateways":[{"name":"gw1"}],"routes":[{"target":"198.18.1.5","rate":2},{"target":"198.18.1.5","rate":1}]}"#;
        let e = parse_problem(Path::new("p.json"), dup, Weights::default()).unwrap_err();
        assert_eq!(e.to_string(), "p.json: route 198.18.1.5: listed twice");
    }

    #[test]
    fn bars_are_proportional() {
        assert_eq!(bar(1.0, 1.0).trim_end().chars().count(), BAR);
        assert_eq!(bar(0.5, 1.0).trim_end(), "█".repeat(BAR / 2));
        assert_eq!(bar(0.0, 0.0).trim_end(), "");
    }
}
