//! The one backoff of the mesh: exponential, capped, with jitter, never giving up.
//!
//! Every loop that retries something shared (a broker connection, a Redis subscription, a
//! worker process that keeps failing to start) waits with it. The jitter is the point: after a
//! broker restart, hundreds of consumers and every node of a fleet would otherwise reconnect in
//! lockstep, at 100 ms, 200 ms, 400 ms ... after the outage, and meet it again as one wave.
//! The delays come from [`backon`]'s exponential builder; this type only fixes the policy
//! (doubling, jitter, no limit on attempts) and adds [`reset`](Backoff::reset) for loops that
//! succeed between failures.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays from `first`, doubling up to `most`, each drawn at random from the upper half of its
/// plain value ("equal jitter"): a delay lies in `[d/2, d)` where `d` is the plain exponential
/// value, so a configured most is never exceeded and no two waiters keep in step.
///
/// ```
/// use std::time::Duration;
/// use mesh_contract::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
/// for _ in 0..20 {
///     assert!(backoff.next_delay() < Duration::from_secs(5));
/// }
/// backoff.reset(); // it worked: the next failure starts small again
/// assert!(backoff.next_delay() < Duration::from_millis(100));
/// ```
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Starting at `first`, doubling up to `most`.
    pub fn new(first: Duration, most: Duration) -> Self {
        // backon's jitter adds up to the plain value again: halves in, `[d/2, d)` out
        let builder = ExponentialBuilder::new()
            .with_min_delay(first / 2)
            .with_max_delay(most.max(first) / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        // without a limit on attempts or total time the iterator never ends; `first` is the
        // answer that keeps a loop correct if it ever did
        self.delays
            .next()
            .unwrap_or_else(|| self.builder.build().next().unwrap_or_default())
    }

    /// Back to the first delay: the thing retried worked.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let (first, most) = (Duration::from_millis(10), Duration::from_millis(80));
        let mut backoff = Backoff::new(first, most);
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        for (i, delay) in delays.iter().enumerate() {
            let plain = (first * 2u32.pow(i as u32)).min(most);
            assert!(*delay >= plain / 2 && *delay < plain, "{i}: {delay:?}");
        }
        // jitter: sixteen capped delays are not all the same
        let capped: std::collections::BTreeSet<Duration> =
            (0..16).map(|_| backoff.next_delay()).collect();
        assert!(capped.len() > 1, "{capped:?}");
        backoff.reset();
        assert!(backoff.next_delay() < first);
    }
}
