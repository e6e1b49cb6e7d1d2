//! The gateway (access node): terminals attach with a long-lived gRPC stream, the gateway
//! registers them with the locator, and [`Deliver`](mesh_api::gateway::v1::gateway_server::Gateway::deliver)
//! pushes onto the stream of one connected terminal.
//!
//! A user may hold several terminals (phone, desktop, web), each its own stream. The gateway
//! keeps no messages: a push to a terminal that is not connected here answers
//! `delivered: false`, and the message service keeps the message as offline for it.
//!
//! [`Terminal`] is the other end: what a phone or desktop app (and the demo and tests) runs.

pub mod heartbeat;
mod service;
mod terminal;

pub use heartbeat::Heads;
pub use service::{
    AtDeviceCap, DEFAULT_MAX_DEVICES, DEFAULT_TERMINALS_PER_TENANT, DEFAULT_TERMINALS_PER_USER,
    DevicePolicy, GatewayService, PUSH_BUFFER, TerminalQuota,
};
pub use terminal::Terminal;
