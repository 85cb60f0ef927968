//! Calendar roles and what each allows. The API asks these questions; it never compares role names.

use crate::DomainError;
use serde::{Deserialize, Serialize};

/// A member's role on a calendar, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, get_size2::GetSize)]
pub enum Role {
    Owner,
    Writer,
    Reader,
    FreeBusy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::FreeBusy => "free_busy",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Ok(match s {
            "owner" => Role::Owner,
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            "free_busy" => Role::FreeBusy,
            other => return Err(DomainError(format!("unknown role {other:?}"))),
        })
    }

    /// Titles, attendees, rooms, members: everything but free/busy-only.
    pub fn can_read_details(self) -> bool {
        !matches!(self, Role::FreeBusy)
    }

    /// Create, change and delete events, book resources.
    pub fn can_write_events(self) -> bool {
        matches!(self, Role::Owner | Role::Writer)
    }

    /// Share and unshare the calendar.
    pub fn can_share(self) -> bool {
        matches!(self, Role::Owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_follow_role_strength() {
        use Role::*;
        let table = [
            // role, details, write, share
            (Owner, true, true, true),
            (Writer, true, true, false),
            (Reader, true, false, false),
            (FreeBusy, false, false, false),
        ];
        for (role, details, write, share) in table {
            assert_eq!(role.can_read_details(), details, "{role:?}");
            assert_eq!(role.can_write_events(), write, "{role:?}");
            assert_eq!(role.can_share(), share, "{role:?}");
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert!(Role::parse("admin").is_err());
    }
}
