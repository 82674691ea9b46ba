//! A circuit breaker on LWA's token endpoint: after several passing failures in
//! a row (across connections), refreshes fail fast for a while, so an Amazon
//! outage does not become a retry storm. Then one call is let through to probe.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const FAILURES_TO_OPEN: u32 = 5;
const OPEN_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct CircuitBreaker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    /// How long the breaker stays open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        let until = state.open_until?;
        until.checked_duration_since(Instant::now())
    }

    pub fn record_success(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.consecutive_failures = 0;
            state.open_until = None;
        }
    }

    pub fn record_failure(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.consecutive_failures += 1;
            if state.consecutive_failures >= FAILURES_TO_OPEN {
                state.open_until = Some(Instant::now() + OPEN_FOR);
                // The probe after OPEN_FOR gets one more failure before reopening.
                state.consecutive_failures = FAILURES_TO_OPEN - 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let breaker = CircuitBreaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record_failure();
        }
        assert!(breaker.open_for().is_none());
        breaker.record_failure();
        assert!(breaker.open_for().is_some());
        breaker.record_success();
        assert!(breaker.open_for().is_none());
    }
}
