//! What the RabbitMQ test files share: where the broker is, and removing a test's topology.

#![allow(dead_code)]

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use mesh_contract::{TenantId, spec::names};

/// The broker address tests use (`MESH_TEST_AMQP_URI` overrides).
pub fn uri() -> String {
    std::env::var("MESH_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Why a test could not reach the broker.
pub const BROKER_DOWN: &str =
    "RabbitMQ must be running on 127.0.0.1:5672 (bash .ci/test starts it)";

/// A raw connection to the broker.
pub async fn connect() -> Connection {
    Connection::connect(&uri(), ConnectionProperties::default())
        .await
        .expect(BROKER_DOWN)
}

/// Deletes the order v1 exchange of `tenant` and the queues (with dead-letter queues) of
/// `consumers` on it.
pub async fn delete_order_topology(channel: &Channel, tenant: &TenantId, consumers: &[&str]) {
    for consumer in consumers {
        let queue = names::queue(tenant, "order", 1, consumer);
        for name in [names::dead_letter_queue(&queue), queue] {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let exchange = names::exchange(tenant, "order", 1);
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}
