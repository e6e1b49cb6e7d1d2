//! Loading a contracts folder: discover `<service>/v<major>/*.proto`, compile with protox (pure
//! Rust, no system `protoc`), read the `(mesh.*)` options into the [`model`](crate::model), and
//! check the mesh's rules.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use heck::ToSnakeCase;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, FileDescriptor,
    Kind as FieldKind, MessageDescriptor, MethodDescriptor, ReflectMessage, ServiceDescriptor,
    Value,
};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::{
    error::{ContractError, Location, Violation},
    model::{Audience, Contract, Degraded, Enum, Field, Kind, Message, Method, Service},
};

mod discover;
mod extract;
mod options;

use discover::*;
use extract::*;
use options::*;

/// The mesh options every contract imports, shipped with the generator so a contracts folder
/// needs nothing else. The repository's `contracts/mesh/options.proto` is this very file.
pub const OPTIONS_PROTO: &str = include_str!("../../contracts/mesh/options.proto");
/// Import name of [`OPTIONS_PROTO`].
pub const OPTIONS_PROTO_NAME: &str = "mesh/options.proto";

/// Every contract of a contracts folder, compiled and validated.
#[derive(Debug)]
pub struct ContractSet {
    /// The folder they were loaded from.
    pub root: PathBuf,
    /// Contracts, ordered by folder (`gateway/v1`, `order/v1`, `order/v2`, ...).
    pub contracts: Vec<Contract>,
    /// Types shared by several contracts (`contracts/common/*.proto`): generated once, checked
    /// for breaking changes like a contract's.
    pub shared: Shared,
    /// Compiled descriptors of every contract file and its imports, dependencies first.
    pub descriptors: prost_types::FileDescriptorSet,
    /// The same, encoded with the `(mesh.*)` options (prost_types drops extension options).
    encoded: Vec<u8>,
}

impl ContractSet {
    /// The contract in a folder (`order/v1`).
    pub fn get(&self, dir: &str) -> Option<&Contract> {
        self.contracts.iter().find(|c| c.dir == dir)
    }

    /// The set as a release baseline: the encoded descriptor set of every contract file and
    /// its imports, source info included (so a later check can point at the released line).
    /// Deterministic: the same contracts always give the same bytes.
    pub fn baseline(&self) -> Vec<u8> {
        self.encoded.clone()
    }
}

/// The shared files (`common/money.proto`) and the types they declare.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    /// Compiler names (`common/money.proto`).
    pub files: Vec<String>,
    /// Their messages, by full name.
    pub messages: std::collections::BTreeMap<String, crate::model::Message>,
    /// Their enums, by full name.
    pub enums: std::collections::BTreeMap<String, crate::model::Enum>,
    /// Per shared file: the standard file options it sets (see
    /// [`Contract::file_options`](crate::Contract::file_options)).
    pub file_options:
        std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, String>>,
}

/// The folder of shared types.
pub const SHARED_DIR: &str = "common";

/// A contract folder found on disk, before compiling.
struct Found {
    dir: String,
    name: String,
    major: u32,
    files: Vec<String>,
}

/// Loads, compiles and validates every contract under `root`.
pub fn load(root: &Path) -> Result<ContractSet, ContractError> {
    let (found, shared) = discover(root)?;
    let mut resolver = ChainFileResolver::new();
    resolver.add(EmbeddedOptions);
    resolver.add(IncludeFileResolver::new(root.to_path_buf()));
    resolver.add(GoogleFileResolver::new());
    compile(root, found, shared, resolver)
}

/// Loads the contracts held by a descriptor set written by [`ContractSet::baseline`] (the
/// released contracts, `contracts/baseline.binpb`). Locations point into it as
/// `<path>/<service>/v<major>/<file>.proto:line`, from the source info it keeps.
pub fn load_baseline(path: &Path) -> Result<ContractSet, ContractError> {
    let bytes = fs::read(path).map_err(|e| ContractError::io(path, e))?;
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
        .map_err(|e| ContractError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "not a protobuf descriptor set ({e}); write it with `mesh-codegen baseline update`"
            ),
        })?;
    let mut found: Vec<Found> = Vec::new();
    let mut shared = Vec::new();
    for file in &set.file {
        let name = file.name();
        if name.split('/').count() == 2 && name.starts_with(&format!("{SHARED_DIR}/")) {
            shared.push(name.to_owned());
            continue;
        }
        let mut parts = name.split('/');
        let (Some(service), Some(version), Some(_file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue; // mesh/options.proto, google/protobuf/...
        };
        let Some(major) = parse_major(version) else {
            continue;
        };
        let dir = format!("{service}/{version}");
        match found.iter_mut().find(|f| f.dir == dir) {
            Some(f) => f.files.push(name.to_owned()),
            None => found.push(Found {
                dir,
                name: service.to_owned(),
                major,
                files: vec![name.to_owned()],
            }),
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    if found.is_empty() {
        return Err(ContractError::Layout {
            path: path.to_path_buf(),
            message: "the descriptor set holds no contract (`<service>/v<major>/<file>.proto`)"
                .into(),
        });
    }
    let resolver = protox::file::DescriptorSetFileResolver::decode(bytes.as_slice())
        .expect("decoded as a FileDescriptorSet just above");
    compile(path, found, shared, resolver)
}

/// `v2` -> 2; anything else (`v02`, `2`, `v`) -> None.
pub(crate) fn parse_major(version: &str) -> Option<u32> {
    version
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| format!("v{n}") == version)
}

fn compile(
    root: &Path,
    found: Vec<Found>,
    shared: Vec<String>,
    resolver: impl FileResolver + 'static,
) -> Result<ContractSet, ContractError> {
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    for file in shared.iter().chain(found.iter().flat_map(|c| &c.files)) {
        compiler
            .open_file(file)
            .map_err(|err| proto_error(root, &err))?;
    }
    let pool = compiler.descriptor_pool();
    let options = MeshOptions::new(&pool);
    let mut violations = protoc_scoping(root, &found);
    let shared = Extractor {
        root,
        pool: &pool,
        options: &options,
        violations: &mut violations,
    }
    .shared(shared);
    let contracts = found
        .into_iter()
        .filter_map(|f| {
            Extractor {
                root,
                pool: &pool,
                options: &options,
                violations: &mut violations,
            }
            .contract(f)
        })
        .collect();
    if violations.is_empty() {
        Ok(ContractSet {
            root: root.to_path_buf(),
            contracts,
            shared,
            descriptors: compiler.file_descriptor_set(),
            encoded: compiler.encode_file_descriptor_set(),
        })
    } else {
        violations.sort_by(|a, b| a.location.cmp(&b.location));
        Err(ContractError::Invalid(violations))
    }
}

/// What protoc refuses and protox accepts: a type written without its package inside a service
/// that has a method of the same name (`rpc OrderCreated(OrderCreated)`). protoc looks the name
/// up in the service's scope first, finds the method, and stops (`"OrderCreated" is not a
/// message type`), so every non-Rust user would have to patch the contract; written from the
/// package (`.order.v1.OrderCreated`) it means the message for both. Checked on the files as
/// written (the compiled descriptors hold only resolved names).
fn protoc_scoping(root: &Path, found: &[Found]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for name in found.iter().flat_map(|c| &c.files) {
        let Ok(file) = File::open(name, &root.join(name)) else {
            continue; // unreadable files were reported by the compiler already
        };
        let proto = file.file_descriptor_proto();
        let package = proto.package();
        for (si, service) in proto.service.iter().enumerate() {
            for (mi, method) in service.method.iter().enumerate() {
                for (written, role) in [
                    (method.input_type(), "request"),
                    (method.output_type(), "response"),
                ] {
                    let first = written.split('.').next().unwrap_or_default();
                    if written.starts_with('.') || !service.method.iter().any(|m| m.name() == first)
                    {
                        continue;
                    }
                    let mut location = Location::file(root.join(name));
                    let path = [6, si as i32, 2, mi as i32];
                    if let Some(span) = proto
                        .source_code_info
                        .as_ref()
                        .and_then(|info| info.location.iter().find(|l| l.path == path))
                        .map(|l| &l.span)
                        .filter(|s| s.len() >= 2)
                    {
                        location.line = Some(span[0] as u32 + 1);
                        location.column = Some(span[1] as u32 + 1);
                    }
                    violations.push(Violation {
                        location,
                        subject: format!("rpc {}.{}", service.name(), method.name()),
                        message: format!(
                            "its {role} type `{written}` names the method `{first}` in protoc's \
                             scope, so protoc (Python, Go, Java, grpcurl) refuses the file; \
                             write it from the package: `.{package}.{written}`"
                        ),
                    });
                }
            }
        }
    }
    violations
}

/// Serves `mesh/options.proto` from the generator itself.
struct EmbeddedOptions;

impl FileResolver for EmbeddedOptions {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO_NAME {
            File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Turns a protox diagnostic into an error naming the file, line and column.
fn proto_error(root: &Path, err: &protox::Error) -> ContractError {
    use miette::Diagnostic;
    let file = err.file().map(str::to_owned);
    // With several labels ("first defined here", "defined again here") the last is the culprit.
    let offset = err
        .labels()
        .and_then(|labels| labels.last())
        .map(|label| label.offset());
    let source = file.as_deref().and_then(|name| {
        if name == OPTIONS_PROTO_NAME {
            Some(OPTIONS_PROTO.to_owned())
        } else {
            fs::read_to_string(root.join(name)).ok()
        }
    });
    let mut location = Location::file(match &file {
        Some(name) => root.join(name),
        None => root.to_path_buf(),
    });
    let mut message = err.to_string();
    let mut offset = offset;
    if let (Some(source), Some(at)) = (&source, offset)
        && let Some((detail, precise)) = explain_option_value(&message, source, at)
    {
        message = format!("{message}: {detail}");
        offset = Some(precise);
    }
    if let (Some(source), Some(offset)) = (&source, offset) {
        let (line, column) = line_column(source, offset);
        location.line = Some(line);
        location.column = Some(column);
    }
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    ContractError::Proto { location, message }
}

fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line as u32, column as u32)
}

/// protox says only that an option literal is invalid (`invalid value of type
/// 'mesh.ServiceContract' for option ...`); re-parse the literal as protobuf text format to
/// name the field at fault and where it is.
fn explain_option_value(message: &str, source: &str, at: usize) -> Option<(String, usize)> {
    use miette::Diagnostic;
    let type_name = message
        .strip_prefix("invalid value of type '")?
        .split('\'')
        .next()?;
    let pool = options_pool()?;
    let descriptor = pool.get_message_by_name(type_name)?;
    let open = at + source.get(at..)?.find('{')?;
    let mut depth = 0usize;
    let mut close = None;
    let mut in_string = false;
    for (i, c) in source[open..].char_indices() {
        match c {
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let inner = &source[open + 1..close?];
    let err = DynamicMessage::parse_text_format(descriptor, inner).err()?;
    let precise = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(at, |label| open + 1 + label.offset());
    Some((err.to_string(), precise))
}

/// The gRPC code names a degraded error answer may use.
pub(crate) const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
