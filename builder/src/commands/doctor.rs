//! `comfy-build doctor`: is this build host ready for the recipe?

use super::default_cache;
use crate::recipe::Recipe;
use anyhow::Result;

pub fn run(a: crate::cli::DoctorArgs) -> Result<u8> {
    let cache = a.cache.unwrap_or_else(default_cache);
    let recipe = match &a.recipe {
        Some(p) => Some((Recipe::load(p)?.0, fs_err::canonicalize(p)?)),
        None => None,
    };
    let report = crate::doctor::doctor(recipe.as_ref().map(|(r, p)| (r, p.as_path())), &cache);
    Ok(report.print(a.json))
}
