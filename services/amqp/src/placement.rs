//! Each tenant's events on its own virtual host, as its broker user: one connection per
//! placement (vhost + user) the served tenants name, chosen per call by the tenant.
//!
//! A tenant whose file says `[broker] vhost = "mesh-newco"` (and `user` / `password_env`) has
//! its exchanges and queues there; a vhost open only to that user is closed to every other
//! tenant and to whoever holds the shared broker account. Tenants that name no vhost share the
//! connection of `MESH_AMQP_URI`.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_contract::{
    RequestContext, TenantId,
    bus::{BoxFuture, BusError, Bytes, EventBus, Subscription, SubscriptionHandle},
    spec::EventSpec,
};

use crate::{AmqpBus, AmqpConfig};

/// Where a tenant's events go on the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Its virtual host; `None`: the base URI's.
    pub vhost: Option<String>,
    /// Its broker user and password; `None`: the base URI's.
    pub credentials: Option<(String, String)>,
}

/// An [`EventBus`] that publishes and consumes each tenant's events on that tenant's
/// [`Placement`].
#[derive(Clone)]
pub struct PlacedBuses {
    shared: AmqpBus,
    /// One bus per distinct placement (by its URI), shared by the tenants placed there.
    by_uri: Arc<tokio::sync::Mutex<HashMap<String, AmqpBus>>>,
    tenants: Arc<RwLock<HashMap<TenantId, AmqpBus>>>,
}

impl PlacedBuses {
    /// Tenants not placed elsewhere use `shared` (the base URI's vhost and user).
    pub fn new(shared: AmqpBus) -> Self {
        Self {
            shared,
            by_uri: Arc::default(),
            tenants: Arc::default(),
        }
    }

    /// Places `tenant`: connects to its vhost as its user (once per placement) before it is
    /// served, so a vhost that does not exist or refuses the user fails this tenant alone.
    pub async fn place(&self, tenant: TenantId, placement: &Placement) -> Result<(), BusError> {
        if placement == &Placement::default() {
            self.tenants.write().expect("lock").remove(&tenant);
            return Ok(());
        }
        let mut config: AmqpConfig = self.shared.config().clone();
        if let Some(vhost) = &placement.vhost {
            config = config.with_vhost(vhost);
        }
        if let Some((user, password)) = &placement.credentials {
            config = config.with_credentials(user, password);
        }
        let bus = {
            let mut by_uri = self.by_uri.lock().await;
            match by_uri.get(&config.uri) {
                Some(bus) => bus.clone(),
                None => {
                    let uri = config.uri.clone();
                    let bus = AmqpBus::connect(config).await.map_err(|err| {
                        BusError::Unavailable(format!(
                            "tenant {tenant}'s broker placement ({}): {err}",
                            describe(placement)
                        ))
                    })?;
                    by_uri.insert(uri, bus.clone());
                    bus
                }
            }
        };
        self.tenants.write().expect("lock").insert(tenant, bus);
        Ok(())
    }

    fn bus_of(&self, tenant: &TenantId) -> AmqpBus {
        self.tenants
            .read()
            .expect("lock")
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.shared.clone())
    }
}

/// A placement in words, without its password.
fn describe(placement: &Placement) -> String {
    let vhost = placement.vhost.as_deref().unwrap_or("the shared vhost");
    match &placement.credentials {
        Some((user, _)) => format!("vhost {vhost:?} as user {user:?}"),
        None => format!("vhost {vhost:?}"),
    }
}

impl EventBus for PlacedBuses {
    fn publish<'a>(
        &'a self,
        ctx: &'a RequestContext,
        event: &'static EventSpec,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let bus = self.bus_of(&ctx.tenant);
        Box::pin(async move { bus.publish(ctx, event, payload).await })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<SubscriptionHandle, BusError>> {
        let bus = self.bus_of(&subscription.tenant);
        Box::pin(async move { bus.subscribe(subscription).await })
    }

    fn purge_tenant<'a>(
        &'a self,
        tenant: &'a mesh_contract::TenantId,
        contracts: &'a [(&'static str, u32)],
        consumers: &'a [String],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        // where the tenant is placed: its own vhost, if it has one
        let bus = self.bus_of(tenant);
        Box::pin(async move { bus.purge_tenant(tenant, contracts, consumers).await })
    }
}
