//! Requirements: ComfyUI's, the core extras, and each custom node's with the torch stack and
//! `nvidia-*` lines dropped (the seed's filter) — except that a node asking for a torch version the
//! recipe does not pin fails the build by name instead of being silently ignored or obeyed
//! (ComfyUI-Manager #1136).

use anyhow::{bail, Result};
use pep508_rs::{Requirement, VerbatimUrl};
use std::str::FromStr as _;

fn matches_drop(name: &str, drop: &[String]) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    drop.iter().any(|d| {
        let d = d.to_ascii_lowercase().replace('_', "-");
        match d.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => n == d,
        }
    })
}

/// Filters one requirements file. `pins` are the torch stack's exact pins (`torch==2.9.1`).
pub fn filter(owner: &str, text: &str, drop: &[String], pins: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('-') {
            bail!("{owner}: requirement line {line:?} (pip options, -r, -e) is not supported in a recipe build");
        }
        let req = Requirement::<VerbatimUrl>::from_str(line)
            .map_err(|e| anyhow::anyhow!("{owner}: cannot parse requirement {line:?}: {e}"))?;
        let name = req.name.to_string();
        if let Some(pin) = pins.iter().find(|p| {
            p.split("==")
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(&name))
        }) {
            let version = pin.split("==").nth(1).unwrap_or_default();
            let pinned = pep440_rs::Version::from_str(version)
                .map_err(|e| anyhow::anyhow!("torch pin {pin}: {e}"))?;
            if let Some(pep508_rs::VersionOrUrl::VersionSpecifier(spec)) = &req.version_or_url {
                if !spec.contains(&pinned) {
                    bail!("{owner} requires {line}, but the recipe pins {pin}: refusing to replace the torch stack");
                }
            }
            continue;
        }
        if matches_drop(&name, drop) {
            continue;
        }
        out.push(line.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_torch_and_nvidia_and_refuses_incompatible_torch() {
        let drop = vec!["torch".into(), "torchvision".into(), "nvidia-*".into()];
        let pins = vec![
            "torch==2.9.1+cu130".into(),
            "torchvision==0.24.1+cu130".into(),
        ];
        let kept = filter(
            "node",
            "six>=1\n# c\ntorch\ntorchvision>=0.20\nnvidia-cublas-cu12\nnumpy<2 # old\n",
            &drop,
            &pins,
        )
        .unwrap();
        assert_eq!(kept, ["six>=1", "numpy<2"]);
        let err = filter("custom node X", "torch>=99\n", &drop, &pins).unwrap_err();
        assert!(
            err.to_string().contains("custom node X requires torch>=99"),
            "{err}"
        );
    }
}
