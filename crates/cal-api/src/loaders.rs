//! Per-request DataLoaders over the cache tiers. A fresh [`Loaders`] is built for every HTTP
//! request (one viewer), so a loader's memo never outlives a request or crosses viewers. Each
//! batch goes through the tiers once: L1 for all keys, one Redis round trip for L1's misses, and
//! one SQL statement (`= ANY($1)`) for what is still missing, whose rows are filled back into
//! both tiers with their versions.
//!
//! Values are viewer-independent facts; resolvers authorize after loading. Every batch runs in a
//! `loader.batch` span (loader = the key kind, `batch.size`) holding the cache's tier steps and
//! the SQL statement, and is counted for the request (`extensions.stats.loaderBatches`).

use crate::tiers::Tiers;
use cal_cache::{GetSize, Loaded as Filled, RequestStats};
use cal_domain::cache_keys::{self, KeyKind};
use cal_domain::*;
use cal_storage::{StorageError, Store, VersionedList};
use dataloader::BatchFn;
use dataloader::cached::Loader;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use tracing::Instrument;

/// What a by-id loader yields: the fact, `None` when it does not exist, or the batch's shared error.
pub type Loaded<T> = Result<Option<Arc<T>>, Arc<StorageError>>;
/// What a grouped loader yields: every row belonging to the key.
pub type LoadedList<T> = Result<Arc<Vec<T>>, Arc<StorageError>>;

type Fetch<K, T> = for<'a> fn(&'a Store, &'a [K]) -> BoxFuture<'a, Result<Vec<T>, StorageError>>;
type FetchLists<T> = for<'a> fn(
    &'a Store,
    &'a [EventId],
) -> BoxFuture<'a, Result<Vec<VersionedList<T>>, StorageError>>;

/// What every batch function needs to context the tiers and the database.
#[derive(Clone)]
pub struct LoaderContext {
    pub store: Store,
    pub tiers: Arc<Tiers>,
    pub stats: Arc<RequestStats>,
}

/// How one kind of fact is cached.
pub struct Kind<K, T> {
    pub kind: KeyKind,
    pub key: fn(K) -> String,
    pub id_of: fn(&T) -> K,
    pub version_of: fn(&T) -> i64,
}

/// Batch function for "one row per id".
pub struct ById<K, T> {
    context: LoaderContext,
    fetch: Fetch<K, T>,
    kind: Kind<K, T>,
}

impl<K, T> BatchFn<K, Loaded<T>> for ById<K, T>
where
    K: Eq + Hash + Copy + Send + Sync + 'static,
    T: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
{
    async fn load(&mut self, keys: &[K]) -> HashMap<K, Loaded<T>> {
        let tiers = &self.context.tiers;
        let specs: Vec<_> = keys
            .iter()
            .map(|k| tiers.spec(self.kind.kind, (self.kind.key)(*k)))
            .collect();
        let (store, fetch, id_of, version_of) = (
            self.context.store.clone(),
            self.fetch,
            self.kind.id_of,
            self.kind.version_of,
        );
        let wanted = keys.to_vec();
        let span = crate::observe::loader_batch(self.kind.kind.label(), keys.len());
        let result = tiers
            .cache
            .get_many(
                &specs,
                Some(&self.context.stats),
                move |missing: Vec<usize>| async move {
                    let ids: Vec<K> = missing.iter().map(|&i| wanted[i]).collect();
                    let mut rows: foldhash::HashMap<K, T> = fetch(&store, &ids)
                        .await?
                        .into_iter()
                        .map(|r| (id_of(&r), r))
                        .collect();
                    Ok::<_, StorageError>(
                        missing
                            .into_iter()
                            .map(|i| {
                                let value = rows.remove(&wanted[i]);
                                let version = value.as_ref().map_or(0, version_of);
                                Filled {
                                    index: i,
                                    value,
                                    version,
                                }
                            })
                            .collect(),
                    )
                },
            )
            .instrument(span)
            .await;
        match result {
            Ok(values) => keys.iter().zip(values).map(|(k, v)| (*k, Ok(v))).collect(),
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|k| (*k, Err(e.clone()))).collect()
            }
        }
    }
}

/// Batch function for "all rows belonging to an event" (attendees, reservations); each list is
/// cached with its event's version.
pub struct Grouped<T> {
    context: LoaderContext,
    fetch: FetchLists<T>,
    kind: KeyKind,
    key: fn(EventId) -> String,
}

impl<T> BatchFn<EventId, LoadedList<T>> for Grouped<T>
where
    T: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
{
    async fn load(&mut self, keys: &[EventId]) -> HashMap<EventId, LoadedList<T>> {
        let tiers = &self.context.tiers;
        let specs: Vec<_> = keys
            .iter()
            .map(|k| tiers.spec(self.kind, (self.key)(*k)))
            .collect();
        let (store, fetch) = (self.context.store.clone(), self.fetch);
        let wanted = keys.to_vec();
        let span = crate::observe::loader_batch(self.kind.label(), keys.len());
        let result = tiers
            .cache
            .get_many(
                &specs,
                Some(&self.context.stats),
                move |missing: Vec<usize>| async move {
                    let ids: Vec<EventId> = missing.iter().map(|&i| wanted[i]).collect();
                    let mut lists: foldhash::HashMap<EventId, VersionedList<T>> =
                        fetch(&store, &ids)
                            .await?
                            .into_iter()
                            .map(|l| (l.event, l))
                            .collect();
                    Ok::<_, StorageError>(
                        missing
                            .into_iter()
                            .map(|i| match lists.remove(&wanted[i]) {
                                Some(l) => Filled {
                                    index: i,
                                    value: Some(l.items),
                                    version: l.version,
                                },
                                None => Filled {
                                    index: i,
                                    value: None,
                                    version: 0,
                                },
                            })
                            .collect(),
                    )
                },
            )
            .instrument(span)
            .await;
        match result {
            Ok(values) => keys
                .iter()
                .zip(values)
                .map(|(k, v)| (*k, Ok(v.unwrap_or_else(|| Arc::new(Vec::new())))))
                .collect(),
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

impl<K: Copy, T> Clone for ById<K, T> {
    fn clone(&self) -> Self {
        Self {
            context: self.context.clone(),
            fetch: self.fetch,
            kind: self.kind.clone(),
        }
    }
}

impl<T> Clone for Grouped<T> {
    fn clone(&self) -> Self {
        Self {
            context: self.context.clone(),
            fetch: self.fetch,
            kind: self.kind,
            key: self.key,
        }
    }
}

/// The loaders of one request.
pub struct Loaders {
    pub users: ByIdLoader<UserId, User>,
    pub calendars: ByIdLoader<CalendarId, Calendar>,
    pub events: ByIdLoader<EventId, Event>,
    pub resources: ByIdLoader<ResourceId, Resource>,
    pub attendees: GroupedLoader<Attendee>,
    pub reservations: GroupedLoader<Booking>,
    /// The batch functions behind `users`, `attendees` and `reservations`, for a batch whose
    /// keys are all known up front (a page's prefetch): [`Loaders::load_now`] runs it at once and
    /// primes the loader, without the loader's wait for more keys.
    users_fn: ById<UserId, User>,
    attendees_fn: Grouped<Attendee>,
    reservations_fn: Grouped<Booking>,
}

impl Loaders {
    /// Forgets everything loaded so far: a long-lived context (a subscription's connection)
    /// calls it before each message, so that no message shows what an earlier one loaded.
    pub async fn forget(&self) {
        self.users.clear_all().await;
        self.calendars.clear_all().await;
        self.events.clear_all().await;
        self.resources.clear_all().await;
        self.attendees.clear_all().await;
        self.reservations.clear_all().await;
    }
}

/// Which loader [`Loaders::load_now`] fills.
pub enum Batch<'a> {
    Users(&'a [UserId]),
    Attendees(&'a [EventId]),
    Reservations(&'a [EventId]),
}

/// Larger than any batch a valid request can produce, so a request never splits a batch in two.
const MAX_BATCH: usize = 100_000;

fn by_id<K, T>(context: &LoaderContext, fetch: Fetch<K, T>, kind: Kind<K, T>) -> ByIdLoader<K, T>
where
    K: Eq + Hash + Copy + Send + Sync + std::fmt::Debug + 'static,
    T: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
{
    Loader::new(ById {
        context: context.clone(),
        fetch,
        kind,
    })
    .with_max_batch_size(MAX_BATCH)
}

impl<K, T> Clone for Kind<K, T> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            key: self.key,
            id_of: self.id_of,
            version_of: self.version_of,
        }
    }
}

impl Loaders {
    /// Loads the batch through the tiers now (one get_many, one statement for what is missing)
    /// and primes its loader with every value, so later loads of those keys are memo hits.
    /// Errors are primed too: a resolver then reports the batch's error, as with a normal load.
    pub async fn load_now(&self, batch: Batch<'_>) {
        match batch {
            Batch::Users(keys) => {
                let got = self.users_fn.clone().load(keys).await;
                self.users.prime_many(got).await;
            }
            Batch::Attendees(keys) => {
                let got = self.attendees_fn.clone().load(keys).await;
                self.attendees.prime_many(got).await;
            }
            Batch::Reservations(keys) => {
                let got = self.reservations_fn.clone().load(keys).await;
                self.reservations.prime_many(got).await;
            }
        }
    }

    pub fn new(context: &LoaderContext) -> Self {
        let users = Kind {
            kind: KeyKind::UserProfile,
            key: cache_keys::user_profile,
            id_of: |u: &User| u.id,
            version_of: |u: &User| u.version,
        };
        let users_fetch: Fetch<UserId, User> = |s, k| Box::pin(s.users_by_ids(k));
        let attendees_fetch: FetchLists<Attendee> = |s, k| Box::pin(s.attendees_by_event_ids(k));
        let reservations_fetch: FetchLists<Booking> =
            |s, k| Box::pin(s.reservations_by_event_ids(k));
        let attendees_fn = Grouped {
            context: context.clone(),
            fetch: attendees_fetch,
            kind: KeyKind::EventAttendees,
            key: cache_keys::event_attendees,
        };
        let reservations_fn = Grouped {
            context: context.clone(),
            fetch: reservations_fetch,
            kind: KeyKind::EventReservations,
            key: cache_keys::event_reservations,
        };
        let users_fn = ById {
            context: context.clone(),
            fetch: users_fetch,
            kind: users,
        };
        Self {
            users_fn: users_fn.clone(),
            attendees_fn: attendees_fn.clone(),
            reservations_fn: reservations_fn.clone(),
            users: Loader::new(users_fn).with_max_batch_size(MAX_BATCH),
            attendees: Loader::new(attendees_fn).with_max_batch_size(MAX_BATCH),
            reservations: Loader::new(reservations_fn).with_max_batch_size(MAX_BATCH),
            calendars: by_id(
                context,
                |s, k| Box::pin(s.calendars_by_ids(k)),
                Kind {
                    kind: KeyKind::CalendarSummary,
                    key: cache_keys::calendar_summary,
                    id_of: |c| c.id,
                    version_of: |c| c.version,
                },
            ),
            events: by_id(
                context,
                |s, k| Box::pin(s.events_by_ids(k)),
                Kind {
                    kind: KeyKind::EventFull,
                    key: cache_keys::event_full,
                    id_of: |e| e.id,
                    version_of: |e| e.version,
                },
            ),
            // A resource's version is its bookings version (the database bumps it whenever one of
            // its reservations changes): it names the generation of its availability entries.
            resources: by_id(
                context,
                |s, k| Box::pin(s.resources_by_ids(k)),
                Kind {
                    kind: KeyKind::Resource,
                    key: cache_keys::resource,
                    id_of: |r| r.id,
                    version_of: |r| r.bookings_version,
                },
            ),
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
