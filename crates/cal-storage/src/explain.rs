//! `EXPLAIN` of the hot reads: the exact statement texts and bindings that `reads` sends, with
//! parameters picked from the data in the database (a busy calendar, a page of its events, their
//! attendees). It lets a test assert that no hot read scans a big table sequentially, and answers
//! "what plan does the month view get here?" against any seeded database.
//!
//! It only reads; it never changes planner settings or data.

use crate::reads::{self, Query};
use crate::{StorageError, Store};
use cal_domain::{CalendarId, EventCursor, EventId, TimeWindow};
use chrono::{DateTime, Duration, Months, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

/// Parameters for the hot reads, picked from the data.
struct Sample {
    calendar: CalendarId,
    owner: i64,
    window: TimeWindow,
    events: Vec<i64>,
    cursor: EventCursor,
    users: Vec<i64>,
    calendars: Vec<i64>,
    resources: Vec<i64>,
}

/// Binds a statement's parameters exactly as its read method does.
type Binder<'a> = Box<dyn FnOnce(Query) -> Query + Send + 'a>;

/// Rows the month view asks for: one page of 100 plus one to learn whether there is a next page.
const PAGE: i64 = 101;

impl Store {
    /// The JSON plan of every hot read, by read method name (`events_in_window_after_cursor` is
    /// `events_in_window` with a cursor). Fails with [`StorageError::Invalid`] on a database without
    /// events.
    pub async fn explain_hot_queries(&self) -> Result<Vec<(&'static str, Value)>, StorageError> {
        let s = self.sample().await?;
        let (w, limit) = (&s.window, PAGE);
        let busy_users: Vec<i64> = s.users.iter().copied().take(10).collect();
        // Each entry: (name, statement text, bindings) with bindings exactly as the read method binds.
        let plans: Vec<(&'static str, &str, Binder<'_>)> = vec![
            (
                "users_by_ids",
                &reads::USERS_BY_IDS,
                Box::new(|q| q.bind(&s.users)),
            ),
            (
                "calendars_by_ids",
                &reads::CALENDARS_BY_IDS,
                Box::new(|q| q.bind(&s.calendars)),
            ),
            (
                "events_by_ids",
                &reads::EVENTS_BY_IDS,
                Box::new(|q| q.bind(&s.events)),
            ),
            (
                "attendees_by_event_ids",
                reads::ATTENDEES_BY_EVENT_IDS,
                Box::new(|q| q.bind(&s.events)),
            ),
            (
                "reservations_by_event_ids",
                reads::RESERVATIONS_BY_EVENT_IDS,
                Box::new(|q| q.bind(&s.events)),
            ),
            (
                "resources_by_ids",
                &reads::RESOURCES_BY_IDS,
                Box::new(|q| q.bind(&s.resources)),
            ),
            (
                "events_in_window",
                &reads::EVENTS_IN_WINDOW,
                Box::new(move |q| reads::bind_events_in_window(q, s.calendar, w, None, limit)),
            ),
            (
                "events_in_window_after_cursor",
                &reads::EVENTS_IN_WINDOW,
                Box::new(move |q| {
                    reads::bind_events_in_window(q, s.calendar, w, Some(s.cursor), limit)
                }),
            ),
            (
                "memberships_of",
                reads::MEMBERSHIPS_OF,
                Box::new(|q| q.bind(s.owner)),
            ),
            (
                "owners_sharing_with",
                reads::OWNERS_SHARING_WITH,
                Box::new(|q| q.bind(s.owner).bind(&s.users)),
            ),
            (
                "users_sharing_calendar_with",
                reads::USERS_SHARING_CALENDAR_WITH,
                Box::new(|q| q.bind(s.owner).bind(&s.users)),
            ),
            (
                "busy_of_users",
                reads::BUSY_OF_USERS,
                Box::new(|q| reads::bind_window(q.bind(&busy_users), w)),
            ),
            (
                "busy_of_resources",
                reads::BUSY_OF_RESOURCES,
                Box::new(|q| reads::bind_window(q.bind(&s.resources), w)),
            ),
        ];
        let mut out = Vec::with_capacity(plans.len());
        for (name, sql, bind) in plans {
            let q = bind(sqlx::query(AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) {sql}"
            ))));
            let row = q.fetch_one(self.pool()).await?;
            out.push((name, row.try_get::<Value, _>(0)?));
        }
        Ok(out)
    }

    /// The calendar with the most events, its busiest month, the first 50 events of that month, their
    /// attendees and reserved resources.
    async fn sample(&self) -> Result<Sample, StorageError> {
        let pool = self.pool();
        let busiest: Option<(i64, i64)> = sqlx::query_as(
            "SELECT e.calendar_id, c.owner_id FROM events e JOIN calendars c ON c.id = e.calendar_id \
             WHERE e.deleted_at IS NULL GROUP BY 1, 2 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let Some((calendar, owner)) = busiest else {
            return Err(StorageError::Invalid(
                "explain needs a database with events (seed it first)".to_owned(),
            ));
        };
        let from: DateTime<Utc> = sqlx::query_scalar(
            "SELECT date_trunc('month', percentile_disc(0.5) WITHIN GROUP (ORDER BY start_time), 'UTC') \
             FROM events WHERE calendar_id = $1 AND deleted_at IS NULL",
        )
        .bind(calendar)
        .fetch_one(pool)
        .await?;
        let to = from
            .checked_add_months(Months::new(1))
            .unwrap_or(from + Duration::days(31));
        let window = TimeWindow::parse(from, to, Duration::days(62))
            .map_err(|e| StorageError::Invalid(e.0))?;

        let page: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, start_time FROM events WHERE calendar_id = $1 AND deleted_at IS NULL \
               AND start_time >= $2 AND start_time < $3 ORDER BY start_time, id LIMIT 50",
        )
        .bind(calendar)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        let events: Vec<i64> = page.iter().map(|(id, _)| *id).collect();
        let (id, start) = page[page.len() / 2];
        let cursor = EventCursor::row(start, EventId::new(id));

        let users: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM attendees WHERE event_id = ANY($1) ORDER BY 1 LIMIT 50",
        )
        .bind(&events)
        .fetch_all(pool)
        .await?;
        let mut calendars: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT calendar_id FROM calendar_members WHERE user_id = ANY($1) ORDER BY 1 LIMIT 20",
        )
        .bind(&users)
        .fetch_all(pool)
        .await?;
        if !calendars.contains(&calendar) {
            calendars.push(calendar);
        }
        let mut resources: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT resource_id FROM reservations WHERE event_id = ANY($1) ORDER BY 1 LIMIT 10",
        )
        .bind(&events)
        .fetch_all(pool)
        .await?;
        if resources.is_empty() {
            resources = sqlx::query_scalar("SELECT id FROM resources ORDER BY id LIMIT 5")
                .fetch_all(pool)
                .await?;
        }
        Ok(Sample {
            calendar: CalendarId::new(calendar),
            owner,
            window,
            events,
            cursor,
            users,
            calendars,
            resources,
        })
    }
}

/// Relations read by a `Seq Scan` anywhere in a plan as returned by `EXPLAIN (FORMAT JSON)` (an
/// array of `{"Plan": …}`), walking `Plans` recursively.
pub fn seq_scans(plan: &Value) -> Vec<String> {
    fn walk(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => {
                if map.get("Node Type").and_then(Value::as_str) == Some("Seq Scan")
                    && let Some(rel) = map.get("Relation Name").and_then(Value::as_str)
                {
                    out.push(rel.to_owned());
                }
                for key in ["Plan", "Plans"] {
                    if let Some(child) = map.get(key) {
                        walk(child, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_seq_scans_at_any_depth() {
        let plan = json!([{ "Plan": {
            "Node Type": "Hash Join",
            "Plans": [
                { "Node Type": "Seq Scan", "Relation Name": "resources" },
                { "Node Type": "Hash", "Plans": [
                    { "Node Type": "Index Scan", "Relation Name": "reservations" },
                    { "Node Type": "Seq Scan", "Relation Name": "events" }
                ]}
            ]
        }}]);
        assert_eq!(seq_scans(&plan), ["resources", "events"]);
        assert!(seq_scans(&json!([{ "Plan": { "Node Type": "Result" } }])).is_empty());
    }
}
