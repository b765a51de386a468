#!/usr/bin/env bash
# The fleet test's steps, run by test.sh inside world.sh (the controller's network namespace):
# rollout, re-run, a bad release stopped at the canary, a delta rollout, the rollback playbook.
set -euo pipefail
work=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
B=$repo/target/release/comfy-build
ap=$repo/.cache/tools/bin/ansible-playbook
read -ra addrs <<<"$FLEET_HOSTS"
say() { printf '\n== fleet: %s\n' "$*" >&2; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  [ -n "${log:-}" ] && [ -f "$log" ] && { echo "--- $log (last 60 lines)" >&2; tail -60 "$log" >&2; }
  exit 1
}
on() { # HOST_INDEX CMD...: runs CMD on spark<i> over ssh
  local i=$1
  shift
  ssh -F "$FLEET_SSH_CONFIG" "root@${addrs[$((i - 1))]}" "$@"
}
answers() { # HOST_INDEX PORT: ComfyUI on spark<i> answers /system_stats over the bridge
  python3 -c "import urllib.request; urllib.request.urlopen('http://${addrs[$(($1 - 1))]}:$2/system_stats', timeout=5)"
}
current() { on "$1" comfyctl status --json | python3 -c 'import json,sys; c=json.load(sys.stdin)["current"]; print(c["id"] if c else "")'; }
id_of() { $B inspect "$work/www/$1.bundle" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
# The PLAY RECAP line of a host in a log ("" when the host was never reached).
recap() { sed -n '/^PLAY RECAP/,$p' "$2" | grep -E "^$1 +:" || true; }
count() { recap "$1" "$3" | grep -oE "$2=[0-9]+" | cut -d= -f2; }
play() { # LOG PLAYBOOK ARGS...: runs ansible-playbook as an operator would, from ansible/
  log=$work/$1
  shift
  local t0=$SECONDS rc=0
  (cd "$repo/ansible" && LC_ALL=C.UTF-8 ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=$work/ansible-tmp \
    "$ap" -i "$work/inventory.yml" "$@") >"$log" 2>&1 || rc=$?
  echo "ansible-playbook $* -> exit $rc in $((SECONDS - t0)) s" >&2
  return $rc
}

id1=$(id_of r1)
idbad=$(id_of bad)
id2=$(id_of r2)

say "bundle server: nginx on $FLEET_CONTROLLER:8080"
chmod -R a+rX "$work/www"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
  log_format fleet '\$remote_addr "\$request" \$status \$body_bytes_sent "\$http_range"';
  access_log $work/access.log fleet;
  server { listen $FLEET_CONTROLLER:8080; root $work/www; }
}
CONF
/usr/sbin/nginx -c "$work/nginx.conf"
trap 'kill "$(cat "$work/nginx.pid")" 2>/dev/null || true' EXIT
url=http://$FLEET_CONTROLLER:8080

cat >"$work/inventory.yml" <<INV
sparks:
  hosts:
    spark1: {ansible_host: ${addrs[0]}}
    spark2: {ansible_host: ${addrs[1]}}
    spark3: {ansible_host: ${addrs[2]}}
  vars:
    # As an operator connects: a sudo account, the become password from the inventory.
    ansible_user: admin
    ansible_become_password: fleet-test
    ansible_ssh_common_args: -F $FLEET_SSH_CONFIG
    ansible_python_interpreter: /usr/bin/python3
    comfyctl_binary: $repo/target/release/comfyctl
    comfyctl_trusted_keys: [$work/release.pub]
    comfyctl_target: linux-x86_64-cpu
    comfyui_health_device_type: cpu
    comfyui_health_timeout: 60
    comfyui_users: [alice]
    nfs_models_path: /srv/nfs/models
    nfs_input_path: /srv/nfs/input
    nfs_output_path: /srv/nfs/output
    nfs_require_mount: false
    comfyui_drain_timeout: 120
INV
for i in 1 2 3; do
  # Stand-ins for the NFS shares (the seed's playbook mounts them); a model already there.
  # The output share takes anyone's files (sticky), as a share the service user may write to.
  on "$i" 'mkdir -p /srv/nfs/models /srv/nfs/input /srv/nfs/output && chmod 1777 /srv/nfs/output && echo weights >/srv/nfs/models/model.safetensors'
done

say "syntax check"
play syntax.log site.yml --syntax-check -e comfyui_bundle_url=x || fail "site.yml syntax"
play syntax.log rollback.yml --syntax-check || fail "rollback.yml syntax"

say "roll out release 1 (canary spark1, then the rest)"
play rollout1.log site.yml -e "comfyui_bundle_url=$url/r1.bundle" || fail "rollout of release 1 failed"
for i in 1 2 3; do
  [ "$(current "$i")" = "$id1" ] || fail "spark$i is not on release 1"
  [ "$(count "spark$i" failed "$log")" = 0 ] || fail "spark$i failed in the recap"
  [ "$(on "$i" systemctl is-active comfyui)" = active ] || fail "comfyui.service is not active on spark$i"
  answers "$i" 8188 || fail "spark$i does not answer /system_stats over the network"
  [ "$(on "$i" readlink /opt/comfyui/data/models)" = /srv/nfs/models ] || fail "spark$i models link"
  on "$i" id alice >/dev/null || fail "comfyui_users were not created on spark$i"
done
# The canary finished before the others started.
grep -q "^PLAY \[Roll out" "$log" || fail "no rollout play"
batches=$(grep -c "^TASK \[comfyctl : Activate" "$log")
[ "$batches" = 3 ] || fail "expected 3 batches (host by host, spark1 first), saw $batches"
grep "spark.: comfyui-demo" "$log" >&2 || true

say "re-run: nothing changes"
play rerun.log site.yml -e "comfyui_bundle_url=$url/r1.bundle" || fail "re-run failed"
for i in 1 2 3; do
  r=$(recap "spark$i" "$log")
  [ -n "$r" ] || fail "spark$i missing from the re-run's recap"
  [ "$(count "spark$i" changed "$log")" = 0 ] || fail "re-run changed spark$i: $r"
done
echo "recap: $(recap spark1 "$log")" >&2
grep -Eo "spark1: .*already current.*" "$log" | head -1 >&2

say "a changed host config (service_port) reaches the running release, then goes back"
play port.log site.yml -e "comfyui_bundle_url=$url/r1.bundle" -e service_port=8189 || fail "port change failed"
for i in 1 2 3; do
  [ "$(count "spark$i" changed "$log")" -ge 1 ] || fail "the port change did not change spark$i"
  answers "$i" 8189 || fail "spark$i does not answer on the new port"
  [ "$(current "$i")" = "$id1" ] || fail "spark$i left release 1 on a config change"
done
grep -q "RUNNING HANDLER \[comfyctl : Restart the release with the changed host config\]" "$log" || fail "no restart handler ran"
play port-back.log site.yml -e "comfyui_bundle_url=$url/r1.bundle" || fail "port change back failed"
for i in 1 2 3; do
  answers "$i" 8188 || fail "spark$i does not answer on 8188 again"
done

say "a bad release: fails health on the canary, which rolls itself back; the rollout stops"
before2=$(on 2 comfyctl releases --json)
before3=$(on 3 comfyctl releases --json)
if play bad.log site.yml -e "comfyui_bundle_url=$url/bad.bundle"; then fail "the bad rollout succeeded"; fi
grep -q "spark1: comfyui-demo 0.1.1 was unhealthy" "$log" || fail "the play output lacks spark1's reason"
grep -q "rolled back to ${id1:0:12}" "$log" || fail "the play output does not say spark1 rolled back"
grep -q "libcuda.so.1" "$log" || fail "the play output lacks the unit's journal (the cause)"
grep -Eo "spark1: comfyui-demo 0.1.1 was unhealthy[^;]*" "$log" | head -1 >&2
[ "$(current 1)" = "$id1" ] || fail "spark1 is not back on release 1"
[ "$(on 1 systemctl is-active comfyui)" = active ] || fail "spark1's service is not running release 1"
on 1 comfyctl releases --json | python3 -c "
import json, sys
rows = {r['id']: r for r in json.load(sys.stdin)['items']}
assert rows['$idbad']['status'] == 'failed', rows['$idbad']" || fail "spark1 does not record the bad release as failed"
[ -z "$(recap spark2 "$log")$(recap spark3 "$log")" ] || fail "spark2/spark3 were part of the stopped rollout"
[ "$(on 2 comfyctl releases --json)" = "$before2" ] || fail "spark2's releases changed"
[ "$(on 3 comfyctl releases --json)" = "$before3" ] || fail "spark3's releases changed"
! grep -E "^(${addrs[1]}|${addrs[2]}) \"GET /bad.bundle" "$work/access.log" || fail "spark2/spark3 fetched the bad bundle"
[ "$(current 2)" = "$id1" ] && [ "$(current 3)" = "$id1" ] || fail "spark2/spark3 left release 1"

say "jobs queued on spark2 before release 2: spark2 drains them, then switches"
queue() { # HOST_INDEX SECONDS: queues a job on spark<i>'s ComfyUI, prints its prompt_id
  python3 - "http://${addrs[$(($1 - 1))]}:8188/prompt" "$2" <<'PY'
import json, sys, urllib.request
body = json.dumps({"prompt": {"1": {"class_type": "Wait", "inputs": {"seconds": float(sys.argv[2])}}}}).encode()
req = urllib.request.Request(sys.argv[1], data=body, headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req, timeout=5))["prompt_id"])
PY
}
job_a=$(queue 2 25)
job_b=$(queue 2 5)
queued_at=$(date +%s)
say "roll out release 2 (one custom node changed): only the frames each host lacks are fetched"
size=$(stat -c %s "$work/www/r2.bundle")
play rollout2.log site.yml -e "comfyui_bundle_url=$url/r2.bundle" -e '{"comfyui_rollout_batches": [1, "100%"]}' \
  || fail "rollout of release 2 failed"
batches=$(grep -c "^TASK \[comfyctl : Activate" "$log")
[ "$batches" = 2 ] || fail "expected 2 batches (a canary, then the other two), saw $batches"
for i in 1 2 3; do
  [ "$(current "$i")" = "$id2" ] || fail "spark$i is not on release 2"
  line=$(grep -Eo "spark$i: comfyui-demo 0.1.2 .*fetched [0-9]+ of [0-9]+ bytes \([0-9.]+%\)" "$log" | head -1)
  [ -n "$line" ] || fail "spark$i did not report a delta fetch"
  got=$(grep -oE "fetched [0-9]+" <<<"$line" | cut -d' ' -f2)
  # What the server sent this host for r2.bundle, from nginx's log.
  served=$(awk -v a="${addrs[$((i - 1))]}" '$1 == a && $3 == "/r2.bundle" { s += $6 } END { print s + 0 }' "$work/access.log")
  pct=$(python3 -c "print(f'{100 * $served / $size:.2f}')")
  echo "spark$i: fetched $got bytes (comfyctl), nginx sent $served of $size bytes = $pct% of the bundle" >&2
  python3 -c "import sys; sys.exit(0 if $served <= 0.05 * $size else 1)" || fail "spark$i fetched more than 5% of release 2"
  [ "$served" -ge "$got" ] || fail "nginx sent less than comfyctl counted"
done

# spark2's jobs finished on release 1 (each wrote its output) before its service stopped.
grep -Eq "spark2: comfyui-demo 0.1.2 .*waited [0-9.]+ s for 1 running and 1 pending job\(s\) before the stop" "$log" \
  || fail "spark2 did not report the jobs it waited for"
! grep -Eq "spark[13]: comfyui-demo 0.1.2 .*waited" "$log" || fail "a host with an empty queue reported a wait"
started=$(on 2 'date -d "$(systemctl show -p ExecMainStartTimestamp --value comfyui)" +%s')
for job in "$job_a" "$job_b"; do
  done_at=$(on 2 "find /srv/nfs/output /opt/comfyui/data -name 'fixture-$job.txt' -printf '%T@\n' 2>/dev/null | head -1 | cut -d. -f1")
  [ -n "$done_at" ] || fail "spark2's job $job left no output: it was cut off"
  [ "$done_at" -le "$started" ] || fail "spark2's job $job finished after release 2 started"
done
echo "spark2: jobs queued at $queued_at, finished by $done_at, release 2 started at $started" >&2

say "rollback playbook: every host back to release 1"
play rollback.log rollback.yml || fail "rollback playbook failed"
for i in 1 2 3; do
  [ "$(current "$i")" = "$id1" ] || fail "spark$i is not back on release 1"
  [ "$(on "$i" systemctl is-active comfyui)" = active ] || fail "spark$i's service is not active after rollback"
done
play rerun2.log site.yml -e "comfyui_bundle_url=$url/r1.bundle" || fail "re-run after rollback failed"
for i in 1 2 3; do
  [ "$(count "spark$i" changed "$log")" = 0 ] || fail "re-run after rollback changed spark$i"
done

say "rollback playbook with --limit: only spark2 moves"
play rollback-limit.log rollback.yml --limit spark2 || fail "rollback --limit spark2 failed"
[ "$(current 2)" = "$id2" ] || fail "spark2 did not roll back to its previous release (2)"
[ "$(current 1)" = "$id1" ] && [ "$(current 3)" = "$id1" ] || fail "spark1/spark3 moved with --limit spark2"
[ -z "$(recap spark1 "$log")$(recap spark3 "$log")" ] || fail "spark1/spark3 were part of a --limit spark2 run"
play status.log status.yml || fail "status playbook failed"
grep -q "spark1: comfyui-demo 0.1.0 (${id1:0:12}) sequence 1" "$log" || fail "status.yml does not show spark1 on release 1"
grep -q "spark2: comfyui-demo 0.1.2 (${id2:0:12}) sequence 3" "$log" || fail "status.yml does not show spark2 on release 2"
[ "$(count spark2 changed "$log")" = 0 ] || fail "status.yml changed something"
grep -E '"msg": "spark.: ' "$log" >&2
say "ok: rollout, re-run without change, canary stop with rollback, drain of queued jobs, delta rollout, rollback playbook (all, and --limit), status"
