//! What every platform's adapter does, whatever the platform speaks: check a callback and read
//! the messages in it, answer the platform as it expects, and send a message to one of its
//! users. A new platform is a new adapter (a module beside [`crate::webhook`] and
//! [`crate::wechat`], a variant of [`Adapter`] and a [`mesh_config::channels::ChannelKind`]),
//! never a fork of the service.

use std::time::Duration;

use mesh_api::channel::v1 as channel;
use mesh_config::channels::{ChannelConfig, ChannelKind};

use crate::{webhook::Webhook, wechat::Wechat};

/// How far a callback's timestamp may be from this node's clock: older is a replay (or a clock
/// far off), refused.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// A message a platform's callback carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The platform's id of it (WeChat's `MsgId`).
    pub platform_message_id: String,
    /// The platform's id of its sender (WeChat's OpenID).
    pub platform_user: String,
    /// What they wrote.
    pub text: String,
    /// When the platform says it was sent.
    pub sent_at_ms: i64,
}

/// A checked callback: the messages in it (none for an address check or an event the mesh
/// does not store), and what the platform is answered once they are recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The messages to record.
    pub messages: Vec<Incoming>,
    /// The answer.
    pub reply: channel::CallbackResponse,
}

/// Why a callback was refused: it is not the platform's (signature, replay window), or not
/// something the platform sends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not signed as the platform signs (or too old): answered 401.
    #[error("not the platform's: {0}")]
    Forged(String),
    /// Signed, but not a callback this adapter reads: answered 400.
    #[error("not a callback of this platform: {0}")]
    Malformed(String),
}

/// Why a send did not reach the platform.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: the platform is down, slow, busy, or its access token ran out.
    #[error("{0}")]
    Transient(String),
    /// Never worth retrying: the platform refused this message (its answer).
    #[error("{0}")]
    Refused(String),
}

/// An answer to the platform.
pub(crate) fn reply(
    status: u16,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> channel::CallbackResponse {
    channel::CallbackResponse {
        http_status: u32::from(status),
        content_type: content_type.to_owned(),
        body: body.into(),
    }
}

/// A query string's value of `name` (decoded).
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Whether `timestamp` (Unix seconds) is within the replay window of `now_ms`.
pub(crate) fn fresh(timestamp: &str, now_ms: i64) -> Result<(), Refusal> {
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| Refusal::Forged(format!("timestamp {timestamp:?} is not Unix seconds")))?;
    let skew = (now_ms / 1000 - seconds).abs();
    if skew > REPLAY_WINDOW_SECS {
        return Err(Refusal::Forged(format!(
            "timestamp {seconds} is {skew} s from this node's clock, over the {REPLAY_WINDOW_SECS} s window (a replay, or a clock far off)"
        )));
    }
    Ok(())
}

/// Classifies an HTTP answer to a send: 2xx delivered; 408, 425, 429 and 5xx transient; any
/// other a refusal, with the platform's words.
pub(crate) fn classify(
    status: reqwest::StatusCode,
    body: &str,
    url: &str,
) -> Result<(), SendError> {
    if status.is_success() {
        return Ok(());
    }
    let words: String = body.chars().take(300).collect();
    let said = format!("{url} answered {status}: {words}");
    if status.is_server_error() || [408, 425, 429].contains(&status.as_u16()) {
        Err(SendError::Transient(said))
    } else {
        Err(SendError::Refused(said))
    }
}

/// A send that got no answer: always worth retrying.
pub(crate) fn unanswered(url: &str, err: &reqwest::Error) -> SendError {
    SendError::Transient(format!("{url} did not answer: {err}"))
}

/// One channel's platform.
#[derive(Debug)]
pub enum Adapter {
    /// A generic JSON webhook.
    Webhook(Webhook),
    /// A WeChat official account (boxed: its token and nonce caches make it the larger).
    Wechat(Box<Wechat>),
}

impl Adapter {
    /// The adapter `config` names, sending over `client`.
    pub fn new(config: &ChannelConfig, client: reqwest::Client) -> Self {
        let timeout = Duration::from_millis(u64::from(config.timeout_ms));
        match config.kind {
            ChannelKind::Webhook => Self::Webhook(Webhook::new(
                config.resolve_secret(),
                config.send_url().to_owned(),
                client,
                timeout,
            )),
            ChannelKind::Wechat => Self::Wechat(Box::new(Wechat::new(
                config.resolve_secret(),
                config.account.clone().unwrap_or_default(),
                config.app_id.clone().unwrap_or_default(),
                config.resolve_app_secret(),
                config.send_url().to_owned(),
                client,
                timeout,
            ))),
        }
    }

    /// Checks a callback, at `now_ms`, and reads the messages in it.
    pub fn check(
        &self,
        request: &channel::CallbackRequest,
        now_ms: i64,
    ) -> Result<Checked, Refusal> {
        match self {
            Self::Webhook(webhook) => webhook.check(request, now_ms),
            Self::Wechat(wechat) => wechat.check(request, now_ms),
        }
    }

    /// Sends `text` to the platform's user `platform_user`; `message_id` is the mesh's id of
    /// the message (passed on where the platform takes an idempotency key).
    pub async fn send(
        &self,
        platform_user: &str,
        text: &str,
        message_id: &str,
    ) -> Result<(), SendError> {
        match self {
            Self::Webhook(webhook) => webhook.send(platform_user, text, message_id).await,
            Self::Wechat(wechat) => wechat.send(platform_user, text).await,
        }
    }
}
