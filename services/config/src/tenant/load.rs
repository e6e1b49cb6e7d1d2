//! Loading: a folder of tenant files over `_defaults.toml` and the environment, each file's
//! secrets resolved, every problem collected with its file and field.

use super::*;

impl Tenants {
    /// A tenant by id.
    pub fn get(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.get(id)
    }

    /// Loads every `*.toml` of `dir` except `_defaults.toml` (and other `_`-prefixed files),
    /// validating each against `catalogue` and all of them against each other.
    pub fn load(dir: &Path, catalogue: &[&ContractSpec]) -> Result<Self, ConfigError> {
        Self::load_with(dir, catalogue, Secrets::Here)
    }

    /// [`Tenants::load`] on a machine that does not hold the secrets the files name by
    /// environment variable (`token_env`, `hs256_secret_env`, `password_env`): every other
    /// rule is checked. What `mesh deploy` renders from; the secrets go into the deployment's
    /// own store (a Kubernetes Secret), never through the renderer.
    pub fn load_without_secrets(
        dir: &Path,
        catalogue: &[&ContractSpec],
    ) -> Result<Self, ConfigError> {
        Self::load_with(dir, catalogue, Secrets::Elsewhere)
    }

    /// [`Tenants::load`] for a process that serves only the tenants `serving` (a Kubernetes
    /// pod of one process group): every file is checked as [`Tenants::load`] checks it, but
    /// the secrets named by environment variable only for the tenants it serves. A pod is
    /// given its own group's secrets, never another group's.
    pub fn load_serving(
        dir: &Path,
        catalogue: &[&ContractSpec],
        serving: &[String],
    ) -> Result<Self, ConfigError> {
        let tenants = Self::load_with(dir, catalogue, Secrets::Elsewhere)?;
        let defaults = dir.join(DEFAULTS_FILE);
        let defaults = defaults.exists().then_some(defaults);
        let mut errors = Vec::new();
        let mut checked = tenants.clone();
        for id in serving {
            let Some(file) = tenants.files.get(id) else {
                continue; // said by the caller, which knows what it was asked to serve
            };
            let folder = file.parent().unwrap_or(Path::new(".")).to_path_buf();
            match load_file_in(file, &folder, defaults.as_deref(), catalogue, Secrets::Here) {
                Ok(config) => {
                    checked.tenants.insert(id.clone(), config);
                }
                Err(ConfigError::Invalid(mut more)) => errors.append(&mut more),
                Err(other) => return Err(other),
            }
        }
        if errors.is_empty() {
            Ok(checked)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    fn load_with(
        dir: &Path,
        catalogue: &[&ContractSpec],
        secrets: Secrets,
    ) -> Result<Self, ConfigError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ConfigError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "toml")
                    && !p
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .starts_with('_')
            })
            .collect();
        files.sort();
        let defaults = dir.join(DEFAULTS_FILE);
        let defaults = defaults.exists().then_some(defaults);
        let mut errors = Vec::new();
        let mut tenants = BTreeMap::new();
        let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            let folder = file.parent().unwrap_or(Path::new(".")).to_path_buf();
            match load_file_in(&file, &folder, defaults.as_deref(), catalogue, secrets) {
                Ok(tenant) => {
                    let clashing = tenants.values().find_map(|t: &TenantConfig| {
                        let with = sources[t.id.as_str()].as_path();
                        clash(&tenant, [(t, with)]).map(|found| (t, with, found))
                    });
                    if let Some((other, other_file, (field, message))) = clashing {
                        // said of both files: a folder has no newcomer, and whichever file is
                        // the one to mend, its problem reads as it would on onboarding
                        errors.push(FieldError {
                            source: file.display().to_string(),
                            field: field.into(),
                            message,
                        });
                        if let Some((field, message)) = clash(other, [(&tenant, file.as_path())]) {
                            errors.push(FieldError {
                                source: other_file.display().to_string(),
                                field: field.into(),
                                message,
                            });
                        }
                        continue;
                    }
                    sources.insert(tenant.id.to_string(), file);
                    tenants.insert(tenant.id.to_string(), tenant);
                }
                Err(ConfigError::Invalid(mut more)) => errors.append(&mut more),
                Err(other) => return Err(other),
            }
        }
        if tenants.is_empty() && errors.is_empty() {
            errors.push(FieldError {
                source: dir.display().to_string(),
                field: String::new(),
                message: "no tenant files (`<tenant>.toml`) found".into(),
            });
        }
        if errors.is_empty() {
            Ok(Self {
                tenants,
                files: sources,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

pub(super) fn invalid(file_name: &str, field: &str, message: String) -> ConfigError {
    ConfigError::Invalid(vec![FieldError {
        source: file_name.to_owned(),
        field: field.to_owned(),
        message,
    }])
}

pub(super) fn check_file_name(file_name: &str) -> Result<(), ConfigError> {
    let plain = Path::new(file_name)
        .file_name()
        .map(|n| n.to_string_lossy())
        == Some(file_name.into());
    if !plain || !file_name.ends_with(".toml") || file_name.starts_with(['_', '.']) {
        return Err(invalid(
            file_name,
            "",
            "a tenant file name is `<tenant>.toml`: no folder, not starting with `_` or `.`".into(),
        ));
    }
    Ok(())
}

/// Loads and validates the text of a tenant file named `file_name` as if it were in the
/// tenants folder `dir`: over the folder's defaults, with the file's environment overrides, key
/// files relative to `dir`. Errors name the file as `file_name`. What every worker runs on the
/// tenant files its supervisor hands it: the same validation as start-up, on the same text.
pub fn load_text(
    dir: &Path,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    if content.len() > bounds::FILE_BYTES {
        // refused before anything is written anywhere
        return Err(ConfigError::Invalid(vec![FieldError {
            source: file_name.to_owned(),
            field: String::new(),
            message: format!(
                "{} bytes; a tenant file is at most {} bytes",
                content.len(),
                bounds::FILE_BYTES
            ),
        }]));
    }
    let scratch = tempfile::tempdir().map_err(|source| ConfigError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let file = scratch.path().join(file_name);
    std::fs::write(&file, content).map_err(|source| ConfigError::Io {
        path: file.clone(),
        source,
    })?;
    let defaults = dir.join(DEFAULTS_FILE);
    let defaults = defaults.exists().then_some(defaults);
    let shown = file.display().to_string();
    load_file_in(&file, dir, defaults.as_deref(), catalogue, Secrets::Here).map_err(|err| match err
    {
        ConfigError::Invalid(errors) => ConfigError::Invalid(
            errors
                .into_iter()
                .map(|mut e| {
                    if e.source == shown {
                        e.source = file_name.to_owned();
                    }
                    e
                })
                .collect(),
        ),
        other => other,
    })
}

/// Whether `config` takes what one of `others` (each with its file) holds already: its id, its
/// data namespace or its credential; the field and the problem. The one check a folder loading
/// and a file added to it both run.
pub(super) fn clash<'a>(
    config: &TenantConfig,
    others: impl IntoIterator<Item = (&'a TenantConfig, &'a Path)>,
) -> Option<(&'static str, String)> {
    let token = config.credentials.resolve();
    others.into_iter().find_map(|(other, file)| {
        // the other file by name, as every folder it may be read from names it
        let file = file.file_name().unwrap_or_default().to_string_lossy();
        if other.id == config.id {
            Some((
                "id",
                format!("duplicate tenant id \"{}\": {file} declares it already", config.id),
            ))
        } else if other.data_namespace == config.data_namespace {
            Some((
                "data_namespace",
                format!(
                    "{:?} is already the data namespace of tenant {} ({file}); tenants never share data",
                    config.data_namespace, other.id
                ),
            ))
        } else if !token.is_empty() && other.credentials.resolve() == token {
            Some((
                "credentials",
                format!(
                    "the same credential as tenant {} ({file}): each business line's backend holds its own",
                    other.id
                ),
            ))
        } else {
            None
        }
    })
}

/// The environment prefix of a tenant file's overrides: `MESH_TENANT_<STEM>__`.
pub fn env_prefix(file: &Path) -> String {
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    format!("MESH_TENANT_{}__", stem.to_uppercase().replace('-', "_"))
}

/// Loads and validates one tenant file over `defaults`.
pub fn load_file(
    file: &Path,
    defaults: Option<&Path>,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    load_file_in(
        file,
        file.parent().unwrap_or(Path::new(".")),
        defaults,
        catalogue,
        Secrets::Here,
    )
}

/// Whether the secrets a tenant file names by environment variable are set where it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Secrets {
    /// Here: a variable that is not set is an error.
    Here,
    /// In the deployment's own store (rendering its manifests): not checked here.
    Elsewhere,
}

/// [`load_file`], with the key files it names relative to `folder`.
pub(super) fn load_file_in(
    file: &Path,
    folder: &Path,
    defaults: Option<&Path>,
    catalogue: &[&ContractSpec],
    secrets: Secrets,
) -> Result<TenantConfig, ConfigError> {
    if !file.exists() {
        return Err(ConfigError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such tenant file"),
        });
    }
    for path in std::iter::once(file).chain(defaults) {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        if bytes > bounds::FILE_BYTES as u64 {
            return Err(ConfigError::Invalid(vec![FieldError {
                source: path.display().to_string(),
                field: String::new(),
                message: format!(
                    "{bytes} bytes; a tenant file is at most {} bytes",
                    bounds::FILE_BYTES
                ),
            }]));
        }
    }
    let mut figment = Figment::new();
    if let Some(defaults) = defaults {
        figment = figment.merge(Toml::file_exact(defaults));
    }
    let figment = figment
        .merge(Toml::file_exact(file))
        .merge(Env::prefixed(&env_prefix(file)).split("__"));
    let mut config: TenantConfig = figment.extract().map_err(|err| {
        ConfigError::Invalid(field_errors(err, file, |keys| {
            format!("{}{}", env_prefix(file), keys.join("__").to_uppercase())
        }))
    })?;
    let id = config.id.to_string();
    if let Some(users) = config.users.as_mut() {
        users.resolve_paths(folder);
        users.default_audience(&id);
    }
    config.credentials.read_file(folder);
    let errors = check_config(&config, file, catalogue, secrets);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}
