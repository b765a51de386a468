//! Sources: every git repository fetched into a bare mirror and exported at its commit.

use crate::cache::Layout as _;
use crate::git;
use crate::lock::Lock;
use crate::plan::{Checkout, Plan, Source};
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

/// Fetches every source (concurrently, at most 4 at a time) and returns source -> commit.
pub(super) fn fetch(
    plan: &Plan,
    cache: &Path,
    lock: Option<&Lock>,
) -> Result<Vec<(Source, String)>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        let mut set = tokio::task::JoinSet::new();
        for (i, s) in plan.sources.iter().enumerate() {
            let rev = lock
                .and_then(|l| l.commit(s.role, &s.name))
                .map_or_else(|| s.rev.clone(), str::to_owned);
            let (s, cache, sem) = (s.clone(), cache.to_owned(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire().await;
                let r = git::resolve(&cache, &s.name, &s.fetch_url, &rev).await;
                (i, s, r)
            });
        }
        let mut out = Vec::new();
        while let Some(j) = set.join_next().await {
            let (i, s, r) = j?;
            let commit =
                r.with_context(|| format!("source {} ({}) is unreachable", s.name, s.url))?;
            out.push((i, s, commit));
        }
        out.sort_by_key(|x| x.0);
        Ok(out.into_iter().map(|(_, s, c)| (s, c)).collect())
    })
}

/// The checkout of `source` at `commit`, exported into the cache.
pub(super) fn checkout(cache: &Path, source: Source, commit: String) -> Result<Checkout> {
    let tree = export(cache, &source, &commit)?;
    Ok(Checkout {
        source,
        commit,
        tree,
    })
}

fn export(cache: &Path, s: &Source, commit: &str) -> Result<PathBuf> {
    let dest = cache.src_dir(commit);
    if !dest.exists() {
        if let Some(p) = dest.parent() {
            fs_err::create_dir_all(p)?;
        }
        git::export(cache, &s.fetch_url, commit, &dest)?;
    }
    Ok(dest)
}
