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

fn discover(root: &Path) -> Result<(Vec<Found>, Vec<String>), ContractError> {
    let stray = |path: PathBuf| ContractError::Layout {
        path,
        message: format!(
            "a .proto file belongs in `<service>/v<major>/` (a contract) or `{SHARED_DIR}/` \
             (types shared by contracts); move it there or delete it"
        ),
    };
    let is_proto = |p: &Path| p.extension().is_some_and(|e| e == "proto");
    let mut found = Vec::new();
    let mut shared = Vec::new();
    for service_dir in sorted_entries(root)? {
        let name = file_name(&service_dir);
        if name.starts_with('.') {
            continue;
        }
        if !service_dir.is_dir() {
            if is_proto(&service_dir) {
                return Err(stray(service_dir));
            }
            continue; // baseline.binpb, a README
        }
        if name == "mesh" {
            continue;
        }
        if name == SHARED_DIR {
            for file in sorted_entries(&service_dir)? {
                if file.is_dir() {
                    return Err(ContractError::Layout {
                        path: file,
                        message: format!("`{SHARED_DIR}/` holds .proto files only, no folders"),
                    });
                }
                if is_proto(&file) {
                    shared.push(format!("{SHARED_DIR}/{}", file_name(&file)));
                }
            }
            continue;
        }
        if !is_identifier(&name) {
            return Err(ContractError::Layout {
                path: service_dir,
                message: "a service folder name must be lowercase snake_case (e.g. `order`)".into(),
            });
        }
        for version_dir in sorted_entries(&service_dir)? {
            if !version_dir.is_dir() {
                if is_proto(&version_dir) {
                    return Err(stray(version_dir));
                }
                continue;
            }
            let version = file_name(&version_dir);
            let major = parse_major(&version).ok_or_else(|| ContractError::Layout {
                    path: version_dir.clone(),
                    message: format!(
                        "expected a major-version folder `v<N>` (e.g. `v1`) inside `{name}/`, found `{version}`"
                    ),
                })?;
            let entries = sorted_entries(&version_dir)?;
            if let Some(nested) = entries.iter().find(|p| p.is_dir()) {
                return Err(ContractError::Layout {
                    path: nested.clone(),
                    message: "a contract folder holds its .proto files directly, no folders: \
                              move them into the contract folder or out of `contracts/`"
                        .into(),
                });
            }
            let files: Vec<String> = entries
                .into_iter()
                .filter(|p| is_proto(p))
                .map(|p| format!("{name}/{version}/{}", file_name(&p)))
                .collect();
            if files.is_empty() {
                return Err(ContractError::Layout {
                    path: version_dir,
                    message: "contract folder holds no .proto file".into(),
                });
            }
            found.push(Found {
                dir: format!("{name}/{version}"),
                name: name.clone(),
                major,
                files,
            });
        }
    }
    if found.is_empty() {
        return Err(ContractError::Layout {
            path: root.to_path_buf(),
            message: "no contracts found: expected `<service>/v<major>/<file>.proto` folders"
                .into(),
        });
    }
    Ok((found, shared))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ContractError> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| ContractError::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ContractError::io(dir, e))?;
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
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

/// The mesh options on their own, to interpret option literals.
fn options_pool() -> Option<DescriptorPool> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(EmbeddedOptions);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.open_file(OPTIONS_PROTO_NAME).ok()?;
    Some(compiler.descriptor_pool())
}

/// The `(mesh.service)` and `(mesh.method)` extensions.
struct MeshOptions {
    service: Option<ExtensionDescriptor>,
    method: Option<ExtensionDescriptor>,
}

impl MeshOptions {
    fn new(pool: &DescriptorPool) -> Self {
        Self {
            service: pool.get_extension_by_name("mesh.service"),
            method: pool.get_extension_by_name("mesh.method"),
        }
    }

    /// Field number of an extension, to point at where a file sets it.
    fn number(ext: Option<&ExtensionDescriptor>) -> u32 {
        ext.map_or(0, ExtensionDescriptor::number)
    }
}

/// What a contract's `option (mesh.service)` says, checked.
struct Manifest {
    version: semver::Version,
    tier: u32,
    owner: String,
    capabilities: Vec<String>,
}

fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => Some(m.clone()),
        _ => None,
    }
}

fn get_str(m: &DynamicMessage, field: &str) -> String {
    m.get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn get_u32(m: &DynamicMessage, field: &str) -> Option<u32> {
    if !m.has_field_by_name(field) {
        return None;
    }
    m.get_field_by_name(field).and_then(|v| v.as_u32())
}

/// The name of enum value `number` of `field`'s enum type (`CALL`), as `mesh/options.proto`
/// declares it: the options are read by name, not by bare number.
fn enum_name(m: &DynamicMessage, field: &str, number: i32) -> Option<String> {
    match m.descriptor().get_field_by_name(field)?.kind() {
        FieldKind::Enum(e) => e.get_value(number).map(|v| v.name().to_owned()),
        _ => None,
    }
}

/// The value of an enum field, by name (`None` when unset or unknown).
fn get_enum(m: &DynamicMessage, field: &str) -> Option<String> {
    let number = m.get_field_by_name(field)?.as_enum_number()?;
    enum_name(m, field, number)
}

/// The values of a repeated enum field, by name (`None` for a number the enum lacks).
fn get_enum_list(m: &DynamicMessage, field: &str) -> Vec<Option<String>> {
    m.get_field_by_name(field)
        .and_then(|v| {
            v.as_list().map(|l| {
                l.iter()
                    .filter_map(|v| v.as_enum_number())
                    .map(|n| enum_name(m, field, n))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn get_message(m: &DynamicMessage, field: &str) -> Option<DynamicMessage> {
    if !m.has_field_by_name(field) {
        return None;
    }
    m.get_field_by_name(field)
        .and_then(|v| v.as_message().cloned())
}

/// Names tonic's generated clients and servers define themselves; a method may not take them.
const RESERVED_METHOD_NAMES: [&str; 9] = [
    "connect",
    "new",
    "with_origin",
    "with_interceptor",
    "send_compressed",
    "accept_compressed",
    "max_decoding_message_size",
    "max_encoding_message_size",
    "from_arc",
];

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

/// Reads one contract folder out of the descriptor pool, recording every rule it breaks.
struct Extractor<'a> {
    root: &'a Path,
    pool: &'a DescriptorPool,
    options: &'a MeshOptions,
    violations: &'a mut Vec<Violation>,
}

impl Extractor<'_> {
    /// The shared files' types; a shared file declares types only, in package `common` or
    /// `common.<name>`.
    fn shared(&mut self, files: Vec<String>) -> Shared {
        let mut shared = Shared::default();
        for name in &files {
            let Some(file) = self.pool.get_file_by_name(name) else {
                continue;
            };
            shared
                .file_options
                .insert(name.clone(), file_options(&file));
            let package = file.package_name().to_owned();
            if package != SHARED_DIR && !package.starts_with(&format!("{SHARED_DIR}.")) {
                self.violation(
                    Location::file(self.root.join(name)),
                    format!("shared file {name}"),
                    format!("package is `{package}`; a shared file's package is `{SHARED_DIR}` or `{SHARED_DIR}.<name>`, so it never collides with a contract's"),
                );
            }
            for service in file.services() {
                self.violation(
                    self.locate(&file, service.path()),
                    format!("service {}", service.full_name()),
                    "shared files declare types only; a service is a contract in `<service>/v<major>/`",
                );
            }
            for message in file.messages() {
                self.collect_message(&file, message, &mut shared.messages, &mut shared.enums);
            }
            for e in file.enums() {
                let model = self.enum_model(&file, &e);
                shared.enums.insert(model.full_name.clone(), model);
            }
        }
        shared.files = files;
        shared
    }

    fn violation(
        &mut self,
        location: Location,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.violations.push(Violation {
            location,
            subject: subject.into(),
            message: message.into(),
        });
    }

    /// Location of the element at `path` in `file`, per the compiler's source info.
    fn locate(&self, file: &FileDescriptor, path: &[i32]) -> Location {
        let mut location = Location::file(self.root.join(file.name()));
        let span = file
            .file_descriptor_proto()
            .source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .map(|l| l.span.clone());
        if let Some(span) = span.filter(|s| s.len() >= 2) {
            location.line = Some(span[0] as u32 + 1);
            location.column = Some(span[1] as u32 + 1);
        }
        location
    }

    /// Location of an option on the element at `path` (`options` is field 3 of both service and
    /// method descriptors), else of the element itself.
    fn locate_option(&self, file: &FileDescriptor, path: &[i32], number: u32) -> Location {
        let option_path: Vec<i32> = path.iter().copied().chain([3, number as i32]).collect();
        let location = self.locate(file, &option_path);
        if location.line.is_some() {
            location
        } else {
            self.locate(file, path)
        }
    }

    fn leading_comment(&self, file: &FileDescriptor, path: &[i32]) -> String {
        file.file_descriptor_proto()
            .source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .and_then(|l| l.leading_comments.clone())
            .map(|c| {
                c.lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// One contract folder: its one service, its manifest, its methods and its types.
    fn contract(&mut self, found: Found) -> Option<Contract> {
        let package = format!("{}.v{}", found.name, found.major);
        let files: Vec<FileDescriptor> = found
            .files
            .iter()
            .filter_map(|name| self.pool.get_file_by_name(name))
            .collect();
        self.check_packages(&found, &files, &package);
        let service = self.the_service(&found, &files)?;
        let file = service.parent_file();
        let service_location = self.locate(&file, service.path());
        let manifest = self.manifest(&found, &service)?;
        let methods = self.methods(&file, &service, &package);
        let (messages, enums) = self.types(&files);
        Some(Contract {
            dir: found.dir,
            name: found.name,
            major: found.major,
            package,
            files: found.files,
            service: Service {
                proto_name: service.name().to_owned(),
                full_name: service.full_name().to_owned(),
                version: manifest.version,
                tier: manifest.tier,
                owner: manifest.owner,
                capabilities: manifest.capabilities,
                methods,
                location: service_location,
            },
            messages,
            enums,
            file_options: files
                .iter()
                .map(|f| (f.name().to_owned(), file_options(f)))
                .collect(),
            syntax: files.first().map_or_else(String::new, |f| {
                let proto = f.file_descriptor_proto();
                match proto.syntax() {
                    "editions" => "editions".into(),
                    "" => "proto2".into(),
                    syntax => syntax.to_owned(),
                }
            }),
        })
    }

    /// Every file of a contract folder is in the folder's package.
    fn check_packages(&mut self, found: &Found, files: &[FileDescriptor], package: &str) {
        for file in files {
            if file.package_name() != package {
                let location = self.locate(file, &[2]);
                self.violation(
                    location,
                    format!("file {}", file.name()),
                    format!(
                        "package is `{}`, but a contract in `{}/` must use package `{package}`",
                        file.package_name(),
                        found.dir
                    ),
                );
            }
        }
    }

    /// The contract's one service (the first, when it declares several: each extra is refused).
    fn the_service(
        &mut self,
        found: &Found,
        files: &[FileDescriptor],
    ) -> Option<ServiceDescriptor> {
        let services: Vec<_> = files.iter().flat_map(|f| f.services()).collect();
        match services.as_slice() {
            [] => {
                let location = Location::file(self.root.join(&found.files[0]));
                self.violation(
                    location,
                    format!("contract {}", found.dir),
                    "declares no service; a contract describes exactly one service",
                );
                None
            }
            [one] => Some(one.clone()),
            [first, rest @ ..] => {
                for extra in rest {
                    let location = self.locate(&extra.parent_file(), extra.path());
                    self.violation(
                        location,
                        format!("service {}", extra.full_name()),
                        format!("contract {} already declares service {}; a contract describes exactly one service", found.dir, first.full_name()),
                    );
                }
                Some(first.clone())
            }
        }
    }

    /// The service's `option (mesh.service)`: name, version, tier, owner, capabilities.
    fn manifest(&mut self, found: &Found, service: &ServiceDescriptor) -> Option<Manifest> {
        let file = service.parent_file();
        let subject = format!("service {}", service.full_name());
        let service_location = self.locate(&file, service.path());
        let option_location = self.locate_option(
            &file,
            service.path(),
            MeshOptions::number(self.options.service.as_ref()),
        );
        let Some(manifest) = extension(&service.options(), self.options.service.as_ref()) else {
            self.violation(
                service_location,
                subject,
                "missing `option (mesh.service) = { name: ... version: ... tier: ... owner: ... }`",
            );
            return None;
        };
        let name = get_str(&manifest, "name");
        if name != found.name {
            self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.service).name"),
                format!(
                    "is {name:?} but the contract folder is `{}/`; they must match",
                    found.name
                ),
            );
        }
        let version_text = get_str(&manifest, "version");
        let version = match semver::Version::parse(&version_text) {
            Ok(v) if v.major == u64::from(found.major) => v,
            Ok(v) => {
                self.violation(
                    option_location.clone(),
                    format!("{subject}: option (mesh.service).version"),
                    format!(
                        "is {v} but the folder is `v{}`; the major versions must match",
                        found.major
                    ),
                );
                v
            }
            Err(e) => {
                self.violation(
                    option_location.clone(),
                    format!("{subject}: option (mesh.service).version"),
                    format!("{version_text:?} is not a semantic version like \"1.2.0\": {e}"),
                );
                semver::Version::new(found.major.into(), 0, 0)
            }
        };
        let tier = match get_u32(&manifest, "tier") {
            Some(t) if t <= 2 => t,
            Some(t) => {
                self.violation(
                    option_location.clone(),
                    format!("{subject}: option (mesh.service).tier"),
                    format!("is {t}; tiers are 0 (core), 1 or 2 (optional)"),
                );
                t
            }
            None => {
                self.violation(
                    option_location.clone(),
                    format!("{subject}: option (mesh.service).tier"),
                    "is missing; every service states its tier: 0 (core), 1 or 2 (optional)",
                );
                2
            }
        };
        let owner = get_str(&manifest, "owner");
        if owner.trim().is_empty() {
            self.violation(
                option_location,
                format!("{subject}: option (mesh.service).owner"),
                "is missing; name the team that owns this contract",
            );
        }
        let capabilities = manifest
            .get_field_by_name("capabilities")
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        Some(Manifest {
            version,
            tier,
            owner,
            capabilities,
        })
    }

    /// The service's methods, each checked (a method too broken to model is left out).
    fn methods(
        &mut self,
        file: &FileDescriptor,
        service: &ServiceDescriptor,
        package: &str,
    ) -> Vec<Method> {
        let mut methods = Vec::new();
        let mut rust_names: HashMap<String, String> = HashMap::new();
        let mut payloads: HashMap<String, String> = HashMap::new();
        for method in service.methods() {
            if let Some(model) = self.method(file, &method, package, &mut rust_names, &mut payloads)
            {
                methods.push(model);
            }
        }
        methods
    }

    /// One method and its `option (mesh.method)`; `rust_names` and `payloads` are what the
    /// service's methods before it took.
    fn method(
        &mut self,
        file: &FileDescriptor,
        method: &MethodDescriptor,
        package: &str,
        rust_names: &mut HashMap<String, String>,
        payloads: &mut HashMap<String, String>,
    ) -> Option<Method> {
        let path = method.path().to_vec();
        let location = self.locate(file, &path);
        let subject = format!("method {}", method.full_name());
        let snake = method.name().to_snake_case();
        if let Some(other) = rust_names.insert(snake.clone(), method.name().to_owned()) {
            self.violation(
                location.clone(),
                subject.clone(),
                format!("duplicate method or event name: `{}` and `{other}` both become `{snake}` in generated code and routing keys", method.name()),
            );
        }
        if RESERVED_METHOD_NAMES.contains(&snake.as_str()) {
            self.violation(
                location.clone(),
                subject.clone(),
                format!("`{}` becomes `{snake}`, which the generated tonic client already defines; choose another name", method.name()),
            );
        }
        let option_location = self.locate_option(
            file,
            &path,
            MeshOptions::number(self.options.method.as_ref()),
        );
        let Some(spec) = extension(&method.options(), self.options.method.as_ref()) else {
            self.violation(
                location,
                subject,
                "missing `option (mesh.method) = { kind: CALL|EVENT ... }`",
            );
            return None;
        };
        let kind = match get_enum(&spec, "kind").as_deref() {
            Some("CALL") => Kind::Call,
            Some("EVENT") => Kind::Event,
            _ => {
                self.violation(
                    option_location,
                    format!("{subject}: option (mesh.method).kind"),
                    "is missing; say `kind: CALL` (HTTP/2) or `kind: EVENT` (message queue)",
                );
                return None;
            }
        };
        let timeout_ms = get_u32(&spec, "timeout_ms");
        let degraded = get_message(&spec, "degraded").and_then(|d| {
            if let Some(e) = get_message(&d, "error") {
                Some(Degraded::Error {
                    code: get_str(&e, "code"),
                    message: get_str(&e, "message"),
                })
            } else if d.has_field_by_name("empty") {
                Some(Degraded::Empty)
            } else {
                get_message(&d, "cached").map(|c| Degraded::Cached {
                    max_age_ms: get_u32(&c, "max_age_ms").unwrap_or(0),
                })
            }
        });
        let mut declared_audience = Vec::new();
        for value in get_enum_list(&spec, "audience") {
            match value.as_deref() {
                Some("USER") => declared_audience.push(Audience::User),
                Some("BACKEND") => declared_audience.push(Audience::Backend),
                Some("NODE") => declared_audience.push(Audience::Node),
                _ => self.violation(
                    option_location.clone(),
                    format!("{subject}: option (mesh.method).audience"),
                    "names no caller; use USER, BACKEND or NODE",
                ),
            }
        }
        declared_audience.sort();
        declared_audience.dedup();
        if kind == Kind::Event && !declared_audience.is_empty() {
            self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.method).audience"),
                "is for calls; an event is published by the service that owns it",
            );
        }
        if timeout_ms == Some(0) {
            self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.method).timeout_ms"),
                "is 0; a deadline must be at least 1 ms",
            );
        }
        if let Some(Degraded::Error { code, .. }) = &degraded
            && !GRPC_CODES.contains(&code.as_str())
        {
            self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.method).degraded.error.code"),
                format!(
                    "{code:?} is not a gRPC code name; use one of {}",
                    GRPC_CODES.join(", ")
                ),
            );
        }
        match kind {
            Kind::Call => {
                if timeout_ms.is_none() {
                    self.violation(
                        option_location.clone(),
                        format!("{subject}: option (mesh.method).timeout_ms"),
                        "is missing; every call states its deadline",
                    );
                }
            }
            Kind::Event => {
                if method.output().full_name() != "google.protobuf.Empty" {
                    self.violation(
                        location.clone(),
                        subject.clone(),
                        format!(
                            "is an EVENT but returns {}; events return google.protobuf.Empty",
                            method.output().full_name()
                        ),
                    );
                }
                if method.is_client_streaming() || method.is_server_streaming() {
                    self.violation(
                        location.clone(),
                        subject.clone(),
                        "is an EVENT and cannot stream",
                    );
                }
                if matches!(degraded, Some(Degraded::Cached { .. })) {
                    self.violation(option_location.clone(), format!("{subject}: option (mesh.method).degraded.cached"), "events cannot answer a cached value; use `empty` (skip the publish) or `error`");
                }
                if let Some(other) = payloads.insert(
                    method.input().full_name().to_owned(),
                    method.name().to_owned(),
                ) {
                    self.violation(location.clone(), subject.clone(), format!("uses payload {} already used by event {other}; give each event its own message", method.input().full_name()));
                }
                if method.input().parent_file().package_name() != package {
                    self.violation(
                        location.clone(),
                        subject.clone(),
                        format!(
                            "payload {} must be declared in this contract's package `{package}`",
                            method.input().full_name()
                        ),
                    );
                }
            }
        }
        Some(Method {
            name: method.name().to_owned(),
            kind,
            input: method.input().full_name().to_owned(),
            input_package: method.input().package_name().to_owned(),
            output: method.output().full_name().to_owned(),
            output_package: method.output().package_name().to_owned(),
            client_streaming: method.is_client_streaming(),
            server_streaming: method.is_server_streaming(),
            timeout_ms,
            degraded,
            declared_audience,
            doc: self.leading_comment(file, &path),
            location,
            idempotency: method
                .method_descriptor_proto()
                .options
                .as_ref()
                .map(|o| o.idempotency_level().as_str_name().to_owned())
                .unwrap_or_else(|| "IDEMPOTENCY_UNKNOWN".into()),
        })
    }

    /// The messages and enums the contract's files declare.
    fn types(
        &mut self,
        files: &[FileDescriptor],
    ) -> (BTreeMap<String, Message>, BTreeMap<String, Enum>) {
        let mut messages = BTreeMap::new();
        let mut enums = BTreeMap::new();
        for file in files {
            for message in file.messages() {
                self.collect_message(file, message, &mut messages, &mut enums);
            }
            for e in file.enums() {
                let model = self.enum_model(file, &e);
                enums.insert(model.full_name.clone(), model);
            }
        }
        (messages, enums)
    }

    fn collect_message(
        &self,
        file: &FileDescriptor,
        message: MessageDescriptor,
        messages: &mut BTreeMap<String, Message>,
        enums: &mut BTreeMap<String, Enum>,
    ) {
        if message.is_map_entry() {
            return;
        }
        let fields = message
            .fields()
            .map(|f| Field {
                name: f.name().to_owned(),
                number: f.number(),
                ty: field_type(&f),
                label: if f.is_list() || f.is_map() {
                    "repeated"
                } else if f.field_descriptor_proto().proto3_optional() {
                    "optional"
                } else {
                    "singular"
                },
                oneof: f
                    .containing_oneof()
                    .filter(|o| !o.is_synthetic())
                    .map(|o| o.name().to_owned()),
                json_name: f.json_name().to_owned(),
                jstype: f
                    .field_descriptor_proto()
                    .options
                    .as_ref()
                    .and_then(|o| o.jstype)
                    .map(|v| {
                        prost_types::field_options::JsType::try_from(v)
                            .map_or_else(|_| v.to_string(), |t| t.as_str_name().to_owned())
                    })
                    .filter(|t| t != "JS_NORMAL")
                    .unwrap_or_default(),
                ctype: f
                    .field_descriptor_proto()
                    .options
                    .as_ref()
                    .and_then(|o| o.ctype)
                    .map(|v| {
                        prost_types::field_options::CType::try_from(v)
                            .map_or_else(|_| v.to_string(), |t| t.as_str_name().to_owned())
                    })
                    .filter(|t| t != "STRING")
                    .unwrap_or_default(),
                location: self.locate(file, f.path()),
            })
            .collect();
        for e in message.child_enums() {
            let model = self.enum_model(file, &e);
            enums.insert(model.full_name.clone(), model);
        }
        messages.insert(
            message.full_name().to_owned(),
            Message {
                full_name: message.full_name().to_owned(),
                fields,
                reserved_numbers: message.reserved_ranges().collect(),
                reserved_names: message.reserved_names().map(str::to_owned).collect(),
                oneofs: message
                    .oneofs()
                    .filter(|o| !o.is_synthetic())
                    .map(|o| (o.name().to_owned(), self.locate(file, o.path())))
                    .collect(),
                location: self.locate(file, message.path()),
            },
        );
        for child in message.child_messages() {
            self.collect_message(file, child, messages, enums);
        }
    }

    fn enum_model(&self, file: &FileDescriptor, e: &prost_reflect::EnumDescriptor) -> Enum {
        Enum {
            full_name: e.full_name().to_owned(),
            values: e
                .values()
                .map(|v| (v.name().to_owned(), v.number(), self.locate(file, v.path())))
                .collect(),
            reserved_numbers: e.reserved_ranges().collect(),
            reserved_names: e.reserved_names().map(str::to_owned).collect(),
            location: self.locate(file, e.path()),
        }
    }
}

/// The standard options `file` sets, by name, as text (buf's FILE_SAME_* rules).
fn file_options(file: &FileDescriptor) -> BTreeMap<&'static str, String> {
    let mut set = BTreeMap::new();
    let Some(o) = file.file_descriptor_proto().options.as_ref() else {
        return set;
    };
    let mut text = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            set.insert(name, value);
        }
    };
    let flag = |value: Option<bool>| value.map(|b| b.to_string());
    text("go_package", o.go_package.clone());
    text("java_package", o.java_package.clone());
    text("java_outer_classname", o.java_outer_classname.clone());
    text("java_multiple_files", flag(o.java_multiple_files));
    text("java_string_check_utf8", flag(o.java_string_check_utf8));
    text("java_generic_services", flag(o.java_generic_services));
    text("cc_generic_services", flag(o.cc_generic_services));
    text("py_generic_services", flag(o.py_generic_services));
    text("cc_enable_arenas", flag(o.cc_enable_arenas));
    text("csharp_namespace", o.csharp_namespace.clone());
    text("objc_class_prefix", o.objc_class_prefix.clone());
    text("php_class_prefix", o.php_class_prefix.clone());
    text("php_namespace", o.php_namespace.clone());
    text("php_metadata_namespace", o.php_metadata_namespace.clone());
    text("ruby_package", o.ruby_package.clone());
    text("swift_prefix", o.swift_prefix.clone());
    text(
        "optimize_for",
        o.optimize_for.map(|v| {
            prost_types::file_options::OptimizeMode::try_from(v)
                .map_or_else(|_| v.to_string(), |m| m.as_str_name().to_owned())
        }),
    );
    // an option set to its default says what leaving it unset says (buf compares effective
    // values): `optimize_for = SPEED` where there was none changes nothing
    for (name, default) in [
        ("java_multiple_files", "false"),
        ("java_string_check_utf8", "false"),
        ("java_generic_services", "false"),
        ("cc_generic_services", "false"),
        ("py_generic_services", "false"),
        ("cc_enable_arenas", "true"),
        ("optimize_for", "SPEED"),
    ] {
        if set.get(name).is_some_and(|v| v == default) {
            set.remove(name);
        }
    }
    set
}

fn field_type(field: &FieldDescriptor) -> String {
    if field.is_map()
        && let FieldKind::Message(entry) = field.kind()
    {
        let kv: Vec<String> = entry.fields().map(|f| kind_name(&f.kind())).collect();
        return format!("map<{}>", kv.join(", "));
    }
    kind_name(&field.kind())
}

fn kind_name(kind: &FieldKind) -> String {
    match kind {
        FieldKind::Message(m) => m.full_name().to_owned(),
        FieldKind::Enum(e) => e.full_name().to_owned(),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}
