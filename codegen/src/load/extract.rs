// Long on purpose: every mesh option and rule of a contract read in one place, in the order of
// contracts/mesh/options.proto, so a new option has one place to go.
//! Extraction: from the compiled descriptors to the [`model`](crate::model), each mesh rule
//! checked with the file and line it is about.

use super::*;

/// Names tonic's generated clients and servers define themselves; a method may not take them.
pub(super) const RESERVED_METHOD_NAMES: [&str; 9] = [
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

/// Reads one contract folder out of the descriptor pool, recording every rule it breaks.
pub(super) struct Extractor<'a> {
    pub(super) root: &'a Path,
    pub(super) pool: &'a DescriptorPool,
    pub(super) options: &'a MeshOptions,
    pub(super) violations: &'a mut Vec<Violation>,
}

impl Extractor<'_> {
    /// The shared files' types; a shared file declares types only, in package `common` or
    /// `common.<name>`.
    pub(super) fn shared(&mut self, files: Vec<String>) -> Shared {
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

    pub(super) fn violation(
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
    pub(super) fn locate(&self, file: &FileDescriptor, path: &[i32]) -> Location {
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
    pub(super) fn locate_option(
        &self,
        file: &FileDescriptor,
        path: &[i32],
        number: u32,
    ) -> Location {
        let option_path: Vec<i32> = path.iter().copied().chain([3, number as i32]).collect();
        let location = self.locate(file, &option_path);
        if location.line.is_some() {
            location
        } else {
            self.locate(file, path)
        }
    }

    pub(super) fn leading_comment(&self, file: &FileDescriptor, path: &[i32]) -> String {
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
    pub(super) fn contract(&mut self, found: Found) -> Option<Contract> {
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
    pub(super) fn check_packages(
        &mut self,
        found: &Found,
        files: &[FileDescriptor],
        package: &str,
    ) {
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
    pub(super) fn the_service(
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
    pub(super) fn manifest(
        &mut self,
        found: &Found,
        service: &ServiceDescriptor,
    ) -> Option<Manifest> {
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
    pub(super) fn methods(
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
    pub(super) fn method(
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
        self.check_method_name(method, &location, &subject, rust_names);
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
        let degraded = degraded_answer(&spec);
        let declared_audience = self.audience(&spec, &option_location, &subject);
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
        let at = (&location, &option_location, subject.as_str());
        match kind {
            Kind::Call if timeout_ms.is_none() => self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.method).timeout_ms"),
                "is missing; every call states its deadline",
            ),
            Kind::Call => {}
            Kind::Event => self.check_event(method, at, degraded.as_ref(), package, payloads),
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

    /// Two methods that become one name in generated code, or a name the tonic client takes.
    fn check_method_name(
        &mut self,
        method: &MethodDescriptor,
        location: &Location,
        subject: &str,
        rust_names: &mut HashMap<String, String>,
    ) {
        let snake = method.name().to_snake_case();
        if let Some(other) = rust_names.insert(snake.clone(), method.name().to_owned()) {
            let name = method.name();
            self.violation(
                location.clone(),
                subject.to_owned(),
                format!(
                    "duplicate method or event name: `{name}` and `{other}` both become \
                     `{snake}` in generated code and routing keys"
                ),
            );
        }
        if RESERVED_METHOD_NAMES.contains(&snake.as_str()) {
            let name = method.name();
            self.violation(
                location.clone(),
                subject.to_owned(),
                format!(
                    "`{name}` becomes `{snake}`, which the generated tonic client already \
                     defines; choose another name"
                ),
            );
        }
    }

    /// Who may call (`option (mesh.method).audience`), sorted, each once.
    fn audience(
        &mut self,
        spec: &DynamicMessage,
        option_location: &Location,
        subject: &str,
    ) -> Vec<Audience> {
        let mut declared_audience = Vec::new();
        for value in get_enum_list(spec, "audience") {
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
        declared_audience
    }

    /// What an event may not do: answer, stream, answer a cached value, share its payload
    /// with another event or take it from another package.
    fn check_event(
        &mut self,
        method: &MethodDescriptor,
        (location, option_location, subject): (&Location, &Location, &str),
        degraded: Option<&Degraded>,
        package: &str,
        payloads: &mut HashMap<String, String>,
    ) {
        if method.output().full_name() != "google.protobuf.Empty" {
            self.violation(
                location.clone(),
                subject.to_owned(),
                format!(
                    "is an EVENT but returns {}; events return google.protobuf.Empty",
                    method.output().full_name()
                ),
            );
        }
        if method.is_client_streaming() || method.is_server_streaming() {
            self.violation(
                location.clone(),
                subject.to_owned(),
                "is an EVENT and cannot stream",
            );
        }
        if matches!(degraded, Some(Degraded::Cached { .. })) {
            self.violation(
                option_location.clone(),
                format!("{subject}: option (mesh.method).degraded.cached"),
                "events cannot answer a cached value; use `empty` (skip the publish) or `error`",
            );
        }
        if let Some(other) = payloads.insert(
            method.input().full_name().to_owned(),
            method.name().to_owned(),
        ) {
            self.violation(location.clone(), subject.to_owned(), format!("uses payload {} already used by event {other}; give each event its own message", method.input().full_name()));
        }
        if method.input().parent_file().package_name() != package {
            self.violation(
                location.clone(),
                subject.to_owned(),
                format!(
                    "payload {} must be declared in this contract's package `{package}`",
                    method.input().full_name()
                ),
            );
        }
    }

    /// The messages and enums the contract's files declare.
    pub(super) fn types(
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

    pub(super) fn collect_message(
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

    pub(super) fn enum_model(
        &self,
        file: &FileDescriptor,
        e: &prost_reflect::EnumDescriptor,
    ) -> Enum {
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
pub(super) fn file_options(file: &FileDescriptor) -> BTreeMap<&'static str, String> {
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

pub(super) fn field_type(field: &FieldDescriptor) -> String {
    if field.is_map()
        && let FieldKind::Message(entry) = field.kind()
    {
        let kv: Vec<String> = entry.fields().map(|f| kind_name(&f.kind())).collect();
        return format!("map<{}>", kv.join(", "));
    }
    kind_name(&field.kind())
}

pub(super) fn kind_name(kind: &FieldKind) -> String {
    match kind {
        FieldKind::Message(m) => m.full_name().to_owned(),
        FieldKind::Enum(e) => e.full_name().to_owned(),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

/// The answer a degraded call gives (`option (mesh.method).degraded`).
fn degraded_answer(spec: &DynamicMessage) -> Option<Degraded> {
    get_message(spec, "degraded").and_then(|d| {
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
    })
}
