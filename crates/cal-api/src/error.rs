//! The API's error type. Every error a client sees carries a stable `extensions.code`; internal
//! failures are logged here with their detail and shown to the client as a bare
//! `INTERNAL_SERVER_ERROR`, never with SQL or driver text.

use async_graphql::ErrorExtensions;
use cal_domain::DomainError;
use cal_storage::StorageError;

///
/// Deliberately not `Display`: async-graphql converts any `Display` error into a GraphQL error
/// *without* extensions, which would silently drop the code. The only way out is [`From`] below.
#[derive(Debug, Clone)]
pub enum ApiError {
    BadInput(String),
    NotFound,
    Forbidden,
    Unauthenticated,
    VersionConflict {
        expected: i64,
        current: i64,
    },
    ResourceConflict {
        message: String,
        conflicts: Vec<cal_storage::Conflict>,
    },
    TooComplex(String),
    /// The request spent its budget of statements or rows ([`cal_storage::Budget`]).
    BudgetExceeded(String),
    /// A sync token older than the change log's retention: sync again without `since`.
    SyncTokenExpired,
    /// One subscription more than the connection or the viewer may hold.
    SubscriptionLimit(String),
    /// Logged with its detail; the client sees only "internal error".
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadInput(_) => "BAD_USER_INPUT",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::Unauthenticated => "UNAUTHENTICATED",
            ApiError::VersionConflict { .. } => "VERSION_CONFLICT",
            ApiError::ResourceConflict { .. } => "RESOURCE_CONFLICT",
            ApiError::TooComplex(_) => "QUERY_TOO_COMPLEX",
            ApiError::BudgetExceeded(_) => "BUDGET_EXCEEDED",
            ApiError::SyncTokenExpired => "SYNC_TOKEN_EXPIRED",
            ApiError::SubscriptionLimit(_) => "SUBSCRIPTION_LIMIT",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }

    /// The message shown to clients.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadInput(m)
            | ApiError::TooComplex(m)
            | ApiError::BudgetExceeded(m)
            | ApiError::SubscriptionLimit(m) => m.clone(),
            ApiError::NotFound => "not found".into(),
            ApiError::Forbidden => "forbidden".into(),
            ApiError::Unauthenticated => {
                "authentication required: send a valid `Authorization: Bearer <token>`".into()
            }
            ApiError::VersionConflict { expected, current } => {
                format!(
                    "version conflict: expected version {expected}, current version is {current}"
                )
            }
            ApiError::ResourceConflict { message, .. } => message.clone(),
            ApiError::SyncTokenExpired => "the sync token has expired (the change log no longer \
                holds everything after it): sync again without `since`"
                .into(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    pub fn bad_input(msg: impl Into<String>) -> Self {
        ApiError::BadInput(msg.into())
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::BadInput(e.0)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => ApiError::NotFound,
            StorageError::VersionConflict { expected, current } => {
                ApiError::VersionConflict { expected, current }
            }
            StorageError::Invalid(msg) => ApiError::BadInput(msg),
            StorageError::ResourceConflict(conflicts) => {
                let named: Vec<String> = conflicts
                    .iter()
                    .map(|c| {
                        format!(
                            "resource {} is booked by event {} from {} to {}",
                            c.resource_id,
                            c.event_id,
                            c.start_time.to_rfc3339(),
                            c.end_time.to_rfc3339()
                        )
                    })
                    .collect();
                let message = if named.is_empty() {
                    "the resource is already booked for that time".to_owned()
                } else {
                    named.join("; ")
                };
                ApiError::ResourceConflict { message, conflicts }
            }
            e @ StorageError::BudgetExceeded { .. } => ApiError::BudgetExceeded(e.to_string()),
            e @ StorageError::Database(_) => ApiError::Internal(chain(&e)),
        }
    }
}

impl From<std::sync::Arc<StorageError>> for ApiError {
    fn from(e: std::sync::Arc<StorageError>) -> Self {
        // Loader errors are shared between the keys of one batch: database errors, or the
        // request's budget running out.
        match &*e {
            StorageError::BudgetExceeded { .. } => ApiError::BudgetExceeded(e.to_string()),
            _ => ApiError::Internal(chain(&*e)),
        }
    }
}

/// `e` and every error under it (`source()`), outermost first, for the log: a driver error's
/// own text often stops short of the cause beneath it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        // Many wrappers already end their text with their cause's: say it once.
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error while resolving a request");
        }
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code());
            match self {
                ApiError::VersionConflict { expected, current } => {
                    ext.set("expectedVersion", *expected);
                    ext.set("currentVersion", *current);
                }
                ApiError::ResourceConflict { conflicts, .. } => {
                    let list: Vec<async_graphql::Value> = conflicts
                        .iter()
                        .map(|c| {
                            let mut m = async_graphql::indexmap::IndexMap::new();
                            m.insert(
                                async_graphql::Name::new("resourceId"),
                                c.resource_id.to_string().into(),
                            );
                            m.insert(
                                async_graphql::Name::new("eventId"),
                                c.event_id.to_string().into(),
                            );
                            m.insert(
                                async_graphql::Name::new("startTime"),
                                c.start_time.to_rfc3339().into(),
                            );
                            m.insert(
                                async_graphql::Name::new("endTime"),
                                c.end_time.to_rfc3339().into(),
                            );
                            async_graphql::Value::Object(m)
                        })
                        .collect();
                    ext.set("conflicts", async_graphql::Value::List(list));
                }
                _ => {}
            }
        })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.extend()
    }
}

/// Resolver result: errors convert into GraphQL errors with a code.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose text does not repeat its cause, as most wrappers' do not.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the TLS handshake failed")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn driver_error(cause: &str) -> cal_storage::DriverError {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, cause.to_owned());
        cal_storage::DriverError::Io(std::io::Error::other(Outer(inner)))
    }

    #[test]
    fn an_internal_error_keeps_its_source_chain_for_the_log() {
        let storage = StorageError::Database(driver_error("refused by peer"));
        let ApiError::Internal(detail) = ApiError::from(storage) else {
            panic!("a database error is internal");
        };
        assert!(
            detail.starts_with("database error: ") && detail.ends_with("refused by peer"),
            "the log line names every cause: {detail}"
        );
        let shared = std::sync::Arc::new(StorageError::Database(driver_error("the cause")));
        let ApiError::Internal(detail) = ApiError::from(shared) else {
            panic!("a shared database error is internal");
        };
        assert!(detail.ends_with("the cause"), "{detail}");
        // The client still sees nothing of it.
        assert_eq!(ApiError::Internal(detail).message(), "internal error");
    }
}
