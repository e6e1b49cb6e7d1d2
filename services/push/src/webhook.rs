//! A business line's notifier: an HTTP endpoint that takes a JSON notification and wakes the
//! user's devices (through APNs, FCM, SMS ... behind it; the mesh does not hold device tokens).
//!
//! The request is `POST <url>` with `Content-Type: application/json`, the header
//! `Idempotency-Key: <tenant>:<notification_id>` (a retried notification carries the same key,
//! so the receiver can drop the repeat) and the body of [`Notification`]. A 2xx answer is
//! success; 408, 425, 429, 5xx, a timeout or no connection are transient (retried until the
//! notifier is back); any other answer is a refusal (the notification is dead-lettered with
//! the answer as its reason).

use std::{collections::BTreeMap, time::Duration};

/// What the notifier receives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    /// The business line.
    pub tenant: String,
    /// Whose devices.
    pub user_id: String,
    /// Unique per notification; also the `Idempotency-Key` (with the tenant).
    pub notification_id: String,
    /// Short title (for a chat message: the sender).
    pub title: String,
    /// The text shown.
    pub body: String,
    /// Passed through (for a chat message: `conversation_id`, `message_id`, `position`).
    pub data: BTreeMap<String, String>,
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: the notifier is down, slow or overloaded.
    #[error("notifier {url} did not take the notification (it may later): {reason}")]
    Transient {
        /// The notifier.
        url: String,
        /// What happened.
        reason: String,
    },
    /// Never worth retrying: the notifier refused this notification.
    #[error("notifier {url} refused the notification: {reason}")]
    Refused {
        /// The notifier.
        url: String,
        /// Its answer.
        reason: String,
    },
}

impl NotifyError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, NotifyError::Transient { .. })
    }
}

/// One business line's webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl Webhook {
    /// A webhook at `url` (http or https), each request bounded by `timeout`, sharing
    /// `client`'s connection pool.
    pub fn new(client: reqwest::Client, url: &str, timeout: Duration) -> Result<Self, String> {
        let url = parse_url(url)?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    /// Where it posts.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Posts `notification`.
    pub async fn send(&self, notification: &Notification) -> Result<(), NotifyError> {
        let transient = |reason: String| NotifyError::Transient {
            url: self.url.to_string(),
            reason,
        };
        let answer = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(
                "Idempotency-Key",
                format!("{}:{}", notification.tenant, notification.notification_id),
            )
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(notification).expect("a notification serializes"))
            .send()
            .await
            .map_err(|e| transient(plain(&e)))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        let reason = format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        );
        if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
            Err(transient(reason))
        } else {
            Err(NotifyError::Refused {
                url: self.url.to_string(),
                reason,
            })
        }
    }
}

/// `url` if it is an absolute http or https URL; the reason otherwise.
pub fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    // the rule tenant files are checked with
    mesh_runtime::settings::http_url(url)
}

/// An error with its causes, in one line (reqwest's own Display hides the cause).
fn plain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        assert!(parse_url("https://push.example.com/v1/notify").is_ok());
        assert!(parse_url("http://127.0.0.1:9000/hook").is_ok());
        for bad in ["ftp://x/y", "push.example.com", "", "http://"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
