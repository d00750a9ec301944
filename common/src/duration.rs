//! The one duration syntax of every flag: `500ms`, `5s`, `2m`, `1h`, or a
//! plain number of seconds. Never panics: a value too large for a
//! `Duration` is an error like any other.

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `1h` or a plain number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("soon").is_err());
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        assert!(parse("99999999999999999999999h").is_err());
        assert!(parse(&format!("{}s", f64::MAX)).is_err());
        assert!(parse("1e400s").is_err());
    }
}
