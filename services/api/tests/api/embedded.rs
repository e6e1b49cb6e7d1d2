//! The event-bus behaviour suite on the embedded (in-process) bus.

use crate::suite;

use std::time::Duration;

use mesh_contract::bus::BoxFuture;
use mesh_embedded::{EmbeddedBus, EmbeddedConfig};
use suite::{Probe, fresh_tenant};

fn bus() -> EmbeddedBus {
    EmbeddedBus::new(EmbeddedConfig {
        max_payload_bytes: 64 * 1024,
        max_retry_backoff: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(20),
    })
}

impl Probe for EmbeddedBus {
    fn dead_reasons<'a>(&'a self, queue: &'a str, count: usize) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            for _ in 0..200 {
                let dead = self.dead_letters(queue);
                if dead.len() >= count {
                    return dead.into_iter().take(count).map(|d| d.reason).collect();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("fewer than {count} dead letters on {queue} after 10 s");
        })
    }

    fn waiting<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move { self.depth(queue) })
    }

    fn dead_count<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move { self.dead_letters(queue).len() })
    }
}

#[tokio::test]
async fn round_trip_with_context() {
    suite::round_trip_with_context(bus(), &fresh_tenant()).await;
}

#[tokio::test]
async fn rejected_events_are_dead_lettered_while_good_ones_flow() {
    let bus = bus();
    suite::rejected_events_are_dead_lettered_while_good_ones_flow(
        bus.clone(),
        &fresh_tenant(),
        &bus,
    )
    .await;
}

#[tokio::test]
async fn retry_then_success() {
    suite::retry_then_success(bus(), &fresh_tenant()).await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_they_pass_never_dead_lettered() {
    let bus = bus();
    suite::transient_failures_are_retried_until_they_pass_never_dead_lettered(
        bus.clone(),
        &fresh_tenant(),
        &bus,
    )
    .await;
}

#[tokio::test]
async fn tenants_never_see_each_others_events() {
    suite::tenants_never_see_each_others_events(bus(), &fresh_tenant(), &fresh_tenant()).await;
}

#[tokio::test]
async fn publishing_with_no_consumer_queue_fails() {
    suite::publishing_with_no_consumer_queue_fails(bus(), &fresh_tenant()).await;
}

#[tokio::test]
async fn oversized_publish_is_refused() {
    suite::oversized_publish_is_refused(bus(), &fresh_tenant()).await;
}

#[tokio::test]
async fn a_stopped_subscription_leaves_events_queued() {
    let bus = bus();
    suite::a_stopped_subscription_leaves_events_queued(bus.clone(), &fresh_tenant(), &bus).await;
}
