//! A tenant's browser access (`[web]` in its file): the origins of the apps that may call the
//! mesh as the tenant from a browser, served elsewhere than the mesh's own pages (CORS). None
//! by default: a page of another site cannot call as a tenant that did not name it.
//!
//! ```
//! use mesh_config::web::AllowedOrigins;
//!
//! let origins = AllowedOrigins::default();
//! origins.set("mall", &["https://shop.example.com".to_owned()]);
//! assert!(origins.allows("mall", "https://shop.example.com"));
//! assert!(!origins.allows("paipai", "https://shop.example.com"));
//! assert!(origins.any_allows("https://shop.example.com"));
//! assert!(!origins.any_allows("https://evil.example"));
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use serde::Deserialize;

/// `[web]` in a tenant file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Origins (`https://shop.example.com`, `http://localhost:5173`) whose pages may call the
    /// mesh as this tenant from a browser, as the browser sends them in `Origin`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl WebConfig {
    /// What is wrong with it, as (field, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.allowed_origins
            .iter()
            .enumerate()
            .filter(|(_, origin)| !is_origin(origin))
            .map(|(n, origin)| {
                (
                    format!("web.allowed_origins[{n}]"),
                    format!(
                        "{origin:?} is not an origin: scheme://host[:port] as a browser sends it \
                         (http or https, lower case, no path, no trailing slash, no wildcard: \
                         name each app's origin)"
                    ),
                )
            })
            .collect()
    }
}

/// Whether `origin` is a serialised web origin (`https://host[:port]`), as `Origin` carries.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    // an IPv6 host is bracketed (`[::1]:8443`), any other is a lower-case name or address
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                after => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            let ipv6 = |c: char| c.is_ascii_digit() || matches!(c, 'a'..='f' | ':');
            (!inside.is_empty() && inside.chars().all(ipv6), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let name =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
            (!host.is_empty() && host.chars().all(name), port)
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    matches!(scheme, "http" | "https") && host_ok && port_ok
}

/// The origins each served tenant allows, as served now: kept by whoever serves tenants (the
/// front door, as tenants are added, updated and removed), read by the web access on every
/// call from another origin. Cheap to clone (one shared table).
#[derive(Clone, Debug, Default)]
pub struct AllowedOrigins(Arc<RwLock<HashMap<String, Vec<String>>>>);

impl AllowedOrigins {
    /// `tenant` allows `origins` from now on (none: no other origin).
    pub fn set(&self, tenant: &str, origins: &[String]) {
        let mut table = self.0.write().expect("lock");
        if origins.is_empty() {
            table.remove(tenant);
        } else {
            table.insert(tenant.to_owned(), origins.to_vec());
        }
    }

    /// `tenant` is no longer served.
    pub fn remove(&self, tenant: &str) {
        self.0.write().expect("lock").remove(tenant);
    }

    /// Whether `tenant` allows calls from `origin`.
    pub fn allows(&self, tenant: &str, origin: &str) -> bool {
        self.0
            .read()
            .expect("lock")
            .get(tenant)
            .is_some_and(|origins| origins.iter().any(|o| o == origin))
    }

    /// Whether any tenant allows calls from `origin` (a preflight names no tenant).
    pub fn any_allows(&self, origin: &str) -> bool {
        self.0
            .read()
            .expect("lock")
            .values()
            .any(|origins| origins.iter().any(|o| o == origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_as_browsers_send_them() {
        for good in [
            "https://shop.example.com",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "",
            "*",
            "shop.example.com",
            "https://shop.example.com/",
            "https://shop.example.com/app",
            "https://*.example.com",
            "ftp://shop.example.com",
            "https://Shop.example.com",
            "https://shop.example.com:99999",
            "https://shop.example.com:",
            "https://",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let web = WebConfig {
            allowed_origins: vec!["https://ok.example".into(), "https://bad.example/".into()],
        };
        let problems = web.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "web.allowed_origins[1]");
    }
}
