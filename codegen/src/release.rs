//! The release record of the baseline: which release wrote `baseline.binpb`, and its digest.
//!
//! `check --against-baseline` compares the contracts with the released baseline; if updating
//! the baseline were enough to make a break pass, a submission could carry a break and the
//! baseline that absorbs it together. So the baseline is only taken as released when its
//! record (`baseline.release`, beside it) names a release and the baseline's SHA-256: a
//! baseline changes with `mesh-codegen baseline update --release <version>`, which lists what
//! it absorbs and refuses a break without `--accept-breaking`. A baseline changed any other
//! way fails `check`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The record beside `baseline` (`contracts/baseline.binpb` -> `contracts/baseline.release`).
pub fn record_path(baseline: &Path) -> PathBuf {
    baseline.with_extension("release")
}

/// The hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A release version as the record keeps it: `v` and a semantic version (`v0.11.0`).
pub fn valid_version(version: &str) -> bool {
    version
        .strip_prefix('v')
        .is_some_and(|v| semver::Version::parse(v).is_ok())
}

/// The text of the record of `baseline` (its bytes) released as `version`.
pub fn record(version: &str, baseline: &[u8]) -> String {
    format!(
        "# Written by `mesh-codegen baseline update --release`: the release that wrote\n# baseline.binpb, and its SHA-256. `check` takes the baseline as released only if both match.\nversion = \"{version}\"\nsha256 = \"{}\"\n",
        digest(baseline)
    )
}

/// The release `baseline` is, by its record; why it is not taken as released otherwise.
pub fn verify(baseline: &Path) -> Result<String, String> {
    let path = record_path(baseline);
    let bytes = std::fs::read(baseline).map_err(|e| format!("{}: {e}", baseline.display()))?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e}; the baseline has no release record (write both with `mesh-codegen baseline update --release <version>`)",
            path.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |name: &str| {
        table
            .get(name)
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: `{name}` is missing", path.display()))
    };
    let (version, sha) = (field("version")?, field("sha256")?);
    let actual = digest(&bytes);
    if sha != actual {
        return Err(format!(
            "{} is not the baseline release {version} wrote (its SHA-256 is {actual}, the record says {sha}): \
             the baseline changes only in a release, `mesh-codegen baseline update --release <version>`, \
             which lists the breaking changes it absorbs",
            baseline.display()
        ));
    }
    Ok(version)
}
