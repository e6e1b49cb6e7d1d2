//! The deployment file's unit tests.

use super::*;

#[test]
fn a_worker_is_handed_the_config_as_the_variables_it_reads() {
    let config = TelemetryConfig {
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        console: true,
        export_interval_ms: 250,
        prometheus_listen: Some("0.0.0.0:9464".into()),
        log_format: LogFormat::Json,
    };
    let env = config.to_env();
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(
        get("MESH_TELEMETRY_OTLP_ENDPOINT"),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(get("MESH_TELEMETRY_CONSOLE"), Some("true"));
    assert_eq!(get("MESH_TELEMETRY_LOG_FORMAT"), Some("json"));
    assert_eq!(get("MESH_TELEMETRY_EXPORT_INTERVAL_MS"), Some("250"));
    assert_eq!(
        get("MESH_TELEMETRY_PROMETHEUS_LISTEN"),
        Some("127.0.0.1:0"),
        "the node's address is the node's: its workers serve theirs on loopback"
    );
    assert_eq!(
        TelemetryConfig::default().otlp_endpoint,
        None,
        "off by default"
    );
}

#[test]
fn workers_listen_where_other_machines_reach_them_or_the_setting_is_named() {
    let default = WorkersConfig::default();
    assert_eq!(
        default.worker_listen().unwrap(),
        ("127.0.0.1:0".to_owned(), Vec::new())
    );
    let everywhere = WorkersConfig {
        listen_host: "0.0.0.0".into(),
        advertise_host: None,
    };
    let err = everywhere.worker_listen().unwrap_err();
    assert_eq!(err.field, "workers.advertise_host");
    let reachable = WorkersConfig {
        advertise_host: Some("10.0.0.5".into()),
        ..everywhere
    };
    assert_eq!(
        reachable.worker_listen().unwrap(),
        (
            "0.0.0.0:0".to_owned(),
            vec![(
                "MESH_WORKER_ADVERTISE_HOST".to_owned(),
                "10.0.0.5".to_owned()
            )]
        )
    );
    let v6 = WorkersConfig {
        listen_host: "::".into(),
        advertise_host: Some("fd00::5".into()),
    };
    assert_eq!(v6.worker_listen().unwrap().0, "[::]:0");
}

#[test]
fn file_then_environment_and_errors_name_the_field() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "mesh.toml",
            "[admin]\nlisten = \"127.0.0.1:9000\"\ntoken = \"ops-token-from-file\"\n",
        )?;
        let config = DeployConfig::load(Path::new("mesh.toml")).unwrap();
        assert_eq!(config.admin.listen, "127.0.0.1:9000");
        assert_eq!(config.state.dir, PathBuf::from(".mesh"));
        assert_eq!(
            config.ops_token().unwrap().as_deref(),
            Some("ops-token-from-file")
        );

        assert_eq!(
            config.telemetry,
            TelemetryConfig::default(),
            "no export unless asked"
        );

        jail.set_env("MESH_ADMIN_LISTEN", "127.0.0.1:0");
        jail.set_env("MESH_STATE_DIR", "/tmp/mesh-state");
        jail.set_env("MESH_TELEMETRY_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let config = DeployConfig::load(Path::new("mesh.toml")).unwrap();
        assert_eq!(config.admin.listen, "127.0.0.1:0");
        assert_eq!(config.state.dir, PathBuf::from("/tmp/mesh-state"));
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );

        jail.create_file("slow.toml", "[telemetry]\nexport_interval_ms = \"soon\"\n")?;
        let err = DeployConfig::load(Path::new("slow.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("slow.toml") && err.contains("telemetry.export_interval_ms"),
            "{err}"
        );
        assert!(err.contains("deployment configuration"), "{err}");
        jail.set_env("MESH_FRONT_DOOR_MAX_CONNECTIONS", "many");
        let err = DeployConfig::load(Path::new("mesh.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable MESH_FRONT_DOOR_MAX_CONNECTIONS"),
            "{err}"
        );
        jail.set_env("MESH_FRONT_DOOR_MAX_CONNECTIONS", "100");

        let missing = DeployConfig::load(Path::new("absent.toml")).unwrap();
        assert_eq!(
            missing.ops_token().unwrap(),
            None,
            "no credential: admin off"
        );

        jail.create_file("bad.toml", "[admin]\nlisen = \"x\"\n")?;
        let err = DeployConfig::load(Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("lisen"), "{err}");

        jail.create_file(
            "env.toml",
            "[admin]\ntoken_env = \"MESH_TEST_OPS_TOKEN_UNSET\"\n",
        )?;
        let err = DeployConfig::load(Path::new("env.toml"))
            .unwrap()
            .ops_token()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MESH_TEST_OPS_TOKEN_UNSET is not set"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn operators_are_named_each_with_a_credential_of_their_own() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("MESH_TEST_OPS_ALICE", "alice-credential-0123456789abcdef");
        jail.create_file(
            "mesh.toml",
            "[admin]\ntoken = \"shared-ops-credential-0123456789\"\n\
             [[admin.operators]]\nname = \"alice\"\ntoken_env = \"MESH_TEST_OPS_ALICE\"\n\
             [[admin.operators]]\nname = \"bob\"\ntoken = \"bob-credential-0123456789abcdef\"\n",
        )?;
        let config = DeployConfig::load(Path::new("mesh.toml")).unwrap();
        let names: Vec<(String, String)> = config.operators().unwrap();
        assert_eq!(
            names,
            [
                ("ops", "shared-ops-credential-0123456789"),
                ("alice", "alice-credential-0123456789abcdef"),
                ("bob", "bob-credential-0123456789abcdef"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // two people with one credential, a name twice, a bad name, a missing variable
        for (operators, field, says) in [
            (
                "[[admin.operators]]\nname = \"carol\"\ntoken = \"shared-ops-credential-0123456789\"\n",
                "admin.operators[0].token",
                "another operator's credential",
            ),
            (
                "[[admin.operators]]\nname = \"ops\"\ntoken = \"carol-credential-0123456789abcdef\"\n",
                "admin.operators[0].name",
                "named twice",
            ),
            (
                "[[admin.operators]]\nname = \"auto:rule\"\ntoken = \"carol-credential-0123456789abcdef\"\n",
                "admin.operators[0].name",
                "letters, digits",
            ),
            (
                "[[admin.operators]]\nname = \"carol\"\ntoken_env = \"MESH_TEST_OPS_CAROL_UNSET\"\n",
                "admin.operators[0].token_env",
                "MESH_TEST_OPS_CAROL_UNSET is not set",
            ),
        ] {
            jail.create_file(
                "mesh.toml",
                &format!("[admin]\ntoken = \"shared-ops-credential-0123456789\"\n{operators}"),
            )?;
            let err = DeployConfig::load(Path::new("mesh.toml"))
                .unwrap()
                .operators()
                .unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(says), "{err}");
        }
        Ok(())
    });
}

#[test]
fn a_worker_reads_what_it_was_handed_and_a_bad_value_is_named() {
    figment::Jail::expect_with(|jail| {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            console: true,
            export_interval_ms: 250,
            prometheus_listen: None,
            log_format: LogFormat::Json,
        };
        for (name, value) in config.to_env() {
            jail.set_env(name, value);
        }
        let read = TelemetryConfig::from_env().unwrap();
        assert_eq!(
            read,
            TelemetryConfig {
                prometheus_listen: None,
                ..config
            }
        );
        // empty is unset
        jail.set_env("MESH_TELEMETRY_CONSOLE", "");
        assert!(!TelemetryConfig::from_env().unwrap().console);
        jail.set_env("MESH_TELEMETRY_LOG_FORMAT", "xml");
        let err = TelemetryConfig::from_env().unwrap_err().to_string();
        assert!(err.contains("MESH_TELEMETRY_LOG_FORMAT"), "{err}");
        assert!(err.contains("\"xml\" is not text or json"), "{err}");
        Ok(())
    });
}
