//! Reads connection rows for cache misses, several to a statement.
//!
//! A miss that finds a reader free is read at once, alone, so a lone request
//! waits for nothing. While [`READERS`] statements are in flight, misses that
//! arrive wait and go together in the next one (`where id = any($1)`), so a
//! burst of misses (an instance just started, the cache cleared) costs
//! PostgreSQL and this process one round trip per batch instead of one per
//! connection. A read is never older than the request that asked for it: a
//! batch is taken from the queue before its statement starts.
//!
//! Readers are tasks of their own: a caller that hangs up takes nothing down
//! with it, and the others in its batch still get their rows.

use crate::db::connections::{self, TokenStateRow};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Statements in flight at once (the pool has 20 connections for everything).
const READERS: usize = 4;
/// Connections read by one statement at most.
const BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Option<TokenStateRow>, sqlx::Error>>;

pub struct RowLoader {
    db: PgPool,
    queue: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(Uuid, Reply)>,
    readers: usize,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Nothing panics while the lock is held; a poisoned queue is still whole.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RowLoader {
    pub fn new(db: PgPool) -> Self {
        RowLoader {
            db,
            queue: Arc::default(),
        }
    }

    /// The connection's row as of now, or `None` if there is no such row.
    pub async fn load(&self, id: Uuid) -> Result<Option<TokenStateRow>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let start_reader = {
            let mut queue = lock(&self.queue);
            queue.waiting.push((id, reply));
            let free = queue.readers < READERS;
            if free {
                queue.readers += 1;
            }
            free
        };
        if start_reader {
            let reader = Reader {
                db: self.db.clone(),
                queue: Arc::clone(&self.queue),
            };
            tokio::spawn(reader.run());
        }
        answer.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }
}

/// One reader: takes batches from the queue until it is empty.
struct Reader {
    db: PgPool,
    queue: Arc<Mutex<Queue>>,
}

impl Reader {
    async fn run(self) {
        loop {
            let batch: Vec<(Uuid, Reply)> = {
                let mut queue = lock(&self.queue);
                if queue.waiting.is_empty() {
                    queue.readers -= 1;
                    return;
                }
                let take = queue.waiting.len().min(BATCH);
                queue.waiting.drain(..take).collect()
            };
            let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            match connections::find_token_states(&self.db, &ids).await {
                Ok(rows) => answer(batch, rows),
                Err(error) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(shared(&error)));
                    }
                }
            }
        }
    }
}

impl Drop for Reader {
    /// A reader that ends without emptying the queue (it panicked) frees its
    /// place, so that the next miss starts another.
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(&self.queue).readers -= 1;
        }
    }
}

/// Hands each waiter its row; a connection asked for twice in one batch gets
/// a copy for all but the last.
fn answer(batch: Vec<(Uuid, Reply)>, rows: Vec<TokenStateRow>) {
    let mut asked: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
    for (id, _) in &batch {
        *asked.entry(*id).or_default() += 1;
    }
    let mut rows: HashMap<Uuid, TokenStateRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    for (id, reply) in batch {
        let left = asked.get_mut(&id).map(|n| {
            *n -= 1;
            *n
        });
        let row = match left {
            Some(0) | None => rows.remove(&id),
            Some(_) => rows.get(&id).cloned(),
        };
        let _ = reply.send(Ok(row));
    }
}

/// The same failure for each waiter of a failed batch (`sqlx::Error` is not
/// `Clone`), keeping what decides the answer: an unreachable database stays
/// unreachable (503), anything else stays an internal error (500).
fn shared(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other if crate::db::is_unavailable(other) => sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            other.to_string(),
        )),
        other => sqlx::Error::Decode(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amazon::marketplaces::Region;
    use crate::domain::ConnectionStatus;

    fn row(id: Uuid) -> TokenStateRow {
        TokenStateRow {
            id,
            tenant_id: Uuid::nil(),
            selling_partner_id: format!("A{}", id.as_u128()),
            region: Region::Na,
            status: ConnectionStatus::Active,
            status_reason: None,
            grant_version: 1,
            token_generation: 1,
            access_token_sealed: None,
            access_token_expires_at: None,
            refresh_cooldown_until: None,
            refresh_failures: 0,
            lease_busy: false,
        }
    }

    #[test]
    fn every_waiter_of_a_batch_gets_its_row_even_when_asked_twice() {
        let (a, b, missing) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut answers = Vec::new();
        let batch = [a, b, a, missing]
            .into_iter()
            .map(|id| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                (id, reply)
            })
            .collect();
        answer(batch, vec![row(b), row(a)]);
        let got: Vec<Option<String>> = answers
            .into_iter()
            .map(|mut answer| {
                answer
                    .try_recv()
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .map(|row| row.selling_partner_id)
            })
            .collect();
        assert_eq!(
            got,
            [
                Some("A1".into()),
                Some("A2".into()),
                Some("A1".into()),
                None
            ]
        );
    }

    #[test]
    fn a_failed_batch_keeps_unavailable_apart_from_other_failures() {
        assert!(matches!(
            shared(&sqlx::Error::PoolTimedOut),
            sqlx::Error::PoolTimedOut
        ));
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(
            matches!(shared(&io), sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        );
        let garbled = shared(&sqlx::Error::Protocol("cut mid-answer".into()));
        assert!(crate::db::is_unavailable(&garbled));
        let bug = shared(&sqlx::Error::RowNotFound);
        assert!(!crate::db::is_unavailable(&bug));
    }
}
