//! Every committed write reports what it changed (events with their new versions, calendars with
//! their new generation) to the change sink, after the commit; a failed write reports nothing.

use cal_domain::*;
use cal_storage::{ChangeSet, ChangeSink, NewEvent, NewReservation, Store};
use cal_test_support::{TestDb, dates};
use chrono::Duration;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Recorder(Mutex<Vec<ChangeSet>>);

#[async_trait::async_trait]
impl ChangeSink for Recorder {
    async fn committed(&self, changes: &ChangeSet) -> Option<String> {
        self.0.lock().unwrap().push(changes.clone());
        None
    }
}

fn event(cal: CalendarId, org: UserId, hour: u32, room: Option<ResourceId>) -> NewEvent {
    let start = dates::at(2, hour, 0);
    NewEvent {
        calendar_id: cal,
        organizer_id: org,
        title: Title::new("t").unwrap(),
        description: None,
        location: None,
        start_time: start,
        end_time: start + Duration::hours(1),
        time_zone: "UTC".into(),
        all_day: false,
        status: EventStatus::Confirmed,
        transparency: Transparency::Busy,
        rrule: None,
        series_end: None,
        attendees: vec![],
        reservations: room
            .map(|r| NewReservation {
                resource_id: r,
                start_time: None,
                end_time: None,
            })
            .into_iter()
            .collect(),
    }
}

#[tokio::test]
async fn writes_report_their_changes_after_commit() {
    let db = TestDb::new().await;
    let rec = Arc::new(Recorder::default());
    let store = Store::new(db.pool.clone()).with_change_sink(rec.clone());
    let owner = store
        .create_user("o@example.test", "O", None)
        .await
        .unwrap();
    let cal = store
        .create_calendar(owner.id, &CalendarName::new("C").unwrap(), None, "UTC")
        .await
        .unwrap();
    let room = store
        .create_resource("R", ResourceKind::Room, None, None)
        .await
        .unwrap();
    let ev = store
        .create_event(&event(cal.id, owner.id, 9, Some(room.id)))
        .await
        .unwrap();
    let updated = store
        .update_event(
            ev.id,
            ev.version,
            &cal_storage::EventPatch {
                title: Some(Title::new("u").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A conflicting booking fails and reports nothing.
    let failed = store
        .create_event(&event(cal.id, owner.id, 9, Some(room.id)))
        .await;
    assert!(failed.is_err());

    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "calendar created, event created, event updated: {seen:?}"
    );
    assert_eq!(seen[0].calendars, vec![(cal.id, 1)]);
    let created = &seen[1].events[0];
    assert_eq!(
        (created.event, created.event_version, created.calendar),
        (ev.id, 1, cal.id)
    );
    let changed = &seen[2].events[0];
    assert_eq!(
        (changed.event, changed.event_version),
        (ev.id, updated.version)
    );
    assert!(
        changed.calendar_version > created.calendar_version,
        "every event write bumps the calendar generation"
    );
    let stored: i64 = sqlx::query_scalar("SELECT version FROM calendars WHERE id = $1")
        .bind(cal.id.get())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, changed.calendar_version);
}

/// The change log keeps published rows for the retention and unpublished rows for ever; the
/// pruner deletes in batches of the size asked, oldest first.
#[tokio::test]
async fn pruning_the_change_log_keeps_unpublished_and_recent_rows() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone());
    // 5 old published rows, 2 old unpublished ones, 3 recent published ones.
    for (age_days, published) in [
        (10, true),
        (10, false),
        (9, true),
        (9, true),
        (8, true),
        (8, false),
        (8, true),
        (1, true),
        (0, true),
        (0, true),
    ] {
        cal_test_support::sql::insert_outbox_row(&db.pool, age_days, published).await;
    }
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    assert_eq!(store.prune_outbox(week, 2).await.unwrap(), 2, "a batch");
    assert_eq!(store.prune_outbox(week, 2).await.unwrap(), 2);
    assert_eq!(
        store.prune_outbox(week, 2).await.unwrap(),
        1,
        "the last old one"
    );
    assert_eq!(store.prune_outbox(week, 2).await.unwrap(), 0);
    let left: Vec<(bool, i32)> = sqlx::query_as(
        "SELECT published_at IS NOT NULL, extract(day FROM now() - created_at)::int FROM outbox ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![(false, 10), (false, 8), (true, 1), (true, 0), (true, 0)]
    );
    let (rows, oldest) = store.outbox_size().await.unwrap();
    assert_eq!(rows, 5);
    assert!(
        (oldest.as_secs_f64() / 86_400.0 - 10.0).abs() < 0.01,
        "the oldest row is 10 days old: {oldest:?}"
    );
}
