//! Tenants folders made for a test, from the repository's own tenant files.

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The repository's `tenants/` folder (the shipped mall, finance and paipai).
pub fn shipped_tenants() -> PathBuf {
    repository().join("tenants")
}

/// A tenants folder of a test's own (deleted when dropped): always the shipped defaults
/// (`_defaults.toml`), then what the test adds.
pub struct TenantsFolder(tempfile::TempDir);

impl Default for TenantsFolder {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantsFolder {
    /// The shipped defaults alone.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            shipped_tenants().join("_defaults.toml"),
            dir.path().join("_defaults.toml"),
        )
        .unwrap();
        Self(dir)
    }

    /// With the files of the shipped `tenants` (`mall`, `finance`, `paipai`) as shipped.
    pub fn shipped(self, tenants: &[&str]) -> Self {
        for tenant in tenants {
            let file = format!("{tenant}.toml");
            std::fs::copy(shipped_tenants().join(&file), self.path().join(&file)).unwrap();
        }
        self
    }

    /// With file `name` (`newco.toml`) holding `body`, as given.
    pub fn file(self, name: &str, body: &str) -> Self {
        std::fs::write(self.path().join(name), body).unwrap();
        self
    }

    /// With a tenant file `name` holding `body` and, when it says nothing of them, a `[users]`
    /// section signing its users' tokens with a development key, as the shipped tenants do.
    pub fn tenant(self, name: &str, body: &str) -> Self {
        if body.contains("[users]") || name.starts_with('_') {
            return self.file(name, body);
        }
        let id = name.trim_end_matches(".toml");
        let body = format!(
            "{body}\n[users]\nissuer = \"{id}-accounts\"\nhs256_secret = \"test-{id}-user-signing-key-0123456789abcdef\"\n"
        );
        self.file(name, &body)
    }

    /// With `more` lines appended to tenant `tenant`'s file (`[limits]` raised, a service on).
    pub fn appended(self, tenant: &str, more: &str) -> Self {
        let path = self.path().join(format!("{tenant}.toml"));
        let mut body =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        body.push('\n');
        body.push_str(more);
        body.push('\n');
        std::fs::write(&path, body).unwrap();
        self
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The folder, kept by the caller (deleted when the returned handle drops).
    pub fn into_dir(self) -> tempfile::TempDir {
        self.0
    }
}
