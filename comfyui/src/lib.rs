//! ComfyUI's runtime contract, in one place for the builder's smoke start and the host's unit and
//! health check alike: the flags a release starts with and the data layout they name, the
//! model-paths file, ComfyUI-Manager's settings on an immutable release, the bounded HTTP client
//! ([`http`]) and the workflow checks ([`workflow`]).

pub mod http;
pub mod workflow;

use bundle::Launch;
use std::collections::BTreeMap;
use std::path::Path;

/// Folders below a release's data directory that a host may map to shared storage (NFS):
/// models, and the inputs and outputs of jobs.
pub const SHARED_DATA_DIRS: [&str; 3] = [MODELS_DIR, "input", "output"];
/// The models folder below the data directory, named in the model-paths file.
pub const MODELS_DIR: &str = "models";
/// ComfyUI's own local folders below the data directory: its user settings and its temp folder.
pub const LOCAL_DATA_DIRS: [&str; 2] = ["user", "temp"];

/// Every folder of the data layout [`run_args`] names, shared first: what the builder's smoke
/// start creates in its scratch directory and the host in `data/`.
pub fn data_dirs() -> impl Iterator<Item = &'static str> {
    SHARED_DATA_DIRS.into_iter().chain(LOCAL_DATA_DIRS)
}

/// The arguments a release is started with, by the host's unit and by the build's smoke start
/// alike: the release's own flags without `--listen`/`--port`, then `listen` and `port`, and
/// the host's data layout: `data/{input,output,user}`, `data/temp` (ComfyUI appends `temp` to
/// `--temp-directory` and empties it at start and exit), the model-paths file
/// `model_paths` ([`model_paths_yaml`]; on a host it lives beside the unit's environment,
/// where only root writes) and the SQLite database `db`.
/// No `--base-directory`: ComfyUI would then look for custom nodes below it instead of in the
/// release's own `ComfyUI/custom_nodes`.
pub fn run_args(
    launch: &Launch,
    listen: &str,
    port: u16,
    data: &Path,
    model_paths: &Path,
    db: &Path,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut it = launch.args.iter().peekable();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or(a);
        if flag == "--listen" || flag == "--port" {
            if !a.contains('=') && it.peek().is_some_and(|n| !n.starts_with("--")) {
                it.next();
            }
            continue;
        }
        out.push(a.clone());
    }
    let d = |s: &str| data.join(s).display().to_string();
    let [_, input, output] = SHARED_DATA_DIRS;
    let [user, temp] = LOCAL_DATA_DIRS;
    // ComfyUI appends its own `temp` to --temp-directory.
    debug_assert_eq!(temp, "temp");
    out.extend([
        "--listen".into(),
        listen.to_owned(),
        "--port".into(),
        port.to_string(),
        "--input-directory".into(),
        d(input),
        "--output-directory".into(),
        d(output),
        "--user-directory".into(),
        d(user),
        "--temp-directory".into(),
        data.display().to_string(),
        "--extra-model-paths-config".into(),
        model_paths.display().to_string(),
        "--database-url".into(),
        format!("sqlite:///{}", db.display()),
    ]);
    out
}

/// ComfyUI-Manager's settings on an immutable release, below the user directory at
/// [`MANAGER_CONFIG_PATH`]: `security_level = strong` makes it refuse every install, update and
/// uninstall with a message (nodes change through the recipe), `network_mode = offline` keeps a
/// host without GitHub from waiting on it at startup. The host writes it once (an operator may
/// change it); the builder's smoke start uses it too.
pub const MANAGER_CONFIG: &str = "# Written by comfyctl: releases are immutable, nodes change through the recipe.\n[default]\nsecurity_level = strong\nnetwork_mode = offline\n";

/// Where ComfyUI-Manager reads [`MANAGER_CONFIG`], relative to ComfyUI's user directory.
pub const MANAGER_CONFIG_PATH: &str = "default/ComfyUI-Manager/config.ini";

/// Whether a custom node folder is ComfyUI-Manager's.
pub fn is_manager(folder: &str) -> bool {
    folder.eq_ignore_ascii_case("ComfyUI-Manager")
}

/// True when a release's custom nodes include ComfyUI-Manager, enabled.
pub fn has_manager(nodes: &[bundle::GitSource]) -> bool {
    nodes.iter().any(|n| !n.disabled && is_manager(&n.name))
}

/// The model-paths file a started release reads: every model folder below `models`.
pub fn model_paths_yaml(models: &Path) -> String {
    format!(
        "comfyctl:\n  base_path: {}\n  is_default: true\n  checkpoints: checkpoints\n  loras: loras\n  vae: vae\n  clip: clip\n  unet: unet\n  diffusion_models: diffusion_models\n  text_encoders: text_encoders\n  controlnet: controlnet\n  upscale_models: upscale_models\n  embeddings: embeddings\n",
        models.display()
    )
}

/// The custom node folder that registered a class, from its `/object_info` entry's
/// `python_module` (`custom_nodes.<folder>`); `None` for ComfyUI's own classes.
pub fn node_of(class_info: &serde_json::Value) -> Option<&str> {
    class_info
        .get("python_module")?
        .as_str()?
        .strip_prefix("custom_nodes.")
}

/// The classes `/object_info` lists for each of `nodes` (by folder name), sorted: what the
/// build's smoke start records in the manifest.
pub fn classes_by_node(
    info: &serde_json::Value,
    nodes: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> =
        nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    for (class, v) in info.as_object().into_iter().flatten() {
        if let Some(list) = node_of(v).and_then(|dir| found.get_mut(dir)) {
            list.push(class.clone());
        }
    }
    for v in found.values_mut() {
        v.sort();
    }
    found
}

/// Each expected class (`node:class`) that `/object_info` does not list as that node's: what
/// the host's health check refuses a release for.
pub fn missing_classes(
    info: &serde_json::Value,
    expected: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (dir, classes) in expected {
        for c in classes {
            if info.get(c).and_then(node_of) != Some(dir.as_str()) {
                missing.push(format!("{dir}:{c}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use bundle::Launch;
    use std::path::Path;

    #[test]
    fn run_args_replace_address_and_add_the_data_layout() {
        let l = Launch {
            args: ["--listen", "0.0.0.0", "--port=8188", "--cpu"]
                .map(String::from)
                .to_vec(),
            ..Launch::default()
        };
        let a = super::run_args(
            &l,
            "127.0.0.1",
            9000,
            Path::new("/d"),
            Path::new("/s/unit/extra_model_paths.yaml"),
            Path::new("/d/db/x/c.db"),
        );
        assert_eq!(
            a.join(" "),
            "--cpu --listen 127.0.0.1 --port 9000 --input-directory /d/input --output-directory /d/output \
             --user-directory /d/user --temp-directory /d --extra-model-paths-config /s/unit/extra_model_paths.yaml \
             --database-url sqlite:////d/db/x/c.db"
        );
        assert!(!a.iter().any(|x| x == "--base-directory"));
    }

    #[test]
    fn classes_are_matched_to_the_node_folder_that_registered_them() {
        let info = serde_json::json!({
            "KSampler": {"python_module": "nodes"},
            "Blur": {"python_module": "custom_nodes.blur-node"},
            "Aaa": {"python_module": "custom_nodes.blur-node"},
            "Other": {"python_module": "custom_nodes.other"},
            "Odd": {"python_module": 7}
        });
        let found = super::classes_by_node(&info, &["blur-node".into(), "gone".into()]);
        assert_eq!(found["blur-node"], ["Aaa", "Blur"]);
        assert!(found["gone"].is_empty());
        let expected = [
            (
                "blur-node".to_owned(),
                vec!["Blur".to_owned(), "Other".to_owned()],
            ),
            ("gone".to_owned(), vec!["Odd".to_owned()]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            super::missing_classes(&info, &expected),
            ["blur-node:Other", "gone:Odd"]
        );
    }
}
