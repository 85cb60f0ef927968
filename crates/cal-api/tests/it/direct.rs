//! Direct execution (`schema/direct.rs`) answers exactly what async-graphql answers: the same
//! bytes, for every field it serves, over single events, all-day events, series with overrides
//! and EXDATEs, reservations, attendees, several zones, aliases, fragments, variables with
//! defaults and paging; and it steps aside, with the same answer, for everything else.

use crate::common::*;
use cal_test_support::dates::{
    at, compact, iso, month_args, month_start_after, next_month_start, window_args, window_vars,
};
use chrono::{TimeZone, Utc};

struct Twins {
    direct: TestApp,
    graphql: TestApp,
    owner: User,
    reader: User,
    calendar: CalendarId,
}

const MUTATE: &str = "mutation($in: CreateEventInput!) { createEvent(input: $in) { id version } }";

async fn twins() -> Twins {
    let direct = TestApp::spawn().await;
    let graphql = direct
        .spawn_sibling(|c| c.direct_execution = false, |_| {})
        .await;
    let w = world(&direct, 12, 4).await;
    let reader = direct.user("Rita Reader").await;
    share(&direct, w.calendar, reader.id, Role::Reader).await;
    let cal = w.calendar.to_string();
    let room = w.rooms[1].id.to_string();
    let create = |input: Value| {
        let app = &direct;
        let owner = w.owner.id;
        async move {
            app.gql(Some(owner), MUTATE, json!({ "in": input }))
                .await
                .data()["createEvent"]
                .clone()
        }
    };
    // A weekly series in New York with a room, one occurrence moved and one deleted. It keeps
    // its New York time of day, so its occurrences are found through the zone's rules (all at
    // 14:00Z in November 2026), whatever DST change falls within its five weeks.
    let new_york = chrono_tz::America::New_York;
    let first = at(3, 14, 0);
    let local = first.with_timezone(&new_york).naive_local();
    let week = |n: i64| {
        new_york
            .from_local_datetime(&(local + chrono::Duration::weeks(n)))
            .single()
            .expect("a New York morning is never ambiguous")
            .with_timezone(&Utc)
    };
    let series = create(json!({ "calendarId": cal, "title": "Weekly \"sync\" \u{e9}",
        "description": "line one\nline two", "location": "Room\t1",
        "startTime": iso(first), "endTime": iso(first + chrono::Duration::hours(1)),
        "timeZone": "America/New_York", "rrule": "FREQ=WEEKLY;COUNT=5",
        "reservations": [{ "resourceId": room }],
        "attendees": [{ "userId": w.users[0].id.to_string() }, { "userId": reader.id.to_string(), "isOptional": true }] }))
    .await;
    let id = series["id"].as_str().unwrap().to_owned();
    let version = series["version"].as_i64().unwrap();
    let upd = "mutation($e: ID!, $v: Int!, $in: UpdateEventInput!) { updateEvent(id: $e, expectedVersion: $v, input: $in, scope: THIS) { version } }";
    let moved = direct
        .gql(
            Some(w.owner.id),
            upd,
            json!({ "e": format!("{id}_{}", compact(week(1))), "v": version,
            "in": { "title": "Moved", "startTime": iso(week(1) + chrono::Duration::hours(4)),
            "endTime": iso(week(1) + chrono::Duration::hours(5)) } }),
        )
        .await;
    let version = moved.data()["updateEvent"]["version"].as_i64().unwrap();
    direct
        .gql(
            Some(w.owner.id),
            "mutation($e: ID!, $v: Int) { deleteEvent(id: $e, expectedVersion: $v) }",
            json!({ "e": format!("{id}_{}", compact(week(2))), "v": version }),
        )
        .await
        .data();
    // An all-day event, a tentative free one, a cancelled one.
    create(
        json!({ "calendarId": cal, "title": "Offsite", "allDay": true,
        "startTime": iso(at(20, 0, 0)), "endTime": iso(at(22, 0, 0)), "timeZone": "Asia/Tokyo" }),
    )
    .await;
    create(
        json!({ "calendarId": cal, "title": "Maybe", "status": "TENTATIVE", "transparency": "FREE",
        "startTime": iso(at(25, 9, 30)), "endTime": iso(at(25, 10, 0)) }),
    )
    .await;
    create(
        json!({ "calendarId": cal, "title": "Off", "status": "CANCELLED",
        "startTime": iso(at(26, 9, 30)), "endTime": iso(at(26, 10, 0)) }),
    )
    .await;
    Twins {
        direct,
        graphql,
        owner: w.owner,
        reader,
        calendar: w.calendar,
    }
}

fn answered(metrics: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("cal_graphql_direct_executions_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The answer without its `extensions.cost` (the last member when present): the two paths read
/// the same rows with the same statements but may batch their loads differently.
fn without_cost(answer: &str) -> String {
    match answer.rfind(",\"extensions\":{\"cost\":") {
        Some(i) => format!("{}}}", &answer[..i]),
        None => answer.to_owned(),
    }
}

impl Twins {
    /// Runs `query` on both apps; asserts byte-equal answers and returns whether direct
    /// execution answered it.
    async fn same(&self, user: UserId, query: &str, variables: Value) -> bool {
        let body = json!({ "query": query, "variables": variables });
        let before = answered(&self.direct.metrics().await, "answered");
        let (sa, _, a) = self.direct.post_text(Some(user), &body).await;
        let after = answered(&self.direct.metrics().await, "answered");
        let (sb, _, b) = self.graphql.post_text(Some(user), &body).await;
        assert_eq!(sa, sb, "status for {query}");
        assert_eq!(
            without_cost(&a),
            without_cost(&b),
            "answers differ for {query} {variables}"
        );
        assert!(
            !a.contains("\"errors\""),
            "the comparison should be over data: {a}"
        );
        after > before
    }
}

const EVERY_FIELD: &str = r#"
query Every($c: ID!, $f: DateTime!, $t: DateTime!, $n: Int = 50, $tz: String) {
  __typename
  calendar(id: $c) {
    __typename id name description timeZone version myRole
    events(from: $f, to: $t, first: $n, timeZone: $tz) {
      __typename
      pageInfo { __typename hasPreviousPage hasNextPage startCursor endCursor }
      edges {
        __typename cursor
        node {
          __typename id title description location startTime endTime startDate endDate
          timeZone allDay status transparency rrule exdates recurringEventId
          originalStartTime isRecurring version createdAt updatedAt
          organizer { __typename id name avatarUrl timeZone }
          attendees { __typename name responseStatus isOptional user { id name avatarUrl timeZone } }
          reservations { __typename id eventId startTime endTime status
            resource { __typename id name kind capacity location } }
        }
      }
    }
  }
}"#;

#[tokio::test]
async fn every_served_field_is_byte_for_byte_what_async_graphql_answers() {
    let t = twins().await;
    let (f, to) = (iso(month_start()), iso(next_month_start()));
    let vars = |tz: Option<&str>| json!({ "c": t.calendar.to_string(), "f": f, "t": to, "tz": tz });
    assert!(
        t.same(t.owner.id, EVERY_FIELD, vars(None)).await,
        "direct answered"
    );
    assert!(
        t.same(t.owner.id, EVERY_FIELD, vars(Some("America/New_York")))
            .await
    );
    assert!(
        t.same(t.owner.id, EVERY_FIELD, vars(Some("Asia/Tokyo")))
            .await
    );
    // A reader sees the same details.
    assert!(
        t.same(t.reader.id, EVERY_FIELD, vars(Some("Europe/Berlin")))
            .await
    );
    // The month view contract itself.
    assert!(t.same(t.owner.id, MONTH_VIEW, month_vars(t.calendar)).await);
}

#[tokio::test]
async fn aliases_fragments_nodes_and_paging_are_served_too() {
    let t = twins().await;
    // The windows are written in the document, not in variables: the month, and the 15th to
    // the last day.
    let q = format!(
        r#"
fragment Who on User {{ id name }}
query Paged($c: ID!, $after: String) {{
  first: calendar(id: $c) {{
    label: name
    ... on Calendar {{ id }}
    page: events({}, first: 3, after: $after) {{
      pageInfo {{ endCursor hasNextPage hasPreviousPage }}
      nodes {{ id when: startTime organizer {{ ...Who }} }}
      edges {{ cursor node {{ ... {{ title }} attendees {{ user {{ ...Who }} }} }} }}
    }}
    rest: events({}) {{ nodes {{ id title }} }}
  }}
}}"#,
        month_args(),
        window_args(at(15, 0, 0), next_month_start() - chrono::Duration::days(1))
    );
    let cal = t.calendar.to_string();
    assert!(t.same(t.owner.id, &q, json!({ "c": cal })).await);
    // Follow the cursor twice.
    let (_, _, body) = t
        .direct
        .post_text(
            Some(t.owner.id),
            &json!({ "query": q, "variables": { "c": cal } }),
        )
        .await;
    let mut cursor: Value = serde_json::from_str::<Value>(&body).unwrap()["data"]["first"]["page"]
        ["pageInfo"]["endCursor"]
        .clone();
    for _ in 0..2 {
        assert!(
            t.same(t.owner.id, &q, json!({ "c": cal, "after": cursor }))
                .await
        );
        let (_, _, body) = t
            .direct
            .post_text(
                Some(t.owner.id),
                &json!({ "query": q, "variables": { "c": cal, "after": cursor } }),
            )
            .await;
        cursor = serde_json::from_str::<Value>(&body).unwrap()["data"]["first"]["page"]["pageInfo"]
            ["endCursor"]
            .clone();
    }
    // An empty window: the first day of the month after next.
    let empty = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ events({}) {{ pageInfo {{ startCursor endCursor }} edges {{ cursor }} }} }} }}",
        window_args(
            month_start_after(2),
            month_start_after(2) + chrono::Duration::days(1)
        )
    );
    assert!(t.same(t.owner.id, &empty, json!({ "c": cal })).await);
}

#[tokio::test]
async fn everything_else_falls_back_with_the_same_answer() {
    let t = twins().await;
    let cal = t.calendar.to_string();
    let unserved = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ events({}) {{ nodes {{ id canEdit myResponse calendar {{ id }} organizer {{ email }} }} }} }} }}",
        month_args()
    );
    let emails = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ events({}) {{ nodes {{ id attendees {{ email }} }} }} }} }}",
        month_args()
    );
    let fallbacks = [
        // Fields it does not serve.
        "query($c: ID!) { calendar(id: $c) { owner { id } members { role } } }",
        unserved.as_str(),
        // Emails, whose visibility is the resolvers' rule alone.
        emails.as_str(),
        "{ me { id name } }",
        // Directives.
        "query($c: ID!, $x: Boolean!) { calendar(id: $c) { id name @include(if: $x) } }",
        // The same key twice.
        "query($c: ID!) { calendar(id: $c) { id id } }",
    ];
    for q in fallbacks {
        let before = answered(&t.direct.metrics().await, "fallback");
        assert!(
            !t.same(t.owner.id, q, json!({ "c": cal, "x": true })).await,
            "{q}"
        );
        assert!(
            answered(&t.direct.metrics().await, "fallback") > before,
            "counted as a fallback: {q}"
        );
    }
}

#[tokio::test]
async fn errors_and_denials_are_async_graphqls() {
    let t = twins().await;
    let stranger = t.direct.user("Stan Stranger").await;
    let cal = t.calendar.to_string();
    let too_many = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ events({}, first: 1000) {{ nodes {{ id }} }} }} }}",
        month_args()
    );
    let cases = [
        (stranger.id, MONTH_VIEW, month_vars(t.calendar)),
        (
            t.owner.id,
            MONTH_VIEW,
            // A year: longer than a window may be.
            window_vars(t.calendar, month_start(), month_start_after(12)),
        ),
        (t.owner.id, too_many.as_str(), json!({ "c": cal })),
        (
            t.owner.id,
            "query($c: ID!) { calendar(id: $c) { id } }",
            json!({ "c": "abc" }),
        ),
    ];
    for (user, q, vars) in cases {
        let body = json!({ "query": q, "variables": vars });
        let (sa, _, a) = t.direct.post_text(Some(user), &body).await;
        let (sb, _, b) = t.graphql.post_text(Some(user), &body).await;
        assert_eq!((sa, without_cost(&a)), (sb, without_cost(&b)), "{q} {vars}");
        assert!(a.contains("\"errors\""), "{a}");
    }
}

#[tokio::test]
async fn a_direct_month_view_costs_the_same_statements() {
    let t = twins().await;
    let a = t
        .direct
        .gql(Some(t.owner.id), MONTH_VIEW, month_vars(t.calendar))
        .await;
    let b = t
        .graphql
        .gql(Some(t.owner.id), MONTH_VIEW, month_vars(t.calendar))
        .await;
    assert_eq!(a.sql_statements(), b.sql_statements());
    assert!(a.sql_statements() <= 5);
    assert_eq!(a.data(), b.data());
}
