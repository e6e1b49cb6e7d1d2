//! Errors that name where the problem is: the file (or environment variable) and the field.

use std::{fmt, path::Path, path::PathBuf};

/// Shortest credential accepted, a tenant's or the ops one: one rule for both.
pub const MIN_CREDENTIAL_LEN: usize = 12;

/// Checks a credential (a tenant's `credentials.token`, the ops `admin.token`) against the one
/// rule; the problem, said of `what` (`"is"`, `"environment variable X holds"`).
pub fn check_credential(token: &str, what: &str) -> Result<(), String> {
    if token.chars().count() < MIN_CREDENTIAL_LEN {
        return Err(format!(
            "{what} fewer than {MIN_CREDENTIAL_LEN} characters: too easy to guess"
        ));
    }
    Ok(())
}

/// One problem in a config file: where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The file, or `environment variable NAME` for an override.
    pub source: String,
    /// Dotted field path (`limits.requests_per_second`); empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(
                f,
                "{}: field `{}`: {}",
                self.source, self.field, self.message
            )
        }
    }
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Tenant files are invalid; every problem found is listed.
    #[error("{} problem(s) in tenant configuration:\n{}", .0.len(), list(.0))]
    Invalid(Vec<FieldError>),
    /// The deployment file (`ops/mesh.toml`) or its environment overrides are invalid.
    #[error("{} problem(s) in the deployment configuration:\n{}", .0.len(), list(.0))]
    Deploy(Vec<FieldError>),
}

/// figment's errors as [`FieldError`]s: the file each value came from, or the environment
/// variable (`env_var` names it from the field's keys), or `file` for a missing field (which
/// has no source of its own: it is the file's to state).
pub(crate) fn field_errors(
    err: figment::Error,
    file: &Path,
    env_var: impl Fn(&[String]) -> String,
) -> Vec<FieldError> {
    err.into_iter()
        .map(|err| {
            let source = match err.metadata.as_ref() {
                Some(meta) => match &meta.source {
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    // figment's Env provider says what it is by its name alone (no source)
                    _ if meta.name.contains("environment") => {
                        format!("environment variable {}", env_var(&err.path))
                    }
                    _ => meta.name.to_string(),
                },
                None => file.display().to_string(),
            };
            let message = match &err.kind {
                figment::error::Kind::MissingField(name) => {
                    format!("missing required field `{name}`")
                }
                kind => kind.to_string(),
            };
            let mut field = err.path.join(".");
            if let figment::error::Kind::MissingField(name) = &err.kind {
                field = if field.is_empty() {
                    name.to_string()
                } else {
                    format!("{field}.{name}")
                };
            }
            FieldError {
                source,
                field,
                message,
            }
        })
        .collect()
}
