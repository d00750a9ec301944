//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`, `2e3`): validation
//! and comparison, so that a per-pod override is checked before it reaches the
//! API server. Pure; called by `patch.rs`.

#![warn(missing_docs)]

use thiserror::Error;

/// A string that is not a Kubernetes quantity.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a Kubernetes quantity (like 100m, 64Mi, 1)")]
pub struct InvalidQuantity(pub String);

/// The value of a quantity in base units (cores, bytes), as the API server reads it.
///
/// Accepts a decimal number followed by a binary suffix (`Ki` … `Ei`), a
/// decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or a decimal exponent
/// (`e3`, `E-2`). Negative values are refused: resources cannot be negative.
pub fn parse(s: &str) -> Result<f64, InvalidQuantity> {
    let bad = || InvalidQuantity(s.to_string());
    let s_trim = s.strip_prefix('+').unwrap_or(s);
    let split = s_trim
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s_trim.len());
    let (number, suffix) = s_trim.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let digits = &exp[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let e: i32 = digits.parse().map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_the_api_server() {
        assert_eq!(parse("100m"), Ok(0.1));
        assert_eq!(parse("1"), Ok(1.0));
        assert_eq!(parse("1.5"), Ok(1.5));
        assert_eq!(parse("64Mi"), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Ok(1e9));
        assert_eq!(parse("2e3"), Ok(2000.0));
        assert_eq!(parse("+1k"), Ok(1000.0));
    }

    #[test]
    fn garbage_is_not_a_quantity() {
        for s in [
            "", "m", "1.2.3", "10 m", "-1", "1Qi", "1e", "1ex", "lots", ".",
        ] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }
}
