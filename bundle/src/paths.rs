//! Which paths and symlink targets a bundle may hold. The rules are strict enough that, once every
//! entry passes them, no symlink resolves outside the release root and no entry is written through one.

use crate::{Error, Result};

/// A payload path: relative, `/`-separated, no empty, `.` or `..` component, no NUL, no trailing slash.
/// The longest path a bundle may hold, and a symlink target. Well below PATH_MAX (4096): a host
/// addresses a file as `<install>/releases/.staging-<id>-<pid>/<path>` or through the store, and
/// every one of those must stay valid. The same rule holds at pack and at activation.
pub const MAX_PATH: usize = 1024;

pub fn check_path(path: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::UnsafePath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.len() > MAX_PATH {
        return bad("longer than 1024 bytes (MAX_PATH)");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("empty component or trailing slash"),
            "." => return bad("`.` component"),
            ".." => return bad("`..` component"),
            _ if c.len() > 255 => return bad("component longer than 255 bytes"),
            _ => {}
        }
    }
    if path == ".bundle" || path.starts_with(".bundle/") {
        return bad("`.bundle/` is reserved for the manifest and signature");
    }
    Ok(())
}

/// The parent directory of a checked path (`""` for the root).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// A symlink target: relative, made of zero or more leading `..` then plain components, never climbing
/// above the root from the link's own directory. Since no `..` may follow a plain component, resolving
/// through other (equally checked) links can never climb higher than the lexical reading says.
pub fn check_symlink_target(path: &str, target: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::UnsafePath {
            path: path.to_owned(),
            reason,
        })
    };
    if target.is_empty() {
        return bad("empty symlink target");
    }
    if target.contains('\0') {
        return bad("symlink target contains NUL");
    }
    if target.starts_with('/') {
        return bad("symlink target is absolute");
    }
    if target.len() > MAX_PATH {
        return bad("symlink target longer than 1024 bytes (MAX_PATH)");
    }
    let depth = parent(path).split('/').filter(|c| !c.is_empty()).count();
    let mut ups = 0;
    let mut seen_plain = false;
    for c in target.split('/') {
        match c {
            ".." if seen_plain => return bad("symlink target has `..` after a plain component"),
            ".." => ups += 1,
            "" | "." => return bad("symlink target has an empty or `.` component"),
            _ => seen_plain = true,
        }
    }
    if ups > depth {
        return bad("symlink target leaves the release root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["a", "a/b", "venv/bin/python3.12", ".hidden/x"] {
            check_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            ".bundle/x",
            ".bundle",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlink_targets() {
        check_symlink_target("venv/bin/python", "../../python/bin/python3.12").unwrap();
        check_symlink_target("python/bin/python3", "python3.12").unwrap();
        check_symlink_target("venv/lib64", "lib").unwrap();
        check_symlink_target("a/up", "..").unwrap();
        for (p, t) in [
            ("x", ".."),
            ("x", "../etc"),
            ("a/x", "../../etc"),
            ("x", "/etc"),
            ("a/x", "b/../../.."),
            ("a/b/x", "c/.."),
            ("x", "./y"),
            ("x", ""),
        ] {
            assert!(check_symlink_target(p, t).is_err(), "{p} -> {t}");
        }
    }
}

#[cfg(test)]
mod max_path_tests {
    use super::*;

    #[test]
    fn paths_stay_well_below_path_max() {
        let deep = |len: usize| {
            let mut p = String::new();
            while p.len() < len {
                p.push_str("abcdefghi/");
            }
            p.truncate(len);
            p.trim_end_matches('/').to_owned() + "x"
        };
        check_path(&deep(1000)).unwrap();
        let e = check_path(&deep(1100)).unwrap_err();
        assert!(e.to_string().contains("longer than 1024 bytes"), "{e}");
        assert!(check_path(&deep(4095)).is_err());
    }
}
