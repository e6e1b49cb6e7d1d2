//! Order events into system messages.

use mesh_api::{
    message::v1 as message,
    order::{v1 as order_v1, v2 as order_v2},
};
use mesh_contract::{HandlerError, RequestContext};

use crate::{MessageService, SYSTEM_SENDER};

/// Handles the order events of both majors (a tenant's config picks which one it runs) by
/// writing a system message into the conversation the event names, addressed to the buyer.
/// Each event makes its message once: a redelivery finds it by its event-derived id.
#[derive(Clone, Debug)]
pub struct SystemMessages {
    messages: MessageService,
}

impl SystemMessages {
    /// Writes through `messages`.
    pub fn new(messages: MessageService) -> Self {
        Self { messages }
    }

    async fn write(
        &self,
        ctx: &RequestContext,
        conversation_id: String,
        to_user: String,
        body: String,
        event_key: String,
    ) -> Result<(), HandlerError> {
        if conversation_id.is_empty() || to_user.is_empty() {
            return Err(HandlerError::Reject(format!(
                "{event_key}: an order event needs a conversation_id and a user to become a system message"
            )));
        }
        // the platform's own sender receives nothing: a message to it would read as one the
        // platform sent itself (rejected, as Send rejects such a user)
        if mesh_contract::fields::is_reserved_sender(&to_user) {
            return Err(HandlerError::Reject(format!(
                "{event_key}: user_id {to_user:?} is reserved for the platform's own messages"
            )));
        }
        let request = message::SendRequest {
            conversation_id,
            from_user: SYSTEM_SENDER.into(),
            to_user,
            body,
            client_msg_id: event_key,
        };
        match self
            .messages
            .accept(ctx, request, message::MessageKind::System)
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(HandlerError::Retry(status.message().to_owned()))
            }
            Err(status) => Err(HandlerError::Reject(status.message().to_owned())),
        }
    }
}

fn money(minor: i64, currency: &str) -> String {
    format!("{currency} {}.{:02}", minor / 100, minor.rem_euclid(100))
}

/// `ORDER_STATUS_SHIPPED` -> `shipped`.
fn status_name(name: &str) -> String {
    name.trim_start_matches("ORDER_STATUS_").to_lowercase()
}

/// The parts of an order event a system message is made of; both majors' events reduce to it.
struct OrderNews {
    order_id: String,
    user_id: String,
    conversation_id: String,
}

impl SystemMessages {
    async fn placed(
        &self,
        ctx: &RequestContext,
        order: OrderNews,
        total_minor: i64,
        currency: &str,
    ) -> Result<(), HandlerError> {
        let body = format!(
            "Order {} was placed: {}",
            order.order_id,
            money(total_minor, currency)
        );
        let key = format!("order:{}:created", order.order_id);
        self.write(ctx, order.conversation_id, order.user_id, body, key)
            .await
    }

    /// `status` and `previous` as the enums name them (`ORDER_STATUS_SHIPPED`); v1 and v2
    /// share the values.
    async fn status_changed(
        &self,
        ctx: &RequestContext,
        order: OrderNews,
        status: &str,
        previous: &str,
    ) -> Result<(), HandlerError> {
        let status = status_name(status);
        let body = format!(
            "Order {} is now {status} (was {})",
            order.order_id,
            status_name(previous)
        );
        let key = format!("order:{}:{status}", order.order_id);
        self.write(ctx, order.conversation_id, order.user_id, body, key)
            .await
    }
}

impl order_v1::OrderHandler for SystemMessages {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: order_v1::OrderCreated,
    ) -> Result<(), HandlerError> {
        let order = event.order.unwrap_or_default();
        let news = OrderNews {
            order_id: order.order_id,
            user_id: order.user_id,
            conversation_id: event.conversation_id,
        };
        self.placed(ctx, news, order.total_cents, &order.currency)
            .await
    }

    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: order_v1::OrderUpdated,
    ) -> Result<(), HandlerError> {
        let (status, previous) = (event.status(), event.previous_status());
        let news = OrderNews {
            order_id: event.order_id,
            user_id: event.user_id,
            conversation_id: event.conversation_id,
        };
        self.status_changed(ctx, news, status.as_str_name(), previous.as_str_name())
            .await
    }
}

impl order_v2::OrderHandler for SystemMessages {
    async fn on_order_created(
        &self,
        ctx: &RequestContext,
        event: order_v2::OrderCreated,
    ) -> Result<(), HandlerError> {
        let order = event.order.unwrap_or_default();
        let total = order.total.unwrap_or_default();
        let news = OrderNews {
            order_id: order.order_id,
            user_id: order.user_id,
            conversation_id: event.conversation_id,
        };
        self.placed(ctx, news, total.minor_units, &total.currency)
            .await
    }

    async fn on_order_updated(
        &self,
        ctx: &RequestContext,
        event: order_v2::OrderUpdated,
    ) -> Result<(), HandlerError> {
        let (status, previous) = (event.status(), event.previous_status());
        let news = OrderNews {
            order_id: event.order_id,
            user_id: event.user_id,
            conversation_id: event.conversation_id,
        };
        self.status_changed(ctx, news, status.as_str_name(), previous.as_str_name())
            .await
    }

    async fn on_order_cancelled(
        &self,
        ctx: &RequestContext,
        event: order_v2::OrderCancelled,
    ) -> Result<(), HandlerError> {
        let body = format!("Order {} was cancelled: {}", event.order_id, event.reason);
        let key = format!("order:{}:cancelled", event.order_id);
        self.write(ctx, event.conversation_id, event.user_id, body, key)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_statuses_read_naturally() {
        assert_eq!(money(12900, "CNY"), "CNY 129.00");
        assert_eq!(money(1999, "CNY"), "CNY 19.99");
        assert_eq!(status_name("ORDER_STATUS_SHIPPED"), "shipped");
    }
}
