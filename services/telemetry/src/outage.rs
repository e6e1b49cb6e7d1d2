//! Export failures said once per outage, not once a second.
//!
//! The SDK logs every failed export (one line per signal, per process, per interval: hundreds
//! while a collector is down). [`Quiet`] wraps an exporter: the first failure of an outage is
//! logged with its cause, the following ones are only counted, and the recovery is logged
//! with how long it lasted and how much telemetry was dropped meanwhile.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
    trace::{SpanData, SpanExporter},
};

/// The state of one signal's export.
#[derive(Debug, Default)]
pub struct Outage {
    /// Since when exports fail, and how many batches and items were dropped since.
    failing: Mutex<Option<(Instant, u64, u64)>>,
}

impl Outage {
    /// Records one export's result; says so when an outage starts or ends. Answers whether
    /// the export succeeded.
    pub fn record(&self, signal: &str, endpoint: &str, items: u64, result: &OTelSdkResult) -> bool {
        let mut failing = self.failing.lock().expect("lock");
        match (result, failing.as_mut()) {
            (Ok(()), None) => true,
            (Ok(()), Some((since, batches, dropped))) => {
                tracing::warn!(
                    signal,
                    endpoint,
                    after = ?round(since.elapsed()),
                    batches_dropped = *batches,
                    dropped = *dropped,
                    "telemetry export works again"
                );
                *failing = None;
                true
            }
            (Err(err), None) => {
                tracing::warn!(
                    signal,
                    endpoint,
                    error = %err,
                    "telemetry export fails; what cannot be sent is dropped (counted, and said once the collector is back)"
                );
                *failing = Some((Instant::now(), 1, items));
                false
            }
            (Err(_), Some((_, batches, dropped))) => {
                *batches += 1;
                *dropped += items;
                false
            }
        }
    }

    /// Whether exports fail now.
    pub fn failing(&self) -> bool {
        self.failing.lock().expect("lock").is_some()
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// An exporter whose failures are said once per outage ([`Outage`]); it reports success to
/// the SDK either way, so the SDK does not log each failure again.
#[derive(Debug)]
pub struct Quiet<E> {
    inner: E,
    signal: &'static str,
    endpoint: String,
    outage: Arc<Outage>,
}

impl<E> Quiet<E> {
    /// Wraps `inner`, exporting `signal` (`spans`, `metrics`) to `endpoint`.
    pub fn new(inner: E, signal: &'static str, endpoint: &str) -> Self {
        Self {
            inner,
            signal,
            endpoint: endpoint.to_owned(),
            outage: Arc::default(),
        }
    }

    /// Its outage state.
    pub fn outage(&self) -> Arc<Outage> {
        self.outage.clone()
    }
}

impl<E: SpanExporter> SpanExporter for Quiet<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let items = batch.len() as u64;
        let result = self.inner.export(batch).await;
        self.outage
            .record(self.signal, &self.endpoint, items, &result);
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Quiet<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.outage.record(self.signal, &self.endpoint, 1, &result);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    #[test]
    fn an_outage_is_counted_and_ends_with_the_next_success() {
        let outage = Outage::default();
        let failed: OTelSdkResult = Err(OTelSdkError::InternalFailure("down".into()));
        assert!(outage.record("spans", "http://c", 3, &Ok(())));
        assert!(!outage.failing());
        for _ in 0..5 {
            assert!(!outage.record("spans", "http://c", 10, &failed));
        }
        assert_eq!(
            outage.failing.lock().unwrap().map(|(_, b, d)| (b, d)),
            Some((5, 50))
        );
        assert!(outage.record("spans", "http://c", 1, &Ok(())));
        assert!(!outage.failing());
    }
}
