//! The Kafka bus against a real Kafka-protocol broker (`tansu`, one per test, in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cal_bus_kafka::{KafkaBus, KafkaConfig};
use cal_cache::{BusError, Invalidation, InvalidationBus, Position};
use cal_test_infra::KafkaBroker;
use futures::StreamExt;
use futures::stream::BoxStream;

type Sub = BoxStream<'static, Result<Invalidation, BusError>>;

/// A topic name no other test or earlier run uses.
fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cache.invalidate.{name}.{}.{nanos}", std::process::id())
}

fn cfg(broker: &KafkaBroker, topic: &str, partitions: i32, client: &str) -> KafkaConfig {
    KafkaConfig {
        topic: topic.to_string(),
        partitions,
        client_id: client.to_string(),
        ..KafkaConfig::new(broker.brokers())
    }
}

/// Logs to the test's output with `RUST_LOG` (e.g. `RUST_LOG=rdkafka=debug,cal_bus_kafka=trace`).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn connect(broker: &KafkaBroker, topic: &str, partitions: i32, client: &str) -> KafkaBus {
    init_tracing();
    KafkaBus::connect(cfg(broker, topic, partitions, client))
        .await
        .unwrap_or_else(|e| panic!("connect {client}: {e}\n{}", broker.log_text()))
}

async fn next(sub: &mut Sub) -> Invalidation {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(Ok(inv))) => inv,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no message within 10 s"),
    }
}

/// Asserts that nothing arrives for `d`.
async fn quiet(sub: &mut Sub, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, sub.next()).await {
        panic!("unexpected message: {m:?}");
    }
}

fn inv(origin: &str, seq: u64) -> Invalidation {
    Invalidation::new(vec![(format!("event:{seq}"), seq as i64 + 1)], origin, seq)
}

#[tokio::test]
async fn both_instances_receive_a_message_with_the_published_position_and_all_fields() {
    let broker = KafkaBroker::start();
    let t = topic("fanout");
    let a = connect(&broker, &t, 1, "a").await;
    let b = connect(&broker, &t, 1, "b").await;
    assert_eq!(a.name(), "kafka");
    assert_eq!(
        a.start_positions(),
        vec![Position {
            partition: 0,
            offset: 0
        }]
    );
    let mut sub_a = a.subscribe();
    let mut sub_b = b.subscribe();

    let sent = Invalidation {
        keys: vec![
            ("calendar:7:month:2026-03".into(), 12),
            ("event:99".into(), -3),
            ("ünïcode:\"quoted\"".into(), i64::MAX),
        ],
        origin: "host-a/1234".into(),
        seq: u64::MAX - 1,
        outbox_id: Some(4_000_000_001),
        purge_all: Some(4_000_000_001),
        sent_at_ms: 1_767_225_600_123,
        trace_context: vec![
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("tracestate".into(), "cal=1,other=x".into()),
        ],
        calendars: vec![7, i64::MAX],
        position: None,
    };
    let pos = a.publish(sent.clone()).await.unwrap();
    assert_eq!(
        pos,
        Some(Position {
            partition: 0,
            offset: 0
        })
    );

    let expected = Invalidation {
        position: pos,
        ..sent
    };
    assert_eq!(next(&mut sub_a).await, expected);
    assert_eq!(next(&mut sub_b).await, expected);

    // A second message lands at the next offset, for both.
    let pos2 = b
        .publish(Invalidation::heartbeat("host-b", 0))
        .await
        .unwrap();
    assert_eq!(
        pos2,
        Some(Position {
            partition: 0,
            offset: 1
        })
    );
    for sub in [&mut sub_a, &mut sub_b] {
        let hb = next(sub).await;
        assert!(hb.is_heartbeat());
        assert_eq!((hb.origin.as_str(), hb.position), ("host-b", pos2));
        assert!(hb.trace_context.is_empty());
    }
}

#[tokio::test]
async fn a_new_instance_starts_at_the_end_of_the_topic() {
    let broker = KafkaBroker::start();
    let t = topic("end");
    let a = connect(&broker, &t, 1, "a").await;
    for seq in 0..3 {
        let p = a.publish(inv("a", seq)).await.unwrap();
        assert_eq!(
            p,
            Some(Position {
                partition: 0,
                offset: seq as i64
            })
        );
    }

    let b = connect(&broker, &t, 1, "b").await;
    assert_eq!(
        b.start_positions(),
        vec![Position {
            partition: 0,
            offset: 3
        }]
    );
    let mut sub_b = b.subscribe();
    quiet(&mut sub_b, Duration::from_millis(300)).await;

    let p = a.publish(inv("a", 3)).await.unwrap();
    assert_eq!(
        p,
        Some(Position {
            partition: 0,
            offset: 3
        })
    );
    let got = next(&mut sub_b).await;
    assert_eq!((got.seq, got.position), (3, p));
    quiet(&mut sub_b, Duration::from_millis(200)).await;

    // A subscribes late, but from its own start positions (0): it gets all four, in order.
    let mut sub_a = a.subscribe();
    for seq in 0..4u64 {
        let got = next(&mut sub_a).await;
        assert_eq!(got.seq, seq);
        assert_eq!(
            got.position,
            Some(Position {
                partition: 0,
                offset: seq as i64
            })
        );
    }
}

#[tokio::test]
async fn five_hundred_concurrent_publishes_arrive_in_offset_order_without_gaps() {
    const N: u64 = 500;
    let broker = KafkaBroker::start();
    let t = topic("order");
    let a = Arc::new(connect(&broker, &t, 1, "a").await);
    let b = connect(&broker, &t, 1, "b").await;
    let mut sub = b.subscribe();

    let published: Vec<(u64, Position)> = futures::stream::iter(0..N)
        .map(|seq| {
            let a = a.clone();
            async move { (seq, a.publish(inv("a", seq)).await.unwrap().unwrap()) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let by_seq: BTreeMap<u64, Position> = published.into_iter().collect();
    assert_eq!(by_seq.len() as u64, N);

    let mut seen = BTreeSet::new();
    for expected_offset in 0..N as i64 {
        let got = next(&mut sub).await;
        let pos = got.position.unwrap();
        assert_eq!(
            pos,
            Position {
                partition: 0,
                offset: expected_offset
            }
        );
        assert!(seen.insert(got.seq), "seq {} delivered twice", got.seq);
        assert_eq!(by_seq[&got.seq], pos, "publish returned another position");
    }
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
    quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_frozen_broker_loses_and_duplicates_nothing() {
    // 5 s to publish: every publish outlives the 3 s freeze.
    let run = freeze_while_publishing(Duration::from_secs(5)).await;
    assert_eq!(run.failed(), 0);
    assert!(
        run.slowest() > Duration::from_millis(2500),
        "{:?}",
        run.slowest()
    );
}

#[tokio::test]
async fn publishes_that_time_out_during_a_freeze_are_reported_and_the_bus_recovers() {
    // 1 s to publish: what is sent early in the 3 s freeze fails.
    let run = freeze_while_publishing(Duration::from_secs(1)).await;
    assert!(run.failed() > 100, "only {} failed", run.failed());
    // Publishing works again soon after the freeze (after a timeout librdkafka bumps the
    // producer epoch, tansu fences it, and the bus replaces the producer).
    let after: Vec<_> = run
        .results
        .iter()
        .filter(|r| r.issued_at > Duration::from_millis(4000))
        .collect();
    assert!(after.len() > 50, "{}", after.len());
    for r in after {
        assert!(
            r.result.is_ok(),
            "seq {} issued at {:?}: {:?}",
            r.seq,
            r.issued_at,
            r.result
        );
    }
}

struct Publish {
    seq: u64,
    /// When it was issued, from the start of publishing.
    issued_at: Duration,
    took: Duration,
    result: Result<Option<Position>, BusError>,
}

struct FreezeRun {
    results: Vec<Publish>,
}

impl FreezeRun {
    fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.result.is_err()).count()
    }
    fn slowest(&self) -> Duration {
        self.results.iter().map(|r| r.took).max().unwrap()
    }
}

/// Publishes from one instance, a message every 5 ms for 4.5 s, each in its own task, while
/// the broker is frozen (SIGSTOP) from 0.5 s to 3.5 s; then checks that every publish returned,
/// that every acknowledged message reaches another instance exactly once at the position
/// publish returned, and that the offsets it reads have no gap.
async fn freeze_while_publishing(publish_timeout: Duration) -> FreezeRun {
    let broker = KafkaBroker::start();
    let t = topic("pause");
    init_tracing();
    let a = KafkaBus::connect(KafkaConfig {
        publish_timeout,
        ..cfg(&broker, &t, 1, "a")
    });
    let a = Arc::new(a.await.unwrap());
    let b = connect(&broker, &t, 1, "b").await;
    let mut sub = b.subscribe();

    let started = Instant::now();
    let publisher = tokio::spawn({
        let a = a.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut seq = 0u64;
            while started.elapsed() < Duration::from_millis(4500) {
                let a = a.clone();
                tasks.spawn(async move {
                    let issued_at = started.elapsed();
                    let result = a.publish(inv("a", seq)).await;
                    Publish {
                        seq,
                        issued_at,
                        took: started.elapsed() - issued_at,
                        result,
                    }
                });
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut results = tasks.join_all().await;
            results.sort_by_key(|r| r.seq);
            (seq, results)
        }
    });
    tokio::time::sleep_until((started + Duration::from_millis(500)).into()).await;
    broker.pause();
    tokio::time::sleep_until((started + Duration::from_millis(3500)).into()).await;
    broker.resume();
    let (issued, results) = publisher.await.unwrap();
    let run = FreezeRun { results };

    assert!(issued > 300, "only {issued} publishes issued");
    assert_eq!(run.results.len() as u64, issued, "every publish returned");
    let ok: BTreeMap<u64, Position> = run
        .results
        .iter()
        .filter_map(|r| Some((r.seq, r.result.clone().ok()??)))
        .collect();
    for r in &run.results {
        match &r.result {
            Ok(p) => assert!(p.is_some(), "seq {}: no position", r.seq),
            Err(e) => assert!(matches!(e, BusError::Publish(_)), "seq {}: {e:?}", r.seq),
        }
    }
    assert!(ok.len() > 100, "only {} of {issued} published", ok.len());

    let mut delivered = BTreeMap::new();
    let mut offset = 0i64;
    let mut read = |got: Invalidation, delivered: &mut BTreeMap<u64, Position>| {
        let pos = got.position.unwrap();
        assert_eq!(
            pos,
            Position {
                partition: 0,
                offset
            },
            "gap or reorder"
        );
        offset += 1;
        assert!(
            delivered.insert(got.seq, pos).is_none(),
            "seq {} twice",
            got.seq
        );
    };
    while !ok.keys().all(|s| delivered.contains_key(s)) {
        read(next(&mut sub).await, &mut delivered);
    }
    // Anything else (a publish reported as failed may still have been written) comes after.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        read(m.unwrap(), &mut delivered);
    }
    for (seq, pos) in &ok {
        assert_eq!(delivered.get(seq), Some(pos), "seq {seq}");
    }
    eprintln!(
        "publish_timeout {publish_timeout:?}: issued {issued}, acknowledged {}, failed {}, \
         slowest {:?}, delivered {} (of which {} reported failed)",
        ok.len(),
        run.failed(),
        run.slowest(),
        delivered.len(),
        delivered.len() - ok.len()
    );
    run
}

#[tokio::test]
async fn a_subscriber_reads_every_partition() {
    let broker = KafkaBroker::start();
    let t = topic("partitions");
    let a = connect(&broker, &t, 3, "a").await;
    let b = connect(&broker, &t, 3, "b").await;
    let zero = |partition| Position {
        partition,
        offset: 0,
    };
    assert_eq!(b.start_positions(), vec![zero(0), zero(1), zero(2)]);
    let mut sub = b.subscribe();

    // Messages are keyed by origin: thirty origins spread over the three partitions.
    let mut published = BTreeMap::new();
    for seq in 0..30u64 {
        let p = a
            .publish(inv(&format!("origin-{seq}"), seq))
            .await
            .unwrap()
            .unwrap();
        published.insert(seq, p);
    }
    let mut next_offset = BTreeMap::new();
    for _ in 0..30 {
        let got = next(&mut sub).await;
        let pos = got.position.unwrap();
        assert_eq!(published[&got.seq], pos);
        assert_eq!(got.origin, format!("origin-{}", got.seq));
        let expected = next_offset.entry(pos.partition).or_insert(0i64);
        assert_eq!(
            pos.offset, *expected,
            "offsets of partition {}",
            pos.partition
        );
        *expected += 1;
    }
    assert_eq!(
        next_offset.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(next_offset.values().sum::<i64>(), 30);
    quiet(&mut sub, Duration::from_millis(300)).await;

    // The same origin always lands in the same partition, in order.
    let p1 = a.publish(inv("origin-7", 100)).await.unwrap().unwrap();
    let p2 = a.publish(inv("origin-7", 101)).await.unwrap().unwrap();
    assert_eq!(p1.partition, published[&7].partition);
    assert_eq!((p2.partition, p2.offset), (p1.partition, p1.offset + 1));
}

#[tokio::test]
async fn a_calendars_changes_keep_their_order_in_one_partition_and_heartbeats_reach_all() {
    let broker = KafkaBroker::start();
    let t = topic("by-calendar");
    let a = connect(&broker, &t, 3, "a").await;
    let b = connect(&broker, &t, 3, "b").await;
    let mut sub = b.subscribe();
    let change = |origin: &str, seq: u64, calendars: Vec<i64>| Invalidation {
        calendars,
        ..inv(origin, seq)
    };

    // Writers on many instances change calendar 42, and calendars 7 and 9 in between.
    let mut partitions = BTreeMap::<i64, BTreeSet<i32>>::new();
    let mut offsets_of_42 = Vec::new();
    for seq in 0..30u64 {
        let calendar = [42, 7, 9][seq as usize % 3];
        let p = a
            .publish(change(&format!("instance-{seq}"), seq, vec![calendar]))
            .await
            .unwrap()
            .unwrap();
        partitions.entry(calendar).or_default().insert(p.partition);
        if calendar == 42 {
            offsets_of_42.push(p.offset);
        }
    }
    for (calendar, ps) in &partitions {
        assert_eq!(
            ps.len(),
            1,
            "calendar {calendar}'s changes in one partition: {ps:?}"
        );
    }
    assert!(
        offsets_of_42.is_sorted(),
        "in publish order: {offsets_of_42:?}"
    );
    // A change of several calendars goes with the smallest of them.
    let both = a
        .publish(change("x", 99, vec![42, 7]))
        .await
        .unwrap()
        .unwrap();
    assert!(partitions[&7].contains(&both.partition));
    for _ in 0..31 {
        next(&mut sub).await;
    }

    // A heartbeat is one message per partition.
    a.publish(Invalidation::heartbeat("a", 100)).await.unwrap();
    let mut heard = BTreeSet::new();
    for _ in 0..3 {
        let beat = next(&mut sub).await;
        assert!(beat.is_heartbeat());
        heard.insert(beat.position.unwrap().partition);
    }
    assert_eq!(heard, BTreeSet::from([0, 1, 2]));
    quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_second_subscription_also_reads_from_the_start_positions() {
    let broker = KafkaBroker::start();
    let t = topic("resubscribe");
    let a = connect(&broker, &t, 1, "a").await;
    let mut first = a.subscribe();
    a.publish(inv("a", 0)).await.unwrap();
    assert_eq!(next(&mut first).await.seq, 0);

    let mut second = a.subscribe();
    a.publish(inv("a", 1)).await.unwrap();
    for seq in 0..2 {
        assert_eq!(next(&mut second).await.seq, seq);
    }
    assert_eq!(next(&mut first).await.seq, 1);
    quiet(&mut first, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_undecodable_message_is_reported_and_the_stream_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = KafkaBroker::start();
    let t = topic("garbage");
    let a = connect(&broker, &t, 1, "a").await;
    let mut sub = a.subscribe();
    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    raw.send(
        FutureRecord::<(), _>::to(&t).payload("not json"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let p = a.publish(inv("a", 1)).await.unwrap();

    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(Err(BusError::Subscribe(e)))) => assert!(e.contains("0:0"), "{e}"),
        other => panic!("expected a decoding error, got {other:?}"),
    }
    let got = next(&mut sub).await;
    assert_eq!((got.seq, got.position), (1, p));
}

/// Several instances publish to the same partition at once (their invalidations and
/// heartbeats): the position each publish reports must be the offset its message has when
/// consumed. A consistency token is that reported position; one that named an earlier
/// message would let a reader stop waiting before the write's invalidation arrived.
#[tokio::test]
async fn concurrent_producers_get_the_positions_their_messages_are_consumed_at() {
    const N: u64 = 300;
    let broker = KafkaBroker::start();
    let t = topic("producers");
    let producers: Vec<Arc<KafkaBus>> =
        futures::future::join_all(["a", "b", "c"].map(|name| connect(&broker, &t, 1, name)))
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
    let reader = connect(&broker, &t, 1, "reader").await;
    let mut sub = reader.subscribe();

    let sends = producers.iter().enumerate().flat_map(|(p, bus)| {
        (0..N).map(move |seq| {
            let bus = bus.clone();
            let origin = format!("p{p}");
            async move {
                let pos = bus.publish(inv(&origin, seq)).await.unwrap().unwrap();
                ((origin, seq), pos)
            }
        })
    });
    let published: BTreeMap<(String, u64), Position> = futures::stream::iter(sends)
        .buffer_unordered(96)
        .collect()
        .await;
    assert_eq!(published.len() as u64, 3 * N);

    let mut mismatched = Vec::new();
    for _ in 0..3 * N {
        let got = next(&mut sub).await;
        let reported = published[&(got.origin.clone(), got.seq)];
        if Some(reported) != got.position {
            mismatched.push((got.origin.clone(), got.seq, reported, got.position));
        }
    }
    assert!(
        mismatched.is_empty(),
        "{} of {} messages were consumed at another position than their publish reported, e.g. {:?}",
        mismatched.len(),
        3 * N,
        &mismatched[..mismatched.len().min(5)]
    );
}
