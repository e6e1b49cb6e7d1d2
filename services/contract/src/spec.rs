//! Contract metadata, emitted by `mesh-codegen` as constants in every generated module
//! (`<service>::v<major>::contract::SPEC`) and read by the runtime: the timeout layer reads
//! [`MethodSpec::timeout`], the degradation switch answers [`MethodSpec::degraded`], the
//! transports route by [`EventSpec`].

use std::{fmt, time::Duration};

/// Importance of a service: 0 is core and never degraded automatically, 2 is optional and the
/// first thing degraded in an incident. Switching a tier off degrades that tier and every
/// higher-numbered one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tier(u8);

impl Tier {
    /// Core services.
    pub const CORE: Tier = Tier(0);
    /// Highest tier a contract may declare.
    pub const MAX: u8 = 2;

    /// A tier; `None` above [`Tier::MAX`].
    pub const fn new(tier: u8) -> Option<Tier> {
        if tier <= Self::MAX {
            Some(Tier(tier))
        } else {
            None
        }
    }

    /// A tier in generated constants; a value above [`Tier::MAX`] fails to compile.
    pub const fn of(tier: u8) -> Tier {
        match Self::new(tier) {
            Some(t) => t,
            None => panic!("tier above Tier::MAX"),
        }
    }

    /// The tier as a number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// How a method travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// Request/response over HTTP/2.
    Call,
    /// Event published on the message queue.
    Event,
}

/// What a switched-off method answers, without touching the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradedAnswer {
    /// A gRPC status.
    Error {
        /// Status code.
        code: tonic::Code,
        /// Status message.
        message: &'static str,
    },
    /// The response with every field at its default; for an event, the publish is skipped.
    Empty,
    /// The last good response for the same tenant and request if younger than `max_age`, else
    /// the empty response.
    Cached {
        /// Oldest cached answer still served.
        max_age: Duration,
    },
}

/// The kinds of caller a method admits (`option (mesh.method).audience` in its contract), each
/// with its own credential: an end user's token, the business line's tenant credential, the
/// node credential only the mesh's own processes hold.
///
/// ```
/// use mesh_contract::{Audience, Caller};
///
/// let audience = Audience::USER.with(Audience::BACKEND);
/// assert!(audience.admits(&Caller::Backend));
/// assert!(!audience.admits(&Caller::Node));
/// assert!(Audience::NODE.is_internal());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Audience(u8);

impl Audience {
    /// End users with a user token.
    pub const USER: Audience = Audience(1);
    /// The business line's backend with the tenant credential (the default of a contract).
    pub const BACKEND: Audience = Audience(2);
    /// The mesh's own nodes.
    pub const NODE: Audience = Audience(4);

    /// This audience and `other`.
    pub const fn with(self, other: Audience) -> Audience {
        Audience(self.0 | other.0)
    }

    /// Whether `caller` may call a method with this audience. A call made inside one process
    /// ([`Caller::Process`]) is always admitted; an unauthenticated one never.
    pub fn admits(self, caller: &crate::Caller) -> bool {
        match caller {
            crate::Caller::User(_) => self.0 & Self::USER.0 != 0,
            crate::Caller::Backend => self.0 & Self::BACKEND.0 != 0,
            crate::Caller::Node => self.0 & Self::NODE.0 != 0,
            crate::Caller::Process => true,
            crate::Caller::Anonymous => false,
        }
    }

    /// Only the mesh's own nodes may call it: the front door refuses it from outside.
    pub const fn is_internal(self) -> bool {
        self.0 == Self::NODE.0
    }

    /// The kinds of caller, as contracts write them.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::USER, "USER"),
            (Self::BACKEND, "BACKEND"),
            (Self::NODE, "NODE"),
        ]
        .into_iter()
        .filter(|(a, _)| self.0 & a.0 != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

impl fmt::Debug for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Audience({})", self.names().join("|"))
    }
}

/// One request/response method of a contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSpec {
    /// Method name as in the `.proto` (`GetOrder`).
    pub name: &'static str,
    /// gRPC path (`/order.v1.Order/GetOrder`), the key the runtime's layers look methods up by.
    pub path: &'static str,
    /// Fully qualified input message.
    pub input: &'static str,
    /// Fully qualified output message.
    pub output: &'static str,
    /// The client streams requests.
    pub client_streaming: bool,
    /// The server streams responses.
    pub server_streaming: bool,
    /// Deadline of one call (for a stream: of opening it).
    pub timeout: Duration,
    /// Fallback while switched off.
    pub degraded: DegradedAnswer,
    /// Who may call it.
    pub audience: Audience,
}

/// One event of a contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// Service that owns the event (`order`).
    pub service: &'static str,
    /// Contract major version; events of different majors never meet on the broker.
    pub major: u32,
    /// Contract version the publisher was generated from.
    pub version: &'static str,
    /// Event name as in the `.proto` (`OrderCreated`).
    pub name: &'static str,
    /// Routing key on the service's exchange (`order_created`).
    pub routing_key: &'static str,
    /// Fully qualified payload message.
    pub payload: &'static str,
    /// Bound on one run of a consumer's handler, if the contract sets one.
    pub timeout: Option<Duration>,
    /// What publishing does while switched off.
    pub degraded: DegradedAnswer,
}

impl EventSpec {
    /// Exchange the event is published to: one per tenant, service and major version.
    pub fn exchange(&self, tenant: &crate::TenantId) -> String {
        names::exchange(tenant, self.service, self.major)
    }
}

/// Naming of broker resources, derived from tenant + service + major version so that two
/// tenants, or two majors of one contract, never share a queue.
pub mod names {
    use crate::TenantId;

    /// `mesh.<tenant>.<service>.v<major>`
    pub fn exchange(tenant: &TenantId, service: &str, major: u32) -> String {
        format!("mesh.{tenant}.{service}.v{major}")
    }

    /// Every exchange and queue (dead letters included) of `tenant` for the `contracts`
    /// (service, major) and `consumers` given: what purging a tenant deletes.
    pub fn tenant_topology(
        tenant: &TenantId,
        contracts: &[(&str, u32)],
        consumers: &[String],
    ) -> Topology {
        let mut topology = Topology::default();
        for (service, major) in contracts {
            for consumer in consumers {
                let queue = queue(tenant, service, *major, consumer);
                topology.queues.push(dead_letter_queue(&queue));
                topology.queues.push(queue);
            }
            topology.exchanges.push(exchange(tenant, service, *major));
        }
        topology
    }

    /// Names of a tenant's broker resources ([`tenant_topology`]).
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Topology {
        /// Its exchanges.
        pub exchanges: Vec<String>,
        /// Its queues and their dead-letter queues.
        pub queues: Vec<String>,
    }

    /// `mesh.<tenant>.<service>.v<major>.<consumer>`: one queue per consuming service.
    pub fn queue(tenant: &TenantId, service: &str, major: u32, consumer: &str) -> String {
        format!("{}.{consumer}", exchange(tenant, service, major))
    }

    /// `<queue>.dead`: where a consumer's undeliverable messages go, with the reason.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dead")
    }
}

/// Everything a contract says about one service at one major version.
#[derive(Clone, Copy, Debug)]
pub struct ContractSpec {
    /// Service name (`order`).
    pub name: &'static str,
    /// Protobuf package (`order.v1`).
    pub package: &'static str,
    /// Fully qualified protobuf service (`order.v1.Order`).
    pub service: &'static str,
    /// Semantic version of the contract.
    pub version: &'static str,
    /// Major version (the `v1` folder).
    pub major: u32,
    /// Importance.
    pub tier: Tier,
    /// Owning team.
    pub owner: &'static str,
    /// Capabilities provided.
    pub capabilities: &'static [&'static str],
    /// Request/response methods.
    pub methods: &'static [MethodSpec],
    /// Events.
    pub events: &'static [EventSpec],
}

/// The contract and method served at a gRPC `path` (`/order.v1.Order/GetOrder`) among
/// `contracts`. Every layer of the mesh asks this of every call: the service's name is compared
/// first (one short comparison per contract), then that contract's methods only.
pub fn method_at(
    contracts: &[&'static ContractSpec],
    path: &str,
) -> Option<(&'static ContractSpec, &'static MethodSpec)> {
    let (service, _) = path.strip_prefix('/')?.split_once('/')?;
    contracts
        .iter()
        .filter(|spec| spec.service == service)
        .find_map(|spec| spec.method_by_path(path).map(|m| (*spec, m)))
}

impl ContractSpec {
    /// The call served at a gRPC path, if it belongs to this contract.
    pub fn method_by_path(&self, path: &str) -> Option<&'static MethodSpec> {
        self.methods.iter().find(|m| m.path == path)
    }

    /// An event by name.
    pub fn event(&self, name: &str) -> Option<&'static EventSpec> {
        self.events.iter().find(|e| e.name == name)
    }
}

/// A protobuf message that is the payload of exactly one contract event; implemented by
/// generated code, so a publisher can only send events its contract declares.
pub trait Event: prost::Message + Default + Sized + 'static {
    /// The event this message is the payload of.
    const SPEC: &'static EventSpec;
}
