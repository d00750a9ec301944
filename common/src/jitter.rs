//! Randomised waits, so that many sidecars or streams do not act in step.
//! Not cryptographic: the sub-second clock is random enough to spread them.

use std::time::Duration;

/// A fraction in `[0, 1)` taken from the clock's sub-second part.
fn fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// A random wait in `[0, d)` ("full jitter", for reconnect backoff).
pub fn full(d: Duration) -> Duration {
    d.mul_f64(fraction())
}

/// `d` give or take `spread` (a fraction of `d`, for example 0.2 for ±20%).
pub fn around(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - spread + 2.0 * spread * fraction())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_in_their_bounds() {
        let d = Duration::from_secs(10);
        for _ in 0..1000 {
            assert!(full(d) < d);
            let a = around(d, 0.2);
            assert!(
                a >= Duration::from_secs(8) && a <= Duration::from_secs(12),
                "{a:?}"
            );
        }
    }
}
