//! `log_format = "json"` (`MESH_TELEMETRY_LOG_FORMAT=json`): one JSON object per line on
//! stderr, each with the trace and span ids of the request it was written for and the process
//! that wrote it. Telemetry installs once per process, so the test runs a child.

use std::{collections::HashMap, process::Command};

use mesh_telemetry::{LogFormat, Process, TelemetryConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace of the caller's `traceparent`.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The caller's span.
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
#[ignore = "the child process of the test below, started by it"]
fn json_logging_child() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = TelemetryConfig {
            log_format: LogFormat::Json,
            ..Default::default()
        };
        let process = Process::new("mesh-worker").with("mesh.worker.group", "shared");
        // the filter the mesh's processes run with by default: request spans are INFO, below it
        let _telemetry = mesh_telemetry::init_as(&process, &config, "warn").unwrap();
        // a request's span, continuing the caller's trace, as the runtime's layer opens it
        let carrier = HashMap::from([(
            "traceparent".to_owned(),
            format!("00-{TRACE}-{CALLER_SPAN}-01"),
        )]);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let span = tracing::info_span!(target: "mesh::rpc", "rpc", rpc.method = "Send");
        let _ = span.set_parent(parent);
        span.in_scope(|| {
            tracing::warn!(user = "bob", attempts = 3_u64, "push failed");
            let inner = tracing::warn_span!("deliver");
            inner.in_scope(|| tracing::warn!("nested"));
        });
        tracing::warn!("outside any request");
    });
}

#[test]
fn json_lines_carry_the_trace_and_the_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "json_logging_child", "--nocapture"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?} in {lines:#?}"))
    };
    let failed = line("push failed");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["fields"]["user"], "bob");
    assert_eq!(failed["fields"]["attempts"], 3);
    // (its span is below the log filter: the line names none, the trace ids say which)
    assert_eq!(failed["trace_id"], TRACE, "{failed}");
    let span_id = failed["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, CALLER_SPAN,
        "the request's own span, not the caller's"
    );
    assert_eq!(failed["service"], "mesh-worker");
    assert_eq!(failed["group"], "shared");
    assert_eq!(failed["pid"], out_pid(&lines));
    assert!(failed["timestamp"].as_str().unwrap().ends_with('Z'));
    // a line of an inner span the filter shows: its name, and the request's trace
    let nested = line("nested");
    assert_eq!(nested["span"], "deliver");
    assert_eq!(nested["trace_id"], TRACE);
    // outside any request: no trace, still the process
    let outside = line("outside any request");
    assert!(outside.get("trace_id").is_none(), "{outside}");
    assert_eq!(outside["service"], "mesh-worker");
}

/// The child's pid, the same on every line.
fn out_pid(lines: &[serde_json::Value]) -> serde_json::Value {
    let pid = lines[0]["pid"].clone();
    assert!(pid.as_u64().is_some_and(|p| p > 0), "{pid}");
    assert!(lines.iter().all(|l| l["pid"] == pid));
    pid
}
