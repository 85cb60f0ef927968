//! Whose email a viewer sees: their own, and that of anyone sharing a calendar with them (both
//! members of one calendar, any role); everyone else's is `null`, on every path that shows a
//! user (`user(id)`, organizers, attendees and their users), however warm the caches are, and at
//! the cost of at most one extra statement per request.

use crate::common::*;

const USER: &str = "query($u: ID!) { user(id: $u) { id name email } }";

const EVENT: &str = "query($e: ID!) { event(id: $e) { organizer { id email } attendees { email user { id email } } } }";

/// The month view with every email field added.
const MONTH_WITH_EMAILS: &str = "query($calendarId: ID!, $from: DateTime!, $to: DateTime!) { calendar(id: $calendarId) { id events(from: $from, to: $to, first: 100) { edges { node { id organizer { id name email } attendees { email user { id name email } } } } } } }";

/// The owner and calendar of [`world`], a reader of it (shares a calendar with the owner but with
/// none of the invitees) and a stranger (shares nothing with anyone).
struct People {
    app: TestApp,
    w: World,
    reader: User,
    stranger: User,
}

async fn people(events: usize) -> People {
    let app = TestApp::spawn().await;
    let w = world(&app, events, 2).await;
    let reader = app.user("Rita Reader").await;
    let stranger = app.user("Sam Stranger").await;
    share(&app, w.calendar, reader.id, Role::Reader).await;
    People {
        app,
        w,
        reader,
        stranger,
    }
}

impl People {
    async fn email_of(&self, viewer: UserId, user: UserId) -> Gql {
        self.app
            .gql(Some(viewer), USER, json!({ "u": user.to_string() }))
            .await
    }
}

fn email(g: &Gql) -> Value {
    g.data()["user"]["email"].clone()
}

#[tokio::test]
async fn user_by_id_shows_the_email_to_the_user_and_co_members_only() {
    let p = people(3).await;
    let owner = &p.w.owner;
    assert_eq!(email(&p.email_of(owner.id, owner.id).await), owner.email);
    assert_eq!(email(&p.email_of(p.reader.id, owner.id).await), owner.email);
    assert_eq!(
        email(&p.email_of(owner.id, p.reader.id).await),
        p.reader.email
    );
    // The rest of the profile stays public; only the email is withheld, without an error.
    let denied = p.email_of(p.stranger.id, owner.id).await;
    assert_eq!(denied.data()["user"]["name"], owner.name);
    assert_eq!(email(&denied), Value::Null);
    // An invitee of the owner's events is not a member of the calendar: nobody shares one.
    let invitee = &p.w.users[0];
    assert_eq!(email(&p.email_of(owner.id, invitee.id).await), Value::Null);
    assert_eq!(email(&p.email_of(invitee.id, owner.id).await), Value::Null);
    // Any role counts, free_busy included, and on any calendar the two share.
    let other = p.app.calendar(p.stranger.id, "Stan's").await;
    share(&p.app, other, invitee.id, Role::FreeBusy).await;
    assert_eq!(
        email(&p.email_of(p.stranger.id, invitee.id).await),
        invitee.email
    );
    assert_eq!(
        email(&p.email_of(invitee.id, p.stranger.id).await),
        p.stranger.email
    );
    assert_eq!(
        email(&p.email_of(p.stranger.id, owner.id).await),
        Value::Null
    );
}

#[tokio::test]
async fn an_invitee_sees_no_other_email_through_the_event() {
    let p = people(3).await;
    // Event 0: organized by the owner, attendees users[0] and users[1], none of them members.
    let invitee = &p.w.users[0];
    let other = &p.w.users[1];
    let ev = p.w.events[0].id.to_string();
    let g = p.app.gql(Some(invitee.id), EVENT, json!({ "e": ev })).await;
    let event = &g.data()["event"];
    assert_eq!(event["organizer"]["id"], p.w.owner.id.to_string());
    assert_eq!(event["organizer"]["email"], Value::Null, "{}", g.0);
    let attendees = event["attendees"].as_array().unwrap();
    assert_eq!(attendees.len(), 2);
    for a in attendees {
        let (expected_user, expected) = if a["user"]["id"] == invitee.id.to_string() {
            (invitee.id, json!(invitee.email))
        } else {
            (other.id, Value::Null)
        };
        assert_eq!(a["user"]["id"], expected_user.to_string());
        assert_eq!(a["user"]["email"], expected, "{}", g.0);
        assert_eq!(a["email"], expected, "the invitation's copy too: {}", g.0);
    }
    // The owner (a member with the organizer, not with the invitees) sees their own only.
    let g = p
        .app
        .gql(Some(p.w.owner.id), EVENT, json!({ "e": ev }))
        .await;
    assert_eq!(g.data()["event"]["organizer"]["email"], p.w.owner.email);
    for a in g.data()["event"]["attendees"].as_array().unwrap() {
        assert_eq!(a["email"], Value::Null);
        assert_eq!(a["user"]["email"], Value::Null);
    }
}

#[tokio::test]
async fn a_warm_cache_shows_the_stranger_nothing_more() {
    let p = people(3).await;
    let owner = &p.w.owner;
    // The owner's profile (email included) is cached by the owner's and the reader's reads.
    assert_eq!(email(&p.email_of(owner.id, owner.id).await), owner.email);
    assert_eq!(email(&p.email_of(p.reader.id, owner.id).await), owner.email);
    for round in 0..3 {
        let g = p.email_of(p.stranger.id, owner.id).await;
        assert_eq!(email(&g), Value::Null, "round {round}: {}", g.0);
        let stats = &g.0["extensions"]["stats"];
        assert!(
            stats["l1Hits"].as_u64().unwrap() >= 1 || stats["responseCacheHit"] == true,
            "the profile came from the cache: {stats}"
        );
    }
    // The decision is the membership's now, not a cached one: shared, then unshared.
    share(&p.app, p.w.calendar, p.stranger.id, Role::Reader).await;
    assert_eq!(
        email(&p.email_of(p.stranger.id, owner.id).await),
        owner.email
    );
    p.app
        .store
        .unshare_calendar(p.w.calendar, p.stranger.id)
        .await
        .unwrap();
    assert_eq!(
        email(&p.email_of(p.stranger.id, owner.id).await),
        Value::Null
    );
}

/// Every email field of a month view, by user id.
fn month_emails(g: &Gql) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in g.data()["calendar"]["events"]["edges"].as_array().unwrap() {
        let node = &e["node"];
        out.push((
            node["organizer"]["id"].as_str().unwrap().to_owned(),
            node["organizer"]["email"].clone(),
        ));
        for a in node["attendees"].as_array().unwrap() {
            let id = a["user"]["id"].as_str().unwrap().to_owned();
            out.push((id.clone(), a["user"]["email"].clone()));
            out.push((id, a["email"].clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_month_view_shows_member_emails_only_for_one_statement_more() {
    let mut costs = Vec::new();
    for events in [4, 40] {
        let p = people(events).await;
        let vars = month_vars(p.w.calendar);
        // The plain month view and the one with emails, each cold on an app of its own.
        let plain = p.app.gql(Some(p.reader.id), MONTH_VIEW, vars.clone()).await;
        let cold_app = p.app.spawn_sibling(|_| {}, |_| {}).await;
        let cold = cold_app
            .gql(Some(p.reader.id), MONTH_WITH_EMAILS, vars.clone())
            .await;
        let warm = cold_app
            .gql(Some(p.reader.id), MONTH_WITH_EMAILS, vars.clone())
            .await;
        // The reader shares the calendar with the owner and with nobody else.
        let owner = p.w.owner.id.to_string();
        let shown = month_emails(&cold);
        assert!(shown.iter().any(|(id, _)| *id == owner));
        assert!(shown.iter().any(|(id, _)| *id != owner));
        for (id, e) in &shown {
            let expected = if *id == owner {
                json!(p.w.owner.email)
            } else {
                Value::Null
            };
            assert_eq!(*e, expected, "user {id}");
        }
        assert_eq!(month_emails(&warm), shown);
        costs.push((
            plain.sql_statements(),
            cold.sql_statements(),
            warm.sql_statements(),
        ));
    }
    // One batched question, whatever the number of events; never kept in a cached answer.
    for &(plain, cold, warm) in &costs {
        assert!(cold <= plain + 1, "{costs:?}");
        assert_eq!(warm, 1, "{costs:?}");
    }
    assert_eq!(costs[0].1, costs[1].1, "{costs:?}");
}
