//! The platform's tests, in one binary (each file a module): a node of the platform in process,
//! its tenants, terminals and their heartbeats, end to end on the embedded bus or RabbitMQ.

mod support;

mod e2e;
mod heartbeat;
mod tenants;
mod terminal_quota;
