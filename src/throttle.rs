//! The failed-authentication throttle (CONTRACT §10): per client address,
//! after [`FAILURES_PER_WINDOW`] failures (unknown or revoked API keys, bad
//! `client_secret`s, unknown login links) within a [`WINDOW`], further
//! attempts that would need the database get 429 until the window has
//! passed, without a query. Keys in the API-key cache are still served
//! (`ApiKeys::verify_from` checks them first), from that address or any
//! other; the check and the count are memory only.
//!
//! Hand-written rather than `governor`: the contract's rule is a fixed
//! window of failures, and the question asked before a request has failed
//! ("is this address over its failures?") must not spend anything, which a
//! GCRA limiter (`check` spends a cell) does not offer.

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const FAILURES_PER_WINDOW: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond that, finished windows are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Default)]
pub struct FailedAuthThrottle {
    windows: DashMap<IpAddr, Window, foldhash::fast::RandomState>,
}

impl FailedAuthThrottle {
    /// `Err(retry_after)` while `client` is over its failures.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(window) = self.windows.get(&client).map(|w| *w) else {
            return Ok(());
        };
        let age = window.started.elapsed();
        if age >= WINDOW || window.failures < FAILURES_PER_WINDOW {
            return Ok(());
        }
        Err(WINDOW - age)
    }

    /// One more failure from `client`.
    pub fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        if self.windows.len() >= MAX_TRACKED {
            self.windows
                .retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        let mut window = self.windows.entry(client).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures == FAILURES_PER_WINDOW {
            tracing::warn!(client = %client, "failed authentication throttled for this address");
        }
    }
}

/// A recently refused API key id (its public part), kept a short while so
/// an unknown key costs no database query when it comes again.
#[derive(Default)]
pub struct RefusedKeyIds {
    ids: DashMap<String, Instant, foldhash::fast::RandomState>,
}

/// How long a refused key id is remembered.
pub const REFUSED_KEPT: Duration = Duration::from_secs(60);
const MAX_REFUSED: usize = 50_000;

impl RefusedKeyIds {
    pub fn contains(&self, public_id: &str) -> bool {
        self.ids
            .get(public_id)
            .is_some_and(|at| at.elapsed() < REFUSED_KEPT)
    }

    pub fn insert(&self, public_id: &str) {
        if self.ids.len() >= MAX_REFUSED {
            self.ids.retain(|_, at| at.elapsed() < REFUSED_KEPT);
            if self.ids.len() >= MAX_REFUSED {
                self.ids.clear();
            }
        }
        self.ids.insert(public_id.to_owned(), Instant::now());
    }

    pub fn remove(&self, public_id: &str) {
        self.ids.remove(public_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twentieth_failure_throttles_that_address_only() {
        let throttle = FailedAuthThrottle::default();
        let attacker: IpAddr = "203.0.113.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let neighbour: IpAddr = "203.0.113.10".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..FAILURES_PER_WINDOW - 1 {
            throttle.failed(attacker);
        }
        assert!(throttle.check(attacker).is_ok(), "19 failures: not yet");
        throttle.failed(attacker);
        let retry = throttle.check(attacker).err();
        assert!(retry.is_some_and(|r| r <= WINDOW && r > Duration::from_secs(55)));
        assert!(throttle.check(neighbour).is_ok());
    }

    #[test]
    fn a_refused_key_id_is_remembered() {
        let refused = RefusedKeyIds::default();
        assert!(!refused.contains("abc"));
        refused.insert("abc");
        assert!(refused.contains("abc"));
        refused.remove("abc");
        assert!(!refused.contains("abc"));
    }
}
