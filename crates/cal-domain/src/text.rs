//! Client-supplied text with a length limit: event titles, descriptions and locations, calendar
//! names and descriptions. Each type can only be built through its `new`, which applies the limit
//! (the same one as the column's CHECK constraint in `migrations/`), so a value of these types is
//! valid by construction and a write never reaches the database with text it would refuse.
//!
//! Lengths are counted in characters (Unicode scalar values), as PostgreSQL's `length` counts them.
//! A required text (a title, a calendar name) must not be blank; its surrounding whitespace is
//! trimmed, after the length is checked on the text as given. An optional text (a description, a
//! location) is kept as given and may be empty.

use crate::DomainError;
use std::fmt;

/// Checks a required text: not blank and at most `max` characters as given; answers it trimmed.
fn required(field: &str, v: &str, max: usize) -> Result<String, DomainError> {
    if v.trim().is_empty() || v.chars().count() > max {
        return Err(DomainError(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(v.trim().to_owned())
}

/// Checks an optional text: at most `max` characters; answers it as given.
fn optional(field: &str, v: &str, max: usize) -> Result<String, DomainError> {
    if v.chars().count() > max {
        return Err(DomainError(format!(
            "{field} may be at most {max} characters"
        )));
    }
    Ok(v.to_owned())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $check:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The most characters a value may have.
            pub const MAX_CHARS: usize = $max;

            /// Checks client-supplied text against the limit (see [`crate::text`]).
            pub fn new(s: &str) -> Result<Self, DomainError> {
                $check($field, s, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_type!(/// An event's title: 1 to 500 characters, not blank, trimmed.
    Title, required, "title", 500);
text_type!(/// An event's description: at most 20,000 characters, kept as given.
    Description, optional, "description", 20_000);
text_type!(/// An event's location: at most 500 characters, kept as given.
    Location, optional, "location", 500);
text_type!(/// A calendar's name: 1 to 200 characters, not blank, trimmed.
    CalendarName, required, "name", 200);
text_type!(/// A calendar's description: at most 10,000 characters, kept as given.
    CalendarDescription, optional, "description", 10_000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_limit_and_trimming() {
        assert_eq!(Title::new(&"a".repeat(500)).unwrap().as_str().len(), 500);
        let err = Title::new(&"a".repeat(501)).unwrap_err();
        assert_eq!(err.0, "title must be 1 to 500 characters");
        assert_eq!(Title::new("  Standup \n").unwrap().as_str(), "Standup");
        // The limit applies to the text as given, before trimming.
        assert!(Title::new(&format!(" {} ", "a".repeat(499))).is_err());
        assert!(Title::new(&format!(" {}", "a".repeat(499))).is_ok());
        for blank in ["", " ", "\t\n "] {
            assert_eq!(
                Title::new(blank).unwrap_err().0,
                "title must be 1 to 500 characters"
            );
        }
        // Characters, not bytes.
        assert!(Title::new(&"é".repeat(500)).is_ok());
        assert!(Title::new(&"é".repeat(501)).is_err());
    }

    #[test]
    fn description_limit() {
        assert!(Description::new(&"a".repeat(20_000)).is_ok());
        let err = Description::new(&"a".repeat(20_001)).unwrap_err();
        assert_eq!(err.0, "description may be at most 20000 characters");
        // Kept as given: not trimmed, may be empty or blank.
        assert_eq!(Description::new(" x ").unwrap().as_str(), " x ");
        assert_eq!(Description::new("").unwrap().as_str(), "");
        assert_eq!(Description::new("  ").unwrap().as_str(), "  ");
        assert!(Description::new(&"ü".repeat(20_000)).is_ok());
    }

    #[test]
    fn location_limit() {
        assert!(Location::new(&"a".repeat(500)).is_ok());
        let err = Location::new(&"a".repeat(501)).unwrap_err();
        assert_eq!(err.0, "location may be at most 500 characters");
        assert_eq!(Location::new(" Room 1 ").unwrap().as_str(), " Room 1 ");
        assert_eq!(Location::new("").unwrap().as_str(), "");
    }

    #[test]
    fn calendar_name_limit_and_trimming() {
        assert!(CalendarName::new(&"a".repeat(200)).is_ok());
        let err = CalendarName::new(&"a".repeat(201)).unwrap_err();
        assert_eq!(err.0, "name must be 1 to 200 characters");
        assert_eq!(CalendarName::new(" Team ").unwrap().as_str(), "Team");
        for blank in ["", "   "] {
            assert_eq!(
                CalendarName::new(blank).unwrap_err().0,
                "name must be 1 to 200 characters"
            );
        }
    }

    #[test]
    fn calendar_description_limit() {
        assert!(CalendarDescription::new(&"a".repeat(10_000)).is_ok());
        let err = CalendarDescription::new(&"a".repeat(10_001)).unwrap_err();
        assert_eq!(err.0, "description may be at most 10000 characters");
        assert_eq!(CalendarDescription::new(" x").unwrap().as_str(), " x");
        assert_eq!(CalendarDescription::new("").unwrap().as_str(), "");
    }

    #[test]
    fn display_and_as_ref_show_the_text() {
        let t = Title::new(" Standup ").unwrap();
        assert_eq!(t.to_string(), "Standup");
        assert_eq!(AsRef::<str>::as_ref(&t), "Standup");
        assert_eq!(Title::MAX_CHARS, 500);
    }
}
