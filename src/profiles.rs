//! Profiles: operator-edited YAML under `profiles/` saying what a node boots.
//!
//! Each `*.yaml` file holds one profile. Validation covers the schema (unknown keys
//! refused), names, kernel arguments, selectors, referenced images (they must be
//! built), overlay templates (they must compile) and cross-profile rules (unique
//! names, no selector ties). Errors read `file:line:col: message`.
//!
//! Loading at start is all-or-nothing. A live reload ([`LiveProfiles::reload`]) is
//! per file: a file that fails keeps serving its last good version, every other file
//! applies, and the errors are kept for the API and the log.

use crate::images::{valid_name, ImageStore};
use crate::safe_path;
use crate::yaml::{self, SourceError};
use arc_swap::ArcSwap;
pub use ramboot_core::profile::{NodeFacts, OverlayFile, Profile, ProfileVolume, Selector};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rendered overlay limits: a template is operator input, not a place to build a disk image.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
pub const MAX_RENDERED_FILE_BYTES: usize = 1024 * 1024;
pub const MAX_OVERLAY_BYTES: usize = 8 * 1024 * 1024;
/// minijinja fuel: bounds loops in a template (roughly instructions executed).
const TEMPLATE_FUEL: u64 = 1_000_000;

/// The template function that renders a secret.
const SECRET_FUNCTION: &str = "secret";

/// A validated profile with its compiled templates.
#[derive(Debug)]
pub struct LoadedProfile {
    pub profile: Profile,
    pub file: PathBuf,
    /// Short SHA-256 of the file's text: which version of the profile a boot used.
    pub revision: String,
    /// Some template calls `secret()`: the overlay goes only to vouched-for nodes.
    pub renders_secrets: bool,
    templates: minijinja::Environment<'static>,
}

/// A validated set of profiles, by name.
#[derive(Debug, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Arc<LoadedProfile>>,
}

impl ProfileSet {
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name).map(|p| &p.profile)
    }

    pub fn loaded(&self, name: &str) -> Option<&Arc<LoadedProfile>> {
        self.profiles.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Profile, &Path)> {
        self.profiles.values().map(|p| (&p.profile, p.file.as_path()))
    }

    pub fn loaded_iter(&self) -> impl Iterator<Item = &Arc<LoadedProfile>> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    fn by_file(&self, file: &Path) -> Option<&Arc<LoadedProfile>> {
        self.profiles.values().find(|p| p.file == file)
    }

    /// The profile whose most specific selector matches `facts`, and why.
    pub fn select(&self, facts: &NodeFacts) -> Option<(&Profile, &ramboot_core::profile::Selector)> {
        ramboot_core::profile::select(self.profiles.values().map(|p| &p.profile), facts)
    }
}

impl ramboot_core::plan::Profiles for ProfileSet {
    fn get(&self, name: &str) -> Option<ramboot_core::plan::ProfileRef<'_>> {
        self.profiles.get(name).map(|p| p.planner_ref())
    }

    fn select(
        &self,
        facts: &NodeFacts,
    ) -> Option<(ramboot_core::plan::ProfileRef<'_>, &ramboot_core::profile::Selector)> {
        let (profile, selector) = ProfileSet::select(self, facts)?;
        Some((self.profiles.get(&profile.name)?.planner_ref(), selector))
    }
}

/// Every problem found in a profiles directory (not just the first).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ProfileErrors(pub Vec<SourceError>);

fn at(file: &Path, line: u64, message: String) -> SourceError {
    SourceError { file: file.to_path_buf(), line, column: if line > 0 { 1 } else { 0 }, message }
}

/// What a profile may refer to outside itself.
pub struct Context<'a> {
    /// Where `template_file`s live (`<profiles>/templates`).
    pub templates_dir: PathBuf,
    /// When set, referenced images must have been built.
    pub images: Option<&'a ImageStore>,
}

impl Context<'_> {
    pub fn for_dir<'a>(dir: &Path, images: Option<&'a ImageStore>) -> Context<'a> {
        Context { templates_dir: dir.join("templates"), images }
    }
}

/// Load and validate every profile in `dir`; any error refuses the whole set.
pub fn load_dir(dir: &Path, ctx: &Context) -> Result<ProfileSet, ProfileErrors> {
    let (set, errors) = assemble(dir, ctx, None)?;
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// Read every `*.yaml`/`*.yml` in `dir` and build the set. Files that fail keep
/// `previous`'s version (if given); their errors are returned beside the set.
fn assemble(
    dir: &Path,
    ctx: &Context,
    previous: Option<&ProfileSet>,
) -> Result<(ProfileSet, Vec<SourceError>), ProfileErrors> {
    let files = yaml::yaml_files(dir).map_err(|e| ProfileErrors(vec![at(dir, 0, format!("cannot read: {e}"))]))?;
    let mut set = ProfileSet::default();
    let mut errors = vec![];
    for file in files {
        let loaded = std::fs::read_to_string(&file)
            .map_err(|e| at(&file, 0, format!("cannot read: {e}")))
            .and_then(|text| load_one(&file, &text, ctx));
        let loaded: Arc<LoadedProfile> = match loaded {
            Ok(p) => Arc::new(p),
            Err(e) => {
                errors.push(e);
                match previous.and_then(|prev| prev.by_file(&file)) {
                    Some(last_good) => last_good.clone(),
                    None => continue,
                }
            }
        };
        if let Some(clash) = set.profiles.get(&loaded.profile.name) {
            errors.push(at(
                &file,
                locate_key(&file, "name"),
                format!("profile {:?} is already defined in {}", loaded.profile.name, clash.file.display()),
            ));
            continue;
        }
        if let Some(message) = selector_tie(&set, &loaded.profile) {
            errors.push(at(&file, locate_key(&file, "selectors"), message));
            continue;
        }
        set.profiles.insert(loaded.profile.name.clone(), loaded);
    }
    Ok((set, errors))
}

/// A selector of `candidate` that ties with another profile's: equally specific and
/// able to match the same node, so neither would be "the most specific".
fn selector_tie(set: &ProfileSet, candidate: &Profile) -> Option<String> {
    for theirs in set.profiles.values() {
        for a in &candidate.selectors {
            for b in &theirs.profile.selectors {
                if a.specificity() == b.specificity() && a.overlaps(b) {
                    return Some(format!(
                        "selector ({}) ties with profile {:?}'s selector ({}): a node could match both equally; \
                         make one more specific",
                        a.describe(),
                        theirs.profile.name,
                        b.describe()
                    ));
                }
            }
        }
    }
    None
}

/// Parse and validate one profile document.
pub fn parse_profile(file: &Path, text: &str) -> Result<Profile, SourceError> {
    let profile: Profile = yaml::parse(file, text)?;
    let invalid = |field: &str, message: String| at(file, locate_key_in(text, field), message);
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
    for s in &profile.selectors {
        if s.specificity() == 0 {
            return Err(invalid("selectors", "an empty selector would match every node; use default_profile".into()));
        }
        for (k, v) in &s.labels {
            if !ramboot_core::node::valid_label(k) || !ramboot_core::node::valid_label(v) {
                return Err(invalid("selectors", format!("label {k}={v}: {}", ramboot_core::node::LABEL_RULE)));
            }
        }
    }
    for v in &profile.volumes {
        // Room for the hostname in front: the volume name is `<hostname>-<name>`.
        if v.name.is_empty() || v.name.len() > 24 || !valid_name(&v.name) {
            return Err(invalid("volumes", format!("volume name {:?}: 1-24 letters, digits, '-' or '_'", v.name)));
        }
        let size = ramboot_proto::parse_size(&v.size).map_err(|e| invalid("volumes", e))?;
        crate::iscsi::service::check_volume("v", size).map_err(|e| invalid("volumes", e.to_string()))?;
    }
    if profile.volumes.iter().enumerate().any(|(i, a)| profile.volumes[..i].iter().any(|b| b.name == a.name)) {
        return Err(invalid("volumes", "two volumes with the same name".into()));
    }
    for f in &profile.files {
        let path_ok = f.path.starts_with('/') && !f.path.split('/').any(|c| c == "..") && !f.path.contains('\0');
        if !path_ok {
            return Err(invalid("files", format!("overlay path {:?} must be absolute with no '..'", f.path)));
        }
        if f.template.is_some() == f.template_file.is_some() {
            return Err(invalid("files", format!("{}: give exactly one of template and template_file", f.path)));
        }
        if let Some(mode) = &f.mode {
            if u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o7777) {
                return Err(invalid("files", format!("{}: mode {mode:?} is not an octal file mode", f.path)));
            }
        }
    }
    Ok(profile)
}

fn load_one(file: &Path, text: &str, ctx: &Context) -> Result<LoadedProfile, SourceError> {
    let profile = parse_profile(file, text)?;
    let invalid = |field: &str, message: String| at(file, locate_key_in(text, field), message);
    if let Some(images) = ctx.images {
        for (field, name) in [("stage1", &profile.stage1), ("image", &profile.image)] {
            if let Err(e) = images.manifest(name) {
                return Err(invalid(field, e.to_string()));
            }
        }
    }
    let mut env = template_env();
    for f in &profile.files {
        let source = match (&f.template, &f.template_file) {
            (Some(inline), _) => inline.clone(),
            (None, Some(name)) => {
                let root = std::fs::canonicalize(&ctx.templates_dir)
                    .map_err(|e| invalid("files", format!("{}: {e}", ctx.templates_dir.display())))?;
                let real = safe_path::resolve(&root, name)
                    .map_err(|e| invalid("files", format!("template_file {name:?}: {e}")))?;
                std::fs::read_to_string(&real).map_err(|e| invalid("files", format!("{}: {e}", real.display())))?
            }
            (None, None) => unreachable_source(),
        };
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(invalid("files", format!("{}: template is over {MAX_TEMPLATE_BYTES} bytes", f.path)));
        }
        env.add_template_owned(f.path.clone(), source)
            .map_err(|e| invalid("files", format!("{}: template does not compile: {e}", f.path)))?;
    }
    // `secret` is a function added at render time, so at load time every template
    // that calls it names it as an undeclared variable.
    let renders_secrets =
        env.templates().any(|(_, template)| template.undeclared_variables(false).contains(SECRET_FUNCTION));
    use sha2::Digest as _;
    let revision = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6]);
    Ok(LoadedProfile { profile, file: file.to_path_buf(), revision, renders_secrets, templates: env })
}

/// `parse_profile` guarantees one of the two sources; an empty template is harmless.
fn unreachable_source() -> String {
    String::new()
}

/// The sandbox templates run in: no loader (no filesystem), strict undefined
/// variables, bounded work.
fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_keep_trailing_newline(true);
    env
}

/// One rendered overlay file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("overlay file {path}: {message}")]
    Template { path: String, message: String },
    #[error("overlay is larger than {MAX_OVERLAY_BYTES} bytes")]
    TooLarge,
}

impl LoadedProfile {
    /// What the boot planner sees of it.
    pub fn planner_ref(&self) -> ramboot_core::plan::ProfileRef<'_> {
        ramboot_core::plan::ProfileRef {
            profile: &self.profile,
            revision: &self.revision,
            renders_secrets: self.renders_secrets,
        }
    }

    /// Render the profile's files for one node. `facts` is the template context
    /// (node, vars, ...); `secret(name)` looks names up in `secrets`.
    pub fn render_overlay(
        &self,
        facts: &serde_json::Value,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Vec<RenderedFile>, RenderError> {
        let mut env = self.templates.clone();
        let secrets = secrets.clone();
        env.add_function(SECRET_FUNCTION, move |name: String| -> Result<String, minijinja::Error> {
            secrets.get(&name).cloned().ok_or_else(|| {
                minijinja::Error::new(
                    minijinja::ErrorKind::UndefinedError,
                    format!("no secret named {name:?} in the secrets file"),
                )
            })
        });
        let mut total = 0usize;
        let mut out = vec![];
        for f in &self.profile.files {
            let err = |message: String| RenderError::Template { path: f.path.clone(), message };
            let template = env.get_template(&f.path).map_err(|e| err(e.to_string()))?;
            let text = template.render(facts).map_err(|e| err(e.to_string()))?;
            if text.len() > MAX_RENDERED_FILE_BYTES {
                return Err(err(format!("rendered file is over {MAX_RENDERED_FILE_BYTES} bytes")));
            }
            total += text.len();
            if total > MAX_OVERLAY_BYTES {
                return Err(RenderError::TooLarge);
            }
            let mode = f.mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0o644);
            out.push(RenderedFile { path: f.path.clone(), mode, contents: text.into_bytes() });
        }
        Ok(out)
    }
}

/// 1-based line of a top-level `key:` in `text`, or 0.
fn locate_key_in(text: &str, key: &str) -> u64 {
    text.lines()
        .position(|line| line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map_or(0, |i| i as u64 + 1)
}

fn locate_key(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file).map(|t| locate_key_in(&t, key)).unwrap_or(0)
}

/// The profiles the server serves now, swapped atomically on a good reload.
pub struct LiveProfiles {
    dir: PathBuf,
    current: ArcSwap<ProfileSet>,
    errors: ArcSwap<Vec<SourceError>>,
    /// Counts the sets swapped in, for whoever keeps a view derived from them
    /// (DHCP's boot chains).
    swaps: tokio::sync::watch::Sender<u64>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub profiles: usize,
    pub errors: Vec<SourceError>,
}

impl LiveProfiles {
    /// Start-up: every file must be valid.
    pub fn load(dir: &Path, images: &ImageStore) -> Result<LiveProfiles, ProfileErrors> {
        let set = load_dir(dir, &Context::for_dir(dir, Some(images)))?;
        Ok(LiveProfiles::fixed(dir, set))
    }

    /// Wrap an already validated set (tests, tools).
    pub fn fixed(dir: &Path, set: ProfileSet) -> LiveProfiles {
        LiveProfiles {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(set),
            errors: ArcSwap::from_pointee(vec![]),
            swaps: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn current(&self) -> Arc<ProfileSet> {
        self.current.load_full()
    }

    /// Changes each time a new set is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Each profile that names a boot chain, with it.
    pub fn boot_chains(&self) -> Vec<(String, ramboot_core::profile::BootChain)> {
        let set = self.current();
        set.iter().filter_map(|(p, _)| Some((p.name.clone(), p.boot_chain?))).collect()
    }

    pub fn errors(&self) -> Arc<Vec<SourceError>> {
        self.errors.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-read the directory. Good files apply, bad ones keep their last good
    /// version; the new set is swapped in as one unit.
    pub fn reload(&self, images: &ImageStore) -> ReloadReport {
        let previous = self.current.load_full();
        let ctx = Context::for_dir(&self.dir, Some(images));
        let (set, errors) = match assemble(&self.dir, &ctx, Some(&previous)) {
            Ok(x) => x,
            // The directory itself is unreadable: keep everything as it is.
            Err(ProfileErrors(errors)) => {
                self.errors.store(Arc::new(errors.clone()));
                return ReloadReport { profiles: previous.len(), errors };
            }
        };
        let report = ReloadReport { profiles: set.len(), errors: errors.clone() };
        self.current.store(Arc::new(set));
        self.errors.store(Arc::new(errors));
        self.swaps.send_modify(|n| *n += 1);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: compute\nstage1: stage1\nimage: compute-node\nkernel_args: [quiet]\n";

    fn no_images(dir: &Path) -> Context<'static> {
        Context::for_dir(dir, None)
    }

    #[test]
    fn shipped_profiles_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let set = load_dir(&dir, &no_images(&dir)).unwrap();
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
        let text = format!("{GOOD}files:\n  - path: etc/motd\n    template: hi\n");
        assert_eq!(parse_profile(Path::new("c.yaml"), &text).unwrap_err().line, 5);
    }

    #[test]
    fn declared_volumes_are_checked() {
        let ok = format!("{GOOD}volumes:\n  - {{name: vm-disks, size: 20G}}\n");
        assert_eq!(parse_profile(Path::new("c.yaml"), &ok).unwrap().volumes[0].size_bytes(), 20 << 30);
        for bad in [
            "{name: vm-disks, size: 20X}",
            "{name: vm-disks, size: 1000}",
            "{name: ../x, size: 1G}",
            "{name: a, size: 1G, fast: yes}",
        ] {
            let text = format!("{GOOD}volumes:\n  - {bad}\n");
            let err = parse_profile(Path::new("c.yaml"), &text).unwrap_err();
            assert!(err.line >= 5, "{bad}: {err}");
        }
        let twice = format!("{GOOD}volumes:\n  - {{name: a, size: 1G}}\n  - {{name: a, size: 2G}}\n");
        assert!(parse_profile(Path::new("c.yaml"), &twice).unwrap_err().message.contains("same name"));
    }

    #[test]
    fn duplicate_names_and_broken_files_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "name: [unclosed\n").unwrap();
        let errs = load_dir(dir.path(), &no_images(dir.path())).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("already defined"));
        assert!(errs[1].file.ends_with("c.yaml") && errs[1].line >= 1, "{}", errs[1]);
    }

    #[test]
    fn missing_images_and_broken_templates_are_validation_errors() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::new(dir.path().join("images"));
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let errs = load_dir(dir.path(), &Context::for_dir(dir.path(), Some(&images))).unwrap_err().0;
        assert_eq!(errs[0].line, 2, "stage1 is checked first: {}", errs[0]);
        assert!(errs[0].message.contains("ramboot image build stage1"), "{}", errs[0]);

        let text = format!("{GOOD}files:\n  - path: /etc/motd\n    template: \"{{{{ node.hostname \"\n");
        std::fs::write(dir.path().join("a.yaml"), text).unwrap();
        let errs = load_dir(dir.path(), &no_images(dir.path())).unwrap_err().0;
        assert!(errs[0].message.contains("does not compile") && errs[0].line == 5, "{}", errs[0]);

        let text = format!("{GOOD}files:\n  - path: /etc/motd\n    template_file: ../../etc/passwd\n");
        std::fs::write(dir.path().join("a.yaml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let errs = load_dir(dir.path(), &no_images(dir.path())).unwrap_err().0;
        assert!(errs[0].message.contains("leaves"), "{}", errs[0]);
    }

    fn facts(mac: u8, labels: &[(&str, &str)], serial: Option<&str>) -> NodeFacts {
        NodeFacts {
            mac: Some(ramboot_core::node::MacAddr([2, 0, 0, 0, 0, mac])),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            serial: serial.map(str::to_string),
            uuid: None,
            arch: Some("bios".into()),
        }
    }

    fn write_profiles(dir: &Path, profiles: &[(&str, &str)]) {
        for (name, selectors) in profiles {
            std::fs::write(
                dir.join(format!("{name}.yaml")),
                format!("name: {name}\nstage1: s\nimage: i\nselectors:\n{selectors}"),
            )
            .unwrap();
        }
    }

    #[test]
    fn most_specific_selector_wins() {
        let dir = tempfile::tempdir().unwrap();
        write_profiles(
            dir.path(),
            &[
                ("rack", "  - labels: {rack: r1}\n"),
                ("gpu", "  - labels: {rack: r1, gpu: \"yes\"}\n"),
                ("special", "  - mac: \"02:00:00:00:00:09\"\n    labels: {rack: r1, gpu: \"yes\"}\n"),
                ("serial", "  - serial: ABC123\n    arch: bios\n"),
                ("bios", "  - arch: bios\n"),
            ],
        );
        let set = load_dir(dir.path(), &no_images(dir.path())).unwrap();
        let pick = |f: &NodeFacts| set.select(f).map(|(p, _)| p.name.clone());
        assert_eq!(pick(&facts(1, &[("rack", "r1")], None)).as_deref(), Some("rack"));
        assert_eq!(pick(&facts(1, &[("rack", "r1"), ("gpu", "yes")], None)).as_deref(), Some("gpu"));
        assert_eq!(pick(&facts(9, &[("rack", "r1"), ("gpu", "yes")], None)).as_deref(), Some("special"));
        assert_eq!(pick(&facts(1, &[("rack", "r2")], None)).as_deref(), Some("bios"), "arch is the weakest fact");
        assert_eq!(
            pick(&facts(1, &[], Some("abc123"))).as_deref(),
            Some("serial"),
            "serials compare case-insensitively"
        );
        assert_eq!(
            pick(&facts(1, &[("rack", "r1")], Some("ABC123"))).as_deref(),
            Some("serial"),
            "a serial beats a label"
        );
    }

    #[test]
    fn equally_specific_overlapping_selectors_are_a_tie() {
        let dir = tempfile::tempdir().unwrap();
        write_profiles(dir.path(), &[("a", "  - labels: {role: compute}\n"), ("b", "  - labels: {rack: r1}\n")]);
        let errs = load_dir(dir.path(), &no_images(dir.path())).unwrap_err().0;
        assert!(errs[0].message.contains("ties with profile \"a\""), "{}", errs[0]);
        assert_eq!(errs[0].line, 4);
        // Disjoint values do not tie.
        let dir = tempfile::tempdir().unwrap();
        write_profiles(dir.path(), &[("a", "  - labels: {rack: r1}\n"), ("b", "  - labels: {rack: r2}\n")]);
        assert!(load_dir(dir.path(), &no_images(dir.path())).is_ok());
    }

    #[test]
    fn overlays_render_strictly_with_secrets_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/hosts.j2"), "127.0.1.1 {{ node.hostname }}\n").unwrap();
        let text = format!(
            "{GOOD}vars: {{site: lab}}\nfiles:\n  - path: /etc/motd\n    template: \"{{{{ node.hostname }}}} at {{{{ vars.site }}}}\"\n\
             \x20 - path: /etc/hosts\n    template_file: hosts.j2\n\
             \x20 - path: /etc/key\n    mode: \"0600\"\n    template: \"{{{{ secret('iscsi') }}}}\"\n"
        );
        std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
        let set = load_dir(dir.path(), &no_images(dir.path())).unwrap();
        let loaded = set.loaded("compute").unwrap();
        let ctx = serde_json::json!({"node": {"hostname": "n1"}, "vars": {"site": "lab"}});
        let secrets = [("iscsi".to_string(), "s3cret".to_string())].into();
        let files = loaded.render_overlay(&ctx, &secrets).unwrap();
        assert_eq!(files[0].contents, b"n1 at lab");
        assert_eq!(files[1].contents, b"127.0.1.1 n1\n");
        assert_eq!((files[2].mode, files[2].contents.as_slice()), (0o600, b"s3cret".as_slice()));

        let err = loaded.render_overlay(&serde_json::json!({"node": {}, "vars": {}}), &secrets).unwrap_err();
        assert!(err.to_string().contains("/etc/motd"), "strict undefined: {err}");
        let err = loaded.render_overlay(&ctx, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("no secret named \"iscsi\""), "{err}");
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{GOOD}files:\n  - path: /etc/big\n    template: \"{{% for i in range(100000) %}}{{% for j in range(100000) %}}x{{% endfor %}}{{% endfor %}}\"\n"
        );
        std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
        let set = load_dir(dir.path(), &no_images(dir.path())).unwrap();
        let err = set.loaded("compute").unwrap().render_overlay(&serde_json::json!({}), &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("/etc/big"), "{err}");
    }

    #[test]
    fn reload_keeps_the_last_good_version_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::new(dir.path().join("images"));
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let set = load_dir(dir.path(), &no_images(dir.path())).unwrap();
        let live = LiveProfiles::fixed(dir.path(), set);
        // Images are not built here: give the reload a context without the image check.
        let reload = |live: &LiveProfiles| {
            let previous = live.current();
            let (set, errors) = assemble(dir.path(), &no_images(dir.path()), Some(&previous)).unwrap();
            live.current.store(Arc::new(set));
            live.errors.store(Arc::new(errors));
        };
        std::fs::write(&file, GOOD.replace("kernel_args: [quiet]", "kernel_args: [quiet, debug]")).unwrap();
        reload(&live);
        assert_eq!(live.current().get("compute").unwrap().kernel_args, ["quiet", "debug"]);
        std::fs::write(&file, "name: compute\nstage1: stage1\nimage: [broken\n").unwrap();
        reload(&live);
        assert_eq!(live.current().get("compute").unwrap().kernel_args, ["quiet", "debug"], "last good version serves");
        assert_eq!(live.errors().len(), 1);
        assert!(live.errors()[0].to_string().contains("a.yaml:3:"), "{}", live.errors()[0]);
        std::fs::write(&file, GOOD).unwrap();
        reload(&live);
        assert_eq!(live.current().get("compute").unwrap().kernel_args, ["quiet"]);
        assert!(live.errors().is_empty());
        // And the real reload (with the image check) refuses, keeping the good version.
        let report = live.reload(&images);
        assert_eq!(report.profiles, 1);
        assert!(report.errors[0].message.contains("no image named"), "{:?}", report.errors);
        assert!(live.current().get("compute").is_some());
    }
}
