//! The push service (tier 2): tells a business line's notifier that a user has something
//! waiting while none of the user's terminals is attached.
//!
//! Two ways in, one notifier per tenant ([`Webhook`], from `services.push.settings.webhook`):
//! - [`OfflineNotices`], a consumer of the message service's `MessageSent` events: when the
//!   receiver has no terminal attached anywhere, the notifier is told, asynchronously, through
//!   the queue. A notifier that is down is retried (with the bus's growing backoff) until it
//!   is back; one that refuses a notification gets it dead-lettered, with its answer as the
//!   reason (`meshctl dlq show`).
//! - [`PushService::notify`], the `push.v1.Push/Notify` call for business backends.
//!
//! Push is tier 2: ops switch it off (`meshctl switch off push --tenant mall`, or `tier>=2`)
//! and then `Notify` answers its degraded answer at once and offline messages notify nobody.
//! Nothing is lost by that: the messages wait in the user's timeline, and a terminal syncs
//! them from its cursor when it comes back.

mod webhook;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_api::{
    locator::v1 as locator,
    message::v1 as message,
    push::v1::{self as push, push_server::Push},
};
use mesh_contract::{
    HandlerError, RequestContext, ServiceCredentials, TenantId,
    fields::{id, required},
};
use mesh_runtime::{OutboundChannel, layers::SwitchBoard};
use tonic::{Request, Response, Status};

pub use webhook::{Notification, NotifyError, Webhook, parse_url};

/// How long a notifier may take to answer, unless the tenant file says otherwise
/// (`services.push.settings.timeout_ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Characters of a chat message shown in its notification.
pub const PREVIEW_CHARS: usize = 100;
/// Longest title or body `Notify` takes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// The service: each tenant's webhook. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct PushService {
    client: reqwest::Client,
    webhooks: Arc<RwLock<HashMap<TenantId, Webhook>>>,
}

impl PushService {
    /// Sends `tenant`'s notifications to the webhook at `url`, each bounded by `timeout`.
    pub fn set_webhook(
        &self,
        tenant: TenantId,
        url: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let webhook = Webhook::new(self.client.clone(), url, timeout)?;
        self.webhooks.write().expect("lock").insert(tenant, webhook);
        Ok(())
    }

    /// `tenant`'s webhook, if it has one.
    pub fn webhook(&self, tenant: &TenantId) -> Option<Webhook> {
        self.webhooks.read().expect("lock").get(tenant).cloned()
    }
}

#[tonic::async_trait]
impl Push for PushService {
    async fn notify(
        &self,
        request: Request<push::NotifyRequest>,
    ) -> Result<Response<push::NotifyResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        id("user_id", &r.user_id)?;
        id("notification_id", &r.notification_id)?;
        required("body", &r.body)?;
        for (field, text) in [("title", &r.title), ("body", &r.body)] {
            if text.len() > MAX_TEXT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "{field} is {} bytes, over the limit of {MAX_TEXT_BYTES}",
                    text.len()
                )));
            }
        }
        let webhook = self.webhook(&ctx.tenant).ok_or_else(|| {
            Status::failed_precondition(format!(
                "tenant {} has no notifier (services.push.settings.webhook)",
                ctx.tenant
            ))
        })?;
        let notification = Notification {
            tenant: ctx.tenant.to_string(),
            user_id: r.user_id,
            notification_id: r.notification_id,
            title: r.title,
            body: r.body,
            data: r.data.into_iter().collect(),
        };
        match webhook.send(&notification).await {
            Ok(()) => Ok(Response::new(push::NotifyResponse { notified: true })),
            Err(err @ NotifyError::Transient { .. }) => Err(Status::unavailable(err.to_string())),
            Err(err @ NotifyError::Refused { .. }) => {
                Err(Status::failed_precondition(err.to_string()))
            }
        }
    }
}

/// The consumer of `MessageSent` that notifies receivers with no attached terminal.
/// Subscribe it per tenant with `MessageConsumer::new(notices).subscription(tenant, "push")`.
#[derive(Clone)]
pub struct OfflineNotices {
    push: PushService,
    locator: locator::LocatorCaller<OutboundChannel>,
    credentials: ServiceCredentials,
    switches: SwitchBoard,
}

impl std::fmt::Debug for OfflineNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineNotices").finish_non_exhaustive()
    }
}

impl OfflineNotices {
    /// Notifies through `push`'s webhooks, asking the locator behind `locator` (with the
    /// tenant's `credentials`) whether the receiver is attached, unless `switches` turn push
    /// off for the tenant.
    pub fn new(
        push: PushService,
        locator: OutboundChannel,
        credentials: ServiceCredentials,
        switches: SwitchBoard,
    ) -> Self {
        Self {
            push,
            locator: locator::LocatorCaller::new(locator),
            credentials,
            switches,
        }
    }
}

/// What a chat message's notification says.
pub fn chat_notification(tenant: &TenantId, m: &message::ChatMessage) -> Notification {
    let mut body: String = m.body.chars().take(PREVIEW_CHARS).collect();
    if body.len() < m.body.len() {
        body.push('…');
    }
    Notification {
        tenant: tenant.to_string(),
        user_id: m.to_user.clone(),
        notification_id: m.message_id.clone(),
        title: m.from_user.clone(),
        body,
        data: BTreeMap::from([
            ("conversation_id".into(), m.conversation_id.clone()),
            ("message_id".into(), m.message_id.clone()),
            ("position".into(), m.position.to_string()),
        ]),
    }
}

impl message::MessageHandler for OfflineNotices {
    async fn on_message_sent(
        &self,
        ctx: &RequestContext,
        event: message::MessageSent,
    ) -> Result<(), HandlerError> {
        let m = event
            .message
            .ok_or_else(|| HandlerError::Reject("MessageSent carries no message".into()))?;
        if let Some(switch) =
            self.switches
                .switched_off(&ctx.tenant, &push::contract::SPEC, &push::contract::NOTIFY)
        {
            // degraded: nobody is woken up; the message waits in the timeline all the same
            tracing::debug!(tenant = %ctx.tenant, switch = %switch.scope(), "push is off; no offline notice");
            return Ok(());
        }
        let Some(webhook) = self.push.webhook(&ctx.tenant) else {
            return Ok(());
        };
        let attached = self
            .locator
            .clone()
            .locate(
                &self.credentials.outbound(ctx),
                locator::LocateRequest {
                    user_id: m.to_user.clone(),
                },
            )
            .await
            .map_err(|s| HandlerError::Retry(format!("locating {}: {s}", m.to_user)))?;
        if !attached.terminals.is_empty() {
            return Ok(()); // online: the push on the stream is the notification
        }
        match webhook.send(&chat_notification(&ctx.tenant, &m)).await {
            Ok(()) => Ok(()),
            Err(err) if err.is_transient() => Err(HandlerError::Retry(err.to_string())),
            Err(err) => Err(HandlerError::Reject(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_notification_previews_the_message_and_points_at_it() {
        let tenant = TenantId::new("mall").unwrap();
        let m = message::ChatMessage {
            message_id: "m-1".into(),
            conversation_id: "c-1".into(),
            from_user: "agent".into(),
            to_user: "alice".into(),
            body: "é".repeat(150),
            position: 7,
            ..Default::default()
        };
        let n = chat_notification(&tenant, &m);
        assert_eq!(n.user_id, "alice");
        assert_eq!(n.title, "agent");
        assert_eq!(n.body.chars().count(), PREVIEW_CHARS + 1);
        assert!(n.body.ends_with('…'));
        assert_eq!(n.data["position"], "7");
        assert_eq!(n.notification_id, "m-1");
    }
}
