//! Wiring a new service into the workspace: its crate in the members, its plugin in the
//! platform, its contract in the api crate (toml_edit, keeping comments).

use super::*;

/// Wires the crate in: workspace member, platform dependency and registry line, tenants.
pub(super) fn wire(
    name: &str,
    contract: &Contract,
    layout: &Layout,
    tenants: &[String],
    done: &mut Scaffold,
) -> Result<(), ContractError> {
    let crate_name = crate_name(name);
    let member = format!(
        "services/{}",
        layout
            .services
            .join(name)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name)
    );
    edit_toml(&layout.workspace, done, |doc| {
        let members = doc["workspace"]["members"]
            .as_array_mut()
            .ok_or("[workspace] has no members array")?;
        if members.iter().any(|m| m.as_str() == Some(member.as_str())) {
            return Ok(None);
        }
        let mut entry = toml_edit::Value::from(member.as_str());
        entry.decor_mut().set_prefix("\n    ");
        members.push_formatted(entry);
        members.set_trailing("\n");
        members.set_trailing_comma(true);
        Ok(Some(format!("workspace member {member}")))
    })?;
    let platform_manifest = layout.platform.join("Cargo.toml");
    edit_toml(&platform_manifest, done, |doc| {
        let deps = doc["dependencies"]
            .as_table_mut()
            .ok_or("[dependencies] is not a table")?;
        if deps.contains_key(&crate_name) {
            return Ok(None);
        }
        let mut dep = toml_edit::InlineTable::new();
        dep.insert("path", format!("../{name}").into());
        deps.insert(&crate_name, toml_edit::value(dep));
        Ok(Some(format!("dependency {crate_name}")))
    })?;
    let registry = layout.platform.join("src/plugins.rs");
    let text = fs::read_to_string(&registry).map_err(|e| ContractError::io(&registry, e))?;
    let line = format!("    &{}::SERVICE,\n", crate_name.replace('-', "_"));
    if !text.contains(&line) {
        const MARKER: &str =
            "    // mesh-codegen new-service adds one line per service above this one";
        let at = text.find(MARKER).ok_or_else(|| ContractError::Layout {
            path: registry.clone(),
            message: format!("lacks the line `{}` to add services above", MARKER.trim()),
        })?;
        let mut text = text;
        text.insert_str(at, &line);
        fs::write(&registry, text).map_err(|e| ContractError::io(&registry, e))?;
        done.edited
            .push((registry, format!("{crate_name} in SERVICES")));
    }
    let version = format!("v{}", contract.major);
    edit_toml(&layout.tenants.join("_defaults.toml"), done, |doc| {
        let services = doc["services"]
            .as_table_mut()
            .ok_or("[services] is not a table")?;
        if services.contains_key(name) {
            return Ok(None);
        }
        let mut service = toml_edit::Table::new();
        service.insert("version", toml_edit::value(version.as_str()));
        service.insert("enabled", toml_edit::value(false));
        service.decor_mut().set_prefix(format!(
            "\n# {name}: off unless a business line's file turns it on\n"
        ));
        services.insert(name, toml_edit::Item::Table(service));
        Ok(Some(format!("[services.{name}], off")))
    })?;
    for tenant in tenants {
        edit_toml(
            &layout.tenants.join(format!("{tenant}.toml")),
            done,
            |doc| {
                let services = doc
                    .entry("services")
                    .or_insert_with(|| {
                        let mut table = toml_edit::Table::new();
                        table.set_implicit(true);
                        toml_edit::Item::Table(table)
                    })
                    .as_table_mut()
                    .ok_or("services is not a table")?;
                let service = services
                    .entry(name)
                    .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| format!("services.{name} is not a table"))?;
                if service.get("enabled").and_then(|v| v.as_bool()) == Some(true) {
                    return Ok(None);
                }
                service.insert("enabled", toml_edit::value(true));
                Ok(Some(format!("[services.{name}] enabled")))
            },
        )?;
    }
    Ok(())
}

/// Applies `edit` to the TOML file at `path`, keeping its comments and layout; the change in
/// words, or `None` when there was nothing to do.
pub(super) fn edit_toml(
    path: &Path,
    done: &mut Scaffold,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<Option<String>, String>,
) -> Result<(), ContractError> {
    let text = fs::read_to_string(path).map_err(|e| ContractError::io(path, e))?;
    let layout_error = |message: String| ContractError::Layout {
        path: path.to_path_buf(),
        message,
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| layout_error(e.to_string()))?;
    if let Some(change) = edit(&mut doc).map_err(layout_error)? {
        fs::write(path, doc.to_string()).map_err(|e| ContractError::io(path, e))?;
        done.edited.push((path.to_path_buf(), change));
    }
    Ok(())
}
