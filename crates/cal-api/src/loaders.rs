//! Per-request DataLoaders. A fresh [`Loaders`] is built for every HTTP request (one viewer), so a
//! loader's memo never outlives a request or crosses viewers. Each batch is exactly one storage
//! call, hence one SQL statement with an array parameter.
//!
//! Values are viewer-independent facts; resolvers authorize after loading.

use cal_domain::*;
use cal_storage::{StorageError, Store, VersionedList};
use dataloader::BatchFn;
use dataloader::cached::Loader;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// What a by-id loader yields: the fact, `None` when it does not exist, or the batch's shared error.
pub type Loaded<T> = Result<Option<Arc<T>>, Arc<StorageError>>;
/// What a grouped loader yields: every row belonging to the key.
pub type LoadedList<T> = Result<Arc<Vec<T>>, Arc<StorageError>>;

type Fetch<K, T> = for<'a> fn(&'a Store, &'a [K]) -> BoxFuture<'a, Result<Vec<T>, StorageError>>;

/// Batch function for "one row per id".
pub struct ById<K, T> {
    store: Store,
    fetch: Fetch<K, T>,
    key: fn(&T) -> K,
}

impl<K: Eq + Hash + Clone + Send + Sync, T: Send + Sync> BatchFn<K, Loaded<T>> for ById<K, T> {
    async fn load(&mut self, keys: &[K]) -> HashMap<K, Loaded<T>> {
        match (self.fetch)(&self.store, keys).await {
            Ok(rows) => {
                let mut out: HashMap<K, Loaded<T>> =
                    keys.iter().map(|k| (k.clone(), Ok(None))).collect();
                for row in rows {
                    out.insert((self.key)(&row), Ok(Some(Arc::new(row))));
                }
                out
            }
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|k| (k.clone(), Err(e.clone()))).collect()
            }
        }
    }
}

type FetchLists<T> = for<'a> fn(
    &'a Store,
    &'a [EventId],
) -> BoxFuture<'a, Result<Vec<VersionedList<T>>, StorageError>>;

/// Batch function for "all rows belonging to an event" (attendees, reservations).
pub struct Grouped<T> {
    store: Store,
    fetch: FetchLists<T>,
}

impl<T: Send + Sync> BatchFn<EventId, LoadedList<T>> for Grouped<T> {
    async fn load(&mut self, keys: &[EventId]) -> HashMap<EventId, LoadedList<T>> {
        match (self.fetch)(&self.store, keys).await {
            Ok(lists) => {
                let mut groups: HashMap<EventId, LoadedList<T>> = keys
                    .iter()
                    .map(|k| (*k, Ok(Arc::new(Vec::new()))))
                    .collect();
                for list in lists {
                    groups.insert(list.event, Ok(Arc::new(list.items)));
                }
                groups
            }
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|k| (*k, Err(e.clone()))).collect()
            }
        }
    }
}

/// A reservation together with the resource it books.
pub type Booking = (Reservation, Resource);

pub type ByIdLoader<K, T> = Loader<K, Loaded<T>, ById<K, T>>;
pub type GroupedLoader<T> = Loader<EventId, LoadedList<T>, Grouped<T>>;

/// The loaders of one request.
pub struct Loaders {
    pub users: ByIdLoader<UserId, User>,
    pub calendars: ByIdLoader<CalendarId, Calendar>,
    pub events: ByIdLoader<EventId, Event>,
    pub resources: ByIdLoader<ResourceId, Resource>,
    pub attendees: GroupedLoader<Attendee>,
    pub reservations: GroupedLoader<Booking>,
}

/// Larger than any batch a valid request can produce, so a request never splits a batch in two.
const MAX_BATCH: usize = 100_000;

fn by_id<K, T>(store: &Store, fetch: Fetch<K, T>, key: fn(&T) -> K) -> ByIdLoader<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + std::fmt::Debug,
    T: Send + Sync,
{
    Loader::new(ById {
        store: store.clone(),
        fetch,
        key,
    })
    .with_max_batch_size(MAX_BATCH)
}

fn grouped<T: Send + Sync>(store: &Store, fetch: FetchLists<T>) -> GroupedLoader<T> {
    Loader::new(Grouped {
        store: store.clone(),
        fetch,
    })
    .with_max_batch_size(MAX_BATCH)
}

impl Loaders {
    pub fn new(store: &Store) -> Self {
        Self {
            users: by_id(store, |s, k| Box::pin(s.users_by_ids(k)), |u| u.id),
            calendars: by_id(store, |s, k| Box::pin(s.calendars_by_ids(k)), |c| c.id),
            events: by_id(store, |s, k| Box::pin(s.events_by_ids(k)), |e| e.id),
            resources: by_id(store, |s, k| Box::pin(s.resources_by_ids(k)), |r| r.id),
            attendees: grouped(store, |s, k| Box::pin(s.attendees_by_event_ids(k))),
            reservations: grouped(store, |s, k| Box::pin(s.reservations_by_event_ids(k))),
        }
    }
}

/// Loads one key; the loader yields a value for every key, so a missing entry is a bug in a batch fn.
pub async fn one<K, V, F>(loader: &Loader<K, V, F>, key: K) -> V
where
    K: Eq + Hash + Clone + std::fmt::Debug,
    V: Clone,
    F: BatchFn<K, V>,
{
    loader
        .try_load(key)
        .await
        .expect("batch functions answer every key")
}
