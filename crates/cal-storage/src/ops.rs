//! Statements of the binary's commands rather than of requests: connecting (and creating the
//! database on first start), the demo user, the load tests' fixtures.

use crate::{PgPool, StorageError, Store};
use cal_domain::{CalendarId, UserId};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use std::str::FromStr;

/// Why [`connect`] failed: the step, with the driver's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    Url(#[source] sqlx::Error),
    #[error("cannot create the database (connecting to the maintenance database `postgres`)")]
    CreateDatabase(#[source] StorageError),
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
}

/// The service's pool ([`crate::pool_options`]) on the database `url` names, creating that
/// database first when it does not exist. The binary calls this, so that it needs no sqlx of its
/// own.
///
/// sqlx's own statement logging is off: the store observes every statement itself (spans,
/// counters, slow statements by name, never parameters), and sqlx's logger summarised each
/// query's text on the hot path.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ConnectError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(ConnectError::Url)?
        .disable_statement_logging();
    create_database_if_missing(&options)
        .await
        .map_err(ConnectError::CreateDatabase)?;
    crate::pool_options(max_connections)
        .connect_with(options)
        .await
        .map_err(ConnectError::Connect)
}

/// Creates the database `options` names when it does not exist yet (connecting to the
/// maintenance database `postgres` to do so).
pub async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StorageError> {
    let Some(db) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if sqlx::PgConnection::connect_with(options).await.is_ok() {
        return Ok(());
    }
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin) // not a request statement
            .await?;
    if !exists {
        let quoted = db.replace('"', "\"\"");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\""))) // not a request statement
            .await?;
        tracing::info!(database = %db, "created database");
    }
    Ok(())
}

impl Store {
    /// The user with the lowest id, `None` in an empty database (the demo's user).
    pub async fn first_user(&self) -> Result<Option<UserId>, StorageError> {
        let st = self.statement("users.first")?;
        let id: Option<i64> = sqlx::query_scalar("SELECT min(id) FROM users")
            .fetch_one(self.pool())
            .await?;
        st.done(1);
        Ok(id.map(UserId::new))
    }

    /// Up to `n` calendars spread evenly over the id range, each with its owner (load-test
    /// fixtures).
    pub async fn spread_calendars(
        &self,
        n: i64,
    ) -> Result<Vec<(CalendarId, UserId)>, StorageError> {
        let st = self.statement("calendars.spread")?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, owner_id FROM (SELECT id, owner_id, row_number() OVER (ORDER BY id) AS rn, \
             count(*) OVER () AS total FROM calendars) c \
             WHERE (rn - 1) % greatest(total / $1, 1) = 0 ORDER BY id LIMIT $1",
        )
        .bind(n.max(1))
        .fetch_all(self.pool())
        .await?;
        st.done(rows.len());
        Ok(rows
            .into_iter()
            .map(|(c, u)| (CalendarId::new(c), UserId::new(u)))
            .collect())
    }
}
