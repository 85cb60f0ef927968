//! librdkafka's threads run at `KafkaConfig::thread_nice`. Alone in its test binary, so the only
//! Kafka client threads of the process are this test's.

use std::collections::BTreeMap;
use std::time::Duration;

use cal_bus_kafka::{KafkaBus, KafkaConfig};
use cal_cache::priority::current_thread_nice;
use cal_cache::{Invalidation, InvalidationBus};
use cal_test_infra::KafkaBroker;
use futures::StreamExt;

/// Name → nice values of this process's threads.
fn thread_nices() -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // After the parenthesised name (which may hold spaces): field 3 (state) onwards; the
        // nice value is field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.entry(comm.trim().to_string()).or_default().push(nice);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_threads_run_at_the_configured_nice_value() {
    let broker = KafkaBroker::start();
    let before = current_thread_nice().unwrap();
    // A lower priority than ours needs no privilege, so this runs anywhere.
    let target = (before + 4).min(19);
    assert_ne!(
        target, before,
        "the test needs room below the current priority"
    );
    let bus = KafkaBus::connect(KafkaConfig {
        // The broker is this test's own (in memory), so the topic needs no unique name.
        topic: "cache.invalidate.priority".into(),
        client_id: "priority".into(),
        thread_nice: Some(target),
        ..KafkaConfig::new(broker.brokers())
    })
    .await
    .unwrap_or_else(|e| panic!("connect: {e}\n{}", broker.log_text()));
    let mut sub = bus.subscribe();
    // A round trip, so that the threads for the broker itself (learned from metadata) exist.
    bus.publish(Invalidation::heartbeat("priority", 0))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered within 10 s")
        .unwrap()
        .unwrap();

    let threads = thread_nices();
    let kafka: Vec<(&String, &Vec<i32>)> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("rdk:") || name.starts_with("producer poll"))
        .collect();
    assert!(
        kafka.iter().any(|(n, _)| n.starts_with("rdk:broker")),
        "librdkafka's broker threads are there: {threads:?}"
    );
    for (name, nices) in &kafka {
        assert!(
            nices.iter().all(|&n| n == target),
            "{name} runs at {nices:?}, not {target}"
        );
    }
    assert_eq!(
        current_thread_nice().unwrap(),
        before,
        "the connecting thread keeps its priority"
    );
    let workers: Vec<i32> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("tokio-r"))
        .flat_map(|(_, nices)| nices.iter().copied())
        .collect();
    assert!(!workers.is_empty(), "the runtime's workers: {threads:?}");
    assert!(
        workers.iter().all(|&n| n == before),
        "the runtime's workers keep their priority: {threads:?}"
    );
}
