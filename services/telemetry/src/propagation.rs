//! W3C trace context between a [`RequestContext`] (which travels as tonic metadata and AMQP
//! headers) and the current span.

use mesh_contract::{EventSpec, RequestContext, TraceContext};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

struct Read<'a>(&'a TraceContext);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.0.traceparent.as_deref(),
            TRACESTATE => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct Write<'a>(&'a mut TraceContext);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = Some(value),
            TRACESTATE => self.0.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

/// The remote parent `trace` names (an empty context when it names none, or when telemetry
/// is not installed).
pub fn parent_of(trace: &TraceContext) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Read(trace)))
}

/// The trace context that makes `span` the parent of whatever receives it; `None` when the
/// span is not recorded (telemetry off), so the caller keeps the context it had.
pub fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut trace = TraceContext::default();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Write(&mut trace))
    });
    trace.traceparent.is_some().then_some(trace)
}

/// Makes `span` a child of `trace` (when it names a parent) and answers the trace context that
/// carries `span` on: `trace` itself when telemetry is off.
pub fn carry(trace: &TraceContext, span: &tracing::Span) -> TraceContext {
    if trace.traceparent.is_some() {
        let _ = span.set_parent(parent_of(trace));
    }
    trace_of(span).unwrap_or_else(|| trace.clone())
}

/// [`carry`] for a request context: the context that carries `span` on.
pub fn continue_trace(ctx: &RequestContext, span: &tracing::Span) -> RequestContext {
    let mut ctx = ctx.clone();
    ctx.trace = carry(&ctx.trace, span);
    ctx
}

/// Where an event travels, as the OpenTelemetry messaging conventions name it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Destination<'a> {
    /// The exchange (`messaging.destination.name`; the span is named after it).
    pub exchange: &'a str,
    /// The routing key (`messaging.rabbitmq.destination.routing_key`).
    pub routing_key: &'a str,
    /// The queue a consumer reads (`messaging.consumer.group.name`).
    pub queue: Option<&'a str>,
    /// The message's id (`messaging.message.id`), when known at the start; see
    /// [`EventTrace::identify`].
    pub message_id: Option<&'a str>,
}

impl<'a> Destination<'a> {
    /// Where a publish of `event` to `exchange` goes (the message id known later).
    pub fn publish(exchange: &'a str, event: &'static EventSpec) -> Self {
        Self {
            exchange,
            routing_key: event.routing_key,
            ..Self::default()
        }
    }
}

/// One publish or consume of an event, traced: its span continues the trace of the message's
/// context, and [`EventTrace::finish`] records the outcome on the span and in the metrics.
/// Transports open one per publish and per delivery.
///
/// The span follows the messaging conventions (`publish mesh.mall.order.v1`, kind PRODUCER or
/// CONSUMER, `messaging.system`, `messaging.operation.name` / `.type`,
/// `messaging.destination.name`, the routing key, the message id, the consumer's queue) and
/// keeps the mesh's own attributes (`tenant`, `service`, `contract.version`, `event`,
/// `outcome`).
#[derive(Debug)]
pub struct EventTrace {
    span: tracing::Span,
    tenant: String,
    event: &'static EventSpec,
    op: &'static str,
}

impl EventTrace {
    /// Starts tracing one publish (`op` = `publish`) or one consume (`op` = `process`) of
    /// `event` on the transport `system` (`rabbitmq`, `embedded`) at `destination`; answers
    /// the context that carries this span on (into the message's headers, or to the handler).
    pub fn start(
        system: &'static str,
        op: &'static str,
        ctx: &RequestContext,
        event: &'static EventSpec,
        destination: &Destination<'_>,
    ) -> (Self, RequestContext) {
        let (kind, op_type) = if op == "publish" {
            ("producer", "send")
        } else {
            ("consumer", "process")
        };
        let span = tracing::info_span!(
            target: "mesh::event",
            "event",
            otel.name = %format_args!("{op} {}", destination.exchange),
            otel.kind = kind,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            messaging.system = system,
            messaging.operation.name = op,
            messaging.operation.type = op_type,
            messaging.destination.name = destination.exchange,
            messaging.rabbitmq.destination.routing_key = destination.routing_key,
            messaging.message.id = destination.message_id,
            messaging.consumer.group.name = destination.queue,
            error.type = tracing::field::Empty,
            tenant = %ctx.tenant,
            service = event.service,
            contract.version = event.version,
            event = event.name,
            request_id = %ctx.request_id,
            outcome = tracing::field::Empty,
        );
        let ctx = continue_trace(ctx, &span);
        let trace = Self {
            span,
            tenant: ctx.tenant.to_string(),
            event,
            op,
        };
        (trace, ctx)
    }

    /// Records the message's id, once the transport gave it one.
    pub fn identify(&self, message_id: &str) {
        self.span.record("messaging.message.id", message_id);
    }

    /// The span, to instrument the work with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// [`EventTrace::finish`] for a failure, with its cause as the span's status message
    /// (`error.type` stays the outcome: few values, fit for grouping).
    pub fn fail(self, outcome: &'static str, cause: &str) {
        self.span.record("otel.status_description", cause);
        self.finish(outcome, true);
    }

    /// Records how it ended (`ok`, `error`, `dead_lettered`); `failed` marks the span as an
    /// error.
    pub fn finish(self, outcome: &'static str, failed: bool) {
        if failed {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", outcome);
        }
        self.span.record("outcome", outcome);
        crate::metrics::event(
            &self.tenant,
            self.event.service,
            self.event.name,
            self.op,
            outcome,
        );
    }
}
