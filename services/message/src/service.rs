//! `message.v1`: send, acks, offline fetch, read receipts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1 as locator,
    message::v1::{self as message, message_server::Message},
};
use mesh_contract::{
    EventBus, RequestContext, ServiceCredentials, TenantId,
    fields::{now_ms, required},
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::MessageSettings;

/// Sender of the messages the platform writes itself (e.g. from order events).
pub const SYSTEM_SENDER: &str = "system";

/// Offline messages a terminal gets per fetch when it asks for no particular number.
const DEFAULT_FETCH: usize = 100;
/// Most offline messages one fetch returns.
const MAX_FETCH: usize = 1000;
/// Most messages kept waiting for a user's terminals; older ones are dropped from the queue
/// (they stay in the store), so a user whose terminals never ack cannot grow it without end.
const MAX_PENDING: usize = 10_000;
/// Sends per conversation whose `client_msg_id` is remembered for retries.
const REMEMBERED_SENDS: usize = 1024;

/// One conversation's numbering and who takes part in it.
#[derive(Default)]
struct Conversation {
    next_seq: u64,
    participants: BTreeSet<String>,
    /// By the sender's `client_msg_id`: a retried send answers the message it made first.
    by_client_id: HashMap<String, message::ChatMessage>,
    /// The remembered ids, oldest first.
    client_ids: std::collections::VecDeque<String>,
}

impl Conversation {
    fn remember(&mut self, client_msg_id: &str, message: &message::ChatMessage) {
        self.by_client_id
            .insert(client_msg_id.to_owned(), message.clone());
        self.client_ids.push_back(client_msg_id.to_owned());
        while self.client_ids.len() > REMEMBERED_SENDS {
            if let Some(oldest) = self.client_ids.pop_front() {
                self.by_client_id.remove(&oldest);
            }
        }
    }
}

/// What one user has not yet received on every terminal.
#[derive(Default)]
struct Inbox {
    /// By arrival number, which follows sequence order within each conversation.
    pending: BTreeMap<u64, message::ChatMessage>,
    /// Terminals seen for this user (acked or fetched): those a send reports as offline.
    terminals: BTreeSet<String>,
    /// Message ids each terminal acknowledged, among `pending`.
    acked: HashMap<String, HashSet<String>>,
}

impl Inbox {
    /// Forgets entries every known terminal has acknowledged (the store keeps them).
    fn trim(&mut self) {
        let (terminals, acked) = (&self.terminals, &mut self.acked);
        self.pending.retain(|_, m| {
            let everywhere = !terminals.is_empty()
                && terminals
                    .iter()
                    .all(|t| acked.get(t).is_some_and(|ids| ids.contains(&m.message_id)));
            if everywhere {
                for ids in acked.values_mut() {
                    ids.remove(&m.message_id);
                }
            }
            !everywhere
        });
    }
}

#[derive(Default)]
struct TenantState {
    settings: MessageSettings,
    conversations: HashMap<String, Conversation>,
    inboxes: HashMap<String, Inbox>,
    next_arrival: u64,
}

struct Inner {
    tenants: RwLock<HashMap<TenantId, Arc<Mutex<TenantState>>>>,
    locator: locator::LocatorCaller<Channel>,
    gateways: Mutex<HashMap<String, gateway::GatewayCaller<Channel>>>,
    events: message::MessagePublisher<Arc<dyn EventBus>>,
    credentials: ServiceCredentials,
}

/// The service; clones share state. Tenants are added with [`MessageService::add_tenant`];
/// a call for any other tenant is refused.
#[derive(Clone)]
pub struct MessageService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageService").finish_non_exhaustive()
    }
}

/// Outcome of pushing to the terminals of one user.
#[derive(Default)]
struct Pushed {
    delivered: Vec<String>,
    offline: Vec<String>,
}

impl MessageService {
    /// A service that finds terminals through the locator behind `locator`, reaches gateways
    /// at the addresses the locator gives (calling both with the tenant's `credentials`), and
    /// publishes its events on `bus`.
    pub fn new(locator: Channel, bus: Arc<dyn EventBus>, credentials: ServiceCredentials) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenants: RwLock::default(),
                locator: locator::LocatorCaller::new(locator),
                gateways: Mutex::default(),
                events: message::MessagePublisher::new(bus),
                credentials,
            }),
        }
    }

    /// Serves `tenant` with its settings (again: replaces the settings, keeps the data).
    pub fn add_tenant(&self, tenant: TenantId, settings: MessageSettings) {
        let mut tenants = self.inner.tenants.write().expect("lock");
        tenants
            .entry(tenant)
            .or_default()
            .lock()
            .expect("lock")
            .settings = settings;
    }

    /// Every served tenant with its settings.
    pub fn tenants(&self) -> Vec<(TenantId, MessageSettings)> {
        self.inner
            .tenants
            .read()
            .expect("lock")
            .iter()
            .map(|(tenant, state)| (tenant.clone(), state.lock().expect("lock").settings))
            .collect()
    }

    fn tenant(&self, tenant: &TenantId) -> Result<Arc<Mutex<TenantState>>, Status> {
        self.inner
            .tenants
            .read()
            .expect("lock")
            .get(tenant)
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "tenant {tenant} is not served by this message service"
                ))
            })
    }

    fn gateway(&self, address: &str) -> Result<gateway::GatewayCaller<Channel>, Status> {
        let mut gateways = self.inner.gateways.lock().expect("lock");
        if let Some(caller) = gateways.get(address) {
            return Ok(caller.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(address.to_owned())
            .map_err(|e| Status::internal(format!("gateway address {address:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_lazy();
        let caller = gateway::GatewayCaller::new(channel);
        gateways.insert(address.to_owned(), caller.clone());
        Ok(caller)
    }

    /// Accepts a message (a user's, or the platform's own), hands it to the bus for storage
    /// and pushes it to the receiver's terminals.
    pub(crate) async fn accept(
        &self,
        ctx: &RequestContext,
        request: message::SendRequest,
        kind: message::MessageKind,
    ) -> Result<message::SendResponse, Status> {
        required("conversation_id", &request.conversation_id)?;
        required("from_user", &request.from_user)?;
        required("to_user", &request.to_user)?;
        required("body", &request.body)?;
        let state = self.tenant(&ctx.tenant)?;
        let (message, arrival) = {
            let mut state = state.lock().expect("lock");
            let limit = state.settings.max_body_bytes;
            if request.body.len() > limit {
                return Err(Status::invalid_argument(format!(
                    "body is {} bytes, over tenant {}'s limit of {limit} bytes (services.message.settings.max_body_bytes)",
                    request.body.len(),
                    ctx.tenant
                )));
            }
            let conversation = state
                .conversations
                .entry(request.conversation_id.clone())
                .or_default();
            if let Some(first) = conversation.by_client_id.get(&request.client_msg_id) {
                // a retry: the message exists and was pushed already
                return Ok(message::SendResponse {
                    message: Some(first.clone()),
                    ..Default::default()
                });
            }
            conversation.next_seq += 1;
            let message = message::ChatMessage {
                message_id: uuid::Uuid::new_v4().to_string(),
                conversation_id: request.conversation_id.clone(),
                seq: conversation.next_seq,
                from_user: request.from_user.clone(),
                to_user: request.to_user.clone(),
                kind: kind as i32,
                body: request.body.clone(),
                sent_at_ms: now_ms(),
            };
            conversation.participants.insert(request.from_user.clone());
            conversation.participants.insert(request.to_user.clone());
            if !request.client_msg_id.is_empty() {
                conversation.remember(&request.client_msg_id, &message);
            }
            // numbered and queued under one lock: arrival order follows sequence order
            state.next_arrival += 1;
            let arrival = state.next_arrival;
            let inbox = state.inboxes.entry(request.to_user.clone()).or_default();
            inbox.pending.insert(arrival, message.clone());
            while inbox.pending.len() > MAX_PENDING {
                inbox.pending.pop_first();
            }
            (message, arrival)
        };

        // storage happens later, from the event; what we wait for is the bus holding it
        let sent = message::MessageSent {
            message: Some(message.clone()),
        };
        if let Err(err) = self.inner.events.publish(ctx, sent).await {
            let mut state = state.lock().expect("lock");
            if let Some(inbox) = state.inboxes.get_mut(&request.to_user) {
                inbox.pending.remove(&arrival);
            }
            if let Some(c) = state.conversations.get_mut(&request.conversation_id) {
                c.by_client_id.remove(&request.client_msg_id);
                c.client_ids.retain(|id| *id != request.client_msg_id);
            }
            return Err(Status::unavailable(format!(
                "message not accepted, the event bus did not take it ({err}); retry with the same client_msg_id"
            )));
        }

        let push = gateway::Push {
            payload: Some(Payload::Message(message.clone())),
        };
        let pushed = self.push(ctx, &request.to_user, None, push).await;
        let known: BTreeSet<String> = state
            .lock()
            .expect("lock")
            .inboxes
            .get(&request.to_user)
            .map(|i| i.terminals.clone())
            .unwrap_or_default();
        let mut offline = pushed.offline;
        let unlocated: Vec<String> = known
            .into_iter()
            .filter(|t| !pushed.delivered.contains(t) && !offline.contains(t))
            .collect();
        offline.extend(unlocated);
        Ok(message::SendResponse {
            message: Some(message),
            delivered_terminals: pushed.delivered,
            offline_terminals: offline,
        })
    }

    /// Pushes to every located terminal of `user` except `skip`, all at once. A push that
    /// fails leaves the terminal offline; the caller is never failed for it.
    async fn push(
        &self,
        ctx: &RequestContext,
        user: &str,
        skip: Option<&str>,
        push: gateway::Push,
    ) -> Pushed {
        let ctx = &self.inner.credentials.outbound(ctx);
        let located = self
            .inner
            .locator
            .clone()
            .locate(
                ctx,
                locator::LocateRequest {
                    user_id: user.into(),
                },
            )
            .await;
        let terminals = match located {
            Ok(found) => found.terminals,
            Err(status) => {
                tracing::warn!(tenant = %ctx.tenant, user, error = %status, "locating terminals failed; pushes wait as offline");
                return Pushed::default();
            }
        };
        let deliveries = terminals
            .into_iter()
            .filter(|t| skip != Some(t.terminal_id.as_str()))
            .map(|t| {
                let push = push.clone();
                async move {
                    let request = gateway::DeliverRequest {
                        user_id: t.user_id.clone(),
                        terminal_id: t.terminal_id.clone(),
                        push: Some(push),
                    };
                    let delivered = match self.gateway(&t.node_address) {
                        Ok(mut gateway) => match gateway.deliver(ctx, request).await {
                            Ok(answer) => answer.delivered,
                            Err(status) => {
                                tracing::warn!(tenant = %ctx.tenant, node = %t.node_id, error = %status, "push failed");
                                false
                            }
                        },
                        Err(status) => {
                            tracing::warn!(tenant = %ctx.tenant, error = %status, "bad gateway address");
                            false
                        }
                    };
                    (t.terminal_id, delivered)
                }
            });
        let mut pushed = Pushed::default();
        for (terminal, delivered) in futures::future::join_all(deliveries).await {
            if delivered {
                pushed.delivered.push(terminal);
            } else {
                pushed.offline.push(terminal);
            }
        }
        pushed
    }
}

#[tonic::async_trait]
impl Message for MessageService {
    async fn send(
        &self,
        request: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        if request.from_user == SYSTEM_SENDER {
            return Err(Status::permission_denied(format!(
                "from_user {SYSTEM_SENDER:?} is reserved for the platform's own messages"
            )));
        }
        self.accept(&ctx, request, message::MessageKind::Text)
            .await
            .map(Response::new)
    }

    async fn ack_delivery(
        &self,
        request: Request<message::AckDeliveryRequest>,
    ) -> Result<Response<message::AckDeliveryResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        required("user_id", &r.user_id)?;
        required("terminal_id", &r.terminal_id)?;
        required("message_id", &r.message_id)?;
        let state = self.tenant(&ctx.tenant)?;
        let mut state = state.lock().expect("lock");
        let inbox = state.inboxes.entry(r.user_id).or_default();
        inbox.terminals.insert(r.terminal_id.clone());
        inbox
            .acked
            .entry(r.terminal_id)
            .or_default()
            .insert(r.message_id);
        inbox.trim();
        Ok(Response::new(message::AckDeliveryResponse {}))
    }

    async fn fetch_offline(
        &self,
        request: Request<message::FetchOfflineRequest>,
    ) -> Result<Response<message::FetchOfflineResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        required("user_id", &r.user_id)?;
        required("terminal_id", &r.terminal_id)?;
        let limit = match r.limit {
            0 => DEFAULT_FETCH,
            n => (n as usize).min(MAX_FETCH),
        };
        let state = self.tenant(&ctx.tenant)?;
        let mut state = state.lock().expect("lock");
        let inbox = state.inboxes.entry(r.user_id).or_default();
        // from now on a send reports this terminal as offline while it is not connected
        inbox.terminals.insert(r.terminal_id.clone());
        let acked = inbox.acked.get(&r.terminal_id);
        let messages = inbox
            .pending
            .values()
            .filter(|m| !acked.is_some_and(|ids| ids.contains(&m.message_id)))
            .take(limit)
            .cloned()
            .collect();
        Ok(Response::new(message::FetchOfflineResponse { messages }))
    }

    async fn mark_read(
        &self,
        request: Request<message::MarkReadRequest>,
    ) -> Result<Response<message::MarkReadResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        required("conversation_id", &r.conversation_id)?;
        required("user_id", &r.user_id)?;
        let others: Vec<String> = {
            let state = self.tenant(&ctx.tenant)?;
            let state = state.lock().expect("lock");
            let conversation = state
                .conversations
                .get(&r.conversation_id)
                .filter(|c| c.participants.contains(&r.user_id))
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "user {:?} has no conversation {:?} in tenant {}",
                        r.user_id, r.conversation_id, ctx.tenant
                    ))
                })?;
            if r.up_to_seq == 0 || r.up_to_seq > conversation.next_seq {
                return Err(Status::invalid_argument(format!(
                    "up_to_seq {} is not a message of conversation {:?} (1..={})",
                    r.up_to_seq, r.conversation_id, conversation.next_seq
                )));
            }
            conversation
                .participants
                .iter()
                .filter(|p| **p != r.user_id && *p != SYSTEM_SENDER)
                .cloned()
                .collect()
        };
        let receipt = message::ReadReceipt {
            conversation_id: r.conversation_id,
            reader: r.user_id.clone(),
            up_to_seq: r.up_to_seq,
            read_at_ms: now_ms(),
        };
        self.inner
            .events
            .publish(
                &ctx,
                message::MessageRead {
                    receipt: Some(receipt.clone()),
                },
            )
            .await
            .map_err(|err| {
                Status::unavailable(format!(
                    "read receipt not recorded, the event bus did not take it ({err})"
                ))
            })?;
        let push = gateway::Push {
            payload: Some(Payload::Receipt(receipt.clone())),
        };
        // the reader's other terminals, and the other side of the conversation
        let skip = (!r.terminal_id.is_empty()).then_some(r.terminal_id.as_str());
        let mut syncs = vec![self.push(&ctx, &r.user_id, skip, push.clone())];
        syncs.extend(
            others
                .iter()
                .map(|other| self.push(&ctx, other, None, push.clone())),
        );
        futures::future::join_all(syncs).await;
        Ok(Response::new(message::MarkReadResponse {
            receipt: Some(receipt),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> message::ChatMessage {
        message::ChatMessage {
            message_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_leaves_the_queue_once_every_known_terminal_acked_it() {
        let mut inbox = Inbox::default();
        inbox.pending.insert(1, msg("a"));
        inbox.pending.insert(2, msg("b"));
        inbox
            .terminals
            .extend(["phone".to_owned(), "desktop".to_owned()]);
        inbox
            .acked
            .entry("phone".into())
            .or_default()
            .insert("a".into());
        inbox.trim();
        assert_eq!(inbox.pending.len(), 2, "the desktop has not acked a");
        inbox
            .acked
            .entry("desktop".into())
            .or_default()
            .insert("a".into());
        inbox.trim();
        let left: Vec<&str> = inbox
            .pending
            .values()
            .map(|m| m.message_id.as_str())
            .collect();
        assert_eq!(left, ["b"]);
        assert!(
            inbox.acked.values().all(|ids| !ids.contains("a")),
            "acks of a forgotten"
        );
    }

    #[test]
    fn only_the_latest_client_ids_are_remembered() {
        let mut conversation = Conversation::default();
        for i in 0..=REMEMBERED_SENDS {
            conversation.remember(&format!("c{i}"), &msg(&format!("m{i}")));
        }
        assert_eq!(conversation.by_client_id.len(), REMEMBERED_SENDS);
        assert!(!conversation.by_client_id.contains_key("c0"));
        assert_eq!(
            conversation.by_client_id[&format!("c{REMEMBERED_SENDS}")].message_id,
            format!("m{REMEMBERED_SENDS}")
        );
    }
}
