//! Exponential backoff with full jitter, for every retry loop in Ingot.

use std::time::Duration;

/// A random delay up to `base` × 2^attempt (at least 1 ms), so concurrent
/// retriers spread out instead of colliding again.
pub fn jittered(base: Duration, attempt: u32) -> Duration {
    let cap = (base.as_millis().max(1) << attempt.min(10)) as u64;
    let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(cap)) as u64;
    Duration::from_millis(jitter.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_doubling_cap() {
        for attempt in 0..6 {
            let d = jittered(Duration::from_millis(50), attempt);
            assert!(d >= Duration::from_millis(1) && d < Duration::from_millis(50 << attempt));
        }
    }
}
