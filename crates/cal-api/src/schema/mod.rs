//! The GraphQL schema. Resolvers load facts through the per-request [`Loaders`](crate::loaders::Loaders)
//! and then decide what the viewer may see; no resolver issues SQL of its own except the window and
//! membership queries, which are one statement each.

mod access;
mod mutation;
mod query;
mod series;
mod types;

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use series::EditScope;

use crate::ApiConfig;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::limits::Limits;
use crate::loaders::Loaders;
use async_graphql::{Context, EmptySubscription, Schema};
use cal_domain::UserId;
use cal_storage::Store;
use std::sync::Arc;

pub type AppSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Builds the schema. Request-scoped data ([`RequestCtx`]) is attached per request by the HTTP layer.
pub fn build_schema(config: Arc<ApiConfig>) -> AppSchema {
    let mut builder = Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .extension(Limits {
            max_depth: config.max_depth,
            max_complexity: config.max_complexity,
        })
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
}

impl RequestCtx {
    pub fn new(viewer: Viewer, store: Store, config: Arc<ApiConfig>) -> Self {
        let loaders = Loaders::new(&store);
        Self {
            viewer,
            store,
            loaders,
            config,
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
