//! What the embedded interpreter needs from the host: the shared libraries the ELF files of the
//! release's `python/` prefix name (`DT_NEEDED`, read by patchelf) that no file of the release
//! provides: libc, and whatever the interpreter was linked against (a distribution's or pyenv's
//! Python: libssl, libffi, sqlite...; uv's managed CPython: little beyond libc).
//!
//! Only the interpreter's prefix: the venv's wheels ship plugins that name libraries no host has
//! and that load only on demand (the real release's torch and NVIDIA wheels name libmpi, libfabric,
//! libibverbs, libucp, libtbb...), and the NVIDIA driver is checked by doctor on its own.

use anyhow::{Context as _, Result};
use std::collections::{BTreeSet, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cmd as process;

/// The release's interpreter prefix (embedded mode); absent in system mode.
pub const PREFIX: &str = "python";

/// The sorted `DT_NEEDED` names of every ELF file below `root/python` that no file or link below
/// `root` is named after (the loader finds a release's own libraries through their RUNPATHs, which
/// point inside the release).
pub fn host_libs(root: &Path) -> Result<Vec<String>> {
    let mut names: HashSet<String> = HashSet::new();
    let mut elfs: Vec<PathBuf> = Vec::new();
    let prefix = root.join(PREFIX);
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e?;
        let ft = e.file_type();
        if ft.is_dir() {
            continue;
        }
        names.insert(e.file_name().to_string_lossy().into_owned());
        if ft.is_file() && e.path().starts_with(&prefix) && is_elf(e.path())? {
            elfs.push(e.into_path());
        }
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let chunk = elfs.len().div_ceil(jobs).max(1);
    let needed: Vec<Result<BTreeSet<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = elfs
            .chunks(chunk)
            .map(|part| s.spawn(move || needed_by(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a scan thread panicked")))
            })
            .collect()
    });
    let mut out = BTreeSet::new();
    for n in needed {
        out.extend(n?.into_iter().filter(|l| !names.contains(l)));
    }
    Ok(out.into_iter().collect())
}

fn is_elf(p: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = fs_err::File::open(p)?;
    Ok(f.read(&mut magic)? == 4 && magic == *b"\x7fELF")
}

fn needed_by(files: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for f in files {
        // Static executables and objects without a dynamic section make patchelf fail: they need
        // nothing from the host's loader.
        let Ok(text) = process::stdout(Command::new("patchelf").arg("--print-needed").arg(f))
        else {
            continue;
        };
        for lib in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !bundle::manifest::is_library_name(lib) {
                return Err(anyhow::anyhow!(
                    "{} needs {lib:?}, which is not a plain library name",
                    f.display()
                ))
                .context("listing the host libraries the release needs");
            }
            out.insert(lib.to_owned());
        }
    }
    Ok(out)
}

/// What the host-libs step runs, for `build --dry-run`.
pub fn commands() -> Vec<String> {
    vec!["patchelf --print-needed python/**: what the interpreter needs from the host".to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_the_tree_does_not_ship() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("python/bin");
        fs_err::create_dir_all(&bin).unwrap();
        // A real dynamically linked program of this machine: it needs libc.so.6.
        fs_err::copy("/bin/ls", bin.join("ls")).unwrap();
        fs_err::write(bin.join("script"), "#!/bin/sh\n").unwrap();
        // Outside the interpreter's prefix (a wheel's optional plugin): not counted.
        fs_err::create_dir_all(t.path().join("venv/lib")).unwrap();
        fs_err::copy("/usr/bin/git", t.path().join("venv/lib/plugin.so")).unwrap();
        let libs = host_libs(t.path()).unwrap();
        assert!(libs.iter().any(|l| l == "libc.so.6"), "{libs:?}");
        assert!(
            !libs
                .iter()
                .any(|l| l.starts_with("libz") || l.starts_with("libpcre")),
            "{libs:?}"
        );
        // Shipping a file of that name satisfies it.
        fs_err::create_dir_all(t.path().join("lib")).unwrap();
        fs_err::write(t.path().join("lib/libc.so.6"), "").unwrap();
        let libs = host_libs(t.path()).unwrap();
        assert!(!libs.iter().any(|l| l == "libc.so.6"), "{libs:?}");
    }
}
