//! `launch.sh` at the release root: finds its own directory (the release, wherever it is unpacked),
//! exports the recipe's environment, picks the GPUs like the seed's launcher when
//! `CUDA_VISIBLE_DEVICES` is unset, and runs ComfyUI with the release's own interpreter.

use std::collections::BTreeMap;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A launch environment value starting with this names a path inside the release
/// (`TRITON_PTXAS_PATH = "@release/venv/.../nvidia/cu13/bin/ptxas"`).
pub const RELEASE_PREFIX: &str = "@release/";

pub fn render(env: &BTreeMap<String, String>) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Starts ComfyUI from this release; written by comfy-build.\nset -eu\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd -P)\nexport PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1\n",
    );
    for (k, v) in env {
        match v.strip_prefix(RELEASE_PREFIX) {
            // A path inside the release, wherever it is unpacked (the release's own ptxas).
            Some(rel) => s.push_str(&format!("export {k}=\"$here\"/{}\n", quote(rel))),
            None => s.push_str(&format!("export {k}={}\n", quote(v))),
        }
    }
    s.push_str(
        "if [ -z \"${CUDA_VISIBLE_DEVICES+x}\" ] && command -v nvidia-smi >/dev/null 2>&1; then\n  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, - || true)\n  if [ -n \"$gpus\" ]; then export CUDA_VISIBLE_DEVICES=\"$gpus\"; fi\nfi\nexec \"$here/venv/bin/python\" \"$here/ComfyUI/main.py\" \"$@\"\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Values reach the app byte for byte (quotes, `$(...)`, newlines are data, not shell), and
    /// arguments pass through unchanged, from wherever the release is unpacked.
    #[test]
    fn values_and_arguments_arrive_verbatim() {
        let t = tempfile::tempdir().unwrap();
        let rel = t.path().join("a dir/release");
        fs_err::create_dir_all(rel.join("venv/bin")).unwrap();
        fs_err::create_dir_all(rel.join("ComfyUI")).unwrap();
        let odd = "it's \"$(touch pwned)\" `id` $HOME\nline2";
        let env = BTreeMap::from([
            ("ODD".to_owned(), odd.to_owned()),
            (
                "PTXAS".to_owned(),
                "@release/venv/bin/it's ptxas".to_owned(),
            ),
        ]);
        let launch = rel.join("launch.sh");
        fs_err::write(&launch, render(&env)).unwrap();
        let py = rel.join("venv/bin/python");
        fs_err::write(
            &py,
            "#!/bin/sh\nprintf '%s\\n' \"$ODD\" \"$PTXAS\" \"$@\" \"$PYTHONNOUSERSITE\"\n",
        )
        .unwrap();
        for p in [&launch, &py] {
            fs_err::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = std::process::Command::new(&launch)
            .args(["--listen", "a b", "--x=$y"])
            .current_dir(t.path())
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let main = rel.join("ComfyUI/main.py");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "{odd}\n{}\n{}\n--listen\na b\n--x=$y\n1\n",
                rel.join("venv/bin/it's ptxas").display(),
                main.display()
            )
        );
        assert!(!t.path().join("pwned").exists());
    }
}
