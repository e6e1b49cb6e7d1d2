//! Third-party channels (tier 1): the GW access point beside apps (the gRPC front door) and
//! browsers (the web access). Customers write to a business line from another messaging
//! platform; the line's agents answer in their own terminals, as to any customer.
//!
//! A channel is declared in the tenant file (`[channels.<name>]`, [`mesh_config::channels`]):
//! the kind of platform (an [`Adapter`]: [`webhook`], [`wechat`]), its secrets by reference,
//! the agent who answers there, the rate the platform allows. Three paths:
//!
//! - **A callback** (`channel.v1.Channel/Callback`, which the web access calls for
//!   `/channels/<tenant>/<channel>` with the node credential): checked as the platform signs
//!   it, each message in it recorded (`InboundReceived`, confirmed by the broker), and only then
//!   answered as the platform expects: the platform's time limit is met (ack first) and nothing
//!   it was told OK for is lost.
//! - **Storing** ([`ChannelService`] as the consumer of `InboundReceived`):
//!   `message.v1.SendFromChannel` (a node's call, for channel users only) from the channel user (`ch:<channel>:<platform user>`, [`mesh_config::channels::user_id`])
//!   to the agent, in the conversation named like the user, with the platform's message id as
//!   the client id: a callback delivered twice is stored once.
//! - **Answering** ([`Replies`], a consumer of `message.v1.MessageSent`): a message the agent
//!   sent to a channel user goes to the platform's API from the queue, never from the agent's
//!   `Send`: retried (with the bus's growing backoff) until the platform answers, dead-lettered
//!   with the platform's words when it refuses for good, at most `sends_per_second`, and sent
//!   once per message even when `MessageSent` comes twice (a record per sent message).

pub mod adapter;
pub mod webhook;
pub mod wechat;

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    sync::{Arc, RwLock},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh_api::{
    channel::v1::{self as channel, channel_server::Channel},
    message::v1 as message,
};
use mesh_config::channels::{self as config, ChannelConfig};
use mesh_contract::{EventBus, HandlerError, RequestContext, ServiceCredentials, TenantId};
use mesh_runtime::OutboundChannel;
use mesh_store::{Collection, RecordStore, StoreError};
use tonic::{Request, Response, Status};

pub use adapter::{Adapter, Checked, Incoming, Refusal, SendError};

/// The collection where each sent answer is marked, by message id.
pub const SENT: &str = "channel_sent";

/// The collection of channel users, by user id: the inbound message that named each last
/// (its platform user id, which the user id may hold only as a digest).
pub const USERS: &str = "channel_users";

/// One channel of one tenant, ready to use.
struct Served {
    agent: String,
    adapter: Adapter,
    sends: DefaultDirectRateLimiter,
}

struct Inner {
    client: reqwest::Client,
    channels: RwLock<HashMap<TenantId, HashMap<String, Arc<Served>>>>,
    events: channel::ChannelPublisher<Arc<dyn EventBus>>,
    messages: message::MessageCaller<OutboundChannel>,
    credentials: ServiceCredentials,
    sent: Collection<()>,
    users: Collection<channel::InboundMessage>,
}

/// The service; clones share the channels.
#[derive(Clone)]
pub struct ChannelService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChannelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelService").finish_non_exhaustive()
    }
}

impl ChannelService {
    /// Records callbacks on `bus`, stores their messages through the message service behind
    /// `messages` (with the node credential of `credentials`), and marks sent answers in
    /// `records` (each tenant's own namespace).
    pub fn new(
        bus: Arc<dyn EventBus>,
        messages: OutboundChannel,
        credentials: ServiceCredentials,
        records: Arc<dyn RecordStore>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: reqwest::Client::new(),
                channels: RwLock::default(),
                events: channel::ChannelPublisher::new(bus),
                messages: message::MessageCaller::new(messages),
                credentials,
                sent: Collection::new(records.clone(), SENT),
                users: Collection::new(records, USERS),
            }),
        }
    }

    /// Serves `tenant`'s `channels` (checked with its file), replacing any it had.
    pub fn set_channels(&self, tenant: TenantId, channels: &BTreeMap<String, ChannelConfig>) {
        let served = channels
            .iter()
            .map(|(name, config)| {
                let rate = NonZeroU32::new(config.sends_per_second).unwrap_or(NonZeroU32::MIN);
                let served = Served {
                    agent: config.agent.clone(),
                    adapter: Adapter::new(config, self.inner.client.clone()),
                    sends: RateLimiter::direct(Quota::per_second(rate)),
                };
                (name.clone(), Arc::new(served))
            })
            .collect();
        self.inner
            .channels
            .write()
            .expect("lock")
            .insert(tenant, served);
    }

    /// Stops serving `tenant`'s channels.
    pub fn remove_tenant(&self, tenant: &TenantId) {
        self.inner.channels.write().expect("lock").remove(tenant);
    }

    fn served(&self, tenant: &TenantId, name: &str) -> Option<Arc<Served>> {
        self.inner
            .channels
            .read()
            .expect("lock")
            .get(tenant)
            .and_then(|channels| channels.get(name))
            .cloned()
    }

    /// The consumer of `message.v1.MessageSent` that sends agents' answers to the platforms.
    pub fn replies(&self) -> Replies {
        Replies {
            service: self.clone(),
        }
    }
}

/// A client id for a platform's message id: the id itself when it is made of id characters,
/// else a digest of it (a redelivery maps to the same).
fn client_id(channel: &str, platform_message_id: &str) -> String {
    config::user_id(channel, platform_message_id).replacen(config::USER_PREFIX, "in:", 1)
}

#[tonic::async_trait]
impl Channel for ChannelService {
    async fn callback(
        &self,
        request: Request<channel::CallbackRequest>,
    ) -> Result<Response<channel::CallbackResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        let served = self.served(&ctx.tenant, &r.channel).ok_or_else(|| {
            Status::not_found(format!(
                "tenant {} has no channel {:?} (channels.<name> in its file)",
                ctx.tenant, r.channel
            ))
        })?;
        let checked = served
            .adapter
            .check(&r, mesh_contract::fields::now_ms())
            .map_err(|refusal| {
                tracing::info!(tenant = %ctx.tenant, channel = %r.channel, %refusal, "a channel callback refused");
                match refusal {
                    Refusal::Forged(why) => Status::unauthenticated(format!("channel {}: {why}", r.channel)),
                    Refusal::Malformed(why) => Status::invalid_argument(format!("channel {}: {why}", r.channel)),
                }
            })?;
        // recorded before the platform is told OK: a message it was answered for is never lost
        for incoming in checked.messages {
            let user_id = config::user_id(&r.channel, &incoming.platform_user);
            let event = channel::InboundMessage {
                channel: r.channel.clone(),
                platform_message_id: incoming.platform_message_id,
                platform_user: incoming.platform_user,
                conversation_id: user_id.clone(),
                user_id,
                agent: served.agent.clone(),
                text: incoming.text,
                sent_at_ms: incoming.sent_at_ms,
            };
            self.inner.events.publish(&ctx, event).await.map_err(|err| {
                Status::unavailable(format!(
                    "channel {}: the message could not be recorded ({err}); the platform sends it again",
                    r.channel
                ))
            })?;
        }
        Ok(Response::new(checked.reply))
    }
}

impl channel::ChannelHandler for ChannelService {
    async fn on_inbound_received(
        &self,
        ctx: &RequestContext,
        m: channel::InboundMessage,
    ) -> Result<(), HandlerError> {
        // who the user is on the platform, for the answers (a digest names no one there)
        self.inner
            .users
            .put(&ctx.tenant, &m.user_id, &m.channel, &m)
            .await
            .map_err(store_error)?;
        let request = message::SendRequest {
            conversation_id: m.conversation_id,
            from_user: m.user_id,
            to_user: m.agent,
            body: m.text,
            client_msg_id: client_id(&m.channel, &m.platform_message_id),
        };
        self.inner
            .messages
            .clone()
            .send_from_channel(&self.inner.credentials.outbound(ctx), request)
            .await
            .map(drop)
            .map_err(mesh_plugin::handler_error)
    }
}

/// Sends the agents' answers to channel users to their platforms (see the [crate] docs).
#[derive(Clone)]
pub struct Replies {
    service: ChannelService,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies").finish_non_exhaustive()
    }
}

/// A store failure while marking or reading a sent answer.
fn store_error(err: StoreError) -> HandlerError {
    if err.is_transient() {
        HandlerError::Retry(err.to_string())
    } else {
        HandlerError::Reject(err.to_string())
    }
}

impl message::MessageHandler for Replies {
    async fn on_message_sent(
        &self,
        ctx: &RequestContext,
        event: message::MessageSent,
    ) -> Result<(), HandlerError> {
        let m = event
            .message
            .ok_or_else(|| HandlerError::Reject("MessageSent carries no message".into()))?;
        let Some(name) = config::channel_of(&m.to_user) else {
            return Ok(()); // to an app's or a browser's user: not a channel's
        };
        let Some(served) = self.service.served(&ctx.tenant, name) else {
            tracing::warn!(tenant = %ctx.tenant, channel = name, message = %m.message_id, "a message to a channel this tenant does not serve (removed?); not sent");
            return Ok(());
        };
        // only the channel's agent speaks there for the business line
        if m.from_user != served.agent || m.kind != message::MessageKind::Text as i32 {
            tracing::warn!(tenant = %ctx.tenant, channel = name, from = %m.from_user, message = %m.message_id, "not the channel agent's text: not sent to the platform");
            return Ok(());
        }
        let named = self
            .service
            .inner
            .users
            .get(&ctx.tenant, &m.to_user)
            .await
            .map_err(store_error)?;
        let platform_user = match &named {
            Some(record) => record.value.platform_user.as_str(),
            None => config::platform_user(&m.to_user).ok_or_else(|| {
                HandlerError::Reject(format!(
                    "{} has written nothing yet: who they are on the platform is unknown",
                    m.to_user
                ))
            })?,
        };
        let sent = &self.service.inner.sent;
        if sent
            .get(&ctx.tenant, &m.message_id)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Ok(()); // announced twice (a retried Send): sent the first time
        }
        served.sends.until_ready().await;
        match served
            .adapter
            .send(platform_user, &m.body, &m.message_id)
            .await
        {
            Ok(()) => {
                if let Err(err) = sent.put(&ctx.tenant, &m.message_id, &m.to_user, &()).await {
                    // sent: a redelivery may send it once more, which the platform may drop
                    tracing::warn!(tenant = %ctx.tenant, message = %m.message_id, error = %err, "a sent answer could not be marked");
                }
                Ok(())
            }
            Err(SendError::Transient(why)) => Err(HandlerError::Retry(why)),
            Err(SendError::Refused(why)) => Err(HandlerError::Reject(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platforms_message_ids_make_stable_client_ids() {
        assert_eq!(
            client_id("wx", "1234567890123456"),
            "in:wx:1234567890123456"
        );
        let odd = client_id("site", "id with spaces / and more");
        assert!(odd.starts_with("in:site:h-"), "{odd}");
        assert_eq!(odd, client_id("site", "id with spaces / and more"));
        mesh_contract::fields::id("client_msg_id", &odd).unwrap();
    }
}
