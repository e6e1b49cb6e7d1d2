//! The events an order's changes publish, on the major its tenant (or its grey release)
//! runs.

use super::*;

/// Which users of a tenant get the major in grey release (by user id).
pub type GreyUsers = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The major a tenant's order events use: one for everyone, or a newer one for the users in
/// its grey release.
#[derive(Clone)]
pub(crate) struct EventMajor {
    pub(crate) major: u32,
    pub(crate) grey: Option<(u32, GreyUsers)>,
}

/// Publishes a tenant's order events on the major it runs (for the order's user).
#[derive(Clone)]
pub(crate) struct Events {
    pub(crate) v1: v1::OrderPublisher<Arc<dyn EventBus>>,
    pub(crate) v2: v2::OrderPublisher<Arc<dyn EventBus>>,
    pub(crate) majors: Arc<RwLock<HashMap<TenantId, EventMajor>>>,
}

impl Events {
    /// The major `user` of `tenant` gets its events on.
    pub(crate) fn major(&self, tenant: &TenantId, user: &str) -> u32 {
        match self.majors.read().expect("lock").get(tenant) {
            Some(EventMajor {
                grey: Some((grey, users)),
                ..
            }) if users(user) => *grey,
            Some(set) => set.major,
            None => 1,
        }
    }
}
