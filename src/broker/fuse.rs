//! The `invalid_grant` fuse (CONTRACT §10): one seller refused with
//! `invalid_grant` has revoked the app; twenty sellers at once, and most of
//! what Amazon answers, means the app's configuration is wrong (another
//! app's client id, a sandbox token sent to real Amazon) and telling every
//! seller to reconnect would not help. Then the fuse trips: nobody more is
//! marked `needs_reauth`, those refreshes answer `app_credentials_rejected`,
//! one app-wide alarm is raised, until an operator clears it (`/ops`) or a
//! refresh succeeds.
//!
//! Decided in one transaction per `invalid_grant`, holding the `app_state`
//! row, so instances answering at the same moment decide one at a time.

use super::TokenBroker;
use crate::db::app_state;
use crate::db::audit::{self, AuditTarget};
use crate::db::connections::{self, Fence};
use crate::db::notify::{self, Change};
use crate::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Trips when, within [`WINDOW`], more than this many distinct connections…
pub const DISTINCT_CONNECTIONS: i64 = 20;
/// …and more than half of all refresh attempts got `invalid_grant`.
pub const WINDOW: Duration = Duration::minutes(5);

pub enum FuseDecision {
    MarkedNeedsReauth,
    /// The fuse has tripped (now or before): nobody is blamed.
    Fused,
    /// The refresh no longer held its fence: nothing was written.
    FencedOut,
}

#[derive(Default)]
pub struct Fuse {
    /// Whether the fuse is known to be tripped (cleared on the first
    /// successful refresh, here or on a notification).
    tripped: AtomicBool,
}

impl Fuse {
    pub fn set_known(&self, tripped: bool) {
        self.tripped.store(tripped, Ordering::Relaxed);
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    pub async fn invalid_grant(
        &self,
        broker: &TokenBroker,
        fence: Fence,
        tenant_id: Uuid,
        latency_ms: i32,
    ) -> Result<FuseDecision, Error> {
        let now = broker.clock.now();
        let mut tx = broker.db.begin().await?;
        let state = app_state::lock(&mut tx).await?;
        connections::insert_refresh_event(&mut *tx, fence.id, now, "invalid_grant", latency_ms)
            .await?;
        if state.fuse_tripped_at.is_some() {
            connections::release_refresh_lease(&mut *tx, fence.id, fence.claim).await?;
            tx.commit().await?;
            self.set_known(true);
            return Ok(FuseDecision::Fused);
        }
        let since = window_start(now, state.fuse_cleared_at);
        let (distinct, refused, attempts) = app_state::refresh_window(&mut tx, since).await?;
        if distinct > DISTINCT_CONNECTIONS && refused * 2 > attempts {
            app_state::trip_fuse(&mut tx, now).await?;
            audit::record(
                &mut *tx,
                now,
                "system:invalid-grant-fuse",
                "app.credentials_rejected",
                AuditTarget::default(),
                serde_json::json!({
                    "reason": "invalid_grant_fuse",
                    "distinct_connections": distinct,
                    "invalid_grant": refused,
                    "refresh_attempts": attempts,
                    "window_seconds": WINDOW.whole_seconds(),
                }),
            )
            .await?;
            notify::send(&mut *tx, &Change::App).await?;
            connections::release_refresh_lease(&mut *tx, fence.id, fence.claim).await?;
            tx.commit().await?;
            self.set_known(true);
            tracing::error!(
                distinct_connections = distinct,
                invalid_grant = refused,
                refresh_attempts = attempts,
                "invalid_grant fuse tripped: Amazon refuses most refresh tokens at once, which points at the app's \
                 configuration (client id, mode), not at the sellers; no connection is marked needs_reauth until \
                 an operator clears it on /ops or a refresh succeeds"
            );
            return Ok(FuseDecision::Fused);
        }
        let reason = "Amazon refused the refresh token (invalid_grant): the seller revoked the app's authorization or it expired";
        if !connections::mark_needs_reauth(&mut *tx, fence, "revoked_or_expired", reason, now)
            .await?
        {
            tx.commit().await?;
            return Ok(FuseDecision::FencedOut);
        }
        audit::record(
            &mut *tx,
            now,
            "system:token-refresh",
            "connection.needs_reauth",
            AuditTarget {
                tenant_id: Some(tenant_id),
                connection_id: Some(fence.id),
            },
            serde_json::json!({"reason": "invalid_grant"}),
        )
        .await?;
        crate::events::record_connection_event(
            &mut tx,
            crate::domain::EventType::ConnectionNeedsReauth,
            fence.id,
            crate::events::Details {
                previous_status: Some(crate::domain::ConnectionStatus::Active),
                reason: Some(reason),
                gap: None,
            },
            now,
        )
        .await?;
        notify::send(&mut *tx, &Change::connection(fence.id)).await?;
        tx.commit().await?;
        Ok(FuseDecision::MarkedNeedsReauth)
    }

    /// A refresh worked: a tripped fuse ends.
    pub async fn note_refresh_worked(&self, broker: &TokenBroker) {
        if !self.is_tripped() {
            return;
        }
        self.set_known(false);
        match app_state::clear_fuse(&broker.db, broker.clock.now(), "system:refresh-succeeded")
            .await
        {
            Ok(true) => {
                let _ = notify::send(&broker.db, &Change::App).await;
                tracing::warn!("a refresh succeeded: the invalid_grant fuse is cleared");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not clear the invalid_grant fuse"),
        }
    }
}

/// The fuse counts the last [`WINDOW`], and nothing from before it was last cleared.
fn window_start(now: OffsetDateTime, cleared_at: Option<OffsetDateTime>) -> OffsetDateTime {
    let start = now - WINDOW;
    cleared_at.map_or(start, |cleared| cleared.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_starts_after_the_last_clearing() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        assert_eq!(window_start(now, None), now - WINDOW);
        assert_eq!(
            window_start(now, Some(now - Duration::minutes(1))),
            now - Duration::minutes(1)
        );
        assert_eq!(
            window_start(now, Some(now - Duration::hours(1))),
            now - WINDOW
        );
    }
}
