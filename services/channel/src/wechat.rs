//! A WeChat official account, as WeChat's documentation for official accounts describes it
//! (plaintext mode): the server-address check, message callbacks, and the customer-service
//! message API for answers.
//!
//! **In:** WeChat calls `/channels/<tenant>/<channel>?signature=..&timestamp=..&nonce=..`;
//! `signature` is the hex SHA-1 of the account's token, `timestamp` and `nonce` sorted and
//! joined. `GET` (with `echostr`) is the address check, answered with the echo. `POST` carries
//! one message as XML (`ToUserName` the account, `FromUserName` the user's OpenID,
//! `CreateTime`, `MsgType`, `Content`, `MsgId`); it is answered `success` once recorded, and
//! WeChat, which retries a callback not answered within 5 s, gets `success` for a repeat too
//! (the `MsgId` makes it the same message). Only text is stored; other kinds (images, events)
//! are answered `success` and left.
//!
//! Plaintext mode signs the token, timestamp and nonce, not the body. The mesh therefore also
//! refuses a timestamp more than 300 s from its clock and a (timestamp, nonce) pair spent
//! before on another body or on an address check (a captured signature replayed with a forged
//! body). That memory is each worker's own: a replay sent to another replica within the
//! window, or after a restart, is not caught, and whoever spends a fresh signed query first
//! wins it. WeChat's encrypted mode, which signs the body too (`msg_signature`) and closes
//! both, is not built yet: until it is, keep a plaintext-mode channel behind HTTPS (which
//! WeChat requires) and out of logs that keep query strings.
//!
//! **Out:** an access token from `GET <api>/cgi-bin/token?grant_type=client_credential&appid=
//! ..&secret=..` (kept until shortly before `expires_in`), then `POST <api>/cgi-bin/message/
//! custom/send?access_token=..` with `{"touser": OpenID, "msgtype": "text", "text":
//! {"content": ...}}`. `errcode` 0 is delivered; -1 (busy), 45009 (rate) and a token WeChat no
//! longer takes (40001, 40014, 42001: fetched again) are retried; any other errcode (45015: the
//! user wrote more than 48 hours ago; 40003: no such user) is a refusal, dead-lettered with
//! WeChat's words.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use mesh_api::channel::v1 as channel;
use sha1::{Digest, Sha1};

use crate::adapter::{
    Checked, Incoming, REPLAY_WINDOW_SECS, Refusal, SendError, classify, fresh, query_value, reply,
    unanswered,
};

/// WeChat's signature of `timestamp` and `nonce` with `token`.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [token, timestamp, nonce];
    parts.sort_unstable();
    Sha1::digest(parts.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message callback's XML, as WeChat sends it.
#[derive(Debug, serde::Deserialize)]
struct WechatMessage {
    #[serde(rename = "ToUserName")]
    to_user_name: String,
    #[serde(rename = "FromUserName")]
    from_user_name: String,
    #[serde(rename = "CreateTime")]
    create_time: i64,
    #[serde(rename = "MsgType")]
    msg_type: String,
    #[serde(rename = "Content", default)]
    content: Option<String>,
    #[serde(rename = "MsgId", default)]
    msg_id: Option<String>,
}

/// WeChat's answer to an API call.
#[derive(Debug, Default, serde::Deserialize)]
struct ApiAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Access tokens kept this long before `expires_in` runs out are fetched anew.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// One official account.
pub struct Wechat {
    token: String,
    account: String,
    app_id: String,
    app_secret: String,
    api: String,
    client: reqwest::Client,
    timeout: Duration,
    access: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// (timestamp, nonce) of recent callbacks -> the SHA-1 of the body they came with.
    seen: Mutex<HashMap<(String, String), [u8; 20]>>,
}

impl std::fmt::Debug for Wechat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wechat")
            .field("account", &self.account)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl Wechat {
    /// The account `account` (`gh_...`) whose callbacks are signed with `token`, answering
    /// through the API at `api` as `app_id` with `app_secret`, over `client` within `timeout`.
    pub fn new(
        token: String,
        account: String,
        app_id: String,
        app_secret: String,
        api: String,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            token,
            account,
            app_id,
            app_secret,
            api: api.trim_end_matches('/').to_owned(),
            client,
            timeout,
            access: tokio::sync::Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// Checks a callback's signature, its freshness and its nonce, then reads its message.
    pub fn check(
        &self,
        request: &channel::CallbackRequest,
        now_ms: i64,
    ) -> Result<Checked, Refusal> {
        let param = |name| query_value(&request.query, name);
        let (Some(given), Some(timestamp), Some(nonce)) =
            (param("signature"), param("timestamp"), param("nonce"))
        else {
            return Err(Refusal::Forged(
                "no signature, timestamp and nonce in the query".into(),
            ));
        };
        let expected = signature(&self.token, &timestamp, &nonce);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            given.as_bytes(),
        )) {
            return Err(Refusal::Forged(
                "signature is not WeChat's with the account's token".into(),
            ));
        }
        fresh(&timestamp, now_ms)?;
        if request.method == "GET" {
            // the address check: the echo proves the mesh holds the token. Its signature is
            // spent here: the same query never passes again with a body
            let echo =
                param("echostr").ok_or_else(|| Refusal::Malformed("GET without echostr".into()))?;
            self.first_use(&timestamp, &nonce, b"GET", now_ms)?;
            return Ok(Checked {
                messages: Vec::new(),
                reply: reply(200, "text/plain", echo),
            });
        }
        self.not_reused(&timestamp, &nonce, &request.body)?;
        let body = std::str::from_utf8(&request.body)
            .map_err(|_| Refusal::Malformed("the body is not UTF-8 XML".into()))?;
        let message: WechatMessage = quick_xml::de::from_str(body)
            .map_err(|e| Refusal::Malformed(format!("the body is not a WeChat message: {e}")))?;
        if message.to_user_name != self.account {
            return Err(Refusal::Malformed(format!(
                "the message is for account {:?}, not this channel's ({:?})",
                message.to_user_name, self.account
            )));
        }
        let success = reply(200, "text/plain", "success");
        let (Some(content), Some(msg_id), "text") =
            (message.content, message.msg_id, message.msg_type.as_str())
        else {
            // an image, a voice, a subscription event ...: acknowledged, not stored
            tracing::debug!(account = %self.account, kind = %message.msg_type, "a WeChat callback the mesh does not store");
            self.first_use(&timestamp, &nonce, &request.body, now_ms)?;
            return Ok(Checked {
                messages: Vec::new(),
                reply: success,
            });
        };
        if content.is_empty() || message.from_user_name.is_empty() {
            return Err(Refusal::Malformed("an empty text or sender".into()));
        }
        // spent only by a message taken: junk sent first under a captured query cannot make
        // WeChat's own delivery of it look like a replay
        self.first_use(&timestamp, &nonce, &request.body, now_ms)?;
        Ok(Checked {
            messages: vec![Incoming {
                platform_message_id: msg_id,
                platform_user: message.from_user_name,
                text: content,
                sent_at_ms: message.create_time.saturating_mul(1000),
            }],
            reply: success,
        })
    }

    /// Refuses a (timestamp, nonce) pair spent before on another body (or on an address
    /// check); the same body again is WeChat's own retry.
    fn not_reused(&self, timestamp: &str, nonce: &str, body: &[u8]) -> Result<(), Refusal> {
        let digest: [u8; 20] = Sha1::digest(body).into();
        let seen = self.seen.lock().expect("lock");
        match seen.get(&(timestamp.to_owned(), nonce.to_owned())) {
            Some(first) if *first != digest => Err(Refusal::Forged(
                "this timestamp and nonce came before with another body (a replayed signature)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Spends a (timestamp, nonce) pair on `body`: [`Wechat::not_reused`] refuses it with
    /// another from then on (in this process, for the replay window).
    fn first_use(
        &self,
        timestamp: &str,
        nonce: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), Refusal> {
        let digest: [u8; 20] = Sha1::digest(body).into();
        let mut seen = self.seen.lock().expect("lock");
        // pairs past the window are refused by their timestamp already: forgotten
        let oldest = now_ms / 1000 - REPLAY_WINDOW_SECS;
        if seen.len() > 10_000 {
            seen.retain(|(t, _), _| t.parse::<i64>().is_ok_and(|t| t >= oldest));
        }
        match seen.get(&(timestamp.to_owned(), nonce.to_owned())) {
            Some(first) if *first != digest => Err(Refusal::Forged(
                "this timestamp and nonce came before with another body (a replayed signature)"
                    .into(),
            )),
            Some(_) => Ok(()),
            None => {
                seen.insert((timestamp.to_owned(), nonce.to_owned()), digest);
                Ok(())
            }
        }
    }

    /// An access token: the one kept, or a new one.
    async fn access_token(&self) -> Result<String, SendError> {
        let mut access = self.access.lock().await;
        if let Some((token, until)) = access.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let url = format!("{}/cgi-bin/token", self.api);
        let answer: ApiAnswer = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .query(&[
                ("grant_type", "client_credential"),
                ("appid", &self.app_id),
                ("secret", &self.app_secret),
            ])
            .send()
            .await
            .map_err(|e| unanswered(&url, &e))?
            .text()
            .await
            .map_err(|e| unanswered(&url, &e))
            .and_then(|words| {
                serde_json::from_str(&words).map_err(|e| {
                    SendError::Transient(format!("{url} answered no token ({e}): {words}"))
                })
            })?;
        match answer.access_token {
            Some(token) if answer.errcode == 0 => {
                let lasts = Duration::from_secs(answer.expires_in.unwrap_or(7200));
                *access = Some((
                    token.clone(),
                    Instant::now() + lasts.saturating_sub(TOKEN_MARGIN),
                ));
                Ok(token)
            }
            // -1: busy; anything else (a wrong AppSecret) will not pass by retrying
            _ if answer.errcode == -1 => Err(SendError::Transient(format!(
                "{url}: busy ({})",
                answer.errmsg
            ))),
            _ => Err(SendError::Refused(format!(
                "{url} gave no access token: errcode {} ({})",
                answer.errcode, answer.errmsg
            ))),
        }
    }

    /// Sends `text` to the user with OpenID `open_id`.
    pub async fn send(&self, open_id: &str, text: &str) -> Result<(), SendError> {
        let token = self.access_token().await?;
        let url = format!("{}/cgi-bin/message/custom/send", self.api);
        let body = serde_json::json!({
            "touser": open_id,
            "msgtype": "text",
            "text": { "content": text },
        });
        let answer = self
            .client
            .post(&url)
            .timeout(self.timeout)
            .query(&[("access_token", &token)])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| unanswered(&url, &e))?;
        let status = answer.status();
        let words = answer.text().await.unwrap_or_default();
        classify(status, &words, &url)?;
        let answer: ApiAnswer = serde_json::from_str(&words)
            .map_err(|e| SendError::Transient(format!("{url} answered no JSON ({e}): {words}")))?;
        match answer.errcode {
            0 => Ok(()),
            40001 | 40014 | 42001 => {
                // the token is no longer taken: the next try fetches a new one
                *self.access.lock().await = None;
                Err(SendError::Transient(format!(
                    "{url}: access token refused ({})",
                    answer.errmsg
                )))
            }
            -1 | 45009 => Err(SendError::Transient(format!(
                "{url}: errcode {} ({}), tried again",
                answer.errcode, answer.errmsg
            ))),
            code => Err(SendError::Refused(format!(
                "{url}: errcode {code} ({})",
                answer.errmsg
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_765_000_000_000;

    fn wechat() -> Wechat {
        Wechat::new(
            "wechat-token-0123456789".into(),
            "gh_mall".into(),
            "wx1".into(),
            "secret".into(),
            "http://127.0.0.1:9".into(),
            reqwest::Client::new(),
            Duration::from_secs(1),
        )
    }

    fn callback(method: &str, nonce: &str, body: &str, token: &str) -> channel::CallbackRequest {
        let timestamp = (NOW_MS / 1000).to_string();
        channel::CallbackRequest {
            channel: "wx".into(),
            method: method.into(),
            query: format!(
                "signature={}&timestamp={timestamp}&nonce={nonce}&echostr=echo-1",
                signature(token, &timestamp, nonce)
            ),
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn text(msg_id: &str, content: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[gh_mall]]></ToUserName><FromUserName><![CDATA[oUser1]]></FromUserName>\
             <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
             <MsgId>{msg_id}</MsgId></xml>",
            NOW_MS / 1000
        )
    }

    #[test]
    fn wechat_callbacks_are_checked_as_its_documentation_says() {
        // the documented example: token, timestamp and nonce sorted, joined, SHA-1
        assert_eq!(signature("b", "a", "c"), signature("c", "b", "a"));
        let account = wechat();
        let check = account.check(
            &callback("GET", "n1", "", "wechat-token-0123456789"),
            NOW_MS,
        );
        assert_eq!(check.unwrap().reply.body, b"echo-1");
        let body = text("1234567890123456", "where is my order?");
        let read = account
            .check(
                &callback("POST", "n2", &body, "wechat-token-0123456789"),
                NOW_MS,
            )
            .unwrap();
        assert_eq!(
            read.messages,
            [Incoming {
                platform_message_id: "1234567890123456".into(),
                platform_user: "oUser1".into(),
                text: "where is my order?".into(),
                sent_at_ms: NOW_MS,
            }]
        );
        assert_eq!(read.reply.body, b"success");
        // WeChat's retry of it passes; its signature with another body does not
        assert!(
            account
                .check(
                    &callback("POST", "n2", &body, "wechat-token-0123456789"),
                    NOW_MS
                )
                .is_ok()
        );
        let forged = text("1234567890123457", "refund me");
        let replayed = account.check(
            &callback("POST", "n2", &forged, "wechat-token-0123456789"),
            NOW_MS,
        );
        assert!(matches!(replayed, Err(Refusal::Forged(_))), "{replayed:?}");
        let wrong = account.check(
            &callback("POST", "n3", &body, "another-token-0123456"),
            NOW_MS,
        );
        assert!(matches!(wrong, Err(Refusal::Forged(_))), "{wrong:?}");
        let late = account.check(
            &callback("POST", "n4", &body, "wechat-token-0123456789"),
            NOW_MS + 600_000,
        );
        assert!(matches!(late, Err(Refusal::Forged(_))), "{late:?}");
        // a GET's signature is spent on the address check: not reusable with a body
        let get = callback("GET", "n6", "", "wechat-token-0123456789");
        account.check(&get, NOW_MS).unwrap();
        let mut post = get.clone();
        post.method = "POST".into();
        post.body = text("1234567890123499", "injected").into_bytes();
        assert!(matches!(
            account.check(&post, NOW_MS),
            Err(Refusal::Forged(_))
        ));
        // junk under a captured query spends nothing: the genuine body still passes
        let junk_query = callback("POST", "n7", "<xml>junk", "wechat-token-0123456789");
        let junk = account.check(&junk_query, NOW_MS);
        assert!(matches!(junk, Err(Refusal::Malformed(_))), "{junk:?}");
        let genuine = text("1234567890123500", "genuine");
        let genuine = callback("POST", "n7", &genuine, "wechat-token-0123456789");
        assert!(account.check(&genuine, NOW_MS).is_ok());
        // an event is answered and not stored
        let event = "<xml><ToUserName>gh_mall</ToUserName><FromUserName>oUser1</FromUserName>\
                     <CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>";
        let subscribed = account
            .check(
                &callback("POST", "n5", event, "wechat-token-0123456789"),
                NOW_MS,
            )
            .unwrap();
        assert!(subscribed.messages.is_empty());
    }
}
