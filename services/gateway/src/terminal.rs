//! The terminal side: what an app runs to stay connected and in sync.

use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    locator::v1::TerminalKind,
    message::v1 as message,
};
use mesh_contract::{Backoff, RequestContext};
use tonic::{Status, transport::Channel};

/// One terminal of a user: attached to a gateway, fed first with what it missed while it was
/// away (synced from its cursor over the user's timeline, in order, however much), then with
/// live pushes; every chat message is returned once and acknowledged, which moves the cursor.
///
/// Messages carry their position in the user's timeline (1, 2, 3 ...), so the terminal knows
/// the highest position up to which it holds everything: that is the cursor it acknowledges,
/// and a push that overtook another never makes it skip the one it lacks.
pub struct Terminal {
    ctx: RequestContext,
    user_id: String,
    terminal_id: String,
    pushes: tonic::Streaming<gateway::Push>,
    gateway: gateway::GatewayCaller<Channel>,
    kind: TerminalKind,
    messages: message::MessageCaller<Channel>,
    missed: VecDeque<gateway::Push>,
    /// Where the next sync page starts, while there may be more to sync.
    sync_after: Option<u64>,
    /// Every message of the timeline up to here was returned.
    cursor: u64,
    /// Positions above the cursor returned already (a push overtook another).
    ahead: BTreeSet<u64>,
    /// The highest timeline head a heartbeat or a push showed.
    head: u64,
    /// Syncs started because the stream showed more than this terminal held.
    resyncs: u64,
    /// Attaches again after the node said it was leaving.
    reconnects: u64,
    /// When to attach again: the node said it is leaving. Kept here, not in a future, so a
    /// [`Terminal::next`] dropped while it waits (a `select!`) loses nothing.
    reattach_at: Option<tokio::time::Instant>,
    /// Per conversation, how far this terminal marked it read: the user's own receipt of it,
    /// which the timeline holds for the user's other terminals, is not returned back here.
    read: std::collections::HashMap<String, u64>,
    /// Signed out (a SignedOut push came): nothing more is synced or returned.
    signed_out: bool,
}

/// Attempts at attaching again after a reconnect hint (the proxy may still send the first
/// ones to the leaving node, which refuses them), with growing pauses (about 6 s in all).
const REATTACH_ATTEMPTS: u32 = 8;

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("tenant", &self.ctx.tenant)
            .field("user_id", &self.user_id)
            .field("terminal_id", &self.terminal_id)
            .field("missed", &self.missed.len())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Attaches to the gateway behind `gateway`, then syncs what this terminal missed from
    /// the message service behind `messages`, from the cursor it acknowledged last. Attaching
    /// first means nothing sent meanwhile falls between the two: it is either live on the
    /// stream or synced (or both, and then returned once).
    pub async fn connect(
        ctx: &RequestContext,
        gateway: Channel,
        messages: Channel,
        user_id: &str,
        terminal_id: &str,
        kind: TerminalKind,
    ) -> Result<Self, Status> {
        Self::resume(ctx, gateway, messages, user_id, terminal_id, kind, 0).await
    }

    /// Like [`Terminal::connect`], syncing after `cursor`, the position this terminal held
    /// everything up to before it lost its connection ([`Terminal::cursor`]); 0 means the
    /// cursor the service has for it.
    ///
    /// A reconnect (after a network switch, say) costs one round trip: the attach and the
    /// first page of what was missed go out together, so the first missed message is
    /// readable as soon as both answer. The attach may register after that page was read, so
    /// one more page is fetched once the attach is in place, before the first live push is
    /// returned (messages that arrived in between are then either on the stream or on that
    /// page, and returned once).
    pub async fn resume(
        ctx: &RequestContext,
        gateway: Channel,
        messages: Channel,
        user_id: &str,
        terminal_id: &str,
        kind: TerminalKind,
        cursor: u64,
    ) -> Result<Self, Status> {
        let gateway = gateway::GatewayCaller::new(gateway);
        let mut attaching = gateway.clone();
        let messages = message::MessageCaller::new(messages);
        let attach = attaching.attach(
            ctx,
            gateway::AttachRequest {
                user_id: user_id.into(),
                terminal_id: terminal_id.into(),
                kind: kind as i32,
            },
        );
        let first = fetch_page(messages.clone(), ctx, user_id, terminal_id, cursor);
        let (pushes, page) = tokio::try_join!(attach, first)?;
        // where the sync started: the service's cursor when we gave none
        let start = match page.messages.first() {
            Some(first) => first.position.saturating_sub(1),
            None if cursor == 0 => page.next_position,
            None => cursor,
        };
        let mut terminal = Self {
            ctx: ctx.clone(),
            user_id: user_id.into(),
            terminal_id: terminal_id.into(),
            pushes,
            gateway,
            kind,
            messages,
            missed: VecDeque::new(),
            sync_after: None,
            cursor: start,
            ahead: BTreeSet::new(),
            head: 0,
            resyncs: 0,
            reconnects: 0,
            reattach_at: None,
            read: std::collections::HashMap::new(),
            signed_out: false,
        };
        terminal.absorb(page);
        Ok(terminal)
    }

    /// Queues a page of missed messages; the next page is fetched when these are read.
    fn absorb(&mut self, page: message::FetchOfflineResponse) {
        let after = self.sync_after.unwrap_or(self.cursor);
        // a read receipt's entry comes back as the receipt, as it is pushed live
        self.missed
            .extend(page.messages.into_iter().map(|m| gateway::Push {
                payload: Some(match m.receipt {
                    Some(receipt) if m.kind == message::MessageKind::ReadReceipt as i32 => {
                        Payload::Receipt(receipt)
                    }
                    _ => Payload::Message(m),
                }),
            }));
        // a page that did not move (nothing after `after`) still was read before the attach
        // may have registered; one more read after it closes that gap once
        self.sync_after = match self.sync_after {
            None => Some(page.next_position.max(after)),
            Some(_) if page.more && page.next_position > after => Some(page.next_position),
            Some(_) => None,
        };
    }

    /// The position in the user's timeline up to which this terminal returned every message;
    /// pass it to [`Terminal::resume`] after a lost connection.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether position `p` was returned already.
    fn taken(&self, p: u64) -> bool {
        p <= self.cursor || self.ahead.contains(&p)
    }

    /// The cursor once position `p` (not yet taken) is.
    fn cursor_with(&self, p: u64) -> u64 {
        let mut cursor = self.cursor;
        while cursor + 1 == p || self.ahead.contains(&(cursor + 1)) {
            cursor += 1;
        }
        cursor
    }

    /// Takes position `p` as returned.
    fn take(&mut self, p: u64) {
        self.cursor = self.cursor_with(p);
        if p > self.cursor {
            self.ahead.insert(p);
        }
        let cursor = self.cursor;
        self.ahead.retain(|&q| q > cursor);
    }

    /// The highest head of the user's timeline this terminal has been shown (by a heartbeat
    /// or a push): everything up to it is synced when [`Terminal::cursor`] reaches it.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// How many times the stream showed more than this terminal held (a skipped push, a
    /// heartbeat ahead of it) and it synced from its cursor.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// How many times the node said it was leaving and this terminal attached again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Syncs from the cursor before the next live push, unless a sync is under way.
    fn resync(&mut self) {
        if self.sync_after.is_none() && self.missed.is_empty() {
            self.sync_after = Some(self.cursor);
            self.resyncs += 1;
        }
    }

    /// Attaches again (the node said it is leaving), then syncs from the cursor: what was
    /// sent meanwhile waits in the timeline.
    async fn reattach(&mut self) -> Result<(), Status> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut attempt = 1;
        let pushes = loop {
            let attached = self
                .gateway
                .clone()
                .attach(
                    &self.ctx,
                    gateway::AttachRequest {
                        user_id: self.user_id.clone(),
                        terminal_id: self.terminal_id.clone(),
                        kind: self.kind as i32,
                    },
                )
                .await;
            match attached {
                Ok(pushes) => break pushes,
                Err(status)
                    if attempt < REATTACH_ATTEMPTS
                        && matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::ResourceExhausted
                        ) =>
                {
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(status) => return Err(status),
            }
        };
        self.pushes = pushes;
        self.reattach_at = None;
        self.reconnects += 1;
        // pushes between the hint and the new registration went nowhere: sync them
        self.sync_after = Some(self.sync_after.unwrap_or(self.cursor));
        Ok(())
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
    /// the stream. Chat messages and read receipts are acknowledged before they are returned;
    /// one that was both missed and pushed live is returned once; this terminal's own receipt
    /// (its user's other terminals get it) is not returned back to it.
    ///
    /// Heartbeats and reconnect hints are handled here, never returned: a heartbeat whose
    /// head is above the cursor, or a push above a gap, starts a sync from the cursor; a
    /// reconnect hint makes the terminal attach again after the delay it names. A SignedOut
    /// push is returned, and is the last: every later call answers `None` (no sync, no attach
    /// again; a new [`Terminal::connect`] is the user's choice).
    ///
    /// Cancel-safe: a call dropped before it returns (in a `select!`) loses nothing; a
    /// message it was acknowledging, a sync or a reattach it was waiting for are taken up by
    /// the next call.
    pub async fn next(&mut self) -> Result<Option<gateway::Push>, Status> {
        loop {
            if self.signed_out {
                return Ok(None);
            }
            if let Some(at) = self.reattach_at {
                tokio::time::sleep_until(at).await;
                self.reattach().await?;
                continue;
            }
            if self.missed.is_empty()
                && let Some(after) = self.sync_after
            {
                let page = fetch_page(
                    self.messages.clone(),
                    &self.ctx,
                    &self.user_id,
                    &self.terminal_id,
                    after,
                )
                .await?;
                self.absorb(page);
                continue;
            }
            let push = match self.missed.pop_front() {
                Some(push) => push,
                None => match self.pushes.message().await? {
                    Some(push) => push,
                    None => return Ok(None),
                },
            };
            match &push.payload {
                Some(Payload::Heartbeat(beat)) => {
                    self.head = self.head.max(beat.head);
                    // everything up to the head is in the timeline: a terminal holding less
                    // missed a push, and syncs now rather than at its next reconnect
                    if beat.head > self.cursor {
                        self.resync();
                    }
                    continue;
                }
                Some(Payload::SignedOut(_)) => {
                    // the stream's last push: returned, then nothing more (no sync, no attach)
                    self.signed_out = true;
                    self.missed.clear();
                    self.sync_after = None;
                    self.reattach_at = None;
                    return Ok(Some(push));
                }
                Some(Payload::Reconnect(hint)) => {
                    tracing::info!(terminal = %self.terminal_id, after_ms = hint.after_ms, reason = %hint.reason, "the node is leaving; attaching again");
                    self.reattach_at = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(u64::from(hint.after_ms)),
                    );
                    continue;
                }
                _ => {}
            }
            // messages and read receipts have a place in the timeline; the rest is returned
            let Some((position, message_id)) = positioned(&push) else {
                return Ok(Some(push));
            };
            if self.taken(position) {
                continue;
            }
            // taken only once acknowledged: an acknowledgement that fails (the node died, say)
            // or a call dropped meanwhile leaves the entry to be returned by the next call, and
            // a resume from this cursor syncs it again, never skips it
            let up_to_position = self.cursor_with(position);
            // a receipt above a gap moves no cursor yet (it has no id to be acknowledged by
            // alone): the message below it, once here, acknowledges both
            if !message_id.is_empty() || up_to_position > self.cursor {
                self.missed.push_front(push);
                let acked = self
                    .messages
                    .ack_delivery(
                        &self.ctx,
                        message::AckDeliveryRequest {
                            user_id: self.user_id.clone(),
                            terminal_id: self.terminal_id.clone(),
                            message_id,
                            up_to_position,
                        },
                    )
                    .await;
                acked?;
            } else {
                self.missed.push_front(push);
            }
            let push = self.missed.pop_front().expect("kept while acknowledged");
            self.take(position);
            self.head = self.head.max(position);
            // a gap below this entry: the one before it was skipped (positions commit in
            // order, so it is in the timeline already), or is still on its way; a sync from
            // the cursor finds it either way
            if !self.ahead.is_empty() {
                self.resync();
            }
            if let Some(Payload::Receipt(r)) = &push.payload
                && r.reader == self.user_id
                && self.read.get(&r.conversation_id).copied().unwrap_or(0) >= r.up_to_seq
            {
                // this terminal's own receipt (or one it went past): nothing new to it
                continue;
            }
            if let Some(Payload::Receipt(r)) = &push.payload
                && r.reader == self.user_id
            {
                self.read.insert(r.conversation_id.clone(), r.up_to_seq);
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

    /// The history of a conversation this terminal's user takes part in: up to `limit`
    /// messages before `before_seq` (0: its latest; a `limit` of 0: 50), oldest first, and
    /// whether older ones remain (ask again with the first one's seq). What a terminal shows
    /// when it opens a conversation; sync ([`Terminal::next`]) carries what it has not had.
    pub async fn history(
        &self,
        conversation_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<(Vec<message::ChatMessage>, bool), Status> {
        let page = self
            .messages
            .clone()
            .history(
                &self.ctx,
                message::HistoryRequest {
                    conversation_id: conversation_id.into(),
                    user_id: self.user_id.clone(),
                    before_seq,
                    limit,
                },
            )
            .await?;
        Ok((page.messages, page.more))
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
        let read = self.read.entry(conversation_id.to_owned()).or_default();
        *read = (*read).max(up_to_seq);
        Ok(answer.receipt)
    }
}

/// Where a push sits in the user's timeline, with the id it is acknowledged by (empty for a
/// read receipt, acknowledged by position); `None` for what has no place there (heartbeats,
/// hints, a receipt from a node that numbers none).
fn positioned(push: &gateway::Push) -> Option<(u64, String)> {
    match &push.payload {
        Some(Payload::Message(m)) => Some((m.position, m.message_id.clone())),
        Some(Payload::Receipt(r)) if r.position > 0 => Some((r.position, String::new())),
        _ => None,
    }
}

/// One page of the user's timeline after `after` (0: after this terminal's cursor).
async fn fetch_page(
    mut messages: message::MessageCaller<Channel>,
    ctx: &RequestContext,
    user_id: &str,
    terminal_id: &str,
    after: u64,
) -> Result<message::FetchOfflineResponse, Status> {
    messages
        .fetch_offline(
            ctx,
            message::FetchOfflineRequest {
                user_id: user_id.into(),
                terminal_id: terminal_id.into(),
                limit: 0,
                after_position: after,
            },
        )
        .await
}
