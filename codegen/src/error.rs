use std::{fmt, path::PathBuf};

/// A place in a contract source, shown as `contracts/order/v1/order.proto:12:5`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// File path as the user knows it (contracts root joined with the proto file name).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
}

impl Location {
    /// A whole file, no line.
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// One rule a contract breaks, with where and which field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Where.
    pub location: Location,
    /// What is wrong, naming the element (`service order.v1.Order: option (mesh.service).tier`).
    pub subject: String,
    /// Why, and what to do.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.subject, self.message)
    }
}

/// Why contracts could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The contracts folder is not laid out as `<service>/v<major>/*.proto`.
    #[error("{}: {message}", path.display())]
    Layout {
        /// The offending path.
        path: PathBuf,
        /// What is expected instead.
        message: String,
    },
    /// The protobuf itself does not compile (syntax, unknown type or option, duplicate name).
    #[error("{location}: {message}")]
    Proto {
        /// Where, as precisely as the compiler says.
        location: Location,
        /// The compiler's message.
        message: String,
    },
    /// The protobuf compiles but breaks the mesh's rules; every violation found is listed.
    #[error("{} contract rule violation(s):\n{}", .0.len(), list(.0))]
    Invalid(Vec<Violation>),
    /// Generating code failed.
    #[error("generating code into {}: {message}", out_dir.display())]
    Generate {
        /// Output folder.
        out_dir: PathBuf,
        /// The cause.
        message: String,
    },
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ContractError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
