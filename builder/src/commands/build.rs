//! `comfy-build lock`, `build` and `import-snapshot`.

use crate::cli::{BuildArgs, ImportSnapshotArgs, LockArgs};
use crate::plan::Plan;
use crate::recipe::Recipe;
use anyhow::{Context as _, Result};
use std::path::PathBuf;

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("comfy-build")
}

fn plan(recipe: &std::path::Path) -> Result<Plan> {
    let (r, bytes) = Recipe::load(recipe)?;
    let abs = fs_err::canonicalize(recipe)?;
    Plan::new(r, &abs, &bytes).with_context(|| format!("invalid recipe {}", recipe.display()))
}

pub fn lock(a: LockArgs) -> Result<()> {
    let p = plan(&a.recipe)?;
    let previous = crate::lock::Lock::load(&p.lock_path()).ok().flatten();
    let l = crate::build::lock(
        &p,
        &a.cache.unwrap_or_else(default_cache),
        previous.as_ref(),
    )?;
    l.save(&p.lock_path())?;
    println!(
        "wrote {} ({} sources, {} pinned packages)",
        p.lock_path().display(),
        l.git.len(),
        l.requirements.matches("==").count()
    );
    Ok(())
}

pub fn build(a: BuildArgs) -> Result<()> {
    let p = plan(&a.recipe)?;
    let opts = crate::build::BuildOptions {
        cache: a.cache.unwrap_or_else(default_cache),
        out: a.out,
        locked: a.locked,
        smoke: !a.no_smoke,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    if a.dry_run {
        let v = crate::build::dry_run(&p, &opts)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_plan(&v);
        }
        return Ok(());
    }
    let key = super::secret_key(&a.signing)?;
    let built = crate::build::build(&p, &key, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        println!(
            "built {} (id {}) in {:.1}s",
            built.path.display(),
            built.id,
            built.seconds
        );
    }
    Ok(())
}

fn print_plan(v: &serde_json::Value) {
    let s = |x: &serde_json::Value| {
        x.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| x.to_string())
    };
    println!(
        "recipe {} (sha256 {})",
        s(&v["recipe"]),
        s(&v["recipe_sha256"])
    );
    println!(
        "bundle {} {} sequence {} for {}",
        s(&v["bundle"]["name"]),
        s(&v["bundle"]["version"]),
        v["bundle"]["sequence"],
        s(&v["bundle"]["target"])
    );
    println!("lock   {}", s(&v["lock"]));
    for src in v["sources"].as_array().into_iter().flatten() {
        println!(
            "source {:<10} {:<28} {} @ {}{}",
            s(&src["role"]),
            s(&src["name"]),
            s(&src["url"]),
            src["commit"]
                .as_str()
                .unwrap_or(src["rev"].as_str().unwrap_or("")),
            if src["cached"] == true {
                " (cached)"
            } else {
                ""
            }
        );
    }
    for st in v["stages"].as_array().into_iter().flatten() {
        let d = st["digest"]
            .as_str()
            .map(|d| format!(" {}", &d[..12]))
            .unwrap_or_default();
        let cached = match st["cached"].as_bool() {
            Some(true) => " cached",
            Some(false) => " to build",
            None => "",
        };
        println!("stage  {}{d}{cached}", s(&st["stage"]));
        for c in st["commands"].as_array().into_iter().flatten() {
            println!("         $ {}", s(c));
        }
    }
}

pub fn import_snapshot(a: ImportSnapshotArgs) -> Result<()> {
    let json = fs_err::read_to_string(&a.snapshot)?;
    print!(
        "{}",
        crate::snapshot::to_recipe_fragment(&json, &a.comfyui_url)?
    );
    Ok(())
}

pub fn doctor(a: crate::cli::DoctorArgs) -> Result<u8> {
    let cache = a.cache.unwrap_or_else(default_cache);
    let recipe = match &a.recipe {
        Some(p) => Some((Recipe::load(p)?.0, fs_err::canonicalize(p)?)),
        None => None,
    };
    let report = crate::doctor::doctor(recipe.as_ref().map(|(r, p)| (r, p.as_path())), &cache);
    Ok(report.print(a.json))
}
