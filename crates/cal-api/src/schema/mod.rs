//! The GraphQL schema. Resolvers load facts through the per-request [`Loaders`](crate::loaders::Loaders)
//! and then decide what the viewer may see; no resolver issues SQL of its own except the window and
//! membership queries, which are one statement each.

mod access;
mod availability;
mod buckets;
pub use buckets::warm;
mod direct;
mod emails;
mod mutation;
mod query;
mod range_slices;
mod series;
mod subscription;
mod sync;
mod types;

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use series::EditScope;
pub use subscription::{Connection, SubscriptionRoot, ViewerSubscriptions};

use crate::ApiConfig;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::loaders::{LoaderContext, Loaders};
use crate::tiers::Tiers;
use async_graphql::{Context, Schema};
use cal_cache::RequestStats;
use cal_domain::UserId;
use cal_storage::Store;
use std::sync::Arc;

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Builds the schema. Request-scoped data ([`RequestCtx`]) is attached per request by the HTTP layer.
pub fn build_schema(config: Arc<ApiConfig>) -> AppSchema {
    builder(&config).finish()
}

fn builder(
    config: &Arc<ApiConfig>,
) -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    let mut builder = Schema::build(QueryRoot, MutationRoot::default(), SubscriptionRoot)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .limit_recursive_depth(64)
        .limit_aliases(config.max_aliases)
        .data(config.clone());
    if !config.dev_mode {
        // Neither the schema nor "Did you mean …" hints for strangers.
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder
}

/// The same schema, limits and rules, but it only parses and validates: executing a request
/// answers `{"data": null}` without resolving anything (see [`Direct`]).
fn build_validator(config: &Arc<ApiConfig>) -> AppSchema {
    builder(config).extension(ValidateOnly).finish()
}

/// An extension that stops every request after validation.
struct ValidateOnly;

impl async_graphql::extensions::ExtensionFactory for ValidateOnly {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(ValidateOnly)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for ValidateOnly {
    async fn execute(
        &self,
        _ctx: &async_graphql::extensions::ExtensionContext<'_>,
        _operation_name: Option<&str>,
        _next: async_graphql::extensions::NextExecute<'_>,
    ) -> async_graphql::Response {
        async_graphql::Response::new(async_graphql::Value::Null)
    }
}

/// Direct execution of plain queries (see `direct.rs`): async-graphql validates the request,
/// then, if every field is one the direct executor serves, it writes the answer itself.
#[derive(Clone)]
pub struct Direct {
    validator: AppSchema,
}

impl Direct {
    pub fn new(config: &Arc<ApiConfig>) -> Self {
        Self {
            validator: build_validator(config),
        }
    }

    /// The response body (`{"data":…}`) of `req`, or `None` when the request is invalid or not
    /// one the direct executor serves (run it through async-graphql then).
    pub async fn execute(
        &self,
        r: &RequestCtx,
        doc: &async_graphql::parser::types::ExecutableDocument,
        req: &async_graphql::Request,
    ) -> Option<Vec<u8>> {
        let mut check =
            async_graphql::Request::new(req.query.clone()).variables(req.variables.clone());
        if let Some(op) = &req.operation_name {
            check = check.operation_name(op.clone());
        }
        check.set_parsed_query(doc.clone());
        if !self.validator.execute(check).await.errors.is_empty() {
            return None;
        }
        direct::execute(r, doc, req.operation_name.as_deref(), &req.variables)
            .await
            .ok()
    }
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
    /// Whose email this request's viewer may see (see `emails.rs`).
    pub(crate) emails: emails::EmailRule,
}

impl RequestCtx {
    pub fn new(
        viewer: Viewer,
        store: Store,
        config: Arc<ApiConfig>,
        tiers: Arc<Tiers>,
        cache_stats: Arc<RequestStats>,
    ) -> Self {
        let context = LoaderContext {
            store: store.cache_backed(),
            tiers: tiers.clone(),
            stats: cache_stats.clone(),
        };
        Self {
            viewer,
            loaders: Loaders::new(&context),
            emails: emails::EmailRule::new(viewer, store.clone()),
            store,
            config,
            tiers,
            cache_stats,
        }
    }
}

impl RequestCtx {
    /// Forgets everything loaded so far (a long-lived context, before each of its messages).
    pub(crate) async fn forget(&self) {
        self.loaders.forget().await;
        self.emails.forget().await;
    }

    /// The authenticated viewer, or UNAUTHENTICATED.
    pub(crate) fn viewer_id(&self) -> ApiResult<UserId> {
        match self.viewer {
            Viewer::User(id) => Ok(id),
            Viewer::Anonymous | Viewer::Invalid => Err(ApiError::Unauthenticated),
        }
    }

    /// A calendar together with the viewer's role on it; FORBIDDEN when the viewer holds none
    /// (also when the calendar does not exist).
    pub(crate) async fn calendar_with_role(
        &self,
        id: cal_domain::CalendarId,
    ) -> ApiResult<(Arc<cal_domain::Calendar>, cal_domain::Role)> {
        let me = self.viewer_id()?;
        let cal = crate::loaders::one(&self.loaders.calendars, id)
            .await?
            .ok_or(ApiError::Forbidden)?;
        let role = cal.role_of(me).ok_or(ApiError::Forbidden)?;
        Ok((cal, role))
    }
}

pub(crate) fn rc<'a>(ctx: &Context<'a>) -> &'a RequestCtx {
    ctx.data_unchecked::<Arc<RequestCtx>>()
}

/// The authenticated viewer, or UNAUTHENTICATED.
pub(crate) fn viewer(ctx: &Context<'_>) -> ApiResult<UserId> {
    rc(ctx).viewer_id()
}
