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
/// wherever it happens (see [`crate::pool`]), and a named constraint violation a client can cause
/// becomes [`StorageError::Invalid`] whichever statement raised it (a bare `?` included).
impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        crate::pool::note_if_lost(&e);
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
                // Not `e.into()`: that is this very function.
                _ => return StorageError::Database(e),
            };
            return StorageError::Invalid(msg.to_owned());
        }
        StorageError::Database(e)
    }
}

impl StorageError {
    pub(crate) fn is_overlap(e: &sqlx::Error) -> bool {
        e.as_database_error().and_then(|d| d.constraint()) == Some("reservations_no_overlap")
    }
}

#[cfg(test)]
mod tests {
    use super::StorageError;
    use sqlx::error::{DatabaseError, ErrorKind};
    use std::error::Error as StdError;

    /// A driver error as PostgreSQL reports a violation: naming its constraint, if any.
    #[derive(Debug)]
    struct Violation(Option<&'static str>);

    impl std::fmt::Display for Violation {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "violates {:?}", self.0)
        }
    }

    impl StdError for Violation {}

    impl DatabaseError for Violation {
        fn message(&self) -> &str {
            "constraint violation"
        }

        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }

        fn constraint(&self) -> Option<&str> {
            self.0
        }

        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn violation(constraint: Option<&'static str>) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Violation(constraint)))
    }

    /// What a bare `?` makes of a driver error, as in every store method.
    fn bare_question_mark(r: Result<(), sqlx::Error>) -> Result<(), StorageError> {
        r?;
        Ok(())
    }

    #[test]
    fn named_constraints_become_client_errors_through_a_bare_question_mark() {
        for (constraint, msg) in [
            ("attendees_pkey", "user is already an attendee"),
            ("reservations_resource_id_fkey", "unknown resource"),
            ("events_time_order", "endTime must be after startTime"),
            ("calendars_name_check", "name must be 1 to 200 characters"),
        ] {
            let e = bare_question_mark(Err(violation(Some(constraint)))).unwrap_err();
            assert!(
                matches!(&e, StorageError::Invalid(m) if m.as_str() == msg),
                "{constraint}: {e:?}"
            );
        }
    }

    #[test]
    fn other_driver_errors_stay_database_errors() {
        let overlap = violation(Some("reservations_no_overlap"));
        assert!(StorageError::is_overlap(&overlap));
        for e in [overlap, violation(None), sqlx::Error::RowNotFound] {
            let e = bare_question_mark(Err(e)).unwrap_err();
            assert!(matches!(&e, StorageError::Database(_)), "{e:?}");
        }
    }
}
