//! Validation: what a tenant file may say (identity, credentials, broker, services against the
//! contracts, switches and rules, limits and the dependency graph), and what a new or changed
//! file may not change.

use super::load::Secrets;
use super::*;

/// Validates a tenant file that is not in the tenants folder `dir` yet, exactly as
/// [`Tenants::load`] will once it is there: over the folder's defaults and the file's environment
/// overrides, against the catalogue, and against the tenants `existing` already (id, data
/// namespace, file name). Errors name the file as `file_name`. What `meshctl tenant check` and
/// `tenant add` run.
pub fn check_new(
    dir: &Path,
    existing: &Tenants,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    check_file_name(file_name)?;
    if dir.join(file_name).exists() {
        return Err(invalid(
            file_name,
            "",
            format!(
                "{} exists already in {}; to change a tenant, `meshctl tenant update` it",
                file_name,
                dir.display()
            ),
        ));
    }
    let config = load_text(dir, file_name, content, catalogue)?;
    let others = existing
        .tenants
        .values()
        .map(|t| (t, existing.files[t.id.as_str()].as_path()));
    if let Some((field, message)) = clash(&config, others) {
        return Err(invalid(file_name, field, message));
    }
    Ok(config)
}

/// Validates a new text for the file of a tenant `existing` serves: the same rules as
/// [`check_new`], against every other tenant; the id (and so the file) and the data namespace
/// stay the tenant's, and its process changes only by a move ([`with_process`], which callers
/// validate with `existing` already holding the moved file).
pub fn check_update(
    dir: &Path,
    existing: &Tenants,
    file_name: &str,
    content: &str,
    catalogue: &[&ContractSpec],
) -> Result<TenantConfig, ConfigError> {
    check_file_name(file_name)?;
    let Some((id, _)) = existing
        .files
        .iter()
        .find(|(_, path)| path.file_name().is_some_and(|n| n == file_name))
    else {
        return Err(invalid(
            file_name,
            "",
            format!(
                "no tenant of {} comes from {file_name}; a new tenant is onboarded with \
                 `meshctl tenant add`",
                dir.display()
            ),
        ));
    };
    let config = load_text(dir, file_name, content, catalogue)?;
    let old = &existing.tenants[id.as_str()];
    if old.data_namespace != config.data_namespace {
        return Err(invalid(
            file_name,
            "data_namespace",
            format!(
                "a tenant's data stays where it is ({:?}); an update cannot move it to {:?} (its \
                 stored messages would be left behind)",
                old.data_namespace, config.data_namespace
            ),
        ));
    }
    if old.isolation.process != config.isolation.process && config.id.as_str() == id {
        return Err(invalid(
            file_name,
            "isolation.process",
            format!(
                "a tenant changes process with `meshctl tenant move {id} --process {}`, which \
                 moves it without failing its calls",
                match config.isolation.process {
                    ProcessIsolation::Own => "own",
                    ProcessIsolation::Shared => "shared",
                }
            ),
        ));
    }
    if config.id.as_str() != id {
        return Err(invalid(
            file_name,
            "id",
            format!(
                "{file_name} serves tenant {id}; an update cannot rename it to {:?}",
                config.id.as_str()
            ),
        ));
    }
    let others = existing
        .tenants
        .values()
        .filter(|t| t.id.as_str() != id)
        .map(|t| (t, existing.files[t.id.as_str()].as_path()));
    if let Some((field, message)) = clash(&config, others) {
        return Err(invalid(file_name, field, message));
    }
    Ok(config)
}

pub(super) fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= bounds::NAMESPACE_CHARS
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The problems found in one tenant file, each naming the file.
pub(super) struct Problems {
    source: String,
    list: Vec<FieldError>,
    /// Where the secrets the file names are (an unset one is a problem only here).
    secrets: Secrets,
}

impl Problems {
    fn add(&mut self, field: String, message: String) {
        self.list.push(FieldError {
            source: self.source.clone(),
            field,
            message,
        });
    }

    /// A secret the file names (an environment variable, a mounted file) that is not there: a
    /// problem where the file loads to serve, not where the deployment only renders it (the
    /// secret is the deployment's to provide).
    fn add_missing_secret(&mut self, field: String, message: String) {
        if self.secrets == Secrets::Here {
            self.add(field, message);
        }
    }
}

/// Every rule a tenant file must keep, section by section; every problem found, not the first.
pub(super) fn check_config(
    config: &TenantConfig,
    file: &Path,
    catalogue: &[&ContractSpec],
    secrets: Secrets,
) -> Vec<FieldError> {
    let mut problems = Problems {
        source: file.display().to_string(),
        list: Vec::new(),
        secrets,
    };
    check_identity(&mut problems, config, file);
    check_credentials(&mut problems, config);
    check_broker(&mut problems, config);
    let known = check_services(&mut problems, config, catalogue);
    check_switches_and_rules(&mut problems, config);
    check_limits_and_graph(&mut problems, config);
    let runs = |service: &str| config.enabled_services().any(|(name, _)| name == service);
    let runs_message = runs("message");
    if !config.channels.is_empty() && !runs("channel") {
        problems.add(
            "services.channel.enabled".into(),
            "is not true, yet the file declares channels: turn the channel service on to serve them".into(),
        );
    }
    for (field, message) in config.web.problems() {
        problems.add(field, message);
    }
    for (name, channel) in &config.channels {
        for problem in crate::channels::problems(name, channel, runs_message) {
            if problem.missing_secret {
                problems.add_missing_secret(problem.field, problem.message);
            } else {
                problems.add(problem.field, problem.message);
            }
        }
    }
    // each service's settings, against their declarations (for a known service only: an
    // unknown one was refused above)
    for (name, service) in &config.services {
        if known.contains_key(name.as_str()) {
            let source = problems.source.clone();
            problems.list.extend(crate::settings::check(
                &source,
                name,
                service.enabled,
                &service.settings,
            ));
        }
    }
    problems.list
}

/// Its id, its file name, display name and data namespace.
pub(super) fn check_identity(problems: &mut Problems, config: &TenantConfig, file: &Path) {
    // one name for one business line: its file, its environment prefix, its id
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    if stem != config.id.as_str() {
        problems.add(
            "id".into(),
            format!(
                "\"{}\" differs from the file name: a tenant file is named after its id ({}.toml)",
                config.id, config.id
            ),
        );
    }
    if RESERVED_IDS.contains(&config.id.as_str()) {
        problems.add(
            "id".into(),
            format!(
                "\"{}\" is reserved: the mesh uses it itself (reserved: {})",
                config.id,
                RESERVED_IDS.join(", ")
            ),
        );
    }
    if config.display_name.trim().is_empty() {
        problems.add("display_name".into(), "must not be empty".into());
    }
    let chars = config.display_name.chars().count();
    if chars > bounds::DISPLAY_NAME_CHARS {
        problems.add(
            "display_name".into(),
            format!(
                "{chars} characters; at most {} (it is shown in every operator's listing)",
                bounds::DISPLAY_NAME_CHARS
            ),
        );
    }
    if !is_namespace(&config.data_namespace) {
        let chars = config.data_namespace.chars().count();
        let mut shown: String = config.data_namespace.chars().take(60).collect();
        if chars > 60 {
            shown.push('…');
        }
        problems.add(
            "data_namespace".into(),
            format!(
                "{shown:?} ({chars} characters) must be 1-{} lowercase letters, digits or '_', starting with a letter (it names a database schema)",
                bounds::NAMESPACE_CHARS
            ),
        );
    }
    let max_threads = bounds::max_threads();
    if config.isolation.threads > max_threads {
        problems.add(
            "isolation.threads".into(),
            format!(
                "{} threads; at most {max_threads} on this machine (4 per core, 8 to 256)",
                config.isolation.threads
            ),
        );
    }
}

/// The backend credential (one rule for every credential) and the users' token keys.
pub(super) fn check_credentials(problems: &mut Problems, config: &TenantConfig) {
    let credentials = &config.credentials;
    let set = [
        credentials.token.is_some(),
        credentials.token_env.is_some(),
        credentials.token_file.is_some(),
    ];
    if let Some(file) = &credentials.token_file
        && set.iter().filter(|s| **s).count() == 1
    {
        match &credentials.file_token {
            Some(token) if !token.is_empty() => {
                let holds = format!("file {} holds", file.display());
                if let Err(message) = crate::check_credential(token, &holds) {
                    problems.add("credentials.token_file".into(), message);
                }
            }
            _ => problems.add_missing_secret(
                "credentials.token_file".into(),
                format!(
                    "file {} {}",
                    file.display(),
                    credentials
                        .file_problem
                        .as_deref()
                        .unwrap_or("cannot be read")
                ),
            ),
        }
    }
    match (&config.credentials.token, &config.credentials.token_env) {
        _ if set.iter().filter(|s| **s).count() > 1 => problems.add("credentials".into(), "set one of `token`, `token_env` and `token_file`, not several".into()),
        (None, None) if credentials.token_file.is_some() => {}
        (None, None) => problems.add("credentials".into(), "missing: set `token_env` (the environment variable holding the tenant's token), `token_file` (a file holding it, e.g. a mounted secret) or, for development, `token`".into()),
        (Some(_), Some(_)) => unreachable!("two set: refused above"),
        (Some(token), None) => {
            if let Err(message) = crate::check_credential(token, "has") {
                problems.add("credentials.token".into(), message);
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => {
                let holds = format!("environment variable {var} holds");
                if let Err(message) = crate::check_credential(&token, &holds) {
                    problems.add("credentials.token_env".into(), message);
                }
            }
            _ => problems.add_missing_secret(
                "credentials.token_env".into(),
                format!("environment variable {var} is not set"),
            ),
        },
    }
    if let Some(users) = &config.users
        && let Err((field, message)) = users.verifier()
    {
        // the key's variable not set is a missing secret; any other problem of the key is not
        let unset = |var: &String| std::env::var(var).map_or(true, |v| v.is_empty());
        if field == "users.hs256_secret_env" && users.hs256_secret_env.as_ref().is_some_and(unset) {
            problems.add_missing_secret(field.into(), message);
        } else {
            problems.add(field.into(), message);
        }
    }
}

/// Where its events go.
pub(super) fn check_broker(problems: &mut Problems, config: &TenantConfig) {
    let broker = &config.broker;
    for (field, value) in [
        ("broker.vhost", &broker.vhost),
        ("broker.user", &broker.user),
    ] {
        if let Some(value) = value
            && value.chars().count() > bounds::NAME_CHARS
        {
            problems.add(
                field.into(),
                format!("longer than {} characters", bounds::NAME_CHARS),
            );
        }
    }
    if broker.vhost.as_deref().is_some_and(|v| v.trim().is_empty()) {
        problems.add(
            "broker.vhost".into(),
            "is empty; leave it out to use the vhost of MESH_AMQP_URI".into(),
        );
    }
    match (&broker.user, &broker.password_env) {
        (Some(_), None) => problems.add(
            "broker.password_env".into(),
            "is missing: the environment variable holding broker.user's password".into(),
        ),
        (None, Some(_)) => problems.add(
            "broker.user".into(),
            "is missing: password_env is the password of which broker user?".into(),
        ),
        (Some(_), Some(var)) if std::env::var(var).map_or(true, |v| v.is_empty()) => problems
            .add_missing_secret(
                "broker.password_env".into(),
                format!("environment variable {var} is not set"),
            ),
        _ => {}
    }
}

/// Each service it names: known, at a contract major that exists, its dependencies run. The
/// known services and their majors are returned.
pub(super) fn check_services<'a>(
    problems: &mut Problems,
    config: &TenantConfig,
    catalogue: &[&'a ContractSpec],
) -> BTreeMap<&'a str, Vec<u32>> {
    let known: BTreeMap<&str, Vec<u32>> =
        catalogue.iter().fold(BTreeMap::new(), |mut map, spec| {
            map.entry(spec.name)
                .or_insert_with(Vec::new)
                .push(spec.major);
            map
        });
    for (name, service) in &config.services {
        let field = format!("services.{name}");
        let Some(majors) = known.get(name.as_str()) else {
            problems.add(
                field,
                format!(
                    "unknown service {name:?}; known services: {}",
                    known.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        if !majors.contains(&service.version.get()) {
            let available: Vec<String> = majors.iter().map(|m| format!("v{m}")).collect();
            problems.add(
                format!("{field}.version"),
                format!(
                    "\"{}\" is not a contract version of {name}; available: {}",
                    service.version,
                    available.join(", ")
                ),
            );
        }
        if let Some(grey) = &service.grey {
            let field = format!("{field}.grey");
            if !majors.contains(&grey.version.get()) {
                let available: Vec<String> = majors.iter().map(|m| format!("v{m}")).collect();
                problems.add(
                    format!("{field}.version"),
                    format!(
                        "\"{}\" is not a contract version of {name}; available: {}",
                        grey.version,
                        available.join(", ")
                    ),
                );
            } else if grey.version <= service.version {
                problems.add(
                    format!("{field}.version"),
                    format!(
                        "a grey release is of a newer major than the {} everyone runs",
                        service.version
                    ),
                );
            }
            if !service.enabled {
                problems.add(
                    field.clone(),
                    format!("{name} is not enabled for this tenant: nothing to release"),
                );
            }
            if grey.percent > 100 {
                problems.add(
                    format!("{field}.percent"),
                    format!("{} is not a share of users (0-100)", grey.percent),
                );
            }
            if grey.users.is_empty() && grey.percent == 0 {
                problems.add(
                    field.clone(),
                    "releases to nobody: list users or give a percent".into(),
                );
            }
            for user in &grey.users {
                if let Err(status) = mesh_contract::fields::id("user id", user) {
                    problems.add(format!("{field}.users"), status.message().to_owned());
                }
            }
        }
        if service.enabled {
            for dependency in &service.depends_on {
                if !config.services.get(dependency).is_some_and(|d| d.enabled) {
                    problems.add(
                        format!("{field}.depends_on"),
                        format!("{name} depends on {dependency:?}, which this tenant does not run"),
                    );
                }
            }
        }
    }
    known
}

/// Initial switches and automatic degradation rules.
pub(super) fn check_switches_and_rules(problems: &mut Problems, config: &TenantConfig) {
    for name in &config.switches.services_off {
        if !config.services.contains_key(name) {
            problems.add(
                "switches.services_off".into(),
                format!("{name:?} is not a service of this tenant"),
            );
        }
    }
    if let Some(tier) = config.switches.tiers_off_from
        && tier > mesh_contract::Tier::MAX
    {
        problems.add(
            "switches.tiers_off_from".into(),
            format!("{tier} is not a tier (0, 1 or 2)"),
        );
    }
    let mut rule_names = std::collections::HashSet::new();
    for (i, rule) in config.auto_degrade.iter().enumerate() {
        let field = |name: &str| format!("auto_degrade[{i}].{name}");
        if rule.name.trim().is_empty() {
            problems.add(field("name"), "must not be empty".into());
        } else if rule.name.chars().count() > bounds::NAME_CHARS {
            problems.add(
                field("name"),
                format!("longer than {} characters", bounds::NAME_CHARS),
            );
        } else if !rule_names.insert(rule.name.as_str()) {
            problems.add(
                field("name"),
                format!("{:?} names another rule of this tenant already", rule.name),
            );
        }
        let max = mesh_contract::Tier::MAX;
        if rule.watch_tier > max {
            problems.add(
                field("watch_tier"),
                format!("{} is not a tier (0, 1 or 2)", rule.watch_tier),
            );
        }
        if rule.switch_off_tiers_from > max {
            problems.add(
                field("switch_off_tiers_from"),
                format!("{} is not a tier (0, 1 or 2)", rule.switch_off_tiers_from),
            );
        } else if rule.switch_off_tiers_from <= rule.watch_tier {
            problems.add(
                field("switch_off_tiers_from"),
                format!(
                    "must be above watch_tier ({}): a rule sheds less important work to protect the calls it watches",
                    rule.watch_tier
                ),
            );
        }
        match (rule.p99_ms_above, rule.error_rate_above) {
            (None, None) => problems.add(
                field("p99_ms_above"),
                "set p99_ms_above or error_rate_above (or both): the rule has nothing to watch"
                    .into(),
            ),
            (Some(0), _) => problems.add(field("p99_ms_above"), "must be at least 1".into()),
            (_, Some(rate)) if !(rate > 0.0 && rate <= 1.0) => problems.add(
                field("error_rate_above"),
                format!("{rate} is not a share between 0 (excluded) and 1"),
            ),
            _ => {}
        }
        if rule.window_secs == 0 {
            problems.add(field("window_secs"), "must be at least 1".into());
        }
    }
}

/// Admission limits, and no dependency cycle.
pub(super) fn check_limits_and_graph(problems: &mut Problems, config: &TenantConfig) {
    let limits = &config.limits;
    for (field, value) in [
        ("limits.requests_per_second", limits.requests_per_second),
        ("limits.burst", limits.burst),
        (
            "limits.max_concurrent_per_dependency",
            limits.max_concurrent_per_dependency,
        ),
        (
            "limits.max_terminals_per_user",
            limits.max_terminals_per_user,
        ),
        ("limits.max_terminals", limits.max_terminals),
    ] {
        if value == 0 {
            problems.add(field.into(), "must be at least 1".into());
        }
    }
    if limits.max_terminals_per_user > bounds::TERMINALS_PER_USER {
        problems.add(
            "limits.max_terminals_per_user".into(),
            format!(
                "{} is more than one user's terminals need; at most {}",
                limits.max_terminals_per_user,
                bounds::TERMINALS_PER_USER
            ),
        );
    }
    if limits.max_terminals > bounds::TERMINALS_PER_TENANT {
        problems.add(
            "limits.max_terminals".into(),
            format!(
                "{} is more than a node holds; at most {}",
                limits.max_terminals,
                bounds::TERMINALS_PER_TENANT
            ),
        );
    }
    let graph = crate::graph::DependencyGraph::of(
        config
            .enabled_services()
            .map(|(name, service)| (name, &service.depends_on)),
    );
    if let Err(cycle) = graph.check_acyclic() {
        problems.add(
            format!("services.{}.depends_on", cycle.path[0]),
            cycle.to_string(),
        );
    }
}
