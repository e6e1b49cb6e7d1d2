//! Switch state that survives a restart of the mesh: one JSON file, replaced atomically
//! (written beside, then renamed) so a crash mid-write leaves the previous state, never half
//! of one.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use mesh_contract::TenantId;
use serde::{Deserialize, Serialize};

use crate::layers::Switch;

/// The persisted state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedSwitches {
    /// Tenants the state knows: a tenant missing here is new, and starts from its config's
    /// initial switches.
    pub tenants: BTreeSet<TenantId>,
    /// Every switch that is off.
    pub switches: Vec<Switch>,
    /// Credentials replaced by `tenant update` whose overlap has not ended (their digests):
    /// still accepted after a restart of the mesh.
    #[serde(default)]
    pub rotations:
        std::collections::BTreeMap<TenantId, crate::supervisor::protocol::PreviousCredential>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("switch state {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a switch state (hand-edited, or another program's).
    #[error("switch state {}: not a valid state file: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Where the switch state lives.
#[derive(Clone, Debug)]
pub struct SwitchStore {
    path: PathBuf,
}

impl SwitchStore {
    /// The state file `switches.json` in `dir` (created when first saved).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("switches.json"),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; `None` before the first save.
    pub fn load(&self) -> Result<Option<SavedSwitches>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    /// Saves `state`, replacing the previous one atomically.
    pub fn save(&self, state: &SavedSwitches) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let json = serde_json::to_vec_pretty(state).expect("switch state serializes");
        file.write_all(&json).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::layers::SwitchTarget;

    #[test]
    fn saved_state_loads_back_and_a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SwitchStore::in_dir(&dir.path().join("state"));
        assert_eq!(store.load().unwrap(), None, "nothing saved yet");
        let state = SavedSwitches {
            tenants: [TenantId::new("mall").unwrap()].into(),
            switches: vec![Switch {
                tenant: Some(TenantId::new("mall").unwrap()),
                target: SwitchTarget::TiersFrom(2),
                reason: "incident 42".into(),
                changed_by: "alice".into(),
                changed_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            }],
            rotations: [(
                TenantId::new("mall").unwrap(),
                crate::supervisor::protocol::PreviousCredential::replaced(
                    "old-mall-token",
                    Duration::from_secs(60),
                ),
            )]
            .into(),
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));

        std::fs::write(store.path(), "{ half a file").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("switches.json") && err.contains("not a valid state file"),
            "{err}"
        );
    }
}
