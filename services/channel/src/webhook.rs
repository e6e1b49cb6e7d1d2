//! The generic JSON webhook: what a chat app with a webhook API speaks, signed both ways with
//! HMAC-SHA256 over the timestamp and the body (the scheme Slack's and Stripe's webhooks use).
//!
//! **In** (the platform calls the mesh): `POST /channels/<tenant>/<channel>` with
//! `Content-Type: application/json`, the headers
//! `x-mesh-webhook-timestamp: <Unix seconds>` and
//! `x-mesh-webhook-signature: v1=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`, and the
//! body `{"message_id": "m-1", "user": "u-42", "text": "hello", "sent_at_ms": 1765000000000}`
//! (`sent_at_ms` optional). A timestamp more than 300 s from the mesh's clock is refused (a
//! replay); a message id seen before is stored once. Answered `200 {"ok": true}` once
//! recorded, `401` when the signature or the timestamp is wrong, `400` for a body that is not
//! such a message, `503` when it could not be recorded (send it again).
//!
//! **Out** (an agent answers): `POST <send_url>` with the same two headers, signed with the
//! same secret, and the body `{"message_id": "<the mesh's id>", "user": "u-42", "text": "..."}`
//! (`message_id` stays the same when a send is retried: the platform drops a repeat). A 2xx is
//! delivered; 408, 425, 429, 5xx or no answer are retried until the platform is back; any
//! other answer is a refusal, dead-lettered with the platform's words.
//!
//! ```
//! use mesh_channel::webhook::sign;
//!
//! // what a platform's own code computes to call the mesh
//! let signature = sign("0123456789abcdef0123", "1765000000", br#"{"message_id":"m-1"}"#);
//! assert!(signature.starts_with("v1=") && signature.len() == 3 + 64);
//! ```

use std::time::Duration;

use hmac::{Hmac, Mac};
use mesh_api::channel::v1 as channel;
use sha2::Sha256;

use crate::adapter::{Checked, Incoming, Refusal, SendError, classify, fresh, reply, unanswered};

/// The header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "x-mesh-webhook-timestamp";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-mesh-webhook-signature";

/// `v1=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

/// A message as the webhook carries it, both ways.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct WebhookMessage {
    message_id: String,
    user: String,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_at_ms: Option<i64>,
}

/// One webhook channel.
pub struct Webhook {
    secret: String,
    send_url: String,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("send_url", &self.send_url)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A webhook signing with `secret`, sending to `send_url` over `client` within `timeout`.
    pub fn new(
        secret: String,
        send_url: String,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            secret,
            send_url,
            client,
            timeout,
        }
    }

    /// Checks a callback's signature and timestamp, then reads its message.
    pub fn check(
        &self,
        request: &channel::CallbackRequest,
        now_ms: i64,
    ) -> Result<Checked, Refusal> {
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        let (Some(timestamp), Some(signature)) =
            (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
        else {
            return Err(Refusal::Forged(format!(
                "no {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers"
            )));
        };
        let expected = sign(&self.secret, timestamp, &request.body);
        // compared in constant time: a forger learns nothing from how long a refusal takes
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            signature.as_bytes(),
        )) {
            return Err(Refusal::Forged(format!(
                "{SIGNATURE_HEADER} is not the body's signature with the channel's secret"
            )));
        }
        fresh(timestamp, now_ms)?;
        if request.method != "POST" {
            return Err(Refusal::Malformed(format!(
                "{} is not a callback: POST a message",
                request.method
            )));
        }
        let message: WebhookMessage = serde_json::from_slice(&request.body)
            .map_err(|e| Refusal::Malformed(format!("the body is not a webhook message: {e}")))?;
        if message.text.is_empty() {
            return Err(Refusal::Malformed("text is empty".into()));
        }
        for (field, value) in [("message_id", &message.message_id), ("user", &message.user)] {
            if value.is_empty() || value.len() > 100 {
                return Err(Refusal::Malformed(format!("{field} must have 1-100 bytes")));
            }
        }
        Ok(Checked {
            messages: vec![Incoming {
                platform_message_id: message.message_id,
                platform_user: message.user,
                text: message.text,
                sent_at_ms: message.sent_at_ms.unwrap_or(now_ms),
            }],
            reply: reply(200, "application/json", &br#"{"ok":true}"#[..]),
        })
    }

    /// POSTs `text` for `user`, signed.
    pub async fn send(&self, user: &str, text: &str, message_id: &str) -> Result<(), SendError> {
        let body = serde_json::to_vec(&WebhookMessage {
            message_id: message_id.to_owned(),
            user: user.to_owned(),
            text: text.to_owned(),
            sent_at_ms: None,
        })
        .expect("a message serializes");
        let timestamp = (mesh_contract::fields::now_ms() / 1000).to_string();
        let answer = self
            .client
            .post(&self.send_url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, sign(&self.secret, &timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| unanswered(&self.send_url, &e))?;
        let status = answer.status();
        let words = answer.text().await.unwrap_or_default();
        classify(status, &words, &self.send_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";
    const NOW_MS: i64 = 1_765_000_000_000;

    fn callback(
        body: &str,
        timestamp: &str,
        signature: Option<String>,
    ) -> channel::CallbackRequest {
        let mut headers = std::collections::HashMap::new();
        headers.insert(TIMESTAMP_HEADER.to_owned(), timestamp.to_owned());
        headers.insert(
            SIGNATURE_HEADER.to_owned(),
            signature.unwrap_or_else(|| sign(SECRET, timestamp, body.as_bytes())),
        );
        channel::CallbackRequest {
            channel: "site".into(),
            method: "POST".into(),
            query: String::new(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn webhook() -> Webhook {
        Webhook::new(
            SECRET.into(),
            "http://127.0.0.1:9/".into(),
            reqwest::Client::new(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_signed_fresh_callback_is_read_and_anything_else_refused() {
        let body = r#"{"message_id":"m-1","user":"u-42","text":"hello"}"#;
        let now = "1765000000";
        let checked = webhook().check(&callback(body, now, None), NOW_MS).unwrap();
        assert_eq!(checked.messages[0].platform_user, "u-42");
        assert_eq!(checked.reply.http_status, 200);
        // another secret, a body changed after signing, an old timestamp, no headers
        let forged = callback(
            body,
            now,
            Some(sign("another-secret-0123456", now, body.as_bytes())),
        );
        let tampered = {
            let mut c = callback(body, now, None);
            c.body = body.replace("hello", "pay me").into_bytes();
            c
        };
        let replayed = callback(body, "1764999000", None);
        let bare = channel::CallbackRequest {
            method: "POST".into(),
            body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        for (what, request) in [
            ("forged", forged),
            ("tampered", tampered),
            ("replayed", replayed),
            ("bare", bare),
        ] {
            let refused = webhook().check(&request, NOW_MS).unwrap_err();
            assert!(matches!(refused, Refusal::Forged(_)), "{what}: {refused:?}");
        }
        let garbage = webhook().check(&callback("{\"text\": 1}", now, None), NOW_MS);
        assert!(matches!(garbage, Err(Refusal::Malformed(_))), "{garbage:?}");
    }
}
