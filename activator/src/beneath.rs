//! The one way root touches a directory that the service or the access group can write (`data/`
//! and everything below it): from a directory descriptor, one component at a time, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` and `O_NOFOLLOW`;
//! files created with `O_EXCL`, read only when they are regular files of a bounded size opened
//! with `O_NONBLOCK` (a FIFO never blocks), and owners and modes set on the descriptor
//! (`fchown`, `fchmod`), never on a path. No path someone else can change is followed, so a link
//! or a swap planted by the service ends in a refusal, not in a root write elsewhere (issue 22).

use anyhow::{bail, Context as _, Result};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags, SeekFrom};
use rustix::io::Errno;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Who a file or directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// An open directory, named by the path it was reached by (for messages only: nothing is ever
/// opened by that path again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a name in a directory is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// One name inside a directory: no separators, no `.` or `..`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("{name:?} is not a plain file name");
    }
    Ok(())
}

/// The components of a relative path, each a plain name.
pub fn components(rel: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for p in &parts {
        check_name(p)?;
    }
    Ok(parts)
}

impl Dir {
    /// Opens a directory of root's own by its path (the install directory from the host config):
    /// it must be owned by root and writable by nobody else, or everything below it could be
    /// swapped by whoever can write it.
    pub fn open_root_owned(path: &Path) -> Result<Dir> {
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", path.display()))?;
        let d = Dir {
            fd,
            path: path.to_owned(),
        };
        d.require_root_owned()?;
        Ok(d)
    }

    /// Opens a directory named by root's own configuration (an NFS share the host config maps
    /// `data/models` to) by its path; unlike [`Dir::open_root_owned`] it may belong to the group:
    /// only what lies below it is then walked without links.
    pub fn open_configured(path: &Path) -> Result<Dir> {
        // No link anywhere on the way: whoever can write a folder above the share could swap its
        // last component for a link to a system directory.
        let fd = match rfs::openat2(
            rfs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(e) => return Err(not_followed(e, path, "directory")),
        };
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Renames `from` to `to` in this directory unless `to` exists (`RENAME_NOREPLACE`): false
    /// when it does, and nothing changed.
    pub fn rename_no_replace(&self, from: &str, to: &str) -> Result<bool> {
        check_name(from)?;
        check_name(to)?;
        match rfs::renameat_with(&self.fd, from, &self.fd, to, rfs::RenameFlags::NOREPLACE) {
            Ok(()) => {
                rfs::fsync(&self.fd).with_context(|| format!("syncing {}", self.path.display()))?;
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "renaming {} to {}",
                    self.child(from).display(),
                    self.child(to).display()
                )
            }),
        }
    }

    /// The path this directory was reached by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stat(&self) -> Result<rfs::Stat> {
        rfs::fstat(&self.fd).with_context(|| format!("fstat {}", self.path.display()))
    }

    /// Refuses a directory that someone other than root owns or may write (a root directory in
    /// a tree the service can change would let it rename root's entries).
    pub fn require_root_owned(&self) -> Result<()> {
        let st = self.stat()?;
        if rustix::process::getuid().is_root() && (st.st_uid != 0 || st.st_mode & 0o022 != 0) {
            crate::host::refuse(format!(
                "{} belongs to uid {} with mode {:o}: it must be root's alone (`comfyctl setup` \
                 makes it so); refusing to work below it",
                self.path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ))?;
        }
        Ok(())
    }

    /// Owner and mode of this directory, set on its descriptor.
    pub fn set_owner(&self, owner: Owner, mode: u32) -> Result<()> {
        set_owner(&self.fd, &self.path, owner, mode)
    }

    /// The owner (uid, gid) and permission bits of this directory.
    pub fn owner_mode(&self) -> Result<(Owner, u32)> {
        let st = self.stat()?;
        Ok((
            Owner {
                uid: st.st_uid,
                gid: st.st_gid,
            },
            st.st_mode & 0o7777,
        ))
    }

    fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What `name` is, without following it; `None` when it does not exist.
    pub fn kind(&self, name: &str) -> Result<Option<Kind>> {
        check_name(name)?;
        match rfs::statat(&self.fd, name, rfs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(kind_of(FileType::from_raw_mode(st.st_mode)))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("stat {}", self.child(name).display())),
        }
    }

    /// Opens the directory at relative path `rel` below this one, refusing a symlink anywhere on
    /// the way; `None` when a component does not exist.
    pub fn open_dir(&self, rel: &str) -> Result<Option<Dir>> {
        components(rel)?;
        let path = self.child(rel);
        match rfs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(not_followed(e, &path, "directory")),
        }
    }

    /// Opens directory `name` here, creating it (for `owner`, with `mode`) when it is missing;
    /// true when it was created. A directory that already exists keeps its owner and mode.
    pub fn ensure_dir(&self, name: &str, owner: Owner, mode: u32) -> Result<(Dir, bool)> {
        check_name(name)?;
        // Created root's and closed to others: nobody else can enter it before it is handed over.
        let created = match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => {
                return Err(e).with_context(|| format!("mkdir {}", self.child(name).display()))
            }
        };
        let d = self.open_dir(name)?.with_context(|| {
            format!(
                "{} vanished while it was created",
                self.child(name).display()
            )
        })?;
        if created {
            // Between mkdirat and the open, whoever may write this directory could rename another
            // folder over the new one: only root's own, fresh, empty 0700 folder is handed over.
            let st = d.stat()?;
            // (A setgid parent passes its bit on: only the permission bits are ours to check.)
            let fresh = st.st_mode & 0o777 == 0o700
                && st.st_nlink == 2
                && (st.st_uid == 0 || !rustix::process::getuid().is_root());
            if !fresh {
                crate::host::refuse(format!(
                    "{} was replaced while comfyctl created it (uid {}, mode {:o}); refusing to \
                     hand it over",
                    self.child(name).display(),
                    st.st_uid,
                    st.st_mode & 0o7777
                ))?;
            }
            d.set_owner(owner, mode)?;
        }
        Ok((d, created))
    }

    /// Opens (creating what is missing) every directory of `rel` below this one, each new one for
    /// `owner` with `mode`. Returns the innermost and the paths it created.
    pub fn ensure_dirs(&self, rel: &str, owner: Owner, mode: u32) -> Result<(Dir, Vec<PathBuf>)> {
        let mut created = Vec::new();
        let mut here: Option<Dir> = None;
        for c in components(rel)? {
            let parent = here.as_ref().unwrap_or(self);
            let (d, new) = parent.ensure_dir(c, owner, mode)?;
            if new {
                created.push(d.path.clone());
            }
            here = Some(d);
        }
        match here {
            Some(d) => Ok((d, created)),
            None => Ok((self.try_clone()?, created)),
        }
    }

    /// Another descriptor of this directory.
    pub fn try_clone(&self) -> Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Creates file `name` holding `bytes` for `owner` with `mode`, unless something (anything)
    /// is already there: true when it was created. The file is written root's and 0600, then
    /// synced and handed over on its descriptor.
    pub fn create_file(&self, name: &str, bytes: &[u8], owner: Owner, mode: u32) -> Result<bool> {
        let Some(mut f) = self.create_excl(name)? else {
            return Ok(false);
        };
        let path = self.child(name);
        f.write_all(bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        set_owner(&f, &path, owner, mode)?;
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        Ok(true)
    }

    /// A new, empty file `name` opened for writing (`O_EXCL`: never an existing file or a link);
    /// `None` when the name is taken.
    pub fn create_excl(&self, name: &str) -> Result<Option<std::fs::File>> {
        check_name(name)?;
        match rfs::openat2(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            RESOLVE,
        ) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(Errno::EXIST) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("creating {}", self.child(name).display())),
        }
    }

    /// Opens regular file `name` for reading: never through a link, never blocking (a FIFO is
    /// refused, not waited on), at most `limit` bytes long, and (when `owner_uid` is given) owned
    /// by that uid with no other link to it, so a hardlink to a file only root may read is
    /// refused. `None` when it does not exist.
    pub fn open_file(
        &self,
        name: &str,
        limit: u64,
        owner_uid: Option<u32>,
    ) -> Result<Option<(std::fs::File, u64)>> {
        check_name(name)?;
        let path = self.child(name);
        let fd = match rfs::openat2(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(not_followed(e, &path, "regular file")),
        };
        let st = rfs::fstat(&fd).with_context(|| format!("fstat {}", path.display()))?;
        let kind = kind_of(FileType::from_raw_mode(st.st_mode));
        if kind != Kind::File {
            crate::host::refuse(format!(
                "{} is {}, not a regular file; refusing to read it (remove it, or move it away)",
                path.display(),
                describe(kind)
            ))?;
        }
        if let Some(uid) = owner_uid {
            if st.st_uid != uid || st.st_nlink != 1 {
                crate::host::refuse(format!(
                    "{} belongs to uid {} and has {} link(s); only a file of uid {uid} with one \
                     link is read (a hardlink could name a file the service may not read)",
                    path.display(),
                    st.st_uid,
                    st.st_nlink
                ))?;
            }
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > limit {
            crate::host::refuse(format!(
                "{} is {size} bytes, over the {limit} byte limit; refusing to copy it",
                path.display()
            ))?;
        }
        // Reads block normally from here on (a regular file never blocks anyway).
        rfs::fcntl_setfl(&fd, OFlags::empty())
            .with_context(|| format!("fcntl {}", path.display()))?;
        Ok(Some((std::fs::File::from(fd), size)))
    }

    /// Copies `src` (opened by [`Dir::open_file`], `size` bytes) into a new file `name` here for
    /// `owner` with `mode`. Holes stay holes (only the data a sparse file holds is written), and
    /// never more than `size` bytes are read: a file that grows while it is copied is cut there.
    /// `None` when `name` is taken; else the copy, kept open: its descriptor says which file it
    /// is, whatever later happens to its name.
    pub fn copy_new_file(
        &self,
        src: &std::fs::File,
        size: u64,
        name: &str,
        owner: Owner,
        mode: u32,
    ) -> Result<Option<std::fs::File>> {
        let Some(dst) = self.create_excl(name)? else {
            return Ok(None);
        };
        let path = self.child(name);
        copy_sparse(src, &dst, size).with_context(|| format!("copying into {}", path.display()))?;
        set_owner(&dst, &path, owner, mode)?;
        dst.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        Ok(Some(dst))
    }

    /// Replaces file `name` in this directory, which must be root's alone (the unit's inputs):
    /// a temp file created `O_EXCL`, written, given its owner and mode on the descriptor and
    /// synced, then renamed over `name`, and the directory synced.
    pub fn replace_file(&self, name: &str, bytes: &[u8], owner: Owner, mode: u32) -> Result<()> {
        check_name(name)?;
        self.require_root_owned()?;
        let tmp = format!(".{name}.tmp-{}", std::process::id());
        let _ = rfs::unlinkat(&self.fd, tmp.as_str(), rfs::AtFlags::empty());
        if !self.create_file(&tmp, bytes, owner, mode)? {
            bail!("{} is in the way", self.child(&tmp).display());
        }
        self.rename_in(&tmp, name)
    }

    /// Renames `from` over `to`, both in this directory, and syncs it.
    pub fn rename_in(&self, from: &str, to: &str) -> Result<()> {
        check_name(from)?;
        check_name(to)?;
        if self.kind(to)? == Some(Kind::Dir) {
            crate::host::refuse(format!(
                "{} is a directory where comfyctl keeps a file; remove it",
                self.child(to).display()
            ))?;
        }
        rfs::renameat(&self.fd, from, &self.fd, to).with_context(|| {
            format!(
                "renaming {} to {}",
                self.child(from).display(),
                self.child(to).display()
            )
        })?;
        rfs::fsync(&self.fd).with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Removes the name `name` here when it is a file or a link (never a directory, never
    /// following the link); true when something was removed.
    pub fn remove_file(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        match rfs::unlinkat(&self.fd, name, rfs::AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.child(name).display())),
        }
    }

    /// The target of symlink `name`; `None` when `name` is missing or not a link.
    pub fn readlink(&self, name: &str) -> Result<Option<PathBuf>> {
        if self.kind(name)? != Some(Kind::Symlink) {
            return Ok(None);
        }
        let t = rfs::readlinkat(&self.fd, name, Vec::new())
            .with_context(|| format!("readlink {}", self.child(name).display()))?;
        let bytes: Vec<u8> = t.into_bytes();
        Ok(Some(PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
        )))
    }

    /// Points symlink `name` here at `target` (a temp link renamed over it: atomic).
    pub fn replace_symlink(&self, target: &Path, name: &str) -> Result<()> {
        check_name(name)?;
        let tmp = format!(".{name}.tmp-{}", std::process::id());
        let _ = rfs::unlinkat(&self.fd, tmp.as_str(), rfs::AtFlags::empty());
        rfs::symlinkat(target, &self.fd, tmp.as_str())
            .with_context(|| format!("creating {}", self.child(&tmp).display()))?;
        self.rename_in(&tmp, name)
    }

    /// Removes the empty directory `name` here.
    pub fn remove_dir(&self, name: &str) -> Result<()> {
        check_name(name)?;
        rfs::unlinkat(&self.fd, name, rfs::AtFlags::REMOVEDIR)
            .with_context(|| format!("removing {}", self.child(name).display()))
    }

    /// Visits the names in this directory (without `.` and `..`) until `f` says stop (false).
    fn each_name(&self, f: &mut dyn FnMut(String) -> bool) -> Result<()> {
        let fd = rfs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", self.path.display()))?;
        let mut dir =
            rfs::Dir::read_from(&fd).with_context(|| format!("reading {}", self.path.display()))?;
        while let Some(e) = dir.read() {
            let e = e.with_context(|| format!("reading {}", self.path.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." && !f(name) {
                break;
            }
        }
        Ok(())
    }

    /// Whether this directory holds no entry (reads at most one).
    pub fn is_empty(&self) -> Result<bool> {
        let mut empty = true;
        self.each_name(&mut |_| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// The names in this directory (without `.` and `..`), in no particular order.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_name(&mut |n| {
            out.push(n);
            true
        })?;
        Ok(out)
    }
}

fn describe(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "a directory",
        Kind::File => "a regular file",
        Kind::Symlink => "a symbolic link",
        Kind::Other => "a FIFO, socket or device",
    }
}

/// An open that met a link (or a non-directory where a directory was needed) as a refusal that
/// names the path.
fn not_followed(e: Errno, path: &Path, want: &str) -> anyhow::Error {
    match e {
        Errno::LOOP | Errno::XDEV | Errno::NOTDIR => crate::host::Refusal(format!(
            "{} is not a {want} reached without symbolic links ({e}); comfyctl never follows a \
             link below a directory the service or its group can write: remove it or move it away",
            path.display()
        ))
        .into(),
        e => anyhow::Error::new(e).context(format!("opening {}", path.display())),
    }
}

fn set_owner(fd: impl AsFd, path: &Path, owner: Owner, mode: u32) -> Result<()> {
    if rustix::process::getuid().is_root() {
        rfs::fchown(
            &fd,
            Some(rfs::Uid::from_raw(owner.uid)),
            Some(rfs::Gid::from_raw(owner.gid)),
        )
        .with_context(|| format!("chown {}:{} {}", owner.uid, owner.gid, path.display()))?;
    }
    // After the owner: chown clears setuid/setgid bits, and the mode is the last word.
    rfs::fchmod(&fd, Mode::from_raw_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Copies the first `size` bytes of `src` to `dst` (both at offset 0), writing only the data
/// extents (`SEEK_DATA`/`SEEK_HOLE`), so a sparse file stays sparse.
fn copy_sparse(src: &std::fs::File, dst: &std::fs::File, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let data = match rfs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after pos: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match rfs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        let mut at = data;
        while at < hole {
            let want = usize::try_from((hole - at).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                // The file shrank while it was copied: what is there is copied.
                return finish(dst, at.max(pos));
            }
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = hole;
    }
    finish(dst, size)
}

fn finish(dst: &std::fs::File, len: u64) -> Result<()> {
    dst.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn me() -> Owner {
        Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    #[test]
    fn links_anywhere_on_the_way_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs_err::create_dir(&secret).unwrap();
        fs_err::write(secret.join("key"), "x").unwrap();
        let top = t.path().join("top");
        fs_err::create_dir_all(top.join("a")).unwrap();
        std::os::unix::fs::symlink(&secret, top.join("a/link")).unwrap();
        std::os::unix::fs::symlink(secret.join("key"), top.join("a/file")).unwrap();
        std::os::unix::fs::symlink("..", top.join("a/up")).unwrap();
        let d = Dir {
            fd: rfs::open(&top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
            path: top.clone(),
        };
        for rel in ["a/link", "a/up", "a/link/"] {
            let e = d.open_dir(rel).unwrap_err();
            assert!(
                format!("{e:#}").contains("without symbolic links"),
                "{rel}: {e:#}"
            );
        }
        assert!(d.open_dir("a/../a").is_err(), "dot-dot is not a name");
        let a = d.open_dir("a").unwrap().unwrap();
        let e = a.open_file("file", 10, None).unwrap_err();
        assert!(format!("{e:#}").contains("without symbolic links"), "{e:#}");
        // Creating over a link never writes through it.
        assert!(!a.create_file("file", b"evil", me(), 0o644).unwrap());
        assert_eq!(fs_err::read_to_string(secret.join("key")).unwrap(), "x");
        let e = a.ensure_dir("link", me(), 0o755).unwrap_err();
        assert!(format!("{e:#}").contains("without symbolic links"), "{e:#}");
        assert!(fs_err::read_dir(&secret).unwrap().count() == 1);
    }

    #[test]
    fn fifos_big_files_and_extra_links_are_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir {
            fd: rfs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
            path: t.path().to_owned(),
        };
        rustix::fs::mknodat(
            rfs::CWD,
            t.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = d.open_file("fifo", 10, None).unwrap_err();
        assert!(format!("{e:#}").contains("FIFO"), "{e:#}");
        fs_err::write(t.path().join("big"), vec![1u8; 100]).unwrap();
        let e = d.open_file("big", 99, None).unwrap_err();
        assert!(format!("{e:#}").contains("over the 99 byte limit"), "{e:#}");
        fs_err::hard_link(t.path().join("big"), t.path().join("twin")).unwrap();
        let e = d.open_file("big", 100, Some(me().uid)).unwrap_err();
        assert!(format!("{e:#}").contains("2 link(s)"), "{e:#}");
        assert!(d.open_file("missing", 1, None).unwrap().is_none());
    }

    #[test]
    fn sparse_files_are_copied_sparse_and_cut_at_their_size() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        {
            let f = fs_err::File::create(&src).unwrap().into_parts().0;
            f.set_len(64 << 20).unwrap();
            use std::os::unix::fs::FileExt as _;
            f.write_all_at(b"head", 0).unwrap();
            f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        }
        let d = Dir {
            fd: rfs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
            path: t.path().to_owned(),
        };
        let (f, size) = d.open_file("src", 1 << 30, None).unwrap().unwrap();
        assert!(d
            .copy_new_file(&f, size, "dst", me(), 0o640)
            .unwrap()
            .is_some());
        let got = fs_err::read(t.path().join("dst")).unwrap();
        assert_eq!(got, fs_err::read(&src).unwrap());
        let meta = fs_err::metadata(t.path().join("dst")).unwrap();
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "{} bytes allocated for 8 bytes of data",
            meta.blocks() * 512
        );
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert!(
            d.copy_new_file(&f, size, "dst", me(), 0o640)
                .unwrap()
                .is_none(),
            "never over a file"
        );
    }
}
