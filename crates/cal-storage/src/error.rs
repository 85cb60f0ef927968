//! Storage errors. Constraint violations that a client can cause are mapped to typed variants by
//! constraint name; anything else stays an opaque database error that the API logs and hides.

use cal_domain::{EventId, ResourceId};

/// One existing confirmed reservation that a new one would overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub resource_id: ResourceId,
    pub event_id: EventId,
    pub start_time: chrono::DateTime<chrono::Utc>,
    pub end_time: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("version conflict: expected {expected}, current {current}")]
    VersionConflict { expected: i64, current: i64 },
    #[error("resource conflict with {} reservation(s)", .0.len())]
    ResourceConflict(Vec<Conflict>),
    /// A client-caused constraint violation; the message is safe to show.
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The request has spent its budget (see [`crate::Budget`]); nothing more was sent.
    #[error("the request exceeded its budget of {limit} {what}")]
    BudgetExceeded { what: &'static str, limit: u64 },
}

/// Every driver error the store passes on goes through here, so a lost connection is noticed
/// wherever it happens (see [`crate::pool`]).
impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        crate::pool::note_if_lost(&e);
        StorageError::Database(e)
    }
}

impl StorageError {
    /// Maps named constraint violations to client errors.
    pub(crate) fn from_db(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error()
            && let Some(constraint) = db.constraint()
        {
            let msg = match constraint {
                "attendees_user_id_fkey" | "calendar_members_user_id_fkey" => "unknown user",
                "reservations_resource_id_fkey" => "unknown resource",
                "attendees_pkey" => "user is already an attendee",
                "events_time_order" | "reservations_time_order" => {
                    "endTime must be after startTime"
                }
                "events_max_duration" => "an event may last at most 31 days",
                "events_title_check" => "title must be 1 to 500 characters",
                "calendars_name_check" => "name must be 1 to 200 characters",
                "events_description_check" | "calendars_description_check" => {
                    "description is too long"
                }
                "events_location_check" => "location is too long",
                "events_rrule_check" => "rrule is too long",
                _ => return e.into(),
            };
            return StorageError::Invalid(msg.to_owned());
        }
        e.into()
    }

    pub(crate) fn is_overlap(e: &sqlx::Error) -> bool {
        e.as_database_error().and_then(|d| d.constraint()) == Some("reservations_no_overlap")
    }
}
