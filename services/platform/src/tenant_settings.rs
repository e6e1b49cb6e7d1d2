//! A tenant's service settings as the platform reads them (checked once, with the file and
//! field named), and the consumers and queues a tenant has.

use super::*;

/// The settings the platform's services take from a tenant's config.
pub(crate) struct TenantSettings {
    pub(crate) max_suggestions: Option<u64>,
    pub(crate) order_major: Option<u32>,
    /// The order major in grey release, if any.
    pub(crate) order_grey: Option<mesh_runtime::config::GreyRelease>,
    pub(crate) message: Option<MessageSettings>,
    pub(crate) push: Option<PushSettings>,
    /// The device cap, when the tenant runs the gateway.
    pub(crate) devices: Option<mesh_gateway::DevicePolicy>,
    /// Whether it runs the channel service (its channels are in its config).
    pub(crate) channels: bool,
}

/// Where a tenant's notifier is.
pub(crate) struct PushSettings {
    pub(crate) webhook: String,
    pub(crate) timeout: std::time::Duration,
}

/// Checks what the platform's services take from a tenant's config (their `settings`, the
/// order major) without serving it: what [`Platform::add_tenant`] would refuse. The settings
/// check is the one every tenant file gets when it loads ([`settings::check`], against the
/// declarations in [`settings::DECLARED`]); a config built in code gets it here.
pub fn check(config: &TenantConfig) -> Result<(), PlatformError> {
    settings(config).map(drop)
}

pub(crate) fn settings(config: &TenantConfig) -> Result<TenantSettings, PlatformError> {
    let tenant = config.tenant_id();
    for (name, service) in &config.services {
        let problems = settings::check(
            &format!("tenant {tenant}"),
            name,
            service.enabled,
            &service.settings,
        );
        if let Some(problem) = problems.into_iter().next() {
            return Err(PlatformError::Setting {
                tenant,
                field: problem.field,
                message: problem.message,
            });
        }
    }
    let enabled: HashMap<&str, &mesh_runtime::config::ServiceConfig> =
        config.enabled_services().collect();
    // checked: each value is the tenant's, or its declared default
    let value = |service: &str, key: &str| {
        let declared = settings::declared(service, key).expect("a declared setting");
        enabled
            .get(service)
            .map(|s| settings::count(&s.settings, declared))
    };
    let max_suggestions = value("recommend", "max_suggestions");
    let order_major = enabled.get("order").map(|service| service.version.get());
    let order_grey = enabled
        .get("order")
        .and_then(|service| service.grey.clone());
    let message = enabled.get("message").map(|_| MessageSettings {
        retention_days: value("message", "retention_days")
            .map_or(u32::MAX, |d| u32::try_from(d).unwrap_or(u32::MAX)),
        max_body_bytes: value("message", "max_body_bytes")
            .map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX)),
    });
    let push = enabled.get("push").map(|service| PushSettings {
        webhook: service
            .settings
            .get("webhook")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        timeout: std::time::Duration::from_millis(value("push", "timeout_ms").unwrap_or_default()),
    });
    let devices = enabled.get("gateway").map(|service| {
        let cap = settings::declared("gateway", "at_device_cap").expect("a declared setting");
        mesh_gateway::DevicePolicy {
            max_devices: value("gateway", "max_devices")
                .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            // checked: one of the declared words
            at_cap: mesh_gateway::AtDeviceCap::named(settings::choice(&service.settings, cap))
                .unwrap_or_default(),
        }
    });
    Ok(TenantSettings {
        channels: enabled.contains_key("channel"),
        devices,
        max_suggestions,
        order_major,
        order_grey,
        message,
        push,
    })
}

/// The name of every consumer the platform may subscribe (its own, then the added services'):
/// what a purge deletes the queues of, whatever the tenant ran.
pub fn consumers() -> impl Iterator<Item = &'static str> {
    [
        STORAGE_CONSUMER,
        MESSAGE_CONSUMER,
        ORDER_CONSUMER,
        PUSH_CONSUMER,
        CHANNEL_CONSUMER,
    ]
    .into_iter()
    .chain(
        plugins::SERVICES
            .iter()
            .flat_map(|d| d.consumers.iter().map(|c| c.consumer)),
    )
}

/// The broker queues the platform consumes for a tenant, as [`Platform::add_tenant`] subscribes
/// them (without a consumer suffix): those of the added services it runs ([`plugins`]), the
/// storage consumer of `message.v1` and, when the tenant runs order, the message service's
/// consumer of its order major. Operators find dead letters
/// under these names (`<queue>.dead`).
pub fn queues(config: &TenantConfig) -> Result<Vec<String>, PlatformError> {
    use mesh_contract::spec::names;
    let tenant = config.tenant_id();
    let enabled: HashMap<&str, &mesh_runtime::config::ServiceConfig> =
        config.enabled_services().collect();
    let mut queues: Vec<String> = plugins::SERVICES
        .iter()
        .filter(|descriptor| enabled.contains_key(descriptor.name))
        .flat_map(|descriptor| descriptor.consumers.iter().map(|c| c.queue(&tenant)))
        .collect();
    if !enabled.contains_key("message") {
        return Ok(queues);
    }
    queues.push(names::queue(&tenant, "message", 1, STORAGE_CONSUMER));
    if enabled.contains_key("push") {
        queues.push(names::queue(&tenant, "message", 1, PUSH_CONSUMER));
    }
    if enabled.contains_key("channel") {
        queues.push(names::queue(&tenant, "channel", 1, CHANNEL_CONSUMER));
        queues.push(names::queue(&tenant, "message", 1, CHANNEL_CONSUMER));
    }
    if let Some(service) = enabled.get("order") {
        for consumer in [MESSAGE_CONSUMER, ORDER_CONSUMER] {
            queues.push(names::queue(
                &tenant,
                "order",
                service.version.get(),
                consumer,
            ));
        }
    }
    Ok(queues)
}
