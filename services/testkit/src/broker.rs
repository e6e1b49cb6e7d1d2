//! RabbitMQ: the machine's broker, and a vhost of a test's own on it.

/// The machine's RabbitMQ (`bash .ci/test` starts it).
pub const LOCAL_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Runs `rabbitmqctl` on the machine's RabbitMQ (installed with it; the tests run as root),
/// and what it printed; any failure fails the test, with its words.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A RabbitMQ vhost of a test's own (guest may use it), deleted with everything in it when
/// dropped: queues a test creates never outlive it.
pub struct Vhost(pub String);

impl Vhost {
    /// A fresh vhost.
    pub fn create() -> Self {
        let name = format!(
            "mesh-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self(name)
    }

    /// Its AMQP URI.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.0)
    }

    /// `name messages` of every queue of the vhost starting with `prefix`, by name
    /// (rabbitmqctl lists them in no stable order).
    pub fn queues(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut queues: Vec<(String, u64)> = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.0,
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (name, count) = (fields.next()?, fields.next()?.parse().ok()?);
            name.starts_with(prefix).then(|| (name.to_owned(), count))
        })
        .collect();
        queues.sort();
        queues
    }

    /// The exchanges of the vhost starting with `prefix`.
    pub fn exchanges(&self, prefix: &str) -> Vec<String> {
        rabbitmqctl(&[
            "list_exchanges",
            "-p",
            &self.0,
            "-q",
            "--no-table-headers",
            "name",
        ])
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

/// A RabbitMQ node of a test's own (`rabbitmq-server`, installed with RabbitMQ), on ports of
/// its own, with its data in a folder of its own: started, stopped, killed and clustered at
/// will, faults the machine's broker never sees. Stopped when dropped.
pub struct OwnRabbit {
    /// Its Erlang node name (`rabbitmqctl -n <name>`).
    pub name: String,
    /// Its AMQP port on loopback.
    pub port: u16,
    dist_port: u16,
    dir: std::path::PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl OwnRabbit {
    /// A node started in a folder of its own, once it takes connections.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mesh-test-mq")
            .tempdir()
            .unwrap();
        let mut rabbit = Self::prepare(dir.path(), "meshtest");
        rabbit._owned = Some(dir);
        rabbit.launch();
        rabbit
    }

    /// A node named `<name><port>@localhost` with its data in `dir`, configured, not started
    /// (a cluster's nodes are started side by side).
    pub fn prepare(dir: &std::path::Path, name: &str) -> Self {
        assert!(
            std::process::Command::new("which")
                .arg("rabbitmq-server")
                .output()
                .is_ok_and(|o| o.status.success()),
            "rabbitmq-server is needed (bash .ci/test installs it)"
        );
        let (port, dist_port) = (crate::free_port(), crate::free_port());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("plugins"), "[].").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        // rabbitmq-server run as root switches to the rabbitmq user: it must own the folder
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir)
            .status();
        Self {
            name: format!("{name}{port}@localhost"),
            port,
            dist_port,
            dir: dir.to_path_buf(),
            _owned: None,
        }
    }

    /// Starts the node in the background; [`OwnRabbit::launch`] waits for it too.
    pub fn spawn(&self) {
        let d = &self.dir;
        let status = std::process::Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .status()
            .expect("rabbitmq-server (bash .ci/test installs it)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
    }

    /// Starts the node and waits until it takes connections (up to 90 s: a node boots in
    /// seconds, more on a loaded 2-core machine).
    pub fn launch(&self) {
        self.spawn();
        self.wait_listening(std::time::Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the node takes connections, for at most `within`.
    pub fn wait_listening(&self, within: std::time::Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + within;
        while !crate::port_open(self.port) {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "RabbitMQ node {} did not listen on {} within {within:?} (logs in {})",
                    self.name,
                    self.port,
                    self.dir.join("log").display()
                ));
            }
            // polling the port: a booting node says nothing else
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }

    /// `rabbitmqctl -n <node> ARGS`: what it printed, or why it failed.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "rabbitmqctl -n {} {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Kills the node outright (as a crash would), and waits until its port is closed.
    pub fn kill(&self) {
        // a node that died booting left no pid file, and nothing to kill
        let pid_file = self.dir.join("mnesia").join(format!("{}.pid", self.name));
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .output();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while crate::port_open(self.port) && std::time::Instant::now() < deadline {
            // polling the port until the kernel closed it
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Stops the node (as an operator would; killed if it does not stop).
    pub fn stop(&self) {
        let _ = self.ctl(&["stop"]);
        self.kill();
    }

    /// Its AMQP URI (guest, default vhost).
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}
