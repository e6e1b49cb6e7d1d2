//! Generation: prost messages, then for each contract's service one composed prost service
//! generator ([`MeshServices`]): tonic's client and server for its calls (the generator
//! `tonic-prost-build` exposes), then the mesh stubs from [`stubs`](crate::stubs). prost is fed
//! the descriptors protox compiled, so no `protoc` is needed.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use crate::{error::ContractError, load::ContractSet, model::Kind, stubs};

/// Name of the generated root file that declares one module per package
/// (`pub mod order { pub mod v1 { include!("order.v1.rs"); } }`).
pub const INCLUDE_FILE: &str = "contracts.rs";
/// The encoded `FileDescriptorSet` the generated servers are described by (for server
/// reflection and tools such as grpcurl): every contract file and its imports, each service
/// with its calls only (events travel on the queue).
pub const DESCRIPTORS_FILE: &str = "descriptors.binpb";

/// Choices of a generation beyond the contracts themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateOptions<'a> {
    /// Services left out of the generated `CONTRACTS` list: contracts served by the mesh
    /// itself (its control plane), which no tenant runs.
    pub not_in_catalogue: &'a [&'a str],
}

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct Generated {
    /// Every generated file, sorted.
    pub files: Vec<PathBuf>,
}

/// Generates code for every contract of `set` into `out_dir`. Files whose content did not
/// change are left untouched, so a `build.rs` does not cause needless rebuilds.
pub fn generate(set: &ContractSet, out_dir: &Path) -> Result<Generated, ContractError> {
    generate_with(set, out_dir, &GenerateOptions::default())
}

/// [`generate`], with `options`. Besides the modules, the root file (`contracts.rs`) declares
/// `CONTRACTS`: every contract's `SPEC` in folder order (less `options.not_in_catalogue`), so
/// adding a contract folder adds it to the catalogue the runtime validates tenant files and
/// routes calls by, with nothing to list by hand.
pub fn generate_with(
    set: &ContractSet,
    out_dir: &Path,
    options: &GenerateOptions<'_>,
) -> Result<Generated, ContractError> {
    let generate_error = |message: String| ContractError::Generate {
        out_dir: out_dir.to_path_buf(),
        message,
    };
    let scratch = tempfile::tempdir().map_err(|e| ContractError::io(std::env::temp_dir(), e))?;
    let tonic = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // small buffers: a long-lived stream keeps its call's buffers (see mesh_contract::codec)
        .codec_path("::mesh_contract::codec::MeshCodec")
        .service_generator();
    let (services, left) = MeshServices::new(tonic, set);
    let mut config = prost_build::Config::new();
    config
        .out_dir(scratch.path())
        .include_file(INCLUDE_FILE)
        .service_generator(Box::new(services));
    config
        .compile_fds(calls_only(set))
        .map_err(|e| generate_error(format!("prost-build: {e}")))?;
    if let Some(service) = left.lock().expect("lock").keys().next() {
        return Err(generate_error(format!(
            "prost generated no service {service}: its stubs have nowhere to go"
        )));
    }

    let include = scratch.path().join(INCLUDE_FILE);
    let mut root = fs::read_to_string(&include).map_err(|e| ContractError::io(&include, e))?;
    root.push_str(&catalogue(set, options));
    fs::write(&include, root).map_err(|e| ContractError::io(&include, e))?;

    // what the servers answer server reflection from: every file, the calls of each service
    let descriptors = scratch.path().join(DESCRIPTORS_FILE);
    fs::write(&descriptors, prost::Message::encode_to_vec(&served(set)))
        .map_err(|e| ContractError::io(&descriptors, e))?;

    fs::create_dir_all(out_dir).map_err(|e| ContractError::io(out_dir, e))?;
    let mut files = Vec::new();
    for entry in fs::read_dir(scratch.path()).map_err(|e| ContractError::io(scratch.path(), e))? {
        let from = entry
            .map_err(|e| ContractError::io(scratch.path(), e))?
            .path();
        let to = out_dir.join(from.file_name().unwrap_or_default());
        let code = fs::read(&from).map_err(|e| ContractError::io(&from, e))?;
        if fs::read(&to).ok().as_deref() != Some(code.as_slice()) {
            fs::write(&to, code).map_err(|e| ContractError::io(&to, e))?;
        }
        files.push(to);
    }
    files.sort();
    Ok(Generated { files })
}

/// Stubs not generated yet, by fully qualified service: shared with the generator, which
/// takes each as it writes its service, so what is left after generation was never written.
type Pending = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// One prost service generator composed of two: tonic's (the client and server of the
/// service's calls; nothing for a service of events only) and the mesh's (the contract's
/// metadata, caller and event stubs), in the same module.
struct MeshServices {
    tonic: Box<dyn prost_build::ServiceGenerator>,
    stubs: Pending,
}

impl MeshServices {
    /// Composes `tonic` with the stubs of every contract of `set`; also answers what it has
    /// not written yet.
    fn new(tonic: Box<dyn prost_build::ServiceGenerator>, set: &ContractSet) -> (Self, Pending) {
        let stubs: Pending = std::sync::Arc::new(std::sync::Mutex::new(
            set.contracts
                .iter()
                .map(|contract| (contract.service.full_name.clone(), stubs::render(contract)))
                .collect(),
        ));
        (
            Self {
                tonic,
                stubs: stubs.clone(),
            },
            stubs,
        )
    }
}

impl prost_build::ServiceGenerator for MeshServices {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let full_name = format!("{}.{}", service.package, service.proto_name);
        if !service.methods.is_empty() {
            self.tonic.generate(service, buf);
        }
        if let Some(stubs) = self.stubs.lock().expect("lock").remove(&full_name) {
            buf.push_str(&stubs);
        }
    }

    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.tonic.finalize_package(package, buf);
    }
}

/// The generated `CONTRACTS` list.
fn catalogue(set: &ContractSet, options: &GenerateOptions<'_>) -> String {
    let mut code = String::from(
        "\n// ---- generated by mesh-codegen from the contract folders ----\n\
         /// Every contract tenants may run, in folder order: what the runtime validates tenant\n\
         /// files against and looks calls up in.\n\
         pub static CONTRACTS: &[&::mesh_contract::ContractSpec] = &[\n",
    );
    for contract in &set.contracts {
        if options.not_in_catalogue.contains(&contract.name.as_str()) {
            continue;
        }
        let module = contract.package.replace('.', "::");
        code.push_str(&format!("    &{module}::contract::SPEC,\n"));
    }
    code.push_str("];\n");
    code
}

/// Every file of the set, with each contract service's EVENT methods removed.
fn served(set: &ContractSet) -> prost_types::FileDescriptorSet {
    let events = event_methods(set);
    let mut fds = set.descriptors.clone();
    for file in &mut fds.file {
        let package = file.package().to_owned();
        for service in &mut file.service {
            let service_name = format!("{package}.{}", service.name());
            service
                .method
                .retain(|m| !events.contains(&format!("{service_name}.{}", m.name())));
        }
    }
    fds
}

/// `package.Service.Method` of every event.
fn event_methods(set: &ContractSet) -> HashSet<String> {
    set.contracts
        .iter()
        .flat_map(|c| {
            c.service
                .methods
                .iter()
                .filter(|m| m.kind == Kind::Event)
                .map(move |m| format!("{}.{}", c.service.full_name, m.name))
        })
        .collect()
}

/// The contract files (and the shared ones, generated once) as [`served`] describes them (no
/// EVENT methods: events travel on the queue, not over HTTP/2; a service of events only is
/// kept, with no method, for its mesh stubs). Imports that are not contracts (the mesh options, well-known types) are left out:
/// prost maps well-known types to `prost_types` and the options generate no code.
fn calls_only(set: &ContractSet) -> prost_types::FileDescriptorSet {
    let contract_files: HashSet<&str> = set
        .contracts
        .iter()
        .flat_map(|c| c.files.iter().map(String::as_str))
        .chain(set.shared.files.iter().map(String::as_str))
        .collect();
    let mut fds = served(set);
    fds.file.retain(|f| contract_files.contains(f.name()));
    fds
}
