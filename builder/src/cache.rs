//! The build cache's layout, in one place: every area below the cache directory and what names
//! it, for the build, its dry run, the lock and the doctor alike. Areas keyed by digest are
//! complete once they exist (each is made in `tmp/` and renamed into place).

use std::path::{Path, PathBuf};

/// Where things live below a build cache directory.
pub trait Layout {
    /// Bare git mirrors, one per URL.
    fn git_dir(&self) -> PathBuf;
    /// Exported source trees (`src/<commit>`).
    fn src_dir(&self, commit: &str) -> PathBuf;
    /// Interpreter + venv by env digest (`env/<digest>`).
    fn env_dir(&self, digest: &str) -> PathBuf;
    /// The CUDA toolkit beside an env (`toolkit/<digest>`).
    fn toolkit_dir(&self, digest: &str) -> PathBuf;
    /// Every toolkit's folder (`toolkit/`).
    fn toolkits(&self) -> PathBuf;
    /// An extension's wheel by its digest (`wheels/<digest>/<name>.whl`).
    fn wheel_dir(&self, digest: &str) -> PathBuf;
    /// Every wheel's folder (`wheels/`): a wheel's path below it is its cache key.
    fn wheels(&self) -> PathBuf;
    /// Assembled, frozen, smoke-started release trees (`stage/<digest>`).
    fn stage_dir(&self, digest: &str) -> PathBuf;
    /// What a stage's checks found, beside it (`stage/<digest>.nodes.json`).
    fn stage_record(&self, digest: &str) -> PathBuf;
    /// Work in progress, renamed into its area when complete (`tmp/<name>`).
    fn scratch(&self, name: &str) -> PathBuf;
    /// Compiler, smoke start and install logs (`logs/<name>`).
    fn log(&self, name: &str) -> PathBuf;
    /// Declared model files by sha256 (`models/<sha256>`).
    fn model(&self, sha256: &str) -> PathBuf;
    /// uv's own cache (downloads, built wheels).
    fn uv_cache(&self) -> PathBuf;
    /// Digests and frame tables of the newest bundles, for the next pack.
    fn pack_cache(&self) -> PathBuf;
}

impl Layout for Path {
    fn git_dir(&self) -> PathBuf {
        self.join("git")
    }
    fn src_dir(&self, commit: &str) -> PathBuf {
        self.join("src").join(commit)
    }
    fn env_dir(&self, digest: &str) -> PathBuf {
        self.join("env").join(digest)
    }
    fn toolkit_dir(&self, digest: &str) -> PathBuf {
        self.toolkits().join(digest)
    }
    fn toolkits(&self) -> PathBuf {
        self.join("toolkit")
    }
    fn wheel_dir(&self, digest: &str) -> PathBuf {
        self.wheels().join(digest)
    }
    fn wheels(&self) -> PathBuf {
        self.join("wheels")
    }
    fn stage_dir(&self, digest: &str) -> PathBuf {
        self.join("stage").join(digest)
    }
    fn stage_record(&self, digest: &str) -> PathBuf {
        self.join("stage").join(format!("{digest}.nodes.json"))
    }
    fn scratch(&self, name: &str) -> PathBuf {
        self.join("tmp").join(name)
    }
    fn log(&self, name: &str) -> PathBuf {
        self.join("logs").join(name)
    }
    fn model(&self, sha256: &str) -> PathBuf {
        self.join("models").join(sha256)
    }
    fn uv_cache(&self) -> PathBuf {
        self.join("uv")
    }
    fn pack_cache(&self) -> PathBuf {
        self.join("pack")
    }
}

#[cfg(test)]
mod tests {
    use super::Layout as _;
    use std::path::Path;

    /// The layout is on disk between builds (and scripts/bench-real.sh finds env/ beside stage/):
    /// changing a name orphans every cache.
    #[test]
    fn the_cache_layout_keeps_its_names() {
        let c = Path::new("/c");
        let got = [
            c.git_dir(),
            c.src_dir("abc"),
            c.env_dir("e"),
            c.toolkit_dir("t"),
            c.wheel_dir("w"),
            c.stage_dir("s"),
            c.stage_record("s"),
            c.scratch("env-e"),
            c.log("x.log"),
            c.model("m"),
            c.uv_cache(),
            c.pack_cache(),
        ];
        let want = [
            "/c/git",
            "/c/src/abc",
            "/c/env/e",
            "/c/toolkit/t",
            "/c/wheels/w",
            "/c/stage/s",
            "/c/stage/s.nodes.json",
            "/c/tmp/env-e",
            "/c/logs/x.log",
            "/c/models/m",
            "/c/uv",
            "/c/pack",
        ];
        assert_eq!(got.map(|p| p.display().to_string()), want);
    }
}
