//! One file per verb; this one dispatches and holds the summary both `inspect` and `verify` print.

mod build;
mod diff;
mod doctor;
mod import_snapshot;
mod inspect;
mod keygen;
mod lock;
mod pack;
mod verify;

use crate::cli::{Cli, Command, SigningArgs, TrustArgs};
use crate::plan::Plan;
use crate::recipe::Recipe;
use anyhow::{Context as _, Result};
use std::path::PathBuf;

/// Runs one parsed command line; returns the exit code of outcomes that are not errors.
/// A build's progress as lines on stderr: `{label:>12} {detail}`, `warning: {text}`.
pub struct Stderr;

impl crate::build::Progress for Stderr {
    fn line(&self, label: &str, detail: &str) {
        eprintln!("{label:>12} {detail}");
    }
    fn warn(&self, text: &str) {
        eprintln!("warning: {text}");
    }
}

pub fn run(cli: Cli) -> Result<u8> {
    let done = |r: Result<()>| r.map(|()| 0);
    match cli.command {
        Command::Keygen(a) => done(keygen::run(a)),
        Command::Pack(a) => done(pack::run(a)),
        Command::Verify(a) => done(verify::run(a)),
        Command::Inspect(a) => done(inspect::run(a)),
        Command::Diff(a) => done(diff::run(a)),
        Command::Lock(a) => done(lock::run(a)),
        Command::Build(a) => done(build::run(a)),
        Command::ImportSnapshot(a) => done(import_snapshot::run(a)),
        Command::Doctor(a) => doctor::run(a),
    }
}

pub(crate) fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("comfy-build")
}

pub(crate) fn plan(recipe: &std::path::Path) -> Result<Plan> {
    let (r, bytes) = Recipe::load(recipe)?;
    let abs = fs_err::canonicalize(recipe)?;
    Plan::new(r, &abs, &bytes).with_context(|| format!("invalid recipe {}", recipe.display()))
}

pub(crate) fn secret_key(a: &SigningArgs) -> Result<keys::SecretKey> {
    match &a.key {
        Some(p) => {
            keys::SecretKey::load(p).with_context(|| format!("loading secret key {}", p.display()))
        }
        None => keys::SecretKey::from_env()
            .context("reading the secret key from COMFY_SIGNING_KEY")?
            .with_context(|| {
                format!(
                    "no signing key: pass --key FILE or set {}",
                    keys::SECRET_KEY_ENV
                )
            }),
    }
}

pub(crate) fn trusted_keys(a: &TrustArgs) -> Result<keys::TrustedKeys> {
    if let Some(p) = &a.key {
        let k = keys::PublicKey::load(p)
            .with_context(|| format!("loading public key {}", p.display()))?;
        return Ok(keys::TrustedKeys::new(vec![k], vec![]));
    }
    let dir = a.keys.as_deref().context("pass --key PUB or --keys DIR")?;
    keys::TrustedKeys::load_dir(dir)
        .with_context(|| format!("loading trusted keys from {}", dir.display()))
}

/// The facts about a bundle that `inspect` and `verify` print.
pub(crate) fn summary(b: &bundle::Bundle) -> serde_json::Value {
    let m = &b.manifest;
    let (files, dirs, symlinks) = bundle::count(&m.files);
    serde_json::json!({
        "id": b.id,
        "name": m.name,
        "version": m.version,
        "sequence": m.sequence,
        "target": m.target,
        "created": m.created,
        "files": files,
        "dirs": dirs,
        "symlinks": symlinks,
        "bytes": m.total_bytes(),
        "compressed_bytes": b.file_len,
        "frames": b.frames.len(),
        "key_id": b.signature.key_id.to_string(),
        "signature_checked": b.signer.is_some(),
        "launch": m.launch,
        "provenance": m.provenance,
        "expected_nodes": m.expected_nodes,
        "state": m.state,
        "preflight": m.preflight.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "host_libs": m.host_libs,
        "models": m.models,
    })
}

/// Prints what a bundle holds; every string from it is escaped for the terminal (`inspect`
/// reads bundles whose signature it has not checked).
pub(crate) fn print_summary(b: &bundle::Bundle) {
    use support::term_safe as t;
    let m = &b.manifest;
    let (files, dirs, symlinks) = bundle::count(&m.files);
    println!("id:        {}", b.id);
    println!(
        "name:      {} {} (sequence {})",
        t(&m.name),
        t(&m.version),
        m.sequence
    );
    println!("target:    {}", t(&m.target));
    println!("created:   {}", t(&m.created));
    println!(
        "contents:  {files} files, {dirs} dirs, {symlinks} symlinks, {} bytes",
        m.total_bytes()
    );
    println!(
        "bundle:    {} bytes in {} frames",
        b.file_len,
        b.frames.len()
    );
    println!("key:       {}", b.signature.key_id);
    let p = &m.provenance;
    if let Some(c) = &p.comfyui {
        println!("comfyui:   {} @ {}", t(&c.url), t(&c.commit));
    }
    for n in &p.custom_nodes {
        println!(
            "node:      {} {} @ {}{}",
            t(&n.name),
            t(&n.url),
            t(&n.commit),
            if n.disabled { " (disabled)" } else { "" }
        );
    }
    for x in &m.models {
        println!(
            "model:     models/{} ({} bytes, sha256 {}){}",
            t(&x.path),
            x.size,
            t(&x.sha256),
            if x.url.is_empty() {
                String::new()
            } else {
                format!(" from {}", t(&x.url))
            }
        );
    }
    for x in &p.extensions {
        println!(
            "extension: {} {} @ {} wheel {}",
            t(&x.name),
            t(&x.source),
            t(&x.rev),
            t(&x.wheel_sha256)
        );
    }
    if !p.packages.is_empty() {
        println!("packages:  {}", p.packages.len());
    }
    if !m.host_libs.is_empty() {
        println!("host libs: {}", t(&m.host_libs.join(" ")));
    }
    for (dir, classes) in &m.expected_nodes {
        println!("classes:   {}: {}", t(dir), classes.len());
    }
    for s in &m.state {
        println!(
            "state:     {}{} -> data/node-state/{}",
            t(&s.path),
            if s.dir { "/" } else { "" },
            t(&s.target)
        );
    }
}
