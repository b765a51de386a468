//! Smoke: start the frozen app once, the way the host's unit starts it (the release's own
//! `ComfyUI/custom_nodes`, the host's data layout and flags from [`comfyui::run_args`]), from
//! a copy at another path, on loopback with `--cpu` (GPU-only flags dropped). It records which node
//! classes `/object_info` lists for each custom node, which classes a node registered that
//! `/object_info` could not describe, and every path the app wrote inside its own tree. A node marked
//! `(IMPORT FAILED)`, or an app that exits first, fails the build.

use anyhow::{bail, Context as _, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Flags that need a GPU (or a GPU-only package) and so are left out of a CPU smoke start.
const GPU_ONLY: &[&str] = &["--gpu-only", "--highvram", "--cpu", "--disable-cuda-malloc"];

/// What one smoke start saw.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmokeReport {
    /// Node classes `/object_info` lists, per custom node directory.
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Classes a custom node registered that `/object_info` could not describe (ComfyUI logs
    /// `An error occurred while retrieving information for the 'X' node`), per node directory
    /// (`?` when the log does not say whose class it is), with the error line.
    pub broken: BTreeMap<String, Vec<(String, String)>>,
    /// Paths (relative to the release) the app created or changed inside its own tree, with
    /// whether each is a directory; nested paths are folded into the shallowest one.
    pub written: Vec<(String, bool)>,
    /// Paths inside the release the app removed.
    pub removed: Vec<String>,
    /// Time spent checking and running the recipe's workflows.
    #[serde(default)]
    pub workflow_seconds: f64,
}

/// The start's arguments: the release's flags without GPU-only ones, `--cpu`, loopback on `port`,
/// and the host's data layout under `data`.
fn smoke_args(launch: &[String], port: u16, data: &Path) -> Vec<String> {
    let mut kept: Vec<String> = launch
        .iter()
        .filter(|a| !GPU_ONLY.contains(&a.split('=').next().unwrap_or(a)))
        .cloned()
        .collect();
    kept.push("--cpu".into());
    let l = bundle::Launch {
        args: kept,
        ..Default::default()
    };
    comfyui::run_args(
        &l,
        "127.0.0.1",
        port,
        data,
        &data.join("extra_model_paths.yaml"),
        &data.join("comfyui.db"),
    )
}

fn log_tail(log: &Path) -> String {
    let s = fs_err::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// One entry of a tree snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) dir: bool,
    size: u64,
    mtime: (i64, i64),
    ino: u64,
}

/// Every path below `root` (not following links), with what identifies its content.
pub(crate) fn snapshot(root: &Path) -> Result<HashMap<String, Stamp>> {
    let mut out = HashMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e?;
        let p = e.path();
        let m = e.metadata()?;
        let rel = p
            .strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        let dir = m.is_dir();
        out.insert(
            rel,
            Stamp {
                dir,
                size: if dir { 0 } else { m.len() },
                mtime: if dir {
                    (0, 0)
                } else {
                    (m.mtime(), m.mtime_nsec())
                },
                ino: if dir { 0 } else { m.ino() },
            },
        );
    }
    Ok(out)
}

/// Bytecode Python writes beside sources: not state (the release ships its own, and the host's
/// read-only tree makes Python skip writing it).
fn is_bytecode(rel: &str) -> bool {
    rel.split('/').any(|c| c == "__pycache__") || rel.ends_with(".pyc")
}

/// Paths created or changed between two snapshots, folded to the shallowest, and paths removed.
pub(crate) fn written(
    before: &HashMap<String, Stamp>,
    after: &HashMap<String, Stamp>,
) -> (Vec<(String, bool)>, Vec<String>) {
    let mut changed: Vec<(&String, bool)> = after
        .iter()
        .filter(|(p, s)| {
            !is_bytecode(p)
                && match before.get(*p) {
                    None => true,
                    Some(b) => !s.dir && b != *s,
                }
        })
        .map(|(p, s)| (p, s.dir))
        .collect();
    changed.sort();
    let mut out: Vec<(String, bool)> = Vec::new();
    for (p, dir) in changed {
        if out
            .last()
            .is_some_and(|(top, is_dir)| *is_dir && p.starts_with(&format!("{top}/")))
        {
            continue;
        }
        out.push((p.clone(), dir));
    }
    let mut removed: Vec<String> = before
        .keys()
        .filter(|p| !is_bytecode(p) && !after.contains_key(*p))
        .cloned()
        .collect();
    removed.sort();
    (out, removed)
}

/// Classes ComfyUI could not describe, attributed to the custom node whose file the traceback
/// that follows the error names.
fn broken_classes(log: &str, nodes: &[String]) -> BTreeMap<String, Vec<(String, String)>> {
    const MARK: &str = "An error occurred while retrieving information for the '";
    let lines: Vec<&str> = log.lines().collect();
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.split(MARK).nth(1) else {
            continue;
        };
        let class = rest.split('\'').next().unwrap_or(rest).to_owned();
        let tb: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|t| !t.contains(MARK))
            .take(80)
            .copied()
            .collect();
        let owner = tb
            .iter()
            .find_map(|t| {
                nodes.iter().find(|n| {
                    t.contains(&format!("custom_nodes/{n}/"))
                        || t.contains(&format!("custom_nodes.{n}"))
                })
            })
            .cloned()
            .unwrap_or_else(|| "?".into());
        // The exception line: the last of the traceback that is not a frame or source line.
        let error = tb
            .iter()
            .take_while(|t| !t.trim().is_empty())
            .filter(|t| !t.starts_with(' ') && !t.starts_with("Traceback"))
            .last()
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        out.entry(owner).or_default().push((class, error));
    }
    out
}

/// Runs the smoke start of `release` (a copy of the stage whose `ComfyUI/` is its own, so writes
/// there never reach the cache); returns what it saw.
pub fn smoke(
    release: &Path,
    launch: &[String],
    nodes: &[String],
    workflows: &[bundle::Workflow],
    log: &Path,
    timeout: Duration,
) -> Result<SmokeReport> {
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("data");
    for d in comfyui::data_dirs() {
        fs_err::create_dir_all(data.join(d))?;
    }
    fs_err::write(
        data.join("extra_model_paths.yaml"),
        comfyui::model_paths_yaml(&data.join(comfyui::MODELS_DIR)),
    )?;
    // ComfyUI-Manager starts with the settings a host gives it (strong security, offline).
    if nodes.iter().any(|n| comfyui::is_manager(n)) {
        let ini = data.join("user").join(comfyui::MANAGER_CONFIG_PATH);
        fs_err::create_dir_all(ini.parent().expect("below user/"))?;
        fs_err::write(ini, comfyui::MANAGER_CONFIG)?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    if let Some(p) = log.parent() {
        fs_err::create_dir_all(p)?;
    }
    let before = snapshot(release)?;
    let out = fs_err::File::create(log)?.into_parts().0;
    let args = smoke_args(launch, port, &data);
    tracing::debug!(?args, "smoke start");
    let mut child = Command::new(release.join(bundle::LAUNCH_ENTRY))
        .args(&args)
        .current_dir(&data)
        .env("HOME", &data)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CUDA_VISIBLE_DEVICES", "")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the frozen app for the smoke test")?;
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut exited = || {
        guard
            .0
            .try_wait()
            .ok()
            .flatten()
            .map(|status| format!("the app exited during the smoke start ({status})"))
    };
    match comfyui::http::wait_for_app(&client, &base, timeout, &mut exited)? {
        comfyui::http::Started::Up(_) => {}
        comfyui::http::Started::Gone { why, .. } => {
            bail!("{why}; log {}:\n{}", log.display(), log_tail(log))
        }
        comfyui::http::Started::TimedOut { .. } => bail!(
            "the app did not answer /system_stats within {}s; log {}:\n{}",
            timeout.as_secs(),
            log.display(),
            log_tail(log)
        ),
    }
    let info = comfyui::http::object_info(&client, &base)?;
    let ran = comfyui::workflow::check_and_run(
        &base,
        workflows,
        &info,
        comfyui::workflow::Models::Ignore,
        &|| timeout,
    )
    .map_err(|f| {
        use comfyui::workflow::Why;
        let f = *f;
        let name = &f.workflow;
        match f.why {
            Why::DoesNotFit(p) => anyhow::anyhow!(
                "workflow {name} does not fit this release ({} problem(s)):\n  {}",
                p.len(),
                p.join("\n  ")
            ),
            Why::Run(e) => anyhow::anyhow!(
                "workflow {name} failed when run on the CPU: {e:#}; log {}:\n{}",
                log.display(),
                log_tail(log)
            ),
            Why::Unreadable(e) => e.context(format!("workflow {name}")),
            Why::MissingModels(m) => anyhow::anyhow!("workflow {name}: {}", m.join(", ")),
        }
    })?;
    let workflow_seconds = ran.seconds;
    drop(guard);
    let after = snapshot(release)?;
    let text = fs_err::read_to_string(log).unwrap_or_default();
    for n in nodes {
        let failed = text
            .lines()
            .any(|l| l.contains("(IMPORT FAILED)") && l.trim_end().ends_with(&format!("/{n}")));
        if failed {
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("custom_nodes/{n}")) || l.contains("Error"))
                .collect();
            bail!(
                "custom node {n} failed to import during the smoke start; its log lines ({}):\n{}\n\nlast lines:\n{}",
                log.display(),
                own[own.len().saturating_sub(15)..].join("\n"),
                log_tail(log)
            );
        }
    }
    let found = comfyui::classes_by_node(&info, nodes);
    let (written, removed) = written(&before, &after);
    Ok(SmokeReport {
        nodes: found,
        broken: broken_classes(&text, nodes),
        written,
        removed,
        workflow_seconds,
    })
}

/// The classes of `report.broken` no recipe entry accepts, as one message per node.
pub fn unaccepted_broken(
    report: &SmokeReport,
    accepted: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (node, classes) in &report.broken {
        let bad: Vec<&(String, String)> = classes
            .iter()
            .filter(|(c, _)| {
                !accepted
                    .iter()
                    .any(|(n, set)| (n == node || node == "?") && set.contains(c))
            })
            .collect();
        if bad.is_empty() {
            continue;
        }
        let names: Vec<&str> = bad.iter().map(|(c, _)| c.as_str()).collect();
        let who = if node == "?" {
            "an unknown custom node".to_owned()
        } else {
            format!("custom node {node}")
        };
        out.push(format!(
            "{who} registers {} class(es) that /object_info cannot describe: {} (first error: {}); \
             pin a commit that works with this ComfyUI, or accept them by name with \
             `broken_classes = [...]` in its [[custom_nodes]] section",
            bad.len(),
            names.join(", "),
            bad[0].1
        ));
    }
    out
}

/// What the smoke start runs, for `build --dry-run`.
pub fn commands(plan: &crate::plan::Plan) -> Vec<String> {
    let mut smoke = vec![
        "launch.sh --cpu --listen 127.0.0.1 --port <free> (GPU-only flags dropped); GET /system_stats, /object_info".to_owned(),
    ];
    if !plan.workflows.is_empty() {
        smoke.push(format!(
            "check {} workflow(s) against /object_info; run {} through /prompt",
            plan.workflows.len(),
            plan.workflows.iter().filter(|w| w.run).count()
        ));
    }
    smoke
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_flags_and_address_are_replaced_and_the_host_layout_added() {
        let a: Vec<String> = [
            "--listen",
            "0.0.0.0",
            "--port",
            "8188",
            "--gpu-only",
            "--use-sage-attention",
            "--bf16-unet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = smoke_args(&a, 9999, Path::new("/s"));
        // Sage attention imports without a GPU: the smoke start checks it (ComfyUI exits at start
        // when the package is missing, and says `Using sage attention` when it loaded).
        assert_eq!(
            &out[..7],
            [
                "--use-sage-attention",
                "--bf16-unet",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                "9999"
            ]
        );
        assert!(!out.iter().any(|x| x == "--gpu-only"
            || x == "0.0.0.0"
            || x == "8188"
            || x == "--base-directory"));
        assert!(out.windows(2).any(|w| w == ["--user-directory", "/s/user"]));
    }

    fn stamp(dir: bool, size: u64, ino: u64) -> Stamp {
        Stamp {
            dir,
            size,
            mtime: (1, 0),
            ino,
        }
    }

    #[test]
    fn writes_are_folded_to_the_shallowest_path() {
        let before: HashMap<String, Stamp> = [
            ("n".to_owned(), stamp(true, 0, 0)),
            ("n/a.json".to_owned(), stamp(false, 3, 1)),
            ("n/gone".to_owned(), stamp(false, 3, 2)),
        ]
        .into();
        let mut after = before.clone();
        after.remove("n/gone");
        after.insert("n/a.json".into(), stamp(false, 4, 1));
        after.insert("n/new.json".into(), stamp(false, 1, 3));
        after.insert("n/cache".into(), stamp(true, 0, 0));
        after.insert("n/cache/x".into(), stamp(false, 1, 4));
        after.insert("n/__pycache__".into(), stamp(true, 0, 0));
        after.insert("n/__pycache__/m.pyc".into(), stamp(false, 1, 5));
        let (w, r) = written(&before, &after);
        assert_eq!(
            w,
            [
                ("n/a.json".to_owned(), false),
                ("n/cache".to_owned(), true),
                ("n/new.json".to_owned(), false)
            ]
        );
        assert_eq!(r, ["n/gone"]);
    }

    #[test]
    fn broken_classes_are_attributed_by_traceback() {
        let log = "\
[ERROR] An error occurred while retrieving information for the 'Foo' node.
Traceback (most recent call last):
  File \"/r/ComfyUI/server.py\", line 1, in get_object_info
    out[x] = node_info(x)
  File \"/r/ComfyUI/custom_nodes/KJ/nodes/x.py\", line 9, in INPUT_TYPES
    io.DynamicCombo
AttributeError: module 'comfy_api.latest._io' has no attribute 'DynamicCombo'

[ERROR] An error occurred while retrieving information for the 'Bar' node.
Traceback (most recent call last):
  File \"/r/ComfyUI/server.py\", line 1, in get_object_info
ValueError: nope
";
        let nodes = vec!["KJ".to_owned(), "Other".to_owned()];
        let b = broken_classes(log, &nodes);
        assert_eq!(
            b["KJ"],
            [(
                "Foo".to_owned(),
                "AttributeError: module 'comfy_api.latest._io' has no attribute 'DynamicCombo'"
                    .to_owned()
            )]
        );
        assert_eq!(b["?"], [("Bar".to_owned(), "ValueError: nope".to_owned())]);
        let report = SmokeReport {
            broken: b,
            ..Default::default()
        };
        let msgs = unaccepted_broken(&report, &BTreeMap::new());
        assert_eq!(msgs.len(), 2);
        assert!(
            msgs[1].starts_with("custom node KJ registers 1 class(es)"),
            "{}",
            msgs[1]
        );
        assert!(msgs[1].contains("Foo") && msgs[1].contains("DynamicCombo"));
        let accepted = [("KJ".to_owned(), ["Foo".to_owned()].into())].into();
        let msgs = unaccepted_broken(&report, &accepted);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].contains("unknown custom node") && msgs[0].contains("Bar"));
    }
}
