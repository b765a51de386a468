//! `comfy-build inspect`: reads only the first frame; the signature is not checked (say so).

use crate::cli::InspectArgs;
use anyhow::{Context as _, Result};

pub fn run(a: InspectArgs) -> Result<()> {
    let b = bundle::Bundle::open_unverified(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&super::summary(&b))?);
    } else {
        super::print_summary(&b);
        println!(
            "signature: not checked here; run `comfy-build verify {} --key PUB`",
            a.file.display()
        );
    }
    Ok(())
}
