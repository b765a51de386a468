//! The build's stages as values. Each knows its name (the label of the build's progress lines,
//! of `--json` stage times and of the dry run's stages), the digest of its inputs and its place
//! in the cache where it is cached by one, and the commands it runs (each stage's module says
//! what it runs, beside the code that runs it). `build` makes these values to name and look up
//! its stages, and `build --dry-run` lists the same values, so the two cannot tell different
//! stories about a stage or about whether the cache holds it.

use crate::cache::Layout as _;
use crate::plan::Plan;
use crate::recipe::{ExtensionSection, Recipe, ToolkitSection};
use crate::{env, ext, freeze, hostlibs, install, smoke, toolkit};
use std::path::{Path, PathBuf};

pub enum Stage<'a> {
    /// Interpreter, relocatable venv and the locked packages.
    Env {
        recipe: &'a Recipe,
        digest: Option<String>,
    },
    /// The CUDA toolkit from wheels, beside the env.
    Toolkit {
        recipe: &'a Recipe,
        toolkit: &'a ToolkitSection,
        digest: Option<String>,
    },
    /// One compiled extension's wheel.
    Extension {
        recipe: &'a Recipe,
        ext: &'a ExtensionSection,
        digest: Option<String>,
    },
    /// Nested sources, models and install scripts, inside the stage.
    Install {
        plan: &'a Plan,
    },
    /// The release tree: env, wheels, ComfyUI and its custom nodes.
    Assemble {
        digest: Option<String>,
    },
    Freeze,
    Smoke {
        plan: &'a Plan,
        enabled: bool,
    },
    HostLibs,
    Pack {
        recipe: &'a Recipe,
        out: &'a Path,
    },
}

impl Stage<'_> {
    /// The label of the stage's progress lines and its `--json` time.
    pub fn label(&self) -> &'static str {
        match self {
            Stage::Env { .. } => "env",
            Stage::Toolkit { .. } => "toolkit",
            Stage::Extension { .. } => "extension",
            Stage::Install { .. } => "install",
            Stage::Assemble { .. } => "stage",
            Stage::Freeze => "freeze",
            Stage::Smoke { .. } => "smoke",
            Stage::HostLibs => "host libs",
            Stage::Pack { .. } => "pack",
        }
    }

    /// The name the dry run lists it by: the label, and an extension's name.
    pub fn name(&self) -> String {
        match self {
            Stage::Extension { ext, .. } => format!("extension {}", ext.name),
            s => s.label().to_owned(),
        }
    }

    /// `Some` for a stage cached by the digest of its inputs: that digest, or `None` while its
    /// inputs are not known (a dry run before the lock or the wheels exist).
    pub fn digest(&self) -> Option<Option<&str>> {
        match self {
            Stage::Env { digest, .. }
            | Stage::Toolkit { digest, .. }
            | Stage::Extension { digest, .. }
            | Stage::Assemble { digest } => Some(digest.as_deref()),
            _ => None,
        }
    }

    /// Where the cache keeps it, for a stage cached by digest whose digest is known.
    pub fn dir(&self, cache: &Path) -> Option<PathBuf> {
        let d = self.digest()??;
        Some(match self {
            Stage::Env { .. } => cache.env_dir(d),
            Stage::Toolkit { .. } => cache.toolkit_dir(d),
            Stage::Extension { .. } => cache.wheel_dir(d),
            _ => cache.stage_dir(d),
        })
    }

    /// Whether the cache holds it (`None` for a stage not cached by digest): what the build
    /// reuses instead of running it.
    pub fn cached(&self, cache: &Path) -> Option<bool> {
        self.digest()?;
        let Some(dir) = self.dir(cache) else {
            return Some(false);
        };
        Some(match self {
            Stage::Toolkit { .. } => dir.join("cuda-home").is_dir(),
            Stage::Extension { .. } => dir.is_dir(),
            _ => dir.exists(),
        })
    }

    /// What it runs, for the dry run.
    pub fn commands(&self) -> Vec<String> {
        match self {
            Stage::Env { recipe, .. } => env::commands(recipe),
            Stage::Toolkit {
                recipe, toolkit, ..
            } => toolkit::commands(toolkit, &recipe.target.arch_list),
            Stage::Extension { recipe, ext, .. } => ext::commands(ext, recipe),
            Stage::Install { plan } => install::commands(plan),
            Stage::Assemble { .. } => vec![
                "cp -al env/<digest> stage (hardlinks; nothing below writes a file in place)"
                    .to_owned(),
                "uv pip install <wheels>".to_owned(),
                "ComfyUI + custom_nodes from git".to_owned(),
                bundle::LAUNCH_ENTRY.to_owned(),
            ],
            Stage::Freeze => freeze::commands(),
            Stage::Smoke { plan, .. } => smoke::commands(plan),
            Stage::HostLibs => hostlibs::commands(),
            Stage::Pack { recipe, out } => vec![format!(
                "sign and write {}/{}-{}-<id>.bundle",
                out.display(),
                recipe.bundle.name,
                recipe.bundle.version
            )],
        }
    }

    /// Whether it runs at all (`None` for a stage that always runs).
    pub fn enabled(&self) -> Option<bool> {
        match self {
            Stage::Smoke { enabled, .. } => Some(*enabled),
            _ => None,
        }
    }

    /// Whether the build fails when it does (`None` for a stage that always must succeed).
    pub fn required(&self) -> Option<bool> {
        match self {
            Stage::Extension { ext, .. } => Some(ext.required),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_cached_where_the_build_keeps_it() {
        let cache = tempfile::tempdir().unwrap();
        let c = cache.path();
        let s = Stage::Assemble {
            digest: Some("abc".into()),
        };
        assert_eq!(s.cached(c), Some(false));
        fs_err::create_dir_all(c.stage_dir("abc")).unwrap();
        assert_eq!(s.cached(c), Some(true));
        assert_eq!(Stage::Assemble { digest: None }.cached(c), Some(false));
        assert_eq!(Stage::Freeze.cached(c), None);
        assert_eq!(Stage::Freeze.digest(), None);
        assert_eq!(s.digest(), Some(Some("abc")));
    }
}
