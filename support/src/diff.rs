//! What changes between two releases, from their manifests alone: ComfyUI's commit, custom nodes
//! added, removed or moved, node classes per node, packages, extensions, launch flags and
//! environment, and files and bytes. `comfy-build diff` and `comfyctl diff` print it; `--json`
//! gives it whole.

use bundle::{Kind, Manifest};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

/// One side of a diff.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub id: String,
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub comfyui_commit: Option<String>,
}

/// A value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub old: String,
    pub new: String,
}

/// A custom node or package present on one side only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub name: String,
    pub version: String,
}

/// Node classes a custom node gained and lost (from what each build's smoke start registered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Classes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// An environment variable of the launch set, added (`old` none), removed (`new` none) or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// How the file lists differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Files {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Bytes of the new release's files whose content the old one does not hold anywhere.
    pub new_content_bytes: u64,
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// Everything that differs between two releases.
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseDiff {
    pub old: Side,
    pub new: Side,
    pub target_changed: Option<Change>,
    pub comfyui: Option<Change>,
    pub nodes_added: Vec<Item>,
    pub nodes_removed: Vec<Item>,
    pub nodes_moved: Vec<Change>,
    pub classes: BTreeMap<String, Classes>,
    pub packages_added: Vec<Item>,
    pub packages_removed: Vec<Item>,
    pub packages_changed: Vec<Change>,
    pub extensions_changed: Vec<Change>,
    pub launch_args: Option<Change>,
    pub launch_env: Vec<EnvChange>,
    pub host_libs_added: Vec<String>,
    pub host_libs_removed: Vec<String>,
    /// Model files the release needs on the host's model store (`path sha256-prefix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models_removed: Vec<String>,
    pub files: Files,
    /// For a URL: the bytes a delta fetch would download to this host (set by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_bytes: Option<u64>,
}

fn side(id: &str, m: &Manifest) -> Side {
    Side {
        id: id.to_owned(),
        name: m.name.clone(),
        version: m.version.clone(),
        sequence: m.sequence,
        comfyui_commit: m.provenance.comfyui.as_ref().map(|c| c.commit.clone()),
    }
}

fn change(name: &str, old: &str, new: &str) -> Option<Change> {
    (old != new).then(|| Change {
        name: name.to_owned(),
        old: old.to_owned(),
        new: new.to_owned(),
    })
}

/// `name -> version` of `name==version` lines.
fn packages(m: &Manifest) -> BTreeMap<String, String> {
    m.provenance
        .packages
        .iter()
        .map(|p| match p.split_once("==") {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => (p.clone(), String::new()),
        })
        .collect()
}

/// Added, removed and changed between two keyed maps.
fn compare(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> (Vec<Item>, Vec<Item>, Vec<Change>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => added.push(Item {
                name: k.clone(),
                version: v.clone(),
            }),
            Some(o) => changed.extend(change(k, o, v)),
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            removed.push(Item {
                name: k.clone(),
                version: v.clone(),
            });
        }
    }
    (added, removed, changed)
}

fn set_diff(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let o: BTreeSet<&String> = old.iter().collect();
    let n: BTreeSet<&String> = new.iter().collect();
    (
        n.difference(&o).map(|s| (*s).clone()).collect(),
        o.difference(&n).map(|s| (*s).clone()).collect(),
    )
}

fn files(old: &Manifest, new: &Manifest) -> Files {
    let mut f = Files {
        old_bytes: old.total_bytes(),
        new_bytes: new.total_bytes(),
        ..Files::default()
    };
    let held: HashSet<&[u8; 32]> = old
        .files
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { sha256, .. } => Some(sha256),
            _ => None,
        })
        .collect();
    for e in &new.files {
        if let Kind::File { sha256, size, .. } = &e.kind {
            if !held.contains(sha256) {
                f.new_content_bytes += size;
            }
        }
    }
    // Both lists are sorted by path bytes: one merge.
    let (mut i, mut j) = (0, 0);
    while i < old.files.len() || j < new.files.len() {
        match (old.files.get(i), new.files.get(j)) {
            (Some(a), Some(b)) if a.path == b.path => {
                if a.kind == b.kind {
                    f.unchanged += 1;
                } else {
                    f.changed += 1;
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.path.as_bytes() < b.path.as_bytes() => {
                f.removed += 1;
                i += 1;
            }
            (Some(_), None) => {
                f.removed += 1;
                i += 1;
            }
            _ => {
                f.added += 1;
                j += 1;
            }
        }
    }
    f
}

/// What differs from `old` (bundle id `old_id`) to `new`.
pub fn diff(old_id: &str, old: &Manifest, new_id: &str, new: &Manifest) -> ReleaseDiff {
    let commit = |m: &Manifest| {
        m.provenance
            .comfyui
            .as_ref()
            .map(|c| c.commit.clone())
            .unwrap_or_default()
    };
    let nodes = |m: &Manifest| -> BTreeMap<String, String> {
        m.provenance
            .custom_nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    format!(
                        "{}{}",
                        n.commit,
                        if n.disabled { " (disabled)" } else { "" }
                    ),
                )
            })
            .collect()
    };
    let (nodes_added, nodes_removed, nodes_moved) = compare(&nodes(old), &nodes(new));
    let (packages_added, packages_removed, packages_changed) =
        compare(&packages(old), &packages(new));
    let exts = |m: &Manifest| -> BTreeMap<String, String> {
        m.provenance
            .extensions
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    format!("{} {} wheel {}", e.source, e.rev, e.wheel_sha256),
                )
            })
            .collect()
    };
    let (ext_added, ext_removed, mut extensions_changed) = compare(&exts(old), &exts(new));
    extensions_changed.extend(ext_added.into_iter().map(|i| Change {
        name: i.name,
        old: String::new(),
        new: i.version,
    }));
    extensions_changed.extend(ext_removed.into_iter().map(|i| Change {
        name: i.name,
        old: i.version,
        new: String::new(),
    }));
    let mut classes = BTreeMap::new();
    let names: BTreeSet<&String> = old
        .expected_nodes
        .keys()
        .chain(new.expected_nodes.keys())
        .collect();
    for n in names {
        let empty = Vec::new();
        let (added, removed) = set_diff(
            old.expected_nodes.get(n).unwrap_or(&empty),
            new.expected_nodes.get(n).unwrap_or(&empty),
        );
        if !added.is_empty() || !removed.is_empty() {
            classes.insert(n.clone(), Classes { added, removed });
        }
    }
    let mut launch_env = Vec::new();
    let keys: BTreeSet<&String> = old.launch.env.keys().chain(new.launch.env.keys()).collect();
    for k in keys {
        let (o, n) = (old.launch.env.get(k), new.launch.env.get(k));
        if o != n {
            launch_env.push(EnvChange {
                key: k.clone(),
                old: o.cloned(),
                new: n.cloned(),
            });
        }
    }
    let (host_libs_added, host_libs_removed) = set_diff(&old.host_libs, &new.host_libs);
    let model = |m: &bundle::ModelFile| format!("{} {}", m.path, crate::short_id(&m.sha256));
    let (models_added, models_removed) = set_diff(
        &old.models.iter().map(model).collect::<Vec<_>>(),
        &new.models.iter().map(model).collect::<Vec<_>>(),
    );
    ReleaseDiff {
        old: side(old_id, old),
        new: side(new_id, new),
        target_changed: change("target", &old.target, &new.target),
        comfyui: change("ComfyUI", &commit(old), &commit(new)),
        nodes_added,
        nodes_removed,
        nodes_moved,
        classes,
        packages_added,
        packages_removed,
        packages_changed,
        extensions_changed,
        launch_args: change(
            "args",
            &old.launch.args.join(" "),
            &new.launch.args.join(" "),
        ),
        launch_env,
        host_libs_added,
        host_libs_removed,
        models_added,
        models_removed,
        files: files(old, new),
        download_bytes: None,
    }
}

fn short(commit: &str) -> &str {
    crate::short_id(commit)
}

/// Bytes for people: `1.2 GB`, `340 kB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

impl ReleaseDiff {
    /// True when the two releases are the same bundle.
    pub fn identical(&self) -> bool {
        self.old.id == self.new.id
    }

    /// The diff for a terminal; every string from a manifest is escaped.
    pub fn render(&self) -> String {
        use crate::term_safe as t;
        let mut s = String::new();
        let side = |x: &Side| {
            format!(
                "{} {} (sequence {}, {})",
                t(&x.name),
                t(&x.version),
                x.sequence,
                short(&x.id)
            )
        };
        let _ = writeln!(s, "{} -> {}", side(&self.old), side(&self.new));
        if self.identical() {
            let _ = writeln!(s, "the same bundle: nothing differs");
            return s;
        }
        if let Some(c) = &self.target_changed {
            let _ = writeln!(s, "target: {} -> {}", t(&c.old), t(&c.new));
        }
        match &self.comfyui {
            Some(c) => {
                let _ = writeln!(s, "ComfyUI: {} -> {}", short(&c.old), short(&c.new));
            }
            None => {
                if let Some(c) = &self.new.comfyui_commit {
                    let _ = writeln!(s, "ComfyUI: {} (unchanged)", short(c));
                }
            }
        }
        if self.nodes_added.is_empty()
            && self.nodes_removed.is_empty()
            && self.nodes_moved.is_empty()
        {
            let _ = writeln!(s, "custom nodes: unchanged");
        } else {
            let _ = writeln!(s, "custom nodes:");
            for n in &self.nodes_moved {
                let _ = writeln!(
                    s,
                    "  ~ {} {} -> {}",
                    t(&n.name),
                    short(&n.old),
                    short(&n.new)
                );
            }
            for n in &self.nodes_added {
                let _ = writeln!(s, "  + {} {}", t(&n.name), short(&n.version));
            }
            for n in &self.nodes_removed {
                let _ = writeln!(s, "  - {} {}", t(&n.name), short(&n.version));
            }
        }
        if self.classes.is_empty() {
            let _ = writeln!(s, "node classes: unchanged");
        } else {
            let _ = writeln!(s, "node classes:");
            for (node, c) in &self.classes {
                let _ = writeln!(
                    s,
                    "  {}: {} added, {} removed",
                    t(node),
                    c.added.len(),
                    c.removed.len()
                );
                for a in &c.added {
                    let _ = writeln!(s, "    + {}", t(a));
                }
                for r in &c.removed {
                    let _ = writeln!(s, "    - {}", t(r));
                }
            }
        }
        let (pa, pr, pc) = (
            self.packages_added.len(),
            self.packages_removed.len(),
            self.packages_changed.len(),
        );
        if pa + pr + pc == 0 {
            let _ = writeln!(s, "packages: unchanged");
        } else {
            let _ = writeln!(s, "packages: {pc} changed, {pa} added, {pr} removed");
            for p in &self.packages_changed {
                let _ = writeln!(s, "  ~ {} {} -> {}", t(&p.name), t(&p.old), t(&p.new));
            }
            for p in &self.packages_added {
                let _ = writeln!(s, "  + {} {}", t(&p.name), t(&p.version));
            }
            for p in &self.packages_removed {
                let _ = writeln!(s, "  - {} {}", t(&p.name), t(&p.version));
            }
        }
        for e in &self.extensions_changed {
            let what = match (e.old.is_empty(), e.new.is_empty()) {
                (true, _) => format!("+ {}", t(&e.new)),
                (_, true) => "removed".to_owned(),
                _ => format!("{} -> {}", t(&e.old), t(&e.new)),
            };
            let _ = writeln!(s, "extension {}: {what}", t(&e.name));
        }
        if let Some(a) = &self.launch_args {
            let _ = writeln!(s, "launch args: {} -> {}", t(&a.old), t(&a.new));
        }
        for e in &self.launch_env {
            let v = |x: &Option<String>| {
                x.as_deref()
                    .map_or("(unset)".to_owned(), |v| t(v).into_owned())
            };
            let _ = writeln!(
                s,
                "launch env {}: {} -> {}",
                t(&e.key),
                v(&e.old),
                v(&e.new)
            );
        }
        if !self.host_libs_added.is_empty() || !self.host_libs_removed.is_empty() {
            let _ = writeln!(
                s,
                "host libraries: + {} - {}",
                self.host_libs_added.join(" "),
                self.host_libs_removed.join(" ")
            );
        }
        if !self.models_added.is_empty() || !self.models_removed.is_empty() {
            let _ = writeln!(
                s,
                "model files: + {} - {}",
                t(&self.models_added.join(", ")),
                t(&self.models_removed.join(", "))
            );
        }
        let f = &self.files;
        let _ = writeln!(
            s,
            "files: {} changed, {} added, {} removed, {} unchanged; {} of new content ({} -> {} in all)",
            f.changed,
            f.added,
            f.removed,
            f.unchanged,
            human_bytes(f.new_content_bytes),
            human_bytes(f.old_bytes),
            human_bytes(f.new_bytes)
        );
        if let Some(d) = self.download_bytes {
            let _ = writeln!(
                s,
                "download: {} (a delta of the frames this host lacks)",
                human_bytes(d)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bundle::{Entry, GitSource};

    fn release(kj: &str, classes: &[&str], numpy: &str, files: &[(&str, u8, u64)]) -> Manifest {
        let mut m = bundle::testing::template();
        m.name = "comfyui".into();
        m.provenance.comfyui = Some(GitSource {
            name: "ComfyUI".into(),
            url: "u".into(),
            commit: "a125cd84b054a57729b5eecab930ca9408719832".into(),
            disabled: false,
        });
        m.provenance.custom_nodes = vec![GitSource {
            name: "ComfyUI-KJNodes".into(),
            url: "u".into(),
            commit: kj.into(),
            disabled: false,
        }];
        m.provenance.packages = vec![format!("numpy=={numpy}"), "six==1.17.0".into()];
        m.expected_nodes.insert(
            "ComfyUI-KJNodes".into(),
            classes.iter().map(|c| (*c).to_owned()).collect(),
        );
        m.files = files
            .iter()
            .map(|(p, h, size)| Entry {
                path: (*p).into(),
                kind: Kind::File {
                    executable: false,
                    size: *size,
                    sha256: [*h; 32],
                },
            })
            .collect();
        m
    }

    #[test]
    fn a_moved_node_shows_its_commits_classes_packages_and_files() {
        let old = release(
            "ba6533deaaaaaaaa",
            &["A", "B"],
            "1.26.4",
            &[("a", 1, 10), ("b", 2, 20), ("c", 3, 30)],
        );
        let mut new = release(
            "1ddf5d4ebbbbbbbb",
            &["A", "C"],
            "2.0.0",
            &[("a", 1, 10), ("b", 9, 25), ("d", 3, 30), ("e", 7, 5)],
        );
        new.provenance.packages.push("tqdm==4.67.1".into());
        new.launch.env.insert("K".into(), "v".into());
        let d = diff("1111111111111111", &old, "2222222222222222", &new);
        assert_eq!(
            d.nodes_moved,
            [Change {
                name: "ComfyUI-KJNodes".into(),
                old: "ba6533deaaaaaaaa".into(),
                new: "1ddf5d4ebbbbbbbb".into()
            }]
        );
        assert_eq!(
            d.classes["ComfyUI-KJNodes"],
            Classes {
                added: vec!["C".into()],
                removed: vec!["B".into()]
            }
        );
        assert_eq!(d.packages_changed[0].name, "numpy");
        assert_eq!(d.packages_added[0].name, "tqdm");
        assert!(d.comfyui.is_none());
        // a same; b changed; c removed; d added (content the old release holds); e added.
        assert_eq!(
            (
                d.files.unchanged,
                d.files.changed,
                d.files.removed,
                d.files.added
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(d.files.new_content_bytes, 25 + 5);
        let text = d.render();
        for want in [
            "comfyui 1 (sequence 1, 111111111111) -> comfyui 1 (sequence 1, 222222222222)",
            "ComfyUI: a125cd84b054 (unchanged)",
            "  ~ ComfyUI-KJNodes ba6533deaaaa -> 1ddf5d4ebbbb",
            "  ComfyUI-KJNodes: 1 added, 1 removed\n    + C\n    - B\n",
            "packages: 1 changed, 1 added, 0 removed\n  ~ numpy 1.26.4 -> 2.0.0\n  + tqdm 4.67.1\n",
            "launch env K: (unset) -> v",
            "files: 1 changed, 2 added, 1 removed, 1 unchanged; 30 B of new content (60 B -> 70 B in all)",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let same = diff("1111111111111111", &old, "1111111111111111", &old);
        assert!(same.render().contains("the same bundle: nothing differs"));
    }
}
