//! Log lines as JSON, one object per line, for a log pipeline: each carries the trace and span
//! ids of the request it was written for (so a line is found from a trace, and the trace from
//! a line) and the process that wrote it (a node runs a front door and a worker per group).
//!
//! ```json
//! {"fields":{"user":"bob"},"group":"shared","level":"WARN","message":"push failed",
//!  "pid":4242,"service":"mesh-worker","span":"rpc","span_id":"00f067aa0ba902b7",
//!  "target":"mesh_message","timestamp":"2026-12-07T04:50:00.123456Z",
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! ```
//!
//! (Keys in alphabetical order.)

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

use crate::Process;

/// The JSON event format. A line's trace is the OpenTelemetry context current when it is
/// written: the tracing-opentelemetry layer makes a request span's context current while the
/// span is entered, whatever the log filter lets through (the default `warn` filter drops the
/// INFO request spans from the log's own view of the span scope).
#[derive(Clone)]
pub(crate) struct JsonLines {
    service: String,
    group: Option<String>,
    pid: u32,
}

impl JsonLines {
    pub(crate) fn new(process: &Process) -> Self {
        Self {
            service: process.service_name.clone(),
            group: process
                .attributes
                .iter()
                .find(|(key, _)| *key == "mesh.worker.group")
                .map(|(_, value)| value.clone()),
            pid: std::process::id(),
        }
    }
}

/// The trace and span ids of the OpenTelemetry context current on this thread, if any.
fn current_trace() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    })
}

/// The fields of an event, as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::from(timestamp));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let message = fields
            .0
            .remove("message")
            .unwrap_or_else(|| Value::from(""));
        line.insert("message".into(), message);
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), Value::from(span.name()));
        }
        if let Some((trace_id, span_id)) = current_trace() {
            line.insert("trace_id".into(), Value::from(trace_id));
            line.insert("span_id".into(), Value::from(span_id));
        }
        line.insert("service".into(), Value::from(self.service.as_str()));
        if let Some(group) = &self.group {
            line.insert("group".into(), Value::from(group.as_str()));
        }
        line.insert("pid".into(), Value::from(self.pid));
        writeln!(writer, "{}", Value::Object(line))
    }
}
