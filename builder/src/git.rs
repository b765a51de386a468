//! Sources: a bare mirror per repository in the cache, fetched only when the wanted commit is not
//! there yet (a pinned full SHA already in the mirror needs no network), and export of a commit as a
//! plain tree without `.git`.

use crate::cache::Layout as _;
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cmd as process;

/// The mirror directory for a URL.
pub fn mirror(cache: &Path, url: &str) -> PathBuf {
    cache.git_dir().join(format!(
        "{}.git",
        &hex::encode(Sha256::digest(url.as_bytes()))[..16]
    ))
}

fn is_full_sha(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir").arg(dir).env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// [`process::stdout`] on a blocking thread, so fetches of several repositories overlap.
async fn run_async(mut c: Command, what: &str) -> Result<String> {
    tokio::task::spawn_blocking(move || process::stdout(&mut c))
        .await
        .context("a git thread panicked")?
        .with_context(|| what.to_owned())
}

/// Makes sure the mirror of `url` holds `rev`; returns the commit it names.
pub async fn resolve(cache: &Path, name: &str, url: &str, rev: &str) -> Result<String> {
    let m = mirror(cache, url);
    let what = format!("cannot fetch {name} from {url}");
    if !m.exists() {
        let tmp = m.with_extension(format!("tmp-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&tmp);
        fs_err::create_dir_all(m.parent().context("mirror has no parent")?)?;
        let mut c = Command::new("git");
        c.args(["clone", "--mirror", "--quiet"])
            .arg(url)
            .arg(&tmp)
            .env("GIT_TERMINAL_PROMPT", "0");
        run_async(c, &what).await?;
        fs_err::rename(&tmp, &m)?;
    }
    let spec = format!("{rev}^{{commit}}");
    let mut c = git(&m);
    c.args(["rev-parse", "--verify", "--quiet", &spec]);
    if let Ok(commit) = run_async(c, &what).await {
        // A branch or tag may have moved: refresh unless the rev is a commit id.
        if is_full_sha(rev) {
            return Ok(commit);
        }
    }
    let mut c = git(&m);
    c.args(["fetch", "--quiet", "--prune", "origin", "+refs/*:refs/*"]);
    run_async(c, &what).await?;
    let mut c = git(&m);
    c.args(["rev-parse", "--verify", "--quiet", &spec]);
    run_async(c, &format!("{name}: no commit {rev:?} in {url}")).await
}

/// Writes the tree of `commit` into `dest` (which must not exist), without `.git`.
pub fn export(cache: &Path, url: &str, commit: &str, dest: &Path) -> Result<()> {
    let m = mirror(cache, url);
    let tmp = dest.with_extension("tmp");
    let _ = fs_err::remove_dir_all(&tmp);
    fs_err::create_dir_all(&tmp)?;
    let tar = tmp.with_extension("tar");
    process::run(
        Command::new("git")
            .arg("--git-dir")
            .arg(&m)
            .args(["archive", "--format=tar", "-o"])
            .arg(&tar)
            .arg(commit),
    )?;
    process::run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&tmp))?;
    fs_err::remove_file(&tar)?;
    fs_err::rename(&tmp, dest)?;
    Ok(())
}

/// Committer time of `commit` (seconds), the bundle's `SOURCE_DATE_EPOCH`.
pub fn commit_time(cache: &Path, url: &str, commit: &str) -> Result<u64> {
    let out = process::stdout(
        Command::new("git")
            .arg("--git-dir")
            .arg(mirror(cache, url))
            .args(["log", "-1", "--format=%ct", commit]),
    )?;
    match out.parse() {
        Ok(t) => Ok(t),
        Err(_) => bail!("unexpected commit time {out:?} for {commit}"),
    }
}
