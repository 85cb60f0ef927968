//! The relay and the consumer run without an HTTP server: over a store, a cache and a bus, they
//! repair Redis from the change log before they publish, and they stop when told to, after a
//! last pass.

use cal_cache::{
    CacheConfig, InProcessBus, Invalidation, InvalidationBus, KeySpec, Loaded, TieredCache,
};
use cal_domain::cache_keys;
use cal_domain::*;
use cal_storage::Store;
use cal_sync::{Invalidator, RelayConfig, SyncConfig};
use cal_test_support::{TestDb, dates, one_hour_event};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

async fn cache(db: &TestDb, l1: bool) -> TieredCache {
    TieredCache::new(
        CacheConfig {
            redis_url: Some(
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            ),
            key_prefix: format!("test:{}:sync:", db.name),
            l1_enabled: l1,
            ..CacheConfig::default()
        },
        &prometheus::Registry::new(),
    )
    .await
    .unwrap()
}

/// Reads `key` through a fresh cache with L1 off: `true` when L2 answered, `false` when the
/// loader had to run (a miss or a tombstone).
async fn served_by_l2(db: &TestDb, key: &str, version: i64) -> bool {
    served(&cache(db, false).await, key, version).await
}

/// Reads `key` through `cache`: `true` when a tier answered, `false` when the loader ran.
async fn served(cache: &TieredCache, key: &str, version: i64) -> bool {
    let loads = AtomicUsize::new(0);
    let spec = KeySpec::new(key.to_owned(), "event", Duration::from_secs(600));
    cache
        .get_many::<String, (), _, _>(&[spec], None, |missing| {
            loads.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(missing
                    .into_iter()
                    .map(|index| Loaded {
                        index,
                        value: Some(format!("v{version}")),
                        version,
                    })
                    .collect())
            }
        })
        .await
        .unwrap();
    loads.load(Ordering::SeqCst) == 0
}

async fn world(store: &Store) -> Event {
    let owner = store
        .create_user("o@example.test", "O", None)
        .await
        .unwrap();
    let cal = store
        .create_calendar(owner.id, &CalendarName::new("C").unwrap(), None, "UTC")
        .await
        .unwrap();
    let start = dates::at(2, 9, 0);
    store
        .create_event(&one_hour_event(cal.id, owner.id, start))
        .await
        .unwrap()
}

/// Gives `ev` a new title through `store` (no change sink: nobody is told of the commit).
async fn retitle(store: &Store, ev: &Event) -> Event {
    store
        .update_event(
            ev.id,
            ev.version,
            &cal_storage::EventPatch {
                title: Some(Title::new("new").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

async fn newest_row(db: &TestDb) -> (i64, bool) {
    cal_test_support::sql::newest_outbox_row(&db.pool).await
}

fn quick_relay() -> SyncConfig {
    SyncConfig {
        relay: RelayConfig {
            poll: Duration::from_millis(20),
            grace: Duration::from_millis(50),
            ..RelayConfig::default()
        },
        ..SyncConfig::default()
    }
}

/// Waits for the message of change-log row `id` on `messages`.
async fn message_of(
    messages: &mut futures::stream::BoxStream<'static, Result<Invalidation, cal_cache::BusError>>,
    id: i64,
) -> Invalidation {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let inv = messages.next().await.expect("bus open").expect("no loss");
            if inv.outbox_id == Some(id) {
                return inv;
            }
        }
    })
    .await
    .expect("the row's message was published")
}

#[tokio::test]
async fn a_dead_writers_row_is_tombstoned_in_redis_then_published() {
    let db = TestDb::new().await;
    // The writer: commits with a change-log row, then "dies" (no change sink runs).
    let writer = Store::new(db.pool.clone()).with_origin("dead-writer");
    let ev = world(&writer).await;
    let key = cache_keys::event_full(ev.id);
    // Redis holds the event at its current version, as a reader left it.
    assert!(
        !served_by_l2(&db, &key, ev.version).await,
        "first read loads"
    );
    assert!(served_by_l2(&db, &key, ev.version).await, "then L2 has it");
    let updated = retitle(&writer, &ev).await;
    assert!(updated.version > ev.version);
    let (row, published) = newest_row(&db).await;
    assert!(!published);

    // Another instance's relay, with no HTTP server anywhere.
    let bus: Arc<dyn InvalidationBus> = Arc::new(InProcessBus::default());
    let mut messages = bus.subscribe();
    let sync = Invalidator::new(
        cache(&db, true).await,
        bus,
        "survivor".into(),
        quick_relay(),
    );
    let running = sync.start(Store::new(db.pool.clone()), std::future::pending());
    let inv = message_of(&mut messages, row).await;
    assert_eq!(
        inv.origin, "dead-writer",
        "published on the writer's behalf"
    );
    assert!(
        inv.keys
            .iter()
            .any(|(k, v)| *k == key && *v == updated.version),
        "{:?}",
        inv.keys
    );
    // Tombstones go first: by the time the message is out, Redis no longer serves the old row.
    assert!(
        !served_by_l2(&db, &key, ev.version).await,
        "Redis still served the version the dead writer replaced"
    );
    running.stop();
    tokio::time::timeout(Duration::from_secs(20), running.join())
        .await
        .expect("the tasks stop when told to");
    assert!(newest_row(&db).await.1, "marked published");
}

#[tokio::test]
async fn shutdown_publishes_own_rows_left_behind_then_joins() {
    let db = TestDb::new().await;
    let bus: Arc<dyn InvalidationBus> = Arc::new(InProcessBus::default());
    let mut messages = bus.subscribe();
    let mut cfg = quick_relay();
    // No sweep before the shutdown: only the last pass can publish.
    cfg.relay.poll = Duration::from_secs(3600);
    let sync = Invalidator::new(cache(&db, true).await, bus, "me".into(), cfg);
    let running = sync.start(Store::new(db.pool.clone()), std::future::pending());
    // A write of this instance whose writer never asked the relay (no change sink).
    let writer = Store::new(db.pool.clone()).with_origin("me");
    world(&writer).await;
    let (row, published) = newest_row(&db).await;
    assert!(!published);
    running.stop();
    tokio::time::timeout(Duration::from_secs(20), running.join())
        .await
        .expect("the tasks stop when told to");
    assert!(newest_row(&db).await.1, "the last pass published the row");
    message_of(&mut messages, row).await;
}

#[tokio::test]
async fn an_own_write_whose_writer_never_heard_its_commit_leaves_no_old_value_in_l1() {
    let db = TestDb::new().await;
    let setup = Store::new(db.pool.clone());
    let ev = world(&setup).await;
    let key = cache_keys::event_full(ev.id);
    let bus: Arc<dyn InvalidationBus> = Arc::new(InProcessBus::default());
    let mut messages = bus.subscribe();
    let l1 = cache(&db, true).await;
    let sync = Invalidator::new(l1.clone(), bus, "me".into(), quick_relay());
    // This instance's L1 holds the event as it is now.
    assert!(!served(&l1, &key, ev.version).await, "first read loads");
    assert!(served(&l1, &key, ev.version).await, "then L1 has it");
    // The write commits on the server, but its writer never hears it (the connection dropped
    // before the answer): no change sink runs, nothing evicts this L1.
    let writer = Store::new(db.pool.clone()).with_origin("me");
    retitle(&writer, &ev).await;
    let (row, _) = newest_row(&db).await;
    let running = sync.start(Store::new(db.pool.clone()), std::future::pending());
    message_of(&mut messages, row).await;
    // The pass that published the row has finished once the tasks are joined.
    running.stop();
    tokio::time::timeout(Duration::from_secs(20), running.join())
        .await
        .expect("the tasks stop when told to");
    assert!(
        !served(&l1, &key, ev.version).await,
        "this instance's L1 still served the version its own write replaced"
    );
}
