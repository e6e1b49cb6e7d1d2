//! A tenant's third-party channels (`[channels.<name>]` in its file): the other messaging
//! platforms its customers write from (a WeChat official account, a chat app with a webhook
//! API), each with its kind, its secrets by reference and the agent who answers there.
//!
//! ```
//! use mesh_config::channels::{ChannelConfig, ChannelKind};
//!
//! let channel: ChannelConfig = toml::from_str(
//!     r#"
//!     kind = "webhook"
//!     agent = "agent-1"
//!     secret_env = "MESH_MALL_SITE_SECRET"
//!     send_url = "https://chat.example.com/mesh/outbound"
//!     "#,
//! )
//! .unwrap();
//! assert_eq!(channel.kind, ChannelKind::Webhook);
//! assert_eq!(channel.sends_per_second, 20);
//! // the channel's users are named apart from the tenant's own
//! assert_eq!(mesh_config::channels::user_id("site", "u-42"), "ch:site:u-42");
//! ```

use serde::Deserialize;

/// What a channel's platform speaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A generic JSON webhook, signed with HMAC-SHA256 both ways (the platform's callbacks
    /// and the mesh's sends): what a chat app with a webhook API speaks.
    Webhook,
    /// A WeChat official account: its server-address check, its XML message callbacks signed
    /// with the account's token, its customer-service message API for answers.
    Wechat,
}

impl ChannelKind {
    /// Its name in a tenant file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Wechat => "wechat",
        }
    }
}

/// One channel of a tenant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The platform's kind.
    pub kind: ChannelKind,
    /// Who receives what customers write here, and answers them (a user id of the tenant:
    /// the merchant's or an agent's).
    pub agent: String,
    /// The business line's account on that platform (WeChat: the official account's id,
    /// `gh_...`, which its callbacks name as their receiver).
    pub account: Option<String>,
    /// The secret callbacks are signed with (the webhook's HMAC key, WeChat's token), inline:
    /// development only.
    pub secret: Option<String>,
    /// The environment variable holding that secret.
    pub secret_env: Option<String>,
    /// WeChat: the account's AppID (for its API's access token).
    pub app_id: Option<String>,
    /// WeChat: the AppSecret, inline (development only).
    pub app_secret: Option<String>,
    /// WeChat: the environment variable holding the AppSecret.
    pub app_secret_env: Option<String>,
    /// Webhook: where answers are POSTed. WeChat: its API's base
    /// (default `https://api.weixin.qq.com`).
    pub send_url: Option<String>,
    /// Sends per second to the platform at most (its quota), the excess waiting its turn.
    #[serde(default = "default_sends_per_second")]
    pub sends_per_second: u32,
    /// How long the platform may take to answer a send before it is tried again.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_sends_per_second() -> u32 {
    20
}

fn default_timeout_ms() -> u32 {
    5000
}

/// WeChat's API, unless the channel names another (a proxy, a test's stand-in).
pub const WECHAT_API: &str = "https://api.weixin.qq.com";

/// Most sends per second a channel may allow.
pub const MAX_SENDS_PER_SECOND: u32 = 10_000;

/// Longest channel name.
pub const MAX_NAME_CHARS: usize = 32;

impl ChannelConfig {
    /// The callbacks' secret: `secret`, else the value of `secret_env` (empty when unset).
    pub fn resolve_secret(&self) -> String {
        resolve(&self.secret, &self.secret_env)
    }

    /// WeChat's AppSecret: `app_secret`, else the value of `app_secret_env`.
    pub fn resolve_app_secret(&self) -> String {
        resolve(&self.app_secret, &self.app_secret_env)
    }

    /// Where answers go: `send_url`, or WeChat's API.
    pub fn send_url(&self) -> &str {
        match (self.kind, &self.send_url) {
            (_, Some(url)) => url,
            (ChannelKind::Wechat, None) => WECHAT_API,
            (ChannelKind::Webhook, None) => "",
        }
    }

    /// The environment variables the channel reads its secrets from.
    pub fn secret_envs(&self) -> impl Iterator<Item = &str> {
        [&self.secret_env, &self.app_secret_env]
            .into_iter()
            .filter_map(|v| v.as_deref())
    }
}

fn resolve(inline: &Option<String>, env: &Option<String>) -> String {
    match (inline, env) {
        (Some(value), _) => value.clone(),
        (None, Some(var)) => std::env::var(var).unwrap_or_default(),
        (None, None) => String::new(),
    }
}

/// The prefix of every channel user's id: a tenant's account system issues no such id (an end
/// user's Send from one is refused).
pub const USER_PREFIX: &str = mesh_contract::fields::CHANNEL_USER_PREFIX;

/// The mesh's user id of `platform_user` of `channel`: `ch:<channel>:<platform user>`, the
/// platform's id kept when it is made of id characters (letters, digits, `-_.:@`), short
/// enough and not starting `h-`, else `h-` and a digest of it (stable: the same platform user
/// is always the same user; and no kept id reads as a digest, so two users never meet in one).
pub fn user_id(channel: &str, platform_user: &str) -> String {
    let plain = !platform_user.is_empty()
        && platform_user.len() <= 64
        && !platform_user.starts_with("h-")
        && platform_user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if plain {
        format!("{USER_PREFIX}{channel}:{platform_user}")
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(platform_user.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{USER_PREFIX}{channel}:h-{hex}")
    }
}

/// The channel a user id belongs to, if it is a channel user's (`ch:<channel>:...`).
pub fn channel_of(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix(USER_PREFIX)?;
    rest.split_once(':').map(|(channel, _)| channel)
}

/// The platform's own id of a channel user (what [`user_id`] kept), if it kept it.
pub fn platform_user(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix(USER_PREFIX)?;
    let (_, user) = rest.split_once(':')?;
    (!user.starts_with("h-")).then_some(user)
}

/// Whether `name` can name a channel (its callback path, its users' ids): 1-32 lower-case
/// letters, digits and `-`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A problem of a channel's table: its field (`channels.<name>.<key>`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, in full.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// A secret the file names that is not there (a problem only where the file loads to
    /// serve, not where a deployment renders it).
    pub missing_secret: bool,
}

/// The problems of channel `name` of a tenant whose message service runs or not
/// (`runs_message`: a channel's messages are stored there).
pub fn problems(name: &str, channel: &ChannelConfig, runs_message: bool) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut add = |key: &str, message: String, missing_secret: bool| {
        let field = if key.is_empty() {
            format!("channels.{name}")
        } else {
            format!("channels.{name}.{key}")
        };
        found.push(Problem {
            field,
            message,
            missing_secret,
        });
    };
    if !valid_name(name) {
        add(
            "",
            format!(
                "{name:?} cannot name a channel: 1-{MAX_NAME_CHARS} lower-case letters, digits and `-`, starting with a letter (it is part of the callback path and of its users' ids)"
            ),
            false,
        );
    }
    if !runs_message {
        add(
            "",
            "the tenant does not run the message service, where a channel's messages are stored (services.message.enabled)".into(),
            false,
        );
    }
    if let Err(message) = mesh_contract::fields::id("agent", &channel.agent) {
        add("agent", message.message().to_owned(), false);
    }
    secret(&mut add, "secret", &channel.secret, &channel.secret_env);
    if !(1..=MAX_SENDS_PER_SECOND).contains(&channel.sends_per_second) {
        add(
            "sends_per_second",
            format!(
                "{} is not from 1 to {MAX_SENDS_PER_SECOND}",
                channel.sends_per_second
            ),
            false,
        );
    }
    if !(100..=60_000).contains(&channel.timeout_ms) {
        add(
            "timeout_ms",
            format!("{} is not from 100 to 60000", channel.timeout_ms),
            false,
        );
    }
    match (channel.kind, &channel.send_url) {
        (ChannelKind::Webhook, None) => add(
            "send_url",
            "is missing: where the channel's answers are POSTed".into(),
            false,
        ),
        (_, Some(url)) => {
            if let Err(message) = crate::settings::http_url(url) {
                add("send_url", message, false);
            }
        }
        (ChannelKind::Wechat, None) => {}
    }
    if channel.kind == ChannelKind::Wechat {
        for (key, value) in [("account", &channel.account), ("app_id", &channel.app_id)] {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                add(
                    key,
                    format!("is missing: a wechat channel names its {key}"),
                    false,
                );
            }
        }
        secret(
            &mut add,
            "app_secret",
            &channel.app_secret,
            &channel.app_secret_env,
        );
    } else {
        for (key, set) in [
            ("account", channel.account.is_some()),
            ("app_id", channel.app_id.is_some()),
            (
                "app_secret",
                channel.app_secret.is_some() || channel.app_secret_env.is_some(),
            ),
        ] {
            if set {
                add(
                    key,
                    "is a wechat channel's; a webhook takes none".into(),
                    false,
                );
            }
        }
    }
    found
}

/// `key` (inline) or `<key>_env`: exactly one, the variable set.
fn secret(
    add: &mut impl FnMut(&str, String, bool),
    key: &str,
    inline: &Option<String>,
    env: &Option<String>,
) {
    match (inline, env) {
        (Some(_), Some(_)) => add(
            key,
            format!("set one of `{key}` and `{key}_env`, not both"),
            false,
        ),
        (None, None) => add(
            key,
            format!(
                "missing: set `{key}_env` (the environment variable holding it) or, for development, `{key}`"
            ),
            false,
        ),
        (Some(value), None) if value.chars().count() < 16 => add(
            key,
            format!(
                "has {} characters; a channel secret has at least 16",
                value.chars().count()
            ),
            false,
        ),
        (None, Some(var)) => match std::env::var(var) {
            Err(_) => add(
                &format!("{key}_env"),
                format!("environment variable {var} is not set"),
                true,
            ),
            Ok(value) if value.chars().count() < 16 => add(
                &format!("{key}_env"),
                format!(
                    "environment variable {var} holds {} characters; a channel secret has at least 16",
                    value.chars().count()
                ),
                false,
            ),
            Ok(_) => {}
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_users_are_named_stably_and_apart() {
        assert_eq!(user_id("wx", "oAbC-12_x"), "ch:wx:oAbC-12_x");
        let odd = user_id("site", "Ünïcode user / 42");
        assert!(odd.starts_with("ch:site:h-") && odd.len() == "ch:site:h-".len() + 32);
        assert_eq!(odd, user_id("site", "Ünïcode user / 42"), "stable");
        assert_eq!(channel_of("ch:wx:oAbC"), Some("wx"));
        assert_eq!(platform_user("ch:wx:oAbC"), Some("oAbC"));
        assert_eq!(platform_user(&odd), None);
        assert_eq!(channel_of("alice"), None);
        // an id that reads like a digest is digested too: never the same user as another's
        let digest_like = odd.trim_start_matches("ch:site:");
        assert_ne!(user_id("site", digest_like), odd);
        assert!(user_id("site", "h-1").starts_with("ch:site:h-"));
        assert_ne!(user_id("site", "h-1"), "ch:site:h-1");
        assert!(valid_name("wechat-mall") && !valid_name("WeChat") && !valid_name("1x"));
    }

    #[test]
    fn a_channels_problems_name_its_fields() {
        let webhook: ChannelConfig = toml::from_str(
            "kind = \"webhook\"\nagent = \"bad agent\"\nsecret = \"short\"\napp_id = \"wx1\"\nsends_per_second = 0",
        )
        .unwrap();
        let fields: Vec<String> = problems("Site", &webhook, false)
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        let has = |needle: &str| fields.iter().any(|f| f.contains(needle));
        assert!(
            has("channels.Site: \"Site\" cannot name a channel"),
            "{fields:#?}"
        );
        assert!(has(
            "channels.Site: the tenant does not run the message service"
        ));
        assert!(has("channels.Site.agent: agent"));
        assert!(has("channels.Site.secret: has 5 characters"));
        assert!(has("channels.Site.sends_per_second: 0 is not from 1"));
        assert!(has("channels.Site.send_url: is missing"));
        assert!(has("channels.Site.app_id: is a wechat channel's"));
        let wechat: ChannelConfig = toml::from_str(
            "kind = \"wechat\"\nagent = \"agent-1\"\nsecret_env = \"MESH_TEST_UNSET_CHANNEL_SECRET\"\naccount = \"gh_1\"\napp_id = \"wx1\"\napp_secret = \"0123456789abcdef0123\"",
        )
        .unwrap();
        let found = problems("wx", &wechat, true);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "channels.wx.secret_env");
        assert!(found[0].missing_secret);
        assert_eq!(wechat.send_url(), WECHAT_API);
    }
}
