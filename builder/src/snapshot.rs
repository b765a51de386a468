//! `comfy-build import-snapshot`: a ComfyUI-Manager snapshot (`comfyui` commit, `git_custom_nodes`
//! {url: {hash, disabled}}, `pips`) as the recipe sections users would otherwise type by hand.

use anyhow::{Context as _, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Snapshot {
    comfyui: String,
    #[serde(default)]
    git_custom_nodes: BTreeMap<String, GitNode>,
    #[serde(default)]
    cnr_custom_nodes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pips: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct GitNode {
    hash: String,
    #[serde(default)]
    disabled: bool,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Recipe TOML for the snapshot's ComfyUI commit, custom nodes and pip pins.
pub fn to_recipe_fragment(json: &str, comfyui_url: &str) -> Result<String> {
    let s: Snapshot = serde_json::from_str(json).context("not a ComfyUI-Manager snapshot")?;
    let mut out = format!(
        "[comfyui]\ngit = {}\nrev = {}\n",
        q(comfyui_url),
        q(&s.comfyui)
    );
    let pips: Vec<String> = s.pips.keys().map(|p| q(p)).collect();
    if !pips.is_empty() {
        out.push_str(&format!("\n# From the snapshot's pip list; move what the release needs into [packages] core.\n# pips = [{}]\n", pips.join(", ")));
    }
    for (url, n) in &s.git_custom_nodes {
        out.push_str(&format!(
            "\n[[custom_nodes]]\ngit = {}\nrev = {}\n",
            q(url.trim_end_matches(".git")),
            q(&n.hash)
        ));
        if n.disabled {
            out.push_str("disabled = true\n");
        }
    }
    for id in s.cnr_custom_nodes.keys() {
        out.push_str(&format!("\n# Registry node {id} has no git source in the snapshot: add it as [[custom_nodes]] by hand.\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_becomes_recipe_sections() {
        let json = r#"{"comfyui": "a125cd84b054a57729b5eecab930ca9408719832",
            "git_custom_nodes": {"https://github.com/kijai/ComfyUI-KJNodes.git": {"hash": "3f20054214fec9f9234fd3841ae6f1e4287948f6", "disabled": false},
                                 "https://github.com/cubiq/ComfyUI_essentials": {"hash": "33ff89fd354d8ec3ab6affb605a79a931b445d99", "disabled": true}},
            "cnr_custom_nodes": {"comfyui-manager": "3.30"}, "pips": {"numpy==1.26.4": ""}}"#;
        let frag =
            super::to_recipe_fragment(json, "https://github.com/comfyanonymous/ComfyUI").unwrap();
        #[derive(serde::Deserialize)]
        struct Part {
            comfyui: crate::recipe::GitRef,
            custom_nodes: Vec<crate::recipe::NodeSection>,
        }
        let p: Part = toml::from_str(&frag).unwrap();
        assert_eq!(p.comfyui.rev, "a125cd84b054a57729b5eecab930ca9408719832");
        assert_eq!(p.custom_nodes.len(), 2);
        assert!(p
            .custom_nodes
            .iter()
            .any(|n| n.git.ends_with("ComfyUI_essentials") && n.disabled));
        assert!(p
            .custom_nodes
            .iter()
            .any(|n| n.git == "https://github.com/kijai/ComfyUI-KJNodes"));
        assert!(frag.contains("comfyui-manager"));
    }
}
