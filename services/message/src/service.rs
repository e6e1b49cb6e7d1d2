// Long on purpose: the message service's calls (send, sync, acks, receipts) over one store and one
// delivery path, read together; archive, settings and system messages are apart.
//! `message.v1`: send, acks, sync from a cursor, read receipts.
//!
//! The service keeps no message state of its own: numbering, client-id deduplication, each
//! user's timeline and each terminal's cursor live in the [`MessageStore`], so any worker can
//! serve any call and a restarted one goes on where the last stopped. A send is stored first
//! (in a task of its own, so a caller's deadline or disconnect cannot cut the durable step in
//! half), then announced and pushed; every later step is safe to repeat, which a retry with
//! the same `client_msg_id` does.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1 as locator,
    message::v1::{self as message, message_server::Message},
};
use mesh_contract::{
    EventBus, RequestContext, ServiceCredentials, TenantId,
    fields::{id, now_ms, optional_id, required},
};
use mesh_runtime::{Outbound, OutboundChannel, Peers};
use mesh_store::{Accepted, MessageStore, NewMessage, StoreError, StoredMessage};
use tonic::{Request, Response, Status};

use crate::MessageSettings;

mod devices;
mod reading;

pub use mesh_contract::fields::SYSTEM_SENDER;

/// How often a send tries to locate the receiver's terminals (within its own deadline).
const LOCATE_ATTEMPTS: u64 = 3;

/// A failure that a second try may not meet: a deadline passed or a connection was lost.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unavailable
            | tonic::Code::Unknown
    )
}

/// Messages a sync returns per page when the terminal asks for no particular number.
const DEFAULT_FETCH: usize = 100;
/// Most messages one sync page returns.
const MAX_FETCH: usize = 1000;

struct Inner {
    settings: RwLock<HashMap<TenantId, MessageSettings>>,
    store: Arc<dyn MessageStore>,
    locator: locator::LocatorCaller<OutboundChannel>,
    /// The access nodes, at the addresses the locator gives.
    gateways: Peers,
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

/// A store failure as a caller should see it: transient ones are `UNAVAILABLE` (retry), with
/// the database's words (a failover's, a connection's) in the log only; the others say what
/// was refused and why, which is about the caller's data.
fn store_status(err: StoreError, what: &str) -> Status {
    match &err {
        StoreError::UnknownTenant(_) | StoreError::NotAParticipant { .. } => {
            Status::permission_denied(err.to_string())
        }
        _ if err.is_transient() => {
            tracing::warn!(error = %err, "{what}: the message store is unavailable");
            Status::unavailable(format!(
                "{what}: the message store is unavailable for a moment; retry"
            ))
        }
        // about the data (a value it cannot hold, a rule of the database's refusing it): the
        // caller, and the operator reading a dead letter, need the reason
        _ => Status::invalid_argument(format!("{what}: the message store refused it ({err})")),
    }
}

/// The contract's form of a stored message.
pub(crate) fn chat(m: StoredMessage) -> message::ChatMessage {
    let receipt = m.receipt().map(|r| message::ReadReceipt {
        conversation_id: r.conversation_id,
        reader: r.reader,
        up_to_seq: r.up_to_seq,
        read_at_ms: r.read_at_ms,
        position: m.position,
    });
    message::ChatMessage {
        receipt,
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        from_user: m.from_user,
        to_user: m.to_user,
        kind: m.kind,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        position: m.position,
    }
}

impl MessageService {
    /// A service keeping its messages in `store`, finding terminals through the locator behind
    /// `locator` (a channel of `outbound`), reaching gateways at the addresses the locator gives (calling both with the
    /// tenant's `credentials`, both through the process's `outbound` stack: a CLIENT span, the
    /// deadline and the tenant's bulkhead for that dependency), and announcing messages on
    /// `bus`.
    pub fn new(
        store: Arc<dyn MessageStore>,
        locator: OutboundChannel,
        bus: Arc<dyn EventBus>,
        credentials: ServiceCredentials,
        outbound: Outbound,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: RwLock::default(),
                store,
                locator: locator::LocatorCaller::new(locator),
                gateways: outbound.peers("gateway", credentials.clone()),
                events: message::MessagePublisher::new(bus),
                credentials,
            }),
        }
    }

    /// Serves `tenant` with its settings (again: replaces the settings; the data is the
    /// store's). The tenant's namespace must be open in the store.
    pub fn add_tenant(&self, tenant: TenantId, settings: MessageSettings) {
        self.inner
            .settings
            .write()
            .expect("lock")
            .insert(tenant, settings);
    }

    /// Every served tenant with its settings.
    pub fn tenants(&self) -> Vec<(TenantId, MessageSettings)> {
        self.inner
            .settings
            .read()
            .expect("lock")
            .iter()
            .map(|(tenant, settings)| (tenant.clone(), *settings))
            .collect()
    }

    fn settings(&self, tenant: &TenantId) -> Result<MessageSettings, Status> {
        self.inner
            .settings
            .read()
            .expect("lock")
            .get(tenant)
            .copied()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "tenant {tenant} is not served by this message service"
                ))
            })
    }

    /// The access node at `address` (over mutual TLS when the nodes use it: the gateway
    /// registered an https address).
    fn gateway(&self, address: &str) -> Result<gateway::GatewayCaller<OutboundChannel>, Status> {
        Ok(gateway::GatewayCaller::new(
            self.inner.gateways.channel(address)?,
        ))
    }

    /// Accepts a message (a user's, or the platform's own): stores it, then announces it on the
    /// bus and pushes it to the receiver's terminals at once.
    pub(crate) async fn accept(
        &self,
        ctx: &RequestContext,
        request: message::SendRequest,
        kind: message::MessageKind,
    ) -> Result<message::SendResponse, Status> {
        self.check_send(ctx, &request)?;
        let message = self.store_once(ctx, request, kind).await?;
        // the push needs the stored message, not the event: both at once (a retry after a
        // failed announcement pushes again, which terminals drop by message id); the OK still
        // waits for the announcement's confirm, which is its promise
        let (announced, delivered) = tokio::join!(
            self.announce(ctx, &message),
            self.deliver(ctx, message.clone())
        );
        announced?;
        Ok(delivered)
    }

    /// A send to a third-party channel's customer goes into the conversation their first
    /// message opened (named like them), which only its participants (they and the channel's
    /// agent) write into: nobody opens it first to sit in the customer's thread, and nothing
    /// is sent to the platform from elsewhere.
    async fn check_channel_reply(
        &self,
        ctx: &RequestContext,
        request: &message::SendRequest,
    ) -> Result<(), Status> {
        let channel = mesh_contract::fields::is_channel_user;
        if !channel(&request.to_user) && !channel(&request.conversation_id) {
            return Ok(());
        }
        if request.to_user != request.conversation_id {
            return Err(Status::invalid_argument(format!(
                "a third-party channel's customer is answered in their own conversation: \
                 to_user and conversation_id both {:?}",
                if channel(&request.to_user) {
                    &request.to_user
                } else {
                    &request.conversation_id
                }
            )));
        }
        let opened = self
            .inner
            .store
            .conversation(&ctx.tenant, &request.conversation_id)
            .await
            .map_err(|e| store_status(e, "message not stored"))?;
        if opened.is_none() {
            return Err(Status::failed_precondition(format!(
                "conversation {:?} is opened by the customer's first message on their platform",
                request.conversation_id
            )));
        }
        Ok(())
    }

    /// A send's fields, against the tenant's limits.
    fn check_send(
        &self,
        ctx: &RequestContext,
        request: &message::SendRequest,
    ) -> Result<(), Status> {
        id("conversation_id", &request.conversation_id)?;
        id("from_user", &request.from_user)?;
        id("to_user", &request.to_user)?;
        // without it a send cannot be retried safely, and every send may need a retry
        id("client_msg_id", &request.client_msg_id)?;
        required("body", &request.body)?;
        let limit = self.settings(&ctx.tenant)?.max_body_bytes;
        if request.body.len() > limit {
            return Err(Status::invalid_argument(format!(
                "body is {} bytes, over tenant {}'s limit of {limit} bytes (services.message.settings.max_body_bytes)",
                request.body.len(),
                ctx.tenant
            )));
        }
        if request.body.contains('\0') {
            return Err(Status::invalid_argument(
                "body contains a NUL character, which no store keeps",
            ));
        }
        Ok(())
    }

    /// Stores the message once (a retry with the same `client_msg_id` finds the first one),
    /// to its end even if the call is dropped meanwhile.
    async fn store_once(
        &self,
        ctx: &RequestContext,
        request: message::SendRequest,
        kind: message::MessageKind,
    ) -> Result<message::ChatMessage, Status> {
        let (request_to, request_body, first_client_id) = (
            request.to_user.clone(),
            request.body.clone(),
            request.client_msg_id.clone(),
        );
        let new = NewMessage {
            message_id: uuid::Uuid::new_v4().to_string(),
            conversation_id: request.conversation_id,
            client_msg_id: request.client_msg_id,
            from_user: request.from_user,
            to_user: request.to_user,
            kind: kind as i32,
            body: request.body,
            sent_at_ms: now_ms(),
            // people write only into their own conversations; the platform anywhere
            members_only: matches!(ctx.caller, mesh_contract::Caller::User(_)),
        };
        // The durable step runs to its end in its own task even if this call is dropped now
        // (deadline, disconnect): a retry then finds the message instead of half of it.
        let store = self.inner.store.clone();
        let tenant = ctx.tenant.clone();
        let accepted = tokio::spawn(async move { store.accept(&tenant, &new).await })
            .await
            .map_err(|e| Status::internal(format!("storing the message failed: {e}")))?
            .map_err(|e| store_status(e, "message not stored"))?;
        if let Accepted::Existing(first) = &accepted
            && (first.to_user != request_to || first.body != request_body)
        {
            return Err(Status::already_exists(format!(
                "client_msg_id {:?} of {:?} was used for another message of conversation {:?} (seq {}); a new message needs a new id",
                first_client_id, first.from_user, first.conversation_id, first.seq
            )));
        }
        Ok(chat(accepted.into_message()))
    }

    /// Announces a stored message: after it is stored, and again on a retry (the first
    /// announcement may have been cut off): consumers dedupe by message id.
    async fn announce(
        &self,
        ctx: &RequestContext,
        message: &message::ChatMessage,
    ) -> Result<(), Status> {
        let sent = message::MessageSent {
            message: Some(message.clone()),
        };
        if let Err(err) = self.inner.events.publish(ctx, sent).await {
            return Err(Status::unavailable(format!(
                "message stored as seq {} of {:?} but not announced, the event bus did not take it ({err}); retry with the same client_msg_id",
                message.seq, message.conversation_id
            )));
        }
        Ok(())
    }

    /// Pushes a stored message to its receiver's terminals; the answer says which got it and
    /// which are offline (those sync it later). Never fails: the message is stored already.
    async fn deliver(
        &self,
        ctx: &RequestContext,
        message: message::ChatMessage,
    ) -> message::SendResponse {
        let push = gateway::Push {
            payload: Some(Payload::Message(message.clone())),
        };
        let (pushed, known) = tokio::join!(
            self.push(ctx, &message.to_user, None, push),
            self.inner.store.terminals(&ctx.tenant, &message.to_user)
        );
        let mut offline = pushed.offline;
        for terminal in known.unwrap_or_default() {
            if !pushed.delivered.contains(&terminal) && !offline.contains(&terminal) {
                offline.push(terminal);
            }
        }
        message::SendResponse {
            message: Some(message),
            delivered_terminals: pushed.delivered,
            offline_terminals: offline,
        }
    }

    /// Where `user`'s attached terminals are. A locate lost to a passing overload (its
    /// deadline, a connection being replaced) is tried again while the caller's deadline
    /// allows: giving up reports attached terminals as away.
    async fn locate(
        &self,
        ctx: &RequestContext,
        user: &str,
    ) -> Result<Vec<locator::TerminalLocation>, Status> {
        let mut attempt = 1;
        // 20 ms then 40 ms (each drawn in its upper half), well inside a send's deadline
        let mut backoff =
            mesh_contract::Backoff::new(Duration::from_millis(20), Duration::from_millis(40));
        loop {
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
            match located {
                Err(status) if attempt < LOCATE_ATTEMPTS && transient(&status) => {
                    tracing::debug!(tenant = %ctx.tenant, user, attempt, error = %status, "locating terminals again");
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                located => return located.map(|found| found.terminals),
            }
        }
    }

    /// Hands `push` to the access node `to` is attached on; whether it reached the terminal.
    async fn deliver_to(
        &self,
        ctx: &RequestContext,
        to: &locator::TerminalLocation,
        push: gateway::Push,
    ) -> bool {
        let request = gateway::DeliverRequest {
            user_id: to.user_id.clone(),
            terminal_id: to.terminal_id.clone(),
            push: Some(push),
        };
        match self.gateway(&to.node_address) {
            Ok(mut gateway) => match gateway.deliver(ctx, request).await {
                Ok(answer) => answer.delivered,
                Err(status) => {
                    tracing::warn!(tenant = %ctx.tenant, node = %to.node_id, error = %status, "push failed");
                    false
                }
            },
            Err(status) => {
                tracing::warn!(tenant = %ctx.tenant, error = %status, "bad gateway address");
                false
            }
        }
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
        let terminals = match self.locate(ctx, user).await {
            Ok(terminals) => terminals,
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
                    let delivered = self.deliver_to(ctx, &t, push).await;
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
        let mut request = request.into_inner();
        // an end user sends as the user of its token, whatever from_user says
        request.from_user = ctx.act_as("from_user", &request.from_user)?;
        // ids are ASCII (checked in accept), so no look-alike passes this either
        // nor write to it: the platform's sender is nobody's inbox
        if mesh_contract::fields::is_reserved_sender(&request.to_user) {
            return Err(Status::invalid_argument(format!(
                "to_user {:?}: the platform's own sender receives no messages",
                request.to_user
            )));
        }
        if mesh_contract::fields::is_reserved_sender(&request.from_user) {
            return Err(Status::permission_denied(format!(
                "from_user {SYSTEM_SENDER:?} is reserved for the platform's own messages"
            )));
        }
        if mesh_contract::fields::is_channel_user(&request.from_user) {
            return Err(Status::permission_denied(format!(
                "from_user {:?}: ids starting {:?} are third-party channels' users, for whom \
                 only the mesh sends (SendFromChannel)",
                request.from_user,
                mesh_contract::fields::CHANNEL_USER_PREFIX
            )));
        }
        self.check_channel_reply(&ctx, &request).await?;
        self.accept(&ctx, request, message::MessageKind::Text)
            .await
            .map(Response::new)
    }

    async fn send_from_channel(
        &self,
        request: Request<message::SendRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        // the node sends for a channel's customer, and for nobody else
        if !mesh_contract::fields::is_channel_user(&request.from_user) {
            return Err(Status::invalid_argument(format!(
                "from_user {:?} is no channel's user (ids starting {:?}): SendFromChannel sends \
                 only what a third-party channel's customer wrote",
                request.from_user,
                mesh_contract::fields::CHANNEL_USER_PREFIX
            )));
        }
        if mesh_contract::fields::is_reserved_sender(&request.to_user) {
            return Err(Status::invalid_argument(format!(
                "to_user {:?}: the platform's own sender receives no messages",
                request.to_user
            )));
        }
        self.accept(&ctx, request, message::MessageKind::Text)
            .await
            .map(Response::new)
    }

    async fn send_system(
        &self,
        request: Request<message::SendSystemRequest>,
    ) -> Result<Response<message::SendResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        // the platform's own sender receives nothing (a message to it would read as one the
        // platform sent itself)
        if mesh_contract::fields::is_reserved_sender(&r.to_user) {
            return Err(Status::invalid_argument(format!(
                "to_user {:?}: the platform's own sender receives no messages",
                r.to_user
            )));
        }
        if r.key.is_empty() {
            return Err(Status::invalid_argument(
                "key is required: a retried notice must find the message the first stored",
            ));
        }
        id("to_user", &r.to_user)?;
        id("conversation_id", &r.conversation_id)?;
        // a notice goes into a conversation of its receiver's, or a new one: never into
        // somebody else's (the receiver would become a participant, able to write there)
        let existing = self
            .inner
            .store
            .conversation(&ctx.tenant, &r.conversation_id)
            .await
            .map_err(|e| store_status(e, "notice not stored"))?;
        if let Some(conversation) = existing
            && !conversation.participants.iter().any(|p| p == &r.to_user)
        {
            return Err(Status::failed_precondition(format!(
                "conversation {:?} is not {:?}'s: a notice goes into one of the receiver's \
                 conversations, or a new one",
                r.conversation_id, r.to_user
            )));
        }
        let request = message::SendRequest {
            conversation_id: r.conversation_id,
            from_user: SYSTEM_SENDER.into(),
            to_user: r.to_user,
            body: r.body,
            client_msg_id: r.key,
        };
        self.accept(&ctx, request, message::MessageKind::System)
            .await
            .map(Response::new)
    }

    async fn ack_delivery(
        &self,
        request: Request<message::AckDeliveryRequest>,
    ) -> Result<Response<message::AckDeliveryResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let mut r = request.into_inner();
        // an end user acts only as itself (and its token's terminal, if it names one)
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        r.terminal_id = ctx.act_for_terminal("terminal_id", &r.terminal_id)?;
        id("user_id", &r.user_id)?;
        id("terminal_id", &r.terminal_id)?;
        self.settings(&ctx.tenant)?;
        let store = &self.inner.store;
        let (position, contiguous) = if r.up_to_position > 0 {
            (r.up_to_position, false)
        } else {
            if r.message_id.is_empty() {
                return Err(Status::invalid_argument(
                    "message_id or up_to_position is required",
                ));
            }
            id("message_id", &r.message_id)?;
            let found = store
                .position_of(&ctx.tenant, &r.user_id, &r.message_id)
                .await
                .map_err(|e| store_status(e, "ack not recorded"))?;
            let position = found.ok_or_else(|| {
                Status::not_found(format!(
                    "message {:?} is not in the timeline of user {:?}",
                    r.message_id, r.user_id
                ))
            })?;
            (position, true)
        };
        store
            .advance_cursor(
                &ctx.tenant,
                &r.user_id,
                &r.terminal_id,
                position,
                contiguous,
            )
            .await
            .map_err(|e| store_status(e, "ack not recorded"))?;
        Ok(Response::new(message::AckDeliveryResponse {}))
    }

    async fn fetch_offline(
        &self,
        request: Request<message::FetchOfflineRequest>,
    ) -> Result<Response<message::FetchOfflineResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        self.sync_page(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn history(
        &self,
        request: Request<message::HistoryRequest>,
    ) -> Result<Response<message::HistoryResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        self.history_page(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_terminals(
        &self,
        request: Request<message::ListTerminalsRequest>,
    ) -> Result<Response<message::ListTerminalsResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        self.list(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn sign_out_terminal(
        &self,
        request: Request<message::SignOutTerminalRequest>,
    ) -> Result<Response<message::SignOutTerminalResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        self.sign_out(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn mark_read(
        &self,
        request: Request<message::MarkReadRequest>,
    ) -> Result<Response<message::MarkReadResponse>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let mut r = request.into_inner();
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        r.terminal_id = ctx.act_for_terminal("terminal_id", &r.terminal_id)?;
        id("conversation_id", &r.conversation_id)?;
        id("user_id", &r.user_id)?;
        optional_id("terminal_id", &r.terminal_id)?;
        self.settings(&ctx.tenant)?;
        let conversation = self
            .conversation_of(
                &ctx,
                &r.conversation_id,
                &r.user_id,
                "read receipt not recorded",
            )
            .await?;
        if r.up_to_seq == 0 || r.up_to_seq > conversation.last_seq {
            return Err(Status::invalid_argument(format!(
                "up_to_seq {} is not a message of conversation {:?} (1..={})",
                r.up_to_seq, r.conversation_id, conversation.last_seq
            )));
        }
        let others: Vec<String> = conversation
            .participants
            .into_iter()
            .filter(|p| *p != r.user_id && p != SYSTEM_SENDER)
            .collect();
        let receipt = message::ReadReceipt {
            conversation_id: r.conversation_id,
            reader: r.user_id.clone(),
            up_to_seq: r.up_to_seq,
            read_at_ms: now_ms(),
            position: 0,
        };
        // recorded first, as an entry of every timeline it concerns: the reader's (their other
        // terminals) and the other side's; a terminal away now syncs it later, in order
        let mut receivers = vec![r.user_id.clone()];
        receivers.extend(others);
        let stored = mesh_store::StoredReceipt {
            conversation_id: receipt.conversation_id.clone(),
            reader: receipt.reader.clone(),
            up_to_seq: receipt.up_to_seq,
            read_at_ms: receipt.read_at_ms,
        };
        let store = self.inner.store.clone();
        let tenant = ctx.tenant.clone();
        // to its end even if this call is dropped now, like a message's durable step
        let entries =
            tokio::spawn(async move { store.record_receipt(&tenant, &stored, &receivers).await })
                .await
                .map_err(|e| Status::internal(format!("recording the read receipt failed: {e}")))?
                .map_err(|e| store_status(e, "read receipt not recorded"))?;
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
                    "read receipt recorded but not announced, the event bus did not take it ({err}); retry"
                ))
            })?;
        // each receiver's entry to their connected terminals, the reading one aside (it
        // knows); nothing when the receipt moved nothing (a repeat: its entries went out)
        let skip = (!r.terminal_id.is_empty()).then_some(r.terminal_id.as_str());
        let ctx = &ctx;
        let syncs = entries.into_iter().map(|entry| {
            let push = gateway::Push {
                payload: Some(Payload::Receipt(message::ReadReceipt {
                    position: entry.position,
                    ..receipt.clone()
                })),
            };
            let skip = if entry.to_user == r.user_id {
                skip
            } else {
                None
            };
            let user = entry.to_user;
            async move { self.push(ctx, &user, skip, push).await }
        });
        futures::future::join_all(syncs).await;
        Ok(Response::new(message::MarkReadResponse {
            receipt: Some(receipt),
        }))
    }
}
