//! Every setting the reference services read from a tenant's `services.<name>.settings`,
//! declared once: its type, bounds, default and meaning. The tenant files are checked against
//! these declarations wherever they are read (`mesh up` at start-up, every worker, `meshctl
//! tenant check` offline and against a running mesh, `tenant add`), the services read their
//! values through them, and `tenants/README.md`'s table is tested against them.
//!
//! ```
//! use mesh_config::settings::{self, Setting};
//!
//! let retention = settings::declared("message", "retention_days").unwrap();
//! assert_eq!(retention.default, Some(30));
//! // a misspelled key is refused with the key it most likely meant
//! assert_eq!(settings::near_miss("recommend", "max_sugestions"), Some("max_suggestions"));
//! ```

use std::collections::BTreeMap;

use crate::error::FieldError;

/// What a setting holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole number from 1 to `max`.
    Count {
        /// The largest accepted.
        max: u64,
    },
    /// An `http://` or `https://` URL with a host.
    HttpUrl,
    /// One of a few words (a policy); the setting's `default` is the index of one.
    Choice {
        /// The accepted words.
        options: &'static [&'static str],
    },
}

/// One declared setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The service reading it (`message`).
    pub service: &'static str,
    /// Its key in `services.<service>.settings` (`retention_days`).
    pub key: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Its value when the tenant file sets none (for a [`Kind::Choice`], the index of its
    /// option); `None`: required once the service is enabled.
    pub default: Option<u64>,
    /// What it does (the README table's last column).
    pub doc: &'static str,
}

/// Every setting of the reference services.
pub const DECLARED: &[Setting] = &[
    Setting {
        service: "message",
        key: "retention_days",
        kind: Kind::Count { max: 36_500 },
        default: Some(30),
        doc: "how long stored messages are kept (finance: 2555); workers purge hourly",
    },
    Setting {
        service: "message",
        key: "max_body_bytes",
        kind: Kind::Count { max: 1 << 20 },
        default: Some(4096),
        doc: "largest message body accepted; larger sends are refused naming the tenant and this key",
    },
    Setting {
        service: "recommend",
        key: "max_suggestions",
        kind: Kind::Count { max: 100 },
        default: Some(3),
        doc: "products shown beside a conversation (mall: 5)",
    },
    Setting {
        service: "push",
        key: "webhook",
        kind: Kind::HttpUrl,
        default: None,
        doc: "the business line's notifier: where offline notices are posted; required once `services.push.enabled = true`",
    },
    Setting {
        service: "push",
        key: "timeout_ms",
        kind: Kind::Count { max: 600_000 },
        default: Some(2000),
        doc: "how long the notifier may take to answer before the notice is retried",
    },
    Setting {
        service: "gateway",
        key: "max_devices",
        kind: Kind::Count { max: 1000 },
        default: Some(16),
        doc: "terminals one user may hold attached at once across every node (phone, desktop, web tabs); one more is handled by `at_device_cap`",
    },
    Setting {
        service: "gateway",
        key: "at_device_cap",
        kind: Kind::Choice {
            options: &["refuse", "sign_out_oldest"],
        },
        default: Some(0),
        doc: "what a user at `max_devices` attaching one more gets: `refuse` (RESOURCE_EXHAUSTED naming the cap) or `sign_out_oldest` (that terminal is told SignedOut and its stream ends)",
    },
];

impl Setting {
    /// Its default as a tenant file would write it (`30`, `refuse`); `-` when required.
    pub fn default_text(&self) -> String {
        match (self.kind, self.default) {
            (_, None) => "-".to_owned(),
            (Kind::Choice { options }, Some(i)) => options
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .copied()
                .unwrap_or("-")
                .to_owned(),
            (_, Some(n)) => n.to_string(),
        }
    }
}

/// The declaration of `service`'s setting `key`.
pub fn declared(service: &str, key: &str) -> Option<&'static Setting> {
    DECLARED
        .iter()
        .find(|s| s.service == service && s.key == key)
}

/// The settings `service` takes.
pub fn of(service: &str) -> impl Iterator<Item = &'static Setting> + '_ {
    DECLARED.iter().filter(move |s| s.service == service)
}

/// The declared key of `service` that `key` most likely misspells.
pub fn near_miss(service: &str, key: &str) -> Option<&'static str> {
    of(service)
        .map(|s| (strsim::damerau_levenshtein(s.key, key), s.key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, key)| key)
}

/// A choice's value: the tenant's, or the default. Call on a checked config; an unchecked bad
/// value reads as the default.
pub fn choice(
    settings: &BTreeMap<String, figment::value::Value>,
    setting: &Setting,
) -> &'static str {
    let Kind::Choice { options } = setting.kind else {
        return "";
    };
    settings
        .get(setting.key)
        .and_then(|v| v.as_str())
        .and_then(|word| options.iter().find(|o| **o == word))
        .copied()
        .or_else(|| {
            let i = usize::try_from(setting.default?).ok()?;
            options.get(i).copied()
        })
        .unwrap_or_default()
}

/// Checks an `http://` or `https://` URL with a host.
pub fn http_url(value: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{value:?} is not an http:// or https:// URL with a host"
        ));
    }
    Ok(parsed)
}

/// A count's value: the tenant's, or the default. Call on a checked config (as loading
/// leaves every config); an unchecked bad value reads as the default.
pub fn count(settings: &BTreeMap<String, figment::value::Value>, setting: &Setting) -> u64 {
    settings
        .get(setting.key)
        .and_then(|v| v.to_i128())
        .and_then(|n| u64::try_from(n).ok())
        .or(setting.default)
        .unwrap_or_default()
}

/// The problems of one service's `settings` table (`service` enabled or not: a typo is a typo),
/// each naming `source` and the key.
pub fn check(
    source: &str,
    service: &str,
    enabled: bool,
    settings: &BTreeMap<String, figment::value::Value>,
) -> Vec<FieldError> {
    let field = |key: &str| format!("services.{service}.settings.{key}");
    let error = |key: &str, message: String| FieldError {
        source: source.to_owned(),
        field: field(key),
        message,
    };
    let mut errors = Vec::new();
    for (key, value) in settings {
        let Some(setting) = declared(service, key) else {
            let takes: Vec<&str> = of(service).map(|s| s.key).collect();
            let mut message = match near_miss(service, key) {
                Some(meant) => format!("unknown setting; did you mean `{meant}`?"),
                None => "unknown setting".to_owned(),
            };
            message.push_str(&match takes.as_slice() {
                [] => format!(" (service {service} takes no settings)"),
                keys => format!(" (service {service} takes: {})", keys.join(", ")),
            });
            errors.push(error(key, message));
            continue;
        };
        match setting.kind {
            // TOML integers are signed
            Kind::Count { max } => match value.to_i128() {
                Some(n) if n >= 1 && n <= i128::from(max) => {}
                _ => errors.push(error(
                    key,
                    format!("{} is not a whole number from 1 to {max}", show(value)),
                )),
            },
            Kind::HttpUrl => match value.as_str() {
                Some(text) => {
                    if let Err(message) = http_url(text) {
                        errors.push(error(key, message));
                    }
                }
                None => errors.push(error(key, format!("{} is not a URL string", show(value)))),
            },
            Kind::Choice { options } => {
                if !value.as_str().is_some_and(|word| options.contains(&word)) {
                    errors.push(error(
                        key,
                        format!("{} is not one of: {}", show(value), options.join(", ")),
                    ));
                }
            }
        }
    }
    if enabled {
        for setting in of(service).filter(|s| s.default.is_none()) {
            if !settings.contains_key(setting.key) {
                errors.push(error(
                    setting.key,
                    format!(
                        "{service} is enabled but sets no `{}` ({})",
                        setting.key, setting.doc
                    ),
                ));
            }
        }
    }
    errors
}

/// A value as the tenant file wrote it (`0`, `"forever"`), not figment's Debug.
fn show(value: &figment::value::Value) -> String {
    use figment::value::Value;
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_i128(), n.to_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => f.to_string(),
            _ => "a number".into(),
        },
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "a list".into(),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Empty(..) => "an empty value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, figment::value::Value)]) -> BTreeMap<String, figment::value::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn typos_bounds_types_and_required_keys_are_refused_naming_the_key() {
        use figment::value::Value;
        let n = |n: i64| Value::from(n);
        let text = |s: &str| Value::from(s.to_owned());
        let problems = |service, enabled, pairs: &[(&str, Value)]| {
            check("t.toml", service, enabled, &table(pairs))
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        assert!(problems("recommend", true, &[("max_suggestions", n(5))]).is_empty());
        let typo = problems("recommend", true, &[("max_sugestions", n(5))]);
        assert_eq!(
            typo,
            [
                "t.toml: field `services.recommend.settings.max_sugestions`: unknown setting; did you \
              mean `max_suggestions`? (service recommend takes: max_suggestions)"
            ]
        );
        let zero = problems("recommend", true, &[("max_suggestions", n(0))]);
        assert!(
            zero[0].contains("0 is not a whole number from 1 to 100"),
            "{zero:?}"
        );
        let word = problems("message", true, &[("retention_days", text("long"))]);
        assert!(
            word[0].contains("\"long\" is not a whole number"),
            "{word:?}"
        );
        let far = problems("message", true, &[("colour", n(1))]);
        assert!(!far[0].contains("did you mean"), "{far:?}");
        let missing = problems("push", true, &[]);
        assert!(
            missing[0].contains("services.push.settings.webhook"),
            "{missing:?}"
        );
        assert!(
            problems("push", false, &[]).is_empty(),
            "not required while off"
        );
        let ftp = problems("push", true, &[("webhook", text("ftp://x"))]);
        assert!(ftp[0].contains("not an http:// or https:// URL"), "{ftp:?}");
        let order = problems("order", true, &[("anything", n(1))]);
        assert!(
            order[0].contains("service order takes no settings"),
            "{order:?}"
        );
    }

    #[test]
    fn values_read_as_declared() {
        let max = declared("recommend", "max_suggestions").unwrap();
        assert_eq!(count(&BTreeMap::new(), max), 3);
        assert_eq!(
            count(
                &table(&[("max_suggestions", figment::value::Value::from(7))]),
                max
            ),
            7
        );
    }

    #[test]
    fn a_choice_takes_one_of_its_words_and_reads_its_default() {
        use figment::value::Value;
        let cap = declared("gateway", "at_device_cap").unwrap();
        let with = |v: Value| table(&[("at_device_cap", v)]);
        let refused = check(
            "t.toml",
            "gateway",
            true,
            &with(Value::from("kick".to_owned())),
        );
        assert_eq!(
            refused.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [
                "t.toml: field `services.gateway.settings.at_device_cap`: \"kick\" is not one of: refuse, sign_out_oldest"
            ]
        );
        assert_eq!(
            check("t.toml", "gateway", true, &with(Value::from(1))).len(),
            1
        );
        let chosen = with(Value::from("sign_out_oldest".to_owned()));
        assert!(check("t.toml", "gateway", true, &chosen).is_empty());
        assert_eq!(choice(&chosen, cap), "sign_out_oldest");
        assert_eq!(choice(&BTreeMap::new(), cap), "refuse");
        assert_eq!(cap.default_text(), "refuse");
    }

    /// The tenants README's settings table says what the declarations say: every declared
    /// setting has its row with its default, and no row names an undeclared one.
    #[test]
    fn the_tenants_readme_table_matches_the_declarations() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants/README.md"),
        )
        .unwrap();
        let rows: Vec<Vec<String>> = readme
            .lines()
            .skip_while(|l| !l.starts_with("Service settings"))
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').to_owned())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), DECLARED.len(), "{rows:?}");
        for setting in DECLARED {
            let name = format!("{}.{}", setting.service, setting.key);
            let row = rows
                .iter()
                .find(|r| r[0] == name)
                .unwrap_or_else(|| panic!("no README row for {name}"));
            assert_eq!(row[1], setting.default_text(), "{name}'s default");
            assert_eq!(row[2], setting.doc.trim_matches('`'), "{name}'s meaning");
        }
    }
}
