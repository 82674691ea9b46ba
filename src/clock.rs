//! Time is injected so expiry, cooldowns and the 365-day rule are testable
//! without sleeping.

use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that runs with the system clock plus an offset a test can advance.
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset: Arc<Mutex<Duration>>,
}

impl OffsetClock {
    pub fn advance(&self, by: Duration) {
        if let Ok(mut offset) = self.offset.lock() {
            *offset += by;
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> OffsetDateTime {
        let offset = self.offset.lock().map(|o| *o).unwrap_or_default();
        OffsetDateTime::now_utc() + offset
    }
}
