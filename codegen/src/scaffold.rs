// Long on purpose: `new-service` from start to end in the order it runs (names checked, contract,
// crate, generated file, tests), each step a short function; its templates and its wiring into the
// workspace are apart (scaffold/).
//! `mesh-codegen new-service <name>`: a service's crate from its contract, wired into the
//! platform, in the spirit of `volo init` and `kratos proto server`.
//!
//! From the contract as written (`contracts/<name>/v<latest>/`; a starter contract is written
//! first when there is none) it writes:
//!
//! - `services/<name>/src/lib.rs`, the developer's file, **once**: the service's state and one
//!   method per call with its request and response types (answering UNIMPLEMENTED until
//!   written), one handler per event of the contract (acknowledging until written). A later
//!   run appends the stubs of calls and events the contract gained, and touches nothing else.
//! - `services/<name>/src/generated.rs`, **every run**: the tonic trait (each call's context
//!   read, `act_as` applied to `user_id` for calls end users may make), the event handler,
//!   and the [`ServiceDescriptor`](https://docs.rs/mesh-plugin) the platform assembles it by.
//! - `services/<name>/tests/<name>.rs`, once: a test per call (it is written; a user cannot
//!   act as another).
//!
//! and wires it: the workspace member, the platform's dependency and registry line
//! (`services/platform/src/plugins.rs`), `[services.<name>]` in `tenants/_defaults.toml`
//! (off), and on in the file of each tenant named with `--tenant`. Each edit is made only if
//! missing, so running it again is safe.

use std::{
    fs,
    path::{Path, PathBuf},
};

use heck::{ToSnakeCase, ToUpperCamelCase};

use crate::{
    error::ContractError,
    model::{Audience, Contract, Method},
};

mod templates;
mod wire;

use templates::*;
use wire::*;

/// Where [`new_service`] reads and writes: the repository's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The contracts folder.
    pub contracts: PathBuf,
    /// The folder of service crates.
    pub services: PathBuf,
    /// The workspace manifest (`Cargo.toml` at the root).
    pub workspace: PathBuf,
    /// The platform crate, which assembles services.
    pub platform: PathBuf,
    /// The tenants folder.
    pub tenants: PathBuf,
}

impl Layout {
    /// The layout of the repository at `root`.
    pub fn of(root: &Path) -> Self {
        Self {
            contracts: root.join("contracts"),
            services: root.join("services"),
            workspace: root.join("Cargo.toml"),
            platform: root.join("services/platform"),
            tenants: root.join("tenants"),
        }
    }
}

/// What [`new_service`] did.
#[derive(Debug, Default)]
pub struct Scaffold {
    /// The files written anew.
    pub written: Vec<PathBuf>,
    /// The existing files it added to (each edit in words).
    pub edited: Vec<(PathBuf, String)>,
    /// The contract it read (`coupon/v1`).
    pub contract: String,
}

/// Writes (or brings up to date) service `name` from its contract and wires it in `layout`;
/// `tenants` are the business lines that run it from now on. `name` is lowercase snake_case
/// (`coupon`, `gift_card`).
pub fn new_service(
    name: &str,
    layout: &Layout,
    tenants: &[String],
) -> Result<Scaffold, ContractError> {
    check_names(name, layout, tenants)?;
    let mut done = Scaffold::default();
    let contract_dir = layout.contracts.join(name);
    if !contract_dir.exists() {
        let path = contract_dir.join("v1").join(format!("{name}.proto"));
        write_new(&path, &fill(STARTER_PROTO, name))?;
        done.written.push(path);
    }
    let set = crate::load(&layout.contracts)?;
    let contract = set
        .contracts
        .iter()
        .filter(|c| c.name == name)
        .max_by_key(|c| c.major)
        .ok_or_else(|| {
            refuse(
                &contract_dir,
                format!("holds no contract of service {name:?} (expected {name}/v<major>/*.proto)"),
            )
        })?;
    done.contract = contract.dir.clone();
    if let Some(streaming) = contract
        .calls()
        .find(|m| m.client_streaming || m.server_streaming)
    {
        return Err(refuse(
            &contract_dir,
            format!(
                "{} streams; new-service writes unary calls and events only (write a streaming service by hand, as the gateway is)",
                streaming.name
            ),
        ));
    }
    check_types(&set, contract)?;
    write_crate(name, contract, layout, &mut done)?;
    wire(name, contract, layout, tenants, &mut done)?;
    Ok(done)
}

/// The service's name and the tenants named are what they must be, before anything is written.
fn check_names(name: &str, layout: &Layout, tenants: &[String]) -> Result<(), ContractError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__");
    if !valid {
        return Err(refuse(
            &layout.contracts,
            format!(
                "{name:?} is not a service name: lowercase snake_case, e.g. `coupon` or `gift_card`"
            ),
        ));
    }
    if matches!(name, "mesh" | "common" | "platform" | "plugin") || RUST_KEYWORDS.contains(&name) {
        return Err(refuse(
            &layout.contracts,
            format!("`{name}` is reserved (the repository's own use, or a Rust keyword)"),
        ));
    }
    for tenant in tenants {
        let id = tenant.starts_with(|c: char| c.is_ascii_lowercase())
            && tenant
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !id {
            return Err(refuse(
                &layout.tenants,
                format!(
                    "--tenant {tenant:?} is not a tenant id (the name of a tenant file, e.g. `mall`); nothing was written"
                ),
            ));
        }
        let file = layout.tenants.join(format!("{tenant}.toml"));
        if !file.is_file() {
            return Err(refuse(
                &file,
                format!("--tenant {tenant}: no such tenant file; nothing was written"),
            ));
        }
    }
    Ok(())
}

/// The service's crate: written when new, else its missing stubs appended and its generated
/// file rewritten (only a crate this command wrote).
fn write_crate(
    name: &str,
    contract: &Contract,
    layout: &Layout,
    done: &mut Scaffold,
) -> Result<(), ContractError> {
    let crate_dir = layout.services.join(name);
    let lib = crate_dir.join("src/lib.rs");
    let generated = crate_dir.join("src/generated.rs");
    let fresh_crate = !crate_dir.exists();
    if crate_dir.exists() {
        // only a crate this command wrote is brought up to date: never a hand-written one
        let Ok(previous) = fs::read_to_string(&generated) else {
            return Err(refuse(
                &crate_dir,
                format!(
                    "exists and was not written by `mesh-codegen new-service` (no src/generated.rs): \
                     {name} is served by hand; nothing was written"
                ),
            ));
        };
        let serves = format!("use mesh_api::{name}::v{};", contract.major);
        if !previous.contains(&serves) {
            return Err(refuse(
                &crate_dir,
                format!(
                    "serves another major of {name} than {}, the latest: a crate serves one \
                     major; write v{} as a crate of its own or by hand (nothing was written)",
                    contract.dir, contract.major
                ),
            ));
        }
    }
    if !crate_dir.exists() {
        write_new(&crate_dir.join("Cargo.toml"), &fill(CARGO, name))?;
        write_new(&lib, &skeleton(contract))?;
        let tests = crate_dir.join("tests").join(format!("{name}.rs"));
        write_new(&tests, &tests_file(contract))?;
        done.written
            .extend([crate_dir.join("Cargo.toml"), lib.clone(), tests]);
    } else {
        let text = fs::read_to_string(&lib).map_err(|e| ContractError::io(&lib, e))?;
        let missing = missing_stubs(contract, &text);
        if !missing.is_empty() {
            let mut text = text;
            text.push_str(&missing.text);
            fs::write(&lib, text).map_err(|e| ContractError::io(&lib, e))?;
            done.edited.push((
                lib.clone(),
                format!("appended {}", missing.names.join(", ")),
            ));
        }
    }
    fs::write(&generated, generated_file(contract))
        .map_err(|e| ContractError::io(&generated, e))?;
    // laid out as `cargo fmt` would (CI checks it): what it wrote, never the developer's code
    let mut ours = vec![generated.clone()];
    if fresh_crate {
        ours.push(lib.clone());
        ours.push(crate_dir.join("tests").join(format!("{name}.rs")));
    }
    rustfmt(&ours);
    done.written.push(generated);
    Ok(())
}

/// Why nothing (more) was written, naming the path at fault.
fn refuse(path: &Path, message: String) -> ContractError {
    ContractError::Layout {
        path: path.to_path_buf(),
        message,
    }
}

/// Formats `files` with rustfmt when it is installed (it comes with every rustup toolchain);
/// without it the files are valid as written, only not laid out.
fn rustfmt(files: &[PathBuf]) {
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .args(files)
        .stderr(std::process::Stdio::null())
        .status();
}

/// `template` with the service's names filled in.
fn fill(template: &str, name: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{Name}", &name.to_upper_camel_case())
        .replace("{crate}", &crate_name(name))
}

fn crate_name(name: &str) -> String {
    format!("mesh-{}", name.replace('_', "-"))
}

fn write_new(path: &Path, text: &str) -> Result<(), ContractError> {
    let parent = path.parent().expect("a file in a folder");
    fs::create_dir_all(parent).map_err(|e| ContractError::io(parent, e))?;
    fs::write(path, text).map_err(|e| ContractError::io(path, e))
}

/// The Rust path of protobuf type `full_name` (of `package`) in a service crate, where
/// `v<major>` is the contract's own module.
fn rust_type(contract: &Contract, full_name: &str, package: &str) -> String {
    if full_name == "google.protobuf.Empty" {
        return "()".into();
    }
    let local = full_name
        .strip_prefix(package)
        .map_or(full_name, |s| s.trim_start_matches('.'));
    let parts: Vec<&str> = local.split('.').collect();
    let (parents, last) = parts.split_at(parts.len() - 1);
    let mut path: Vec<String> = if package == contract.package {
        vec![format!("v{}", contract.major)]
    } else if package == "google.protobuf" {
        vec!["prost_types".into()]
    } else {
        std::iter::once("mesh_api".to_owned())
            .chain(package.split('.').map(str::to_owned))
            .collect()
    };
    path.extend(parents.iter().map(|p| p.to_snake_case()));
    path.push(last[0].to_upper_camel_case());
    path.join("::")
}

/// Rust's keywords: a service name is a module of `mesh_api`.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while", "abstract", "become", "box", "do", "final", "gen", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Refuses what the skeleton cannot serve safely: well-known types other than `Empty` (prost
/// maps some to Rust primitives), and a call end users make whose request is not a message of
/// the contract (the generator could not tell whether it names a user to pin).
fn check_types(set: &crate::ContractSet, contract: &Contract) -> Result<(), ContractError> {
    let refuse = |message: String| ContractError::Layout {
        path: set.root.join(&contract.dir),
        message,
    };
    for m in &contract.service.methods {
        for ty in [&m.input, &m.output] {
            if ty.starts_with("google.protobuf.") && ty != "google.protobuf.Empty" {
                return Err(refuse(format!(
                    "{} uses {ty}: new-service maps google.protobuf.Empty only; wrap it in a message of the contract",
                    m.name
                )));
            }
        }
        if m.audience().contains(&Audience::User) && !contract.messages.contains_key(&m.input) {
            return Err(refuse(format!(
                "{} may be called by end users but its request {} is not a message of {}: \
                 declare the request in the contract, so whose data it touches is known",
                m.name, m.input, contract.dir
            )));
        }
    }
    Ok(())
}

/// Whether calls of `method` may come from end users, whose `user_id` the generated code
/// pins to the token's user.
fn pins_user(contract: &Contract, method: &Method) -> bool {
    method.audience().contains(&Audience::User)
        && contract.messages.get(&method.input).is_some_and(|m| {
            m.fields.iter().any(|f| {
                f.name == "user_id"
                    && f.ty == "string"
                    && f.label == "singular"
                    && f.oneof.is_none()
            })
        })
}

fn doc(text: &str, indent: &str) -> String {
    text.lines()
        .map(|l| format!("{indent}///{}{l}\n", if l.is_empty() { "" } else { " " }))
        .collect()
}

fn audience_words(method: &Method) -> String {
    method
        .audience()
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn call_stub(contract: &Contract, m: &Method) -> String {
    let fn_name = m.name.to_snake_case();
    let input = rust_type(contract, &m.input, &m.input_package);
    let output = rust_type(contract, &m.output, &m.output_package);
    let mut text = doc(&m.doc, "    ");
    text.push_str(&format!(
        "    ///\n    /// `{}` (callers: {}).{}\n",
        m.name,
        audience_words(m),
        if pins_user(contract, m) {
            " `request.user_id` is the caller's own user when an end user calls\n    /// (a user token acts only as itself); a backend names any user of its tenant."
        } else {
            ""
        }
    ));
    text.push_str(&format!(
        "    pub async fn {fn_name}(\n        &self,\n        ctx: &RequestContext,\n        request: {input},\n    ) -> Result<{output}, Status> {{\n        let _ = (ctx, request);\n        Err(Status::unimplemented(\"{} is not written yet\"))\n    }}\n",
        m.name
    ));
    text
}

fn event_stub(contract: &Contract, m: &Method) -> String {
    let fn_name = format!("on_{}", m.name.to_snake_case());
    let payload = rust_type(contract, &m.input, &m.input_package);
    let mut text = doc(&m.doc, "    ");
    text.push_str(&format!(
        "    ///\n    /// Event `{}`, as this service consumes it (queue `mesh.<tenant>.{}.v{}.{}`). Return\n    /// `HandlerError::Retry` for a failure that may pass (it is redelivered later),\n    /// `Reject` for one that never will (it is dead-lettered).\n",
        m.name, contract.name, contract.major, contract.name
    ));
    text.push_str(&format!(
        "    pub async fn {fn_name}(\n        &self,\n        ctx: &RequestContext,\n        event: {payload},\n    ) -> Result<(), HandlerError> {{\n        let _ = (ctx, event);\n        Ok(())\n    }}\n"
    ));
    text
}

/// The developer's file, as first written.
fn skeleton(contract: &Contract) -> String {
    let name = &contract.name;
    let pascal = name.to_upper_camel_case();
    let proto = &contract.service.proto_name;
    let major = contract.major;
    let has_events = contract.events().next().is_some();
    let mut text = format!(
        "//! The {name} service (tier {tier}, owner {owner}): `contracts/{dir}`.
//!
//! Written once by `mesh-codegen new-service {name}`: this file is yours. Each call answers
//! UNIMPLEMENTED and each event is acknowledged until you write it. Running the command again
//! after a contract change rewrites `generated.rs` (the tonic trait, the event handler, how the
//! platform assembles the service) and appends here the stubs of new calls and events; nothing
//! written here is touched.
//!
//! What the contract declares needs no code: the caller's tenant and credential are checked,
//! its audience enforced, deadlines and degraded answers applied, HTTP/JSON served, per-tenant
//! queues declared, by the platform.

mod generated;

pub use generated::SERVICE;

use mesh_api::{name}::v{major};
use mesh_contract::{contract_use};
use mesh_plugin::Handles;
{status_use}
/// The service, one per node, shared by every tenant that runs it: keep each tenant's data
/// apart by passing `&ctx.tenant` to the store, whose namespace is that tenant's alone.
#[derive(Clone)]
pub struct {pascal}Service {{
    /// What the platform shares: `handles.records` (keyed records per tenant, e.g.
    /// `mesh_store::Collection::new(handles.records.clone(), \"{name}\")`),
    /// `handles.notifier` (a system message to a user), `handles.bus`.
    #[allow(dead_code)] // until a method uses it
    handles: Handles,
",
        tier = contract.service.tier,
        contract_use = if has_events {
            "{HandlerError, RequestContext}"
        } else {
            "RequestContext"
        },
        status_use = if contract.calls().next().is_some() {
            "use tonic::Status;\n"
        } else {
            ""
        },
        owner = contract.service.owner,
        dir = contract.dir,
    );
    if has_events {
        text.push_str(&format!(
            "    /// Publishes this contract's events, to the exchange of the context's tenant.\n    #[allow(dead_code)] // until a method uses it\n    events: v{major}::{proto}Publisher<std::sync::Arc<dyn mesh_contract::EventBus>>,\n"
        ));
    }
    text.push_str(&format!(
        "}}

impl {pascal}Service {{
    /// Built once per node, on what the platform shares.
    pub fn new(handles: &Handles) -> Self {{
        Self {{
            handles: handles.clone(),
"
    ));
    if has_events {
        text.push_str(&format!(
            "            events: v{major}::{proto}Publisher::new(handles.bus.clone()),\n"
        ));
    }
    text.push_str("        }\n    }\n}\n");
    text.push_str(&format!(
        "\n/// What the service does when a tenant that runs it is served here, or no longer is\n/// (both default to nothing: warm a cache, start a per-tenant task).\nimpl mesh_plugin::TenantHooks for {pascal}Service {{}}\n"
    ));
    text.push_str(&format!("\nimpl {pascal}Service {{\n"));
    let stubs: Vec<String> = contract
        .calls()
        .map(|m| call_stub(contract, m))
        .chain(contract.events().map(|m| event_stub(contract, m)))
        .collect();
    text.push_str(&stubs.join("\n"));
    text.push_str("}\n");
    text
}

/// Stubs the developer's file lacks.
struct Missing {
    names: Vec<String>,
    text: String,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn missing_stubs(contract: &Contract, lib: &str) -> Missing {
    let defines = |fn_name: &str| lib.contains(&format!("fn {fn_name}("));
    let mut names = Vec::new();
    let mut stubs = Vec::new();
    for m in contract.calls() {
        if !defines(&m.name.to_snake_case()) {
            names.push(m.name.clone());
            stubs.push(call_stub(contract, m));
        }
    }
    for m in contract.events() {
        if !defines(&format!("on_{}", m.name.to_snake_case())) {
            names.push(m.name.clone());
            stubs.push(event_stub(contract, m));
        }
    }
    let text = if stubs.is_empty() {
        String::new()
    } else {
        format!(
            "\n// added by `mesh-codegen new-service {}` for what {} gained\nimpl {}Service {{\n{}}}\n",
            contract.name,
            contract.dir,
            contract.name.to_upper_camel_case(),
            stubs.join("\n")
        )
    };
    Missing { names, text }
}

/// `generated.rs`: everything derived from the contract alone.
fn generated_file(contract: &Contract) -> String {
    let name = &contract.name;
    let pascal = name.to_upper_camel_case();
    let proto = &contract.service.proto_name;
    let server_mod = format!("{}_server", proto.to_snake_case());
    let major = contract.major;
    let events: Vec<&Method> = contract.events().collect();
    let has_calls = contract.calls().next().is_some();
    let mut text = format!(
        "//! Written by `mesh-codegen new-service {name}` from `contracts/{dir}`, and again on every
//! run: edit `lib.rs`, never this file.

use std::sync::Arc;

use mesh_api::{name}::v{major};
use mesh_contract::RequestContext;
use mesh_plugin::{{ConsumerSpec, Handles, ServiceDescriptor, ServicePlugin, TenantHooks}};
{tonic_use}

use crate::{pascal}Service;

/// How the platform assembles the service (listed in `services/platform/src/plugins.rs`).
pub static SERVICE: ServiceDescriptor = ServiceDescriptor {{
    name: \"{name}\",
    consumers: &CONSUMERS,
    build,
}};

/// Its event consumers: the contract's own events, on queue `mesh.<tenant>.{name}.v{major}.{name}`.
static CONSUMERS: [ConsumerSpec; {n}] = [{consumers}];

fn build(handles: &Handles) -> Arc<dyn ServicePlugin> {{
    Arc::new(Plugin({pascal}Service::new(handles)))
}}

struct Plugin({pascal}Service);

#[tonic::async_trait]
impl ServicePlugin for Plugin {{
    fn routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {{
        {routes}
    }}

    async fn add_tenant(&self, config: &mesh_plugin::TenantConfig) -> Result<(), String> {{
        TenantHooks::tenant_added(&self.0, config).await
    }}

    async fn remove_tenant(&self, tenant: &mesh_contract::TenantId) {{
        TenantHooks::tenant_removed(&self.0, tenant).await
    }}

    fn subscription(
        &self,
        consumer: &ConsumerSpec,
        tenant: mesh_contract::TenantId,
        queue: String,
    ) -> Option<mesh_contract::Subscription> {{
",
        dir = contract.dir,
        n = usize::from(!events.is_empty()),
        routes = if has_calls {
            format!("routes.add_service(v{major}::{server_mod}::{proto}Server::new(self.0.clone()))")
        } else {
            "routes // the contract has no calls".to_owned()
        },
        tonic_use = if has_calls {
            "use tonic::{Request, Response, Status};"
        } else {
            ""
        },
        consumers = if events.is_empty() {
            String::new()
        } else {
            format!(
                "ConsumerSpec {{\n    contract: \"{name}\",\n    major: {major},\n    consumer: \"{name}\",\n}}"
            )
        },
    );
    if events.is_empty() {
        text.push_str("        let _ = (consumer, tenant, queue);\n        None\n");
    } else {
        text.push_str(&format!(
            "        (consumer.contract == \"{name}\" && consumer.major == {major})\n            .then(|| v{major}::{proto}Consumer::new(self.0.clone()).subscription(tenant, queue))\n"
        ));
    }
    text.push_str("    }\n}\n");
    text.push_str(&handler_impls(contract));
    text
}

/// The generated part's impls: the tonic server trait (calls) and the consumer's handler
/// trait (events), each forwarding to the developer's `{Name}Service` methods.
fn handler_impls(contract: &Contract) -> String {
    let pascal = contract.name.to_upper_camel_case();
    let proto = &contract.service.proto_name;
    let server_mod = format!("{}_server", proto.to_snake_case());
    let major = contract.major;
    let events: Vec<&Method> = contract.events().collect();
    let has_calls = contract.calls().next().is_some();
    let mut text = String::new();
    if has_calls {
        text.push_str(&format!(
            "\n#[tonic::async_trait]\nimpl v{major}::{server_mod}::{proto} for {pascal}Service {{\n"
        ));
    }
    let calls: Vec<String> = contract
        .calls()
        .map(|m| {
            let fn_name = m.name.to_snake_case();
            let input = rust_type(contract, &m.input, &m.input_package);
            let output = rust_type(contract, &m.output, &m.output_package);
            let pin = if pins_user(contract, m) {
                "        // an end user acts only as the user of its token\n        request.user_id = ctx.act_as(\"user_id\", &request.user_id)?;\n"
            } else {
                ""
            };
            let binding = if pin.is_empty() { "" } else { "mut " };
            format!(
                "    async fn {fn_name}(\n        &self,\n        request: Request<{input}>,\n    ) -> Result<Response<{output}>, Status> {{\n        let ctx = RequestContext::from_request(&request)?;\n        let {binding}request = request.into_inner();\n{pin}        {pascal}Service::{fn_name}(self, &ctx, request)\n            .await\n            .map(Response::new)\n    }}\n"
            )
        })
        .collect();
    if has_calls {
        text.push_str(&calls.join("\n"));
        text.push_str("}\n");
    }
    if !events.is_empty() {
        text.push_str(&format!(
            "\nimpl v{major}::{proto}Handler for {pascal}Service {{\n"
        ));
        let handlers: Vec<String> = events
            .iter()
            .map(|m| {
                let fn_name = format!("on_{}", m.name.to_snake_case());
                let payload = rust_type(contract, &m.input, &m.input_package);
                format!(
                    "    async fn {fn_name}(\n        &self,\n        ctx: &RequestContext,\n        event: {payload},\n    ) -> Result<(), mesh_contract::HandlerError> {{\n        {pascal}Service::{fn_name}(self, ctx, event).await\n    }}\n"
                )
            })
            .collect();
        text.push_str(&handlers.join("\n"));
        text.push_str("}\n");
    }
    text
}

/// The tests written once with the crate: every call is written, and no end user acts as
/// another.
fn tests_file(contract: &Contract) -> String {
    let name = &contract.name;
    let pascal = name.to_upper_camel_case();
    let proto = &contract.service.proto_name;
    let server_mod = format!("{}_server", proto.to_snake_case());
    let major = contract.major;
    let mut text = format!(
        "//! The {name} service's calls, made as the platform makes them (written by
//! `mesh-codegen new-service {name}`; extend each with what it must answer).
{allow}
use mesh_api::{name}::v{major}{api_use};
use mesh_plugin::testing::{{{helpers}}};
use {crate_ident}::{pascal}Service;

async fn service() -> {pascal}Service {{
    {pascal}Service::new(&handles(&[\"mall\", \"paipai\"]).await)
}}
",
        crate_ident = crate_name(name).replace('-', "_"),
        helpers = test_helpers(contract).join(", "),
        api_use = if contract.calls().next().is_some() {
            format!("::{{self, {server_mod}::{proto}}}")
        } else {
            String::new()
        },
        allow = if contract.calls().next().is_none() {
            "#![allow(unused_imports, dead_code)] // the contract has no calls yet\n"
        } else {
            ""
        },
    );
    for m in contract.calls() {
        let fn_name = m.name.to_snake_case();
        let input = rust_type(contract, &m.input, &m.input_package);
        let ctx = if m.audience().contains(&Audience::Backend) {
            "backend(\"mall\")".to_owned()
        } else if m.audience().contains(&Audience::User) {
            "user(\"mall\", \"alice\")".to_owned()
        } else {
            "mesh_contract::RequestContext::new(mesh_plugin::testing::tenant_id(\"mall\"))"
                .to_owned()
        };
        text.push_str(&format!(
            "
/// `{method}` is written: whatever it answers a default request, it is not UNIMPLEMENTED.
#[tokio::test]
async fn {fn_name}_is_written() {{
    let answer = {proto}::{fn_name}(&service().await, request(&{ctx}, <{input}>::default())).await;
    assert!(
        !matches!(&answer, Err(status) if status.code() == tonic::Code::Unimplemented),
        \"{method} is not written yet: {{answer:?}}\"
    );
}}
",
            method = m.name,
        ));
        if pins_user(contract, m) {
            text.push_str(&format!(
                "
/// `{method}`: an end user acts only as itself.
#[tokio::test]
async fn {fn_name}_refuses_acting_as_another_user() {{
    let as_bob = {input} {{
        user_id: \"bob\".into(),{rest}
    }};
    let answer = {proto}::{fn_name}(&service().await, request(&user(\"mall\", \"alice\"), as_bob)).await;
    assert_eq!(
        answer.map(drop).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
}}
",
                method = m.name,
                rest = if contract.messages.get(&m.input).is_some_and(|i| i.fields.len() > 1) {
                    "\n        ..Default::default()"
                } else {
                    ""
                },
            ));
        }
    }
    text
}

/// The `mesh_plugin::testing` helpers the tests of `contract` use.
fn test_helpers(contract: &Contract) -> Vec<&'static str> {
    let mut helpers = vec!["handles", "request"];
    let calls: Vec<&Method> = contract.calls().collect();
    if calls
        .iter()
        .any(|m| m.audience().contains(&Audience::Backend))
    {
        helpers.push("backend");
    }
    if calls.iter().any(|m| {
        pins_user(contract, m)
            || !m.audience().contains(&Audience::Backend) && m.audience().contains(&Audience::User)
    }) {
        helpers.push("user");
    }
    helpers.sort_unstable();
    helpers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::of(dir.path());
        for bad in ["Coupon", "gift-card", "_x", "x_", "a__b", "mesh", "plugin"] {
            assert!(new_service(bad, &layout, &[]).is_err(), "{bad}");
        }
    }
}
