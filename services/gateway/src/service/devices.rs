//! A user's devices over every node: the tenant's cap on terminals attached at once and its
//! policy at the cap (refuse the new one, or sign the oldest out), and signing a terminal out
//! where it is attached.

use mesh_api::{gateway::v1, locator::v1 as locator};
use mesh_contract::{RequestContext, TenantId};
use tonic::Status;

use super::{GatewayService, Key, unregister};

/// What a user at the tenant's device cap gets when attaching one more terminal
/// (`services.gateway.settings.at_device_cap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtDeviceCap {
    /// The new terminal is refused: RESOURCE_EXHAUSTED naming the cap.
    #[default]
    Refuse,
    /// The terminal attached longest ago is signed out (told SignedOut, its stream ended) to
    /// make room.
    SignOutOldest,
}

impl AtDeviceCap {
    /// The policy a tenant file names (`refuse`, `sign_out_oldest`).
    pub fn named(word: &str) -> Option<Self> {
        match word {
            "refuse" => Some(Self::Refuse),
            "sign_out_oldest" => Some(Self::SignOutOldest),
            _ => None,
        }
    }
}

/// How many terminals one user of a tenant may hold attached at once over every node, and
/// what happens at the cap (`services.gateway.settings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePolicy {
    /// `max_devices` (at least 1).
    pub max_devices: u32,
    /// `at_device_cap`.
    pub at_cap: AtDeviceCap,
}

/// Terminals one user may hold over every node unless the tenant says otherwise.
pub const DEFAULT_MAX_DEVICES: u32 = 16;

impl Default for DevicePolicy {
    fn default() -> Self {
        Self {
            max_devices: DEFAULT_MAX_DEVICES,
            at_cap: AtDeviceCap::Refuse,
        }
    }
}

impl GatewayService {
    /// Lets each user of `tenant` hold at most `policy.max_devices` terminals attached over
    /// every node (at least 1), applying `policy.at_cap` to one more ([`DevicePolicy::default`]
    /// until set). Checked at each attach against the locator's registry, which answers the
    /// registration with the user's other terminals: two attaches at the same instant may both
    /// pass (the cap is a policy, not a lock).
    pub fn set_device_policy(&self, tenant: TenantId, policy: DevicePolicy) {
        self.inner.devices.write().expect("lock").insert(
            tenant,
            DevicePolicy {
                max_devices: policy.max_devices.max(1),
                ..policy
            },
        );
    }

    pub(super) fn device_policy(&self, tenant: &TenantId) -> DevicePolicy {
        self.inner
            .devices
            .read()
            .expect("lock")
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Applies the tenant's device cap to `user`'s new terminal `terminal`, given the user's
    /// `others` attached (the locator's answer to its registration).
    pub(super) async fn apply_device_cap(
        &self,
        ctx: &RequestContext,
        user: &str,
        terminal: &str,
        mut others: Vec<locator::TerminalLocation>,
    ) -> Result<(), Status> {
        let policy = self.device_policy(&ctx.tenant);
        let max = policy.max_devices as usize;
        if others.len() < max {
            return Ok(());
        }
        if policy.at_cap == AtDeviceCap::Refuse {
            let mut refused = Status::resource_exhausted(format!(
                "user {user:?} holds {} terminal(s), the most tenant {} allows \
                 (services.gateway.settings.max_devices = {max}): sign one out \
                 (message.v1 SignOutTerminal), or attach one again under its own terminal_id",
                others.len(),
                ctx.tenant
            ));
            refused.metadata_mut().insert(
                mesh_contract::headers::OVER_QUOTA,
                tonic::metadata::MetadataValue::from_static("devices"),
            );
            return Err(refused);
        }
        // room for this one: the oldest go
        others.sort_by_key(|t| (t.connected_at_ms, t.terminal_id.clone()));
        let reason = format!(
            "signed out: user {user:?} attached terminal {terminal:?}, and tenant {} lets a \
             user hold {max} at once (the oldest is signed out)",
            ctx.tenant
        );
        let outbound = self.inner.credentials.outbound(ctx);
        for old in others.iter().take(others.len() + 1 - max) {
            tracing::info!(tenant = %ctx.tenant, user, terminal = %old.terminal_id, "device cap: signing the oldest terminal out");
            self.sign_out(&outbound, old, &reason).await;
        }
        Ok(())
    }

    /// Signs the terminal at `at` out: here at once, on its node through that node's
    /// `Deliver`; a node that does not answer has lost it already, and its registration goes.
    async fn sign_out(&self, ctx: &RequestContext, at: &locator::TerminalLocation, reason: &str) {
        let push = signed_out(reason);
        let key: Key = (
            ctx.tenant.clone(),
            at.user_id.clone(),
            at.terminal_id.clone(),
        );
        if at.node_id == self.inner.node_id {
            if self.inner.end_with(&key, push) {
                unregister(self.inner.clone(), ctx, key);
            }
            return;
        }
        let delivered = match self.inner.peers.channel(&at.node_address) {
            Ok(channel) => v1::GatewayCaller::new(channel)
                .deliver(
                    ctx,
                    v1::DeliverRequest {
                        user_id: at.user_id.clone(),
                        terminal_id: at.terminal_id.clone(),
                        push: Some(push),
                    },
                )
                .await
                .map(|answer| answer.delivered),
            Err(status) => Err(status),
        };
        if !matches!(delivered, Ok(true)) {
            tracing::info!(tenant = %ctx.tenant, terminal = %at.terminal_id, node = %at.node_id, answer = ?delivered, "the oldest terminal's node did not sign it out; its registration goes");
            let request = locator::UnregisterRequest {
                user_id: at.user_id.clone(),
                terminal_id: at.terminal_id.clone(),
                node_id: at.node_id.clone(),
            };
            if let Err(status) = self.inner.locator.clone().unregister(ctx, request).await {
                tracing::warn!(tenant = %ctx.tenant, terminal = %at.terminal_id, error = %status, "unregistering a signed-out terminal failed");
            }
        }
    }
}

/// A terminal's last push: why it was signed out.
fn signed_out(reason: &str) -> v1::Push {
    v1::Push {
        payload: Some(v1::push::Payload::SignedOut(v1::SignedOut {
            reason: reason.to_owned(),
        })),
    }
}
