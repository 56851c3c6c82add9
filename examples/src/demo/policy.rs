//! Which payments fail: decided by the seed and the order id alone, so a run can be
//! repeated, and a payment service restarted mid-run decides the same way again.

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
        // FNV-1a over the id, mixed with the seed: stable across runs and builds.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in order_id.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = StdRng::seed_from_u64(hash ^ self.seed);
        rng.random::<f64>() < self.failure_rate
    }
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
