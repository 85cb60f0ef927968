//! Row → domain mapping. Text columns with CHECK constraints become domain enums here.
//!
//! Columns are found by name, but once per result set ([`Cols::of`] on its first row), not for
//! every row: sqlx looks a name up in a hash map on each `try_get`, which was ~3% of a cold
//! month view's CPU. Enum columns are decoded as borrowed text and parsed, never copied.

use cal_domain::*;
use sqlx::postgres::PgRow;
use sqlx::{Column, Row};

pub(crate) fn corrupt(col: &str, e: DomainError) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: Box::new(e),
    }
}

/// Where a result set holds the columns a mapping reads, in the order of its name list.
pub(crate) struct Cols<const N: usize>([usize; N]);

impl<const N: usize> Cols<N> {
    pub fn of(row: &PgRow, names: &[&str; N]) -> Result<Self, sqlx::Error> {
        let mut at = [0; N];
        for (slot, name) in at.iter_mut().zip(names) {
            *slot = row.try_column(*name)?.ordinal();
        }
        Ok(Self(at))
    }

    /// The position of the `i`th column of the name list.
    pub fn at(&self, i: usize) -> usize {
        self.0[i]
    }

    pub fn get<'r, T>(&self, row: &'r PgRow, i: usize) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        row.try_get(self.0[i])
    }
}

/// Maps every row of a result set with one column lookup for all of them.
pub(crate) fn all<T, const N: usize>(
    rows: &[PgRow],
    names: &[&str; N],
    f: fn(&PgRow, &Cols<N>) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let cols = Cols::of(first, names)?;
    rows.iter().map(|r| f(r, &cols)).collect()
}

pub(crate) const USER_COLS: &str = "id, email, name, avatar_url, time_zone, version";

pub(crate) const USER: [&str; 6] = ["id", "email", "name", "avatar_url", "time_zone", "version"];

pub(crate) fn user(r: &PgRow) -> Result<User, sqlx::Error> {
    user_at(r, &Cols::of(r, &USER)?)
}

pub(crate) fn user_at(r: &PgRow, c: &Cols<6>) -> Result<User, sqlx::Error> {
    Ok(User {
        id: UserId::new(c.get(r, 0)?),
        email: c.get(r, 1)?,
        name: c.get(r, 2)?,
        avatar_url: c.get(r, 3)?,
        time_zone: c.get(r, 4)?,
        version: c.get(r, 5)?,
    })
}

/// Calendar columns plus its members as two parallel arrays sorted by user id.
pub(crate) const CALENDAR_COLS: &str = "c.id, c.owner_id, c.name, c.description, c.time_zone, c.version, \
     c.created_at, c.updated_at, \
     coalesce(m.member_ids, '{}') AS member_ids, coalesce(m.member_roles, '{}') AS member_roles";
pub(crate) const CALENDAR_FROM: &str = "calendars c LEFT JOIN LATERAL ( \
     SELECT array_agg(user_id ORDER BY user_id) AS member_ids, array_agg(role ORDER BY user_id) AS member_roles \
     FROM calendar_members WHERE calendar_id = c.id) m ON true";

pub(crate) const CALENDAR: [&str; 10] = [
    "id",
    "owner_id",
    "name",
    "description",
    "time_zone",
    "version",
    "created_at",
    "updated_at",
    "member_ids",
    "member_roles",
];

pub(crate) fn calendar(r: &PgRow) -> Result<Calendar, sqlx::Error> {
    calendar_at(r, &Cols::of(r, &CALENDAR)?)
}

pub(crate) fn calendar_at(r: &PgRow, c: &Cols<10>) -> Result<Calendar, sqlx::Error> {
    let ids: Vec<i64> = c.get(r, 8)?;
    let roles: Vec<String> = c.get(r, 9)?;
    let members = ids
        .into_iter()
        .zip(roles)
        .map(|(id, role)| {
            Ok(Member {
                user_id: UserId::new(id),
                role: Role::parse(&role).map_err(|e| corrupt("role", e))?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Calendar {
        id: CalendarId::new(c.get(r, 0)?),
        owner_id: UserId::new(c.get(r, 1)?),
        name: c.get(r, 2)?,
        description: c.get(r, 3)?,
        time_zone: c.get(r, 4)?,
        version: c.get(r, 5)?,
        created_at: c.get(r, 6)?,
        updated_at: c.get(r, 7)?,
        members,
    })
}

/// `cols` (a list like [`EVENT_COLS`]) with each column qualified by `table`: `t.a, t.b`.
pub(crate) fn qualified(table: &str, cols: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) const EVENT_COLS: &str = "id, calendar_id, organizer_id, title, description, location, start_time, end_time, \
     time_zone, all_day, status, transparency, rrule, exdates, recurring_event_id, original_start_time, version, \
     created_at, updated_at";

pub(crate) const EVENT: [&str; 19] = [
    "id",
    "calendar_id",
    "organizer_id",
    "title",
    "description",
    "location",
    "start_time",
    "end_time",
    "time_zone",
    "all_day",
    "status",
    "transparency",
    "rrule",
    "exdates",
    "recurring_event_id",
    "original_start_time",
    "version",
    "created_at",
    "updated_at",
];

pub(crate) fn event(r: &PgRow) -> Result<Event, sqlx::Error> {
    event_at(r, &Cols::of(r, &EVENT)?)
}

pub(crate) fn event_at(r: &PgRow, c: &Cols<19>) -> Result<Event, sqlx::Error> {
    let status: &str = c.get(r, 10)?;
    let transparency: &str = c.get(r, 11)?;
    Ok(Event {
        id: EventId::new(c.get(r, 0)?),
        calendar_id: CalendarId::new(c.get(r, 1)?),
        organizer_id: UserId::new(c.get(r, 2)?),
        title: c.get(r, 3)?,
        description: c.get(r, 4)?,
        location: c.get(r, 5)?,
        start_time: c.get(r, 6)?,
        end_time: c.get(r, 7)?,
        time_zone: c.get(r, 8)?,
        all_day: c.get(r, 9)?,
        status: EventStatus::parse(status).map_err(|e| corrupt("status", e))?,
        transparency: Transparency::parse(transparency).map_err(|e| corrupt("transparency", e))?,
        rrule: c.get(r, 12)?,
        exdates: c.get(r, 13)?,
        recurring_event_id: c.get::<Option<i64>>(r, 14)?.map(EventId::new),
        original_start_time: c.get(r, 15)?,
        version: c.get(r, 16)?,
        created_at: c.get(r, 17)?,
        updated_at: c.get(r, 18)?,
    })
}

pub(crate) const ATTENDEE_COLS: &str =
    "event_id, user_id, email, name, response_status, is_optional";

pub(crate) const ATTENDEE: [&str; 6] = [
    "event_id",
    "user_id",
    "email",
    "name",
    "response_status",
    "is_optional",
];

pub(crate) fn attendee(r: &PgRow) -> Result<Attendee, sqlx::Error> {
    attendee_at(r, &Cols::of(r, &ATTENDEE)?)
}

pub(crate) fn attendee_at(r: &PgRow, c: &Cols<6>) -> Result<Attendee, sqlx::Error> {
    let status: &str = c.get(r, 4)?;
    Ok(Attendee {
        event_id: EventId::new(c.get(r, 0)?),
        user_id: UserId::new(c.get(r, 1)?),
        email: c.get(r, 2)?,
        name: c.get(r, 3)?,
        response_status: ResponseStatus::parse(status)
            .map_err(|e| corrupt("response_status", e))?,
        is_optional: c.get(r, 5)?,
    })
}

pub(crate) const RESOURCE_COLS: &str = "id, name, kind, capacity, location, bookings_version";

pub(crate) fn resource(r: &PgRow) -> Result<Resource, sqlx::Error> {
    let id = ResourceId::new(r.try_get("id")?);
    resource_at(r, &Cols::of(r, &RESOURCE)?, id)
}

pub(crate) const RESERVATION_COLS: &str = "id, event_id, resource_id, start_time, end_time, status";

pub(crate) const RESERVATION: [&str; 6] = [
    "id",
    "event_id",
    "resource_id",
    "start_time",
    "end_time",
    "status",
];

pub(crate) fn reservation(r: &PgRow) -> Result<Reservation, sqlx::Error> {
    reservation_at(r, &Cols::of(r, &RESERVATION)?)
}

pub(crate) fn reservation_at(r: &PgRow, c: &Cols<6>) -> Result<Reservation, sqlx::Error> {
    let status: &str = c.get(r, 5)?;
    Ok(Reservation {
        id: ReservationId::new(c.get(r, 0)?),
        event_id: EventId::new(c.get(r, 1)?),
        resource_id: ResourceId::new(c.get(r, 2)?),
        start_time: c.get(r, 3)?,
        end_time: c.get(r, 4)?,
        status: ReservationStatus::parse(status).map_err(|e| corrupt("status", e))?,
    })
}

/// The columns of a resource besides its id (in a reservation row they are joined in).
pub(crate) const RESOURCE: [&str; 5] = ["name", "kind", "capacity", "location", "bookings_version"];

/// The resource `id` whose other columns ([`RESOURCE`]) are in `r`.
pub(crate) fn resource_at(r: &PgRow, c: &Cols<5>, id: ResourceId) -> Result<Resource, sqlx::Error> {
    let kind: &str = c.get(r, 1)?;
    Ok(Resource {
        id,
        name: c.get(r, 0)?,
        kind: ResourceKind::parse(kind).map_err(|e| corrupt("kind", e))?,
        capacity: c.get(r, 2)?,
        location: c.get(r, 3)?,
        bookings_version: c.get(r, 4)?,
    })
}
