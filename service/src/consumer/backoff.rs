//! How long to wait before a message comes back, and when a delivery is its last.

use std::time::Duration;

/// The delay of a NAK for a message on its `delivered`-th delivery:
/// `base × 2^(delivered − 1)`, capped at `max`, then jittered into `[d/2, d]` with
/// `jitter` in `[0, 1)` so that a batch NAKed together does not come back as one
/// burst. Saturates instead of overflowing for any input.
pub fn nak_delay(delivered: i64, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 32)).unwrap_or(32);
    let factor = 1u32.checked_shl(exponent).unwrap_or(u32::MAX);
    let full = base.saturating_mul(factor).min(max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    full / 2 + (full / 2).mul_f64(jitter)
}

/// Whether this delivery is the last one the server will make (MaxDeliver ≤ 0 means
/// unlimited).
pub fn is_last_delivery(delivered: i64, max_deliver: i64) -> bool {
    max_deliver > 0 && delivered >= max_deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nak_delay_doubles_per_delivery_and_caps() {
        let base = 100 * MS;
        let max = Duration::from_secs(10);
        // jitter = 1.0 gives the full (un-jittered) delay.
        let full = |n| nak_delay(n, base, max, 1.0);
        assert_eq!(full(1), 100 * MS);
        assert_eq!(full(2), 200 * MS);
        assert_eq!(full(3), 400 * MS);
        assert_eq!(full(7), 6400 * MS);
        assert_eq!(full(8), max);
        assert_eq!(full(1000), max);
        assert_eq!(full(i64::MAX), max);
        // Nonsense delivery counts behave like a first delivery.
        assert_eq!(full(0), 100 * MS);
        assert_eq!(full(-5), 100 * MS);
    }

    #[test]
    fn nak_delay_jitter_stays_within_half_to_full() {
        let base = 100 * MS;
        let max = Duration::from_secs(10);
        assert_eq!(nak_delay(3, base, max, 0.0), 200 * MS);
        assert_eq!(nak_delay(3, base, max, 0.5), 300 * MS);
        for _ in 0..1000 {
            let d = nak_delay(20, base, max, fastrand::f64());
            assert!(d >= max / 2 && d <= max, "{d:?}");
        }
        // Out-of-range jitter is clamped, NaN ignored.
        assert_eq!(nak_delay(1, base, max, 7.0), base);
        assert_eq!(nak_delay(1, base, max, f64::NAN), base / 2);
    }

    #[test]
    fn nak_delay_never_zero_for_nonzero_base() {
        assert!(nak_delay(1, MS, Duration::from_secs(1), 0.0) > Duration::ZERO);
    }

    #[test]
    fn last_delivery_respects_unlimited() {
        assert!(!is_last_delivery(1, 5));
        assert!(!is_last_delivery(4, 5));
        assert!(is_last_delivery(5, 5));
        assert!(is_last_delivery(6, 5));
        assert!(is_last_delivery(1, 1));
        assert!(!is_last_delivery(1_000_000, -1));
        assert!(!is_last_delivery(1_000_000, 0));
    }
}
