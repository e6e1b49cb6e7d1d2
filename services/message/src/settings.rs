//! What business lines may set differently for the message service.

/// A tenant's message settings (`services.message.settings` in its tenant file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageSettings {
    /// How long stored messages are kept (`retention_days`); finance keeps them for years.
    pub retention_days: u32,
    /// Largest accepted body (`max_body_bytes`).
    pub max_body_bytes: usize,
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_body_bytes: 4096,
        }
    }
}

impl MessageSettings {
    /// Messages sent before this instant are past retention at `now_ms`.
    pub fn retention_cutoff_ms(&self, now_ms: i64) -> i64 {
        now_ms - i64::from(self.retention_days) * 24 * 60 * 60 * 1000
    }
}
