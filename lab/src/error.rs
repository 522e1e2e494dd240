//! The one error type of the lab's building blocks: a command that could not run or
//! failed, a file, a wait that timed out.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A program could not be started at all (not installed, not executable).
    #[error("running {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// A program ran and failed; `detail` is its error output or exit status.
    #[error("{command}: {detail}")]
    Failed { command: String, detail: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    /// A port a daemon needed was another process's by the time it bound it (a
    /// free port picked, then taken in between): try again with fresh ports.
    #[error("{what} was taken by another process: {detail}")]
    PortTaken { what: String, detail: String },
    #[error("{what} did not happen within {secs} s{detail}")]
    Timeout { what: String, secs: u64, detail: String },
    #[error("{0}")]
    Other(String),
}

impl LabError {
    pub(crate) fn spawn(program: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Spawn { program: program.into(), source }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> LabError {
        LabError::File { path: path.into(), source }
    }
}
