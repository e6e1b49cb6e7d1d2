//! The message service: the core of the customer-service platform.
//!
//! - [`MessageService`] serves `message.v1`: a send is numbered in its conversation, pushed
//!   through the gateways to every terminal of the receiver the locator knows, and kept as
//!   offline for the others (fetched on reconnect, in order, until each terminal acks it).
//!   Read receipts reach the reader's other terminals and the other side of the conversation.
//! - [`Archive`] is the storage consumer: it persists `MessageSent` and `MessageRead` events
//!   into the tenant's namespace of a [`MessageStore`](mesh_store::MessageStore). A send never
//!   waits on storage; it waits only for the event to be held by the bus.
//! - [`SystemMessages`] turns order events (order v1 and v2) into system messages in the
//!   conversation they name.
//!
//! Per-tenant differences are [`MessageSettings`], read from the tenant's config.

mod archive;
mod service;
mod settings;
mod system;

pub use archive::Archive;
pub use service::{MessageService, SYSTEM_SENDER};
pub use settings::MessageSettings;
pub use system::SystemMessages;
