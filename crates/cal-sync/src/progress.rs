//! What this instance has applied of the invalidation stream, and the consistency tokens built
//! from stream positions: a mutation answers with the position of its change-log row's message,
//! and a request presenting it waits (bounded) until this instance has applied that far.

use cal_cache::Position;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// What this instance has applied of the invalidation stream.
pub struct StreamProgress {
    /// Per partition, the next offset to apply (everything below it has been applied, or was
    /// published before this instance started).
    applied: Mutex<HashMap<i32, i64>>,
    changed: watch::Sender<u64>,
    /// Per partition, the Unix ms send time of the freshest message applied from it (heartbeats
    /// included; a partition known from [`StreamProgress::start_at`] starts at 0).
    freshest_ms: Mutex<HashMap<i32, u64>>,
    behind: AtomicBool,
}

impl Default for StreamProgress {
    fn default() -> Self {
        Self {
            applied: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            freshest_ms: Mutex::new(HashMap::new()),
            behind: AtomicBool::new(false),
        }
    }
}

impl StreamProgress {
    /// Where this instance joined the stream: earlier messages need not be waited for.
    pub fn start_at(&self, positions: &[Position]) {
        let mut applied = self.applied.lock().unwrap();
        let mut freshest = self.freshest_ms.lock().unwrap();
        for p in positions {
            let next = applied.entry(p.partition).or_insert(p.offset);
            *next = (*next).max(p.offset);
            freshest.entry(p.partition).or_insert(0);
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

    /// A message of `partition` sent at `sent_at_ms` (Unix ms) was applied: proof that the
    /// partition is alive.
    pub(crate) fn heard(&self, partition: i32, sent_at_ms: u64) {
        let mut freshest = self.freshest_ms.lock().unwrap();
        let at = freshest.entry(partition).or_insert(0);
        *at = (*at).max(sent_at_ms);
    }

    /// How fresh the stream is: the send time of the freshest message applied, in the partition
    /// whose freshest message is the oldest. Every partition has to keep up, since a key's
    /// invalidations travel in one of them.
    pub(crate) fn freshest_ms(&self) -> u64 {
        let freshest = self.freshest_ms.lock().unwrap();
        freshest.values().copied().min().unwrap_or(0)
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

    #[tokio::test]
    async fn a_token_waits_only_for_the_partition_it_names() {
        let s = StreamProgress::default();
        let p = |partition, offset| Position { partition, offset };
        s.start_at(&[p(0, 0), p(1, 0), p(2, 0)]);
        s.applied_up_to(p(1, 4));
        // Partitions 0 and 2 have applied nothing: a token of partition 1 does not wait for them.
        assert!(s.wait_applied(&[p(1, 4)], Duration::ZERO).await);
        assert!(
            !s.wait_applied(&[p(1, 4), p(2, 0)], Duration::from_millis(10))
                .await
        );
    }

    #[test]
    fn the_stream_is_as_fresh_as_its_stalest_partition() {
        let s = StreamProgress::default();
        let p = |partition| Position {
            partition,
            offset: 0,
        };
        s.start_at(&[p(0), p(1), p(2)]);
        s.heard(0, 1_000);
        s.heard(1, 1_000);
        assert_eq!(s.freshest_ms(), 0, "partition 2 was never heard");
        s.heard(2, 900);
        assert_eq!(s.freshest_ms(), 900);
        s.heard(0, 5_000);
        s.heard(1, 5_000);
        assert_eq!(
            s.freshest_ms(),
            900,
            "a stalled partition keeps the stream behind"
        );
        s.heard(2, 800);
        assert_eq!(
            s.freshest_ms(),
            900,
            "an older message does not move it back"
        );
    }
}
