//! What the tests of the real `meshctl` and `mesh` binaries share: a tenants folder, a running
//! `mesh up`, and `meshctl` runs against it.
//!
//! `mesh` is the binary beside `meshctl` (built by `cargo test --workspace`); if it is missing
//! (`cargo test -p mesh-ops` on a fresh tree) it is built first.
#![allow(dead_code)] // each test binary uses its part

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tonic::{Request, transport::Channel};

pub const TOKEN: &str = "test-ops-credential-0123";

pub fn mesh_binary() -> &'static Path {
    static MESH: OnceLock<PathBuf> = OnceLock::new();
    MESH.get_or_init(|| {
        let mesh = Path::new(env!("CARGO_BIN_EXE_meshctl")).with_file_name("mesh");
        if !mesh.exists() {
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args(["build", "--quiet", "-p", "mesh-node", "--bin", "mesh"]);
            if mesh.parent().and_then(Path::file_name) == Some("release".as_ref()) {
                build.arg("--release");
            }
            assert!(build.status().unwrap().success(), "building mesh");
        }
        mesh
    })
}

/// A tenants folder: the shipped defaults and tenants, `extra` lines appended to a tenant's file.
pub fn tenants_folder(tenants: &[&str], extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenants");
    for tenant in std::iter::once("_defaults").chain(tenants.iter().copied()) {
        let mut body = std::fs::read_to_string(shipped.join(format!("{tenant}.toml"))).unwrap();
        for (_, more) in extra.iter().filter(|(t, _)| *t == tenant) {
            body.push('\n');
            body.push_str(more);
        }
        std::fs::write(dir.path().join(format!("{tenant}.toml")), body).unwrap();
    }
    dir
}

/// A running `mesh up`.
pub struct Mesh {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<String>,
    pub admin: String,
    pub channel: Channel,
}

impl Mesh {
    /// Starts the mesh on `tenants` with switch state in `state`; returns once `groups` process
    /// groups serve.
    pub async fn up(tenants: &Path, state: &Path, groups: usize) -> Mesh {
        Self::up_with(tenants, state, groups, &[]).await
    }

    /// [`Mesh::up`] with extra environment for `mesh up`.
    pub async fn up_with(
        tenants: &Path,
        state: &Path,
        groups: usize,
        env: &[(&str, &str)],
    ) -> Mesh {
        Self::up_configured(
            tenants,
            state,
            groups,
            &state.join("no-such-mesh.toml"),
            env,
        )
        .await
    }

    /// [`Mesh::up_with`] with the deployment file `config`.
    pub async fn up_configured(
        tenants: &Path,
        state: &Path,
        groups: usize,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Mesh {
        let mut child = Command::new(mesh_binary())
            .args(["up", "--listen", "127.0.0.1:0", "--tenants"])
            .arg(tenants)
            .arg("--config")
            .arg(config)
            .env("MESH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MESH_WEB_LISTEN", "127.0.0.1:0")
            .env("MESH_ADMIN_TOKEN", TOKEN)
            .env("MESH_STATE_DIR", state)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                println!("mesh up: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mesh = Mesh {
            child,
            lines: rx,
            admin: String::new(),
            channel: Channel::from_static("http://127.0.0.1:1").connect_lazy(),
        };
        let front = mesh
            .wait_line("front door", "front door listening on ")
            .await;
        mesh.channel = Channel::from_shared(format!("http://{front}"))
            .unwrap()
            .connect_lazy();
        mesh.admin = mesh.wait_line("admin API", "admin listening on ").await;
        for _ in 0..groups {
            mesh.wait_line("a serving group", "serving group=").await;
        }
        mesh
    }

    /// The rest of the next line starting with `prefix`, within 60 s.
    pub async fn wait_line(&mut self, what: &str, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Ok(None) => panic!("mesh up ended before {what}"),
                Err(_) => panic!("no {what} within 60 s"),
            }
        }
    }

    /// Runs `meshctl ARGS` against this mesh with the ops credential.
    pub async fn ctl(&self, args: &[&str]) -> Ctl {
        ctl(
            args,
            &[("MESH_ADMIN", &self.admin), ("MESH_OPS_TOKEN", TOKEN)],
        )
        .await
    }

    /// `ctl` that must succeed; its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args).await;
        assert_eq!(out.code, 0, "meshctl {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// `ctl ... --json` that must succeed.
    pub async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        serde_json::from_str(&self.ok(&args).await).expect("meshctl --json prints JSON")
    }

    /// SIGTERM, and wait for a clean stop.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("mesh up stops")
            .unwrap();
        assert!(status.success(), "{status}");
    }

    /// Waits (up to 2 s) until `tenant`'s suggest calls are answered by `switch` (`None`:
    /// served, not degraded).
    pub async fn answered_by(&self, (tenant, token): (&str, &str), switch: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (degraded, _) = self.suggest(tenant, token).await;
            if degraded.as_deref() == switch {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{tenant}'s calls still answered by {degraded:?}, not {switch:?}, after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Suggest for `tenant`: the switch that answered (if degraded) and how many products.
    pub async fn suggest(&self, tenant: &str, token: &str) -> (Option<String>, usize) {
        let mut client = recommend::recommend_client::RecommendClient::new(self.channel.clone());
        let mut request = Request::new(recommend::SuggestRequest {
            user_id: "u-1".into(),
            limit: 3,
            ..Default::default()
        });
        ctx(tenant, token).inject(request.metadata_mut()).unwrap();
        let response = client
            .suggest(request)
            .await
            .unwrap_or_else(|s| panic!("{tenant} suggest: {s:?}"));
        let degraded = response
            .metadata()
            .get("x-mesh-degraded")
            .map(|v| v.to_str().unwrap().to_owned());
        (degraded, response.into_inner().products.len())
    }
}

pub fn ctx(tenant: &str, token: &str) -> RequestContext {
    RequestContext::new(TenantId::new(tenant).unwrap()).with_token(token)
}

/// What one `meshctl` run printed and exited with.
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn ctl(args: &[&str], env: &[(&str, &str)]) -> Ctl {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("MESH_ADMIN")
        .env_remove("MESH_OPS_TOKEN")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let ctl = Ctl {
        code: out.status.code().expect("meshctl exits"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "meshctl {args:?} -> {}\n{}{}",
        ctl.code, ctl.stdout, ctl.stderr
    );
    ctl
}
