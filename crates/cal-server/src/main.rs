//! `calendar`: the service binary. Subcommands:
//! - `serve`: create the database if missing, migrate, serve GraphQL until SIGTERM/ctrl-c (draining
//!   in-flight requests); `--demo` also seeds demo data into an empty database and prints a token;
//! - `migrate`: apply migrations;
//! - `seed`: write deterministic demo or large-scale data;
//! - `token`: mint a bearer token for a user (or fixtures for load tests);
//! - `purge`: drop cached copies of a calendar, event, user or resource (or of everything) on every
//!   instance and in Redis, through the change log;
//! - `print-schema`: print the GraphQL SDL (what `schema.graphql` holds).
//!
//! Configuration: see [`config`]; logs and traces: see [`telemetry`]. This is the only crate that
//! reads the environment or installs a global tracing subscriber.

mod config;
mod serve;

use anyhow::{Context, Result};
use cal_domain::UserId;
use cal_server::telemetry;
use clap::{Parser, Subcommand};
use config::Settings;
use std::path::PathBuf;

/// mimalloc instead of glibc's allocator: under a long-tail load that keeps replacing cache
/// entries, glibc's malloc fragmented and its free-list work (`malloc_consolidate`,
/// `_int_malloc`) grew to a third of the server's CPU, throughput falling from 309 to 101
/// requests/s within two minutes; with mimalloc it stays flat (docs/benchmarks.md, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "calendar", version, about = "Calendar GraphQL service")]
struct Cli {
    /// Optional TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "CALENDAR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the GraphQL API.
    Serve {
        /// Seed demo data if the database is empty, and print a dev token for the demo user.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations (creating the database if missing).
    Migrate,
    /// Write deterministic seed data into an empty database.
    Seed {
        /// `demo` (seconds) or `large` (20k users, 2k calendars, ~300k events).
        #[arg(long, default_value = "demo")]
        scale: cal_storage::seed::Scale,
        /// First day of the middle seeded month (default: this month).
        #[arg(long)]
        anchor: Option<chrono::NaiveDate>,
    },
    /// Mint bearer tokens.
    Token {
        /// Mint a token for this user id (also accepted as `--user-id N`).
        #[arg(value_name = "USER_ID", conflicts_with_all = ["calendar_owners", "user_id"])]
        user: Option<i64>,
        /// Mint a token for this user id.
        #[arg(long, conflicts_with = "calendar_owners")]
        user_id: Option<i64>,
        /// Print a JSON array of {calendarId, userId, token} for N calendars (load-test fixtures).
        #[arg(long)]
        calendar_owners: Option<i64>,
        /// Token lifetime in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: i64,
    },
    /// Drop cached copies on every instance and in Redis, through the change log (a purge is
    /// a change-log row: the instances' relays tombstone Redis and publish it like any write).
    #[command(group(clap::ArgGroup::new("scope").required(true)))]
    Purge {
        /// A calendar: its summary, its month views and every event in it.
        #[arg(long, group = "scope")]
        calendar: Option<i64>,
        /// An event (a series with its overrides).
        #[arg(long, group = "scope")]
        event: Option<i64>,
        /// A user's profile.
        #[arg(long, group = "scope")]
        user: Option<i64>,
        /// A resource and its availability.
        #[arg(long, group = "scope")]
        resource: Option<i64>,
        /// Every cached value.
        #[arg(long, group = "scope")]
        all: bool,
    },
    /// Print the GraphQL schema (SDL).
    PrintSchema,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(serve::REQUEST_THREAD_STACK)
        .build()?;
    // Logs and traces; the trace exporter needs the runtime, and is flushed before it goes.
    let telemetry = if matches!(
        cli.cmd,
        Cmd::PrintSchema | Cmd::Token { .. } | Cmd::Purge { .. }
    ) {
        None
    } else {
        let _runtime = rt.enter();
        Some(telemetry::init(telemetry::TelemetryConfig::from_env(
            !settings.dev_mode(),
        ))?)
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { demo } => serve::serve(settings, demo).await,
            Cmd::Migrate => {
                serve::connect_and_migrate(&settings).await?;
                eprintln!("migrations applied");
                Ok(())
            }
            Cmd::Seed { scale, anchor } => {
                let store = serve::connect_and_migrate(&settings).await?;
                serve::seed(&store, scale, anchor).await.map(|_| ())
            }
            Cmd::Token {
                user,
                user_id,
                calendar_owners,
                ttl_hours,
            } => {
                let user_id = user.or(user_id);
                let secret = settings.secret()?;
                let ttl = chrono::Duration::hours(ttl_hours);
                match (user_id, calendar_owners) {
                    (Some(id), _) => {
                        let id =
                            UserId::parse(&id.to_string()).context("--user-id must be positive")?;
                        println!("{}", cal_api::auth::mint(&secret, id, ttl));
                        Ok(())
                    }
                    (None, Some(n)) => serve::print_fixtures(&settings, &secret, n, ttl).await,
                    (None, None) => {
                        anyhow::bail!("give a user id (`calendar token 1`) or --calendar-owners N")
                    }
                }
            }
            Cmd::Purge {
                calendar,
                event,
                user,
                resource,
                all,
            } => {
                let scope =
                    cal_storage::PurgeScope::named(calendar, event, user, resource, all)
                        .map_err(anyhow::Error::msg)?;
                let store = serve::connect_and_migrate(&settings).await?;
                let purged = store
                    .purge(scope)
                    .await
                    .with_context(|| format!("purging {scope:?}"))?;
                println!(
                    "{}",
                    serde_json::json!({ "outboxId": purged.outbox_id, "facts": purged.facts })
                );
                eprintln!(
                    "purge recorded as change-log row {}; every instance's relay publishes it within its grace period",
                    purged.outbox_id
                );
                Ok(())
            }
            Cmd::PrintSchema => {
                let config = cal_api::ApiConfig::new(config::DEV_JWT_SECRET);
                print!(
                    "{}",
                    cal_api::build_schema(std::sync::Arc::new(config)).sdl()
                );
                Ok(())
            }
        }
    });
    if let Some(t) = telemetry {
        t.shutdown();
    }
    result
}
