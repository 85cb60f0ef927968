//! The cache's [`InvalidationBus`] over Kafka, with `rdkafka` (librdkafka). This is the only
//! crate that links librdkafka; everything else sees an `Arc<dyn InvalidationBus>`.
//!
//! One topic (default `cache.invalidate`) carries every instance's invalidations:
//! - [`KafkaBus::publish`] writes one message with an idempotent producer (`acks=all`), keyed by
//!   the calendar it changed (so one calendar's changes stay in order in one partition; a change
//!   of no calendar is keyed by its `origin`), with a JSON payload and the W3C trace context also
//!   as headers, and returns the message's [`Position`] once the broker acknowledged it. A
//!   heartbeat goes to every partition, so that each one proves its own liveness;
//! - [`KafkaBus::subscribe`] reads *every* partition with a plain `assign()` (no consumer group,
//!   no commits: each instance must see every message), starting at the high watermarks the bus
//!   saw in [`KafkaBus::connect`] ([`KafkaBus::start_positions`]).
//!
//! The bus holds no cache logic: the caller applies what it reads and tracks the positions.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cal_cache::{BusError, Invalidation, InvalidationBus, Position};
use futures::stream::{self, BoxStream};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

/// How to reach the brokers and which topic to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// The invalidation topic (default `cache.invalidate`).
    pub topic: String,
    /// Partitions of the topic when this bus creates it (default 1). An existing topic keeps
    /// the partitions it has.
    pub partitions: i32,
    /// `client.id` of the producer and consumer, for the broker's logs (e.g. the instance id).
    pub client_id: String,
    /// How long [`InvalidationBus::publish`] waits for the broker's acknowledgement before it
    /// reports an error (`message.timeout.ms`; default 5 s).
    pub publish_timeout: Duration,
    /// The longest a fetch waits at the broker for new messages (`fetch.wait.max.ms`). A broker
    /// that holds every fetch for this long even when data arrives (tansu does) adds up to this
    /// much to every delivery; shorter means more fetch requests while idle.
    pub fetch_wait: Duration,
    /// The nice value of librdkafka's threads (see [`cal_cache::priority`]): they carry the
    /// invalidations, and on saturated cores a lower value than request handling's keeps the
    /// lag's tail short. `None`: the priority of the thread that connects.
    pub thread_nice: Option<i32>,
}

impl KafkaConfig {
    /// The defaults for `brokers`: topic `cache.invalidate`, 1 partition, client id `cal`, 5 s
    /// publish timeout, [`DEFAULT_FETCH_WAIT`], threads at the connecting thread's priority.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "cache.invalidate".into(),
            partitions: 1,
            client_id: "cal".into(),
            publish_timeout: Duration::from_secs(5),
            fetch_wait: DEFAULT_FETCH_WAIT,
            thread_nice: None,
        }
    }
}

/// Why [`KafkaBus::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaBusError {
    /// librdkafka rejected the configuration or could not create a client.
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    /// The topic could not be created.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    /// The topic's metadata (every partition with a leader) did not show up in time.
    #[error("topic {topic} not ready after {waited:?}: {reason}")]
    TopicNotReady {
        topic: String,
        waited: Duration,
        reason: String,
    },
    /// A partition's high watermark could not be read.
    #[error("reading the high watermark of {topic}/{partition}: {source}")]
    Watermark {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
}

/// The default [`KafkaConfig::fetch_wait`].
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(5);

/// How long `connect` keeps trying to see the topic and read its watermarks.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The Kafka invalidation bus of one instance. See the crate docs.
pub struct KafkaBus {
    topic: String,
    publish_timeout: Duration,
    /// Replaced by a new one when it can no longer produce (see [`KafkaBus::renew_producer`]).
    producer: RwLock<Arc<FutureProducer>>,
    producer_config: ClientConfig,
    /// The consumer settings, for a second [`InvalidationBus::subscribe`].
    consumer_config: ClientConfig,
    /// The consumer `connect` positioned at the start positions; the first `subscribe` takes it.
    first_consumer: Mutex<Option<StreamConsumer>>,
    start: Vec<Position>,
    thread_nice: Option<i32>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("topic", &self.topic)
            .field("start_positions", &self.start)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Creates the topic if it is missing, waits until its partitions have leaders, builds the
    /// producer and a consumer assigned to every partition at its current high watermark, and
    /// returns: from here on nothing published is missed by the first [`Self::subscribe`].
    pub async fn connect(cfg: KafkaConfig) -> Result<KafkaBus, KafkaBusError> {
        let started = Instant::now();
        let mut common = ClientConfig::new();
        common
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", &cfg.client_id)
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.ms", "10")
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "10000");

        // The producer first: its producer id is acquired while the topic is created.
        let publish_ms = cfg.publish_timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut producer_config = common.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("retry.backoff.ms", "10")
            // Connect to the brokers at once instead of on the 500 ms timer of the idempotent
            // producer's id request: otherwise the first publish of a new bus waits for it.
            .set("enable.sparse.connections", "false")
            .set("message.timeout.ms", publish_ms.to_string())
            .set("request.timeout.ms", publish_ms.min(30_000).to_string());
        let producer: FutureProducer = create(&producer_config, cfg.thread_nice)?;

        create_topic(&common, &cfg).await?;

        let mut consumer_config = common;
        consumer_config
            // Required by librdkafka's consumer, never used for membership: no subscribe(), no
            // commits. Unique per client so that no broker-side group state is ever shared.
            .set("group.id", unique_group_id(&cfg.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // After a broker lost its log (an in-memory broker restarted), read what is there
            // rather than skip to the end.
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                cfg.fetch_wait.as_millis().clamp(0, 300_000).to_string(),
            )
            .set("fetch.min.bytes", "1")
            .set("fetch.error.backoff.ms", "10");
        let consumer: Arc<StreamConsumer> = Arc::new(create(&consumer_config, cfg.thread_nice)?);

        let partitions = wait_for_partitions(consumer.clone(), &cfg.topic, started).await?;
        if partitions.len() as i32 != cfg.partitions {
            tracing::info!(
                topic = %cfg.topic,
                partitions = partitions.len(),
                configured = cfg.partitions,
                "the topic exists with another partition count; using all of its partitions"
            );
        }
        let start = high_watermarks(consumer.clone(), &cfg.topic, &partitions).await?;
        assign(&consumer, &cfg.topic, &start)?;
        let consumer = Arc::into_inner(consumer).expect("no other holder of the consumer");
        tracing::info!(
            "messaging.system" = "kafka",
            "messaging.destination.name" = %cfg.topic,
            start = ?start,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kafka invalidation bus connected"
        );
        Ok(KafkaBus {
            topic: cfg.topic,
            publish_timeout: cfg.publish_timeout,
            producer: RwLock::new(Arc::new(producer)),
            producer_config,
            consumer_config,
            first_consumer: Mutex::new(Some(consumer)),
            start,
            thread_nice: cfg.thread_nice,
        })
    }

    /// The high watermark of every partition when this bus connected, by partition: messages
    /// below them were published before this instance started and are not delivered to it.
    pub fn start_positions(&self) -> Vec<Position> {
        self.start.clone()
    }

    /// The topic this bus reads and writes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Replaces `broken` (if it still is the bus's producer) with a new producer, which gets a
    /// new producer id. Needed after a fatal idempotence error, and after a fenced epoch: when a
    /// delivery times out librdkafka bumps the producer epoch on its own, which Kafka accepts
    /// but some Kafka-protocol brokers (tansu) answer with `ProducerFenced` for good.
    fn renew_producer(&self, broken: &Arc<FutureProducer>, cause: &KafkaError) {
        let mut current = self.producer.write().unwrap();
        if !Arc::ptr_eq(&current, broken) {
            return;
        }
        match create::<FutureProducer>(&self.producer_config, self.thread_nice) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                drop(current);
                tracing::warn!(
                    "messaging.system" = "kafka",
                    "messaging.destination.name" = %self.topic,
                    error = %cause,
                    "the kafka producer can no longer publish; replaced it with a new one"
                );
                release(old);
            }
            Err(e) => tracing::error!(error = %e, "creating a new kafka producer failed"),
        }
    }

    fn encode(inv: &Invalidation) -> Result<(Vec<u8>, OwnedHeaders), BusError> {
        let payload = serde_json::to_vec(inv)
            .map_err(|e| BusError::Publish(format!("encoding the invalidation: {e}")))?;
        let headers = inv.trace_context.iter().fold(
            OwnedHeaders::new_with_capacity(inv.trace_context.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                })
            },
        );
        Ok((payload, headers))
    }
}

/// The message key, which picks the partition: the calendar the write changed (the smallest id
/// when it changed several), so that one calendar's changes keep their order in one partition;
/// the publisher for a change of no calendar (users, resources, purges).
fn message_key(inv: &Invalidation) -> String {
    match inv.calendars.iter().min() {
        Some(calendar) => format!("calendar:{calendar}"),
        None => inv.origin.clone(),
    }
}

#[async_trait]
impl InvalidationBus for KafkaBus {
    async fn publish(&self, inv: Invalidation) -> Result<Option<Position>, BusError> {
        if !inv.is_heartbeat() || self.start.len() < 2 {
            return self.send(&inv, None).await.map(Some);
        }
        // A heartbeat goes to every partition: each partition's consumer must prove it is
        // alive, or a stalled one would hide behind the others' heartbeats.
        let sent = futures::future::join_all(
            self.start
                .iter()
                .map(|p| self.send(&inv, Some(p.partition))),
        )
        .await;
        let mut last = None;
        for position in sent {
            last = Some(position?);
        }
        Ok(last)
    }

    fn subscribe(&self) -> BoxStream<'static, Result<Invalidation, BusError>> {
        self.subscription()
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

impl KafkaBus {
    /// Publishes `inv` once, to `partition` or to its key's partition, and waits for the
    /// broker's acknowledgement.
    async fn send(&self, inv: &Invalidation, partition: Option<i32>) -> Result<Position, BusError> {
        let (payload, headers) = Self::encode(inv)?;
        let key = message_key(inv);
        let mut record = FutureRecord::to(&self.topic)
            .key(key.as_bytes())
            .payload(&payload)
            .headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let producer = self.producer.read().unwrap().clone();
        // librdkafka fails the delivery after `message.timeout.ms` (= publish_timeout); the
        // outer timeout only guards against a delivery report that never comes.
        let delivery = tokio::time::timeout(
            self.publish_timeout * 2 + Duration::from_secs(1),
            producer.send(record, Timeout::After(self.publish_timeout)),
        )
        .await;
        if let Ok(Err((e, _))) = &delivery
            && needs_new_producer(e, &producer)
        {
            self.renew_producer(&producer, e);
        }
        release(producer);
        match delivery {
            Ok(Ok(d)) => {
                tracing::debug!(
                    "messaging.system" = "kafka",
                    "messaging.destination.name" = %self.topic,
                    "messaging.kafka.partition" = d.partition,
                    "messaging.kafka.offset" = d.offset,
                    seq = inv.seq,
                    keys = inv.keys.len(),
                    "published invalidation"
                );
                Ok(Position {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Ok(Err((e, _))) => {
                tracing::debug!(
                    "messaging.system" = "kafka",
                    "messaging.destination.name" = %self.topic,
                    error = %e,
                    seq = inv.seq,
                    "publishing an invalidation failed"
                );
                Err(BusError::Publish(e.to_string()))
            }
            Err(_) => Err(BusError::Publish(format!(
                "no delivery report after {:?}",
                self.publish_timeout * 2
            ))),
        }
    }

    /// Every message of every partition from [`KafkaBus::start_positions`] on, in offset order
    /// within each partition, with `position` set. A message that does not decode is reported as
    /// `Err(BusError::Subscribe)` (and skipped), as are consumer errors (broker unreachable);
    /// after either the stream goes on.
    ///
    /// Meant to be called once per bus: the first call takes the consumer that `connect`
    /// positioned. A later call creates another consumer, assigned at the same start positions,
    /// so it too gets every message from there on (each stream reads independently; neither
    /// takes messages from the other). If that consumer cannot be created the stream yields one
    /// `Err(BusError::Subscribe)` and ends.
    fn subscription(&self) -> BoxStream<'static, Result<Invalidation, BusError>> {
        let first = self.first_consumer.lock().unwrap().take();
        let consumer = match first {
            Some(c) => c,
            None => match create::<StreamConsumer>(
                self.consumer_config
                    .clone()
                    .set("group.id", unique_group_id("cal-resubscribe")),
                self.thread_nice,
            )
            .map_err(KafkaBusError::from)
            .and_then(|c| assign(&c, &self.topic, &self.start).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    return Box::pin(stream::once(async move {
                        Err(BusError::Subscribe(format!(
                            "creating another kafka consumer: {e}"
                        )))
                    }));
                }
            },
        };
        let topic: Arc<str> = self.topic.as_str().into();
        Box::pin(stream::unfold(
            (consumer, topic),
            |(consumer, topic)| async move {
                let item = match consumer.recv().await {
                    Ok(m) => decode(&m, &topic),
                    Err(e) => Err(BusError::Subscribe(format!("kafka consumer: {e}"))),
                };
                Some((item, (consumer, topic)))
            },
        ))
    }
}

/// A client whose threads (librdkafka's, and rdkafka's polling thread) run at `nice`.
fn create<C: rdkafka::config::FromClientConfig + Send>(
    config: &ClientConfig,
    nice: Option<i32>,
) -> Result<C, KafkaError> {
    cal_cache::priority::at_nice(nice, "kafka client threads", || config.create())
}

/// Errors after which the producer will not publish again.
fn needs_new_producer(e: &KafkaError, producer: &FutureProducer) -> bool {
    use RDKafkaErrorCode as C;
    producer.client().fatal_error().is_some()
        || matches!(
            e.rdkafka_error_code(),
            Some(
                C::ProducerFenced
                    | C::InvalidProducerEpoch
                    | C::OutOfOrderSequenceNumber
                    | C::UnknownProducerId
                    | C::InvalidProducerIdMapping
                    | C::Fatal
            )
        )
}

/// Drops a handle on a producer; the last one is dropped off the async threads, because
/// dropping a producer purges, flushes and joins its polling thread.
fn release(p: Arc<FutureProducer>) {
    if let Some(last) = Arc::into_inner(p) {
        tokio::task::spawn_blocking(move || drop(last));
    }
}

/// The invalidation in `m`, with its position, and the trace context from its headers.
fn decode(m: &BorrowedMessage<'_>, topic: &str) -> Result<Invalidation, BusError> {
    let position = Position {
        partition: m.partition(),
        offset: m.offset(),
    };
    tracing::trace!(
        "messaging.system" = "kafka",
        "messaging.destination.name" = topic,
        "messaging.kafka.partition" = position.partition,
        "messaging.kafka.offset" = position.offset,
        "received invalidation"
    );
    let payload = m
        .payload()
        .ok_or_else(|| BusError::Subscribe(format!("message at {position} has no payload")))?;
    let mut inv: Invalidation = serde_json::from_slice(payload).map_err(|e| {
        tracing::warn!(
            "messaging.system" = "kafka",
            "messaging.destination.name" = topic,
            "messaging.kafka.partition" = position.partition,
            "messaging.kafka.offset" = position.offset,
            error = %e,
            "undecodable invalidation"
        );
        BusError::Subscribe(format!("undecodable message at {position}: {e}"))
    })?;
    inv.position = Some(position);
    if let Some(headers) = m.headers() {
        let from_headers: Vec<(String, String)> = headers
            .iter()
            .filter_map(|h| {
                let v = std::str::from_utf8(h.value?).ok()?;
                Some((h.key.to_string(), v.to_string()))
            })
            .collect();
        if !from_headers.is_empty() {
            inv.trace_context = from_headers;
        }
    }
    Ok(inv)
}

fn unique_group_id(client_id: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{client_id}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn create_topic(common: &ClientConfig, cfg: &KafkaConfig) -> Result<(), KafkaBusError> {
    let admin: AdminClient<DefaultClientContext> = common.create()?;
    let topic = NewTopic::new(
        &cfg.topic,
        cfg.partitions.max(1),
        TopicReplication::Fixed(1),
    );
    let opts = AdminOptions::new().request_timeout(Some(CONNECT_TIMEOUT));
    let results =
        admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| KafkaBusError::CreateTopic {
                topic: cfg.topic.clone(),
                reason: e.to_string(),
            })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(KafkaBusError::CreateTopic {
                    topic: cfg.topic.clone(),
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The topic's partitions, once metadata shows every one of them with a leader.
async fn wait_for_partitions(
    consumer: Arc<StreamConsumer>,
    topic: &str,
    started: Instant,
) -> Result<Vec<i32>, KafkaBusError> {
    let mut last = String::from("no metadata yet");
    while started.elapsed() < CONNECT_TIMEOUT {
        let c = consumer.clone();
        let t = topic.to_string();
        let md =
            tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), Duration::from_secs(2)))
                .await
                .expect("metadata task");
        match md {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    if t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
                    {
                        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                        ids.sort_unstable();
                        return Ok(ids);
                    }
                    last = "a partition has no leader yet".into();
                }
                Some(t) => last = format!("topic error {:?}", t.error()),
                None => last = "topic not in metadata".into(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(KafkaBusError::TopicNotReady {
        topic: topic.to_string(),
        waited: started.elapsed(),
        reason: last,
    })
}

async fn high_watermarks(
    consumer: Arc<StreamConsumer>,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Position>, KafkaBusError> {
    let t = topic.to_string();
    let ps = partitions.to_vec();
    tokio::task::spawn_blocking(move || {
        ps.into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&t, p, CONNECT_TIMEOUT)
                    .map(|(_low, high)| Position {
                        partition: p,
                        offset: high,
                    })
                    .map_err(|source| KafkaBusError::Watermark {
                        topic: t.clone(),
                        partition: p,
                        source,
                    })
            })
            .collect()
    })
    .await
    .expect("watermark task")
}

fn assign(c: &StreamConsumer, topic: &str, at: &[Position]) -> Result<(), KafkaBusError> {
    let mut tpl = TopicPartitionList::with_capacity(at.len());
    for p in at {
        tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.offset))?;
    }
    c.assign(&tpl)?;
    Ok(())
}
