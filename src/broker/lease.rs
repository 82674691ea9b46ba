//! The refresh lease: which refresh, across every instance, may call Amazon
//! for a connection and write the result back. A row value with a random claim
//! token and an end time by PostgreSQL's clock, never a held lock.
//!
//! The lease outlasts the worst refresh, by construction: the calls to Amazon
//! end by [`REFRESH_DEADLINE`], and the write that settles the refresh waits
//! at most [`db::ACQUIRE_TIMEOUT`] for a connection and runs for at most
//! [`db::STATEMENT_TIMEOUT`] per statement. A write after the lease ran out is
//! still safe: every write is fenced by the claim token and the grant version.

use super::retry::REFRESH_DEADLINE;
use crate::db::{self, connections, connections::Fence};
use sqlx::PgPool;
use std::time::Duration;

/// Statements a refresh may run between its last call to Amazon and the
/// write that releases the lease (the refresh-token swap, then the write-back).
const SETTLING_STATEMENTS: u32 = 2;

/// From claim to release in the worst case.
pub const WORST_REFRESH: Duration = REFRESH_DEADLINE
    .saturating_add(db::ACQUIRE_TIMEOUT)
    .saturating_add(db::STATEMENT_TIMEOUT.saturating_mul(SETTLING_STATEMENTS));

pub const LEASE: Duration = WORST_REFRESH.saturating_add(Duration::from_secs(3));

const _: () = assert!(LEASE.as_millis() > WORST_REFRESH.as_millis());

/// A held lease. Released on every exit path: by a fenced write that
/// settles the refresh ([`LeaseGuard::settled`]), by [`LeaseGuard::release`],
/// or, if the refresh ends any other way (an error, a panic), on drop.
pub struct LeaseGuard {
    db: PgPool,
    fence: Fence,
    settled: bool,
}

impl LeaseGuard {
    pub fn new(db: PgPool, fence: Fence) -> Self {
        LeaseGuard {
            db,
            fence,
            settled: false,
        }
    }

    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// A fenced write released the lease (or it is no longer ours).
    pub fn settled(mut self) {
        self.settled = true;
    }

    pub async fn release(mut self) {
        self.settled = true;
        release(&self.db, self.fence).await;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (db, fence) = (self.db.clone(), self.fence);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&db, fence).await });
        }
    }
}

async fn release(db: &PgPool, fence: Fence) {
    if let Err(e) = connections::release_refresh_lease(db, fence.id, fence.claim).await {
        // It runs out by itself; until then other instances wait for it.
        tracing::warn!(connection = %fence.id, error = %e, "could not release a refresh lease");
    }
}

/// How long to wait before looking at another instance's lease again: 100 ms
/// doubling to 1 s, with jitter (a notification ends the wait sooner).
pub fn lease_backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(4));
    let capped = base.min(Duration::from_secs(1));
    let jitter = rand::random::<u64>() % (capped.as_millis() as u64 / 4 + 1);
    capped + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_outlasts_the_worst_refresh() {
        assert!(LEASE > REFRESH_DEADLINE + db::ACQUIRE_TIMEOUT + db::STATEMENT_TIMEOUT * 2);
        // And stays short enough that a crashed instance holds nobody up for long.
        assert!(LEASE <= Duration::from_secs(45));
    }

    #[test]
    fn lease_waits_back_off_to_about_a_second() {
        assert!(lease_backoff(0) < Duration::from_millis(200));
        assert!(lease_backoff(10) >= Duration::from_secs(1));
        assert!(lease_backoff(10) <= Duration::from_millis(1250));
    }
}
