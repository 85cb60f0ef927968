//! The seed is deterministic, refuses a database that has data, and gives the demo user what the
//! demo promises (calendar 1 owned, events in the anchor month).

use cal_storage::{NoProgress, Scale, StorageError, Store};
use cal_test_support::{TestDb, dates};
use chrono::{Months, NaiveDate};

/// The fixtures' month, the one every other test's data live in.
fn anchor() -> NaiveDate {
    dates::ANCHOR
}

/// Row counts of every seeded table, and an md5 of the contents of each (ordered by key), so two
/// databases can be compared in one assertion.
async fn fingerprint(store: &Store) -> Vec<(String, i64, String)> {
    let tables = [
        ("users", "id", "u"),
        ("calendars", "id", "u"),
        ("calendar_members", "calendar_id, user_id", "u"),
        ("resources", "id", "u"),
        ("events", "id", "u"),
        ("attendees", "event_id, user_id", "u"),
        ("reservations", "id", "u"),
    ];
    let mut out = Vec::new();
    for (table, key, alias) in tables {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg({alias}::text, '|' ORDER BY {key})), '') FROM {table} {alias}"
        );
        let (n, md5): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(store.pool())
            .await
            .unwrap();
        out.push((table.to_owned(), n, md5));
    }
    out
}

#[tokio::test]
async fn demo_seed_is_deterministic_and_refuses_a_second_run() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let (sa, sb) = (Store::new(a.pool.clone()), Store::new(b.pool.clone()));

    let started = std::time::Instant::now();
    let summary = sa.seed(Scale::Demo, anchor(), &NoProgress).await.unwrap();
    eprintln!("demo seed: {:?} in {:?}", summary, started.elapsed());
    let again = sb.seed(Scale::Demo, anchor(), &NoProgress).await.unwrap();
    assert_eq!(summary, again);

    let (fa, fb) = (fingerprint(&sa).await, fingerprint(&sb).await);
    assert_eq!(fa, fb, "two demo seeds differ");
    let count = |t: &str| fa.iter().find(|(n, _, _)| n == t).unwrap().1 as u64;
    assert_eq!(count("users"), summary.users);
    assert_eq!(count("events"), summary.events);
    assert_eq!(count("attendees"), summary.attendees);
    assert_eq!(count("reservations"), summary.reservations);
    assert_eq!(
        (summary.users, summary.calendars, summary.resources),
        (20, 4, 5)
    );
    assert!(summary.events > 300, "{summary:?}");
    assert!(summary.reservations > summary.events / 4, "{summary:?}");

    // Demo user 1 owns calendar 1 and is a member of the others.
    let owner: i64 = sqlx::query_scalar("SELECT owner_id FROM calendars WHERE id = 1")
        .fetch_one(sa.pool())
        .await
        .unwrap();
    assert_eq!(owner, summary.demo_user_id.get());
    let roles: Vec<(i64, String)> = sqlx::query_as(
        "SELECT calendar_id, role FROM calendar_members WHERE user_id = 1 ORDER BY calendar_id",
    )
    .fetch_all(sa.pool())
    .await
    .unwrap();
    let roles: Vec<(i64, &str)> = roles.iter().map(|(c, r)| (*c, r.as_str())).collect();
    assert_eq!(
        roles,
        [(1, "owner"), (2, "writer"), (3, "reader"), (4, "free_busy")]
    );
    let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = 1")
        .fetch_one(sa.pool())
        .await
        .unwrap();
    assert_eq!(name, "Demo User");

    // Events in the anchor month (and in the months either side).
    let per_month: Vec<(String, i64)> = sqlx::query_as(
        "SELECT to_char(date_trunc('month', start_time AT TIME ZONE 'UTC'), 'YYYY-MM'), count(*) \
         FROM events WHERE calendar_id = 1 GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(sa.pool())
    .await
    .unwrap();
    let months: Vec<&str> = per_month.iter().map(|(m, _)| m.as_str()).collect();
    let month = |d: Option<NaiveDate>| d.unwrap().format("%Y-%m").to_string();
    let (before, during, after) = (
        month(anchor().checked_sub_months(Months::new(1))),
        month(Some(anchor())),
        month(anchor().checked_add_months(Months::new(1))),
    );
    assert!(
        months.contains(&before.as_str())
            && months.contains(&during.as_str())
            && months.contains(&after.as_str()),
        "{per_month:?}"
    );
    assert!(
        per_month.iter().find(|(m, _)| *m == during).unwrap().1 >= 30,
        "{per_month:?}"
    );

    // The sequences continue after the seeded ids.
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, name) VALUES ('new@example.com', 'New') RETURNING id",
    )
    .fetch_one(sa.pool())
    .await
    .unwrap();
    assert_eq!(next, summary.users as i64 + 1);

    // A second seed into a database with data is refused and changes nothing.
    let err = sb
        .seed(Scale::Demo, anchor(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::Invalid(m) if m == "database already has data"),
        "{err:?}"
    );
    assert_eq!(fingerprint(&sb).await, fb);
}

#[tokio::test]
async fn reservations_never_overlap_and_attendees_are_distinct() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone());
    let started = std::time::Instant::now();
    let summary = store
        .seed(Scale::Medium, anchor(), &NoProgress)
        .await
        .unwrap();
    eprintln!("medium seed: {summary:?} in {:?}", started.elapsed());
    // The exclusion constraint would have rejected an overlap; check the shape of the data instead.
    let (events, with_res): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM reservations r WHERE r.event_id = e.id)) FROM events e",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let share = with_res as f64 / events as f64;
    assert!(
        (0.3..0.5).contains(&share),
        "{with_res} of {events} events have a reservation"
    );
    let bad_attendee_counts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT event_id, count(*) n FROM attendees GROUP BY 1) t WHERE n < 3 OR n > 8",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(bad_attendee_counts, 0);
    let zero: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(zero, 0, "seeding writes no outbox rows");
}
