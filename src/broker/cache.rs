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
use compact_str::CompactString;
use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    /// Inline up to 24 bytes (every selling partner id seen is 13 to 14).
    pub selling_partner_id: CompactString,
    pub region: Region,
    pub status: ConnectionStatus,
    pub status_reason: Option<Box<str>>,
    pub grant_version: i64,
    /// The row's token generation (whether or not a token is held).
    pub token_generation: i64,
    pub token: Option<CachedToken>,
    /// Set only while refreshes are failing (rare): boxed, so that a healthy
    /// connection's snapshot stays small.
    pub failing: Option<Box<Failing>>,
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

    pub fn refresh_failures(&self) -> i32 {
        self.failing.as_ref().map_or(0, |failing| failing.failures)
    }

    pub fn cooling_down_for(&self, now: OffsetDateTime) -> Option<Duration> {
        self.failing
            .as_ref()
            .and_then(|failing| failing.cooldown_until)
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
            failing: self.failing.clone(),
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

/// A connection's failed refreshes in a row and the cooldown they set.
#[derive(Clone)]
pub struct Failing {
    pub failures: i32,
    pub cooldown_until: Option<OffsetDateTime>,
}

impl Failing {
    /// From the row's counters: `None` when nothing is failing.
    pub fn from_row(failures: i32, cooldown_until: Option<OffsetDateTime>) -> Option<Box<Failing>> {
        (failures > 0 || cooldown_until.is_some()).then(|| {
            Box::new(Failing {
                failures,
                cooldown_until,
            })
        })
    }
}

/// One cached connection. Kept small (one allocation of 96 bytes besides its
/// snapshot and token): there is one per connection served.
pub struct Entry {
    snapshot: ArcSwap<Snapshot>,
    /// What requests change: the refresh running for this connection in this
    /// process, and the tokens issued since the last flush. One lock for
    /// both, held only to read or bump them; counting here rather than in a
    /// map of its own makes a cache hit touch only memory it has just read.
    state: Mutex<EntryState>,
}

#[derive(Default)]
pub struct EntryState {
    pub inflight: Option<InFlight>,
    usage: Usage,
}

impl Entry {
    pub fn new(snapshot: Snapshot) -> Self {
        Entry {
            snapshot: ArcSwap::from_pointee(snapshot),
            state: Mutex::default(),
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

    /// The entry's mutable state. Nothing panics while it is held, so a
    /// poisoned lock still guards whole data.
    pub fn state(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn count_use(&self, key_id: Uuid) {
        self.state().usage.count(key_id);
    }

    /// This entry's counts since the last call: (key id, tokens).
    fn take_usage(&self) -> impl Iterator<Item = (Uuid, u64)> {
        std::mem::take(&mut self.state().usage).into_counts()
    }
}

/// Counts per API key since the last flush: the first key inline (most
/// connections are used by one service), more in a list of their own.
#[derive(Default)]
pub struct Usage {
    /// The first key counted and its count; a count of 0 means none yet.
    first: (Uuid, u32),
    /// Boxed: 8 bytes in every cached entry instead of a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<(Uuid, u64)>>>,
}

impl Usage {
    pub fn count(&mut self, key_id: Uuid) {
        let (first_key, first_count) = &mut self.first;
        if *first_count == 0 {
            *first_key = key_id;
        }
        if *first_key == key_id && *first_count < u32::MAX {
            *first_count += 1;
            return;
        }
        let more = self.more.get_or_insert_with(Box::default);
        match more.iter_mut().find(|(key, _)| *key == key_id) {
            Some((_, issued)) => *issued += 1,
            None => more.push((key_id, 1)),
        }
    }

    pub fn into_counts(self) -> impl Iterator<Item = (Uuid, u64)> {
        let (first_key, first_count) = self.first;
        (first_count > 0)
            .then_some((first_key, u64::from(first_count)))
            .into_iter()
            .chain(self.more.into_iter().flat_map(|more| *more))
    }
}

/// Token-issue counts as the flush takes them: ((key id, connection id),
/// tokens), sorted by pair, each pair once. A list, not a map: with 100,000
/// busy connections a map of them all would cost several MB at every flush.
pub type UsageCounts = Vec<((Uuid, Uuid), u64)>;

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
    counts: HashMap<(Uuid, Uuid), u64>,
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
        let mut taken: UsageCounts = self
            .retired
            .lock()
            .map(|mut retired| std::mem::take(&mut retired.counts))
            .unwrap_or_default()
            .into_iter()
            .collect();
        for entry in self.entries.iter() {
            let connection_id = *entry.key();
            taken.extend(
                entry
                    .value()
                    .take_usage()
                    .map(|(key_id, issued)| ((key_id, connection_id), issued)),
            );
        }
        // A pair can come twice: from a dropped entry and from its successor.
        taken.sort_unstable_by_key(|(pair, _)| *pair);
        taken.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
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
            for (key_id, issued) in entry.take_usage() {
                *counts.entry((key_id, *id)).or_insert(0) += issued;
            }
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
            failing: None,
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
        assert_eq!(cache.take_usage(), vec![((key, connection), 2)]);
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
        assert_eq!(cache.take_usage(), vec![((key, connection), 2)]);
    }

    #[test]
    fn usage_counts_each_key_and_drains_to_zero() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut usage = Usage::default();
        for key in [a, b, a, c, b, a] {
            usage.count(key);
        }
        let mut drained: Vec<_> = std::mem::take(&mut usage).into_counts().collect();
        drained.sort();
        assert_eq!(drained, vec![(a, 3), (b, 2), (c, 1)]);
        assert_eq!(std::mem::take(&mut usage).into_counts().count(), 0);
        usage.count(c);
        assert_eq!(usage.into_counts().collect::<Vec<_>>(), vec![(c, 1)]);
    }

    #[test]
    fn cached_connections_stay_small() {
        // With the Arcs' counts, 80 and 152 bytes: malloc chunks of 96 and
        // 160 (the 100,000-connection memory target counts on them).
        assert!(std::mem::size_of::<Entry>() <= 64);
        assert!(std::mem::size_of::<Snapshot>() <= 136);
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
