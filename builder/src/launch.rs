//! `launch.sh` at the release root: finds its own directory (the release, wherever it is unpacked),
//! exports the recipe's environment, picks the GPUs like the seed's launcher when
//! `CUDA_VISIBLE_DEVICES` is unset, and runs ComfyUI with the release's own interpreter.

use std::collections::BTreeMap;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn render(env: &BTreeMap<String, String>) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Starts ComfyUI from this release; written by comfy-build.\nset -eu\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd -P)\nexport PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1\n",
    );
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(
        "if [ -z \"${CUDA_VISIBLE_DEVICES+x}\" ] && command -v nvidia-smi >/dev/null 2>&1; then\n  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, - || true)\n  if [ -n \"$gpus\" ]; then export CUDA_VISIBLE_DEVICES=\"$gpus\"; fi\nfi\nexec \"$here/venv/bin/python\" \"$here/ComfyUI/main.py\" \"$@\"\n",
    );
    s
}
