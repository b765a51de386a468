//! `comfy-build build`: a recipe and its lock into a signed bundle (or, with `--dry-run`, the plan).

use super::{default_cache, plan};
use crate::cli::BuildArgs;
use anyhow::Result;

pub fn run(a: BuildArgs) -> Result<()> {
    let p = plan(&a.recipe)?;
    let opts = crate::build::BuildOptions {
        cache: a.cache.unwrap_or_else(default_cache),
        out: a.out,
        locked: a.locked,
        smoke: !a.no_smoke,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    if a.dry_run {
        let v = serde_json::to_value(crate::build::dry_run(&p, &opts)?)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_plan(&v);
        }
        return Ok(());
    }
    let key = super::secret_key(&a.signing)?;
    let built = crate::build::build(&p, &key, &opts, &super::Stderr)?;
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
            .map(|d| format!(" {}", support::short_id(d)))
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
