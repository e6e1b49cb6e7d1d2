//! Figure 9: the platform's own path. Chat messages through one `mesh up` node on RabbitMQ and
//! PostgreSQL: each Send is stored in PostgreSQL (the tenant's schema), announced on RabbitMQ
//! with a publisher confirm (and stored again by the storage consumer), pushed to the
//! receiver's attached terminal through the gateway, and acknowledged to the sender; the
//! terminal's push is counted. The baseline does the same work by hand in one process: a raw
//! tonic server whose Send inserts a row with tokio-postgres, publishes with lapin and awaits
//! the confirm, puts the message on the receiver's raw tonic stream, and answers.
//!
//! Measured: messages per second with [`PAIRS`] senders (each to its own receiver) once every
//! acknowledged message was pushed, and Send -> push latency p50/p99 at half that rate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::TerminalKind,
    message::v1 as message,
};
use mesh_contract::{RequestContext, TenantId};
use mesh_runtime::identity::UserTokens;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{Row, memory::mesh_up, micros, percentile};

/// Senders, each sending to its own receiver terminal.
const PAIRS: usize = 32;
/// Messages timed for the latency figure.
const TIMED: usize = 2000;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The mesh's storage consumer queue of the figure's tenant.
const STORAGE_QUEUE: &str = "mesh.chat.message.v1.storage";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// A business line whose limits do not throttle the figure.
const CHAT: &str = "id = \"chat\"\ndisplay_name = \"Chat\"\ndata_namespace = \"chat\"\n\
    [credentials]\ntoken = \"chat-secret-token\"\n\
    [users]\nissuer = \"chat-accounts\"\naudience = \"mesh\"\nhs256_secret = \"chat-development-secret-of-32-bytes\"\n\
    [limits]\nrequests_per_second = 1000000\nburst = 1000000\nmax_concurrent_per_dependency = 100000\n";

/// Where a figure's sends go and its pushes come from.
struct Target {
    channel: Channel,
    sender: RequestContext,
    receivers: Vec<RequestContext>,
}

pub async fn run(window: Duration) -> anyhow::Result<Vec<Row>> {
    let database = Database::create().await?;
    let result = measure(window, &database).await;
    database.drop().await;
    result
}

async fn measure(window: Duration, database: &Database) -> anyhow::Result<Vec<Row>> {
    // the baseline first, on its own table
    let raw = RawChat::start(&database.url()).await?;
    let raw_target = Target {
        channel: connect(&raw.address).await?,
        sender: RequestContext::new(TenantId::new("chat")?),
        receivers: (0..PAIRS)
            .map(|_| Ok(RequestContext::new(TenantId::new("chat")?)))
            .collect::<anyhow::Result<_>>()?,
    };
    let own = std::process::id();
    let raw_writes = database.writes().await?;
    let before = Cpu::read(&[("mesh-bench (client and server)", own)]);
    let raw_rate = throughput(&raw_target, window).await?;
    // what the storage consumer has left is its work too, and must not run into the next phase
    drain(&raw.queue).await?;
    let raw_cpu = before.since(&[("mesh-bench (client and server)", own)]);
    let raw_writes = database.writes().await?.since(raw_writes);

    let dir = crate::tenants_folder(&[])?;
    std::fs::write(dir.path().join("chat.toml"), CHAT)?;
    // the tenant's queues start empty (an earlier run's leftovers are not this run's work)
    for queue in [STORAGE_QUEUE, "mesh.chat.message.v1.storage.dead"] {
        delete_queue(queue).await?;
    }
    let url = database.url();
    let up = mesh_up(
        dir.path(),
        &dir.path().join(".state"),
        &[("MESH_AMQP_URI", AMQP), ("MESH_STORE_POSTGRES", &url)],
    )
    .await?;
    let users = UserTokens::development("chat-accounts", "chat-development-secret-of-32-bytes");
    let token = |user: &str| {
        users
            .issue(user, None, 3600)
            .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))
    };
    let mut receivers = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        receivers.push(
            RequestContext::new(TenantId::new("chat")?)
                .with_user_token(&token(&format!("user{i}"))?),
        );
    }
    // the agent sends as an end user (Send is a user's call), with its own token
    let mesh_target = Target {
        channel: connect(&up.front).await?,
        sender: RequestContext::new(TenantId::new("chat")?).with_user_token(&token("agent")?),
        receivers,
    };
    let processes = [
        ("mesh-bench (client)", own),
        ("front door", up.pid),
        ("worker", up.worker),
    ];
    let mesh_writes = database.writes().await?;
    let before = Cpu::read(&processes);
    let mesh_rate = throughput(&mesh_target, window).await?;
    drain(STORAGE_QUEUE).await?;
    let mesh_cpu = before.since(&processes);
    let mesh_writes = database.writes().await?.since(mesh_writes);

    // latency at half the rate the mesh sustains, the same rate for both
    let rate = mesh_rate / 2.0;
    let mesh_latency = latency(&mesh_target, rate).await?;
    drop(up);
    let raw_latency = latency(&raw_target, rate).await?;
    drop(raw);

    let ratio =
        |mesh: Duration, raw: Duration| format!("{:.2}", mesh.as_secs_f64() / raw.as_secs_f64());
    Ok(vec![
        Row::new(
            format!(
                "chat messages/s through one node ({PAIRS} senders): Send acknowledged, stored in \
                 PostgreSQL, announced on RabbitMQ (confirmed), pushed to the attached terminal"
            ),
            format!("{raw_rate:.0} msgs/s"),
            format!("{mesh_rate:.0} msgs/s"),
            format!("{:.2}", mesh_rate / raw_rate),
            "-",
        ),
        Row::new(
            "CPU per message in that run, by process",
            raw_cpu.per_message(raw_rate * window.as_secs_f64()),
            mesh_cpu.per_message(mesh_rate * window.as_secs_f64()),
            format!(
                "{:.1}x",
                mesh_cpu.total() / raw_cpu.total() * raw_rate / mesh_rate
            ),
            "-",
        ),
        Row::new(
            "PostgreSQL rows written per message in that run",
            raw_writes.per_message(raw_rate * window.as_secs_f64()),
            mesh_writes.per_message(mesh_rate * window.as_secs_f64()),
            "-".into(),
            "-",
        ),
        Row::new(
            format!("Send -> push latency p50 at {rate:.0} msgs/s (half the mesh's rate)"),
            micros(raw_latency.0),
            micros(mesh_latency.0),
            ratio(mesh_latency.0, raw_latency.0),
            "-",
        ),
        Row::new(
            "Send -> push latency p99, same run",
            micros(raw_latency.1),
            micros(mesh_latency.1),
            ratio(mesh_latency.1, raw_latency.1),
            "-",
        ),
    ])
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux almost everywhere).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (user + system) of named processes and of the machine's PostgreSQL and RabbitMQ
/// (every `postgres` and `beam.smp` process), to say where a message's CPU goes.
struct Cpu(Vec<(String, f64)>);

impl Cpu {
    /// Seconds of CPU each process has used so far.
    fn read(processes: &[(&str, u32)]) -> Self {
        let hz = ticks_per_second();
        let ticks = |pid: u32| -> f64 {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // the fields after the command's closing parenthesis: utime is the 12th
                    let rest = stat.rsplit_once(')')?.1;
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    Some(
                        fields.get(11)?.parse::<f64>().ok()?
                            + fields.get(12)?.parse::<f64>().ok()?,
                    )
                })
                .unwrap_or(0.0)
                / hz
        };
        let by_command = |command: &str| -> f64 {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == command)
                })
                .map(ticks)
                .sum()
        };
        let mut seconds: Vec<(String, f64)> = processes
            .iter()
            .map(|(name, pid)| ((*name).to_owned(), ticks(*pid)))
            .collect();
        seconds.push(("PostgreSQL".into(), by_command("postgres")));
        seconds.push(("RabbitMQ".into(), by_command("beam.smp")));
        Self(seconds)
    }

    /// What each used since `self` was read.
    fn since(&self, processes: &[(&str, u32)]) -> Self {
        let now = Self::read(processes);
        Self(
            self.0
                .iter()
                .zip(now.0)
                .map(|((name, then), (_, now))| (name.clone(), (now - then).max(0.0)))
                .collect(),
        )
    }

    fn total(&self) -> f64 {
        self.0.iter().map(|(_, s)| s).sum()
    }

    /// `µs per message` of each process, and in all.
    fn per_message(&self, messages: f64) -> String {
        let each = |s: f64| s * 1e6 / messages.max(1.0);
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, s)| format!("{name} {:.0}", each(*s)))
            .collect();
        format!("{:.0} µs: {}", each(self.total()), parts.join(", "))
    }
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect()
            .await?,
    )
}

/// The receivers attached, each with the time every message body reached it.
struct Attached {
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

async fn attach_all(target: &Target, run: &str) -> anyhow::Result<Attached> {
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::with_capacity(PAIRS);
    for (i, ctx) in target.receivers.iter().enumerate() {
        let mut stream = gateway::GatewayCaller::new(target.channel.clone())
            .attach(
                ctx,
                gateway::AttachRequest {
                    user_id: format!("user{i}"),
                    terminal_id: format!("{run}-t{i}"),
                    kind: TerminalKind::Phone as i32,
                },
            )
            .await?;
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(push)) = stream.next().await {
                if let Some(Payload::Message(m)) = push.payload {
                    arrivals
                        .lock()
                        .expect("lock")
                        .insert(m.body, Instant::now());
                }
            }
        }));
    }
    // a registration is in place once a send reports the terminal delivered
    let mut sender = message::MessageCaller::new(target.channel.clone());
    for i in 0..PAIRS {
        loop {
            let sent = send(&mut sender, &target.sender, i, &format!("{run}-probe-{i}")).await?;
            if !sent.delivered_terminals.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(Attached { arrivals, tasks })
}

async fn send(
    caller: &mut message::MessageCaller<Channel>,
    ctx: &RequestContext,
    receiver: usize,
    body: &str,
) -> Result<message::SendResponse, Status> {
    caller
        .send(
            ctx,
            message::SendRequest {
                conversation_id: format!("c-user{receiver}"),
                from_user: "agent".into(),
                to_user: format!("user{receiver}"),
                body: body.into(),
                client_msg_id: body.into(),
            },
        )
        .await
}

/// Messages per second over `window`, counting a message once its send was acknowledged and
/// its push arrived.
async fn throughput(target: &Target, window: Duration) -> anyhow::Result<f64> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let attached = attach_all(target, &run).await?;
    let started = Instant::now();
    let deadline = started + window;
    let senders: Vec<_> = (0..PAIRS)
        .map(|i| {
            let (channel, ctx, run) = (target.channel.clone(), target.sender.clone(), run.clone());
            tokio::spawn(async move {
                let mut caller = message::MessageCaller::new(channel);
                let mut bodies = Vec::new();
                while Instant::now() < deadline {
                    let body = format!("{run}-{i}-{}", bodies.len());
                    send(&mut caller, &ctx, i, &body).await?;
                    bodies.push(body);
                }
                anyhow::Ok(bodies)
            })
        })
        .collect();
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await??);
    }
    // every acknowledged message pushed: the figure counts until the last one arrived
    let last = loop {
        let done = {
            let arrivals = attached.arrivals.lock().expect("lock");
            sent.iter()
                .all(|b| arrivals.contains_key(b))
                .then(|| sent.iter().map(|b| arrivals[b]).max().unwrap_or(started))
        };
        if let Some(last) = done {
            break last;
        }
        anyhow::ensure!(
            started.elapsed() < window + Duration::from_secs(30),
            "acknowledged messages were not pushed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    Ok(sent.len() as f64 / (last - started).as_secs_f64().max(window.as_secs_f64()))
}

/// Send -> push p50 / p99 of [`TIMED`] messages sent at `rate` messages per second in all.
async fn latency(target: &Target, rate: f64) -> anyhow::Result<(Duration, Duration)> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let attached = attach_all(target, &run).await?;
    let gap = Duration::from_secs_f64(PAIRS as f64 / rate.max(1.0));
    let per_sender = TIMED / PAIRS;
    let senders: Vec<_> = (0..PAIRS)
        .map(|i| {
            let (channel, ctx, run) = (target.channel.clone(), target.sender.clone(), run.clone());
            tokio::spawn(async move {
                let mut caller = message::MessageCaller::new(channel);
                let mut ticks = tokio::time::interval(gap);
                // spread the senders over one gap
                tokio::time::sleep(gap.mul_f64(i as f64 / PAIRS as f64)).await;
                let mut sent = Vec::with_capacity(per_sender);
                for n in 0..per_sender {
                    ticks.tick().await;
                    let body = format!("{run}-{i}-{n}");
                    let at = Instant::now();
                    send(&mut caller, &ctx, i, &body).await?;
                    sent.push((body, at));
                }
                anyhow::Ok(sent)
            })
        })
        .collect();
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await??);
    }
    let waited = Instant::now();
    let mut times = loop {
        let done = {
            let arrivals = attached.arrivals.lock().expect("lock");
            sent.iter().all(|(b, _)| arrivals.contains_key(b)).then(|| {
                sent.iter()
                    .map(|(b, at)| arrivals[b].saturating_duration_since(*at))
                    .collect::<Vec<_>>()
            })
        };
        if let Some(times) = done {
            break times;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "sent messages were not pushed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// Waits until `queue` holds no message (its consumer caught up), at most 60 s.
async fn drain(queue: &str) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
    let started = Instant::now();
    loop {
        let channel = connection.create_channel().await?;
        let waiting = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?
            .message_count();
        // delivered but not yet acked counts too: give the consumer its prefetch's time
        if waiting == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{queue} still holds {waiting} messages after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes `queue` if it exists.
async fn delete_queue(queue: &str) -> anyhow::Result<()> {
    let connection =
        lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let _ = channel.queue_delete(queue.into(), Default::default()).await;
    Ok(())
}

/// A database of the figure's own, dropped at the end.
struct Database {
    name: String,
}

impl Database {
    async fn create() -> anyhow::Result<Self> {
        let name = format!(
            "mesh_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        admin_sql(&format!("CREATE DATABASE {name}")).await?;
        Ok(Self { name })
    }

    fn url(&self) -> String {
        format!("{POSTGRES}/{}", self.name)
    }

    /// Rows written in it so far (PostgreSQL's statistics, read
    /// after the second they take to be flushed).
    async fn writes(&self) -> anyhow::Result<Writes> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (client, connection) =
            tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database \
                 WHERE datname = $1",
                &[&self.name],
            )
            .await?;
        drop(client);
        let _ = connection.await;
        Ok(Writes { rows: row.get(0) })
    }

    async fn drop(&self) {
        let _ = admin_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

/// What PostgreSQL wrote for one database.
#[derive(Clone, Copy)]
struct Writes {
    rows: i64,
}

impl Writes {
    fn since(self, before: Writes) -> Writes {
        Writes {
            rows: self.rows - before.rows,
        }
    }

    fn per_message(self, messages: f64) -> String {
        format!("{:.1}", self.rows as f64 / messages.max(1.0))
    }
}

async fn admin_sql(sql: &str) -> anyhow::Result<()> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// The baseline: the same work as the mesh's Send, written by hand on raw tonic, lapin and
/// tokio-postgres, in one process with no layers.
struct RawChat {
    address: String,
    /// The storage consumer's queue.
    queue: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RawChat {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Terminals = Arc<Mutex<HashMap<String, mpsc::Sender<Result<gateway::Push, Status>>>>>;

#[derive(Clone)]
struct RawService {
    terminals: Terminals,
    /// A few connections, as a pool would hold (each pipelines its queries).
    databases: Arc<Vec<tokio_postgres::Client>>,
    amqp: lapin::Channel,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RawChat {
    async fn start(database: &str) -> anyhow::Result<Self> {
        let mut databases = Vec::new();
        for _ in 0..4 {
            let (client, connection) =
                tokio_postgres::connect(database, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            databases.push(client);
        }
        databases[0]
            .batch_execute(
                "CREATE TABLE raw_messages (message_id text PRIMARY KEY, conversation_id text, \
                 from_user text, to_user text, body text, sent_at_ms bigint); \
                 CREATE TABLE raw_archive (message_id text PRIMARY KEY, body bytea)",
            )
            .await?;
        let connection =
            lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
        let amqp = connection.create_channel().await?;
        amqp.confirm_select(ConfirmSelectOptions::default()).await?;
        amqp.exchange_declare(
            "mesh.bench.raw-chat".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
        // a durable queue, as the mesh's storage consumer has: the broker writes each
        // persistent message before it confirms it
        let queue = format!(
            "mesh.bench.raw-chat.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        amqp.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
        amqp.queue_bind(
            queue.as_str().into(),
            "mesh.bench.raw-chat".into(),
            "message_sent".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
        // the storage consumer: each message stored again, then acked
        let consuming = connection.create_channel().await?;
        consuming.basic_qos(32, Default::default()).await?;
        let mut deliveries = consuming
            .basic_consume(
                queue.as_str().into(),
                "raw-storage".into(),
                Default::default(),
                Default::default(),
            )
            .await?;
        let (archive, archive_connection) =
            tokio_postgres::connect(database, tokio_postgres::NoTls).await?;
        tokio::spawn(archive_connection);
        let archiving = tokio::spawn(async move {
            let _channel = consuming;
            while let Some(Ok(delivery)) = deliveries.next().await {
                let id = uuid::Uuid::new_v4().to_string();
                if archive
                    .execute(
                        "INSERT INTO raw_archive VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&id, &delivery.data],
                    )
                    .await
                    .is_ok()
                {
                    let _ = delivery.ack(Default::default()).await;
                }
            }
        });
        let service = RawService {
            terminals: Arc::default(),
            databases: Arc::new(databases),
            amqp,
            next: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            let _connection = connection;
            let _archiving = AbortOnDrop(archiving);
            let _ = tonic::transport::Server::builder()
                .add_service(gateway::gateway_server::GatewayServer::new(service.clone()))
                .add_service(message::message_server::MessageServer::new(service))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await;
        });
        Ok(Self {
            address,
            server,
            queue,
        })
    }
}

#[tonic::async_trait]
impl gateway::gateway_server::Gateway for RawService {
    type AttachStream = ReceiverStream<Result<gateway::Push, Status>>;

    async fn attach(
        &self,
        request: Request<gateway::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        self.terminals
            .lock()
            .expect("lock")
            .insert(request.into_inner().user_id, tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deliver(
        &self,
        _: Request<gateway::DeliverRequest>,
    ) -> Result<Response<gateway::DeliverResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
}

#[tonic::async_trait]
impl message::message_server::Message for RawService {
    async fn send(
        &self,
        request: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        let r = request.into_inner();
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chat = message::ChatMessage {
            message_id: r.client_msg_id.clone(),
            conversation_id: r.conversation_id,
            seq: n + 1,
            from_user: r.from_user,
            to_user: r.to_user,
            kind: message::MessageKind::Text as i32,
            body: r.body,
            sent_at_ms: 0,
            position: n + 1,
            receipt: None,
        };
        let database = &self.databases[n as usize % self.databases.len()];
        database
            .execute(
                // a retried send (same client id) is stored once, as the mesh's is
                "INSERT INTO raw_messages VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &chat.message_id,
                    &chat.conversation_id,
                    &chat.from_user,
                    &chat.to_user,
                    &chat.body,
                    &chat.sent_at_ms,
                ],
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.amqp
            .basic_publish(
                "mesh.bench.raw-chat".into(),
                "message_sent".into(),
                BasicPublishOptions::default(),
                &prost::Message::encode_to_vec(&chat),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let terminal = self
            .terminals
            .lock()
            .expect("lock")
            .get(&chat.to_user)
            .cloned();
        let mut delivered = Vec::new();
        if let Some(terminal) = terminal
            && terminal
                .send(Ok(gateway::Push {
                    payload: Some(Payload::Message(chat.clone())),
                }))
                .await
                .is_ok()
        {
            delivered.push("t".to_owned());
        }
        Ok(Response::new(message::SendResponse {
            message: Some(chat),
            delivered_terminals: delivered,
            offline_terminals: Vec::new(),
        }))
    }

    async fn ack_delivery(
        &self,
        _: Request<message::AckDeliveryRequest>,
    ) -> Result<Response<message::AckDeliveryResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn fetch_offline(
        &self,
        _: Request<message::FetchOfflineRequest>,
    ) -> Result<Response<message::FetchOfflineResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn send_system(
        &self,
        _: Request<message::SendSystemRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn mark_read(
        &self,
        _: Request<message::MarkReadRequest>,
    ) -> Result<Response<message::MarkReadResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
    async fn send_from_channel(
        &self,
        _: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
    async fn history(
        &self,
        _: Request<message::HistoryRequest>,
    ) -> Result<Response<message::HistoryResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
    async fn list_terminals(
        &self,
        _: Request<message::ListTerminalsRequest>,
    ) -> Result<Response<message::ListTerminalsResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
    async fn sign_out_terminal(
        &self,
        _: Request<message::SignOutTerminalRequest>,
    ) -> Result<Response<message::SignOutTerminalResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
}
