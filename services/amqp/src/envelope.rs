//! How an event travels: AMQP properties and headers, and reading them back.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use mesh_contract::{EventSpec, RequestContext};

/// Header names the transport adds beyond the request context's.
pub mod headers {
    /// Event name (`OrderCreated`).
    pub const EVENT: &str = "x-mesh-event";
    /// Contract and version the publisher was generated from (`order/v1@1.0.0`).
    pub const CONTRACT: &str = "x-mesh-contract";
    /// On a dead-lettered message: why it was dead-lettered.
    pub const DEAD_REASON: &str = "x-mesh-dead-reason";
    /// On a dead-lettered message: how many times the handler ran.
    pub const DEAD_ATTEMPTS: &str = "x-mesh-dead-attempts";
    /// On a dead-lettered message: the queue it came from.
    pub const DEAD_QUEUE: &str = "x-mesh-dead-queue";
    /// The event's routing key, carried as a header once a message leaves its exchange (dead
    /// letters, and their replay straight to the consumer's queue).
    pub const ROUTING_KEY: &str = "x-mesh-routing-key";
    /// When it was published, in milliseconds since the Unix epoch: how far behind its
    /// consumers are (`mesh.event.lag`).
    pub const PUBLISHED_AT_MS: &str = "x-mesh-published-at-ms";
}

/// Content type of every event payload.
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// Properties of a published event: persistent, with a fresh message id, the payload type, and
/// the context and contract as headers.
pub fn properties(ctx: &RequestContext, event: &EventSpec) -> BasicProperties {
    let mut table = FieldTable::default();
    // The caller's credential authenticates calls; it never goes onto the broker, where every
    // consumer of the queue could read it.
    for (name, value) in ctx.to_headers() {
        if name != mesh_contract::headers::TOKEN {
            insert(&mut table, name, value);
        }
    }
    insert(&mut table, headers::EVENT, event.name);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    insert(
        &mut table,
        headers::PUBLISHED_AT_MS,
        &now.as_millis().to_string(),
    );
    insert(
        &mut table,
        headers::CONTRACT,
        &format!("{}/v{}@{}", event.service, event.major, event.version),
    );
    BasicProperties::default()
        .with_timestamp(now.as_secs())
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_type(event.payload.into())
        .with_delivery_mode(2)
        .with_headers(table)
}

/// How long ago the message was published: its [`headers::PUBLISHED_AT_MS`], else its AMQP
/// timestamp (seconds, as other publishers such as pika set it); `None` without either.
pub fn age(properties: &BasicProperties) -> Option<std::time::Duration> {
    let published = text(properties.headers().as_ref(), headers::PUBLISHED_AT_MS)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(std::time::Duration::from_millis)
        .or_else(|| properties.timestamp().map(std::time::Duration::from_secs))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(now.saturating_sub(published))
}

/// Adds a text header.
pub fn insert(table: &mut FieldTable, name: &str, value: &str) {
    table.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// A text header, if present and text.
pub fn text<'a>(table: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}
