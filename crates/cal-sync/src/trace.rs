//! W3C trace context across the bus: a write's request span travels in its change-log row and
//! message, so the publish on its relay and the apply on every other instance link to it.

use opentelemetry::propagation::Injector;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct PairsInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for PairsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The current span's W3C trace context (`traceparent`, `tracestate`), to carry in a message;
/// empty when traces are not exported.
pub fn current_context() -> Vec<(String, String)> {
    let cx = Span::current().context();
    let mut out = Vec::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut PairsInjector(&mut out))
    });
    out
}

/// Makes the span of a message's handling a child of the span that sent it (`context` as
/// returned by [`current_context`] on the sender).
pub fn set_remote_parent(span: &Span, context: &[(String, String)]) {
    if span.is_disabled() || context.is_empty() {
        return;
    }
    let map: std::collections::HashMap<String, String> = context.iter().cloned().collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&map));
    let _ = span.set_parent(cx);
}
