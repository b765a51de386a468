//! Crash-safe file updates: write a temp file in the same directory, fsync, rename over the target,
//! fsync the directory (uv's `write_atomic_sync`). Symlinks are swapped the same way (`ln -sfn` is
//! unlink + symlink on many systems, mina #16).

use anyhow::{Context as _, Result};
use rustix::fs::{self as rfs, Mode, OFlags};
use std::io::Write as _;
use std::path::Path;

fn sync_dir(dir: &Path) -> Result<()> {
    let fd = rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    rfs::fsync(&fd).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(dir)
}

/// Points the symlink `link` at `target` atomically (a temp link renamed over it).
pub fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let dir = parent(link);
    let name = link.file_name().context("symlink path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs_err::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs_err::rename(&tmp, link)?;
    sync_dir(dir)
}

/// fsync a directory (after renaming something into it).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    sync_dir(dir)
}
