#!/usr/bin/env bash
# The real ComfyUI v0.3.64 with five real custom nodes (../shared/upstream), PyPI's torch on the CPU,
# end to end as the default service user under a real systemd booted in a sandbox:
# - builds release 1, release 2 (KJNodes moved to its next commit), a release whose extra node
#   imports at build but not on a host (it opens the NVIDIA driver when a GPU may be visible), and
#   a recipe whose extra node is too new for v0.3.64 (the build must stop, naming node and class);
# - checks what the builder recorded: every node's classes, the paths nodes write (node state);
# - activates 1: healthy with every class checked, the unit runs as `comfyui`, the files comfyctl
#   wrote for it are readable by its group only, Custom-Scripts' state lives under data/;
# - ComfyUI-Manager serves but refuses to install, update or uninstall; the release is intact;
# - queues a render (about 20 s on the CPU) and activates 2 while it runs: the activation waits for
#   it (drain), the render finishes in release 1 and its image is in data/output;
# - rolls back, activates the bad release (rolled back by itself, node named); node state survives
#   all of it and gc.
# Builds share .cache/build with the demo; everything else lives in a scratch directory that is
# removed at the end. Needs root. Usage: tests/real/test.sh   (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/env.sh
cargo build --release --locked -q -p builder -p activator
B=$PWD/target/release/comfy-build
cache=$PWD/.cache/build
mkdir -p .cache
work=$(mktemp -d "$PWD/.cache/real-test.XXXXXX")
pid=
cleanup() {
  # The bind mount of /opt/comfyui goes with the sandbox's mount namespace.
  if [ -n "$pid" ]; then bash tests/sandbox/stop.sh "$pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS
say() { printf '\n== [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

bash scripts/demo-fixtures.sh "$work/fixtures" >/dev/null
$B keygen --out "$work/release" >/dev/null
build() { # recipe -> bundle path (the build's JSON goes to $work/last-build.json)
  $B lock "$1" --cache "$cache" >&2
  # stderr shown and kept in build.err; stdout (the JSON) in last-build.json
  { $B build "$1" --key "$work/release.key" --out "$work/bundles" --cache "$cache" --locked --json 2>&1 1>&3 | tee "$work/build.err" >&2; } 3>"$work/last-build.json"
  json 'd["path"]' <"$work/last-build.json"
}

say "release 1: ComfyUI v0.3.64, ComfyUI-Manager, KJNodes, rgthree, Custom-Scripts, essentials"
r1=$(bash scripts/comfyui-recipe.sh 1 "$work/r1")
b1=$(build "$r1")
$B inspect "$b1" --json >"$work/b1.json"
python3 - "$work/b1.json" <<'PY' || fail "release 1's manifest"
import json, sys
m = json.load(open(sys.argv[1]))
n = {k: len(v) for k, v in m["expected_nodes"].items()}
print("classes per node:", n)
# ComfyUI-Manager registers no class; the others were all seen in /object_info at build.
for node, least in [("ComfyUI-KJNodes", 150), ("ComfyUI_essentials", 50), ("rgthree-comfy", 10), ("ComfyUI-Custom-Scripts", 5), ("ComfyUI-Impact-Pack", 150)]:
    assert n.get(node, 0) >= least, f"{node}: {n.get(node)} classes recorded, expected at least {least}"
# Impact-Pack imports the pinned subpack's nodes from impact_subpack/ (before: IMPORT FAILED).
assert "UltralyticsDetectorProvider" in m["expected_nodes"]["ComfyUI-Impact-Pack"], "the subpack's classes are missing"
names = [g["name"] for g in m["provenance"]["custom_nodes"]]
assert "ComfyUI-Impact-Pack/impact_subpack" in names, names
assert sorted(x["path"] for x in m["models"]) == ["ultralytics/bbox/face_yolov8m.pt", "ultralytics/bbox/hand_yolov8s.pt", "ultralytics/segm/person_yolov8m-seg.pt"], m["models"]
state = {s["path"]: s for s in m["state"]}
print("node state:", sorted(state))
cs = state.get("ComfyUI/custom_nodes/ComfyUI-Custom-Scripts/pysssss.json")
assert cs and cs["target"] == "ComfyUI-Custom-Scripts/pysssss.json", "the smoke start did not record Custom-Scripts' pysssss.json"
assert "ComfyUI/custom_nodes/rgthree-comfy/rgthree_config.json" in state, "the recipe's declared rgthree state is missing"
PY

say "a node too new for v0.3.64: the build stops, naming node and class"
rn=$(bash scripts/comfyui-recipe.sh 1 "$work/rn" "$work/fixtures/node-too-new")
if build "$rn" 2>"$work/too-new.err" >/dev/null; then fail "a node whose class /object_info cannot describe was built"; fi
grep -q "node-too-new" "$work/too-new.err" && grep -q "NewerSwitch" "$work/too-new.err" \
  || { cat "$work/too-new.err" >&2; fail "the error does not name node-too-new and NewerSwitch"; }
grep -q "StillFine" "$work/too-new.err" && fail "the error names StillFine, which works"
grep -E "NewerSwitch|node-too-new" "$work/too-new.err" | head -3

say "release 2: KJNodes moved to its next upstream commit"
r2=$(bash scripts/comfyui-recipe.sh 2 "$work/r2")
b2=$(build "$r2")
grep -E "^ *workflows " "$work/build.err" | tail -1 || fail "the build did not check the recipe's workflows"
# Its pack copied release 1's frames for everything but KJNodes' (and read only the new stage's
# own copies of ComfyUI and the nodes for digests, not the 9 GB venv).
json '"release 2 pack: %d of %d frames copied, %d bytes read for digests" % (d["frames_copied"], d["frames"], d["digest_bytes_read"])' <"$work/last-build.json"
json 'int(d["frames_copied"] >= d["frames"] - 10 and d["digest_bytes_read"] < 200_000_000)' <"$work/last-build.json" | grep -qx 1 \
  || fail "release 2's pack did not reuse release 1's frames and digests"
$B diff "$b1" "$b2" | tee "$work/diff.txt"
grep -q "~ ComfyUI-KJNodes ba6533debb2b -> 1ddf5d4e24fc" "$work/diff.txt" || fail "the diff does not show KJNodes' move"
grep -q "^files: 2 changed, 0 added, 0 removed" "$work/diff.txt" || fail "the diff's file counts"
# The two KJNodes commits register the same classes: the diff says so rather than listing none.
grep -q "^node classes: unchanged" "$work/diff.txt" || fail "the diff's node classes"

say "a workflow naming a class the release lacks stops the build, naming workflow, node and class"
rw=$(bash scripts/comfyui-recipe.sh 2 "$work/rw")
printf '{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "NewerSwitch", "inputs": {"image": ["1", 0]}}}' >"$work/rw/uses-newer.json"
printf '\n[[workflows]]\nfile = "uses-newer.json"\n' >>"$rw"
if build "$rw" >/dev/null; then fail "a workflow using a class the release lacks was built"; fi
grep -q 'workflow uses-newer does not fit this release' "$work/build.err" \
  && grep -q 'node 2 (NewerSwitch): this release has no node class "NewerSwitch"' "$work/build.err" \
  || { tail -20 "$work/build.err" >&2; fail "the error does not name the workflow, node and class"; }

say "release 3: release 2 plus a node that imports at build but needs the NVIDIA driver on a host"
r3=$(bash scripts/comfyui-recipe.sh 2 "$work/r3" "$work/fixtures/node-needs-driver")
sed -i -e 's/^sequence = 2$/sequence = 3/' -e 's/^version = "0.3.64-2"/version = "0.3.64-3"/' "$r3"
b3=$(build "$r3")
id1=$($B inspect "$b1" --json | json 'd["id"]')
id2=$($B inspect "$b2" --json | json 'd["id"]')

say "boot a real systemd in a sandbox; /opt/comfyui is a directory on disk (the release is 9 GB)"
mkdir -p "$work/bin" "$work/opt"
cp target/release/comfyctl "$work/bin/comfyctl"
C=$work/bin/comfyctl
bash tests/sandbox/boot.sh "$work" "$work/sandbox.pid"
pid=$(cat "$work/sandbox.pid")
host() { nsenter -t "$pid" -a "$@"; }
host mkdir -p /opt/comfyui
host mount --bind "$work/opt" /opt/comfyui
host "$C" setup --target linux-x86_64-cpu --key "$work/release.pub"

say "the model files release 1 declares (Impact-Subpack's detectors), fetched from a local server"
# Stand-ins with the real names (no Hugging Face here), served over HTTP inside the sandbox.
mkdir -p "$work/models-www/models"
cp -r tests/fixtures/models/. "$work/models-www/models/"
host sh -c "cd $work/models-www && python3 -m http.server 8090 --bind 127.0.0.1 >/dev/null 2>&1 &"
host sh -c 'printf "\n[models]\nbase_url = \"http://127.0.0.1:8090/models\"\n" >>/etc/comfyui/comfyctl.toml'
host "$C" models "$b1" && fail "comfyctl models says the missing models are there"
for _ in $(seq 1 50); do host curl -sf -o /dev/null http://127.0.0.1:8090/models/ultralytics/bbox/face_yolov8m.pt && break; sleep 0.1; done
host "$C" models "$b1" --fetch || fail "the declared models were not fetched"
[ "$(host stat -c '%U %G %a' /opt/comfyui/data/models/ultralytics/bbox/face_yolov8m.pt)" = "root comfyui-users 644" ] \
  || fail "a fetched model's owner and mode"

say "activate release 1 (the unit runs as the default service user)"
host "$C" activate "$b1" --json >"$work/a1.json" || { host journalctl -u comfyui --no-pager | tail -40; fail "release 1 did not activate"; }
json '"health: %s, %d classes, %.1fs to healthy" % (d["health"]["healthy"], d["health"]["node_classes"], d["health"]["seconds"])' <"$work/a1.json"
# The recipe's workflows against the running app: both fit, the model-free one ran on the host's
# CPU, the SDXL one names a checkpoint this host lacks (a warning by default).
python3 - "$work/a1.json" <<'PY' || fail "the workflows on the host"
import json, sys
h = json.load(open(sys.argv[1]))["health"]
print("workflows:", h["workflows_checked"], "checked,", h["workflows_run"], "run in %.2fs; missing models:" % h["workflow_seconds"], h["missing_models"])
assert h["workflows_checked"] == 2 and h["workflows_run"] == 1, h
assert h["missing_models"] == ["sdxl-txt2img: sd_xl_base_1.0.safetensors (node 4 (CheckpointLoaderSimple), ckpt_name)"], h
PY
host sh -c 'printf "\n[health]\nmissing_models = \"fail\"\n" >>/etc/comfyui/comfyctl.toml'
if host "$C" health >"$work/health.out"; then fail "health passed with a missing model while the host says fail"; fi
grep -q "workflow sdxl-txt2img: names model files this host lacks: sd_xl_base_1.0.safetensors" "$work/health.out" \
  || { cat "$work/health.out" >&2; fail "the missing model is not named"; }
host sed -i '/^\[health\]$/,$d' /etc/comfyui/comfyctl.toml
host "$C" health >/dev/null || fail "health after restoring the config"
rm -f "$b1" # installed: a 4 GB bundle less on the disk
host "$C" health --json | json 'd["healthy"] and not d["missing_nodes"] or sys.exit("unhealthy")' >/dev/null
main=$(host systemctl show -p MainPID --value comfyui)
[ "$(host ps -o user= -p "$main")" = comfyui ] || fail "the unit's main process runs as $(host ps -o user= -p "$main")"
# What comfyctl wrote for the unit: in root's own directory, readable by the service's group, by
# no one else; root's directories in data/ are root's alone.
for f in /opt/comfyui/state/unit/extra_model_paths.yaml /opt/comfyui/state/unit/service.env; do
  m=$(host stat -c '%a %U %G' "$f")
  [ "$m" = "640 root comfyui" ] || fail "$f is $m, expected 640 root comfyui"
done
[ "$(host stat -c '%a %U %G' /opt/comfyui/state/unit)" = "750 root comfyui" ] || fail "state/unit is not root's, 0750"
for d in /opt/comfyui/data /opt/comfyui/data/db /opt/comfyui/data/node-state; do
  [ "$(host stat -c '%a %U' "$d")" = "755 root" ] || fail "$d is $(host stat -c '%a %U' "$d"), expected root's alone (755 root)"
done
st=/opt/comfyui/data/node-state/ComfyUI-Custom-Scripts/pysssss.json
host test -f "$st" || fail "Custom-Scripts' pysssss.json is not in data/node-state"
[ "$(host stat -c %U "$st")" = comfyui ] || fail "$st is not the service user's"
[ "$(host readlink -f /opt/comfyui/current/ComfyUI/custom_nodes/ComfyUI-Custom-Scripts/pysssss.json)" = "$st" ] \
  || fail "the release's pysssss.json does not lead to data/node-state"
host su -s /bin/sh nobody -c "cat /opt/comfyui/state/unit/extra_model_paths.yaml" 2>/dev/null && fail "another user can read the model-paths file"
# The database ComfyUI migrated at start, and a node's state folder: the service user's, nobody else's.
db=$(host find /opt/comfyui/data/db -name comfyui.db)
[ -n "$db" ] || fail "no database under data/db"
[ "$(host stat -c %U "$db")" = comfyui ] || fail "$db is not the service user's"
for f in "$(dirname "$db")" /opt/comfyui/data/node-state/ComfyUI-Custom-Scripts; do
  m=$(host stat -c '%U %A' "$f")
  case "$m" in "comfyui drwxrwx---" | "comfyui drwxrws---") ;; *) fail "$f is $m, expected the service user's, 0770" ;; esac
done
host journalctl -u comfyui --no-pager | grep -q "IMPORT FAILED" && fail "a node failed to import on the host"

say "ComfyUI-Manager serves, and refuses to change the release"
code() { host curl -s -o /dev/null -w '%{http_code}' "$@"; }
[ "$(code http://127.0.0.1:8188/api/manager/version)" = 200 ] || fail "ComfyUI-Manager does not serve"
for path in manager/queue/install manager/queue/update manager/queue/uninstall customnode/install/git_url; do
  c=$(code -X POST -H 'Content-Type: application/json' -d '{"id":"comfyui-impact-pack","url":"https://github.com/ltdrdata/ComfyUI-Impact-Pack","version":"nightly","selected_version":"nightly"}' "http://127.0.0.1:8188/api/$path")
  echo "POST /api/$path -> $c"
  [ "$c" = 403 ] || fail "ComfyUI-Manager answered $c to $path"
done
host grep -q '^security_level = strong' /opt/comfyui/data/user/default/ComfyUI-Manager/config.ini || fail "Manager's config.ini"
host "$C" verify >/dev/null || fail "the release changed"

say "node state is the host's: kept across activation, rollback and gc"
host python3 -c "
import json; p='$st'; d=json.load(open(p)); d['kept-by-test']=1; json.dump(d, open(p, 'w'))"

say "a render running on the CPU survives the activation of release 2, which waits for it"
# Five 31-pixel blurs of a 2048x2048 image (about 20 s on 2 cores), saved to the output folder.
cat >"$work/long.py" <<'PY'
import json, sys, time, urllib.request
wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 1, "color": int(time.time()) % 16777215}}}
prev = "1"
for i in range(5):
    wf[str(10 + i)] = {"class_type": "ImageBlur", "inputs": {"image": [prev, 0], "blur_radius": 31, "sigma": 10.0}}
    prev = str(10 + i)
wf["99"] = {"class_type": "SaveImage", "inputs": {"images": [prev, 0], "filename_prefix": "drain-test"}}
req = urllib.request.Request("http://127.0.0.1:8188/prompt", data=json.dumps({"prompt": wf}).encode(), headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["prompt_id"])
PY
cat >"$work/watch.py" <<'PY'
# Polls the job's history until it succeeds; prints when, and the unit's main pid at that moment.
import json, subprocess, sys, time, urllib.request
pid, t0 = sys.argv[1], time.time()
while time.time() - t0 < 600:
    try:
        h = json.load(urllib.request.urlopen(f"http://127.0.0.1:8188/history/{pid}", timeout=5))
    except Exception:
        h = {}
    if pid in h:
        main = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "comfyui"], capture_output=True, text=True).stdout.strip()
        print(h[pid]["status"]["status_str"], round(time.time() - t0, 1), main)
        sys.exit(0)
    time.sleep(0.2)
print("never", round(time.time() - t0, 1), "-")
PY
main1=$(host systemctl show -p MainPID --value comfyui)
job=$(host python3 "$work/long.py") || fail "queueing the long workflow"
host sh -c "python3 $work/watch.py $job > $work/watch.out 2>&1 &"
t_act=$SECONDS
host sh -c "$C activate $b2 --json > $work/a2.json 2> $work/a2.err" || { cat "$work/a2.err" >&2; fail "release 2 did not activate"; }
for _ in $(seq 1 50); do [ -s "$work/watch.out" ] && break; sleep 0.2; done
read -r st_job t_job main_at_done <"$work/watch.out" || true
echo "job $job: $st_job after ${t_job}s (unit main pid then $main_at_done, before the activation $main1); activation took $((SECONDS - t_act))s"
grep "^draining:" "$work/a2.err" | head -2
[ "$st_job" = success ] || fail "the render did not finish in the old release ($st_job)"
[ "$main_at_done" = "$main1" ] || fail "the render finished after the unit was restarted (pid $main_at_done, was $main1)"
grep -q "^draining: waiting for 1 running" "$work/a2.err" || fail "the activation did not say it waited for the render"
host sh -c 'ls /opt/comfyui/data/output/drain-test_*.png' || fail "the render's output is missing"
json '"release 2: %d files written, %d reused; waited %.1fs for %d running job(s); healthy in %.1fs; down %.1fs from stop to healthy" % (d["files_written"], d["files_reused"], d["drain"]["waited_seconds"], d["drain"]["running_at_start"], d["health"]["seconds"], d["health"]["downtime_seconds"])' <"$work/a2.json"
json 'int(d["drain"]["running_at_start"] == 1 and d["drain"]["waited_seconds"] > 3)' <"$work/a2.json" | grep -qx 1 || fail "the activation's JSON does not show the drain"
rm -f "$b2"
host "$C" rollback
[ "$(host "$C" status --json | json 'd["current"]["id"]')" = "$id1" ] || fail "rollback did not return to release 1"
host "$C" health >/dev/null || fail "release 1 unhealthy after rollback"

say "release 3: imports at build, fails on the host; rolled back by itself with the node named"
if host "$C" activate "$b3" 2>"$work/a3.err"; then fail "a release whose node fails on the host activated"; fi
grep -m3 "custom node\|rolled back\|unhealthy" "$work/a3.err" || true
grep -q "custom node node-needs-driver" "$work/a3.err" || fail "the error does not name node-needs-driver"
[ "$(host "$C" status --json | json 'd["current"]["id"]')" = "$id1" ] || fail "release 3 was not rolled back"
host systemctl is-active comfyui >/dev/null || fail "the unit is not running after the automatic rollback"
host "$C" gc >/dev/null
host grep -q kept-by-test "$st" || fail "node state was lost"
echo "id2 $id2 kept for rollback: $(host "$C" releases --json | json '"'"$id2"'" in str(d)')"
say "real ComfyUI end to end: ok"
