//! A RabbitMQ cluster of three nodes of the test's own on this machine (own node names, ports
//! and data folders), quorum queues, publisher confirms: the node the bus is connected to is
//! SIGKILLed mid-stream; the bus reconnects to another node, and every confirmed event is
//! handled, once. (`rabbitmq-server` is needed: `bash .ci/test` installs it.)

use crate::suite;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use mesh_amqp::{AmqpBus, AmqpConfig, QueueType};
use mesh_api::order::v1 as order;
use mesh_contract::EventBus;
use mesh_testkit::OwnRabbit;
use suite::{Counter, created, ctx, fresh_tenant};

/// Three nodes joined in one cluster, stopped (killed) when dropped.
struct Cluster {
    nodes: Vec<OwnRabbit>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three fresh nodes joined. A node that dies while booting on a loaded 2-core machine
    /// (seen once in CI: "not running at all" when asked to join) makes another attempt with
    /// fresh nodes, up to three; what the test checks starts only once the cluster is whole.
    fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(err) => {
                    eprintln!("cluster start failed, starting fresh nodes: {err}");
                    last = err;
                }
            }
        }
        panic!("no cluster after 3 attempts: {last}");
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("mesh-mq-cluster")
            .tempdir()
            .unwrap();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let nodes: Vec<OwnRabbit> = (1..=3)
            .map(|n| {
                OwnRabbit::prepare(
                    &dir.path().join(format!("n{n}")),
                    &format!("meshq{n}{suffix}"),
                )
            })
            .collect();
        // rabbitmq-server run as root switches to the rabbitmq user: it must reach the folders
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status();
        for node in &nodes {
            node.spawn();
        }
        for node in &nodes {
            node.wait_listening(Duration::from_secs(120))?;
        }
        // each node is killed when dropped, whatever fails
        let cluster = Self { nodes, _dir: dir };
        let nodes = &cluster.nodes;
        for node in &nodes[1..] {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", &nodes[0].name])?;
            node.ctl(&["start_app"])?;
        }
        for node in nodes {
            node.wait_listening(Duration::from_secs(120))
                .map_err(|_| format!("{} did not rejoin", node.name))?;
        }
        Ok(cluster)
    }
}

#[test]
fn other_nodes_are_tried_with_the_same_user_and_vhost() {
    let config = AmqpConfig {
        uri: "amqp://u:p@10.0.0.1:5672/mesh?heartbeat=10".into(),
        other_nodes: vec!["10.0.0.2:5672".into(), "10.0.0.3:5673".into()],
        ..Default::default()
    };
    assert_eq!(
        config.with_vhost("finance").candidates(),
        [
            "amqp://u:p@10.0.0.1:5672/finance?heartbeat=10",
            "amqp://u:p@10.0.0.2:5672/finance?heartbeat=10",
            "amqp://u:p@10.0.0.3:5673/finance?heartbeat=10",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_mid_stream_loses_no_confirmed_event() {
    // one of the tests that load the machine or time what load slows: they take turns
    let _heavy = mesh_testkit::heavy().await;
    const EVENTS: usize = 400;
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let uri = |node: &OwnRabbit| node.uri();
    let config = AmqpConfig {
        uri: uri(&cluster.nodes[0]),
        other_nodes: cluster.nodes[1..]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect(),
        queue_type: QueueType::Quorum,
        publish_timeout: Duration::from_secs(30),
        max_reconnect_backoff: Duration::from_millis(200),
        retry_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let tenant = fresh_tenant();
    let bus = AmqpBus::connect(config).await.unwrap();
    let counter = Counter::default();
    let _sub = bus
        .subscribe(
            order::OrderConsumer::new(counter.clone()).subscription(tenant.clone(), "message"),
        )
        .await
        .unwrap();
    let publisher = order::OrderPublisher::new(bus.clone());
    let publishing = tokio::spawn({
        let ctx = ctx(&tenant);
        async move {
            let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
            for i in 0..EVENTS {
                let id = format!("o-{i}");
                match publisher.publish(&ctx, created(&id)).await {
                    Ok(()) => confirmed.push(id),
                    Err(err) => failed.push((id, err.to_string())),
                }
            }
            (confirmed, failed)
        }
    });
    let started = Instant::now();
    while counter.runs.lock().unwrap().len() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stream never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // the node the bus is connected to (and the queue's leader, declared there) dies
    let killed = Instant::now();
    cluster.nodes[0].kill();

    let (confirmed, failed) = publishing.await.unwrap();
    counter
        .each_handled_once(&confirmed, Duration::from_secs(60))
        .await;
    println!(
        "FIGURE 3-node RabbitMQ, quorum queues, the connected node SIGKILLed mid-stream: {} of \
         {EVENTS} publishes confirmed ({} refused while failing over, the caller's to retry), \
         every confirmed one handled once; all handled {:?} after the kill",
        confirmed.len(),
        failed.len(),
        killed.elapsed()
    );
    assert!(
        confirmed.len() >= EVENTS - 5,
        "publishes wait out the failover: {failed:?}"
    );
    bus.close().await.unwrap();
}
