//! What a deployment says about telemetry, and installing it in a process.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, fmt::format::FmtSpan, layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::json_log::JsonLines;
pub use mesh_config::deploy::{LogFormat, TelemetryConfig};

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is invalid.
    #[error("telemetry: {field}: {message}")]
    Invalid {
        /// The setting.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("telemetry: OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// The exporter's reason.
        message: String,
    },
    /// A subscriber was installed already in this process.
    #[error("telemetry: a tracing subscriber is installed already")]
    AlreadyInstalled,
}

/// Keeps the exporters of [`init`] running; dropping it sends what is buffered.
#[must_use = "dropping it stops export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Sends what is buffered and stops exporting, without blocking the runtime (dropping
    /// does the same, blocking the thread it runs on: the gRPC exporter then needs another
    /// runtime thread to make progress).
    pub async fn shutdown(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    /// Sends what is buffered now.
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer {
            let _ = tracer.force_flush();
        }
        if let Some(meter) = &self.meter {
            let _ = meter.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown_with_timeout(Duration::from_secs(2));
        }
        if let Some(meter) = self.meter.take() {
            let _ = meter.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// The target prefix of mesh spans (`mesh::rpc`, `mesh::event`): the ones exported.
const MESH_SPANS: &str = "mesh::";

/// Installs telemetry in this process as `service_name` (`mesh-worker`, say). Logs follow
/// `RUST_LOG` (default `default_log`). Must be called inside a Tokio runtime when an endpoint
/// is set (the gRPC exporter's connection lives there).
pub fn init(
    service_name: &str,
    config: &TelemetryConfig,
    default_log: &str,
) -> Result<Telemetry, TelemetryError> {
    init_as(&Process::new(service_name), config, default_log)
}

/// Who a process is, in the resource every span and metric it exports carries: several
/// processes of one mesh (the front door, a worker per group) are told apart by it, and a
/// restarted process by its instance id.
#[derive(Clone, Debug)]
pub struct Process {
    /// `service.name`: `mesh-front-door`, `mesh-worker` ...
    pub service_name: String,
    /// More resource attributes (`mesh.worker.group`, `mesh.tenants`).
    pub attributes: Vec<(&'static str, String)>,
}

impl Process {
    /// A process named `service_name`, with no further attributes.
    pub fn new(service_name: &str) -> Self {
        Self {
            service_name: service_name.to_owned(),
            attributes: Vec::new(),
        }
    }

    /// The same, with `key = value` in its resource.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// Its resource: `service.name`, `service.version` (this build of the mesh),
    /// `service.instance.id` (new for every start), `process.pid`, and the attributes given.
    pub fn resource(&self) -> Resource {
        let mut attributes = vec![
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
            opentelemetry::KeyValue::new("process.pid", i64::from(std::process::id())),
        ];
        attributes.extend(
            self.attributes
                .iter()
                .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone())),
        );
        Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attributes(attributes)
            .build()
    }
}

/// [`init`] as `process`: its resource identifies it among the mesh's processes.
pub fn init_as(
    process: &Process,
    config: &TelemetryConfig,
    default_log: &str,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // static directives only: a callsite's interest is decided once and cached, so the
    // HTTP/2 stack's many trace events cost nothing per call when they are off
    let mut directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default_log.to_owned());
    if config.console {
        directives.push_str(",mesh::rpc=info,mesh::event=info");
    }
    let logs = EnvFilter::try_new(&directives).map_err(|e| TelemetryError::Invalid {
        field: "RUST_LOG".into(),
        message: format!("{directives:?}: {e}"),
    })?;
    let json = (config.log_format == LogFormat::Json).then(|| JsonLines::new(process));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(if config.console {
            FmtSpan::CLOSE
        } else {
            FmtSpan::NONE
        });
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match &json {
        Some(json) => fmt.event_format(json.clone()).with_filter(logs).boxed(),
        None => fmt.with_filter(logs).boxed(),
    };
    let mut telemetry = Telemetry::default();
    let resource = process.resource();
    let interval = Duration::from_millis(config.export_interval_ms.max(10));
    let mut meter = SdkMeterProvider::builder().with_resource(resource.clone());
    let otel = match &config.otlp_endpoint {
        Some(endpoint) => {
            let failed = |e: &dyn std::fmt::Display| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            };
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| failed(&e))?;
            // a collector that is down is said once per outage, not once per export
            let spans = crate::outage::Quiet::new(spans, "spans", endpoint);
            let batch = BatchSpanProcessor::builder(spans)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(interval)
                        .with_max_queue_size(8192)
                        .build(),
                )
                .build();
            let tracer = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_resource(resource)
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| failed(&e))?;
            meter = meter.with_reader(
                PeriodicReader::builder(crate::outage::Quiet::new(metrics, "metrics", endpoint))
                    .with_interval(interval)
                    .build(),
            );
            let layer = mesh_spans(&tracer);
            telemetry.tracer = Some(tracer);
            Some(layer)
        }
        // JSON lines carry each request's trace and span ids: the spans get them (from the
        // caller's traceparent, or new) even when nothing is exported
        None if json.is_some() => {
            let tracer = SdkTracerProvider::builder().with_resource(resource).build();
            let layer = mesh_spans(&tracer);
            telemetry.tracer = Some(tracer);
            Some(layer)
        }
        None => None,
    };
    // the same instruments, read by a Prometheus scrape (crate::scrape)
    if config.prometheus_listen.is_some() {
        meter = meter.with_reader(crate::scrape::reader().map_err(|message| {
            TelemetryError::Invalid {
                field: "prometheus_listen".into(),
                message,
            }
        })?);
    }
    if config.otlp_endpoint.is_some() || config.prometheus_listen.is_some() {
        let meter = meter.build();
        opentelemetry::global::set_meter_provider(meter.clone());
        crate::metrics::exported();
        telemetry.meter = Some(meter);
    }
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(telemetry)
}

/// The OpenTelemetry layer of the mesh's own spans (`mesh::rpc`, `mesh::event`), with only
/// what the README lists: no source locations (always this crate's layer), no thread names or
/// busy/idle timings on every span.
fn mesh_spans<S>(
    tracer: &SdkTracerProvider,
) -> tracing_subscriber::filter::Filtered<
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    Targets,
    S,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("mesh"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(Targets::new().with_target(MESH_SPANS, tracing::Level::INFO))
}
