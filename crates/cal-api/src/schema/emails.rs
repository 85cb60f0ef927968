//! Who may see a user's email: the user, and anyone who is a member (any role) of a calendar the
//! user is also a member of. Everyone else reads `null`. User ids are sequential, so without this
//! rule any signed-in caller could walk `user(id:)` and harvest every address.
//!
//! The cached `User` fact still holds the email (it is viewer-independent, shared by every viewer
//! through L1 and L2); the decision is made here, at resolve time, for this request's viewer. It
//! is read from the database for every request that needs it, never cached: a membership change
//! then applies at once, and because the statement does not go through the cache tiers, an
//! answer that needed it is never kept in the whole-response cache either (see `http.rs`, step 5).
//!
//! The question is batched: every email field the request resolves for users other than the
//! viewer is one key of [`SharedCalendars`], so a page of events with a hundred attendees costs
//! one statement, and a request that shows no one else's email costs none.

use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::loaders::one;
use cal_domain::UserId;
use cal_storage::{StorageError, Store};
use dataloader::BatchFn;
use dataloader::cached::Loader;
use std::collections::HashMap;
use std::sync::Arc;

type Shares = Result<bool, Arc<StorageError>>;

/// Batch function: of the keys, which users share a calendar with `viewer` (one statement).
pub struct SharedCalendars {
    store: Store,
    viewer: UserId,
}

impl BatchFn<UserId, Shares> for SharedCalendars {
    async fn load(&mut self, keys: &[UserId]) -> HashMap<UserId, Shares> {
        match self
            .store
            .users_sharing_calendar_with(self.viewer, keys)
            .await
        {
            Ok(found) => {
                let found: foldhash::HashSet<UserId> = found.into_iter().collect();
                keys.iter().map(|k| (*k, Ok(found.contains(k)))).collect()
            }
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|k| (*k, Err(e.clone()))).collect()
            }
        }
    }
}

/// One request's email rule (one viewer).
pub struct EmailRule {
    viewer: Viewer,
    shares: Option<Loader<UserId, Shares, SharedCalendars>>,
}

impl EmailRule {
    /// `store` must not be cache-backed: its statement has to count as a read past the cache.
    pub fn new(viewer: Viewer, store: Store) -> Self {
        let shares = match viewer {
            Viewer::User(me) => Some(
                Loader::new(SharedCalendars { store, viewer: me }).with_max_batch_size(100_000),
            ),
            Viewer::Anonymous | Viewer::Invalid => None,
        };
        Self { viewer, shares }
    }

    /// Whether this request's viewer may see `user`'s email.
    /// Forgets every answer so far (see [`crate::loaders::Loaders::forget`]).
    pub async fn forget(&self) {
        if let Some(shares) = &self.shares {
            shares.clear_all().await;
        }
    }

    pub async fn visible(&self, user: UserId) -> ApiResult<bool> {
        match (&self.viewer, &self.shares) {
            (Viewer::User(me), _) if *me == user => Ok(true),
            (_, Some(shares)) => one(shares, user).await.map_err(ApiError::from),
            (_, None) => Ok(false),
        }
    }

    /// `email` when the viewer may see `user`'s, else `None`.
    pub async fn shown<'a>(&self, user: UserId, email: &'a str) -> ApiResult<Option<&'a str>> {
        Ok(self.visible(user).await?.then_some(email))
    }
}
