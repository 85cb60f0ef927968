//! [`CalendarFeed`]: what this instance's subscriptions hear. Every change-log row the
//! invalidation stream delivers (this instance's own included) names the calendars its write
//! changed; the consumer passes them on here, so a subscriber learns of a change from the stream
//! the instance already reads: no polling, no broker connection of its own.
//!
//! The feed holds the last [`CalendarFeed::CAPACITY`] messages for all subscribers together; a
//! subscriber that falls further behind is told it missed some ([`News::Missed`]) instead of
//! holding more.

use tokio::sync::broadcast;

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// A committed write changed these calendars (their events or sharing).
    Changed {
        calendars: std::sync::Arc<[i64]>,
        /// When the writer sent the change (Unix milliseconds), for the delivery lag.
        sent_at_ms: u64,
    },
    /// Messages were lost (this subscriber fell behind, or the stream failed): any calendar may
    /// have changed.
    Missed,
}

#[derive(Debug, Clone)]
pub struct CalendarFeed {
    tx: broadcast::Sender<News>,
}

impl Default for CalendarFeed {
    fn default() -> Self {
        Self::new(Self::CAPACITY)
    }
}

impl CalendarFeed {
    /// Messages kept for subscribers that have not read them yet, by default
    /// ([`crate::SyncConfig::feed_capacity`]).
    pub const CAPACITY: usize = 1024;

    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            rx: self.tx.subscribe(),
        }
    }

    /// Tells every subscriber (none listening is fine).
    pub fn tell(&self, news: News) {
        if matches!(&news, News::Changed { calendars, .. } if calendars.is_empty()) {
            return;
        }
        let _ = self.tx.send(news);
    }
}

/// One subscriber's place in the feed.
#[derive(Debug)]
pub struct Subscriber {
    rx: broadcast::Receiver<News>,
}

impl Subscriber {
    /// The next news; `None` once the feed is gone. Falling more than the capacity behind
    /// answers [`News::Missed`] once and resumes at the oldest message kept.
    pub async fn next(&mut self) -> Option<News> {
        match self.rx.recv().await {
            Ok(news) => Some(news),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(News::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(calendars: &[i64]) -> News {
        News::Changed {
            calendars: calendars.into(),
            sent_at_ms: 7,
        }
    }

    #[tokio::test]
    async fn a_subscriber_hears_changes_and_is_told_when_it_fell_behind() {
        let feed = CalendarFeed::new(2);
        let mut sub = feed.subscribe();
        feed.tell(changed(&[]));
        feed.tell(changed(&[1, 2]));
        assert_eq!(sub.next().await, Some(changed(&[1, 2])));
        for c in 3..6 {
            feed.tell(changed(&[c]));
        }
        assert_eq!(sub.next().await, Some(News::Missed));
        assert_eq!(sub.next().await, Some(changed(&[4])));
        assert_eq!(sub.next().await, Some(changed(&[5])));
        drop(feed);
        assert_eq!(sub.next().await, None);
    }
}
