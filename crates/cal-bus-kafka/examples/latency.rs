//! Publish→deliver latency of the Kafka bus between two instances on a local `tansu` broker:
//! `cargo run -p cal-bus-kafka --example latency [N]` (default 1000 messages, one at a time;
//! `KAFKA_FETCH_WAIT_MS` sets the consumer's `fetch.wait.max.ms`).
//! Prints percentiles of the publish acknowledgement and of the delivery to the other instance.

use std::time::{Duration, Instant};

use cal_bus_kafka::{KafkaBus, KafkaConfig};
use cal_cache::{Invalidation, InvalidationBus};
use cal_test_infra::KafkaBroker;
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1000, |s| s.parse().expect("N is a number"));
    let broker = KafkaBroker::start();
    let cfg = |client: &str| KafkaConfig {
        topic: "cache.invalidate.latency".into(),
        client_id: client.into(),
        fetch_wait: std::env::var("KAFKA_FETCH_WAIT_MS")
            .ok()
            .map_or(cal_bus_kafka::DEFAULT_FETCH_WAIT, |ms| {
                Duration::from_millis(ms.parse().expect("KAFKA_FETCH_WAIT_MS is a number"))
            }),
        ..KafkaConfig::new(broker.brokers())
    };
    let t0 = Instant::now();
    let a = KafkaBus::connect(cfg("a")).await.unwrap();
    let connected = t0.elapsed();
    let b = KafkaBus::connect(cfg("b")).await.unwrap();
    let mut sub = b.subscribe();
    let t0 = Instant::now();
    a.publish(Invalidation::heartbeat("a", 0)).await.unwrap();
    println!(
        "connect (creating the topic) {connected:?}; first publish after connect {:?}",
        t0.elapsed()
    );
    sub.next().await.unwrap().unwrap();

    // Warm up the connections.
    for seq in 1..20 {
        a.publish(Invalidation::heartbeat("a", seq)).await.unwrap();
        sub.next().await.unwrap().unwrap();
    }

    let mut acked = Vec::with_capacity(n);
    let mut delivered = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        let inv = Invalidation::new(vec![(format!("event:{seq}"), 1)], "a", seq);
        let t0 = Instant::now();
        let publish = async {
            a.publish(inv).await.unwrap();
            t0.elapsed()
        };
        let receive = async {
            let got = sub.next().await.unwrap().unwrap();
            assert_eq!(got.seq, seq);
            t0.elapsed()
        };
        let (ack, del) = tokio::join!(publish, receive);
        acked.push(ack);
        delivered.push(del);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report("publish acknowledged", &mut acked);
    report("delivered to the other instance", &mut delivered);
}

fn report(what: &str, v: &mut [Duration]) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "{what} ({} messages): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        v.len(),
        p(0.50),
        p(0.90),
        p(0.99),
        v[v.len() - 1]
    );
}
