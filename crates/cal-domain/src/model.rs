//! The facts the service stores and caches. They are independent of who is looking: authorization
//! is applied by the API after a fact is loaded, never baked into it.

use crate::{
    CalendarId, EventId, EventStatus, ReservationId, ReservationStatus, ResourceId, ResourceKind,
    ResponseStatus, Role, Transparency, UserId,
};
use chrono::{DateTime, Utc};
use get_size2::GetSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub avatar_url: Option<String>,
    pub time_zone: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Calendar {
    pub id: CalendarId,
    pub owner_id: UserId,
    pub name: String,
    pub description: Option<String>,
    pub time_zone: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every member with its role, sorted by user id. Small (people a calendar is shared with), and
    /// carrying it here lets one statement answer both "what is this calendar" and "may I see it".
    pub members: Vec<Member>,
}

impl Calendar {
    /// The role `user` holds on this calendar, if any.
    pub fn role_of(&self, user: UserId) -> Option<Role> {
        self.members
            .binary_search_by_key(&user, |m| m.user_id)
            .ok()
            .map(|i| self.members[i].role)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Event {
    pub id: EventId,
    pub calendar_id: CalendarId,
    pub organizer_id: UserId,
    pub title: String,
    pub description: Option<String>,
    pub location: Option<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub time_zone: String,
    pub all_day: bool,
    pub status: EventStatus,
    pub transparency: Transparency,
    pub rrule: Option<String>,
    pub exdates: Vec<DateTime<Utc>>,
    pub recurring_event_id: Option<EventId>,
    pub original_start_time: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AsRef<Event> for Event {
    fn as_ref(&self) -> &Event {
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Attendee {
    pub event_id: EventId,
    pub user_id: UserId,
    pub email: Option<String>,
    pub name: Option<String>,
    pub response_status: ResponseStatus,
    pub is_optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Resource {
    pub id: ResourceId,
    pub name: String,
    pub kind: ResourceKind,
    pub capacity: Option<i32>,
    pub location: Option<String>,
    /// Bumped by every change to the resource's reservations: the version of the cached resource
    /// and the generation of its cached availability.
    pub bookings_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, GetSize)]
pub struct Reservation {
    pub id: ReservationId,
    pub event_id: EventId,
    pub resource_id: ResourceId,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub status: ReservationStatus,
}
