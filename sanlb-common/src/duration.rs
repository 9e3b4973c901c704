//! The one duration grammar of every command-line flag of `sanlb` and
//! `cargo xtask` (and of the config file): a bare number is seconds (`2.5`),
//! or one or more number–unit terms (`250ms`, `1.5s`, `2m`, `1h30m`,
//! `1m 30s`) with the units `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h`.
//!
//! It lives here, core-only, so that xtask can share it without building
//! sanlb (xtask must build on a machine that cannot compile sanlb yet).

use core::{fmt, time::Duration};

/// Why a text is not a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Empty, or not of the grammar.
    Syntax,
    /// A unit this grammar does not know.
    Unit,
    /// Negative, not finite, or too long to represent.
    Range,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "not a duration like 2.5, 250ms, 1.5s, 2m or 1h30m",
            Self::Unit => "unknown unit (ns, us, ms, s, m, min, h)",
            Self::Range => "out of range",
        })
    }
}

/// Parses `text` (see the module docs).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Syntax);
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs);
    }
    let mut rest = text;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(DurationError::Syntax);
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError::Syntax)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(DurationError::Syntax),
            _ => return Err(DurationError::Unit),
        };
        total += value * scale;
        rest = rest[unit_len..].trim_start();
    }
    seconds(total)
}

fn seconds(secs: f64) -> Result<Duration, DurationError> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(DurationError::Range);
    }
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::Range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("2.5"), Ok(ms(2500)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("2min"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1m 30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration(" 20us "), Ok(Duration::from_micros(20)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        for bad in ["", "s", "soon", "5 parsecs", "1.2.3s", "ms5", "5 5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_duration("5d"), Err(DurationError::Unit));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("-1"), Err(DurationError::Range));
        assert_eq!(parse_duration("1e30"), Err(DurationError::Range));
        assert_eq!(parse_duration("inf"), Err(DurationError::Range));
        assert_eq!(parse_duration("NaN"), Err(DurationError::Range));
    }
}
