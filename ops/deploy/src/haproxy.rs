//! HAProxy in front of the mesh: an established proxy, not a home-made one, routing by tenant.
//!
//! Why HAProxy (Debian's `haproxy` 2.6): it speaks HTTP/2 on both sides (`proto h2`), routes
//! on a request header with a one-line ACL, retries a request whose connection failed on
//! another server, health-checks servers and takes a dead one out within a second or two; it
//! is one small package, and its configuration is a text file the operator can read. Envoy
//! does the same with far more configuration; nginx's open-source build lacks active health
//! checks.
//!
//! Each process group is a backend whose servers are its replicas (`mesh worker` processes,
//! the same tenants on several machines); a call goes to the backend of its `x-mesh-tenant`.
//! A call with no known tenant goes to the shared group (else the first), whose workers
//! answer it as the mesh answers an unknown tenant (UNAUTHENTICATED), and health and
//! reflection as for anyone.
//!
//! ```
//! use mesh_deploy::haproxy::{Haproxy, render};
//!
//! let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
//! let tenants = mesh_config::Tenants::load(&folder, mesh_api::CONTRACTS).unwrap();
//! let config = render(&tenants, &Haproxy {
//!     listen: "0.0.0.0:7400".into(),
//!     replicas: [
//!         ("shared".to_owned(), vec!["10.0.0.5:7501".to_owned(), "10.0.0.6:7501".to_owned()]),
//!         ("finance".to_owned(), vec!["10.0.0.7:7502".to_owned()]),
//!     ].into(),
//!     dns_slots: None,
//!     web: None,
//!     maxconn: 4096,
//! }).unwrap();
//! assert!(config.contains("use_backend group_shared if { req.hdr(x-mesh-tenant) -m str mall paipai }"));
//! assert!(config.contains("server shared_2 10.0.0.6:7501 proto h2 check"));
//! ```

use std::{collections::BTreeMap, fmt::Write};

use mesh_config::Tenants;

use crate::{DeployError, groups};

/// Where HAProxy listens and where each process group's replicas are.
#[derive(Clone, Debug, Default)]
pub struct Haproxy {
    /// `host:port` callers reach.
    pub listen: String,
    /// `host:port` of each replica, by process group; with `dns_slots`, one DNS name per
    /// group whose records are the replicas.
    pub replicas: BTreeMap<String, Vec<String>>,
    /// Find each group's replicas in DNS (a Kubernetes headless Service: one A record per
    /// ready pod), re-resolved every few seconds, with room for this many per group: a
    /// replica added by the autoscaler is used, one gone is dropped, and a call is balanced
    /// over the pods rather than pinned to one virtual address.
    pub dns_slots: Option<u32>,
    /// The browsers' access too: a second frontend for HTTP/1.1 and JSON, server-sent events
    /// and gRPC-Web, routed by tenant as the calls are, to each replica's web port.
    pub web: Option<HaproxyWeb>,
    /// Connections HAProxy holds at once, all frontends together (0: [`DEFAULT_MAXCONN`]);
    /// each terminal holds one for as long as it is attached, so this is the terminals the
    /// whole fleet can hold through this proxy, not a per-node figure.
    pub maxconn: u32,
}

/// HAProxy's connection cap unless told: SCALE.md's 20,000 attached terminals of one node.
/// HAProxy raises its file-descriptor limit to about twice this at start (as root), so the
/// machine must allow that many.
pub const DEFAULT_MAXCONN: u32 = 20_000;

/// Where browsers reach the mesh through HAProxy, and the port each replica serves them on
/// (`[web] listen` of a `mesh up` node, `MESH_WORKER_WEB_LISTEN` of a worker).
#[derive(Clone, Debug)]
pub struct HaproxyWeb {
    /// `host:port` browsers reach.
    pub listen: String,
    /// The web port of every replica (same host as its gRPC address).
    pub port: u16,
}

/// `host:port` with a host HAProxy reads as one word (a name, an IPv4 or a bracketed IPv6
/// address: no space, `#` or newline that would cut or add a line) and a port number.
fn check_address(address: &str) -> Result<(), DeployError> {
    let host_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    match address.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && host.chars().all(host_char)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !port.starts_with('0') =>
        {
            Ok(())
        }
        _ => Err(DeployError::BadAddress(address.to_owned())),
    }
}

/// The HAProxy configuration (`haproxy -f FILE`) for `tenants` behind `options`.
pub fn render(tenants: &Tenants, options: &Haproxy) -> Result<String, DeployError> {
    let groups = groups(tenants);
    for group in options.replicas.keys() {
        if !groups.contains_key(group) {
            return Err(DeployError::UnknownGroup(
                group.clone(),
                groups.keys().cloned().collect::<Vec<_>>().join(", "),
            ));
        }
    }
    check_address(&options.listen)?;
    let mut out = String::new();
    let w = &mut out;
    // a call naming no tenant (health, reflection) or an unknown one goes to the shared group,
    // whose workers answer it as the mesh answers an unknown tenant: never to a business
    // line's own process group, kept apart for that business line
    let fallback = if groups.contains_key("shared") {
        Some("shared")
    } else {
        groups.keys().next().map(String::as_str)
    };
    write_grpc_frontend(w, options, &groups, fallback);
    if let Some(web) = &options.web {
        write_web_frontend(w, web, &groups, fallback)?;
    }
    if options.dns_slots.is_some() {
        // the resolver of the machine (a pod's: the cluster DNS), asked again every 5 s
        let _ = write!(
            w,
            "\nresolvers dns\n\
             \x20 parse-resolv-conf\n\
             \x20 hold valid 5s\n\
             \x20 hold obsolete 5s\n"
        );
    }
    for (group, members) in &groups {
        write_backends(w, group, members, options)?;
    }
    Ok(out)
}

/// The gRPC frontend: the limits, then each group's tenants to its backend.
fn write_grpc_frontend(
    w: &mut String,
    options: &Haproxy,
    groups: &BTreeMap<String, Vec<String>>,
    fallback: Option<&str>,
) {
    let _ = writeln!(
        w,
        "# Rendered by `mesh deploy haproxy` from the tenants folder: each call goes to the\n\
         # replicas of its tenant's process group, chosen by its x-mesh-tenant header.\n\
         global\n\
         \x20 maxconn {maxconn}\n\n\
         defaults\n\
         \x20 mode http\n\
         \x20 timeout connect 1s\n\
         \x20 # a replica that does not answer its health check within 1 s failed it (a paused\n\
         \x20 # process still accepts TCP connections: only an answer tells it is alive)\n\
         \x20 timeout check 1s\n\
         \x20 # terminals hold a stream for hours; unary calls carry their own grpc-timeout\n\
         \x20 timeout client 1h\n\
         \x20 timeout server 1h\n\
         \x20 timeout tunnel 1h\n\
         \x20 # a call whose connection failed goes to another replica; one that reached a\n\
         \x20 # replica is never sent twice (the client retries what it may)\n\
         \x20 retries 3\n\
         \x20 option redispatch 1\n\
         \x20 retry-on conn-failure\n\n\
         frontend mesh\n\
         \x20 bind {} proto h2\n\
         \x20 # one source address holds at most {per_address} connections (the front door's own\n\
         \x20 # front_door.max_connections_per_address, which behind this proxy sees only it)\n\
         \x20 stick-table type ip size 100k expire 30s store conn_cur\n\
         \x20 tcp-request connection track-sc0 src\n\
         \x20 tcp-request connection reject if {{ sc0_conn_cur gt {per_address} }}",
        options.listen,
        per_address = mesh_config::deploy::FrontDoorConfig::default().max_connections_per_address,
        maxconn = if options.maxconn == 0 {
            DEFAULT_MAXCONN
        } else {
            options.maxconn
        },
    );
    for (group, members) in groups {
        let _ = writeln!(
            w,
            "  use_backend group_{group} if {{ req.hdr(x-mesh-tenant) -m str {} }}",
            members.join(" ")
        );
    }
    if let Some(fallback) = fallback {
        let _ = writeln!(w, "  default_backend group_{fallback}");
    }
}

/// The browsers' frontend (HTTP/1.1): the same routing by tenant, to the replicas' web ports.
fn write_web_frontend(
    w: &mut String,
    web: &HaproxyWeb,
    groups: &BTreeMap<String, Vec<String>>,
    fallback: Option<&str>,
) -> Result<(), DeployError> {
    check_address(&web.listen)?;
    // browsers speak HTTP/1.1: the same routing by tenant, to the replicas' web ports; a
    // page or a call naming no tenant goes where unknown ones go. Never the ops console
    // nor the admin API's calls (they stay on the ops network), and a browser's slow or
    // idle connection does not hold one of the gRPC callers' for an hour
    let _ = writeln!(
        w,
        "\nfrontend web\n\
         \x20 bind {}\n\
         \x20 maxconn 2048\n\
         \x20 timeout http-request 10s\n\
         \x20 timeout http-keep-alive 10s\n\
         \x20 http-request deny deny_status 404 if {{ path_beg /admin/ /admin.v1. }} || {{ path /console /assets/console.js }}",
        web.listen
    );
    for (group, members) in groups {
        let _ = writeln!(
            w,
            "  use_backend web_{group} if {{ req.hdr(x-mesh-tenant) -m str {} }}",
            members.join(" ")
        );
        // platforms' callbacks name their tenant in the path, never in a header
        let paths: Vec<String> = members
            .iter()
            .map(|tenant| format!("/channels/{tenant}/"))
            .collect();
        let _ = writeln!(
            w,
            "  use_backend web_{group} if {{ path_beg {} }}",
            paths.join(" ")
        );
    }
    if let Some(fallback) = fallback {
        let _ = writeln!(w, "  default_backend web_{fallback}");
    }
    Ok(())
}

/// A group's backends: its replicas over HTTP/2 (and their web ports, when browsers are
/// routed too), each health-checked.
fn write_backends(
    w: &mut String,
    group: &str,
    members: &[String],
    options: &Haproxy,
) -> Result<(), DeployError> {
    let replicas = options
        .replicas
        .get(group)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| DeployError::NoReplicas {
            group: group.to_owned(),
            tenants: members.join(","),
        })?;
    for address in replicas {
        check_address(address)?;
    }
    if options.dns_slots.is_some() && replicas.len() != 1 {
        return Err(DeployError::BadAddress(replicas.join(",")));
    }
    let web_port = options.web.as_ref().map(|web| web.port);
    for (backend, port, proto) in std::iter::once(("group", None, " proto h2"))
        .chain(web_port.map(|port| ("web", Some(port), "")))
    {
        let _ = write!(
            w,
            "\nbackend {backend}_{group}\n\
             \x20 # tenants: {}\n\
             \x20 balance roundrobin\n\
             \x20 # health over HTTP/2 on each replica's gRPC port: GET /healthz answers 200 while\n\
             \x20 # it serves, 503 from the moment it starts leaving; a paused replica answers\n\
             \x20 # nothing and is out after 2 checks 300 ms apart (each given `timeout check`)\n\
             \x20 option httpchk\n\
             \x20 http-check send meth GET uri /healthz ver HTTP/2\n\
             \x20 http-check expect status 200\n\
             \x20 # a replica's failed connections (refused, timed out) make the checks come faster;\n\
             \x20 # the check alone takes it out (a tenant's own error answers never do)\n\
             \x20 default-server inter 300ms fastinter 100ms fall 2 rise 2 observe layer4 error-limit 3 on-error fastinter\n",
            members.join(", "),
        );
        // the check speaks HTTP/2 (on each server line: HAProxy 2.6 does not take
        // `check-proto` from `default-server`); the web port speaks HTTP/1.1 and JSON, so
        // its replica's health is read on the gRPC port
        let check_port = |address: &str| match port {
            Some(_) => format!(
                " check-proto h2 port {}",
                address.rsplit_once(':').map_or("", |(_, p)| p)
            ),
            None => " check-proto h2".to_owned(),
        };
        // the replica's address, on its web port for the web backend
        let at = |address: &str| match port {
            Some(port) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                format!("{host}:{port}")
            }
            None => address.to_owned(),
        };
        match options.dns_slots {
            Some(slots) => {
                let _ = writeln!(
                    w,
                    "  server-template {group}_ {slots} {}{proto} check{} resolvers dns init-addr none",
                    at(&replicas[0]),
                    check_port(&replicas[0])
                );
            }
            None => {
                for (n, address) in replicas.iter().enumerate() {
                    let _ = writeln!(
                        w,
                        "  server {group}_{} {}{proto} check{}",
                        n + 1,
                        at(address),
                        check_port(address)
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Tenants {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
        Tenants::load(&folder, mesh_api::CONTRACTS).unwrap()
    }

    #[test]
    fn platforms_callbacks_reach_their_tenants_group_by_path() {
        let tenants = shipped();
        let options = Haproxy {
            listen: "127.0.0.1:7400".into(),
            replicas: [
                ("shared".to_owned(), vec!["127.0.0.1:7501".to_owned()]),
                ("finance".to_owned(), vec!["127.0.0.1:7502".to_owned()]),
            ]
            .into(),
            dns_slots: None,
            web: Some(HaproxyWeb {
                listen: "127.0.0.1:7480".into(),
                port: 7580,
            }),
            maxconn: 0,
        };
        let config = render(&tenants, &options).unwrap();
        assert!(
            config.contains(
                "use_backend web_shared if { path_beg /channels/mall/ /channels/paipai/ }"
            ),
            "{config}"
        );
        assert!(config.contains("use_backend web_finance if { path_beg /channels/finance/ }"));
    }

    #[test]
    fn every_group_needs_replicas_and_every_replica_a_group() {
        let tenants = shipped();
        let only_shared = Haproxy {
            listen: "127.0.0.1:7400".into(),
            replicas: [("shared".to_owned(), vec!["127.0.0.1:7501".to_owned()])].into(),
            dns_slots: None,
            web: None,
            maxconn: 0,
        };
        let err = render(&tenants, &only_shared).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process group finance (tenants finance) has no replicas: give them, e.g. --group finance=10.0.0.5:7501,10.0.0.6:7501"
        );
        let mut typo = only_shared.clone();
        typo.replicas
            .insert("finanse".into(), vec!["127.0.0.1:7502".into()]);
        assert!(matches!(
            render(&tenants, &typo),
            Err(DeployError::UnknownGroup(g, _)) if g == "finanse"
        ));
        for nowhere in [
            "nowhere",
            "10.0.0.5#x:7501",
            "10.0.0.5 :7501",
            "a\nserver x:1",
            "h:07501",
            "h:0",
        ] {
            let mut bad = only_shared.clone();
            bad.replicas.insert("finance".into(), vec![nowhere.into()]);
            assert_eq!(
                render(&tenants, &bad),
                Err(DeployError::BadAddress(nowhere.into()))
            );
        }
        let mut good = only_shared;
        good.replicas
            .insert("finance".into(), vec!["[fd00::5]:7502".into()]);
        let config = render(&tenants, &good).unwrap();
        assert!(config.contains("default_backend group_shared"), "{config}");
        assert!(config.contains("server finance_1 [fd00::5]:7502 proto h2 check"));
        assert!(!config.contains("frontend web"), "{config}");

        // with the browsers' access: the same routing, to each replica's web port, HTTP/1.1
        good.web = Some(HaproxyWeb {
            listen: "0.0.0.0:7480".into(),
            port: 7480,
        });
        let config = render(&tenants, &good).unwrap();
        assert!(
            config.contains("frontend web\n  bind 0.0.0.0:7480\n"),
            "{config}"
        );
        assert!(
            config.contains(
                "use_backend web_shared if { req.hdr(x-mesh-tenant) -m str mall paipai }"
            ),
            "{config}"
        );
        assert!(config.contains("default_backend web_shared"), "{config}");
        // the web port's health is read on the replica's gRPC port
        assert!(
            config.contains("server finance_1 [fd00::5]:7480 check check-proto h2 port 7502\n"),
            "{config}"
        );
        assert!(
            config.contains("server shared_1 127.0.0.1:7480 check check-proto h2 port 7501\n"),
            "{config}"
        );
        // a replica is alive when it answers its health check over HTTP/2 in time, not when
        // its kernel accepts a connection (a paused process still does)
        for line in [
            "maxconn 20000\n",
            "timeout check 1s\n",
            "option httpchk\n",
            "http-check send meth GET uri /healthz ver HTTP/2\n",
            "http-check expect status 200\n",
        ] {
            assert!(config.contains(line), "{line}: {config}");
        }
        assert_eq!(
            config.matches("check-proto h2").count(),
            4,
            "every backend: {config}"
        );
    }
}
