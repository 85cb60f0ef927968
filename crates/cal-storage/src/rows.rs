//! Row → domain mapping. Text columns with CHECK constraints become domain enums here.

use cal_domain::*;
use sqlx::Row;
use sqlx::postgres::PgRow;

fn corrupt(col: &str, e: DomainError) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: Box::new(e),
    }
}

pub(crate) const USER_COLS: &str = "id, email, name, avatar_url, time_zone, version";

pub(crate) fn user(r: &PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: UserId(r.try_get("id")?),
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        avatar_url: r.try_get("avatar_url")?,
        time_zone: r.try_get("time_zone")?,
        version: r.try_get("version")?,
    })
}

/// Calendar columns plus its members as two parallel arrays sorted by user id.
pub(crate) const CALENDAR_COLS: &str = "c.id, c.owner_id, c.name, c.description, c.time_zone, c.version, \
     c.created_at, c.updated_at, \
     coalesce(m.member_ids, '{}') AS member_ids, coalesce(m.member_roles, '{}') AS member_roles";
pub(crate) const CALENDAR_FROM: &str = "calendars c LEFT JOIN LATERAL ( \
     SELECT array_agg(user_id ORDER BY user_id) AS member_ids, array_agg(role ORDER BY user_id) AS member_roles \
     FROM calendar_members WHERE calendar_id = c.id) m ON true";

pub(crate) fn calendar(r: &PgRow) -> Result<Calendar, sqlx::Error> {
    let ids: Vec<i64> = r.try_get("member_ids")?;
    let roles: Vec<String> = r.try_get("member_roles")?;
    let members = ids
        .into_iter()
        .zip(roles)
        .map(|(id, role)| {
            Ok(Member {
                user_id: UserId(id),
                role: Role::parse(&role).map_err(|e| corrupt("role", e))?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Calendar {
        id: CalendarId(r.try_get("id")?),
        owner_id: UserId(r.try_get("owner_id")?),
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        time_zone: r.try_get("time_zone")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        members,
    })
}

pub(crate) const EVENT_COLS: &str = "id, calendar_id, organizer_id, title, description, location, start_time, end_time, \
     time_zone, all_day, status, transparency, rrule, exdates, recurring_event_id, original_start_time, version, \
     created_at, updated_at";

pub(crate) fn event(r: &PgRow) -> Result<Event, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let transparency: String = r.try_get("transparency")?;
    Ok(Event {
        id: EventId(r.try_get("id")?),
        calendar_id: CalendarId(r.try_get("calendar_id")?),
        organizer_id: UserId(r.try_get("organizer_id")?),
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        location: r.try_get("location")?,
        start_time: r.try_get("start_time")?,
        end_time: r.try_get("end_time")?,
        time_zone: r.try_get("time_zone")?,
        all_day: r.try_get("all_day")?,
        status: EventStatus::parse(&status).map_err(|e| corrupt("status", e))?,
        transparency: Transparency::parse(&transparency).map_err(|e| corrupt("transparency", e))?,
        rrule: r.try_get("rrule")?,
        exdates: r.try_get("exdates")?,
        recurring_event_id: r
            .try_get::<Option<i64>, _>("recurring_event_id")?
            .map(EventId),
        original_start_time: r.try_get("original_start_time")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(crate) const ATTENDEE_COLS: &str =
    "event_id, user_id, email, name, response_status, is_optional";

pub(crate) fn attendee(r: &PgRow) -> Result<Attendee, sqlx::Error> {
    let status: String = r.try_get("response_status")?;
    Ok(Attendee {
        event_id: EventId(r.try_get("event_id")?),
        user_id: UserId(r.try_get("user_id")?),
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        response_status: ResponseStatus::parse(&status)
            .map_err(|e| corrupt("response_status", e))?,
        is_optional: r.try_get("is_optional")?,
    })
}

pub(crate) const RESOURCE_COLS: &str = "id, name, kind, capacity, location, bookings_version";

pub(crate) fn resource(r: &PgRow) -> Result<Resource, sqlx::Error> {
    resource_named(r, ResourceId(r.try_get("id")?))
}

pub(crate) const RESERVATION_COLS: &str = "id, event_id, resource_id, start_time, end_time, status";

pub(crate) fn reservation(r: &PgRow) -> Result<Reservation, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(Reservation {
        id: ReservationId(r.try_get("id")?),
        event_id: EventId(r.try_get("event_id")?),
        resource_id: ResourceId(r.try_get("resource_id")?),
        start_time: r.try_get("start_time")?,
        end_time: r.try_get("end_time")?,
        status: ReservationStatus::parse(&status).map_err(|e| corrupt("status", e))?,
    })
}

/// A resource whose columns were joined into a reservation row (`name, kind, capacity, location`).
pub(crate) fn resource_named(r: &PgRow, id: ResourceId) -> Result<Resource, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(Resource {
        id,
        name: r.try_get("name")?,
        kind: ResourceKind::parse(&kind).map_err(|e| corrupt("kind", e))?,
        capacity: r.try_get("capacity")?,
        location: r.try_get("location")?,
        bookings_version: r.try_get("bookings_version")?,
    })
}
