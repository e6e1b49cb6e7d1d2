//! A node of the platform on loopback for the end-to-end tests, serving the three shipped
//! tenants from `tenants/`, on the embedded bus or RabbitMQ, with the embedded store or
//! PostgreSQL; and the terminals that talk to it.

#![allow(dead_code)]

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use lapin::options::QueueDeleteOptions;
use mesh_amqp::{AmqpBus, AmqpConfig};
use mesh_api::{gateway::v1::Push, locator::v1::TerminalKind};
use mesh_contract::{EventBus, RequestContext, TenantId, spec::names};
use mesh_embedded::EmbeddedBus;
use mesh_gateway::Terminal;
use mesh_platform::Platform;
use mesh_runtime::{Tenants, layers::SwitchBoard};
use mesh_store::{MemoryStore, MessageStore, PgStore};
use tonic::transport::Channel;

/// The tenants the repository ships.
pub const SHIPPED: [&str; 3] = ["mall", "finance", "paipai"];

/// How long a test waits for anything to arrive.
pub const WITHIN: Duration = Duration::from_secs(10);

pub enum Bus {
    Embedded,
    RabbitMq,
}

pub enum Store {
    Embedded,
    Postgres,
    /// A store of the test's own (wrapping the embedded one, say).
    Custom(Arc<dyn MessageStore>),
}

pub fn amqp_uri() -> String {
    std::env::var("MESH_TEST_AMQP_URI").unwrap_or_else(|_| mesh_testkit::LOCAL_AMQP.into())
}

pub fn postgres_url() -> String {
    std::env::var("MESH_TEST_POSTGRES")
        .unwrap_or_else(|_| format!("{}/postgres", mesh_testkit::postgres_base()))
}

/// A short id unique to one test, for names that must not meet another test's.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub struct Node {
    pub platform: Arc<Platform>,
    pub address: SocketAddr,
    pub channel: Channel,
    pub tenants: Tenants,
    pub switches: SwitchBoard,
    pub store: Arc<dyn MessageStore>,
    pub pg: Option<Arc<PgStore>>,
    /// Consumer-name suffix and schema prefix of this node.
    pub run: String,
    rabbit: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    /// A node serving every shipped tenant.
    pub async fn start(bus: Bus, store: Store) -> Self {
        let run = run_id();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
        let tenants = Tenants::load(&dir, mesh_api::CONTRACTS).expect("the shipped tenants load");
        let rabbit = matches!(bus, Bus::RabbitMq);
        let bus: Arc<dyn EventBus> = match bus {
            Bus::Embedded => Arc::new(EmbeddedBus::default()),
            Bus::RabbitMq => Arc::new(
                AmqpBus::connect(AmqpConfig {
                    uri: amqp_uri(),
                    retry_backoff: Duration::from_millis(20),
                    max_retry_backoff: Duration::from_millis(50),
                    ..Default::default()
                })
                .await
                .expect("RabbitMQ must run on 127.0.0.1:5672 (bash .ci/test starts it)"),
            ),
        };
        let (store, pg): (Arc<dyn MessageStore>, _) = match store {
            Store::Custom(custom) => (custom, None),
            Store::Embedded => (Arc::new(MemoryStore::default()), None),
            Store::Postgres => {
                let pg = Arc::new(
                    PgStore::connect_with_prefix(&postgres_url(), &format!("t{run}_"))
                        .await
                        .expect("PostgreSQL must run on 127.0.0.1:5432 (bash .ci/test starts it)"),
                );
                (pg.clone() as Arc<dyn MessageStore>, Some(pg))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let platform = Arc::new(
            Platform::new(&format!("node-{run}"), address, bus, store.clone())
                .with_consumer_suffix(&format!("-{run}")),
        );
        for config in tenants.tenants.values() {
            platform.add_tenant(config).await.unwrap();
        }
        // the board the platform's consumers consult too
        let switches = platform.switches().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        {
            let (platform, tenants) = (platform.clone(), tenants.clone());
            tokio::spawn(async move {
                platform
                    .serve(listener, &tenants, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serving");
            });
        }
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        Self {
            platform,
            address,
            channel,
            tenants,
            switches,
            store,
            pg,
            run,
            rabbit,
            stop: Some(stop),
        }
    }

    /// A context for `tenant` carrying its credential, as an app of that business line has.
    pub fn ctx(&self, tenant: &str) -> RequestContext {
        let config = self.tenants.get(tenant).expect("a shipped tenant");
        RequestContext::new(TenantId::new(tenant).unwrap()).with_token(
            config
                .credentials
                .token
                .clone()
                .expect("shipped tenants have dev tokens"),
        )
    }

    /// A context acting as `user` of `tenant`, with a user token signed by the tenant's
    /// development key, as the business line's account system gives its apps.
    pub fn user(&self, tenant: &str, user: &str) -> RequestContext {
        let users = self.tenants.get(tenant).and_then(|c| c.users.as_ref());
        let token = users
            .expect("shipped tenants have [users]")
            .issue(user, None, 600)
            .expect("a development key");
        RequestContext::new(TenantId::new(tenant).unwrap()).with_user_token(&token)
    }

    /// A context of the mesh's own nodes for `tenant` (what the services present to each
    /// other).
    pub fn node_ctx(&self, tenant: &str) -> RequestContext {
        RequestContext::new(TenantId::new(tenant).unwrap())
            .with_token(self.platform.node_credential())
    }

    /// A terminal of `user` of `tenant`, connected (missed messages fetched).
    pub async fn terminal(&self, tenant: &str, user: &str, terminal: &str) -> Terminal {
        Terminal::connect(
            &self.user(tenant, user),
            self.channel.clone(),
            self.channel.clone(),
            user,
            terminal,
            TerminalKind::Phone,
        )
        .await
        .unwrap_or_else(|status| panic!("{tenant}: {user}/{terminal} cannot connect: {status}"))
    }

    /// Waits until this node's gateway holds `n` terminal streams.
    pub async fn wait_connected(&self, n: usize) {
        eventually("the gateway to see the terminals come and go", || async {
            self.platform.gateway().connected() == n
        })
        .await;
    }

    /// Stops serving and removes what the node left on shared services (dropping the node
    /// does the same; this reads better at the end of a test).
    pub async fn finish(self) {
        drop(self);
    }
}

impl Drop for Node {
    /// Runs even when a test fails: removes this node's queues from the broker (they would
    /// otherwise keep collecting every later run's events) and its schemas from PostgreSQL,
    /// over fresh connections on a thread of its own, since the test's runtime may be gone.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let (run, rabbit, postgres) = (self.run.clone(), self.rabbit, self.pg.is_some());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if rabbit {
                    delete_queues(&run).await;
                }
                if postgres {
                    drop_schemas(&run).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn delete_queues(run: &str) {
    let Ok(connection) =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    // every queue this node's consumers may have declared: each consumer of the platform,
    // on each contract with events, at each major (a test may move a tenant's major)
    let contracts: Vec<(&str, u32)> = mesh_platform::CATALOGUE
        .0
        .iter()
        .filter(|spec| !spec.events.is_empty())
        .map(|spec| (spec.name, spec.major))
        .collect();
    for tenant in SHIPPED {
        let tenant = TenantId::new(tenant).unwrap();
        let queues = contracts.iter().flat_map(|(contract, major)| {
            mesh_platform::consumers()
                .map(|consumer| {
                    names::queue(&tenant, contract, *major, &format!("{consumer}-{run}"))
                })
                .collect::<Vec<_>>()
        });
        for queue in queues {
            for name in [names::dead_letter_queue(&queue), queue] {
                let _ = channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
    }
}

async fn drop_schemas(run: &str) {
    let Ok((client, connection)) =
        tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(connection);
    let Ok(rows) = client
        .query(
            "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE $1",
            &[&format!("t{run}\\_%")],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let schema: String = row.get(0);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

/// Polls `check` until it holds, for at most [`WITHIN`] (the test kit's poll).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    mesh_testkit::eventually_within(what, WITHIN, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// The terminal's next push, failing the test if none comes in time.
pub async fn next(terminal: &mut Terminal) -> Push {
    tokio::time::timeout(WITHIN, terminal.next())
        .await
        .unwrap_or_else(|_| panic!("{terminal:?}: nothing pushed within {WITHIN:?}"))
        .unwrap_or_else(|status| panic!("{terminal:?}: {status}"))
        .unwrap_or_else(|| panic!("{terminal:?}: the stream ended"))
}
