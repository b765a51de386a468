//! The signed manifest: canonical TOML whose sha256 is the bundle id. Parsing refuses unknown keys,
//! non-canonical bytes and any file list that breaks the path rules, so a manifest that parses is one
//! the extractor can follow blindly.

use crate::paths::{check_path, check_symlink_target, parent};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The only format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Hard ceilings a reader applies whatever a manifest says. The real ComfyUI release (torch and
/// five custom nodes) lists about 60,000 entries in about 13 MB: both ceilings leave several times
/// that, and bound what parsing can allocate (the parsed form takes about as much as the text).
pub const MAX_MANIFEST_BYTES: u64 = 96 << 20;
/// The most file-list entries a manifest may have.
pub const MAX_ENTRIES: usize = 400_000;
/// The most bytes of everything before the file list (names, provenance, checks, node classes).
pub const MAX_HEAD_BYTES: usize = 2 << 20;
/// The most bytes one file-list entry may take in the text (a path and a link target at
/// [`crate::paths::MAX_PATH`], each escaped).
const MAX_ENTRY_BYTES: usize = 16 << 10;
/// What separates the header and each file-list entry in canonical form. The writer refuses a
/// manifest whose values would contain it, so the reader can cut the text here and parse the
/// header and each entry on its own: a TOML parse of the whole file list would hold a parse tree
/// about forty times the text's size.
const FILES_SEP: &str = "\n[[files]]\n";

/// What a release is and everything needed to run and check it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// Monotonic release counter; hosts refuse a lower one unless told to downgrade.
    pub sequence: u64,
    /// e.g. `linux-aarch64-cu130-sm_121`; a host refuses a bundle for another target.
    pub target: String,
    /// RFC 3339 UTC, from `SOURCE_DATE_EPOCH` so rebuilds are byte-identical.
    pub created: String,
    /// Seconds since the epoch stamped on every tar header (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// Top-level directories ComfyUI writes to; the host maps them under `data/`.
    #[serde(default)]
    pub mutable_dirs: Vec<String>,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default)]
    pub launch: Launch,
    pub limits: Limits,
    /// Node classes each custom node (by directory name) must register, checked by health.
    #[serde(default)]
    pub expected_nodes: BTreeMap<String, Vec<String>>,
    /// Checks run with the release's own interpreter before it may become current.
    #[serde(default)]
    pub preflight: Vec<Check>,
    /// Shared libraries the embedded interpreter (`python/`) needs (by `DT_NEEDED` name) and the
    /// release does not ship: the host's dynamic loader must find them. Sorted; checked by
    /// pre-flight and `comfyctl doctor`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_libs: Vec<String>,
    /// The operator's workflows (ComfyUI's API format), checked against the app at build and on
    /// the host; those marked `run` are executed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<Workflow>,
    /// Paths inside the release that the app writes (found by the build's smoke start or declared
    /// by the recipe): each is a symlink into [`STATE_DIR`], which the host links to per-node state
    /// under its data directory, so the release itself stays read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<StatePath>,
    /// Model files the release's nodes (or their install scripts) need, which live on the
    /// host's model store, not in the bundle: checked (and fetched) by the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelFile>,
    pub files: Vec<Entry>,
}

/// Everything in [`Manifest`] but its file list, parsed and written on its own (see [`FILES_SEP`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    format: u32,
    name: String,
    version: String,
    sequence: u64,
    target: String,
    created: String,
    source_date_epoch: u64,
    #[serde(default)]
    mutable_dirs: Vec<String>,
    #[serde(default)]
    provenance: Provenance,
    #[serde(default)]
    launch: Launch,
    limits: Limits,
    #[serde(default)]
    expected_nodes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    preflight: Vec<Check>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    host_libs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    workflows: Vec<Workflow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    state: Vec<StatePath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    models: Vec<ModelFile>,
}

impl Manifest {
    fn head(&self) -> Head {
        Head {
            format: self.format,
            name: self.name.clone(),
            version: self.version.clone(),
            sequence: self.sequence,
            target: self.target.clone(),
            created: self.created.clone(),
            source_date_epoch: self.source_date_epoch,
            mutable_dirs: self.mutable_dirs.clone(),
            provenance: self.provenance.clone(),
            launch: self.launch.clone(),
            limits: self.limits.clone(),
            expected_nodes: self.expected_nodes.clone(),
            preflight: self.preflight.clone(),
            host_libs: self.host_libs.clone(),
            workflows: self.workflows.clone(),
            state: self.state.clone(),
            models: self.models.clone(),
        }
    }

    fn from_head(h: Head, files: Vec<Entry>) -> Self {
        Manifest {
            format: h.format,
            name: h.name,
            version: h.version,
            sequence: h.sequence,
            target: h.target,
            created: h.created,
            source_date_epoch: h.source_date_epoch,
            mutable_dirs: h.mutable_dirs,
            provenance: h.provenance,
            launch: h.launch,
            limits: h.limits,
            expected_nodes: h.expected_nodes,
            preflight: h.preflight,
            host_libs: h.host_libs,
            workflows: h.workflows,
            state: h.state,
            models: h.models,
            files,
        }
    }
}

/// The directory at the release root that the host turns into a link to its node state
/// (`data/node-state`); no bundle may ship an entry there.
pub const STATE_DIR: &str = "node-state";

/// A model file the release needs on the host's model store (`models/<path>`), by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Below the models tree, e.g. `ultralytics/bbox/face_yolov8m.pt`.
    pub path: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
    /// Where a host fetches it (https), when it has no copy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

/// One workflow of the operator's, carried by the release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The file's stem in the recipe, e.g. `invert`.
    pub name: String,
    /// Queue it through `/prompt` (at build on the CPU, on the host as part of health): for
    /// workflows that need no model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run: bool,
    /// The workflow in API format, as compact JSON.
    pub prompt: String,
}

/// The most workflows a manifest may carry, and the most bytes of one.
pub const MAX_WORKFLOWS: usize = 64;
pub const MAX_WORKFLOW_BYTES: usize = 1 << 20;

/// One writable path of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePath {
    /// The symlink in the release, e.g. `ComfyUI/custom_nodes/X/pysssss.json`.
    pub path: String,
    /// Where it points below [`STATE_DIR`] (and so below the host's `data/node-state`): the owner
    /// (custom node directory, or `ComfyUI`) then the path inside it, e.g. `X/pysssss.json`.
    pub target: String,
    /// A directory (the host creates it) rather than a file (the app creates it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    /// The release's own copy, placed at `target` the first time a host has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

impl StatePath {
    /// The link target a state path's symlink must have: up to the release root, then
    /// `node-state/<target>`.
    pub fn link_target(path: &str, target: &str) -> String {
        let depth = parent(path).split('/').filter(|c| !c.is_empty()).count();
        format!("{}{STATE_DIR}/{target}", "../".repeat(depth))
    }
}

/// Where every byte came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default)]
    pub recipe_sha256: String,
    #[serde(default)]
    pub lock_sha256: String,
    /// `passed` when the build's smoke start ran, `skipped` otherwise.
    #[serde(default)]
    pub smoke: String,
    #[serde(default)]
    pub comfyui: Option<GitSource>,
    #[serde(default)]
    pub custom_nodes: Vec<GitSource>,
    #[serde(default)]
    pub extensions: Vec<Extension>,
    /// The frozen package list, `name==version`, sorted.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// A git source pinned to a commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub name: String,
    pub url: String,
    pub commit: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// A compiled extension and the wheel it produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    pub name: String,
    pub source: String,
    pub rev: String,
    pub wheel_sha256: String,
}

/// The script at the release root that starts ComfyUI (the host's unit runs
/// `current/launch.sh`, so a rollback is a flip of `current` and nothing else).
pub const LAUNCH_ENTRY: &str = "launch.sh";

/// How the release is started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// Script relative to the release root: [`LAUNCH_ENTRY`] (or empty in old manifests).
    #[serde(default)]
    pub entry: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Device type `/system_stats` must report when healthy (`cuda`, `cpu`).
    #[serde(default)]
    pub device_type: String,
}

/// A pre-flight check: Python source run by the release's interpreter; non-zero exit fails it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub python: String,
}

/// Totals the reader enforces while extracting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub files: u64,
    pub bytes: u64,
}

/// One payload path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEntry", into = "RawEntry")]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
}

/// What a payload path is. Modes are normalised: files 0644 or 0755, dirs 0755, links 0777.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        executable: bool,
        size: u64,
        sha256: [u8; 32],
    },
    Symlink {
        target: String,
    },
}

impl Entry {
    /// The mode stored in the tar header.
    pub fn mode(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o755,
            Kind::File {
                executable: true, ..
            } => 0o755,
            Kind::File {
                executable: false, ..
            } => 0o644,
            Kind::Symlink { .. } => 0o777,
        }
    }

    /// Content size (0 for dirs and links).
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

impl From<Entry> for RawEntry {
    fn from(e: Entry) -> Self {
        RawEntry::from(&e)
    }
}

impl From<&Entry> for RawEntry {
    fn from(e: &Entry) -> Self {
        let mode = Some(format!("{:04o}", e.mode()));
        match &e.kind {
            Kind::Dir => RawEntry {
                path: e.path.clone(),
                kind: "dir".into(),
                mode,
                size: None,
                sha256: None,
                target: None,
            },
            Kind::File { size, sha256, .. } => RawEntry {
                path: e.path.clone(),
                kind: "file".into(),
                mode,
                size: Some(*size),
                sha256: Some(hex::encode(sha256)),
                target: None,
            },
            Kind::Symlink { target } => RawEntry {
                path: e.path.clone(),
                kind: "symlink".into(),
                mode: None,
                size: None,
                sha256: None,
                target: Some(target.clone()),
            },
        }
    }
}

impl TryFrom<RawEntry> for Entry {
    type Error = String;
    fn try_from(r: RawEntry) -> std::result::Result<Self, String> {
        let p = &r.path;
        let kind = match (
            r.kind.as_str(),
            r.mode.as_deref(),
            r.size,
            r.sha256,
            r.target,
        ) {
            ("dir", Some("0755"), None, None, None) => Kind::Dir,
            ("file", Some(m @ ("0644" | "0755")), Some(size), Some(h), None) => {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(&h, &mut sha256)
                    .map_err(|_| format!("{p}: sha256 is not 64 hex digits"))?;
                if h != hex::encode(sha256) {
                    return Err(format!("{p}: sha256 must be lower-case hex"));
                }
                Kind::File {
                    executable: m == "0755",
                    size,
                    sha256,
                }
            }
            ("symlink", None, None, None, Some(target)) => Kind::Symlink { target },
            ("dir" | "file" | "symlink", ..) => {
                return Err(format!(
                    "{p}: fields or mode do not fit a {} (modes are normalised: 0644/0755)",
                    r.kind
                ))
            }
            (k, ..) => return Err(format!("{p}: unknown kind {k:?}")),
        };
        Ok(Entry { path: r.path, kind })
    }
}

impl Manifest {
    /// The canonical bytes: what is signed and hashed. The header, then each entry as a
    /// `[[files]]` table, each written by `toml` on its own (the same bytes as writing the whole).
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>> {
        let ser = |r: std::result::Result<String, toml::ser::Error>| {
            r.map_err(|e| Error::BadManifest(e.to_string()))
        };
        if self.files.is_empty() {
            return ser(toml::to_string(self)).map(String::into_bytes);
        }
        let mut out = ser(toml::to_string(&self.head()))?;
        if out.contains(FILES_SEP) {
            return Err(Error::BadManifest(
                "a value before the file list holds a line `[[files]]`".into(),
            ));
        }
        for e in &self.files {
            let entry = ser(toml::to_string(&RawEntry::from(e)))?;
            if entry.contains(FILES_SEP) {
                return Err(Error::BadManifest(format!(
                    "{:?}: the entry's text holds a line `[[files]]`",
                    e.path
                )));
            }
            out.push_str(FILES_SEP);
            out.push_str(&entry);
        }
        Ok(out.into_bytes())
    }

    /// Parses and validates manifest bytes; refuses anything our writer would not have produced.
    /// The header and each file-list entry are parsed and compared with their canonical text one
    /// at a time, so memory stays near the text's own size whatever the file list holds.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::LimitExceeded(format!(
                "manifest is {} bytes, limit {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| Error::BadManifest("not UTF-8".into()))?;
        let bad = |e: toml::de::Error| Error::BadManifest(e.to_string());
        let (head_text, list) = match text.find(FILES_SEP) {
            Some(i) => (&text[..i], Some(&text[i + FILES_SEP.len()..])),
            None => (text, None),
        };
        if head_text.len() > MAX_HEAD_BYTES {
            return Err(Error::LimitExceeded(format!(
                "the manifest's header (everything before the file list) is {} bytes, limit {MAX_HEAD_BYTES}",
                head_text.len()
            )));
        }
        let m = match list {
            None => toml::from_str::<Manifest>(text).map_err(bad)?,
            Some(list) => {
                let head: Head = toml::from_str(head_text).map_err(bad)?;
                let count = list.matches(FILES_SEP).count() + 1;
                if count > MAX_ENTRIES {
                    return Err(Error::LimitExceeded(format!(
                        "{count} entries, limit {MAX_ENTRIES}"
                    )));
                }
                let mut files = Vec::with_capacity(count);
                for (i, chunk) in list.split(FILES_SEP).enumerate() {
                    files.push(parse_entry(i, chunk)?);
                }
                Manifest::from_head(head, files)
            }
        };
        if m.format != FORMAT_VERSION {
            return Err(Error::BadManifest(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION}); upgrade comfyctl",
                m.format
            )));
        }
        m.validate()?;
        let canonical = match list {
            None => m.to_canonical_bytes()?,
            Some(_) => toml::to_string(&m.head())
                .map_err(|e| Error::BadManifest(e.to_string()))?
                .into_bytes(),
        };
        if canonical != head_text.as_bytes() {
            return Err(Error::BadManifest("not in canonical form".into()));
        }
        Ok(m)
    }

    /// The file-list invariants: sorted, unique, every parent a directory listed before, safe links,
    /// totals within the manifest's own limits.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("target", &self.target),
        ] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
            {
                return Err(Error::BadManifest(format!(
                    "{field} {value:?} must be non-empty [A-Za-z0-9._+-]"
                )));
            }
        }
        if self.host_libs.len() > MAX_HOST_LIBS {
            return Err(Error::LimitExceeded(format!(
                "{} host libraries, limit {MAX_HOST_LIBS}",
                self.host_libs.len()
            )));
        }
        for (i, lib) in self.host_libs.iter().enumerate() {
            if !is_library_name(lib) {
                return Err(Error::BadManifest(format!(
                    "host library {lib:?} must be a file name of [A-Za-z0-9._+-], at most 255 bytes"
                )));
            }
            if i > 0 && self.host_libs[i - 1] >= *lib {
                return Err(Error::BadManifest(
                    "host libraries must be sorted and unique".into(),
                ));
            }
        }
        if !self.launch.entry.is_empty() && self.launch.entry != LAUNCH_ENTRY {
            return Err(Error::BadManifest(format!(
                "launch.entry is {:?}: releases start through {LAUNCH_ENTRY:?} at their root",
                self.launch.entry
            )));
        }
        if self.workflows.len() > MAX_WORKFLOWS {
            return Err(Error::LimitExceeded(format!(
                "{} workflows, limit {MAX_WORKFLOWS}",
                self.workflows.len()
            )));
        }
        for w in &self.workflows {
            if !is_library_name(&w.name) || w.prompt.len() > MAX_WORKFLOW_BYTES {
                return Err(Error::BadManifest(format!(
                    "workflow {:?}: the name must be [A-Za-z0-9._+-] and the prompt at most {MAX_WORKFLOW_BYTES} bytes",
                    w.name
                )));
            }
        }
        if self.files.len() > MAX_ENTRIES {
            return Err(Error::LimitExceeded(format!(
                "{} entries, limit {MAX_ENTRIES}",
                self.files.len()
            )));
        }
        let mut prev: Option<&str> = None;
        let mut bytes: u64 = 0;
        for (i, e) in self.files.iter().enumerate() {
            check_path(&e.path)?;
            if let Some(p) = prev {
                if p.as_bytes() >= e.path.as_bytes() {
                    return Err(if p == e.path {
                        Error::DuplicateEntry {
                            path: e.path.clone(),
                        }
                    } else {
                        Error::BadManifest(format!("file list not in sorted order at {:?}", e.path))
                    });
                }
            }
            prev = Some(&e.path);
            let par = parent(&e.path);
            if !par.is_empty() && !matches!(kind_in(&self.files[..i], par), Some(Kind::Dir)) {
                return Err(Error::UnsafePath {
                    path: e.path.clone(),
                    reason: "parent is not a directory listed earlier in the manifest",
                });
            }
            if let Kind::Symlink { target } = &e.kind {
                check_symlink_target(&e.path, target)?;
            }
            bytes = bytes
                .checked_add(e.size())
                .ok_or_else(|| Error::LimitExceeded("total size overflows".into()))?;
        }
        for m in &self.models {
            check_path(&m.path)?;
            if m.sha256.len() != 64
                || !m
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(Error::BadManifest(format!(
                    "model {:?}: sha256 must be 64 lowercase hex digits",
                    m.path
                )));
            }
            if !(m.url.is_empty() || m.url.starts_with("https://") || m.url.starts_with("http://"))
            {
                return Err(Error::BadManifest(format!(
                    "model {:?}: url must be http(s)",
                    m.path
                )));
            }
        }
        for st in &self.state {
            check_path(&st.target)?;
            let owner = st.target.split('/').next().unwrap_or_default();
            if owner.is_empty() || owner == st.target {
                return Err(Error::BadManifest(format!(
                    "state target {:?} must be <owner>/<path>",
                    st.target
                )));
            }
            let want = StatePath::link_target(&st.path, &st.target);
            match kind_in(&self.files, &st.path) {
                Some(Kind::Symlink { target }) if *target == want => {}
                _ => {
                    return Err(Error::BadManifest(format!(
                        "state path {:?} is not a listed symlink to {want:?}",
                        st.path
                    )))
                }
            }
            if let Some(seed) = &st.seed {
                let ok = match kind_in(&self.files, seed) {
                    Some(Kind::Dir) => st.dir,
                    Some(Kind::File { .. }) => !st.dir,
                    _ => false,
                };
                if !ok {
                    return Err(Error::BadManifest(format!(
                        "state seed {seed:?} of {:?} is not a listed {}",
                        st.path,
                        if st.dir { "directory" } else { "file" }
                    )));
                }
            }
        }
        if let Some(e) = self
            .files
            .iter()
            .find(|e| e.path == STATE_DIR || e.path.starts_with(&format!("{STATE_DIR}/")))
        {
            return Err(Error::UnsafePath {
                path: e.path.clone(),
                reason: "the release root's node-state belongs to the host",
            });
        }
        if self.files.len() as u64 > self.limits.files {
            return Err(Error::LimitExceeded(format!(
                "{} entries, limit {}",
                self.files.len(),
                self.limits.files
            )));
        }
        if bytes > self.limits.bytes {
            return Err(Error::LimitExceeded(format!(
                "{bytes} bytes, limit {}",
                self.limits.bytes
            )));
        }
        Ok(())
    }

    /// Total content bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(Entry::size).sum()
    }
}

/// The most host libraries a manifest may name.
pub const MAX_HOST_LIBS: usize = 4096;

/// A shared library's file name as `DT_NEEDED` gives it (`libc.so.6`): no path, nothing to escape.
pub fn is_library_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The kind of `path` in a file list sorted by path bytes.
fn kind_in<'a>(files: &'a [Entry], path: &str) -> Option<&'a Kind> {
    files
        .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
        .ok()
        .map(|i| &files[i].kind)
}

/// One file-list entry's text (the lines after its `[[files]]`), which must be exactly what the
/// writer makes of the entry it parses to.
fn parse_entry(i: usize, chunk: &str) -> Result<Entry> {
    let at = |msg: String| Error::BadManifest(format!("file list entry {}: {msg}", i + 1));
    if chunk.len() > MAX_ENTRY_BYTES {
        return Err(at(format!(
            "{} bytes, limit {MAX_ENTRY_BYTES}",
            chunk.len()
        )));
    }
    let raw: RawEntry = toml::from_str(chunk).map_err(|e| at(e.to_string()))?;
    let again = toml::to_string(&raw).map_err(|e| at(e.to_string()))?;
    if again != chunk {
        return Err(Error::BadManifest("not in canonical form".into()));
    }
    Entry::try_from(raw).map_err(at)
}

/// `SOURCE_DATE_EPOCH`-style seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(epoch: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The bundle id: lower-case hex sha256 of the canonical manifest bytes.
pub fn bundle_id(manifest_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(manifest_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            name: "demo".into(),
            version: "1.0".into(),
            sequence: 3,
            target: "linux-x86_64-cpu".into(),
            created: rfc3339(1_735_689_600),
            source_date_epoch: 1_735_689_600,
            mutable_dirs: vec!["models".into()],
            provenance: Provenance::default(),
            launch: Launch::default(),
            limits: Limits { files: 3, bytes: 5 },
            expected_nodes: BTreeMap::new(),
            preflight: vec![Check {
                name: "import".into(),
                python: "import os".into(),
            }],
            host_libs: Vec::new(),
            workflows: Vec::new(),
            state: Vec::new(),
            models: Vec::new(),
            files: vec![
                Entry {
                    path: "a".into(),
                    kind: Kind::Dir,
                },
                Entry {
                    path: "a/f".into(),
                    kind: Kind::File {
                        executable: true,
                        size: 5,
                        sha256: [7; 32],
                    },
                },
                Entry {
                    path: "a/l".into(),
                    kind: Kind::Symlink { target: "f".into() },
                },
            ],
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn canonical_roundtrip() {
        let m = sample();
        let bytes = m.to_canonical_bytes().unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let spaced = text.replacen("name = ", "name =  ", 1);
        assert!(matches!(
            Manifest::parse(spaced.as_bytes()),
            Err(Error::BadManifest(_))
        ));
        let unknown = format!("bogus = 1\n{text}");
        let err = Manifest::parse(unknown.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn file_list_rules() {
        let mut m = sample();
        m.files.swap(1, 2);
        assert!(matches!(m.validate(), Err(Error::BadManifest(_))));
        let mut m = sample();
        m.files[2] = m.files[1].clone();
        assert!(matches!(m.validate(), Err(Error::DuplicateEntry { .. })));
        let mut m = sample();
        m.files[0].kind = Kind::Symlink { target: "x".into() };
        assert!(matches!(m.validate(), Err(Error::UnsafePath { .. })));
        let mut m = sample();
        m.limits.bytes = 4;
        assert!(matches!(m.validate(), Err(Error::LimitExceeded(_))));
    }

    /// The header and entries written one at a time are the bytes `toml` writes for the whole.
    #[test]
    fn piecewise_writing_matches_the_whole() {
        let mut m = sample();
        m.limits.files = 10;
        m.preflight[0].python = "import os\nprint('[[files]]')\n".into();
        m.expected_nodes
            .insert("n".into(), vec!["A \"q\"".into(), "B\tC".into()]);
        m.launch.env.insert("K".into(), "v\nw".into());
        for (i, p) in ["a/\"q\"", "a/l\u{e9}\n[[files]]x", "a/t\\"]
            .iter()
            .enumerate()
        {
            m.files.push(Entry {
                path: (*p).into(),
                kind: if i == 1 {
                    Kind::Symlink {
                        target: "f\n[[files]] ".into(),
                    }
                } else {
                    Kind::Dir
                },
            });
        }
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        m.files.push(Entry {
            path: "a/s".into(),
            kind: Kind::Symlink {
                target: "../node-state/n/s".into(),
            },
        });
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        m.state.push(StatePath {
            path: "a/s".into(),
            target: "n/s".into(),
            dir: false,
            seed: None,
        });
        m.validate().unwrap();
        let bytes = m.to_canonical_bytes().unwrap();
        assert_eq!(bytes, toml::to_string(&m).unwrap().into_bytes());
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        // A value that `toml` would write with a line `[[files]]` in it is refused when writing,
        // so the reader's cut is always where the writer put it.
        let mut odd = m.clone();
        odd.files[2].path = "a/l\n[[files]]\nx".into();
        odd.files.sort_by(|a, b| a.path.cmp(&b.path));
        odd.validate().unwrap();
        let err = odd.to_canonical_bytes().unwrap_err();
        assert!(
            err.to_string().contains("holds a line `[[files]]`"),
            "{err}"
        );
        // With no file list at all, too.
        let mut empty = sample();
        empty.files.clear();
        let bytes = empty.to_canonical_bytes().unwrap();
        assert_eq!(bytes, toml::to_string(&empty).unwrap().into_bytes());
        assert_eq!(Manifest::parse(&bytes).unwrap(), empty);
    }

    #[test]
    fn entry_count_and_sizes_are_capped_before_parsing() {
        let m = sample();
        let text = String::from_utf8(m.to_canonical_bytes().unwrap()).unwrap();
        let entry = text.split(FILES_SEP).last().unwrap();
        // One entry too many: refused by counting, not by parsing 400,001 tables.
        let many = format!(
            "{text}{}",
            format!("{FILES_SEP}{entry}").repeat(MAX_ENTRIES - m.files.len() + 1)
        );
        let err = Manifest::parse(many.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(s) if s == "400001 entries, limit 400000"),
            "{err}"
        );
        // One oversized entry.
        let long = text.replacen(
            "path = \"a/f\"",
            &format!("path = \"a/f{}\"", "x".repeat(20_000)),
            1,
        );
        let err = Manifest::parse(long.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("file list entry 2: 20"), "{err}");
        // A header past its ceiling.
        let big = text.replacen(
            "name = \"demo\"",
            &format!(
                "name = \"demo\"\n{}",
                "# padding\n".repeat(MAX_HEAD_BYTES / 10 + 1)
            ),
            1,
        );
        assert!(matches!(
            Manifest::parse(big.as_bytes()),
            Err(Error::LimitExceeded(_))
        ));
        // A non-canonical entry (a padded value) is refused like a non-canonical header.
        let padded = text.replacen("kind = \"file\"", "kind =  \"file\"", 1);
        let err = Manifest::parse(padded.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            Error::BadManifest("not in canonical form".into()).to_string()
        );
        // An inline file list is not canonical either.
        let inline = format!("files = []\n{}", text.split(FILES_SEP).next().unwrap());
        assert!(Manifest::parse(inline.as_bytes()).is_err());
    }

    #[test]
    fn a_release_starts_through_launch_sh_only() {
        let mut m = sample();
        m.launch.entry = LAUNCH_ENTRY.into();
        m.validate().unwrap();
        m.launch.entry = "../../bin/sh".into();
        let err = m.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("releases start through \"launch.sh\""),
            "{err}"
        );
    }

    #[test]
    fn host_libraries_are_sorted_plain_names() {
        let mut m = sample();
        m.host_libs = vec!["libc.so.6".into(), "libcuda.so.1".into()];
        m.validate().unwrap();
        let bytes = m.to_canonical_bytes().unwrap();
        assert!(String::from_utf8_lossy(&bytes)
            .contains("host_libs = [\"libc.so.6\", \"libcuda.so.1\"]"));
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        for bad in [
            vec!["libcuda.so.1", "libc.so.6"],
            vec!["libc.so.6", "libc.so.6"],
            vec!["../lib/libc.so.6"],
            vec!["libc.so.6\u{1b}]0;x"],
            vec![""],
        ] {
            let mut m = sample();
            m.host_libs = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(
                matches!(m.validate(), Err(Error::BadManifest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn state_paths_must_be_links_into_node_state() {
        let mut m = sample();
        m.limits.files = 10;
        m.files.push(Entry {
            path: "a/s".into(),
            kind: Kind::Symlink {
                target: "../node-state/n/s".into(),
            },
        });
        m.state.push(StatePath {
            path: "a/s".into(),
            target: "n/s".into(),
            dir: false,
            seed: Some("a/f".into()),
        });
        m.validate().unwrap();
        let bytes = m.to_canonical_bytes().unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        // A seed of the wrong kind, a link elsewhere, an owner-less target, a shipped node-state.
        let mut bad = m.clone();
        bad.state[0].dir = true;
        assert!(matches!(bad.validate(), Err(Error::BadManifest(_))));
        let mut bad = m.clone();
        bad.state[0].target = "n/t".into();
        assert!(matches!(bad.validate(), Err(Error::BadManifest(_))));
        let mut bad = m.clone();
        bad.state[0].target = "s".into();
        assert!(matches!(bad.validate(), Err(Error::BadManifest(_))));
        let mut bad = m.clone();
        bad.files.push(Entry {
            path: "node-state".into(),
            kind: Kind::Dir,
        });
        assert!(matches!(bad.validate(), Err(Error::UnsafePath { .. })));
    }
}
