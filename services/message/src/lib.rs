//! The message service: the core of the customer-service platform.
//!
//! - [`MessageService`] serves `message.v1`: a send is stored in the tenant's
//!   [`MessageStore`](mesh_store::MessageStore) (numbered in its conversation and in the
//!   receiver's timeline, deduplicated by client id) before it answers, then announced
//!   (`MessageSent`) and pushed through the gateways to every terminal of the receiver the
//!   locator knows. A terminal that was away syncs the timeline from its cursor, in pages;
//!   its acks move the cursor. Read receipts reach the reader's other terminals and the other
//!   side of the conversation. The service holds no message state in memory.
//! - [`Archive`] is the storage consumer of read receipts (`MessageRead`).
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
