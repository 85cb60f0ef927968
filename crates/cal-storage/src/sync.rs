//! Incremental sync's reads: a calendar's live rows page by page (a full sync), and the events
//! its writes changed between two snapshots (an incremental one).
//!
//! A position in the change log is a PostgreSQL snapshot ([`Snapshot`]). Row ids and
//! transaction ids are taken before a transaction commits, so "id above n" would skip a
//! transaction that committed after a later one; "written by a transaction the snapshot did not
//! see" skips nothing. Every write transaction records the events it changed in `event_changes`
//! with its transaction id (`Store::commit`), and the pruner moves `change_log_horizon` past
//! every transaction whose rows it deletes, so a snapshot from before the horizon is refused
//! ([`ChangedPage::Expired`]) instead of silently missing changes.

use crate::{StorageError, Store, rows};
use cal_domain::{CalendarId, Event, EventId, Role, UserId};
use sqlx::Row;
use sqlx::postgres::PgRow;
use std::sync::{Arc, LazyLock};

type Result<T> = std::result::Result<T, StorageError>;

/// A PostgreSQL snapshot in its text form `xmin:xmax:xip,…` (`pg_snapshot`), checked for that
/// shape so that a value from a client can be bound without the database refusing it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Snapshot(String);

impl Snapshot {
    /// The longest text accepted: a snapshot lists the transactions in progress, at most a few
    /// hundred on any real server.
    pub const MAX_LEN: usize = 16 * 1024;

    pub fn parse(text: &str) -> Option<Snapshot> {
        if text.len() > Self::MAX_LEN {
            return None;
        }
        let mut parts = text.split(':');
        let (xmin, xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
        let number =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        let (lo, hi) = (xmin.parse::<u64>().ok()?, xmax.parse::<u64>().ok()?);
        let ok = parts.next().is_none()
            && number(xmin)
            && number(xmax)
            && lo <= hi
            && (xip.is_empty()
                || xip
                    .split(',')
                    .all(|x| number(x) && x.parse::<u64>().is_ok_and(|x| (lo..hi).contains(&x))));
        ok.then(|| Snapshot(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Snapshot {
    type Error = &'static str;
    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        Snapshot::parse(&s).ok_or("not a snapshot")
    }
}

impl From<Snapshot> for String {
    fn from(s: Snapshot) -> String {
        s.0
    }
}

/// One page of a calendar's live rows, by id.
#[derive(Debug, Clone)]
pub struct LivePage {
    /// The snapshot the page was read in.
    pub snapshot: Snapshot,
    /// Up to the limit asked for, ascending.
    pub events: Vec<EventId>,
}

/// Where a page of changes ends: the last change-log row and event it listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeKey {
    pub outbox_id: i64,
    pub event: i64,
}

/// One page of the events changed between two snapshots, each with a `T`: its id
/// ([`Store::changed_events_page`]) or its current row ([`Store::live_changes`]).
#[derive(Debug, Clone)]
pub enum ChangedPage<T = EventId> {
    /// The changes after the first snapshot may have been pruned: sync from scratch.
    Expired,
    Changes {
        /// The later snapshot (the one the page was read in, unless one was given).
        until: Snapshot,
        /// Every event changed by a transaction the first snapshot did not see and the second
        /// did, once each, by its newest such change (then id), after the given key; up to the
        /// limit asked for.
        events: Vec<(ChangeKey, T)>,
    },
}

impl<T> ChangedPage<T> {
    /// The same page with `f` applied to each listed event.
    fn try_map<U>(
        self,
        f: impl FnMut((ChangeKey, T)) -> Result<(ChangeKey, U)>,
    ) -> Result<ChangedPage<U>> {
        Ok(match self {
            Self::Expired => ChangedPage::Expired,
            Self::Changes { until, events } => ChangedPage::Changes {
                until,
                events: events.into_iter().map(f).collect::<Result<_>>()?,
            },
        })
    }
}

/// What a subscription sends after a snapshot: [`Store::live_changes`].
#[derive(Debug, Clone)]
pub struct LiveChanges {
    /// The viewer's role on the calendar, read in the same snapshot.
    pub role: Option<Role>,
    /// Each listed event with its current row (`None`: deleted).
    pub page: ChangedPage<Option<Event>>,
}

/// The common part of the statements that list the events changed between two snapshots
/// (`$2`, and `$3` or now) from a key (`$4`, `$5`) on, `$6` at most, of calendar `$1`: `s` (the
/// two snapshots and whether the first is past the prune horizon) and `page` (each changed
/// event once, by its newest change).
const CHANGED_CTES: &str = "WITH s AS (SELECT $2::pg_snapshot AS since, \
       coalesce($3::pg_snapshot, pg_current_snapshot()) AS until, \
       coalesce((SELECT pruned_xid FROM change_log_horizon), '0'::xid8) \
         >= pg_snapshot_xmin($2::pg_snapshot) AS expired), \
     changed AS (SELECT c.event_id, max(c.outbox_id) AS last FROM event_changes c, s \
       WHERE c.calendar_id = $1 AND NOT s.expired \
         AND c.xid >= pg_snapshot_xmin(s.since) AND c.xid < pg_snapshot_xmax(s.until) \
         AND NOT pg_visible_in_snapshot(c.xid, s.since) \
         AND pg_visible_in_snapshot(c.xid, s.until) \
       GROUP BY c.event_id), \
     page AS (SELECT event_id, last FROM changed \
       WHERE (last, event_id) > ($4, $5) ORDER BY last, event_id LIMIT $6) ";

static CHANGED_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{CHANGED_CTES}SELECT s.expired, s.until::text AS snapshot, p.event_id AS changed_id, p.last \
         FROM s LEFT JOIN page p ON true ORDER BY p.last, p.event_id"
    )
});

/// [`CHANGED_EVENTS`] with the viewer's (`$7`) role and each event's current row (its columns
/// NULL when it is deleted).
static LIVE_CHANGES: LazyLock<String> = LazyLock::new(|| {
    let event_cols = rows::qualified("e", rows::EVENT_COLS);
    format!(
        "{CHANGED_CTES}SELECT (SELECT role FROM calendar_members \
           WHERE calendar_id = $1 AND user_id = $7) AS role, \
         s.expired, s.until::text AS snapshot, p.event_id AS changed_id, p.last, {event_cols} \
         FROM s LEFT JOIN page p ON true \
         LEFT JOIN events e ON e.id = p.event_id AND e.deleted_at IS NULL \
         ORDER BY p.last, p.event_id"
    )
});

fn changes_query<'q>(
    sql: &'static str,
    calendar: CalendarId,
    since: &'q Snapshot,
    until: Option<&'q Snapshot>,
    after: ChangeKey,
    limit: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(calendar.get())
        .bind(since.as_str())
        .bind(until.map(Snapshot::as_str))
        .bind(after.outbox_id)
        .bind(after.event)
        .bind(limit)
}

/// What a changes statement's rows list, each change with the row it is on.
fn changed_of(rows: &[PgRow]) -> Result<ChangedPage<usize>> {
    let expired: bool = rows
        .first()
        .map(|r| r.try_get("expired"))
        .transpose()?
        .unwrap_or(true);
    if expired {
        return Ok(ChangedPage::Expired);
    }
    let until = snapshot_of(rows)?;
    let mut keys = Vec::with_capacity(rows.len());
    for (at, r) in rows.iter().enumerate() {
        let id: Option<i64> = r.try_get("changed_id")?;
        let last: Option<i64> = r.try_get("last")?;
        if let (Some(id), Some(last)) = (id, last) {
            let key = ChangeKey {
                outbox_id: last,
                event: id,
            };
            keys.push((key, at));
        }
    }
    Ok(ChangedPage::Changes {
        until,
        events: keys,
    })
}

impl Store {
    /// Up to `limit` live rows of `calendar` (single events, series masters, overrides) with an
    /// id above `after`, and the snapshot of the statement that read them. One statement.
    pub async fn live_events_page(
        &self,
        calendar: CalendarId,
        after: i64,
        limit: i64,
    ) -> Result<LivePage> {
        let rows = self
            .fetch(
                "sync.live_events",
                sqlx::query(
                    "SELECT pg_current_snapshot()::text AS snapshot, e.id FROM (SELECT 1) one \
                     LEFT JOIN LATERAL (SELECT id FROM events \
                       WHERE calendar_id = $1 AND deleted_at IS NULL AND id > $2 \
                       ORDER BY id LIMIT $3) e ON true ORDER BY e.id",
                )
                .bind(calendar.get())
                .bind(after)
                .bind(limit),
            )
            .await?;
        let snapshot = snapshot_of(&rows)?;
        let events = rows
            .iter()
            .map(|r| r.try_get::<Option<i64>, _>("id"))
            .filter_map(|r| r.transpose())
            .map(|r| r.map(EventId::new))
            .collect::<std::result::Result<_, _>>()?;
        Ok(LivePage { snapshot, events })
    }

    /// The events of `calendar` changed after `since` and (when given) before `until`, or by
    /// now, from `after` on: see [`ChangedPage`]. One statement, which also checks the prune
    /// horizon.
    pub async fn changed_events_page(
        &self,
        calendar: CalendarId,
        since: &Snapshot,
        until: Option<&Snapshot>,
        after: ChangeKey,
        limit: i64,
    ) -> Result<ChangedPage> {
        let rows = self
            .fetch(
                "sync.changed_events",
                changes_query(
                    CHANGED_EVENTS.as_str(),
                    calendar,
                    since,
                    until,
                    after,
                    limit,
                ),
            )
            .await?;
        changed_of(&rows)?.try_map(|(k, _)| Ok((k, EventId::new(k.event))))
    }

    /// What a subscription sends after `since`, in one statement: the viewer's role on
    /// `calendar` (`None`: no role, or no such calendar), and the page
    /// [`Store::changed_events_page`] answers with every listed event's current row (`None`:
    /// deleted), all read in one snapshot.
    pub async fn live_changes(
        &self,
        viewer: UserId,
        calendar: CalendarId,
        since: &Snapshot,
        until: Option<&Snapshot>,
        after: ChangeKey,
        limit: i64,
    ) -> Result<LiveChanges> {
        let rows = self
            .fetch(
                "sync.live_changes",
                changes_query(LIVE_CHANGES.as_str(), calendar, since, until, after, limit)
                    .bind(viewer.get()),
            )
            .await?;
        let role = match rows.first() {
            None => None,
            Some(r) => r
                .try_get::<Option<&str>, _>("role")?
                .map(|role| Role::parse(role).map_err(|e| rows::corrupt("role", e)))
                .transpose()?,
        };
        let mut cols = None;
        let page = changed_of(&rows)?.try_map(|(key, at)| {
            let r = &rows[at];
            if r.try_get::<Option<i64>, _>("id")?.is_none() {
                return Ok((key, None)); // deleted: no row joined
            }
            let cols = match &cols {
                Some(c) => c,
                None => cols.insert(rows::Cols::of(r, &rows::EVENT)?),
            };
            Ok((key, Some(rows::event_at(r, cols)?)))
        })?;
        Ok(LiveChanges { role, page })
    }

    /// The snapshot of now: where a subscription that names no token starts. One statement.
    pub async fn current_snapshot(&self) -> Result<Snapshot> {
        let rows = self
            .fetch(
                "sync.current_snapshot",
                sqlx::query("SELECT pg_current_snapshot()::text AS snapshot"),
            )
            .await?;
        snapshot_of(&rows)
    }

    /// The key sync tokens are signed with, the same for every instance (kept in the database,
    /// made by the migration that added sync); read once per store and its handles.
    pub async fn sync_token_key(&self) -> Result<Arc<[u8]>> {
        let key = self
            .sync_key
            .get_or_try_init(|| async {
                let rows = self
                    .fetch(
                        "sync.token_key",
                        sqlx::query("SELECT key FROM sync_token_key"),
                    )
                    .await?;
                let row = rows.first().ok_or(StorageError::NotFound)?;
                let key: Vec<u8> = row.try_get("key")?;
                Ok::<_, StorageError>(Arc::from(key))
            })
            .await?;
        Ok(key.clone())
    }
}

fn snapshot_of(rows: &[PgRow]) -> Result<Snapshot> {
    let text: String = rows
        .first()
        .ok_or(StorageError::NotFound)?
        .try_get("snapshot")?;
    Snapshot::parse(&text).ok_or_else(|| {
        StorageError::Database(sqlx::Error::Protocol(format!(
            "the server answered a snapshot of an unknown form: {text}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::Snapshot;

    #[test]
    fn snapshots_of_the_server_s_form_parse_and_nothing_else() {
        for ok in ["10:10:", "10:20:12,15", "1:2:1", "0:0:"] {
            assert!(Snapshot::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "10:10",
            "10:9:",
            "10:20:21",
            "10:20:9",
            "a:b:",
            "10:20:12,",
            "10:20:,12",
            "10:20:12:13",
            "-1:2:",
            " 1:2:",
            "1:2: ",
            "99999999999999999999999:1:",
        ] {
            assert!(Snapshot::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Snapshot::parse(&format!("1:2:{}", "1,".repeat(9000))).is_none());
    }
}
