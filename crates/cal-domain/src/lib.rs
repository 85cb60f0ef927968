//! Pure calendar types and policy: identifiers, roles and what they allow, time windows, time zones,
//! keyset cursors, busy-interval arithmetic, recurrence expansion and what an edit does to a series
//! ([`series_edit`]: patch the row, override an occurrence, patch or split the series).
//!
//! A tour of the modules:
//!
//! - [`ids`]: typed identifiers, including the occurrence ids that name an occurrence of a series
//!   by its series and original start;
//! - [`model`]: the facts the service stores and caches (users, calendars with their members,
//!   events, attendees, resources, reservations), independent of who is looking;
//! - [`role`]: calendar roles and what each allows;
//! - [`enums`]: the small closed sets stored as text and exposed as GraphQL enums;
//! - [`text`]: client-supplied text with a length limit (titles, descriptions, locations, calendar
//!   names), valid by construction;
//! - [`time`]: time windows and zones, the longest event;
//! - [`cursor`]: opaque keyset cursors for `Calendar.events`;
//! - [`busy`]: busy-interval arithmetic for free/busy and availability;
//! - [`recurrence`]: recurring series (`RRULE`), parsed and expanded over a window;
//! - [`instances`]: what a window shows: stored rows plus the series' occurrences, minus EXDATEs
//!   and overridden ones, in one keyset order;
//! - [`series_edit`]: which write an edit of a series takes;
//! - [`cache_keys`]: every cache key, its TTL, and which keys a change invalidates;
//! - [`error`]: [`DomainError`], input that does not describe a valid value.
//!
//! This crate does no I/O: no tokio, sqlx, redis or rdkafka. Everything here is a plain value that
//! the storage, cache and API layers share, and every `parse` returns a `Result` so that a value of
//! these types is valid by construction.

pub mod busy;
pub mod cache_keys;
pub mod cursor;
pub mod enums;
pub mod error;
pub mod ids;
pub mod instances;
pub mod model;
pub mod recurrence;
pub mod role;
pub mod series_edit;
pub mod text;
pub mod time;

pub use busy::{Interval, free_gaps, merge_intervals};
pub use cursor::EventCursor;
pub use enums::{EventStatus, ReservationStatus, ResourceKind, ResponseStatus, Transparency};
pub use error::DomainError;
pub use ids::{CalendarId, EventId, EventRef, InstanceId, ReservationId, ResourceId, UserId};
pub use model::{Attendee, Calendar, Event, Member, Reservation, Resource, User};
pub use recurrence::{Occurrence, RecurrenceRule};
pub use role::Role;
pub use text::{CalendarDescription, CalendarName, Description, Location, Title};
pub use time::{MAX_EVENT_DURATION, TimeWindow, check_event_times, parse_time_zone};
