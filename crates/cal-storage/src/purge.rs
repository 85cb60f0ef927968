//! Operator purges: drop cached copies of some facts (or of everything) on every instance and in
//! Redis, through the change log like any other write.
//!
//! A purge of an event, a calendar, a user or a resource is a transaction that moves the
//! versions of what it names (content is left as it is) and records them in the change log: the
//! ordinary path then tombstones the old versions in L1 and L2 on every instance, and a fill of
//! an older copy is refused. A purge of everything is a change-log row marked `purge_all`; its id
//! becomes the purge generation that every instance folds into its Redis key namespace (nothing
//! old is read again, with no KEYS or SCAN) and that clears every L1.

use crate::{StorageError, Store};
use cal_domain::cache_keys::EventChange;
use cal_domain::{CalendarId, EventId, ResourceId, UserId};
use serde_json::json;

/// What a purge drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// An event, with its overrides when it is a series (its details, attendees, bookings).
    Event(EventId),
    /// A calendar and every event in it (summary, month views, events).
    Calendar(CalendarId),
    /// A user's profile.
    User(UserId),
    /// A resource and its availability.
    Resource(ResourceId),
    /// Every cached value.
    All,
}

impl PurgeScope {
    /// The scope that exactly one of the arguments names (an id, or `all`), as the CLI and the
    /// admin endpoint take it.
    pub fn named(
        calendar: Option<i64>,
        event: Option<i64>,
        user: Option<i64>,
        resource: Option<i64>,
        all: bool,
    ) -> Result<Self, String> {
        let named = [calendar, event, user, resource]
            .iter()
            .filter(|id| id.is_some())
            .count()
            + usize::from(all);
        if named != 1 {
            return Err(
                "name exactly one of calendar, event, user, resource (an id) or all (true)".into(),
            );
        }
        let positive = |id: i64| {
            (id > 0)
                .then_some(id)
                .ok_or_else(|| format!("ids are positive integers, not {id}"))
        };
        Ok(match (calendar, event, user, resource) {
            (Some(id), ..) => PurgeScope::Calendar(CalendarId::new(positive(id)?)),
            (_, Some(id), ..) => PurgeScope::Event(EventId::new(positive(id)?)),
            (_, _, Some(id), _) => PurgeScope::User(UserId::new(positive(id)?)),
            (_, _, _, Some(id)) => PurgeScope::Resource(ResourceId::new(positive(id)?)),
            _ => PurgeScope::All,
        })
    }

    fn label(self) -> (&'static str, i64) {
        match self {
            PurgeScope::Event(id) => ("event", id.get()),
            PurgeScope::Calendar(id) => ("calendar", id.get()),
            PurgeScope::User(id) => ("user", id.get()),
            PurgeScope::Resource(id) => ("resource", id.get()),
            PurgeScope::All => ("all", 0),
        }
    }
}

/// What a committed purge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// Its change-log row.
    pub outbox_id: i64,
    /// How many facts (events, calendars, users, resources) it moved to a new version.
    pub facts: usize,
}

impl Store {
    /// Purges `scope`; [`StorageError::NotFound`] when it names nothing that exists.
    pub async fn purge(&self, scope: PurgeScope) -> Result<Purged, StorageError> {
        let mut tx = self.begin().await?;
        let mut facts = 0;
        match scope {
            PurgeScope::Event(id) => {
                let rows = self
                    .purge_events(&mut tx, "id = $1 OR recurring_event_id = $1", id.get())
                    .await?;
                if rows.is_empty() {
                    return Err(StorageError::NotFound);
                }
                facts += self.record_purged_events(&mut tx, &rows).await?;
            }
            PurgeScope::Calendar(id) => {
                // The calendar first: a calendar that does not exist is not found.
                self.touch_calendar(&mut tx, id).await?;
                facts += 1;
                let rows = self
                    .purge_events(&mut tx, "calendar_id = $1", id.get())
                    .await?;
                facts += self.record_purged_events(&mut tx, &rows).await?;
            }
            PurgeScope::User(id) => {
                let st = self.statement("users.purge")?;
                let version: Option<i64> = sqlx::query_scalar(
                    "UPDATE users SET version = version + 1 WHERE id = $1 RETURNING version",
                )
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await?;
                st.done(version.is_some() as usize);
                let version = version.ok_or(StorageError::NotFound)?;
                tx.changes.users.push((id, version));
                facts += 1;
            }
            PurgeScope::Resource(id) => {
                let st = self.statement("resources.purge")?;
                let version: Option<i64> = sqlx::query_scalar(
                    "UPDATE resources SET bookings_version = bookings_version + 1 WHERE id = $1 \
                     RETURNING bookings_version",
                )
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await?;
                st.done(version.is_some() as usize);
                let version = version.ok_or(StorageError::NotFound)?;
                tx.changes.resources.push((id, version));
                facts += 1;
            }
            // The generation is the row's id.
            PurgeScope::All => tx.changes.purge_all = true,
        }
        let (kind, id) = scope.label();
        self.outbox(
            &mut tx,
            "purge",
            id,
            &format!("purge.{kind}"),
            json!({ "scope": kind, "id": id }),
        )
        .await?;
        let outbox_id = self.commit(tx).await?.unwrap_or(0);
        Ok(Purged { outbox_id, facts })
    }

    /// Moves the version of every event matching `filter` (with `$1` bound to `id`), deleted
    /// or not: a cached deletion is a cached fact too. Answers (event, new version, calendar).
    async fn purge_events(
        &self,
        conn: &mut sqlx::PgConnection,
        filter: &'static str,
        id: i64,
    ) -> Result<Vec<(i64, i64, i64)>, StorageError> {
        let st = self.statement("events.purge")?;
        let sql = format!(
            "UPDATE events SET version = version + 1 WHERE {filter} \
             RETURNING id, version, calendar_id"
        );
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(conn)
            .await?;
        st.done(rows.len());
        Ok(rows)
    }

    async fn record_purged_events(
        &self,
        tx: &mut crate::writes::WriteTx,
        rows: &[(i64, i64, i64)],
    ) -> Result<usize, StorageError> {
        for (event, version, calendar) in rows {
            let calendar = CalendarId::new(*calendar);
            let calendar_version = self.touch_calendar(tx, calendar).await?;
            tx.changes.events.push(EventChange {
                event: EventId::new(*event),
                event_version: *version,
                calendar,
                calendar_version,
            });
        }
        Ok(rows.len())
    }
}
