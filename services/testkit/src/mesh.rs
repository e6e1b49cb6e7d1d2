//! `mesh up` as a child process, and the signals and commands tests send to processes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
};

use tokio::process::{Child, Command};

use crate::{LOCAL_AMQP, Lines};

/// The node credential the tests give `mesh up` (its workers present it to each other), known
/// to the test, which may then act as one of the mesh's nodes at a worker.
pub const NODE_CREDENTIAL: &str = "test-node-credential-0123456789abcdef";

/// The `mesh` binary of this build (beside the test binaries' folder); built first if a test
/// of another crate runs before it was (`cargo test -p <crate>` on a fresh tree).
pub fn mesh_binary() -> &'static Path {
    static MESH: OnceLock<PathBuf> = OnceLock::new();
    MESH.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().unwrap();
        let profile = exe.parent().and_then(Path::parent).unwrap();
        let mesh = profile.join(format!("mesh{}", std::env::consts::EXE_SUFFIX));
        if !mesh.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "-p", "mesh-node", "--bin", "mesh"]);
            if profile.file_name() == Some("release".as_ref()) {
                build.arg("--release");
            }
            assert!(build.status().unwrap().success(), "building mesh");
        }
        mesh
    })
}

/// A running `mesh up`, killed when dropped.
pub struct MeshUp {
    /// The process.
    pub child: Child,
    /// What it prints, from after its front door's line.
    pub output: Lines,
    /// `host:port` of the front door.
    pub front: String,
}

impl MeshUp {
    /// Starts `mesh up` on the tenants in `dir` with extra environment `env`, and waits for
    /// its front door.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(dir, "127.0.0.1:0", env).await
    }

    /// [`MeshUp::start`] with its front door on `listen` (a node restarted where a proxy
    /// expects it).
    pub async fn start_on(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::start_binary(mesh_binary(), dir, listen, env).await
    }

    /// [`MeshUp::start_on`] with the `mesh` binary at `binary` (one built elsewhere: a
    /// repository with a service added).
    pub async fn start_binary(
        binary: &Path,
        dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Self::command(binary, dir, listen);
        command.envs(env.iter().copied());
        Self::spawn(command).await
    }

    /// The command [`MeshUp::start_binary`] runs, for a test to add to (`--config`).
    pub fn command(binary: &Path, dir: &Path, listen: &str) -> Command {
        let mut command = Command::new(binary);
        command
            .args(["up", "--listen", listen, "--tenants"])
            .arg(dir)
            .env("MESH_STATE_DIR", dir.join(".state"))
            // tests run side by side: the admin API of each on a port of its own (figment
            // finds the repository's ops/mesh.toml from any folder below it)
            .env("MESH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MESH_WEB_LISTEN", "127.0.0.1:0")
            .env("MESH_NODE_CREDENTIAL", NODE_CREDENTIAL);
        command
    }

    /// Runs `command` (a `mesh up`), and waits for its front door.
    pub async fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut output = Lines::read(child.stdout.take().unwrap(), "mesh up");
        let front = output.after("front door", "front door listening on ").await;
        Self {
            child,
            output,
            front,
        }
    }

    /// `mesh up` on the tenants in `dir`, on the machine's RabbitMQ, with the admin API open to
    /// `ops_token`: itself and the admin API's address, once the shared worker serves.
    pub async fn on_rabbitmq(dir: &Path, ops_token: &str) -> (Self, String) {
        let mut up = Self::start(
            dir,
            &[
                ("MESH_AMQP_URI", LOCAL_AMQP),
                ("MESH_ADMIN_TOKEN", ops_token),
            ],
        )
        .await;
        let admin_at = up.admin_address().await;
        up.shared_worker().await;
        (up, admin_at)
    }

    /// A channel to the front door.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.front))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The line announcing the worker of the shared group (`serving group=shared pid=..
    /// address=.. tenants=..`), once it serves.
    pub async fn shared_worker(&mut self) -> String {
        self.output
            .wait_for("the worker", |l| l.starts_with("serving group=shared"))
            .await
    }

    /// Where its admin API listens (waits for the line saying so).
    pub async fn admin_address(&mut self) -> String {
        self.output
            .after("the admin API", "admin listening on ")
            .await
    }

    /// Where its browsers' access listens (`host:port`; waits for the line saying so).
    pub async fn web_address(&mut self) -> String {
        let rest = self
            .output
            .after("the web access", "web access at http://")
            .await;
        rest.split('/').next().unwrap().to_owned()
    }

    /// The pid of this process.
    pub fn pid(&self) -> String {
        self.child.id().unwrap().to_string()
    }
}

/// The value of `name=` in a line a process printed (`serving group=shared pid=42`).
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Whether process `pid` lives.
pub fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Sends `sig` (`-KILL`, `-TERM`, `-STOP`) to `pid`.
pub fn signal(pid: &str, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap()
            .success(),
        "kill {sig} {pid}"
    );
}

/// Runs `command`; its standard output, failing the test with both outputs if it fails.
pub fn run(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
