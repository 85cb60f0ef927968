//! The one error of this crate: input that does not describe a valid value.

/// Input that could not be turned into a domain value. The message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(pub String);

impl DomainError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
