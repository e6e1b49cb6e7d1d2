//! The metrics where operators already look: a Prometheus scrape endpoint's text.
//!
//! The same instruments ([`crate::metrics`]) feed the OTLP export and, when
//! `[telemetry] prometheus_listen` is set, a Prometheus registry read on every scrape
//! (`opentelemetry-prometheus`, the OpenTelemetry project's own exporter). Every point carries
//! the process that recorded it (`service_name`, `mesh_worker_group`), so the expositions of a
//! node's processes [`merge`] into one: `mesh up` serves its own and every worker's at one
//! address.
//!
//! ```
//! let front_door = "# HELP mesh_events_total events\n# TYPE mesh_events_total counter\n\
//!                   mesh_events_total{service_name=\"mesh-front-door\"} 1\n";
//! let worker = "# HELP mesh_events_total events\n# TYPE mesh_events_total counter\n\
//!               mesh_events_total{mesh_worker_group=\"shared\"} 2\n";
//! let node = mesh_telemetry::scrape::merge([front_door, worker]);
//! assert_eq!(node.matches("# TYPE mesh_events_total").count(), 1, "one family");
//! assert_eq!(node.lines().filter(|l| l.starts_with("mesh_events_total{")).count(), 2);
//! ```

use std::{collections::HashMap, sync::OnceLock};

use opentelemetry_prometheus::{PrometheusExporter, ResourceSelector};
use prometheus::{Registry, TextEncoder};

/// The content type of [`render`]'s text (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The resource attributes put on every point: which process of the node recorded it.
const PROCESS_LABELS: [&str; 2] = ["service.name", "mesh.worker.group"];

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The reader [`crate::init`] installs when scraping is on.
pub(crate) fn reader() -> Result<PrometheusExporter, String> {
    let registry = REGISTRY.get_or_init(Registry::new).clone();
    opentelemetry_prometheus::exporter()
        .with_registry(registry)
        .with_resource_selector(ResourceSelector::KeyAllowList(
            PROCESS_LABELS
                .iter()
                .map(|k| opentelemetry::Key::from_static_str(k))
                .collect(),
        ))
        // one scope ("mesh") for every instrument: its labels would only repeat it
        .scope_info_enabled(false)
        .build()
        .map_err(|e| e.to_string())
}

/// This process's metrics in the Prometheus text format; `None` when scraping is off.
pub fn render() -> Option<String> {
    let families = REGISTRY.get()?.gather();
    TextEncoder::new().encode_to_string(&families).ok()
}

/// One exposition made of several: each metric family once (its first `# HELP` and `# TYPE`),
/// followed by the samples every input has of it, in the order families first appear. The
/// inputs' samples must be told apart by their labels (the process labels every point
/// carries), as Prometheus refuses a sample twice.
pub fn merge<'a>(expositions: impl IntoIterator<Item = &'a str>) -> String {
    #[derive(Default)]
    struct Family<'a> {
        help: Option<&'a str>,
        kind: Option<&'a str>,
        samples: Vec<&'a str>,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut families: HashMap<&str, Family<'_>> = HashMap::new();
    for text in expositions {
        let mut current: Option<&str> = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let comment = line
                .strip_prefix("# HELP ")
                .map(|rest| (rest, true))
                .or_else(|| line.strip_prefix("# TYPE ").map(|rest| (rest, false)));
            let name = match comment {
                Some((rest, _)) => rest.split_whitespace().next().unwrap_or_default(),
                // a sample belongs to the family of the comments before it (a histogram's
                // `_bucket`, `_sum` and `_count` to their family's name)
                None if line.starts_with('#') => continue,
                None => current.unwrap_or_else(|| {
                    line.split(|c: char| c == '{' || c.is_whitespace())
                        .next()
                        .unwrap_or_default()
                }),
            };
            current = Some(name);
            let family = families.entry(name).or_insert_with(|| {
                order.push(name);
                Family::default()
            });
            match comment {
                Some((_, true)) => {
                    family.help.get_or_insert(line);
                }
                Some((_, false)) => {
                    family.kind.get_or_insert(line);
                }
                None => family.samples.push(line),
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let family = &families[name];
        for line in [family.help, family.kind]
            .into_iter()
            .flatten()
            .chain(family.samples.iter().copied())
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_of_two_processes_make_one_family_with_every_sample() {
        let a = "# HELP d_seconds time\n# TYPE d_seconds histogram\n\
                 d_seconds_bucket{g=\"a\",le=\"1\"} 1\nd_seconds_sum{g=\"a\"} 0.5\n\
                 d_seconds_count{g=\"a\"} 1\n# HELP up x\n# TYPE up gauge\nup{g=\"a\"} 1\n";
        let b = "# HELP d_seconds time\n# TYPE d_seconds histogram\n\
                 d_seconds_bucket{g=\"b\",le=\"1\"} 2\nd_seconds_sum{g=\"b\"} 1\n\
                 d_seconds_count{g=\"b\"} 2\n";
        let merged = merge([a, b]);
        assert_eq!(
            merged,
            "# HELP d_seconds time\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{g=\"a\",le=\"1\"} 1\nd_seconds_sum{g=\"a\"} 0.5\n\
             d_seconds_count{g=\"a\"} 1\n\
             d_seconds_bucket{g=\"b\",le=\"1\"} 2\nd_seconds_sum{g=\"b\"} 1\n\
             d_seconds_count{g=\"b\"} 2\n\
             # HELP up x\n# TYPE up gauge\nup{g=\"a\"} 1\n"
        );
        assert_eq!(merge([""]), "", "nothing in, nothing out");
    }
}
