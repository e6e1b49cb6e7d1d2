//! `mesh-codegen new-service <name>`: the files of a new service, in the spirit of `volo init`.
//!
//! It writes a contract (`contracts/<name>/v1/<name>.proto`: a tier-2 service with a `Put` and a
//! `Get` call) and a crate implementing it (`services/<name>/`: per-tenant records kept in
//! memory, ids checked at the door), both valid as they are, and says the three lines that
//! serve it: the workspace member, one registration in the platform's routes, and the service
//! in the tenants' defaults. Nothing existing is overwritten.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::ContractError;

/// What [`new_service`] wrote, and what is left to do by hand.
#[derive(Debug)]
pub struct Scaffold {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// The lines to add elsewhere, in words.
    pub next_steps: Vec<String>,
}

/// Writes contract `contracts/<name>/v1/<name>.proto` under `contracts` and crate
/// `services/<name>/` under `services`; `name` is lowercase snake_case (`coupon`, `gift_card`).
pub fn new_service(
    name: &str,
    contracts: &Path,
    services: &Path,
) -> Result<Scaffold, ContractError> {
    let layout = |path: &Path, message: String| ContractError::Layout {
        path: path.to_path_buf(),
        message,
    };
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__");
    if !valid {
        return Err(layout(
            contracts,
            format!(
                "{name:?} is not a service name: lowercase snake_case, e.g. `coupon` or `gift_card`"
            ),
        ));
    }
    if matches!(name, "mesh" | "common") {
        return Err(layout(
            contracts,
            format!("`{name}` is reserved for the contracts folder's own use"),
        ));
    }
    let contract_dir = contracts.join(name);
    let crate_dir = services.join(name);
    for taken in [&contract_dir, &crate_dir] {
        if taken.exists() {
            return Err(layout(taken, "exists already; nothing was written".into()));
        }
    }
    let pascal: String = name
        .split('_')
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{Name}", &pascal)
            .replace("{crate}", &format!("mesh-{}", name.replace('_', "-")))
    };
    let files = [
        (
            contract_dir.join("v1").join(format!("{name}.proto")),
            fill(PROTO),
        ),
        (crate_dir.join("Cargo.toml"), fill(CARGO)),
        (crate_dir.join("src").join("lib.rs"), fill(LIB)),
    ];
    let mut written = Vec::new();
    for (path, text) in files {
        let parent = path.parent().expect("a file in a folder");
        fs::create_dir_all(parent).map_err(|e| ContractError::io(parent, e))?;
        fs::write(&path, text).map_err(|e| ContractError::io(&path, e))?;
        written.push(path);
    }
    let crate_name = format!("mesh-{}", name.replace('_', "-"));
    let module = name.to_owned();
    Ok(Scaffold {
        files: written,
        next_steps: vec![
            format!(
                "Cargo.toml: add \"services/{name}\" to [workspace] members and `{crate_name} = {{ path = \"services/{name}\" }}` to [workspace.dependencies]; services/platform/Cargo.toml: `{crate_name}.workspace = true`"
            ),
            format!(
                "services/platform/src/lib.rs, in Platform::routes: `.add_service(mesh_api::{module}::v1::{name}_server::{pascal}Server::new({}::{pascal}Service::default()))` (keep the service in a Platform field instead when consumers or tenant settings need it too)",
                crate_name.replace('-', "_")
            ),
            format!(
                "tenants/_defaults.toml: `[services.{name}]` with `version = \"v1\"` (add `enabled = false` there and `enabled = true` in the files of the business lines that run it)"
            ),
        ],
    })
}

const PROTO: &str = r#"// {Name}: what it is for, in one sentence (written by `mesh-codegen new-service {name}`).
syntax = "proto3";

package {name}.v1;

import "mesh/options.proto";

service {Name} {
  option (mesh.service) = {
    name: "{name}"
    version: "1.0.0"
    tier: 2
    owner: "your-team"
    capabilities: ["{name}.read", "{name}.write"]
  };

  // Stores a record under its id (replacing the one there).
  rpc Put{Name}(Put{Name}Request) returns (Put{Name}Response) {
    option (mesh.method) = { kind: CALL timeout_ms: 300 };
  }

  // The record stored under an id.
  rpc Get{Name}(Get{Name}Request) returns (Get{Name}Response) {
    option (mesh.method) = { kind: CALL timeout_ms: 200 degraded { empty: true } };
  }
}

message {Name}Record {
  string id = 1;
  string body = 2;
}

message Put{Name}Request {
  {Name}Record record = 1;
}

message Put{Name}Response {}

message Get{Name}Request {
  string id = 1;
}

message Get{Name}Response {
  {Name}Record record = 1;
}
"#;

const CARGO: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
description = "The {name} service (tier 2)."
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[dependencies]
mesh-api.workspace = true
mesh-contract.workspace = true
tonic.workspace = true

[lints]
workspace = true
"#;

const LIB: &str = r#"//! The {name} service (tier 2), written by `mesh-codegen new-service {name}`: records kept per
//! tenant in memory. Replace the storage with the business line's own (see `mesh-store` for a
//! store behind a trait with an embedded and a PostgreSQL implementation).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use mesh_api::{name}::v1::{self, {name}_server::{Name}};
use mesh_contract::{RequestContext, TenantId, fields::id};
use tonic::{Request, Response, Status};

/// The service; clones share the records. Every record belongs to the tenant of the call
/// that stored it: one business line never reads another's.
#[derive(Clone, Debug, Default)]
pub struct {Name}Service {
    records: Arc<RwLock<HashMap<(TenantId, String), v1::{Name}Record>>>,
}

#[tonic::async_trait]
impl {Name} for {Name}Service {
    async fn put_{name}(
        &self,
        request: Request<v1::Put{Name}Request>,
    ) -> Result<Response<v1::Put{Name}Response>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let record = request
            .into_inner()
            .record
            .ok_or_else(|| Status::invalid_argument("record is required"))?;
        id("record.id", &record.id)?;
        self.records
            .write()
            .expect("lock")
            .insert((ctx.tenant, record.id.clone()), record);
        Ok(Response::new(v1::Put{Name}Response {}))
    }

    async fn get_{name}(
        &self,
        request: Request<v1::Get{Name}Request>,
    ) -> Result<Response<v1::Get{Name}Response>, Status> {
        let ctx = RequestContext::from_request(&request)?;
        let r = request.into_inner();
        id("id", &r.id)?;
        let record = self
            .records
            .read()
            .expect("lock")
            .get(&(ctx.tenant, r.id.clone()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no {name} {:?}", r.id)))?;
        Ok(Response::new(v1::Get{Name}Response {
            record: Some(record),
        }))
    }
}
"#;
