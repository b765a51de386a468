//! ComfyUI's runtime contract, in one place for the builder's smoke start and the host's unit and
//! health check alike: the flags a release starts with and the data layout they name, the
//! model-paths file, ComfyUI-Manager's settings on an immutable release, the bounded HTTP client
//! ([`http`]) and the workflow checks ([`workflow`]).

pub mod http;
pub mod workflow;

use bundle::Launch;
use std::path::Path;

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
    out.extend([
        "--listen".into(),
        listen.to_owned(),
        "--port".into(),
        port.to_string(),
        "--input-directory".into(),
        d("input"),
        "--output-directory".into(),
        d("output"),
        "--user-directory".into(),
        d("user"),
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

/// True when `m` ships ComfyUI-Manager enabled.
pub fn has_manager(nodes: &[bundle::GitSource]) -> bool {
    nodes
        .iter()
        .any(|n| !n.disabled && n.name.eq_ignore_ascii_case("ComfyUI-Manager"))
}

/// The model-paths file a started release reads: every model folder below `models`.
pub fn model_paths_yaml(models: &Path) -> String {
    format!(
        "comfyctl:\n  base_path: {}\n  is_default: true\n  checkpoints: checkpoints\n  loras: loras\n  vae: vae\n  clip: clip\n  unet: unet\n  diffusion_models: diffusion_models\n  text_encoders: text_encoders\n  controlnet: controlnet\n  upscale_models: upscale_models\n  embeddings: embeddings\n",
        models.display()
    )
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
}
