// Long on purpose: the platform's services wired for a node's tenants in one place (what a
// tenant's settings reach, which consumers it gets), as linkerd builds its stack in one place.
//! The customer-service platform on one node: gateway, locator, message, order and recommend,
//! wired together for the tenants the node serves.
//!
//! The services find each other over HTTP/2 through this node's own address (the gateway
//! registers terminals under it; the message service reaches the locator and gateways at
//! it), so the same wiring works when they are split across processes. Events go over the
//! [`EventBus`] given (the embedded bus or RabbitMQ) and data into the
//! [`MessageStore`] given (embedded or PostgreSQL): the node knows neither.
//!
//! Services added with `mesh-codegen new-service` are assembled here too, through the one
//! interface of [`mesh_plugin`]: their registry is [`plugins::SERVICES`], kept by the generator,
//! so adding a service never edits this file.
//!
//! What differs between tenants comes from their [`TenantConfig`] only:
//! `services.message.settings` (retention, body limit), `services.order.version` (which
//! major its order events use), `services.recommend.settings.max_suggestions`, and which
//! services are enabled at all.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use mesh_api::{channel, gateway, locator, message, order, push, recommend};
use mesh_channel::ChannelService;
use mesh_contract::{BusError, EventBus, ServiceCredentials, SubscriptionHandle, TenantId};
use mesh_gateway::GatewayService;
use mesh_locator::LocatorService;
use mesh_message::{Archive, MessageService, MessageSettings, SystemMessages};
use mesh_order::{OrderService, OrderStore};
use mesh_push::{OfflineNotices, PushService};
use mesh_recommend::RecommendService;
use mesh_runtime::{
    Inbound, Outbound, TenantConfig, Tenants,
    layers::{Bulkheads, Catalogue, SwitchBoard},
    settings,
    tls::NodeTls,
};
use mesh_store::{MessageStore, StoreError};
use tonic::{service::Routes, transport::Endpoint};

pub mod plugins;

/// Every contract the platform serves, as the runtime's layers look methods up.
pub const CATALOGUE: Catalogue = Catalogue(mesh_api::CONTRACTS);

/// Consumer (queue) name of the storage consumer.
pub const STORAGE_CONSUMER: &str = "storage";
/// Consumer (queue) name of the message service's order-event consumer.
pub const MESSAGE_CONSUMER: &str = "message";
/// Consumer (queue) name of the order book, which records the orders checkouts announce.
pub const ORDER_CONSUMER: &str = "order";
/// Consumer (queue) name of the push service's offline-notice consumer of message events.
pub const PUSH_CONSUMER: &str = "push";
/// Consumer (queue) name of the channel service: of its own callbacks' messages (to store
/// them) and of message events (to send agents' answers to the platforms).
pub const CHANNEL_CONSUMER: &str = "channel";

mod tenant_settings;

use tenant_settings::*;
pub use tenant_settings::{check, consumers, queues};
/// Why a tenant could not be added to the node.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A service setting in the tenant's config has an unusable value.
    #[error("tenant {tenant}: {field}: {message}")]
    Setting {
        /// Whose config.
        tenant: TenantId,
        /// The key, as written in the tenant file.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tenant's data namespace could not be opened.
    #[error("tenant {tenant}: opening data namespace {namespace:?}: {source}")]
    Store {
        /// Whose data.
        tenant: TenantId,
        /// Its namespace.
        namespace: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The tenant's own runtime (`isolation.threads`) could not be started.
    #[error("tenant {tenant}: starting its runtime: {source}")]
    Runtime {
        /// Whose runtime.
        tenant: TenantId,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// What the broker holds for a tenant could not be deleted.
    #[error("tenant {tenant}: deleting its queues and exchanges: {source}")]
    Purge {
        /// Whose.
        tenant: TenantId,
        /// What the bus said.
        #[source]
        source: BusError,
    },
    /// The server stopped with an error.
    #[error("serving the platform: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// A consumer could not subscribe.
    #[error("tenant {tenant}: subscribing {consumer} to {contract} events: {source}")]
    Subscribe {
        /// Whose events.
        tenant: TenantId,
        /// The consumer.
        consumer: String,
        /// The contract whose events it wanted (`order.v1`).
        contract: Box<str>,
        /// What the bus said.
        #[source]
        source: BusError,
    },
}

/// The services of one node and the subscriptions that keep its events flowing.
pub struct Platform {
    locator: LocatorService,
    gateway: GatewayService,
    messages: MessageService,
    orders: OrderService,
    recommend: RecommendService,
    push: PushService,
    channels: ChannelService,
    archive: Archive,
    /// Locator and gateways, at this node's own address.
    own: Endpoint,
    /// The server at that address, which this node's calls to itself reach in process.
    own_server: mesh_runtime::OwnServer,
    switches: SwitchBoard,
    outbound: Outbound,
    bus: Arc<dyn EventBus>,
    credentials: ServiceCredentials,
    node_credential: String,
    consumer_suffix: String,
    subscriptions: Mutex<HashMap<TenantId, Vec<SubscriptionHandle>>>,
    /// The task sending each attached terminal its timeline's head ([`mesh_gateway::heartbeat`]).
    heartbeats: Mutex<Option<tokio::task::JoinHandle<()>>>,
    store: Arc<dyn MessageStore>,
    /// The services added with `mesh-codegen new-service` ([`plugins::SERVICES`]), built.
    added: Vec<(
        &'static mesh_plugin::ServiceDescriptor,
        Arc<dyn mesh_plugin::ServicePlugin>,
    )>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeats.lock().expect("lock").take() {
            task.abort();
        }
    }
}

/// The heads of users' timelines, for the gateway's heartbeats: read from the message store
/// in this process (the gateway and the message service of a node share it), no hop.
struct StoreHeads(Arc<dyn MessageStore>);

#[tonic::async_trait]
impl mesh_gateway::Heads for StoreHeads {
    async fn heads(&self, tenant: &TenantId, users: &[String]) -> Result<Vec<u64>, tonic::Status> {
        self.0
            .heads(tenant, users)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("gateway", &self.gateway)
            .field("message_tenants", &self.messages.tenants().len())
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// The services of node `node_id`, which serves them at `address`; must be called inside
    /// a tokio runtime (channels to `address` connect lazily).
    pub fn new(
        node_id: &str,
        address: SocketAddr,
        bus: Arc<dyn EventBus>,
        store: Arc<dyn MessageStore>,
    ) -> Self {
        Self::with_node_tls(node_id, address, bus, store, None)
    }

    /// [`Platform::new`] for a node that talks to the others over mutual TLS: it registers its
    /// terminals under an `https://` address and dials every node, itself included, with its
    /// certificate (it must then serve with `tls.server_config()`).
    pub fn with_node_tls(
        node_id: &str,
        address: SocketAddr,
        bus: Arc<dyn EventBus>,
        store: Arc<dyn MessageStore>,
        tls: Option<&NodeTls>,
    ) -> Self {
        // the node credential: what these services present to each other; a random one unless
        // the process is one of several nodes that must share it (with_node_credential). First,
        // as the node's own address is dialled as any other node's.
        let node_credential = ServiceCredentials::fresh_token();
        let credentials = ServiceCredentials::node(node_credential.clone());
        if let Some(tls) = tls {
            credentials.set_tls(tls.client_config());
        }
        let url = NodeTls::url(tls, &address.to_string());
        let own = credentials
            .endpoint(&url)
            .expect("a socket address is a valid URI, and the TLS identity loaded")
            .tcp_nodelay(true);
        // each tenant's calls to each dependency in places of their own (sized per tenant in
        // add_tenant): a dependency slow for one tenant sheds that tenant's excess calls only
        // calls to this node's own address (locator, gateway, message) go to its server in
        // process once it serves (`serve_in_process`), through the same layers
        let own_server = mesh_runtime::OwnServer::new(own.uri());
        let outbound = Outbound::new(
            Bulkheads::new(mesh_runtime::config::Limits::default().max_concurrent_per_dependency),
            CATALOGUE,
        )
        .with_own_server(own_server.clone());
        let gateway = GatewayService::new(
            node_id,
            url,
            outbound.channel("locator", &own),
            outbound.peers("gateway", credentials.clone()),
            credentials.clone(),
        );
        let heartbeats = gateway.start_heartbeats(
            Arc::new(StoreHeads(store.clone())),
            mesh_gateway::heartbeat::DEFAULT_INTERVAL,
        );
        // what the added services share with the platform's own: the tenant's namespace in the
        // store, the bus, and the message service for telling users things
        let handles = mesh_plugin::Handles {
            records: store.clone(),
            bus: bus.clone(),
            notifier: mesh_plugin::Notifier::new(
                outbound.channel("message", &own),
                credentials.clone(),
            ),
        };
        let added = plugins::SERVICES
            .iter()
            .map(|descriptor| (*descriptor, (descriptor.build)(&handles)))
            .collect();
        Self {
            added,
            locator: LocatorService::default(),
            gateway,
            heartbeats: Mutex::new(Some(heartbeats)),
            store: store.clone(),
            messages: MessageService::new(
                store.clone(),
                outbound.channel("locator", &own),
                bus.clone(),
                credentials.clone(),
                outbound.clone(),
            ),
            // the order book in the tenant's data namespace, beside its messages
            orders: OrderService::with_events(OrderStore::new(store.clone()), bus.clone()),
            recommend: RecommendService::new(
                Default::default(),
                RecommendService::sample_catalogue(),
            ),
            push: PushService::default(),
            channels: ChannelService::new(
                bus.clone(),
                outbound.channel("message", &own),
                credentials.clone(),
                store.clone(),
            ),
            archive: Archive::new(store),
            own,
            own_server,
            switches: SwitchBoard::new(CATALOGUE),
            outbound,
            bus,
            credentials,
            node_credential,
            consumer_suffix: String::new(),
            subscriptions: Mutex::default(),
        }
    }

    /// Presents and accepts `token` as the node credential: every process of one mesh shares
    /// it (`mesh up` hands its workers one), and no tenant ever holds it.
    pub fn with_node_credential(mut self, token: &str) -> Self {
        self.credentials.set_node(token);
        self.node_credential = token.to_owned();
        self
    }

    /// Keeps who is connected where in `locator` (shared by several nodes: [`RedisPresence`](
    /// mesh_locator::RedisPresence)) instead of this process's memory.
    pub fn with_locator(mut self, locator: LocatorService) -> Self {
        self.locator = locator;
        self
    }

    /// The node credential, for the directory that authenticates calls to these services.
    pub fn node_credential(&self) -> &str {
        &self.node_credential
    }

    /// Appends `suffix` to the consumer names (`storage<suffix>`, `message<suffix>`): several
    /// independent nodes on one broker (tests) each get queues of their own.
    pub fn with_consumer_suffix(mut self, suffix: &str) -> Self {
        self.consumer_suffix = suffix.to_owned();
        self
    }

    /// Serves a tenant: opens its data namespace, applies its settings and subscribes its
    /// consumers. Only the services its config enables are set up for it. Again for a tenant
    /// served already (its file changed): the new settings replace the old, and its consumers
    /// are subscribed anew (their queues keep what arrives in between).
    pub async fn add_tenant(&self, config: &TenantConfig) -> Result<(), PlatformError> {
        let tenant = config.tenant_id();
        // every setting is checked, and every added service agrees, before anything is applied
        let settings = settings(config)?;
        let enabled: HashMap<&str, &mesh_runtime::config::ServiceConfig> =
            config.enabled_services().collect();
        let (added, not_run): (Vec<_>, Vec<_>) = self
            .added
            .iter()
            .partition(|(descriptor, _)| enabled.contains_key(descriptor.name));
        for (descriptor, service) in &added {
            service
                .add_tenant(config)
                .await
                .map_err(|message| PlatformError::Setting {
                    tenant: tenant.clone(),
                    field: format!("services.{}", descriptor.name),
                    message,
                })?;
        }
        for (_, service) in not_run {
            service.remove_tenant(&tenant).await;
        }
        if let Some(old) = self.subscriptions.lock().expect("lock").remove(&tenant) {
            old.into_iter().for_each(SubscriptionHandle::stop);
        }

        self.apply_settings(&tenant, config, &settings)?;
        let TenantSettings {
            order_major,
            order_grey,
            message,
            push,
            channels,
            ..
        } = settings;
        // messages, the order book, sent answers and added services' records live in the
        // tenant's data namespace
        if message.is_some() || order_major.is_some() || channels || !added.is_empty() {
            self.archive
                .store()
                .open(&tenant, &config.data_namespace)
                .await
                .map_err(|source| PlatformError::Store {
                    tenant: tenant.clone(),
                    namespace: config.data_namespace.clone(),
                    source,
                })?;
        }
        let mut handles = Vec::new();
        if let Some(message) = message {
            self.messages.add_tenant(tenant.clone(), message);
            let majors = order_major
                .into_iter()
                .chain(order_grey.as_ref().map(|g| g.version.get()));
            self.subscribe_messages(&tenant, push.is_some(), majors, &mut handles)
                .await?;
        }
        if channels {
            self.channels.set_channels(tenant.clone(), &config.channels);
            self.subscribe_channels(&tenant, &mut handles).await?;
        } else {
            self.channels.remove_tenant(&tenant);
        }
        // added services last: their handlers may call the platform's own services
        self.subscribe_added(&tenant, &added, &mut handles).await?;
        self.subscriptions
            .lock()
            .expect("lock")
            .insert(tenant, handles);
        Ok(())
    }

    /// A tenant's limits and service settings, applied to the services that hold them.
    fn apply_settings(
        &self,
        tenant: &TenantId,
        config: &TenantConfig,
        settings: &TenantSettings,
    ) -> Result<(), PlatformError> {
        let tenant = tenant.clone();
        self.outbound
            .bulkheads()
            .set_limit(tenant.clone(), config.limits.max_concurrent_per_dependency);
        self.gateway.set_terminal_quota(
            tenant.clone(),
            mesh_gateway::TerminalQuota {
                per_user: config.limits.max_terminals_per_user,
                per_tenant: config.limits.max_terminals,
            },
        );
        if let Some(policy) = settings.devices {
            self.gateway.set_device_policy(tenant.clone(), policy);
        }
        if let Some(max) = settings.max_suggestions {
            self.recommend
                .set_max_suggestions(tenant.clone(), u32::try_from(max).unwrap_or(u32::MAX));
        }
        if let Some(major) = settings.order_major {
            let grey = settings.order_grey.as_ref().map(|grey| {
                let (release, id) = (grey.clone(), tenant.clone());
                let users: mesh_order::GreyUsers =
                    Arc::new(move |user| release.includes(id.as_str(), "order", user));
                (grey.version.get(), users)
            });
            self.orders.set_majors(tenant.clone(), major, grey);
        }
        if let Some(push) = &settings.push {
            self.push
                .set_webhook(tenant.clone(), &push.webhook, push.timeout)
                .map_err(|message| PlatformError::Setting {
                    tenant: tenant.clone(),
                    field: "services.push.settings.webhook".into(),
                    message,
                })?;
        }
        Ok(())
    }

    /// The consumers of a tenant's messages: storage, offline notices (with `push`), and the
    /// system messages and order book fed by each order major in `majors`.
    async fn subscribe_messages(
        &self,
        tenant: &TenantId,
        push: bool,
        majors: impl Iterator<Item = u32>,
        handles: &mut Vec<SubscriptionHandle>,
    ) -> Result<(), PlatformError> {
        let tenant = tenant.clone();
        // storage first: a message event published from now on has a queue to land in
        let storage = format!("{STORAGE_CONSUMER}{}", self.consumer_suffix);
        handles.push(
            self.subscribe(
                message::v1::MessageConsumer::new(self.archive.clone())
                    .subscription(tenant.clone(), storage),
                "message.v1",
            )
            .await?,
        );
        if push {
            let notices = OfflineNotices::new(
                self.push.clone(),
                self.outbound.channel("locator", &self.own),
                self.credentials.clone(),
                self.switches.clone(),
            );
            handles.push(
                self.subscribe(
                    message::v1::MessageConsumer::new(notices).subscription(
                        tenant.clone(),
                        format!("{PUSH_CONSUMER}{}", self.consumer_suffix),
                    ),
                    "message.v1",
                )
                .await?,
            );
        }
        let consumer = format!("{MESSAGE_CONSUMER}{}", self.consumer_suffix);
        let system = SystemMessages::new(self.messages.clone());
        // the orders checkouts announce, recorded where GetOrder / ListOrders read
        let book_consumer = format!("{ORDER_CONSUMER}{}", self.consumer_suffix);
        let book = mesh_order::OrderBook::new(self.orders.store().clone());
        // the events of the major everyone runs, and of the one in grey release
        for major in majors {
            let (messages, orders) = match major {
                2 => (
                    self.subscribe(
                        order::v2::OrderConsumer::new(system.clone())
                            .subscription(tenant.clone(), consumer.clone()),
                        "order.v2",
                    )
                    .await?,
                    self.subscribe(
                        order::v2::OrderConsumer::new(book.clone())
                            .subscription(tenant.clone(), book_consumer.clone()),
                        "order.v2",
                    )
                    .await?,
                ),
                _ => (
                    self.subscribe(
                        order::v1::OrderConsumer::new(system.clone())
                            .subscription(tenant.clone(), consumer.clone()),
                        "order.v1",
                    )
                    .await?,
                    self.subscribe(
                        order::v1::OrderConsumer::new(book.clone())
                            .subscription(tenant.clone(), book_consumer.clone()),
                        "order.v1",
                    )
                    .await?,
                ),
            };
            handles.extend([messages, orders]);
        }
        Ok(())
    }

    /// Stops serving a tenant: its consumers stop (their queues keep what arrives for it),
    /// its attached terminals are let go (they attach again where it is served next), and
    /// with `purge_data` its stored messages are deleted. Calls are no longer admitted by
    /// then (the caller removed it from the inbound stack first).
    pub async fn remove_tenant(
        &self,
        tenant: &TenantId,
        purge_data: bool,
    ) -> Result<(), PlatformError> {
        if let Some(old) = self.subscriptions.lock().expect("lock").remove(tenant) {
            old.into_iter().for_each(SubscriptionHandle::stop);
        }
        self.gateway.detach_tenant(tenant);
        self.channels.remove_tenant(tenant);
        for (_, service) in &self.added {
            service.remove_tenant(tenant).await;
        }
        if purge_data {
            self.archive
                .store()
                .drop_tenant(tenant)
                .await
                .map_err(|source| PlatformError::Store {
                    tenant: tenant.clone(),
                    namespace: String::new(),
                    source,
                })?;
            // and what waits for it on the broker: queued events, dead letters, exchanges
            let contracts: Vec<(&'static str, u32)> = CATALOGUE
                .0
                .iter()
                .filter(|spec| !spec.events.is_empty())
                .map(|spec| (spec.name, spec.major))
                .collect();
            let consumers: Vec<String> = consumers()
                .map(|name| format!("{name}{}", self.consumer_suffix))
                .collect();
            self.bus
                .purge_tenant(tenant, &contracts, &consumers)
                .await
                .map_err(|source| PlatformError::Purge {
                    tenant: tenant.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The channel service's consumers for `tenant`: its callbacks' messages, stored; message
    /// events, the agents' answers sent to the platforms.
    async fn subscribe_channels(
        &self,
        tenant: &TenantId,
        handles: &mut Vec<SubscriptionHandle>,
    ) -> Result<(), PlatformError> {
        let queue = format!("{CHANNEL_CONSUMER}{}", self.consumer_suffix);
        handles.push(
            self.subscribe(
                channel::v1::ChannelConsumer::new(self.channels.clone())
                    .subscription(tenant.clone(), queue.clone()),
                "channel.v1",
            )
            .await?,
        );
        handles.push(
            self.subscribe(
                message::v1::MessageConsumer::new(self.channels.replies())
                    .subscription(tenant.clone(), queue),
                "message.v1",
            )
            .await?,
        );
        Ok(())
    }

    /// Subscribes the consumers of the `added` services for `tenant` into `handles`.
    async fn subscribe_added(
        &self,
        tenant: &TenantId,
        added: &[&(
            &'static mesh_plugin::ServiceDescriptor,
            Arc<dyn mesh_plugin::ServicePlugin>,
        )],
        handles: &mut Vec<SubscriptionHandle>,
    ) -> Result<(), PlatformError> {
        for (descriptor, service) in added {
            for consumer in descriptor.consumers {
                let queue = format!("{}{}", consumer.consumer, self.consumer_suffix);
                if let Some(subscription) = service.subscription(consumer, tenant.clone(), queue) {
                    let contract = format!("{}.v{}", consumer.contract, consumer.major);
                    handles.push(self.subscribe(subscription, &contract).await?);
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: mesh_contract::Subscription,
        contract: &str,
    ) -> Result<SubscriptionHandle, PlatformError> {
        let (tenant, consumer) = (subscription.tenant.clone(), subscription.consumer.clone());
        self.bus
            .subscribe(subscription)
            .await
            .map_err(|source| PlatformError::Subscribe {
                tenant,
                consumer,
                contract: contract.into(),
                source,
            })
    }

    /// Every service's tonic server, to put behind the runtime's layers.
    pub fn routes(&self) -> Routes {
        let routes = Routes::new(locator::v1::locator_server::LocatorServer::new(
            self.locator.clone(),
        ))
        .add_service(gateway::v1::gateway_server::GatewayServer::new(
            self.gateway.clone(),
        ))
        .add_service(message::v1::message_server::MessageServer::new(
            self.messages.clone(),
        ))
        .add_service(order::v1::order_server::OrderServer::new(
            self.orders.clone(),
        ))
        .add_service(order::v2::order_server::OrderServer::new(
            self.orders.clone(),
        ))
        .add_service(recommend::v1::recommend_server::RecommendServer::new(
            self.recommend.clone(),
        ))
        .add_service(push::v1::push_server::PushServer::new(self.push.clone()))
        .add_service(channel::v1::channel_server::ChannelServer::new(
            self.channels.clone(),
        ));
        self.added
            .iter()
            .fold(routes, |routes, (_, service)| service.routes(routes))
    }

    /// From now on the services' calls to this node's own address (the locator, the gateway,
    /// the message service) go to `inbound` around [`Platform::routes`] in this process,
    /// instead of over HTTP/2 on loopback: to be called with the stack the node serves.
    pub fn serve_in_process(&self, inbound: &Inbound) {
        self.own_server.serve(inbound.in_process(self.routes()));
    }

    /// The bulkheads the services' outbound calls go through, one per (tenant, dependency):
    /// what `meshctl status` shows filling.
    pub fn bulkheads(&self) -> &Bulkheads {
        self.outbound.bulkheads()
    }

    /// The degradation switches this node's services consult themselves (the push consumer
    /// asks whether push is off before it notifies): the board to put behind the inbound
    /// switch layer and to update from ops, so calls and consumers see the same switches.
    pub fn switches(&self) -> &SwitchBoard {
        &self.switches
    }

    /// Turns off, on this node's board, the switches `tenants`' files turn off from start-up.
    pub fn apply_initial_switches(&self, tenants: &Tenants) {
        for switch in SwitchBoard::from_tenants(tenants, CATALOGUE).list() {
            self.switches.turn_off(switch);
        }
    }

    /// Serves the platform on `listener` until `shutdown` resolves, behind the runtime's
    /// inbound stack ([`Inbound`]) for `tenants`: the same stack `mesh up`'s workers run,
    /// answering from the same switch board the platform's consumers consult
    /// ([`Platform::switches`]; the tenant files' initial switches applied).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tenants: &Tenants,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PlatformError> {
        self.apply_initial_switches(tenants);
        let inbound = Inbound::new(CATALOGUE, self.switches.clone())
            .with_node_credential(&self.node_credential);
        for config in tenants.tenants.values() {
            inbound
                .serve_tenant(config)
                .map_err(|source| PlatformError::Runtime {
                    tenant: config.tenant_id(),
                    source,
                })?;
        }
        let probes = mesh_runtime::probes::Probes::new(
            mesh_api::CONTRACTS,
            Some(mesh_api::FILE_DESCRIPTOR_SET),
        );
        probes.set_serving(true).await;
        self.serve_in_process(&inbound);
        tonic::transport::Server::builder()
            .layer(mesh_runtime::probes::ProbesLayer::new(probes))
            .layer(inbound.layer())
            .add_routes(self.routes())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .map_err(PlatformError::Serve)
    }

    /// The order service (orders are placed by checkout, outside the platform: this is
    /// where the demo and tests place them).
    pub fn orders(&self) -> &OrderService {
        &self.orders
    }

    /// Sends each attached terminal its timeline's head every `interval` from now on (instead
    /// of [`mesh_gateway::heartbeat::DEFAULT_INTERVAL`]).
    pub fn set_terminal_heartbeat(&self, interval: std::time::Duration) {
        let task = self
            .gateway
            .start_heartbeats(Arc::new(StoreHeads(self.store.clone())), interval);
        if let Some(old) = self.heartbeats.lock().expect("lock").replace(task) {
            old.abort();
        }
    }

    /// The gateway of this node.
    pub fn gateway(&self) -> &GatewayService {
        &self.gateway
    }

    /// The storage consumer, and through it the store.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Deletes, for every served tenant, the stored messages its retention no longer keeps;
    /// returns how many per tenant.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<Vec<(TenantId, u64)>, StoreError> {
        let tenants = self.messages.tenants();
        let mut purged = Vec::with_capacity(tenants.len());
        for (tenant, settings) in tenants {
            let n = self
                .archive
                .purge_expired(&tenant, &settings, now_ms)
                .await?;
            purged.push((tenant, n));
        }
        purged.sort();
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The services' own defaults (used when a service runs outside the platform) are the
    /// declared ones: a tenant file without the setting gets the same value either way.
    #[test]
    fn the_services_defaults_are_the_declared_ones() {
        let default = |service, key| settings::declared(service, key).unwrap().default;
        let message = MessageSettings::default();
        assert_eq!(
            default("message", "retention_days"),
            Some(u64::from(message.retention_days))
        );
        assert_eq!(
            default("message", "max_body_bytes"),
            Some(message.max_body_bytes as u64)
        );
        assert_eq!(
            default("recommend", "max_suggestions"),
            Some(u64::from(mesh_recommend::DEFAULT_MAX_SUGGESTIONS))
        );
        assert_eq!(
            default("push", "timeout_ms"),
            Some(mesh_push::DEFAULT_TIMEOUT.as_millis() as u64)
        );
    }
}
