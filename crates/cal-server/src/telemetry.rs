//! Logs and traces: the process's one tracing subscriber.
//!
//! - Logs go to stderr through `tracing`'s fmt layer, filtered by `RUST_LOG` (default
//!   `info,sqlx=warn`): pretty in dev, one JSON object per line in prod. A JSON line written
//!   inside a traced request carries the trace and span ids of its span (`trace_id`, `span_id`),
//!   so a log line leads to its trace in Jaeger.
//! - Traces are exported over OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (Jaeger's collector
//!   accepts it on 4317) when that is set, and not at all otherwise: no exporter, no OpenTelemetry
//!   layer, and the debug-level spans of loader batches, cache tiers, Redis and SQL are never
//!   created under the default log filter. The resource follows the OpenTelemetry conventions:
//!   `service.name` from `OTEL_SERVICE_NAME` (default `calendar`), `service.version`,
//!   `service.instance.id` (host and process id), plus `OTEL_RESOURCE_ATTRIBUTES`. Sampling is
//!   parent-based with a trace-id ratio for root spans (`OTEL_TRACES_SAMPLER_ARG`, default 1).
//!   Incoming W3C `traceparent` headers are honoured (the W3C trace-context propagator is
//!   installed globally; `cal_api::observe` extracts it).
//!
//! The exporter sends its batches from a thread of its own through a gRPC channel that lives on
//! the tokio runtime: [`init`] must run inside the runtime, and [`Telemetry::shutdown`] (which
//! flushes) before the runtime is dropped.
//!
//! What is never logged or exported: request headers (the `Authorization` bearer token among
//! them), GraphQL variables, the query text (only its SHA-256), SQL parameters, the JWT secret
//! (`Settings` and `ApiConfig` hold it as a `SecretString`, whose `Debug` is redacted).

use anyhow::{Context as _, Result};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

/// The log filter when `RUST_LOG` is unset (or invalid).
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// `service.name` of the traces when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "calendar";

/// Share of root traces sampled when `OTEL_TRACES_SAMPLER_ARG` is unset (or not a number).
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;

/// What [`init`] sets up.
pub struct TelemetryConfig {
    /// JSON lines (prod) instead of pretty logs (dev).
    pub json_logs: bool,
    /// `RUST_LOG` syntax; `None`: [`DEFAULT_LOG_FILTER`].
    pub log_filter: Option<String>,
    /// Where logs go; `None`: stderr.
    pub log_writer: Option<BoxMakeWriter>,
    /// OTLP/gRPC collector (`http://host:4317`); `None`: no trace export at all.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    pub service_version: String,
    pub service_instance_id: String,
    /// Share of root traces sampled, in `[0, 1]`; children follow their parent's decision.
    pub sample_ratio: f64,
}

impl TelemetryConfig {
    /// From the environment: `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_TRACES_SAMPLER_ARG` (`OTEL_RESOURCE_ATTRIBUTES` is read by the SDK).
    pub fn from_env(json_logs: bool) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            json_logs,
            log_filter: var("RUST_LOG"),
            log_writer: None,
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            service_name: var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            service_instance_id: format!("{}-{}", hostname(), std::process::id()),
            sample_ratio: var("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .map_or(DEFAULT_SAMPLE_RATIO, |r| r.clamp(0.0, 1.0)),
        }
    }
}

/// This host's name: `HOSTNAME`, else `/etc/hostname`, else `calendar`. Part of the trace
/// resource's `service.instance.id` here and of the bus origin in the binary (`serve.rs`).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map_or_else(|| "calendar".to_owned(), |h| h.trim().to_owned())
}

/// The installed telemetry; flush or shut it down before the runtime goes.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now (blocks; call it off the runtime's worker threads, e.g.
    /// in `spawn_blocking`).
    pub fn flush(&self) -> Result<()> {
        if let Some(p) = &self.provider {
            p.force_flush().context("flushing traces")?;
        }
        Ok(())
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace exporter shutdown: {e}");
        }
    }
}

/// Installs the global subscriber (and, with an OTLP endpoint, the exporter, the tracer provider
/// and the W3C propagator). Fails if a global subscriber is already installed.
pub fn init(cfg: TelemetryConfig) -> Result<Telemetry> {
    let filter = cfg
        .log_filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER));
    let writer = cfg
        .log_writer
        .unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr));
    // Spans reach the log layer only when traces are exported (then a line carries its trace and
    // span ids). Otherwise the log layer sees events alone: it would format every request
    // span's fields on creation and on each record, which cost ~15% of a cached answer's CPU,
    // for context no line needs without a trace to look up.
    let spans_in_logs = cfg.otlp_endpoint.is_some();
    let filter = filter.and(filter_fn(move |meta| spans_in_logs || meta.is_event()));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if cfg.json_logs {
        layers.push(
            tracing_subscriber::fmt::layer()
                .json()
                .event_format(WithTraceIds(
                    tracing_subscriber::fmt::format()
                        .json()
                        .with_current_span(true)
                        .with_span_list(false),
                ))
                .with_writer(writer)
                .with_filter(filter)
                .boxed(),
        );
    } else {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_filter(filter)
                .boxed(),
        );
    }

    let provider = match &cfg.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .context("OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
            let resource = Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attributes([
                    KeyValue::new("service.version", cfg.service_version.clone()),
                    KeyValue::new("service.instance.id", cfg.service_instance_id.clone()),
                ])
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    cfg.sample_ratio,
                ))))
                .with_resource(resource)
                .build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("calendar"))
                    .with_threads(false)
                    .with_filter(trace_filter())
                    .boxed(),
            );
            Some(provider)
        }
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .context("a global tracing subscriber is already installed")?;
    if let Some(endpoint) = &cfg.otlp_endpoint {
        tracing::info!(
            endpoint = %endpoint,
            service = %cfg.service_name,
            sample_ratio = cfg.sample_ratio,
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Telemetry { provider })
}

/// What goes into traces: this service's spans down to debug (loader batches, cache tiers, Redis,
/// SQL), info elsewhere, and nothing from the exporter's own stack (which would trace itself).
fn trace_filter() -> Targets {
    let ours = [
        "cal_api",
        "cal_cache",
        "cal_storage",
        "cal_bus_kafka",
        "cal_server",
        "calendar",
    ];
    let quiet = [
        "opentelemetry",
        "tonic",
        "h2",
        "hyper",
        "tower",
        "reqwest",
        "rdkafka",
    ];
    let targets = Targets::new().with_default(Level::INFO);
    let targets = ours
        .into_iter()
        .fold(targets, |t, target| t.with_target(target, Level::DEBUG));
    quiet
        .into_iter()
        .fold(targets, |t, target| t.with_target(target, LevelFilter::OFF))
}

/// JSON lines with the OpenTelemetry ids of the event's span in front: `{"trace_id":…,
/// "span_id":…, …}`. Without an exported span (no exporter, or outside any request) the line is
/// the plain JSON format.
struct WithTraceIds(Format<Json>);

impl<S> FormatEvent<S, JsonFields> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            span.scope().find_map(|s| {
                let ext = s.extensions();
                let data = ext.get::<tracing_opentelemetry::OtelData>()?;
                Some((data.trace_id()?, data.span_id()?))
            })
        });
        let Some((trace_id, span_id)) = ids.filter(|(t, _)| *t != opentelemetry::TraceId::INVALID)
        else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}
