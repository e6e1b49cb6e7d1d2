//! A user's terminals as the user manages them: listed (attached now on any node, or known by
//! their cursor, with when each was last seen) and signed out (told SignedOut where attached,
//! the cursor dropped if asked).

use mesh_api::{
    gateway::v1::{self as gateway, push::Payload},
    message::v1 as message,
};
use mesh_contract::{RequestContext, fields::id};
use tonic::Status;

use super::{MessageService, store_status};

/// Longest reason a sign-out may give its terminal.
const MAX_REASON_BYTES: usize = 512;

impl MessageService {
    /// `ListTerminals`: the caller's own terminals (an end user's, from any of them).
    pub(super) async fn list(
        &self,
        ctx: &RequestContext,
        mut r: message::ListTerminalsRequest,
    ) -> Result<message::ListTerminalsResponse, Status> {
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        id("user_id", &r.user_id)?;
        self.settings(&ctx.tenant)?;
        Ok(message::ListTerminalsResponse {
            terminals: self.terminals_of(ctx, &r.user_id).await?,
        })
    }

    /// `SignOutTerminal`: one of the caller's own terminals, from any of them (a lost phone is
    /// signed out from the desktop).
    pub(super) async fn sign_out(
        &self,
        ctx: &RequestContext,
        mut r: message::SignOutTerminalRequest,
    ) -> Result<message::SignOutTerminalResponse, Status> {
        // an end user signs out only its own terminals, from any of them: a lost phone is
        // signed out from the desktop
        r.user_id = ctx.act_as("user_id", &r.user_id)?;
        id("user_id", &r.user_id)?;
        id("terminal_id", &r.terminal_id)?;
        self.settings(&ctx.tenant)?;
        if r.reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason is {} bytes, over {MAX_REASON_BYTES}",
                r.reason.len()
            )));
        }
        let reason = if r.reason.is_empty() {
            format!("signed out by {} from another terminal", r.user_id)
        } else {
            r.reason
        };
        let terminals = self.terminals_of(ctx, &r.user_id).await?;
        let Some(target) = terminals.iter().find(|t| t.terminal_id == r.terminal_id) else {
            return Err(Status::not_found(format!(
                "user {:?} has no terminal {:?} attached or known in tenant {}",
                r.user_id, r.terminal_id, ctx.tenant
            )));
        };
        let mut was_attached = false;
        if target.attached {
            let outbound = self.inner.credentials.outbound(ctx);
            let push = gateway::Push {
                payload: Some(Payload::SignedOut(gateway::SignedOut { reason })),
            };
            // attached on one node, or (a moment after moving) on two: ended on each
            for at in self.locate(&outbound, &r.user_id).await.unwrap_or_default() {
                if at.terminal_id == r.terminal_id {
                    was_attached |= self.deliver_to(&outbound, &at, push.clone()).await;
                }
            }
        }
        let cursor_dropped = r.drop_cursor
            && self
                .inner
                .store
                .forget_terminal(&ctx.tenant, &r.user_id, &r.terminal_id)
                .await
                .map_err(|e| store_status(e, "cursor not dropped"))?;
        Ok(message::SignOutTerminalResponse {
            was_attached,
            cursor_dropped,
        })
    }

    /// `user`'s terminals: attached ones (from the locator) and known ones (from the store).
    async fn terminals_of(
        &self,
        ctx: &RequestContext,
        user: &str,
    ) -> Result<Vec<message::TerminalInfo>, Status> {
        let outbound = self.inner.credentials.outbound(ctx);
        let (located, known) = tokio::join!(
            self.locate(&outbound, user),
            self.inner.store.terminal_cursors(&ctx.tenant, user)
        );
        let located = located.map_err(|status| {
            Status::unavailable(format!(
                "where user {user:?}'s terminals are attached is unknown for a moment ({}); retry",
                status.message()
            ))
        })?;
        let known = known.map_err(|e| store_status(e, "terminals not listed"))?;
        let mut terminals: std::collections::BTreeMap<String, message::TerminalInfo> = known
            .into_iter()
            .map(|k| {
                let info = message::TerminalInfo {
                    terminal_id: k.terminal_id.clone(),
                    last_seen_ms: k.seen_at_ms,
                    cursor: k.position,
                    ..Default::default()
                };
                (k.terminal_id, info)
            })
            .collect();
        for at in located {
            let info = terminals.entry(at.terminal_id.clone()).or_default();
            info.terminal_id = at.terminal_id;
            info.kind = at.kind;
            info.attached = true;
            info.attached_at_ms = at.connected_at_ms;
        }
        Ok(terminals.into_values().collect())
    }
}
