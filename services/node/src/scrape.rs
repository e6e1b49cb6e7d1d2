//! The Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1, as Prometheus (and curl)
//! ask for it.
//!
//! A worker serves its own metrics; `mesh up` serves the node's: its own (the front door and
//! the control plane: switches, tenants) merged with every worker's, fetched from the address
//! each worker said (`METRICS <address>`) at each scrape. A worker that does not answer (or
//! is restarting) is left out of that scrape and shows as
//! `mesh_worker_scraped{mesh_worker_group="…"} 0`.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_runtime::supervisor::Supervisor;
use mesh_telemetry::scrape::{CONTENT_TYPE, merge, render};
use tokio::net::TcpListener;

/// How long the node waits for one worker's metrics.
const WORKER_SCRAPE_WITHIN: Duration = Duration::from_secs(2);

/// What a scrape answers: the metrics text, produced anew each time.
pub type Source =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// This process's own metrics.
pub fn own() -> Source {
    Arc::new(|| Box::pin(async { render().unwrap_or_default() }))
}

/// The node's metrics: its own and each worker's `supervisor` runs.
pub fn node(supervisor: Supervisor) -> Source {
    let client = reqwest::Client::builder()
        .timeout(WORKER_SCRAPE_WITHIN)
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds");
    Arc::new(move || {
        let (supervisor, client) = (supervisor.clone(), client.clone());
        Box::pin(async move {
            // every group the supervisor runs: one restarting (no address yet) reads 0
            let workers: Vec<(String, Option<String>)> = supervisor
                .processes()
                .into_iter()
                .map(|p| (p.group, p.metrics_address))
                .collect();
            let fetched = futures::future::join_all(workers.iter().map(|(group, address)| {
                let client = client.clone();
                async move {
                    let Some(address) = address else {
                        return (group.clone(), None);
                    };
                    let text = async {
                        client
                            .get(format!("http://{address}/metrics"))
                            .send()
                            .await?
                            .error_for_status()?
                            .text()
                            .await
                    }
                    .await;
                    if let Err(err) = &text {
                        tracing::debug!(%group, %address, error = %err, "worker metrics not scraped");
                    }
                    (group.clone(), text.ok())
                }
            }))
            .await;
            let mut scraped = String::from(
                "# HELP mesh_worker_scraped 1 when the node read this worker's metrics in this scrape\n\
                 # TYPE mesh_worker_scraped gauge\n",
            );
            for (group, text) in &fetched {
                scraped.push_str(&format!(
                    "mesh_worker_scraped{{mesh_worker_group=\"{}\"}} {}\n",
                    group.replace(['\\', '"', '\n'], "_"),
                    u8::from(text.is_some())
                ));
            }
            let own = render().unwrap_or_default();
            merge(
                std::iter::once(own.as_str())
                    .chain(fetched.iter().filter_map(|(_, t)| t.as_deref()))
                    .chain(std::iter::once(scraped.as_str())),
            )
        })
    })
}

/// Serves `GET /metrics` from `source` on `listener` until `stopped`.
pub async fn serve(listener: TcpListener, source: Source, stopped: impl Future<Output = ()>) {
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // out of file descriptors, say: try again in a moment, not in a spin
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &source).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped => {}
    }
}

async fn answer(request: &Request<Incoming>, source: &Source) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(text.as_bytes())))
            .expect("a valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => Response::builder()
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(source().await)))
            .expect("a valid response"),
        (_, "/metrics") => plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n"),
        _ => plain(StatusCode::NOT_FOUND, "the metrics are at /metrics\n"),
    }
}
