//! Deterministic seed data for demos, tests and benchmarks: the same [`Scale`] and anchor month give
//! the same rows with the same ids, every time.
//!
//! All rows are generated in memory first (which is also how reservations are kept from overlapping:
//! each resource's booked intervals are tracked here, not discovered by constraint violations), then
//! bulk-inserted with `INSERT … SELECT … FROM unnest(…)` in chunks, in one transaction. Seeding writes
//! no outbox rows: nothing can have cached data that does not exist yet.

use crate::{StorageError, Store};
use cal_domain::{CalendarId, UserId};
use chrono::{
    DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, Postgres};
use std::collections::BTreeMap;
use std::ops::Range;
use std::str::FromStr;

/// Fixed, so that a seed is reproducible; changing it changes every seeded database.
const RNG_SEED: u64 = 0x00CA_1E4D_A75E_ED01;

/// Rows per `INSERT`: large enough that round trips do not matter, small enough that one statement's
/// arrays stay a few megabytes.
const CHUNK: usize = 10_000;

/// How much data to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// About 20 users and 4 calendars: enough to click through. Takes well under a second.
    Demo,
    /// 10,000 users, 200 calendars, ~12k events: enough that the planner prefers indexes (used by
    /// the EXPLAIN test). Takes a few seconds.
    Medium,
    /// 20,000 users, 2,000 calendars, ~300k events, ~2.5M attendees: the benchmark data set.
    Large,
}

/// A scale name that is not `demo`, `medium` or `large`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scale {0:?}: expected demo, medium or large")]
pub struct UnknownScale(pub String);

impl FromStr for Scale {
    type Err = UnknownScale;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "demo" => Ok(Scale::Demo),
            "medium" => Ok(Scale::Medium),
            "large" => Ok(Scale::Large),
            _ => Err(UnknownScale(s.to_owned())),
        }
    }
}

/// The numbers behind a scale.
struct Shape {
    users: usize,
    calendars: usize,
    rooms: usize,
    equipment: usize,
    /// Average events per calendar per month (each calendar-month varies by ±20%).
    events_per_month: usize,
    /// Inclusive range of attendees per event.
    attendees: (usize, usize),
    /// Inclusive range of members besides the owner.
    shared: (usize, usize),
    /// Share of events that try to book a resource (some find none free).
    reservation_share: f64,
}

impl Scale {
    fn shape(self) -> Shape {
        match self {
            Scale::Demo => Shape {
                users: 20,
                calendars: 4,
                rooms: 5,
                equipment: 0,
                events_per_month: 40,
                attendees: (2, 6),
                shared: (1, 2),
                reservation_share: 0.45,
            },
            Scale::Medium => Shape {
                // Many users for few calendars on purpose: what decides the free/busy plan is how
                // small a share of all attendance a handful of users make up, and with 2,000 users
                // 10 of them attend a large enough share of three months that a hash join over a
                // sequential scan of `events` wins (see `tests/it/explain.rs`).
                users: 10_000,
                calendars: 200,
                rooms: 45,
                equipment: 5,
                events_per_month: 20,
                attendees: (3, 8),
                shared: (2, 4),
                reservation_share: 0.42,
            },
            Scale::Large => Shape {
                users: 20_000,
                calendars: 2_000,
                rooms: 425,
                equipment: 75,
                events_per_month: 50,
                attendees: (5, 12),
                shared: (2, 5),
                reservation_share: 0.45,
            },
        }
    }
}

/// Reports how far seeding has got. `stage` starts a stage of `total` rows, `inc` advances it and
/// `finish` ends it; the binary draws these as progress bars.
pub trait Progress: Send + Sync {
    fn stage(&self, name: &str, total: u64);
    fn inc(&self, n: u64);
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}

/// What was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSummary {
    pub users: u64,
    pub calendars: u64,
    pub resources: u64,
    pub events: u64,
    pub attendees: u64,
    pub reservations: u64,
    /// "Demo User", owner of calendar 1 and member of calendars 2–4.
    pub demo_user_id: UserId,
    pub demo_calendar_id: CalendarId,
}

impl Store {
    /// Fills an empty database with generated data covering the month before `anchor`, the month of
    /// `anchor` and the month after (`anchor` is normalised to the first day of its month).
    ///
    /// Refuses with [`StorageError::Invalid`] unless the database has no users and no resources:
    /// seeded ids are fixed, and mixing them with existing rows would break determinism or collide.
    pub async fn seed(
        &self,
        scale: Scale,
        anchor: NaiveDate,
        progress: &dyn Progress,
    ) -> Result<SeedSummary, StorageError> {
        let mut tx = self.pool().begin().await?;
        let has_data: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM resources)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if has_data {
            return Err(StorageError::Invalid(
                "database already has data".to_owned(),
            ));
        }

        // Generating the large scale takes a second or two of CPU; that is acceptable for a one-off
        // command and keeps this crate free of a runtime dependency for spawn_blocking.
        let data = generate(scale.shape(), anchor);
        insert_all(&mut tx, &data, progress).await?;
        tx.commit().await?;

        // Fresh statistics, so that the first queries after seeding get the plans they will get in
        // steady state (autovacuum would get there too, but later).
        progress.stage("analyze", 1);
        sqlx::query("ANALYZE users, calendars, calendar_members, resources, events, attendees, reservations")
            .execute(self.pool())
            .await?;
        progress.inc(1);
        progress.finish();

        Ok(SeedSummary {
            users: data.users.id.len() as u64,
            calendars: data.calendars.id.len() as u64,
            resources: data.resources.id.len() as u64,
            events: data.events.id.len() as u64,
            attendees: data.attendees.event_id.len() as u64,
            reservations: data.reservations.id.len() as u64,
            demo_user_id: UserId::new(1),
            demo_calendar_id: CalendarId::new(1),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Generated rows, one column vector per table column (the shape `unnest` wants).

#[derive(Default)]
struct UserCols {
    id: Vec<i64>,
    email: Vec<String>,
    name: Vec<String>,
    avatar_url: Vec<String>,
    time_zone: Vec<String>,
}

#[derive(Default)]
struct CalendarCols {
    id: Vec<i64>,
    owner_id: Vec<i64>,
    name: Vec<String>,
    description: Vec<Option<String>>,
    time_zone: Vec<String>,
}

#[derive(Default)]
struct MemberCols {
    calendar_id: Vec<i64>,
    user_id: Vec<i64>,
    role: Vec<String>,
}

#[derive(Default)]
struct ResourceCols {
    id: Vec<i64>,
    name: Vec<String>,
    kind: Vec<String>,
    capacity: Vec<Option<i32>>,
    location: Vec<Option<String>>,
}

#[derive(Default)]
struct EventCols {
    id: Vec<i64>,
    calendar_id: Vec<i64>,
    organizer_id: Vec<i64>,
    title: Vec<String>,
    description: Vec<Option<String>>,
    location: Vec<Option<String>>,
    start_time: Vec<DateTime<Utc>>,
    end_time: Vec<DateTime<Utc>>,
    time_zone: Vec<String>,
    all_day: Vec<bool>,
    status: Vec<String>,
    transparency: Vec<String>,
}

#[derive(Default)]
struct AttendeeCols {
    event_id: Vec<i64>,
    user_id: Vec<i64>,
    response_status: Vec<String>,
    is_optional: Vec<bool>,
}

#[derive(Default)]
struct ReservationCols {
    id: Vec<i64>,
    event_id: Vec<i64>,
    resource_id: Vec<i64>,
    start_time: Vec<DateTime<Utc>>,
    end_time: Vec<DateTime<Utc>>,
}

struct Generated {
    /// `created_at`/`updated_at` of every row: fixed (not `now()`) so that two seeds are identical.
    created_at: DateTime<Utc>,
    users: UserCols,
    calendars: CalendarCols,
    members: MemberCols,
    resources: ResourceCols,
    events: EventCols,
    attendees: AttendeeCols,
    reservations: ReservationCols,
}

const FIRST_NAMES: &[&str] = &[
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Mateo", "Sofia", "Elias", "Amelia",
    "Leon", "Hannah", "Jonas", "Chloe", "Arjun", "Yuki", "Priya", "Kenji", "Fatima", "Omar",
    "Ingrid", "Lars", "Zoe", "Diego", "Lucia", "Tomasz", "Anna", "Mei", "Wei", "Aisha", "Kwame",
    "Nora", "Felix", "Clara", "Hugo", "Ines", "Rafael", "Sara", "David",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Garcia",
    "Muller",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Silva",
    "Kowalski",
    "Nowak",
    "Tanaka",
    "Suzuki",
    "Patel",
    "Sharma",
    "Chen",
    "Wang",
    "Kim",
    "Park",
    "Nguyen",
    "Hansen",
    "Larsen",
    "Jensen",
    "Brown",
    "Wilson",
    "Taylor",
    "Martin",
    "Lopez",
    "Fernandez",
    "Costa",
    "Okafor",
    "Mensah",
    "Haddad",
    "Novak",
    "Horvat",
    "Bauer",
    "Weber",
    "Fischer",
    "Moreau",
    "Laurent",
    "Ivanova",
];

const TIME_ZONES: &[&str] = &[
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
    "UTC",
];

const DEMO_CALENDARS: &[&str] = &["Team", "Marketing", "Engineering", "Sales"];

const TEAM_WORDS: &[&str] = &[
    "Platform",
    "Payments",
    "Growth",
    "Design",
    "Support",
    "Finance",
    "Legal",
    "Data",
    "Mobile",
    "Infrastructure",
    "Research",
    "Recruiting",
    "Security",
    "Operations",
    "Partnerships",
    "Onboarding",
];

const CALENDAR_KINDS: &[&str] = &["team", "meetings", "planning", "on-call", "events"];

const TITLES: &[&str] = &[
    "Weekly sync",
    "Daily standup",
    "Sprint planning",
    "Sprint review",
    "Retrospective",
    "Design review",
    "Architecture review",
    "1:1",
    "Customer call",
    "Interview",
    "Quarterly planning",
    "Budget review",
    "Incident review",
    "Product demo",
    "Roadmap discussion",
    "Hiring debrief",
    "Lunch and learn",
    "Onboarding session",
    "Vendor meeting",
    "Brainstorming",
    "Release readiness",
    "Board prep",
    "Team offsite planning",
    "Security training",
];

const AGENDAS: &[&str] = &[
    "Status updates, blockers, next steps.",
    "Walk through the proposal and collect feedback.",
    "Review last week's metrics.",
    "Decide on scope for the next iteration.",
    "Open questions from the previous meeting.",
];

const LOCATIONS: &[&str] = &[
    "Video call",
    "Video call",
    "Video call",
    "Cafeteria",
    "Phone",
    "Client office",
];

const ROOM_NAMES: &[&str] = &[
    "Aurora", "Borealis", "Cedar", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Iris",
    "Juniper", "Kestrel", "Lagoon", "Meridian", "Nimbus", "Orchid", "Pioneer", "Quartz", "Redwood",
    "Summit", "Tundra",
];

const BUILDINGS: &[&str] = &["HQ", "North", "Annex"];

const EQUIPMENT: &[&str] = &[
    "Projector",
    "Video kit",
    "Laptop cart",
    "Camera",
    "Microphone set",
];

const DURATIONS_MIN: &[i64] = &[30, 30, 45, 60, 60, 60, 90, 120];

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn between(rng: &mut ChaCha8Rng, (lo, hi): (usize, usize)) -> usize {
    rng.random_range(lo..=hi)
}

/// An event before ids are assigned (ids follow the final, shuffled order).
struct Draft {
    calendar: usize,
    organizer: i64,
    title: String,
    description: Option<String>,
    location: Option<String>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    all_day: bool,
    status: &'static str,
    transparency: &'static str,
    /// (user id, response status, optional)
    attendees: Vec<(i64, &'static str, bool)>,
    wants_resource: bool,
}

fn generate(shape: Shape, anchor: NaiveDate) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(RNG_SEED);
    let anchor = anchor.with_day(1).expect("day 1 exists in every month");
    let months = [
        anchor
            .checked_sub_months(Months::new(1))
            .expect("anchor is a sane date"),
        anchor,
        anchor
            .checked_add_months(Months::new(1))
            .expect("anchor is a sane date"),
    ];
    let created_at = Utc.from_utc_datetime(
        &months[0]
            .checked_sub_months(Months::new(1))
            .expect("anchor is a sane date")
            .and_hms_opt(0, 0, 0)
            .unwrap(),
    );

    // Users. User 1 is always the demo user, whatever the scale.
    let mut users = UserCols::default();
    let mut first_names = Vec::with_capacity(shape.users);
    for n in 1..=shape.users as i64 {
        let (first, last) = if n == 1 {
            ("Demo", "User")
        } else {
            (*pick(&mut rng, FIRST_NAMES), *pick(&mut rng, LAST_NAMES))
        };
        let tz = if n == 1 {
            "Europe/Berlin"
        } else {
            *pick(&mut rng, TIME_ZONES)
        };
        users.id.push(n);
        users.email.push(format!(
            "{}.{}.{n}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        ));
        users.name.push(format!("{first} {last}"));
        users
            .avatar_url
            .push(format!("https://avatars.example.com/{n}.png"));
        users.time_zone.push(tz.to_owned());
        first_names.push(first);
    }
    let user_count = shape.users as i64;

    // Calendars, each owned by a different user; a calendar's "team" is the block of users starting
    // at its owner, from which most attendees are drawn (people mostly meet the same colleagues).
    let stride = (shape.users / shape.calendars).max(1) as i64;
    let mut calendars = CalendarCols::default();
    let mut members = MemberCols::default();
    // Per calendar: members with write access besides the owner (possible organizers), and every
    // member (likely attendees).
    let mut writers: Vec<Vec<i64>> = Vec::with_capacity(shape.calendars);
    let mut everyone: Vec<Vec<i64>> = Vec::with_capacity(shape.calendars);
    let mut zones: Vec<Tz> = Vec::with_capacity(shape.calendars);
    for k in 0..shape.calendars {
        let id = k as i64 + 1;
        let owner = 1 + k as i64 * stride;
        let tz_name = users.time_zone[(owner - 1) as usize].clone();
        let name = match DEMO_CALENDARS.get(k) {
            Some(n) if shape.calendars <= DEMO_CALENDARS.len() || k == 0 => (*n).to_owned(),
            _ if rng.random_bool(0.4) => {
                format!("{}'s calendar", first_names[(owner - 1) as usize])
            }
            _ => format!(
                "{} {}",
                pick(&mut rng, TEAM_WORDS),
                pick(&mut rng, CALENDAR_KINDS)
            ),
        };
        let description = rng
            .random_bool(0.5)
            .then(|| format!("Shared calendar of {}.", name));
        calendars.id.push(id);
        calendars.owner_id.push(owner);
        calendars.name.push(name);
        calendars.description.push(description);
        calendars.time_zone.push(tz_name.clone());
        zones.push(tz_name.parse().expect("TIME_ZONES holds valid IANA names"));

        let mut roles: Vec<(i64, &'static str)> = vec![(owner, "owner")];
        // The demo user sees the first few other calendars with every kind of access.
        if (1..=3).contains(&k) {
            roles.push((1, ["writer", "reader", "free_busy"][k - 1]));
        }
        let shared = between(&mut rng, shape.shared);
        while roles.len() < 1 + shared + usize::from((1..=3).contains(&k)) {
            let user = rng.random_range(1..=user_count);
            if roles.iter().any(|(u, _)| *u == user) {
                continue;
            }
            let role = match rng.random_range(0..10) {
                0..=2 => "writer",
                3..=7 => "reader",
                _ => "free_busy",
            };
            roles.push((user, role));
        }
        roles.sort_unstable();
        for (user, role) in &roles {
            members.calendar_id.push(id);
            members.user_id.push(*user);
            members.role.push((*role).to_owned());
        }
        writers.push(
            roles
                .iter()
                .filter(|(_, r)| *r == "writer")
                .map(|(u, _)| *u)
                .collect(),
        );
        everyone.push(roles.iter().map(|(u, _)| *u).collect());
    }

    // Resources: rooms first, then equipment.
    let mut resources = ResourceCols::default();
    for i in 0..shape.rooms + shape.equipment {
        resources.id.push(i as i64 + 1);
        if i < shape.rooms {
            let building = pick(&mut rng, BUILDINGS);
            let floor = rng.random_range(1..=6);
            let suffix = if i < ROOM_NAMES.len() {
                String::new()
            } else {
                format!(" {}", i / ROOM_NAMES.len() + 1)
            };
            resources.name.push(format!(
                "{}{suffix} ({building} {floor}.{:02})",
                ROOM_NAMES[i % ROOM_NAMES.len()],
                i % 40
            ));
            resources.kind.push("room".to_owned());
            resources
                .capacity
                .push(Some(*pick(&mut rng, &[4, 6, 8, 8, 10, 12, 16, 20])));
            resources
                .location
                .push(Some(format!("{building}, floor {floor}")));
        } else {
            let n = i - shape.rooms;
            resources.name.push(format!(
                "{} {}",
                EQUIPMENT[n % EQUIPMENT.len()],
                n / EQUIPMENT.len() + 1
            ));
            resources.kind.push("equipment".to_owned());
            resources.capacity.push(None);
            resources.location.push(Some("HQ, IT desk".to_owned()));
        }
    }

    // Events, calendar by calendar and month by month, then shuffled so that ids (insertion order)
    // do not line up with calendars: real tables are written in creation order, and a month view
    // should not get an unrealistically compact heap to read.
    let mut drafts: Vec<Draft> = Vec::with_capacity(shape.calendars * shape.events_per_month * 3);
    for month in months {
        let weekdays: Vec<NaiveDate> = month
            .iter_days()
            .take_while(|d| d.month() == month.month())
            .filter(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
            .collect();
        for k in 0..shape.calendars {
            let lo = shape.events_per_month * 8 / 10;
            let hi = shape.events_per_month * 12 / 10;
            for _ in 0..rng.random_range(lo..=hi) {
                drafts.push(draft(
                    &mut rng,
                    &shape,
                    k,
                    zones[k],
                    &weekdays,
                    calendars.owner_id[k],
                    &writers[k],
                    &everyone[k],
                    stride,
                ));
            }
        }
    }
    drafts.shuffle(&mut rng);

    // Ids in final order; reservations allocated in that order ("first booked, first served"),
    // never overlapping another confirmed reservation of the same resource.
    let mut events = EventCols::default();
    let mut attendees = AttendeeCols::default();
    let mut reservations = ReservationCols::default();
    let mut booked: Vec<BTreeMap<i64, i64>> = vec![BTreeMap::new(); resources.id.len()];
    for (i, mut d) in drafts.into_iter().enumerate() {
        let id = i as i64 + 1;
        if d.wants_resource && !resources.id.is_empty() {
            let want_room = shape.equipment == 0 || rng.random_bool(0.9);
            let (lo, hi) = if want_room {
                (0, shape.rooms)
            } else {
                (shape.rooms, shape.rooms + shape.equipment)
            };
            let (s, e) = (d.start.timestamp(), d.end.timestamp());
            for _ in 0..8 {
                let r = rng.random_range(lo..hi);
                if want_room
                    && resources.capacity[r].is_some_and(|c| (c as usize) < d.attendees.len())
                {
                    continue;
                }
                let taken = booked[r]
                    .range(..e)
                    .next_back()
                    .is_some_and(|(_, end)| *end > s);
                if !taken {
                    booked[r].insert(s, e);
                    reservations.id.push(reservations.id.len() as i64 + 1);
                    reservations.event_id.push(id);
                    reservations.resource_id.push(r as i64 + 1);
                    reservations.start_time.push(d.start);
                    reservations.end_time.push(d.end);
                    if want_room {
                        d.location = Some(resources.name[r].clone());
                    }
                    break;
                }
            }
        }
        for (user, status, optional) in &d.attendees {
            attendees.event_id.push(id);
            attendees.user_id.push(*user);
            attendees.response_status.push((*status).to_owned());
            attendees.is_optional.push(*optional);
        }
        events.id.push(id);
        events.calendar_id.push(d.calendar as i64 + 1);
        events.organizer_id.push(d.organizer);
        events.title.push(d.title);
        events.description.push(d.description);
        events.location.push(d.location);
        events.start_time.push(d.start);
        events.end_time.push(d.end);
        events
            .time_zone
            .push(calendars.time_zone[d.calendar].clone());
        events.all_day.push(d.all_day);
        events.status.push(d.status.to_owned());
        events.transparency.push(d.transparency.to_owned());
    }

    Generated {
        created_at,
        users,
        calendars,
        members,
        resources,
        events,
        attendees,
        reservations,
    }
}

/// A local wall-clock time in `tz` as UTC. Business hours never fall in a DST gap, but all-day
/// events start at midnight, which does in a few zones; take the first valid instant after it.
fn local(tz: Tz, t: NaiveDateTime) -> DateTime<Utc> {
    (0..4)
        .find_map(|h| tz.from_local_datetime(&(t + Duration::hours(h))).earliest())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&t))
}

#[allow(clippy::too_many_arguments)]
fn draft(
    rng: &mut ChaCha8Rng,
    shape: &Shape,
    calendar: usize,
    tz: Tz,
    weekdays: &[NaiveDate],
    owner: i64,
    writers: &[i64],
    members: &[i64],
    stride: i64,
) -> Draft {
    let day = *pick(rng, weekdays);
    let all_day = rng.random_bool(0.03);
    let (start, end) = if all_day {
        let days = if rng.random_bool(0.8) {
            1
        } else {
            rng.random_range(2..=3)
        };
        // All-day events are dates: stored as UTC midnights, whatever the calendar's zone.
        let midnight = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        (midnight, midnight + Duration::days(days))
    } else {
        // 08:00 to 17:00 local, on the quarter hour.
        let minute = 8 * 60 + 15 * rng.random_range(0..=36);
        let start = day.and_hms_opt(0, 0, 0).unwrap() + Duration::minutes(minute);
        let len = *pick(rng, DURATIONS_MIN);
        (local(tz, start), local(tz, start + Duration::minutes(len)))
    };
    let organizer = if writers.is_empty() || rng.random_bool(0.75) {
        owner
    } else {
        *pick(rng, writers)
    };
    let status = match rng.random_range(0..100) {
        0..=92 => "confirmed",
        93..=96 => "tentative",
        _ => "cancelled",
    };
    let transparency = if (all_day && rng.random_bool(0.7)) || rng.random_bool(0.05) {
        "free"
    } else {
        "busy"
    };

    let users = shape.users as i64;
    let wanted = between(rng, shape.attendees).min(shape.users);
    let mut attendees: Vec<(i64, &'static str, bool)> = Vec::with_capacity(wanted);
    if rng.random_bool(0.85) {
        attendees.push((organizer, "accepted", false));
    }
    while attendees.len() < wanted {
        let user = match rng.random_range(0..100) {
            0..=54 => (owner + rng.random_range(0..stride.max(2))).min(users),
            55..=69 => *pick(rng, members),
            _ => rng.random_range(1..=users),
        };
        if attendees.iter().any(|(u, _, _)| *u == user) {
            continue;
        }
        let response = match rng.random_range(0..100) {
            0..=54 => "accepted",
            55..=64 => "tentative",
            65..=74 => "declined",
            _ => "needs_action",
        };
        attendees.push((user, response, rng.random_bool(0.1)));
    }

    let mut title = (*pick(rng, TITLES)).to_owned();
    if title == "1:1" {
        title = format!(
            "1:1 {}",
            if attendees.len() > 1 {
                "check-in"
            } else {
                "focus time"
            }
        );
    }
    Draft {
        calendar,
        organizer,
        title,
        description: rng
            .random_bool(0.4)
            .then(|| (*pick(rng, AGENDAS)).to_owned()),
        location: rng
            .random_bool(0.5)
            .then(|| (*pick(rng, LOCATIONS)).to_owned()),
        start,
        end,
        all_day,
        status,
        transparency,
        attendees,
        wants_resource: !all_day
            && status != "cancelled"
            && rng.random_bool(shape.reservation_share),
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk insert.

type Query = sqlx::query::Query<'static, Postgres, PgArguments>;

/// Inserts `len` rows in chunks of [`CHUNK`], one statement per chunk built by `build`.
async fn chunked(
    conn: &mut PgConnection,
    progress: &dyn Progress,
    stage: &str,
    len: usize,
    build: impl Fn(Range<usize>) -> Query,
) -> Result<(), StorageError> {
    progress.stage(stage, len as u64);
    let mut start = 0;
    while start < len {
        let end = (start + CHUNK).min(len);
        build(start..end).execute(&mut *conn).await?;
        progress.inc((end - start) as u64);
        start = end;
    }
    progress.finish();
    Ok(())
}

async fn insert_all(
    conn: &mut PgConnection,
    g: &Generated,
    progress: &dyn Progress,
) -> Result<(), StorageError> {
    let at = g.created_at;
    // Ids are given explicitly (OVERRIDING SYSTEM VALUE) rather than left to the identity sequences,
    // so that attendees and reservations can refer to events generated in memory, and so that ids do
    // not depend on what a sequence had handed out before.
    let u = &g.users;
    chunked(conn, progress, "users", u.id.len(), |r| {
        sqlx::query(
            "INSERT INTO users (id, email, name, avatar_url, time_zone, created_at, updated_at) OVERRIDING SYSTEM VALUE \
             SELECT x.*, $6, $6 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) AS x",
        )
        .bind(&u.id[r.clone()])
        .bind(&u.email[r.clone()])
        .bind(&u.name[r.clone()])
        .bind(&u.avatar_url[r.clone()])
        .bind(&u.time_zone[r])
        .bind(at)
    })
    .await?;

    let c = &g.calendars;
    chunked(conn, progress, "calendars", c.id.len(), |r| {
        sqlx::query(
            "INSERT INTO calendars (id, owner_id, name, description, time_zone, created_at, updated_at) \
             OVERRIDING SYSTEM VALUE \
             SELECT x.*, $6, $6 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) AS x",
        )
        .bind(&c.id[r.clone()])
        .bind(&c.owner_id[r.clone()])
        .bind(&c.name[r.clone()])
        .bind(&c.description[r.clone()])
        .bind(&c.time_zone[r])
        .bind(at)
    })
    .await?;

    let m = &g.members;
    chunked(
        conn,
        progress,
        "calendar members",
        m.calendar_id.len(),
        |r| {
            sqlx::query(
                "INSERT INTO calendar_members (calendar_id, user_id, role, created_at) \
             SELECT x.*, $4 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS x",
            )
            .bind(&m.calendar_id[r.clone()])
            .bind(&m.user_id[r.clone()])
            .bind(&m.role[r])
            .bind(at)
        },
    )
    .await?;

    let s = &g.resources;
    chunked(conn, progress, "resources", s.id.len(), |r| {
        sqlx::query(
            "INSERT INTO resources (id, name, kind, capacity, location, created_at) OVERRIDING SYSTEM VALUE \
             SELECT x.*, $6 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[]) AS x",
        )
        .bind(&s.id[r.clone()])
        .bind(&s.name[r.clone()])
        .bind(&s.kind[r.clone()])
        .bind(&s.capacity[r.clone()])
        .bind(&s.location[r])
        .bind(at)
    })
    .await?;

    let e = &g.events;
    chunked(conn, progress, "events", e.id.len(), |r| {
        sqlx::query(
            "INSERT INTO events (id, calendar_id, organizer_id, title, description, location, start_time, end_time, \
               time_zone, all_day, status, transparency, created_at, updated_at) OVERRIDING SYSTEM VALUE \
             SELECT x.*, $13, $13 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
               $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bool[], $11::text[], $12::text[]) AS x",
        )
        .bind(&e.id[r.clone()])
        .bind(&e.calendar_id[r.clone()])
        .bind(&e.organizer_id[r.clone()])
        .bind(&e.title[r.clone()])
        .bind(&e.description[r.clone()])
        .bind(&e.location[r.clone()])
        .bind(&e.start_time[r.clone()])
        .bind(&e.end_time[r.clone()])
        .bind(&e.time_zone[r.clone()])
        .bind(&e.all_day[r.clone()])
        .bind(&e.status[r.clone()])
        .bind(&e.transparency[r])
        .bind(at)
    })
    .await?;

    let a = &g.attendees;
    chunked(conn, progress, "attendees", a.event_id.len(), |r| {
        sqlx::query(
            "INSERT INTO attendees (event_id, user_id, response_status, is_optional, created_at, updated_at) \
             SELECT x.*, $5, $5 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bool[]) AS x",
        )
        .bind(&a.event_id[r.clone()])
        .bind(&a.user_id[r.clone()])
        .bind(&a.response_status[r.clone()])
        .bind(&a.is_optional[r])
        .bind(at)
    })
    .await?;

    let v = &g.reservations;
    chunked(conn, progress, "reservations", v.id.len(), |r| {
        sqlx::query(
            "INSERT INTO reservations (id, event_id, resource_id, start_time, end_time, created_at, updated_at) \
             OVERRIDING SYSTEM VALUE \
             SELECT x.*, $6, $6 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::timestamptz[], \
               $5::timestamptz[]) AS x",
        )
        .bind(&v.id[r.clone()])
        .bind(&v.event_id[r.clone()])
        .bind(&v.resource_id[r.clone()])
        .bind(&v.start_time[r.clone()])
        .bind(&v.end_time[r])
        .bind(at)
    })
    .await?;

    // The identity sequences must continue after the seeded ids, or the application's first insert
    // would collide with them.
    for table in ["users", "calendars", "resources", "events", "reservations"] {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} HAVING count(*) > 0"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
