//! The contract majors the tenant files run, so a check can refuse removing one still in use.
//!
//! A tenant file (`tenants/<id>.toml`) names the major it runs per service
//! (`[services.order] version = "v2"`), over `tenants/_defaults.toml`. Environment overrides
//! (`MESH_TENANT_...`) are a deployment's business and are not read here.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use crate::{ContractError, load::ContractSet};

/// A contract major that a tenant file names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantUse {
    /// The tenant file.
    pub file: PathBuf,
    /// The contract folder it runs: `order/v2`.
    pub contract: String,
    /// The version comes from `_defaults.toml`, not from the tenant file itself.
    pub inherited: bool,
}

/// Every contract major named by the tenant files in `dir` (each tenant's services, with the
/// version from its own file or else from `_defaults.toml`).
pub fn tenant_uses(dir: &Path) -> Result<Vec<TenantUse>, ContractError> {
    let defaults_path = dir.join("_defaults.toml");
    let defaults = if defaults_path.exists() {
        services_versions(&defaults_path)?
    } else {
        BTreeMap::new()
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| ContractError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('_'))
        })
        .collect();
    entries.sort();
    let mut uses = Vec::new();
    for file in entries {
        let own = services_versions(&file)?;
        let mut services: Vec<&String> = defaults.keys().chain(own.keys()).collect();
        services.sort();
        services.dedup();
        for service in services {
            let (version, inherited) = match own.get(service).and_then(Option::as_ref) {
                Some(v) => (v, false),
                None => match defaults.get(service).and_then(Option::as_ref) {
                    Some(v) => (v, true),
                    None => continue,
                },
            };
            uses.push(TenantUse {
                file: file.clone(),
                contract: format!("{service}/{version}"),
                inherited,
            });
        }
    }
    Ok(uses)
}

/// `[services.<name>] version = "..."` of one file, by service.
fn services_versions(file: &Path) -> Result<BTreeMap<String, Option<String>>, ContractError> {
    let text = fs::read_to_string(file).map_err(|e| ContractError::io(file, e))?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ContractError::Layout {
            path: file.to_path_buf(),
            message: format!("not a valid TOML tenant file: {}", e.message()),
        })?;
    let mut out = BTreeMap::new();
    if let Some(services) = value.get("services").and_then(|s| s.as_table()) {
        for (name, table) in services {
            let version = table
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            out.insert(name.clone(), version);
        }
    }
    Ok(out)
}

/// The tenant uses whose contract major is not in `set`: removing a major while a tenant
/// still runs it takes that tenant down.
pub fn missing_majors(set: &ContractSet, uses: &[TenantUse]) -> Vec<TenantUse> {
    uses.iter()
        .filter(|u| set.get(&u.contract).is_none())
        .cloned()
        .collect()
}
