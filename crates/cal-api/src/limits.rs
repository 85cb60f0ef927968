//! Depth and complexity limits. async-graphql computes both during validation; this extension
//! compares them with the configured maxima so the error carries `extensions.code =
//! QUERY_TOO_COMPLEX` (the built-in limits report a bare message).

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{ServerError, ValidationResult};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

pub(crate) fn too_complex(message: String) -> ServerError {
    let mut e = ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", "QUERY_TOO_COMPLEX");
    e.extensions = Some(ext);
    e
}

#[async_trait::async_trait]
impl Extension for Limits {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        if result.depth > self.max_depth {
            return Err(vec![too_complex(format!(
                "query depth {} exceeds the limit of {}",
                result.depth, self.max_depth
            ))]);
        }
        if result.complexity > self.max_complexity {
            return Err(vec![too_complex(format!(
                "query complexity {} exceeds the limit of {}",
                result.complexity, self.max_complexity
            ))]);
        }
        Ok(result)
    }
}
