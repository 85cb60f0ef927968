//! What this instance has applied of the invalidation stream, and the consistency tokens built
//! from stream positions: a mutation answers with the position of its change-log row's message,
//! and a request presenting it waits (bounded) until this instance has applied that far.

use cal_cache::Position;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// What this instance has applied of the invalidation stream.
pub struct StreamProgress {
    /// Per partition, the next offset to apply (everything below it has been applied, or was
    /// published before this instance started).
    applied: Mutex<HashMap<i32, i64>>,
    changed: watch::Sender<u64>,
    /// Unix ms send time of the freshest message applied (heartbeats included).
    freshest_ms: AtomicU64,
    behind: AtomicBool,
}

impl Default for StreamProgress {
    fn default() -> Self {
        Self {
            applied: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            freshest_ms: AtomicU64::new(0),
            behind: AtomicBool::new(false),
        }
    }
}

impl StreamProgress {
    /// Where this instance joined the stream: earlier messages need not be waited for.
    pub fn start_at(&self, positions: &[Position]) {
        let mut applied = self.applied.lock().unwrap();
        for p in positions {
            let next = applied.entry(p.partition).or_insert(p.offset);
            *next = (*next).max(p.offset);
        }
    }

    /// Whether the message at `p` has been applied (or predates this instance).
    pub fn has_applied(&self, p: &Position) -> bool {
        self.applied
            .lock()
            .unwrap()
            .get(&p.partition)
            .is_some_and(|next| *next > p.offset)
    }

    pub(crate) fn applied_up_to(&self, p: Position) {
        let mut applied = self.applied.lock().unwrap();
        let next = applied.entry(p.partition).or_insert(0);
        *next = (*next).max(p.offset + 1);
        drop(applied);
        self.changed.send_modify(|n| *n += 1);
    }

    /// A message sent at `sent_at_ms` (Unix ms) was applied: proof that the stream is alive.
    pub(crate) fn heard(&self, sent_at_ms: u64) {
        self.freshest_ms.fetch_max(sent_at_ms, Ordering::AcqRel);
    }

    /// Unix ms send time of the freshest message applied.
    pub(crate) fn freshest_ms(&self) -> u64 {
        self.freshest_ms.load(Ordering::Acquire)
    }

    /// Records whether the stream is behind the liveness bound; answers the previous state.
    pub(crate) fn set_behind(&self, behind: bool) -> bool {
        self.behind.swap(behind, Ordering::AcqRel)
    }

    /// Waits until every position in `tokens` has been applied, at most `wait`.
    pub async fn wait_applied(&self, tokens: &[Position], wait: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let done = || tokens.iter().all(|p| self.has_applied(p));
        tokio::time::timeout(wait, async {
            while !done() {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Whether the consumer is behind the liveness bound (L1 distrusted).
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }
}

/// Parses a consistency token: positions (`partition:offset`) separated by commas.
pub fn parse_token(token: &str) -> Result<Vec<Position>, String> {
    token
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<Position>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn tokens_parse_as_position_lists() {
        assert_eq!(
            parse_token("0:17, 2:5").unwrap(),
            vec![
                Position {
                    partition: 0,
                    offset: 17
                },
                Position {
                    partition: 2,
                    offset: 5
                }
            ]
        );
        assert!(parse_token("0:x").is_err());
        assert!(parse_token("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn waiting_for_a_position_ends_when_it_is_applied_or_predates_the_instance() {
        let s = Arc::new(StreamProgress::default());
        let p = |partition, offset| Position { partition, offset };
        s.start_at(&[p(0, 10)]);
        assert!(
            s.has_applied(&p(0, 9)),
            "published before this instance started"
        );
        assert!(!s.has_applied(&p(0, 10)));
        assert!(!s.wait_applied(&[p(0, 10)], Duration::from_millis(20)).await);
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.wait_applied(&[p(0, 11)], Duration::from_secs(5)).await });
        s.applied_up_to(p(0, 10));
        s.applied_up_to(p(0, 11));
        assert!(waiter.await.unwrap());
        assert!(!s.has_applied(&p(1, 0)), "unknown partition");
    }
}
