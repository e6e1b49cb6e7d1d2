//! Figure 2: publish with confirms + consume with acks, through the generated publisher and
//! consumer on the mesh transport, against raw lapin doing the same (one confirm awaited per
//! publish, one ack per message, same prefetch), on the real broker.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use mesh_amqp::{AmqpBus, AmqpConfig};
use mesh_api::order::v1 as order;
use mesh_contract::{EventBus, HandlerError, RequestContext, TenantId, spec::names};
use tokio::sync::Notify;

use crate::Row;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PREFETCH: u16 = 32;

fn event(i: usize) -> order::OrderCreated {
    order::OrderCreated {
        order: Some(order::OrderView {
            order_id: format!("o-{i}"),
            total_cents: 4200,
            currency: "CNY".into(),
            ..Default::default()
        }),
        conversation_id: "c-1".into(),
    }
}

/// Counts handled events and wakes the bench at the last one.
struct Counter {
    seen: Arc<AtomicUsize>,
    target: usize,
    all: Arc<Notify>,
}

impl order::OrderHandler for Counter {
    async fn on_order_created(
        &self,
        _: &RequestContext,
        _: order::OrderCreated,
    ) -> Result<(), HandlerError> {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            self.all.notify_one();
        }
        Ok(())
    }
}

async fn mesh(messages: usize) -> anyhow::Result<f64> {
    let tenant = TenantId::new(&format!(
        "b{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let bus = AmqpBus::connect(AmqpConfig {
        uri: URI.into(),
        prefetch: PREFETCH,
        ..Default::default()
    })
    .await?;
    let (seen, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let counter = Counter {
        seen: seen.clone(),
        target: messages,
        all: all.clone(),
    };
    let sub = bus
        .subscribe(order::OrderConsumer::new(counter).subscription(tenant.clone(), "bench"))
        .await?;
    let publisher = order::OrderPublisher::new(bus.clone());
    let ctx = RequestContext::new(tenant.clone());
    let started = Instant::now();
    for i in 0..messages {
        publisher.publish(&ctx, event(i)).await?;
    }
    tokio::time::timeout(Duration::from_secs(120), all.notified()).await?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    sub.stop();
    let channel = Connection::connect(URI, ConnectionProperties::default())
        .await?
        .create_channel()
        .await?;
    let queue = names::queue(&tenant, "order", 1, "bench");
    for name in [names::dead_letter_queue(&queue), queue] {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            names::exchange(&tenant, "order", 1).as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    bus.close().await?;
    Ok(rate)
}

async fn raw(messages: usize) -> anyhow::Result<f64> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (
        format!("bench-raw-{suffix}"),
        format!("bench-raw-{suffix}.q"),
    );
    let connection = Connection::connect(URI, ConnectionProperties::default()).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    consumer_channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "order_created".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consuming = tokio::spawn(async move {
        let mut seen = 0;
        while seen < messages {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let _: order::OrderCreated =
                prost::Message::decode(delivery.data.as_slice()).unwrap_or_default();
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            seen += 1;
        }
        seen
    });
    let started = Instant::now();
    for i in 0..messages {
        let payload = prost::Message::encode_to_vec(&event(i));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        publisher
            .basic_publish(
                exchange.as_str().into(),
                "order_created".into(),
                options,
                &payload,
                properties,
            )
            .await?
            .await?;
    }
    let seen = tokio::time::timeout(Duration::from_secs(120), consuming).await??;
    anyhow::ensure!(seen == messages, "raw consumer saw {seen} of {messages}");
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    publisher
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    publisher
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(rate)
}

pub async fn run(messages: usize) -> anyhow::Result<Vec<Row>> {
    let (baseline, ours) = (raw(messages).await?, mesh(messages).await?);
    Ok(vec![Row::new(
        "AMQP publish (confirmed) + consume (acked)",
        format!("{baseline:.0} msgs/s"),
        format!("{ours:.0} msgs/s"),
        format!("{:.2}", ours / baseline),
        ">= 0.90",
    )])
}
