//! What the tests of the real `meshctl` and `mesh` binaries share: a tenants folder, a running
//! `mesh up`, and `meshctl` runs against it.
//!
//! `mesh` is the binary of this build (the test kit's [`mesh_binary`]: built by `cargo test
//! --workspace`, or first if missing).
#![allow(dead_code)] // each test binary uses its part

use std::{
    path::Path,
    time::{Duration, Instant},
};

use mesh_api::recommend::v1 as recommend;
use mesh_contract::{RequestContext, TenantId};
pub use mesh_testkit::mesh_binary;
use mesh_testkit::{MeshUp, TenantsFolder};
use serde_json::Value;
use tokio::process::Command;
use tonic::{Request, transport::Channel};

pub const TOKEN: &str = "test-ops-credential-0123";

/// A tenants folder of the shipped defaults and `tenants`, with `appended` lines added to a
/// tenant's file (`("mall", "[limits]\n...")`).
pub fn shipped_tenants_with(tenants: &[&str], appended: &[(&str, &str)]) -> tempfile::TempDir {
    appended
        .iter()
        .fold(
            TenantsFolder::new().shipped(tenants),
            |folder, (tenant, more)| folder.appended(tenant, more),
        )
        .into_dir()
}

/// A running `mesh up`.
pub struct Mesh {
    pub up: MeshUp,
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
        let mut command = MeshUp::command(mesh_binary(), tenants, "127.0.0.1:0");
        command
            .arg("--config")
            .arg(config)
            .env("MESH_ADMIN_TOKEN", TOKEN)
            .env("MESH_STATE_DIR", state)
            .envs(env.iter().copied());
        let mut up = MeshUp::spawn(command).await;
        let channel = Channel::from_shared(format!("http://{}", up.front))
            .unwrap()
            .connect_lazy();
        let admin = up.admin_address().await;
        for _ in 0..groups {
            up.output
                .wait_for("a serving group", |l| l.starts_with("serving group="))
                .await;
        }
        Mesh { up, admin, channel }
    }

    /// The rest of the next line starting with `prefix`, within 60 s.
    pub async fn wait_line(&mut self, what: &str, prefix: &str) -> String {
        self.up.output.after(what, prefix).await
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
        let pid = self.up.pid();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), self.up.child.wait())
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
