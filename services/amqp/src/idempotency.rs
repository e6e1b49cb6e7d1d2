//! Idempotent consumption: a log of the messages a consumer queue has fully handled, checked
//! before a handler runs. A message redelivered after a crash (handled, but the ack never
//! reached the broker) is then acknowledged without running its handler again.
//!
//! The id is recorded after the handler succeeded and before the ack. The one window left, a
//! crash between a handler's success and the record, can only be closed by recording the id in
//! the same transaction as the handler's own writes (an inbox table in the service's store).

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use mesh_contract::bus::BoxFuture;

/// The log could not be read or written; the consumer then runs the handler (at least once
/// beats at most once) and says so in its logs.
#[derive(Debug, thiserror::Error)]
#[error("delivery log: {0}")]
pub struct DeliveryLogError(pub String);

/// Where a consumer remembers which messages it has handled.
pub trait DeliveryLog: Send + Sync + 'static {
    /// Whether `message_id` was already handled on `queue`.
    fn handled<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, DeliveryLogError>>;

    /// Records that `message_id` was handled on `queue`.
    fn record<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), DeliveryLogError>>;
}

/// In-process log, bounded: the oldest ids are forgotten first. Survives a lost broker
/// connection, not a crash of the process; use [`RedisLog`] for that.
pub struct MemoryLog {
    capacity: usize,
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl MemoryLog {
    /// A log remembering at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new(100_000)
    }
}

fn key(queue: &str, message_id: &str) -> String {
    format!("mesh:handled:{queue}:{message_id}")
}

impl DeliveryLog for MemoryLog {
    fn handled<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, DeliveryLogError>> {
        let seen = self
            .inner
            .lock()
            .expect("lock")
            .0
            .contains(&key(queue, message_id));
        Box::pin(std::future::ready(Ok(seen)))
    }

    fn record<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), DeliveryLogError>> {
        let mut inner = self.inner.lock().expect("lock");
        let (set, order) = &mut *inner;
        let key = key(queue, message_id);
        if set.insert(key.clone()) {
            order.push_back(key);
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A log in Redis, shared by every process consuming a queue and surviving their crashes.
/// Entries expire after `ttl` (longer than any redelivery takes).
#[derive(Clone)]
pub struct RedisLog {
    connection: redis::aio::ConnectionManager,
    ttl: Duration,
}

impl RedisLog {
    /// Connects to Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, DeliveryLogError> {
        let client =
            redis::Client::open(url).map_err(|e| DeliveryLogError(format!("{url}: {e}")))?;
        let connection = client
            .get_connection_manager()
            .await
            .map_err(|e| DeliveryLogError(format!("connecting to {url}: {e}")))?;
        Ok(Self { connection, ttl })
    }
}

impl DeliveryLog for RedisLog {
    fn handled<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, DeliveryLogError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("EXISTS")
                .arg(key(queue, message_id))
                .query_async::<bool>(&mut connection)
                .await
                .map_err(|e| DeliveryLogError(e.to_string()))
        })
    }

    fn record<'a>(
        &'a self,
        queue: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), DeliveryLogError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("SET")
                .arg(key(queue, message_id))
                .arg(1)
                .arg("EX")
                .arg(self.ttl.as_secs().max(1))
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| DeliveryLogError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_log_remembers_per_queue_and_forgets_the_oldest() {
        let log = MemoryLog::new(2);
        log.record("q1", "a").await.unwrap();
        assert!(log.handled("q1", "a").await.unwrap());
        assert!(
            !log.handled("q2", "a").await.unwrap(),
            "queues are separate"
        );
        log.record("q1", "b").await.unwrap();
        log.record("q1", "c").await.unwrap();
        assert!(
            !log.handled("q1", "a").await.unwrap(),
            "oldest forgotten at capacity"
        );
        assert!(log.handled("q1", "c").await.unwrap());
    }
}
