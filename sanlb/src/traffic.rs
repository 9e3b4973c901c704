//! The patent's traffic matrix as an operator gives it (the a-priori mode of
//! claim 4): bytes per interval per (host, storage entity), read from CSV.
//! `sanlb plan --traffic` and `sanlb controller --traffic` share this one
//! type and its one parser.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

/// Why a traffic matrix is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The CSV is malformed.
    #[error("{}: line {line}: {reason}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The CSV could not be read as CSV at all.
    #[error("{}: {source}", path.display())]
    CsvSyntax {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: csv::Error,
    },
}

/// The patent's traffic matrix: `cells[host][target]`, bytes per interval.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficMatrix {
    /// Target (storage entity) addresses, the header row.
    pub targets: Vec<IpAddr>,
    /// Host addresses, the first column.
    pub hosts: Vec<IpAddr>,
    /// One row per host, one cell per target.
    pub cells: Vec<Vec<f64>>,
}

impl TrafficMatrix {
    /// Every cell as (host, target, bytes), row by row.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, IpAddr, f64)> + '_ {
        self.hosts
            .iter()
            .zip(&self.cells)
            .flat_map(|(&h, row)| self.targets.iter().zip(row).map(move |(&t, &b)| (h, t, b)))
    }
}

/// Parses the traffic matrix CSV `text` read from `path` (named in errors):
/// first row target addresses after a corner cell, first column host
/// addresses, cells bytes in the interval (finite, ≥ 0); `#` starts a
/// comment line. The one parser of the matrix: `sanlb plan --traffic` and
/// `sanlb controller --traffic` read it.
pub fn parse_csv(path: &Path, text: &str) -> Result<TrafficMatrix, TrafficError> {
    let err = |line: u64, reason: String| TrafficError::Csv {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let header = match records.next() {
        Some(r) => r.map_err(|source| TrafficError::CsvSyntax {
            path: path.to_owned(),
            source,
        })?,
        None => {
            return Err(err(
                1,
                "empty: expected a header row of target addresses".into(),
            ));
        }
    };
    let line_of = |r: &csv::StringRecord| r.position().map_or(0, csv::Position::line);
    let mut targets = Vec::new();
    for (j, cell) in header.iter().enumerate().skip(1) {
        let target: IpAddr = cell.parse().map_err(|_| {
            err(
                line_of(&header),
                format!("column {}: {cell:?} is not an IP address", j + 1),
            )
        })?;
        if targets.contains(&target) {
            return Err(err(
                line_of(&header),
                format!("target {target} listed twice"),
            ));
        }
        targets.push(target);
    }
    if targets.is_empty() {
        return Err(err(line_of(&header), "no target columns".into()));
    }
    let (mut hosts, mut cells, mut seen) = (Vec::new(), Vec::new(), HashSet::new());
    for record in records {
        let record = record.map_err(|source| TrafficError::CsvSyntax {
            path: path.to_owned(),
            source,
        })?;
        let line = line_of(&record);
        let host_cell = record.get(0).unwrap_or_default();
        let host: IpAddr = host_cell
            .parse()
            .map_err(|_| err(line, format!("{host_cell:?} is not a host IP address")))?;
        if !seen.insert(host) {
            return Err(err(line, format!("host {host} listed twice")));
        }
        let row = record
            .iter()
            .skip(1)
            .zip(&targets)
            .map(|(cell, target)| match cell.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(err(
                    line,
                    format!(
                        "route {host}→{target}: {cell:?} is not a byte count (a finite number ≥ 0)"
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        hosts.push(host);
        cells.push(row);
    }
    Ok(TrafficMatrix {
        targets,
        hosts,
        cells,
    })
}

impl TrafficMatrix {
    /// The matrix in bytes/s per (host, target), for an interval of
    /// `interval_s` seconds.
    pub fn rates(&self, interval_s: f64) -> HashMap<(IpAddr, IpAddr), f64> {
        self.entries()
            .map(|(h, t, b)| ((h, t), b / interval_s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_become_rates() {
        let m = parse_csv(
            Path::new("m.csv"),
            "# comment\n,198.18.1.1,198.18.1.2\n198.18.0.1,10,0\n198.18.0.2,5,20\n",
        )
        .unwrap();
        assert_eq!(m.targets.len(), 2);
        let rates = m.rates(5.0);
        let h1 = IpAddr::from([198, 18, 0, 1]);
        let t1 = IpAddr::from([198, 18, 1, 1]);
        assert_eq!(rates[&(h1, t1)], 2.0);
        assert_eq!(rates.len(), 4);
        let e = parse_csv(Path::new("m.csv"), ",198.18.1.1\n198.18.0.1,-1\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("m.csv: line 2: route 198.18.0.1→198.18.1.1"),
            "{e}"
        );
    }
}
