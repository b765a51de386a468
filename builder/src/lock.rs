//! `RECIPE.lock`: the commit of every git source and the exact versions and hashes of every Python
//! package (uv's `pip compile --generate-hashes` output), tied to the recipe by its digest, so
//! `build --locked` can refuse a lock that no longer matches.

use crate::plan::Role;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// sha256 of the recipe bytes this lock was made from.
    pub recipe_sha256: String,
    /// ComfyUI's commit time: every header and the manifest's `created`.
    pub source_date_epoch: u64,
    pub git: Vec<LockedGit>,
    /// Pinned, hashed requirements (uv pip compile output).
    pub requirements: String,
    /// Digest of what they were resolved from (requirement files, torch pins, platform).
    pub requirements_input_sha256: String,
    /// The `[toolkit]` wheels, pinned with their hashes (build-only unless the recipe says).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub toolkit: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockedGit {
    pub role: Role,
    pub name: String,
    pub url: String,
    pub rev: String,
    pub commit: String,
}

impl Lock {
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match fs_err::read_to_string(path) {
            Ok(t) => Ok(Some(
                toml::from_str(&t).with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = format!(
            "# Written by `comfy-build lock`; commit it next to the recipe.\n{}",
            toml::to_string(self)?
        );
        fs_err::write(path, text)?;
        Ok(())
    }

    pub fn commit(&self, role: Role, name: &str) -> Option<&str> {
        self.git
            .iter()
            .find(|g| g.role == role && g.name == name)
            .map(|g| g.commit.as_str())
    }

    /// Why this lock does not fit the plan, if it does not.
    pub fn stale_reason(&self, plan: &crate::plan::Plan) -> Option<String> {
        if self.recipe_sha256 != plan.recipe_sha256 {
            return Some("the recipe changed since it was locked".into());
        }
        for s in &plan.sources {
            match self
                .git
                .iter()
                .find(|g| g.role == s.role && g.name == s.name)
            {
                Some(g) if g.url == s.url && g.rev == s.rev => {}
                _ => {
                    return Some(format!(
                        "{} ({}) is not locked as the recipe asks",
                        s.name, s.url
                    ))
                }
            }
        }
        None
    }
}
