//! The shared libraries a release needs from the host (the manifest's `host_libs`, found by the
//! builder in the release's ELF files): each must be one the host's dynamic loader finds, in its
//! cache (`ldconfig -p`), its default directories or the release's own `LD_LIBRARY_PATH`. The
//! NVIDIA driver's libraries count only for a release that runs on a GPU.

use crate::cmd;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What the host has of a release's libraries.
#[derive(Debug, Default)]
pub struct Found {
    pub present: usize,
    /// Libraries the loader cannot find.
    pub missing: Vec<String>,
    /// The NVIDIA driver's libraries the loader cannot find (fatal only for a GPU release).
    pub driver_missing: Vec<String>,
}

/// Libraries that come with the NVIDIA driver rather than with a package of the distribution.
pub fn is_driver(lib: &str) -> bool {
    ["libcuda.so", "libnvidia-", "libnvcuvid.so"]
        .iter()
        .any(|p| lib.starts_with(p))
}

/// The loader's tag for this machine's libraries in `ldconfig -p`.
fn arch_tag() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        _ => None,
    }
}

/// Names in the loader's cache for this machine's architecture, from `ldconfig -p` output.
fn parse_cache(text: &str, tag: Option<&str>) -> HashSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (name, rest) = l.split_once(' ')?;
            let flags = rest.trim().strip_prefix('(')?.split(')').next()?;
            let ours = tag.is_none_or(|t| flags.split(',').any(|f| f == t));
            (ours && rest.contains("=>")).then(|| name.to_owned())
        })
        .collect()
}

fn loader_cache() -> HashSet<String> {
    for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"] {
        if let Ok(o) = cmd::output(Command::new(ldconfig).arg("-p"), Duration::from_secs(20)) {
            if o.status.success() {
                return parse_cache(&o.stdout, arch_tag());
            }
        }
    }
    HashSet::new()
}

/// Where the loader looks besides its cache: the release's `LD_LIBRARY_PATH` and the default
/// directories (with this machine's multiarch triplet).
fn search_dirs(m: &Manifest) -> Vec<String> {
    let mut dirs: Vec<String> = m
        .launch
        .env
        .get("LD_LIBRARY_PATH")
        .map(|p| {
            p.split(':')
                .filter(|d| d.starts_with('/'))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    for base in ["/lib", "/usr/lib", "/lib64", "/usr/lib64"] {
        dirs.push(format!("{base}/{triplet}"));
        dirs.push(base.to_owned());
    }
    dirs
}

/// Looks up every library the release names.
pub fn check(m: &Manifest) -> Found {
    let mut found = Found::default();
    if m.host_libs.is_empty() {
        return found;
    }
    let cache = loader_cache();
    let dirs = search_dirs(m);
    for lib in &m.host_libs {
        if cache.contains(lib) || dirs.iter().any(|d| Path::new(d).join(lib).exists()) {
            found.present += 1;
        } else if is_driver(lib) {
            found.driver_missing.push(lib.clone());
        } else {
            found.missing.push(lib.clone());
        }
    }
    found
}

/// Refuses a release whose libraries the host lacks; returns how many it has.
pub fn require(m: &Manifest) -> Result<usize> {
    let f = check(m);
    if !f.missing.is_empty() {
        bail!(
            "the host lacks {} shared librar{} the release needs: {} (the dynamic loader finds {} in \
             neither its cache nor LD_LIBRARY_PATH); install the packages that provide {} \
             (Debian/Ubuntu: `apt-file search {}`), or build the release with a self-contained \
             interpreter",
            f.missing.len(),
            if f.missing.len() == 1 { "y" } else { "ies" },
            f.missing.join(", "),
            if f.missing.len() == 1 { "it" } else { "them" },
            if f.missing.len() == 1 { "it" } else { "them" },
            f.missing[0]
        );
    }
    if !f.driver_missing.is_empty() && m.launch.device_type == "cuda" {
        bail!(
            "the release runs on the GPU and needs the NVIDIA driver's {}, which this host lacks: \
             install the driver (CUDA 13.0 needs 580 or newer)",
            f.driver_missing.join(", ")
        );
    }
    Ok(f.present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_cache_is_read_for_this_architecture() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n\
            \tlibc.so.6 (libc6,AArch64) => /lib/aarch64-linux-gnu/libc.so.6\n\
            \tlibm.so.6 (libc6) => /lib/i386-linux-gnu/libm.so.6\n\
            Cache generated by: ldconfig (GNU libc) stable release version 2.36\n";
        let x86: Vec<_> = parse_cache(text, Some("x86-64")).into_iter().collect();
        assert_eq!(x86, ["libz.so.1"]);
        let arm: Vec<_> = parse_cache(text, Some("AArch64")).into_iter().collect();
        assert_eq!(arm, ["libc.so.6"]);
        assert_eq!(parse_cache(text, None).len(), 3);
    }

    #[test]
    fn missing_libraries_are_named_and_the_driver_counts_only_on_a_gpu() {
        let mut m = bundle::testing::template();
        m.host_libs = vec![
            "libc.so.6".into(),
            "libcomfyctl-test-absent.so.7".into(),
            "libnvidia-comfyctl-test-absent.so.1".into(),
        ];
        m.launch.device_type = "cpu".into();
        let f = check(&m);
        assert_eq!(f.missing, ["libcomfyctl-test-absent.so.7"]);
        assert!(f.present >= 1);
        let err = require(&m).unwrap_err().to_string();
        assert!(
            err.contains("lacks 1 shared library the release needs: libcomfyctl-test-absent.so.7"),
            "{err}"
        );
        m.host_libs.retain(|l| l != "libcomfyctl-test-absent.so.7");
        // A CPU release does not need the driver; a GPU release does, where this host lacks it.
        assert!(require(&m).is_ok());
        m.launch.device_type = "cuda".into();
        let err = require(&m).unwrap_err().to_string();
        assert!(
            err.contains("NVIDIA driver's libnvidia-comfyctl-test-absent.so.1"),
            "{err}"
        );
    }
}
