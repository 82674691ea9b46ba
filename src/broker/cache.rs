//! The in-memory cache: one [`Entry`] per connection, holding an immutable
//! [`Snapshot`] of what the broker knows (swapped whole, read without a lock),
//! the refresh in flight if there is one, and the token-issue counts since the
//! last flush.
//!
//! A cache hit reads one map shard and one `ArcSwap`, and clones one `Arc`.
//! Each token is held once: the HTTP layer renders answers from it.

use super::refresh::InFlight;
use crate::amazon::marketplaces::Region;
use crate::domain::ConnectionStatus;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Maps read on every request: sharded, so the two cores rarely meet on one
/// lock, and hashed with foldhash (seeded per process), which is several times
/// cheaper than SipHash for a 16-byte id.
pub type FastMap<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Re-read a cached connection's row after this long (seconds of the app's
/// clock, either way) even without a notification.
pub const RECHECK_AFTER_SECONDS: u64 = 30;

/// An access token as cached. Deliberately not `Debug`.
pub struct CachedToken {
    pub secret: SecretString,
    pub expires_at: OffsetDateTime,
    /// The row's `token_generation` when this token was stored.
    pub generation: i64,
}

impl CachedToken {
    pub fn left(&self, now: OffsetDateTime) -> Duration {
        self.expires_at - now
    }

    /// Unexpired with at least `min_ttl` left.
    pub fn is_good_for(&self, now: OffsetDateTime, min_ttl: Duration) -> bool {
        let left = self.left(now);
        left >= min_ttl && left > Duration::ZERO
    }

    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    pub fn copy(&self) -> CachedToken {
        CachedToken {
            secret: self.secret.clone(),
            expires_at: self.expires_at,
            generation: self.generation,
        }
    }
}

/// What the broker knows about one connection, as of `loaded_at`. Never
/// changed in place: a new one replaces it.
pub struct Snapshot {
    pub tenant_id: Uuid,
    pub selling_partner_id: Box<str>,
    pub region: Region,
    pub status: ConnectionStatus,
    pub status_reason: Option<Box<str>>,
    pub grant_version: i64,
    /// The row's token generation (whether or not a token is held).
    pub token_generation: i64,
    pub token: Option<CachedToken>,
    pub cooldown_until: Option<OffsetDateTime>,
    pub refresh_failures: i32,
    /// When the row was read, in Unix seconds of the app's clock; `i64::MIN`
    /// once a notification said the row changed.
    pub loaded_at: i64,
}

impl Snapshot {
    pub fn is_fresh(&self, now: OffsetDateTime) -> bool {
        self.loaded_at != i64::MIN
            && self.loaded_at.abs_diff(now.unix_timestamp()) < RECHECK_AFTER_SECONDS
    }

    /// The cached token if it is good for `min_ttl`.
    pub fn token_good_for(&self, now: OffsetDateTime, min_ttl: Duration) -> Option<&CachedToken> {
        self.token.as_ref().filter(|t| t.is_good_for(now, min_ttl))
    }

    pub fn cooling_down_for(&self, now: OffsetDateTime) -> Option<Duration> {
        self.cooldown_until
            .map(|until| until - now)
            .filter(|left| *left > Duration::ZERO)
    }

    /// The same facts without the token, as the base of a successor
    /// (`Snapshot { token, .., ..old.copy_facts() }`).
    pub fn copy_facts(&self) -> Snapshot {
        Snapshot {
            tenant_id: self.tenant_id,
            selling_partner_id: self.selling_partner_id.clone(),
            region: self.region,
            status: self.status,
            status_reason: self.status_reason.clone(),
            grant_version: self.grant_version,
            token_generation: self.token_generation,
            token: None,
            cooldown_until: self.cooldown_until,
            refresh_failures: self.refresh_failures,
            loaded_at: self.loaded_at,
        }
    }

    /// A copy that says "read the row again" and holds no token.
    fn invalidated(&self) -> Snapshot {
        Snapshot {
            loaded_at: i64::MIN,
            ..self.copy_facts()
        }
    }
}

pub struct Entry {
    snapshot: ArcSwap<Snapshot>,
    /// The refresh running for this connection in this process, if any.
    pub inflight: Mutex<Option<InFlight>>,
    /// Tokens issued from this entry since the last flush, per API key id.
    /// Kept here, not in a map of its own, so counting a cache hit touches
    /// only memory the hit has just read.
    usage: Mutex<Usage>,
}

impl Entry {
    pub fn new(snapshot: Snapshot) -> Self {
        Entry {
            snapshot: ArcSwap::from_pointee(snapshot),
            inflight: Mutex::new(None),
            usage: Mutex::new(Usage::default()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }

    /// The row changed elsewhere: drop the token and re-read on next use.
    pub fn invalidate(&self) {
        let current = self.snapshot.load();
        self.snapshot.store(Arc::new(current.invalidated()));
    }

    pub fn count_use(&self, key_id: Uuid) {
        if let Ok(mut usage) = self.usage.lock() {
            usage.count(key_id);
        }
    }

    /// Moves this entry's counts into `into`, keyed by (key id, connection id).
    fn take_usage(&self, connection_id: Uuid, into: &mut HashMap<(Uuid, Uuid), u64>) {
        let Ok(mut usage) = self.usage.lock() else {
            return;
        };
        for (key_id, issued) in usage.drain() {
            *into.entry((key_id, connection_id)).or_insert(0) += issued;
        }
    }
}

/// Counts per API key; the first key inline (most connections are used by
/// one service), more in a list.
#[derive(Default)]
pub struct Usage {
    first: Option<(Uuid, u64)>,
    more: Vec<(Uuid, u64)>,
}

impl Usage {
    pub fn count(&mut self, key_id: Uuid) {
        match &mut self.first {
            Some((key, issued)) if *key == key_id => *issued += 1,
            None => self.first = Some((key_id, 1)),
            Some(_) => match self.more.iter_mut().find(|(key, _)| *key == key_id) {
                Some((_, issued)) => *issued += 1,
                None => self.more.push((key_id, 1)),
            },
        }
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (Uuid, u64)> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

/// Token-issue counts as the flush takes them: (key id, connection id) → tokens.
pub type UsageCounts = HashMap<(Uuid, Uuid), u64>;

/// Every cached connection, and what is left of those dropped.
#[derive(Default)]
pub struct Cache {
    entries: FastMap<Uuid, Arc<Entry>>,
    retired: Mutex<Retired>,
}

/// What is left of entries dropped from the cache.
#[derive(Default)]
struct Retired {
    /// Dropped entries a request may still hold, and count a token on.
    entries: Vec<(Uuid, Arc<Entry>)>,
    /// Counts of dropped entries (or of a failed flush), for the next flush.
    counts: UsageCounts,
}

impl Cache {
    pub fn get(&self, connection_id: Uuid) -> Option<Arc<Entry>> {
        self.entries
            .get(&connection_id)
            .map(|e| Arc::clone(e.value()))
    }

    /// Inserts `entry` unless another request did first; returns the one kept.
    pub fn insert(&self, connection_id: Uuid, entry: Entry) -> Arc<Entry> {
        Arc::clone(
            self.entries
                .entry(connection_id)
                .or_insert_with(|| Arc::new(entry))
                .value(),
        )
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn invalidate(&self, connection_id: Uuid) {
        if let Some(entry) = self.get(connection_id) {
            entry.invalidate();
        }
    }

    /// Drops a connection from the cache (it is gone, or everything is stale).
    pub fn forget(&self, connection_id: Uuid) {
        if let Some(removed) = self.entries.remove(&connection_id) {
            if let Ok(mut retired) = self.retired.lock() {
                retired.entries.push(removed);
            }
        }
    }

    pub fn clear(&self) {
        let ids: Vec<Uuid> = self.entries.iter().map(|e| *e.key()).collect();
        for id in ids {
            self.forget(id);
        }
    }

    /// Counts taken since the last call.
    pub fn take_usage(&self) -> UsageCounts {
        self.release_retired();
        let mut taken = self
            .retired
            .lock()
            .map(|mut retired| std::mem::take(&mut retired.counts))
            .unwrap_or_default();
        for entry in self.entries.iter() {
            entry.value().take_usage(*entry.key(), &mut taken);
        }
        taken
    }

    /// Puts back counts a flush could not write, for the next flush.
    pub fn restore_usage(&self, counts: UsageCounts) {
        if let Ok(mut retired) = self.retired.lock() {
            for (pair, issued) in counts {
                *retired.counts.entry(pair).or_insert(0) += issued;
            }
        }
    }

    /// Lets go of dropped entries that no request holds any more (none can
    /// reach them again: they are out of the map), keeping their counts for
    /// the next flush. Run every few seconds, so that a disconnected
    /// connection's token does not stay in memory until the next flush.
    pub fn release_retired(&self) {
        let Ok(mut retired) = self.retired.lock() else {
            return;
        };
        let Retired { entries, counts } = &mut *retired;
        entries.retain(|(id, entry)| {
            // Checked before draining: a count made meanwhile is drained now
            // or next time.
            let still_held = Arc::strong_count(entry) > 1;
            entry.take_usage(*id, counts);
            still_held
        });
    }

    #[cfg(test)]
    fn retired_len(&self) -> usize {
        self.retired.lock().map(|r| r.entries.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub fn active_snapshot() -> Snapshot {
        Snapshot {
            tenant_id: Uuid::from_u128(1),
            selling_partner_id: "A1SELLER".into(),
            region: Region::Na,
            status: ConnectionStatus::Active,
            status_reason: None,
            grant_version: 1,
            token_generation: 1,
            token: Some(CachedToken {
                secret: SecretString::from("Atza|x"),
                expires_at: OffsetDateTime::UNIX_EPOCH + Duration::hours(1),
                generation: 1,
            }),
            cooldown_until: None,
            refresh_failures: 0,
            loaded_at: 0,
        }
    }

    #[test]
    fn a_dropped_entry_keeps_its_counts_and_is_let_go_once_nobody_holds_it() {
        let cache = Cache::default();
        let (connection, key) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let entry = cache.insert(connection, Entry::new(active_snapshot()));
        entry.count_use(key);
        // Dropped (everything cleared, say) while a request still holds the entry...
        cache.forget(connection);
        cache.release_retired();
        // ...which then hands out one more token.
        entry.count_use(key);
        assert_eq!(cache.retired_len(), 1);
        drop(entry);
        cache.release_retired();
        assert_eq!(cache.retired_len(), 0);
        assert_eq!(cache.take_usage(), HashMap::from([((key, connection), 2)]));
        assert!(cache.take_usage().is_empty());
    }

    #[test]
    fn counts_a_failed_flush_gives_back_are_flushed_next_time() {
        let cache = Cache::default();
        let (connection, key) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let entry = cache.insert(connection, Entry::new(active_snapshot()));
        entry.count_use(key);
        let taken = cache.take_usage();
        cache.restore_usage(taken);
        entry.count_use(key);
        assert_eq!(cache.take_usage(), HashMap::from([((key, connection), 2)]));
    }

    #[test]
    fn usage_counts_each_key_and_drains_to_zero() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut usage = Usage::default();
        for key in [a, b, a, c, b, a] {
            usage.count(key);
        }
        let mut drained: Vec<_> = usage.drain().collect();
        drained.sort();
        assert_eq!(drained, vec![(a, 3), (b, 2), (c, 1)]);
        assert_eq!(usage.drain().count(), 0);
        usage.count(c);
        assert_eq!(usage.drain().collect::<Vec<_>>(), vec![(c, 1)]);
    }

    #[test]
    fn an_invalidated_entry_holds_no_token_and_is_read_again() {
        let entry = Entry::new(Snapshot {
            loaded_at: OffsetDateTime::UNIX_EPOCH.unix_timestamp(),
            ..active_snapshot()
        });
        assert!(entry.snapshot().is_fresh(OffsetDateTime::UNIX_EPOCH));
        entry.invalidate();
        let snapshot = entry.snapshot();
        assert!(snapshot.token.is_none());
        assert!(!snapshot.is_fresh(OffsetDateTime::UNIX_EPOCH));
    }
}
