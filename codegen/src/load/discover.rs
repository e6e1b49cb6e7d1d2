//! Discovery: the `<service>/v<major>/*.proto` folders and the shared `common/` files, in a
//! stable order, with the mesh's naming rules checked on the way.

use super::*;

pub(super) fn discover(root: &Path) -> Result<(Vec<Found>, Vec<String>), ContractError> {
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

pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ContractError> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| ContractError::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ContractError::io(dir, e))?;
    entries.sort();
    Ok(entries)
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

pub(super) fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
