//! Loading operator-edited YAML (server config, profiles) into typed values.
//!
//! Every error names the file, line and column, so an operator can jump to the
//! mistake. Parsing is strict: the wire types use `deny_unknown_fields`.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A YAML document that could not be read or did not match its schema.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(SourceError),
}

/// An error anchored at a position in a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based; 0 when the parser could not tell.
    pub line: u64,
    /// 1-based; 0 when the parser could not tell.
    pub column: u64,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

impl std::error::Error for SourceError {}

/// Parse `text` (the contents of `file`) as a `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, SourceError> {
    serde_saphyr::from_str::<T>(text).map_err(|err| {
        let (line, column) = err.location().map(|loc| (loc.line(), loc.column())).unwrap_or((0, 0));
        SourceError { file: file.to_path_buf(), line, column, message: strip_location_suffix(&err.to_string()) }
    })
}

/// Read and parse a YAML file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text).map_err(YamlError::Invalid)
}

/// The `*.yaml` and `*.yml` files directly in `dir`, sorted by name.
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// serde-saphyr writes its own position into the message (`error: line 3 column 1:
/// ...`, or `... at line 3, column 1`); we print ours as a `file:line:col:` prefix.
fn strip_location_suffix(message: &str) -> String {
    let mut text = message.lines().next().unwrap_or(message).trim();
    text = text.strip_prefix("error: ").unwrap_or(text);
    if let Some(rest) = text.strip_prefix("line ") {
        if let Some((position, tail)) = rest.split_once(": ") {
            if position.split(" column ").all(|n| n.trim().bytes().all(|b| b.is_ascii_digit())) {
                text = tail;
            }
        }
    }
    match text.rfind(" at line ") {
        Some(idx) => text[..idx].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        size: u32,
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let err = parse::<Sample>(Path::new("p.yaml"), "name: a\nsize: 3\ncolour: red\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1), "{err}");
        assert!(err.message.starts_with("unknown field `colour`"), "{err}");
        assert!(err.to_string().starts_with("p.yaml:3:1: "), "{err}");
    }

    #[test]
    fn wrong_type_reports_position_of_value() {
        let err = parse::<Sample>(Path::new("p.yaml"), "name: a\nsize: big\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.column >= 1, "{err}");
    }
}
