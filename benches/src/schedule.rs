//! Open-loop arithmetic: when each request is meant to be sent, and how many are due.
//!
//! Send number `k` (from 0) is intended at `k / rate` seconds after the start, whatever happened
//! to the sends before it. Its latency is measured from that intended instant, not from when the
//! dispatcher got round to it: if the server (or the load generator) stalls, every request that
//! should have gone out during the stall carries the stall in its latency. Measuring from the
//! actual send instead is *coordinated omission*: the stalled client quietly stops asking, and
//! the percentiles hide the stall.
//!
//! Integer nanoseconds throughout, so that send one million is exactly where it belongs (no
//! drift from adding up rounded intervals).

use std::time::Duration;

use crate::workload::WorkloadError;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The intended send times of an open loop at a fixed rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenLoopSchedule {
    rate_per_second: u64,
}

impl OpenLoopSchedule {
    pub fn new(rate_per_second: u64) -> Result<OpenLoopSchedule, WorkloadError> {
        if rate_per_second == 0 {
            return Err(WorkloadError::InvalidRate {
                reason: "the rate must be at least 1 request per second".to_owned(),
            });
        }
        Ok(OpenLoopSchedule { rate_per_second })
    }

    pub fn rate_per_second(&self) -> u64 {
        self.rate_per_second
    }

    /// Intended send time of send number `index`, from the start: `floor(index / rate)` in
    /// nanoseconds.
    pub fn intended_offset(&self, index: u64) -> Duration {
        let nanos = u128::from(index) * NANOS_PER_SECOND / u128::from(self.rate_per_second);
        duration_from_nanos(nanos)
    }

    /// How many sends are due `elapsed` after the start: the number of indices whose intended
    /// offset is at or before `elapsed`.
    ///
    /// `floor(k * 1e9 / rate) <= e` holds exactly when `k * 1e9 < (e + 1) * rate`, so the count
    /// is `ceil((e + 1) * rate / 1e9)`.
    pub fn due_count(&self, elapsed: Duration) -> u64 {
        let elapsed_nanos = elapsed.as_nanos();
        let numerator = (elapsed_nanos + 1) * u128::from(self.rate_per_second);
        let count = numerator.div_ceil(NANOS_PER_SECOND);
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let seconds = u64::try_from(nanos / NANOS_PER_SECOND).unwrap_or(u64::MAX);
    // The remainder is below 1e9, so it fits.
    Duration::new(seconds, (nanos % NANOS_PER_SECOND) as u32)
}

/// The latency of a request of an open loop: from its intended send time to its completion.
/// A completion before the intended time cannot happen (a request is never sent early); it
/// counts as zero rather than wrapping.
pub fn open_loop_latency(intended_offset: Duration, completed_offset: Duration) -> Duration {
    completed_offset.saturating_sub(intended_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_offsets_are_exact_multiples_of_the_interval() {
        let schedule = OpenLoopSchedule::new(1_000).expect("valid");
        assert_eq!(schedule.intended_offset(0), Duration::ZERO);
        assert_eq!(schedule.intended_offset(1), Duration::from_millis(1));
        assert_eq!(schedule.intended_offset(1_000), Duration::from_secs(1));
        // No drift after a million sends, even at a rate whose interval is not whole
        // nanoseconds (1/3 s = 333,333,333.3 ns).
        assert_eq!(
            schedule.intended_offset(1_000_000),
            Duration::from_secs(1_000)
        );
        let thirds = OpenLoopSchedule::new(3).expect("valid");
        assert_eq!(
            thirds.intended_offset(3_000_000),
            Duration::from_secs(1_000_000)
        );
        assert_eq!(thirds.intended_offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(thirds.intended_offset(2), Duration::from_nanos(666_666_666));
    }

    /// `due_count` agrees with counting the intended offsets one by one, around every boundary.
    #[test]
    fn due_count_matches_counting_the_offsets() {
        for rate in [1u64, 3, 7, 1_000, 33_333, 1_000_000_007] {
            let schedule = OpenLoopSchedule::new(rate).expect("valid");
            for index in 0..50u64 {
                let offset = schedule.intended_offset(index);
                // At its own instant a send is due; one nanosecond before, it is not.
                assert!(
                    schedule.due_count(offset) > index,
                    "rate {rate}: send {index} not due at its instant {offset:?}"
                );
                if let Some(before) = offset.checked_sub(Duration::from_nanos(1)) {
                    assert_eq!(
                        schedule.due_count(before),
                        (0..=index)
                            .filter(|earlier| schedule.intended_offset(*earlier) <= before)
                            .count() as u64,
                        "rate {rate}: due count just before send {index}"
                    );
                }
            }
        }
    }

    #[test]
    fn due_count_at_whole_seconds() {
        let schedule = OpenLoopSchedule::new(500).expect("valid");
        assert_eq!(schedule.due_count(Duration::ZERO), 1);
        // Sends 0..=500 are due at exactly one second (send 500 is intended at 1 s).
        assert_eq!(schedule.due_count(Duration::from_secs(1)), 501);
        assert_eq!(
            schedule.due_count(Duration::from_secs(1) - Duration::from_nanos(1)),
            500
        );
    }

    #[test]
    fn latency_counts_from_the_intended_time() {
        // A send intended at 10 ms that the dispatcher only issued at 40 ms (a stall) and that
        // completed at 42 ms took 32 ms, not 2 ms.
        assert_eq!(
            open_loop_latency(Duration::from_millis(10), Duration::from_millis(42)),
            Duration::from_millis(32)
        );
        assert_eq!(
            open_loop_latency(Duration::from_millis(10), Duration::from_millis(5)),
            Duration::ZERO
        );
    }

    #[test]
    fn zero_rate_is_refused() {
        assert!(OpenLoopSchedule::new(0).is_err());
    }
}
