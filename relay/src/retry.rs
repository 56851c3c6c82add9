use std::time::Duration;

/// Delay before the next attempt of a row the broker refused `attempts` times:
/// exponential from `base`, capped at `max`, with "full jitter" (uniform between
/// half and all of it) so refused rows do not come back in lockstep.
pub(crate) fn retry_delay(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempts.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    let jitter: f64 = rand::random_range(0.5..=1.0);
    ceiling.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempts in 1..40 {
            let delay = retry_delay(attempts, base, max);
            let ceiling = base.saturating_mul(1 << (attempts - 1).min(31)).min(max);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{attempts}: {delay:?}"
            );
        }
        assert!(retry_delay(1, base, max) <= base);
        assert!(retry_delay(40, base, max) >= max / 2);
    }
}
