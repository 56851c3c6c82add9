//! Which payments fail, and which compensations fail before they succeed: decided by
//! the seed and the order id alone, so a run can be repeated, and a service restarted
//! mid-run decides the same way again.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Declines a share of payments, the same ones for the same seed.
#[derive(Debug, Clone, Copy)]
pub struct PaymentPolicy {
    /// The run's seed.
    pub seed: u64,
    /// Share of payments declined, 0 to 1.
    pub failure_rate: f64,
}

impl PaymentPolicy {
    /// Whether the payment of `order_id` is declined.
    pub fn declines(&self, order_id: &str) -> bool {
        draw(self.seed, order_id).random::<f64>() < self.failure_rate
    }
}

/// Makes a share of compensations fail once or twice before they succeed, the same
/// ones for the same seed.
#[derive(Debug, Clone, Copy)]
pub struct CompensationPolicy {
    /// The run's seed.
    pub seed: u64,
    /// Share of compensations that fail at first, 0 to 1.
    pub failure_rate: f64,
}

impl CompensationPolicy {
    /// How many times `command` of `order_id` fails before it succeeds: 0, 1 or 2.
    pub fn failures(&self, order_id: &str, command: &str) -> u32 {
        let mut rng = draw(self.seed, &format!("{order_id}/{command}"));
        if rng.random::<f64>() < self.failure_rate {
            rng.random_range(1..=2)
        } else {
            0
        }
    }
}

/// A generator seeded by `key` and the run's seed: FNV-1a over the key, stable across
/// runs and builds.
fn draw(seed: u64, key: &str) -> StdRng {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    StdRng::seed_from_u64(hash ^ seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_declines_the_same_orders_and_about_the_asked_share() {
        let policy = PaymentPolicy {
            seed: 7,
            failure_rate: 0.25,
        };
        let declined: Vec<bool> = (0..2000)
            .map(|n| policy.declines(&format!("order-{n:06}")))
            .collect();
        let again: Vec<bool> = (0..2000)
            .map(|n| policy.declines(&format!("order-{n:06}")))
            .collect();
        assert_eq!(declined, again);
        let share = declined.iter().filter(|d| **d).count() as f64 / 2000.0;
        assert!((0.2..0.3).contains(&share), "declined share {share}");
    }

    #[test]
    fn a_failing_compensation_fails_once_or_twice_and_the_same_ones_each_time() {
        let policy = CompensationPolicy {
            seed: 3,
            failure_rate: 0.5,
        };
        let failures: Vec<u32> = (0..1000)
            .map(|n| policy.failures(&format!("order-{n:06}"), "inventory.release"))
            .collect();
        assert!(failures.iter().all(|f| *f <= 2));
        assert!(failures.contains(&1) && failures.contains(&2) && failures.contains(&0));
        let again: Vec<u32> = (0..1000)
            .map(|n| policy.failures(&format!("order-{n:06}"), "inventory.release"))
            .collect();
        assert_eq!(failures, again);
    }

    #[test]
    fn rates_zero_and_one_mean_never_and_always() {
        let never = PaymentPolicy {
            seed: 1,
            failure_rate: 0.0,
        };
        let always = PaymentPolicy {
            seed: 1,
            failure_rate: 1.0,
        };
        assert!((0..100).all(|n| !never.declines(&format!("order-{n}"))));
        assert!((0..100).all(|n| always.declines(&format!("order-{n}"))));
    }
}
