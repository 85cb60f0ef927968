//! The GraphQL schema. Resolvers load facts through the per-request [`Loaders`](crate::loaders::Loaders)
//! and then decide what the viewer may see; no resolver issues SQL of its own except the window and
//! membership queries, which are one statement each.

mod access;
mod availability;
mod buckets;
pub use buckets::warm;
mod mutation;
mod query;
mod series;
mod spans;
mod types;

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use series::EditScope;

use crate::ApiConfig;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::loaders::{Loaders, Reach};
use crate::tiers::Tiers;
use async_graphql::{Context, EmptySubscription, Schema};
use cal_cache::RequestStats;
use cal_domain::UserId;
use cal_storage::Store;
use std::sync::Arc;

pub type AppSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Builds the schema. Request-scoped data ([`RequestCtx`]) is attached per request by the HTTP layer.
pub fn build_schema(config: Arc<ApiConfig>) -> AppSchema {
    let mut builder = Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .limit_recursive_depth(64)
        .data(config.clone());
    if !config.dev_mode {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// Everything one request's resolvers share: the viewer, its loaders and a statement-counting store.
pub struct RequestCtx {
    pub viewer: Viewer,
    pub store: Store,
    pub loaders: Loaders,
    pub config: Arc<ApiConfig>,
    pub tiers: Arc<Tiers>,
    /// This request's cache figures (hits per tier), reported with `x-debug-stats`.
    pub cache_stats: Arc<RequestStats>,
}

impl RequestCtx {
    pub fn new(
        viewer: Viewer,
        store: Store,
        config: Arc<ApiConfig>,
        tiers: Arc<Tiers>,
        cache_stats: Arc<RequestStats>,
    ) -> Self {
        let reach = Reach {
            store: store.cache_backed(),
            tiers: tiers.clone(),
            stats: cache_stats.clone(),
        };
        Self {
            viewer,
            loaders: Loaders::new(&reach),
            store,
            config,
            tiers,
            cache_stats,
        }
    }
}

pub(crate) fn rc<'a>(ctx: &Context<'a>) -> &'a RequestCtx {
    ctx.data_unchecked::<RequestCtx>()
}

/// The authenticated viewer, or UNAUTHENTICATED.
pub(crate) fn viewer(ctx: &Context<'_>) -> ApiResult<UserId> {
    match rc(ctx).viewer {
        Viewer::User(id) => Ok(id),
        Viewer::Anonymous | Viewer::Invalid => Err(ApiError::Unauthenticated),
    }
}
