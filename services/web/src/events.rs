//! A call that answers a stream (a terminal's `Attach`), as server-sent events.

use std::{collections::VecDeque, convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use prost_reflect::MessageDescriptor;
use tonic::{Code, Status};

use crate::{
    Route,
    grpc::Deframer,
    status::{error_body, http_status, status_error},
    transcode::{marks, to_json},
};

/// How often an idle server-sent event stream says it is alive (a comment line), so proxies
/// and the browser do not take a quiet terminal for a dead connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The answer of a call that streams: server-sent events, one `message` event per message
/// (its JSON as data), then `end` (the stream finished) or `error` (the status, as the JSON
/// error body). A call refused before its stream opened is answered as a unary call's error.
pub(crate) fn events(
    route: &Route,
    response: Response<tonic::body::Body>,
) -> Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        let mut answer = status_error(&status);
        answer.headers_mut().extend(marks(&parts.headers));
        return answer;
    }
    let stream = EventStream {
        body,
        output: route.output.clone(),
        deframer: Deframer::default(),
        pending: VecDeque::new(),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        done: false,
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(http_body::Frame::data(event)), stream))
    });
    let mut answer = Response::new(tonic::body::Body::new(StreamBody::new(events)));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and the like must pass each event on at once
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.extend(marks(&parts.headers));
    answer
}

/// A gRPC server stream read as server-sent events.
struct EventStream {
    body: tonic::body::Body,
    output: MessageDescriptor,
    deframer: Deframer,
    pending: VecDeque<Bytes>,
    keepalive: tokio::time::Interval,
    done: bool,
}

impl EventStream {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                frame = self.body.frame() => self.read(frame),
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keepalive\n\n")),
            }
        }
    }

    fn read(&mut self, frame: Option<Result<http_body::Frame<Bytes>, Status>>) {
        let ended = |this: &mut Self, status: Status| {
            this.done = true;
            this.pending.push_back(if status.code() == Code::Ok {
                Bytes::from_static(b"event: end\ndata: {}\n\n")
            } else {
                let http = http_status(status.code());
                let body = error_body(http, status.code(), status.message());
                event("error", &body)
            });
        };
        match frame {
            None => ended(self, Status::internal("the stream ended without a status")),
            // the connection to the tenant's process broke (it was killed, restarted): a
            // retryable outage, not the service's error; the transport's words go to the log
            Some(Err(status)) if status.code() == Code::Unknown => {
                tracing::debug!(error = %status, "a stream was cut");
                ended(
                    self,
                    Status::unavailable(
                        "the stream was cut: the tenant's process went away; attach again",
                    ),
                )
            }
            Some(Err(status)) => ended(self, status),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    self.deframer.push(&data);
                    loop {
                        match self.deframer.next() {
                            Ok(Some(message)) => match to_json(&self.output, message) {
                                Ok(json) => self.pending.push_back(event("message", &json)),
                                Err(status) => return ended(self, status),
                            },
                            Ok(None) => break,
                            Err(status) => return ended(self, status),
                        }
                    }
                }
                Err(frame) => {
                    let status = frame
                        .trailers_ref()
                        .and_then(Status::from_header_map)
                        .unwrap_or_else(|| Status::internal("the stream ended without a status"));
                    ended(self, status)
                }
            },
        }
    }
}

/// One server-sent event (`data` is one line: JSON has no raw newlines).
fn event(name: &str, data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(data.len() + name.len() + 16);
    event.extend_from_slice(b"event: ");
    event.extend_from_slice(name.as_bytes());
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    event.into()
}
