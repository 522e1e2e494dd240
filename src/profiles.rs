//! Profiles: operator-edited YAML under `profiles/` saying what a node boots.
//!
//! Each `*.yaml` file holds one profile. Loading is all-or-nothing: any file that
//! fails to parse or validate is reported as `file:line:col: message` and the set is
//! refused, so a server never starts (or, later, swaps in) a half-valid set.

use crate::images::valid_name;
use crate::yaml::{self, SourceError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The stage-one set (kernel + initramfs + agent) that loads this profile.
    pub stage1: String,
    /// The root filesystem image the agent loads into RAM.
    pub image: String,
    /// Extra kernel command-line arguments for stage one (and, through it, stage two).
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

/// A validated set of profiles, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, (Profile, PathBuf)>,
}

impl ProfileSet {
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name).map(|(p, _)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Profile, &Path)> {
        self.profiles.values().map(|(p, path)| (p, path.as_path()))
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// Every problem found in a profiles directory (not just the first).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ProfileErrors(pub Vec<SourceError>);

/// Load and validate every `*.yaml`/`*.yml` file in `dir`.
pub fn load_dir(dir: &Path) -> Result<ProfileSet, ProfileErrors> {
    let at = |file: &Path, message: String| SourceError { file: file.to_path_buf(), line: 0, column: 0, message };
    let entries = std::fs::read_dir(dir).map_err(|e| ProfileErrors(vec![at(dir, format!("cannot read: {e}"))]))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut set = ProfileSet::default();
    let mut errors = vec![];
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(at(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse_profile(&file, &text) {
            Ok(profile) => {
                if let Some((_, first)) = set.profiles.get(&profile.name) {
                    errors.push(at(
                        &file,
                        format!("profile {:?} is already defined in {}", profile.name, first.display()),
                    ));
                } else {
                    set.profiles.insert(profile.name.clone(), (profile, file));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// Parse and validate one profile document.
pub fn parse_profile(file: &Path, text: &str) -> Result<Profile, SourceError> {
    let profile: Profile = yaml::parse(file, text)?;
    let invalid = |field: &str, message: String| {
        // Point at the offending key, so the operator lands on the right line.
        let (line, column) = locate_key(text, field);
        SourceError { file: file.to_path_buf(), line, column, message }
    };
    for (field, value) in [("name", &profile.name), ("stage1", &profile.stage1), ("image", &profile.image)] {
        if !valid_name(value) {
            return Err(invalid(field, format!("{field} {value:?} must be 1-64 letters, digits, '-' or '_'")));
        }
    }
    for arg in &profile.kernel_args {
        if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("kernel_args", format!("kernel argument {arg:?} must be one word with no spaces")));
        }
    }
    Ok(profile)
}

/// 1-based line and column of a top-level `key:` in `text`, or (0, 0).
fn locate_key(text: &str, key: &str) -> (u64, u64) {
    text.lines()
        .enumerate()
        .find(|(_, line)| line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map(|(i, _)| (i as u64 + 1, 1))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: compute\nstage1: stage1\nimage: compute-node\nkernel_args: [quiet]\n";

    #[test]
    fn shipped_profiles_are_valid() {
        let set = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")).unwrap();
        for name in ["compute-node", "k8s-master", "tiny"] {
            assert!(set.get(name).is_some(), "profiles/{name}.yaml");
        }
    }

    #[test]
    fn typo_in_key_is_reported_with_line_and_column() {
        let text = GOOD.replace("image:", "imgae:");
        let err = parse_profile(Path::new("profiles/c.yaml"), &text).unwrap_err();
        assert_eq!((err.line, err.column), (3, 1), "{err}");
        assert!(err.message.contains("imgae"), "{err}");
    }

    #[test]
    fn bad_values_point_at_their_key() {
        let text = GOOD.replace("image: compute-node", "image: ../etc/passwd");
        let err = parse_profile(Path::new("c.yaml"), &text).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let text = GOOD.replace("[quiet]", "[\"console=ttyS0 rm\"]");
        assert_eq!(parse_profile(Path::new("c.yaml"), &text).unwrap_err().line, 4);
    }

    #[test]
    fn duplicate_names_and_broken_files_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "name: [unclosed\n").unwrap();
        let errs = load_dir(dir.path()).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("already defined"));
        assert!(errs[1].file.ends_with("c.yaml") && errs[1].line >= 1, "{}", errs[1]);
    }
}
