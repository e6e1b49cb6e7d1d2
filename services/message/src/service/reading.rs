//! What a terminal reads: its user's timeline from its cursor (`FetchOffline`, sync: what it
//! has not acknowledged, messages and receipts in order), and a conversation's history
//! (`History`, for one of its participants, a page at a time from its latest backwards, each
//! page oldest first: what the conversation holds, for a terminal that opens it, a reload, a
//! new device, an older page scrolled to).

use mesh_api::message::v1 as message;
use mesh_contract::{RequestContext, fields::id};
use tonic::Status;

use super::{DEFAULT_FETCH, MAX_FETCH, MessageService, chat, store_status};

/// Messages per page unless the caller asks for fewer.
const DEFAULT_PAGE: u64 = 50;
/// The most one page holds.
const MAX_PAGE: u64 = 200;

impl MessageService {
    /// The conversation `conversation_id` if `user` takes part in it; anyone else is told it
    /// has no such conversation (whether it exists is its participants' business).
    pub(super) async fn conversation_of(
        &self,
        ctx: &RequestContext,
        conversation_id: &str,
        user: &str,
        failed: &str,
    ) -> Result<mesh_store::ConversationInfo, Status> {
        self.inner
            .store
            .conversation(&ctx.tenant, conversation_id)
            .await
            .map_err(|e| store_status(e, failed))?
            .filter(|c| c.participants.iter().any(|p| p == user))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "user {user:?} has no conversation {conversation_id:?} in tenant {}",
                    ctx.tenant
                ))
            })
    }

    /// `FetchOffline`: a page of the user's timeline after a position (by default, after this
    /// terminal's acknowledged cursor).
    pub(super) async fn sync_page(
        &self,
        ctx: &RequestContext,
        mut r: message::FetchOfflineRequest,
    ) -> Result<message::FetchOfflineResponse, Status> {
        // an end user acts only as itself (and its token's terminal, if it names one)
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        r.terminal_id = ctx.act_for_terminal("terminal_id", &r.terminal_id)?;
        id("user_id", &r.user_id)?;
        id("terminal_id", &r.terminal_id)?;
        self.settings(&ctx.tenant)?;
        let limit = match r.limit {
            0 => DEFAULT_FETCH,
            n => (n as usize).min(MAX_FETCH),
        };
        let store = &self.inner.store;
        // also makes the terminal known: a send reports it offline while it is not connected
        let cursor = store
            .cursor(&ctx.tenant, &r.user_id, &r.terminal_id)
            .await
            .map_err(|e| store_status(e, "sync failed"))?;
        let after = if r.after_position > 0 {
            r.after_position
        } else {
            cursor
        };
        let page = store
            .timeline(&ctx.tenant, &r.user_id, after, limit)
            .await
            .map_err(|e| store_status(e, "sync failed"))?;
        let next_position = page.messages.last().map_or(after, |m| m.position);
        Ok(message::FetchOfflineResponse {
            messages: page.messages.into_iter().map(chat).collect(),
            next_position,
            more: page.more,
        })
    }

    /// `History`: up to `limit` messages before `before_seq` (0: the latest), oldest first.
    pub(super) async fn history_page(
        &self,
        ctx: &RequestContext,
        mut r: message::HistoryRequest,
    ) -> Result<message::HistoryResponse, Status> {
        // an end user reads only as itself, and only a conversation it takes part in
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        id("conversation_id", &r.conversation_id)?;
        id("user_id", &r.user_id)?;
        self.settings(&ctx.tenant)?;
        let store = &self.inner.store;
        let conversation = self
            .conversation_of(ctx, &r.conversation_id, &r.user_id, "history not read")
            .await?;
        let limit = match u64::from(r.limit) {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // sequence numbers run 1, 2, 3 ... without gaps: the page before `before` starts at
        // `before - limit`, read forwards
        let end = conversation.last_seq + 1;
        let before = match r.before_seq {
            0 => end,
            n => n.min(end),
        };
        let first = before.saturating_sub(limit).max(1);
        let count = usize::try_from(before.saturating_sub(first)).unwrap_or(usize::MAX);
        let messages = if count == 0 {
            Vec::new()
        } else {
            store
                .history(&ctx.tenant, &r.conversation_id, first - 1, count)
                .await
                .map_err(|e| store_status(e, "history not read"))?
        };
        Ok(message::HistoryResponse {
            messages: messages
                .into_iter()
                .filter(|m| m.seq < before)
                .map(chat)
                .collect(),
            more: first > 1,
        })
    }
}
