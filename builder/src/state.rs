//! Writable node state in an immutable release. Every path the app writes inside its own tree (seen
//! by the smoke start, or declared per node in the recipe) becomes a symlink into the release's
//! `node-state/<owner>/<path>`, which the host links to `data/node-state`. A path the stage already
//! held moves to `node-state-seed/<owner>/<path>`: the host's first copy of that state.

use crate::plan::{Checkout, Role};
use crate::smoke::SmokeReport;
use anyhow::{bail, Result};
use std::path::Path;

/// Where the release keeps the shipped copy of each state path.
pub const SEED_DIR: &str = "node-state-seed";

/// A path of the release that must be writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Relative to the release root, e.g. `ComfyUI/custom_nodes/X/pysssss.json`.
    pub rel: String,
    /// Below `node-state`: `X/pysssss.json`, or `ComfyUI/...` for the app's own files.
    pub target: String,
    pub dir: bool,
}

/// The state target of a path inside `ComfyUI/`: the custom node directory (or `ComfyUI`) and the
/// path inside it.
fn target_of(rel: &str) -> Option<String> {
    let rest = rel.strip_prefix("ComfyUI/")?;
    match rest.strip_prefix("custom_nodes/") {
        Some(inner) => {
            let (node, path) = inner.split_once('/')?;
            (!node.is_empty() && !path.is_empty()).then(|| format!("{node}/{path}"))
        }
        None => Some(format!("ComfyUI/{rest}")),
    }
}

/// The state paths of a build: what the smoke start saw written inside `ComfyUI/`, plus what the
/// recipe declares per enabled custom node; sorted, nested paths folded into the outer one.
pub fn paths(trees: &[Checkout], smoke: Option<&SmokeReport>) -> Result<Vec<Wanted>> {
    let mut all: Vec<Wanted> = Vec::new();
    for (p, dir) in smoke.map(|s| s.written.as_slice()).unwrap_or_default() {
        if !p.starts_with("ComfyUI/") {
            continue;
        }
        let Some(target) = target_of(p) else {
            bail!("the app wrote {p}, which cannot become node state (a custom node's own directory); fix the node or drop it");
        };
        all.push(Wanted {
            rel: p.clone(),
            target,
            dir: *dir,
        });
    }
    for Checkout { source: s, .. } in trees {
        if s.role != Role::Node || s.disabled {
            continue;
        }
        for declared in &s.state {
            let inner = declared.trim_end_matches('/');
            all.push(Wanted {
                rel: format!("ComfyUI/custom_nodes/{}/{inner}", s.name),
                target: format!("{}/{inner}", s.name),
                dir: declared.ends_with('/'),
            });
        }
    }
    all.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut out: Vec<Wanted> = Vec::new();
    for w in all {
        if let Some(last) = out.last() {
            if last.rel == w.rel || w.rel.starts_with(&format!("{}/", last.rel)) {
                continue;
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// Turns each wanted path of `stage` into its link, moving what the stage held there to the seed
/// directory; returns the manifest's state entries.
pub fn apply(stage: &Path, wanted: &[Wanted]) -> Result<Vec<bundle::StatePath>> {
    let mut out = Vec::new();
    for w in wanted {
        let p = stage.join(&w.rel);
        let mut dir = w.dir;
        let seed = match fs_err::symlink_metadata(&p) {
            Ok(m) => {
                dir = m.is_dir();
                let seed_rel = format!("{SEED_DIR}/{}", w.target);
                let dest = stage.join(&seed_rel);
                if let Some(parent) = dest.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                fs_err::rename(&p, &dest)?;
                Some(seed_rel)
            }
            Err(_) => None,
        };
        if let Some(parent) = p.parent() {
            fs_err::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(bundle::StatePath::link_target(&w.rel, &w.target), &p)?;
        out.push(bundle::StatePath {
            path: w.rel.clone(),
            target: w.target.clone(),
            dir,
            seed,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            target_of("ComfyUI/custom_nodes/X/a/b.json").as_deref(),
            Some("X/a/b.json")
        );
        assert_eq!(target_of("ComfyUI/web/x").as_deref(), Some("ComfyUI/web/x"));
        assert_eq!(target_of("ComfyUI/custom_nodes/X"), None);
        assert_eq!(target_of("venv/x"), None);
    }

    #[test]
    fn apply_links_and_seeds() {
        let t = tempfile::tempdir().unwrap();
        let node = t.path().join("ComfyUI/custom_nodes/X");
        fs_err::create_dir_all(&node).unwrap();
        fs_err::write(node.join("conf.json"), "{}").unwrap();
        let wanted = [
            Wanted {
                rel: "ComfyUI/custom_nodes/X/conf.json".into(),
                target: "X/conf.json".into(),
                dir: false,
            },
            Wanted {
                rel: "ComfyUI/custom_nodes/X/cache/sub".into(),
                target: "X/cache/sub".into(),
                dir: true,
            },
        ];
        let st = apply(t.path(), &wanted).unwrap();
        assert_eq!(
            fs_err::read_link(node.join("conf.json")).unwrap(),
            Path::new("../../../node-state/X/conf.json")
        );
        assert_eq!(
            fs_err::read_link(node.join("cache/sub")).unwrap(),
            Path::new("../../../../node-state/X/cache/sub")
        );
        assert_eq!(
            fs_err::read_to_string(t.path().join("node-state-seed/X/conf.json")).unwrap(),
            "{}"
        );
        assert_eq!(st[0].seed.as_deref(), Some("node-state-seed/X/conf.json"));
        assert_eq!(st[1].seed, None);
        assert!(st[1].dir && !st[0].dir);
    }
}
