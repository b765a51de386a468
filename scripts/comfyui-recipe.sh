#!/usr/bin/env bash
# Writes the recipe (and its lock) of release N of the real ComfyUI demo into DIR:
#   1: recipes/comfyui-cpu.toml as committed (ComfyUI v0.3.64 and six custom nodes, one with a
#      nested source and declared models);
#   2: the same with ComfyUI-KJNodes moved to its next upstream commit (an update of one node).
# Sources: the git bundles in ../shared/upstream (default), or with COMFY_SOURCES=github the
# upstream repositories on GitHub at the same upstream commits (../shared/upstream/README.md maps
# each bundle to its upstream). The lock starts from recipes/comfyui-cpu.toml.lock's pins. Prints the recipe's path.
# Usage: scripts/comfyui-recipe.sh N DIR [EXTRA_NODE_REPO...]   (extra nodes are appended; tests)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
upstream=$(cd "$here/../shared/upstream" && pwd)
out=$dir/comfyui-$n.toml
python3 - "$here/recipes/comfyui-cpu.toml" "$out" "$n" "${COMFY_SOURCES:-bundles}" "$upstream" "$@" <<'PY'
import os, re, sys
src, out, n, mode, upstream, *extra = sys.argv[1:]
text = open(src).read()
# bundle file -> (upstream URL, {bundle commit: upstream commit})
github = {
    "ComfyUI": ("https://github.com/comfyanonymous/ComfyUI", {
        "70d373fc2c174a1cdfb368cf78f7803687093765": "a125cd84b054a57729b5eecab930ca9408719832"}),
    "ComfyUI-Manager": ("https://github.com/Comfy-Org/ComfyUI-Manager", {
        "7715609c47046b17174f6a6f6e733590d976b9c1": "c792f9277cdab9f754ca02f35eabf9304af2b89b"}),
    "ComfyUI-KJNodes": ("https://github.com/kijai/ComfyUI-KJNodes", {
        "ba6533debb2b0eaf46c0e098605842a12d22ea78": "9954d6b5997b103bb1ca128f80bfc7e2c518917f",
        "1ddf5d4e24fcfea30ec3316125661f13d9d584d1": "3fcd22f2fe2be69c3229f192362b91888277cbcb"}),
    "rgthree-comfy": ("https://github.com/rgthree/rgthree-comfy", {
        "49a55f6489eae1b30f271a967c784d2a8a56fe2d": "2b9eb36d3e1741e88dbfccade0e08137f7fa2bfb"}),
    "ComfyUI-Custom-Scripts": ("https://github.com/pythongosssss/ComfyUI-Custom-Scripts", {
        "13a2a883727baaf4f284142cc37b73183bb0edce": "f2838ed5e59de4d73cde5c98354b87a8d3200190"}),
    "ComfyUI_essentials": ("https://github.com/cubiq/ComfyUI_essentials", {
        "cc11925f908c96c6abeee1cd60fad868c06bbe8d": "33ff89fd354d8ec3ab6affb605a79a931b445d99"}),
    "ComfyUI-Impact-Pack": ("https://github.com/ltdrdata/ComfyUI-Impact-Pack", {
        "ee633c6517962838ab29a5a0aa679440c5930af0": "727295b52e5f7b5429e81ca2179172865aa83b99"}),
    "ComfyUI-Impact-Subpack": ("https://github.com/ltdrdata/ComfyUI-Impact-Subpack", {
        "7ebcc51c0d420243ad72b7c02ba3b3e8b693d17a": "bd4dedc4ea514dda9cfa333a0f42e296e32b8c10"}),
}
if n == "2":
    text = text.replace("ba6533debb2b0eaf46c0e098605842a12d22ea78", "1ddf5d4e24fcfea30ec3316125661f13d9d584d1")
    text = text.replace('version = "0.3.64-1"', 'version = "0.3.64-2"').replace("sequence = 1\n", "sequence = 2\n")
elif n != "1":
    sys.exit(f"release {n}: only 1 and 2 exist")

def source(m):
    name, rev = m.group(1), m.group(2)
    url, revs = github[name]
    if mode == "github":
        return f'git = "{url}"\nrev = "{revs[rev]}"'
    return f'git = "{upstream}/{name}.git.bundle"\nrev = "{rev}" # upstream {revs[rev][:8]}'

text, count = re.subn(r'git = "\.\./\.\./shared/upstream/([^"]+)\.git\.bundle"\nrev = "([0-9a-f]{40})"[^\n]*', source, text)
assert count == 8, f"expected 8 sources in {src}, found {count}"
if mode not in ("bundles", "github"):
    sys.exit(f"COMFY_SOURCES={mode}: use bundles or github")
# Workflow files and model mirrors are named relative to the committed recipe.
text = text.replace('file = "workflows/', f'file = "{os.path.dirname(src)}/workflows/')
text = text.replace('mirror = "../', f'mirror = "{os.path.dirname(os.path.dirname(src))}/')
for repo in extra:
    text += f'\n[[custom_nodes]]\ngit = "{repo}"\nrev = "main"\n'
open(out, "w").write(text)
PY
# Start from the committed lock's pins: `comfy-build lock` keeps them while the requirements are
# the same, so the two releases differ only where the recipe does.
cp "$here/recipes/comfyui-cpu.toml.lock" "$out.lock"
echo "$out"
