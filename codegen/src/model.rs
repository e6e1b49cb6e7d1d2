//! The contract model: what one `contracts/<service>/v<major>/` folder says, extracted from the
//! compiled protobuf and its `(mesh.*)` options. Generation and the compatibility check both
//! work on this model, never on raw descriptors.

use std::{collections::BTreeMap, ops::Range};

use crate::error::Location;

/// One service at one major version.
#[derive(Clone, Debug)]
pub struct Contract {
    /// Folder relative to the contracts root: `order/v1`.
    pub dir: String,
    /// Service name: `order`.
    pub name: String,
    /// Major version from the folder: `1`.
    pub major: u32,
    /// Protobuf package: `order.v1`.
    pub package: String,
    /// Proto files of the contract, as compiler names (`order/v1/order.proto`).
    pub files: Vec<String>,
    /// The service and its manifest.
    pub service: Service,
    /// Every message defined by the contract's files, by full name.
    pub messages: BTreeMap<String, Message>,
    /// Every enum defined by the contract's files, by full name.
    pub enums: BTreeMap<String, Enum>,
    /// `syntax` of its files: `proto3`, `proto2` (also when unset) or `editions`.
    pub syntax: String,
    /// Per file of the folder: the standard file options it sets (`go_package`,
    /// `java_package`, `optimize_for`, ...), by option name, as text. Generated code in other
    /// languages is named by them: changing one breaks its users (buf's FILE rules).
    pub file_options: BTreeMap<String, BTreeMap<&'static str, String>>,
}

impl Contract {
    /// The contract's calls, in declaration order.
    pub fn calls(&self) -> impl Iterator<Item = &Method> {
        self.service.methods.iter().filter(|m| m.kind == Kind::Call)
    }

    /// The contract's events, in declaration order.
    pub fn events(&self) -> impl Iterator<Item = &Method> {
        self.service
            .methods
            .iter()
            .filter(|m| m.kind == Kind::Event)
    }
}

/// The service and its `(mesh.service)` manifest.
#[derive(Clone, Debug)]
pub struct Service {
    /// Protobuf name: `Order`.
    pub proto_name: String,
    /// Fully qualified: `order.v1.Order`.
    pub full_name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// 0 = core .. 2 = optional.
    pub tier: u32,
    /// Owning team.
    pub owner: String,
    /// Capabilities provided.
    pub capabilities: Vec<String>,
    /// Calls and events, in declaration order.
    pub methods: Vec<Method>,
    /// Where the service is declared.
    pub location: Location,
}

/// How a method travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Request/response over HTTP/2.
    Call,
    /// Event on the message queue.
    Event,
}

impl Kind {
    /// As written in contracts.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "CALL",
            Kind::Event => "EVENT",
        }
    }
}

/// A kind of caller a method admits (`option (mesh.method).audience`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Audience {
    /// An end user with a user token.
    User,
    /// A business line's backend with the tenant credential.
    Backend,
    /// The mesh's own nodes with the node credential.
    Node,
}

impl Audience {
    /// As written in contracts.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::User => "USER",
            Audience::Backend => "BACKEND",
            Audience::Node => "NODE",
        }
    }
}

/// The fallback a switched-off method answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// A gRPC status; `code` is a gRPC code name (`UNAVAILABLE`).
    Error {
        /// gRPC code name.
        code: String,
        /// Status message.
        message: String,
    },
    /// Default-valued response.
    Empty,
    /// Last good response up to an age.
    Cached {
        /// Maximum age.
        max_age_ms: u32,
    },
}

/// A call or an event.
#[derive(Clone, Debug)]
pub struct Method {
    /// Protobuf name: `GetOrder`.
    pub name: String,
    /// Call or event.
    pub kind: Kind,
    /// Fully qualified input (for an event: the payload).
    pub input: String,
    /// Package of the input type.
    pub input_package: String,
    /// Fully qualified output.
    pub output: String,
    /// Package of the output type.
    pub output_package: String,
    /// Client streams.
    pub client_streaming: bool,
    /// Server streams.
    pub server_streaming: bool,
    /// Deadline in milliseconds.
    pub timeout_ms: Option<u32>,
    /// Fallback, if the contract sets one.
    pub degraded: Option<Degraded>,
    /// Who may call it, as declared (sorted, no repeats); empty when the contract leaves it
    /// unset, which means [`Audience::Backend`] only (see [`Method::audience`]).
    pub declared_audience: Vec<Audience>,
    /// Leading comment, for generated docs.
    pub doc: String,
    /// Where the method is declared.
    pub location: Location,
    /// `option idempotency_level`: `IDEMPOTENCY_UNKNOWN`, `NO_SIDE_EFFECTS` or `IDEMPOTENT`
    /// (clients may retry or cache by it).
    pub idempotency: String,
}

/// A message and what the compatibility check needs of it.
#[derive(Clone, Debug)]
pub struct Message {
    /// Fully qualified name.
    pub full_name: String,
    /// Fields in declaration order.
    pub fields: Vec<Field>,
    /// Reserved field numbers (half-open ranges).
    pub reserved_numbers: Vec<Range<u32>>,
    /// Reserved field names.
    pub reserved_names: Vec<String>,
    /// Its oneofs (not proto3 `optional`'s synthetic ones), with where each is declared.
    pub oneofs: Vec<(String, Location)>,
    /// Where it is declared.
    pub location: Location,
}

impl Message {
    /// Whether `number` is reserved.
    pub fn reserves_number(&self, number: u32) -> bool {
        self.reserved_numbers.iter().any(|r| r.contains(&number))
    }
}

/// A message field.
#[derive(Clone, Debug)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Tag number.
    pub number: u32,
    /// Type: a scalar (`int64`), a full message or enum name, or `map<K, V>`.
    pub ty: String,
    /// `singular`, `optional` or `repeated`.
    pub label: &'static str,
    /// Containing (real) oneof.
    pub oneof: Option<String>,
    /// Its name in JSON (`json_name`, by default the name in lowerCamelCase).
    pub json_name: String,
    /// `jstype` as set (`JS_STRING`), empty when unset: JavaScript reads the field as
    /// another type when it changes.
    pub jstype: String,
    /// `ctype` as set (`CORD`), empty when unset: C++ code reads it as another type.
    pub ctype: String,
    /// Where it is declared.
    pub location: Location,
}

/// An enum.
#[derive(Clone, Debug)]
pub struct Enum {
    /// Fully qualified name.
    pub full_name: String,
    /// Values: name, number, location.
    pub values: Vec<(String, i32, Location)>,
    /// Reserved numbers (inclusive ranges).
    pub reserved_numbers: Vec<std::ops::RangeInclusive<i32>>,
    /// Reserved names.
    pub reserved_names: Vec<String>,
    /// Where it is declared.
    pub location: Location,
}

impl Method {
    /// Who may call it: the declared audience, or the business backend alone when unset.
    pub fn audience(&self) -> Vec<Audience> {
        if self.declared_audience.is_empty() {
            vec![Audience::Backend]
        } else {
            self.declared_audience.clone()
        }
    }
}
