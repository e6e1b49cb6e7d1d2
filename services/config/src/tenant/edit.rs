//! Editing a tenant file as ops change it (`tenant move`, grey releases), keeping its comments
//! and layout (toml_edit).

use super::*;

/// The text of a tenant file with its `isolation.process` set to `process`, everything else
/// (comments, order, spacing) as it was: what `meshctl tenant move` writes back.
pub fn with_process(text: &str, process: ProcessIsolation) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let value = match process {
        ProcessIsolation::Own => "own",
        ProcessIsolation::Shared => "shared",
    };
    let isolation = doc
        .entry("isolation")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or("`isolation` is not a table")?;
    isolation.insert("process", toml_edit::value(value));
    Ok(doc.to_string())
}

/// A change of a service's grey release (`meshctl grey ...`).
#[derive(Clone, Debug, PartialEq)]
pub enum GreyChange {
    /// Starts it (`version` given) or widens it: more users, a larger share.
    Widen {
        /// The major released; required to start one.
        version: Option<Major>,
        /// Users added to it.
        users: Vec<String>,
        /// Its new share of all users; never smaller than the current one.
        percent: Option<u8>,
    },
    /// Ends it: everyone runs the service's `version` again.
    Rollback,
    /// Ends it the other way: its major becomes the service's `version` for everyone.
    Promote,
}

/// The text of a tenant file with `service`'s grey release changed, everything else as it
/// was; the problem if the change does not apply.
pub fn with_grey(text: &str, service: &str, change: &GreyChange) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let services = doc
        .entry("services")
        .or_insert_with(|| {
            let mut services = toml_edit::Table::new();
            services.set_implicit(true);
            toml_edit::Item::Table(services)
        })
        .as_table_like_mut()
        .ok_or("`services` is not a table")?;
    // a service the tenant runs as the shared defaults say gets a table of its own
    let table = services
        .entry(service)
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or_else(|| format!("`services.{service}` is not a table"))?;
    let grey_version = table
        .get("grey")
        .and_then(|g| g.as_table_like())
        .and_then(|g| g.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    match change {
        GreyChange::Rollback | GreyChange::Promote if grey_version.is_none() => {
            return Err(format!("{service} has no grey release"));
        }
        GreyChange::Rollback => {
            table.remove("grey");
        }
        GreyChange::Promote => {
            let version = grey_version.expect("checked above");
            table.remove("grey");
            table.insert("version", toml_edit::value(version));
        }
        GreyChange::Widen {
            version,
            users,
            percent,
        } => {
            if version.is_none() && grey_version.is_none() {
                return Err(format!(
                    "{service} has no grey release yet: name the major to release (--version)"
                ));
            }
            let grey = table
                .entry("grey")
                .or_insert_with(|| toml_edit::value(toml_edit::InlineTable::new()))
                .as_table_like_mut()
                .ok_or("`grey` is not a table")?;
            if let Some(version) = version {
                grey.insert("version", toml_edit::value(version.to_string()));
            }
            let current = grey
                .get("percent")
                .and_then(|p| p.as_integer())
                .unwrap_or(0);
            if let Some(percent) = percent {
                if i64::from(*percent) < current {
                    return Err(format!(
                        "{service} is released to {current} % already: widening does not \
                         narrow (roll back, then start again)"
                    ));
                }
                grey.insert("percent", toml_edit::value(i64::from(*percent)));
            }
            let mut listed: Vec<String> = grey
                .get("users")
                .and_then(|u| u.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for user in users {
                if !listed.contains(user) {
                    listed.push(user.clone());
                }
            }
            if !listed.is_empty() {
                grey.insert(
                    "users",
                    toml_edit::value(toml_edit::Array::from_iter(listed)),
                );
            }
        }
    }
    // a table left empty (the release rolled back, the service's settings all in the
    // defaults) goes too
    let emptied = doc
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|t| t.as_table_like())
        .is_some_and(|t| t.is_empty());
    if emptied && let Some(services) = doc.get_mut("services").and_then(|s| s.as_table_like_mut()) {
        services.remove(service);
    }
    let changed = doc.to_string();
    if changed == text {
        return Err("that changes nothing".into());
    }
    Ok(changed)
}
