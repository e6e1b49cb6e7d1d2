//! Tenant files: the shipped ones load with their business differences; a new file is a new
//! tenant; environment overrides apply; every bad file gets an error naming file and field.

// figment::Jail (the only safe way to set environment variables in a test) fixes its closure's
// error type to figment::Error, which is large.
#![allow(clippy::result_large_err)]

use crate::common;

use std::path::Path;

use common::{folder, shipped};

use mesh_runtime::{
    ConfigError, Tenants,
    config::{ProcessIsolation, load_file},
};

const ACME: &str = r#"
id = "acme"
display_name = "Acme"
data_namespace = "acme"
[credentials]
token = "acme-secret-token"
"#;

/// A tenant only the environment-override test uses: environment variables are process-wide,
/// so no other test may read a file whose overrides it sets.
static ZETA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| ACME.replace("acme", "zeta").replace("Acme", "Zeta"));

/// Every problem of a folder that must not load, as `source: field: message` lines.
fn problems(dir: &Path) -> Vec<String> {
    match Tenants::load(dir, mesh_api::CONTRACTS) {
        Err(ConfigError::Invalid(errors)) => errors.iter().map(|e| e.to_string()).collect(),
        Err(other) => panic!("expected field errors, got {other}"),
        Ok(_) => panic!("the folder must be refused"),
    }
}

fn assert_problem(dir: &tempfile::TempDir, file: &str, expected: &str) {
    let problems = problems(dir.path());
    let prefix = dir.path().join(file).display().to_string();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&prefix) && p.contains(expected)),
        "no problem in {file} containing {expected:?}: {problems:#?}"
    );
}

#[test]
fn shipped_tenants_load_with_their_differences() {
    let tenants = Tenants::load(&shipped(), mesh_api::CONTRACTS).expect("tenants/ is valid");
    let ids: Vec<&String> = tenants.tenants.keys().collect();
    assert_eq!(ids, ["finance", "mall", "paipai"]);

    let mall = tenants.get("mall").unwrap();
    // what mall runs, read from the files themselves: every service of the defaults, unless
    // the defaults or mall's file turn it off (a service added later counts by itself)
    let file = |name: &str| -> toml::Table {
        std::fs::read_to_string(shipped().join(name))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (defaults, mall_file) = (file("_defaults.toml"), file("mall.toml"));
    let enabled_in = |table: &toml::Table, service: &str| {
        table
            .get("services")
            .and_then(|s| s.get(service))
            .and_then(|s| s.get("enabled"))
            .and_then(toml::Value::as_bool)
    };
    let expected: Vec<&str> = defaults["services"]
        .as_table()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|service| {
            enabled_in(&mall_file, service)
                .or(enabled_in(&defaults, service))
                .unwrap_or(true)
        })
        .collect();
    let runs: Vec<&str> = mall.enabled_services().map(|(name, _)| name).collect();
    assert_eq!(runs, expected, "mall runs what its files say");
    assert!(runs.contains(&"message") && !runs.contains(&"push"));
    assert_eq!(
        mall.services["recommend"].settings["max_suggestions"].to_i128(),
        Some(5)
    );
    assert_eq!(mall.limits.requests_per_second, 500, "defaults apply");

    let finance = tenants.get("finance").unwrap();
    assert!(!finance.services["recommend"].enabled);
    assert_eq!(
        finance.services["message"].settings["retention_days"].to_i128(),
        Some(2555)
    );
    assert_eq!(finance.isolation.process, ProcessIsolation::Own);
    assert_eq!(finance.isolation.threads, 2);
    assert_eq!(finance.limits.requests_per_second, 200);
    assert_eq!(
        finance.limits.max_concurrent_per_dependency, 64,
        "unset limits keep defaults"
    );

    let paipai = tenants.get("paipai").unwrap();
    assert_eq!(paipai.services["order"].version.to_string(), "v2");
    assert_eq!(mall.services["order"].version.get(), 1);
}

#[test]
fn a_new_tenant_file_is_a_new_tenant() {
    let dir = folder(&[("acme.toml", ACME)]);
    let tenants = Tenants::load(dir.path(), mesh_api::CONTRACTS).unwrap();
    let acme = tenants.get("acme").unwrap();
    assert_eq!(acme.display_name, "Acme");
    assert_eq!(acme.services["message"].depends_on, ["locator", "gateway"]);
    assert_eq!(tenants.files["acme"], dir.path().join("acme.toml"));
}

#[test]
fn environment_overrides_win_and_bad_ones_name_the_variable() {
    figment::Jail::expect_with(|jail| {
        let dir = folder(&[("zeta.toml", &ZETA)]);
        jail.set_env("MESH_TENANT_ZETA__LIMITS__BURST", "7");
        jail.set_env("MESH_TENANT_ZETA__DISPLAY_NAME", "Zeta Corp");
        let zeta = load_file(
            &dir.path().join("zeta.toml"),
            Some(&dir.path().join("_defaults.toml")),
            mesh_api::CONTRACTS,
        )
        .unwrap();
        assert_eq!(zeta.limits.burst, 7);
        assert_eq!(zeta.display_name, "Zeta Corp");

        jail.set_env("MESH_TENANT_ZETA__LIMITS__BURST", "lots");
        let problems = problems(dir.path());
        assert!(
            problems.iter().any(|p| p.starts_with(
                "environment variable MESH_TENANT_ZETA__LIMITS__BURST: field `limits.burst`"
            )),
            "{problems:#?}"
        );
        Ok(())
    });
}

#[test]
fn credentials_from_the_environment() {
    figment::Jail::expect_with(|jail| {
        let body = ACME.replace(
            "token = \"acme-secret-token\"",
            "token_env = \"ACME_TOKEN_FOR_TEST\"",
        );
        let dir = folder(&[("acme.toml", &body)]);
        assert_problem(
            &dir,
            "acme.toml",
            "field `credentials.token_env`: environment variable ACME_TOKEN_FOR_TEST is not set",
        );
        jail.set_env("ACME_TOKEN_FOR_TEST", "from-the-environment");
        let tenants = Tenants::load(dir.path(), mesh_api::CONTRACTS).unwrap();
        let directory = mesh_runtime::TenantDirectory::from_tenants(
            &tenants,
            mesh_runtime::layers::Catalogue(mesh_api::CONTRACTS),
        );
        let ctx = mesh_contract::RequestContext::new(mesh_contract::TenantId::new("acme").unwrap())
            .with_token("from-the-environment");
        assert!(directory.authenticate(ctx).is_ok());
        Ok(())
    });
}

#[test]
fn unknown_service_is_named_with_the_known_ones() {
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[services.payments]\nversion = \"v1\"\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        &format!(
            "field `services.payments`: unknown service \"payments\"; known services: {}",
            known_services()
        ),
    );
}

#[test]
fn unknown_contract_version_is_named_with_the_available_ones() {
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[services.order]\nversion = \"v3\"\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `services.order.version`: \"v3\" is not a contract version of order; available: v1, v2",
    );
}

#[test]
fn a_file_not_named_after_its_id_is_refused() {
    let dir = folder(&[
        ("acme.toml", ACME),
        (
            "acme-copy.toml",
            &ACME.replace("data_namespace = \"acme\"", "data_namespace = \"acme2\""),
        ),
    ]);
    assert_problem(
        &dir,
        "acme-copy.toml",
        "field `id`: \"acme\" differs from the file name: a tenant file is named after its id (acme.toml)",
    );
}

#[test]
fn a_credential_two_tenants_share_is_refused_naming_both() {
    let bolt = ACME
        .replace("id = \"acme\"", "id = \"bolt\"")
        .replace("data_namespace = \"acme\"", "data_namespace = \"bolt\"");
    let dir = folder(&[("acme.toml", ACME), ("bolt.toml", &bolt)]);
    // the same words whether the folder loads or a file is added to it: both tenants named,
    // the other by its file too
    let expected = "field `credentials`: the same credential as tenant acme (acme.toml)";
    assert_problem(&dir, "bolt.toml", expected);
    // and as onboarding checks a new file against the folder
    let ok = folder(&[("acme.toml", ACME)]);
    let existing = Tenants::load(ok.path(), mesh_api::CONTRACTS).unwrap();
    let refused = mesh_runtime::config::check_new(
        ok.path(),
        &existing,
        "bolt.toml",
        &bolt,
        mesh_api::CONTRACTS,
    )
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the same credential as tenant acme (acme.toml)"),
        "{refused}"
    );
}

#[test]
fn shared_data_namespace_is_refused() {
    let other = ACME
        .replace("id = \"acme\"", "id = \"bolt\"")
        .replace("Acme", "Bolt");
    let dir = folder(&[("acme.toml", ACME), ("bolt.toml", &other)]);
    assert_problem(
        &dir,
        "bolt.toml",
        "field `data_namespace`: \"acme\" is already the data namespace of",
    );
}

#[test]
fn missing_required_field_is_named() {
    let dir = folder(&[("acme.toml", &ACME.replace("display_name = \"Acme\"\n", ""))]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `display_name`: missing required field `display_name`",
    );
}

#[test]
fn bad_values_are_named() {
    let dir = folder(&[(
        "acme.toml",
        &format!(
            "{ACME}
[isolation]
threads = -1
"
        ),
    )]);
    assert_problem(&dir, "acme.toml", "field `isolation.threads`");
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[isolation]\nprocess = \"private\"\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `isolation.process`: unknown variant: found `private`, expected ``shared` or `own``",
    );
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[limits]\nrequests_per_second = 0\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `limits.requests_per_second`: must be at least 1",
    );
    let dir = folder(&[(
        "acme.toml",
        &ACME.replace("id = \"acme\"", "id = \"Acme Inc\""),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `id`: invalid tenant id \"Acme Inc\"",
    );
    let dir = folder(&[(
        "acme.toml",
        &ACME.replace(
            "data_namespace = \"acme\"",
            "data_namespace = \"acme; drop\"",
        ),
    )]);
    assert_problem(&dir, "acme.toml", "field `data_namespace`");
}

#[test]
fn misspelt_field_is_named() {
    let dir = folder(&[("acme.toml", &format!("{ACME}\n[limts]\nburst = 3\n"))]);
    assert_problem(&dir, "acme.toml", "unknown field: found `limts`");
}

#[test]
fn missing_credentials_are_named() {
    let dir = folder(&[(
        "acme.toml",
        &ACME.replace("[credentials]\ntoken = \"acme-secret-token\"\n", ""),
    )]);
    assert_problem(&dir, "acme.toml", "field `credentials`");
}

#[test]
fn dependency_on_a_service_the_tenant_does_not_run_is_refused() {
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[services.locator]\nenabled = false\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `services.gateway.depends_on`: gateway depends on \"locator\", which this tenant does not run",
    );
}

#[test]
fn dependency_cycle_is_refused_and_named() {
    let dir = folder(&[(
        "acme.toml",
        &format!("{ACME}\n[services.locator]\ndepends_on = [\"message\"]\n"),
    )]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `services.locator.depends_on`: dependency cycle: locator -> message -> locator",
    );
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let dir = folder(&[("acme.toml", "id = \"acme\"\ndisplay_name = \n")]);
    let problems = problems(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("acme.toml") && p.contains("line 2")),
        "{problems:#?}"
    );
}

#[test]
fn every_file_and_every_rule_is_reported_at_once() {
    // a file that parses reports every rule it breaks; a file that does not parse reports its
    // first parse error; both files are reported
    let dir = folder(&[
        (
            "acme.toml",
            &format!("{ACME}\n[services.order]\nversion = \"v9\"\n[limits]\nburst = 0\n"),
        ),
        ("bolt.toml", "id = \"bolt\"\n"),
    ]);
    let problems = problems(dir.path());
    let acme = dir.path().join("acme.toml").display().to_string();
    let bolt = dir.path().join("bolt.toml").display().to_string();
    assert_eq!(
        problems.iter().filter(|p| p.starts_with(&acme)).count(),
        2,
        "{problems:#?}"
    );
    assert_eq!(
        problems.iter().filter(|p| p.starts_with(&bolt)).count(),
        1,
        "{problems:#?}"
    );
}

/// The services of the contract catalogue, as the config error lists them.
fn known_services() -> String {
    let mut names: Vec<&str> = mesh_api::CONTRACTS.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    names.join(", ")
}

#[test]
fn reserved_ids_are_refused() {
    // `shared` would start a second process group named shared; the others are the mesh's own
    for id in ["shared", "system", "mesh", "admin", "control"] {
        let body = ACME
            .replace("id = \"acme\"", &format!("id = \"{id}\""))
            .replace(
                "data_namespace = \"acme\"",
                &format!("data_namespace = \"{id}_data\""),
            );
        let dir = folder(&[(&format!("{id}.toml"), &body)]);
        assert_problem(
            &dir,
            &format!("{id}.toml"),
            &format!("field `id`: \"{id}\" is reserved"),
        );
    }
}

#[test]
fn every_text_and_the_file_itself_are_bounded() {
    // a display name every operator's listing would carry
    let long_name = ACME.replace("\"Acme\"", &format!("\"{}\"", "A".repeat(129)));
    let dir = folder(&[("acme.toml", &long_name)]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `display_name`: 129 characters; at most 128",
    );
    // a namespace PostgreSQL would cut (the schema is mesh_<namespace>)
    let long_namespace = ACME.replace(
        "data_namespace = \"acme\"",
        &format!("data_namespace = \"{}\"", "n".repeat(59)),
    );
    let dir = folder(&[("acme.toml", &long_namespace)]);
    assert_problem(&dir, "acme.toml", "must be 1-58 lowercase letters");
    // threads past what the machine runs
    let threads = format!("{ACME}[isolation]\nthreads = 1024\n");
    let dir = folder(&[("acme.toml", &threads)]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `isolation.threads`: 1024 threads; at most",
    );
    // the file itself: 3 MB of display name is refused before it is parsed
    let huge = ACME.replace("\"Acme\"", &format!("\"{}\"", "A".repeat(3 << 20)));
    let dir = folder(&[("acme.toml", &huge)]);
    let problems = problems(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("acme.toml") && p.contains("a tenant file is at most 65536 bytes")),
        "{problems:#?}"
    );
    // and the same through the text a running mesh is handed (`meshctl tenant add`)
    let err = mesh_runtime::config::load_text(dir.path(), "acme.toml", &huge, mesh_api::CONTRACTS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme.toml") && err.contains("at most 65536 bytes"),
        "{err}"
    );
}

#[test]
fn a_token_file_is_read_whenever_the_tenant_is_loaded() {
    let with_file = ACME.replace(
        "token = \"acme-secret-token\"",
        "token_file = \"secrets/acme-token\"",
    );
    let dir = folder(&[("acme.toml", &with_file)]);
    // not there yet: refused, naming the file
    assert_problem(
        &dir,
        "acme.toml",
        "field `credentials.token_file`: file secrets/acme-token cannot be read (",
    );
    // the secret mounted (whitespace around it ignored): the tenant loads with it
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/acme-token"),
        "acme-token-from-a-file\n",
    )
    .unwrap();
    let tenants = Tenants::load(dir.path(), mesh_api::CONTRACTS).unwrap();
    assert_eq!(
        tenants.get("acme").unwrap().credentials.resolve(),
        "acme-token-from-a-file"
    );
    // not a regular file (a device that never ends), or too large: refused, saying which
    let device = ACME.replace(
        "token = \"acme-secret-token\"",
        "token_file = \"/dev/zero\"",
    );
    let dir_device = folder(&[("acme.toml", &device)]);
    assert_problem(
        &dir_device,
        "acme.toml",
        "file /dev/zero is not a regular file",
    );
    // rotated on disk: the next load (a `tenant update`) reads the new one
    std::fs::write(
        dir.path().join("secrets/acme-token"),
        "acme-token-rotated-1",
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join("acme.toml")).unwrap();
    let again =
        mesh_runtime::config::load_text(dir.path(), "acme.toml", &text, mesh_api::CONTRACTS)
            .unwrap();
    assert_eq!(again.credentials.resolve(), "acme-token-rotated-1");
    // one way to give it, not two
    let both = with_file.replace(
        "token_file = ",
        "token = \"acme-secret-token\"\ntoken_file = ",
    );
    let dir = folder(&[("acme.toml", &both)]);
    assert_problem(
        &dir,
        "acme.toml",
        "set one of `token`, `token_env` and `token_file`",
    );
}

/// A channel's table is checked with the file: the service it needs, its kind's fields, its
/// secrets; each problem names the file and the field.
#[test]
fn a_bad_channel_is_refused_naming_file_and_field() {
    let file = format!(
        "{ACME}[channels.wx]\nkind = \"wechat\"\nagent = \"agent 1\"\nsecret = \"0123456789abcdef\"\n\
         [channels.site]\nkind = \"webhook\"\nagent = \"agent-1\"\nsecret_env = \"MESH_TEST_NO_SUCH_SECRET\"\n\
         send_url = \"ftp://x\"\n[channels.Bad]\nkind = \"telegram\"\nagent = \"a\"\n"
    );
    let dir = folder(&[("acme.toml", &file)]);
    assert_problem(
        &dir,
        "acme.toml",
        "field `channels.Bad.kind`: unknown variant: found `telegram`",
    );
    let file = file.replace("[channels.Bad]\nkind = \"telegram\"\nagent = \"a\"\n", "");
    let dir = folder(&[("acme.toml", &file)]);
    for expected in [
        "field `services.channel.enabled`: is not true, yet the file declares channels",
        "field `channels.wx.agent`: agent",
        "field `channels.wx.account`: is missing",
        "field `channels.wx.app_secret`: missing",
        "field `channels.site.secret_env`: environment variable MESH_TEST_NO_SUCH_SECRET is not set",
        "field `channels.site.send_url`:",
    ] {
        assert_problem(&dir, "acme.toml", expected);
    }
}

/// The other origins a tenant lets browsers call from are checked as origins (CORS matches
/// them byte for byte): a path, a wildcard or a trailing slash is refused naming the entry.
#[test]
fn an_allowed_origin_that_is_no_origin_is_refused_naming_the_entry() {
    let file = format!(
        "{ACME}[web]\nallowed_origins = [\"https://shop.example.com\", \"https://*.example.com\", \"http://localhost:5173/\"]\n"
    );
    let dir = folder(&[("acme.toml", &file)]);
    for expected in [
        "field `web.allowed_origins[1]`: \"https://*.example.com\" is not an origin",
        "field `web.allowed_origins[2]`: \"http://localhost:5173/\" is not an origin",
    ] {
        assert_problem(&dir, "acme.toml", expected);
    }
    let good = format!("{ACME}[web]\nallowed_origins = [\"https://shop.example.com\"]\n");
    let dir = folder(&[("acme.toml", &good)]);
    let tenants = Tenants::load(dir.path(), mesh_api::CONTRACTS).unwrap();
    assert_eq!(
        tenants.tenants["acme"].web.allowed_origins,
        ["https://shop.example.com"]
    );
}
