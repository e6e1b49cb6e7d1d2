//! PostgreSQL: the machine's server, and a database of a test's own on it.

/// The machine's PostgreSQL, without a database (`MESH_TEST_POSTGRES_BASE`, or user postgres
/// on 127.0.0.1:5432, trusted as `bash .ci/test` sets it up).
pub fn postgres_base() -> String {
    std::env::var("MESH_TEST_POSTGRES_BASE")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A client of the database at `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (bash .ci/test starts it): {e}"));
    tokio::spawn(connection);
    client
}

/// A PostgreSQL database of the test's own, which it can cut off from every client.
pub struct Db {
    name: String,
    admin: tokio_postgres::Client,
}

impl Db {
    /// A fresh database.
    pub async fn create() -> Self {
        let name = format!(
            "mesh_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = connect(&format!("{}/postgres", postgres_base())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self { name, admin }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", postgres_base(), self.name)
    }

    /// The database refuses new connections and loses its current ones, as if unreachable.
    pub async fn cut(&self) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
                self.name
            ))
            .await
            .unwrap();
    }

    /// Reachable again after [`Db::cut`].
    pub async fn restore(&self) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .await
            .unwrap();
    }

    /// (conversation, seq, client id, message id) of the stored messages of conversations
    /// starting with `prefix`, in mall's schema.
    pub async fn stored(&self, prefix: &str) -> Vec<(String, i64, Option<String>, String)> {
        let client = connect(&self.url()).await;
        client
            .query(
                "SELECT conversation_id, seq, client_msg_id, message_id FROM mesh_mall.messages
                 WHERE conversation_id LIKE $1 ORDER BY conversation_id, seq",
                &[&format!("{prefix}%")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Runs `sql` in the database.
    pub async fn sql(&self, sql: &str) {
        connect(&self.url()).await.batch_execute(sql).await.unwrap();
    }

    /// Drops it, whoever is still connected.
    pub async fn drop_database(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}
