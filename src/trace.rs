//! Traces: the W3C trace context (`traceparent`) carried in gRPC metadata from client to node,
//! from node to leader and from a task's submit to the worker that runs it, and spans exported
//! over OTLP when `--otlp-endpoint` is given (opentelemetry + tracing-opentelemetry).
//!
//! Without an endpoint nothing is exported and no span context is made: calls carry no
//! `traceparent` of their own, but a submit's incoming one is still kept with its task.
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Longer `traceparent`s are not kept (the limit the state machine enforces).
pub use crate::state::MAX_TRACE_PARENT_LEN;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<opentelemetry_sdk::trace::TracerProvider> = OnceLock::new();

/// Whether spans are exported (an OTLP endpoint was given).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The layer that turns this process's spans into OpenTelemetry spans exported to `endpoint`
/// (e.g. `http://127.0.0.1:4317`) as `service`. A trace this process starts is sampled with
/// probability `sample_ratio` (0 to 1); one it continues follows its caller's decision. Spans
/// are batched and sent from a thread of their own; [`shutdown`] sends what is left.
pub fn otlp_layer<S>(
    endpoint: &str,
    service: &str,
    sample_ratio: f64,
) -> Result<impl tracing_subscriber::Layer<S>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let provider = opentelemetry_sdk::trace::TracerProvider::builder()
        .with_batch_exporter(exporter, opentelemetry_sdk::runtime::TokioCurrentThread)
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(sample_ratio.clamp(0.0, 1.0)),
        )))
        .with_resource(opentelemetry_sdk::Resource::new([KeyValue::new(
            "service.name",
            service.to_string(),
        )]))
        .build();
    let tracer = provider.tracer("leasekeeper");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans not yet exported (call before the process exits), waiting at most 5 s. The
/// wait runs off the runtime: the exporter's connection is driven by this runtime.
pub async fn shutdown() {
    let Some(p) = PROVIDER.get() else { return };
    let flush = tokio::task::spawn_blocking(move || p.force_flush());
    match tokio::time::timeout(std::time::Duration::from_secs(5), flush).await {
        Ok(Ok(results)) => {
            for r in results {
                if let Err(e) = r {
                    eprintln!("warning: exporting the last spans: {e}");
                }
            }
        }
        _ => eprintln!("warning: the last spans were not exported within 5 s"),
    }
}

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A `traceparent` with only the flag this propagator knows (sampled) kept: newer senders (the
/// Python SDK) also set W3C level 2's "random" flag, which this propagator would refuse.
fn normalized(traceparent: &str) -> Option<String> {
    let (head, flags) = traceparent.trim().rsplit_once('-')?;
    let flags = u8::from_str_radix(flags, 16).ok()? & 0x01;
    Some(format!("{head}-{flags:02x}"))
}

/// The one `traceparent` an extraction looks at.
struct One(Option<String>);

impl Extractor for One {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()?)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct Capture(Option<String>);

impl Injector for Capture {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Adds the current span's context to outgoing metadata (nothing outside a traced span).
pub fn inject_current(md: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(md));
    }
}

/// The context incoming metadata carries (empty without a valid `traceparent`).
pub fn extract(md: &MetadataMap) -> Context {
    let tp = md.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    from_traceparent(tp.unwrap_or(""))
}

/// The context of a stored `traceparent` string (empty if it does not parse).
pub fn from_traceparent(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&One(normalized(traceparent)))
}

/// The `traceparent` of incoming metadata, if it is a well-formed one (what a submit keeps with
/// its task). Checked by parsing, so nothing arbitrary is stored.
pub fn incoming_traceparent(md: &MetadataMap) -> Option<String> {
    let raw = md.get(TRACEPARENT)?.to_str().ok()?;
    if raw.len() > MAX_TRACE_PARENT_LEN {
        return None;
    }
    let cx = extract(md);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| raw.to_string())
}

/// The current span's `traceparent`, when spans are being made.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut c = Capture(None);
    TraceContextPropagator::new().inject_context(&cx, &mut c);
    c.0
}

/// The trace id of a context, as 32 hex digits (None outside a trace).
pub fn trace_id(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Makes `span` a child of `parent` when that carries a trace, and records its trace id in the
/// span's `trace_id` field (so that log lines inside it carry it).
pub fn adopt(span: &tracing::Span, parent: Context) {
    if !enabled() {
        return;
    }
    if parent.span().span_context().is_valid() {
        span.set_parent(parent);
    }
    if let Some(id) = trace_id(&span.context()) {
        span.record("trace_id", id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, good.parse().unwrap());
        assert_eq!(incoming_traceparent(&md).as_deref(), Some(good));
        assert_eq!(
            trace_id(&from_traceparent(good)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // W3C level 2's random flag (the Python SDK sets it) is accepted.
        let random = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, random.parse().unwrap());
        assert_eq!(incoming_traceparent(&md).as_deref(), Some(random));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-and-far-too-long-to-keep",
        ] {
            let mut md = MetadataMap::new();
            md.insert(TRACEPARENT, bad.parse().unwrap());
            assert_eq!(incoming_traceparent(&md), None, "{bad:?}");
        }
        assert_eq!(incoming_traceparent(&MetadataMap::new()), None);
    }
}
