//! The terminal side: what an app runs to stay connected and in sync.

use std::collections::{HashSet, VecDeque};

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::TerminalKind,
    message::v1 as message,
};
use mesh_contract::RequestContext;
use tonic::{Status, transport::Channel};

/// One terminal of a user: attached to a gateway, fed first with what it missed while it was
/// away (in order), then with live pushes; every chat message it receives is acknowledged to
/// the message service, once.
pub struct Terminal {
    ctx: RequestContext,
    user_id: String,
    terminal_id: String,
    pushes: tonic::Streaming<gateway::Push>,
    messages: message::MessageCaller<Channel>,
    missed: VecDeque<gateway::Push>,
    seen: HashSet<String>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("tenant", &self.ctx.tenant)
            .field("user_id", &self.user_id)
            .field("terminal_id", &self.terminal_id)
            .field("missed", &self.missed.len())
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Attaches to the gateway behind `gateway`, then fetches what this terminal missed from
    /// the message service behind `messages`. Attaching first means nothing sent meanwhile
    /// falls between the two: it is either live on the stream or in the missed list (or both,
    /// and then shown once).
    pub async fn connect(
        ctx: &RequestContext,
        gateway: Channel,
        messages: Channel,
        user_id: &str,
        terminal_id: &str,
        kind: TerminalKind,
    ) -> Result<Self, Status> {
        let pushes = gateway::GatewayCaller::new(gateway)
            .attach(
                ctx,
                gateway::AttachRequest {
                    user_id: user_id.into(),
                    terminal_id: terminal_id.into(),
                    kind: kind as i32,
                },
            )
            .await?;
        let mut messages = message::MessageCaller::new(messages);
        let missed = messages
            .fetch_offline(
                ctx,
                message::FetchOfflineRequest {
                    user_id: user_id.into(),
                    terminal_id: terminal_id.into(),
                    limit: 0,
                },
            )
            .await?
            .messages
            .into_iter()
            .map(|m| gateway::Push {
                payload: Some(Payload::Message(m)),
            })
            .collect();
        Ok(Self {
            ctx: ctx.clone(),
            user_id: user_id.into(),
            terminal_id: terminal_id.into(),
            pushes,
            messages,
            missed,
            seen: HashSet::new(),
        })
    }

    /// This terminal's id.
    pub fn id(&self) -> &str {
        &self.terminal_id
    }

    /// How many missed messages are still to be read with [`Terminal::next`].
    pub fn missed(&self) -> usize {
        self.missed.len()
    }

    /// The next push: missed messages first, then live ones; `None` when the gateway closed
    /// the stream. Chat messages are acknowledged before they are returned; one that was
    /// both missed and pushed live is returned once.
    pub async fn next(&mut self) -> Result<Option<gateway::Push>, Status> {
        loop {
            let push = match self.missed.pop_front() {
                Some(push) => push,
                None => match self.pushes.message().await? {
                    Some(push) => push,
                    None => return Ok(None),
                },
            };
            if let Some(Payload::Message(m)) = &push.payload {
                if !self.seen.insert(m.message_id.clone()) {
                    continue;
                }
                self.messages
                    .ack_delivery(
                        &self.ctx,
                        message::AckDeliveryRequest {
                            user_id: self.user_id.clone(),
                            terminal_id: self.terminal_id.clone(),
                            message_id: m.message_id.clone(),
                        },
                    )
                    .await?;
            }
            return Ok(Some(push));
        }
    }

    /// Sends a chat message as this terminal's user.
    pub async fn send(
        &mut self,
        conversation_id: &str,
        to_user: &str,
        body: &str,
        client_msg_id: &str,
    ) -> Result<message::SendResponse, Status> {
        self.messages
            .send(
                &self.ctx,
                message::SendRequest {
                    conversation_id: conversation_id.into(),
                    from_user: self.user_id.clone(),
                    to_user: to_user.into(),
                    body: body.into(),
                    client_msg_id: client_msg_id.into(),
                },
            )
            .await
    }

    /// Marks the conversation read up to `up_to_seq` from this terminal; the receipt reaches
    /// the user's other terminals and the sender.
    pub async fn mark_read(
        &mut self,
        conversation_id: &str,
        up_to_seq: u64,
    ) -> Result<Option<message::ReadReceipt>, Status> {
        let answer = self
            .messages
            .mark_read(
                &self.ctx,
                message::MarkReadRequest {
                    conversation_id: conversation_id.into(),
                    user_id: self.user_id.clone(),
                    terminal_id: self.terminal_id.clone(),
                    up_to_seq,
                },
            )
            .await?;
        Ok(answer.receipt)
    }
}
